"""Shared argument checks (bmoe_tf.checks): messages name the argument."""
import numpy as np
import pytest

from bmoe_tf.backend import tf
from bmoe_tf.checks import (as_float_array, check_count, check_finite, check_finite_tensor,
                            check_index_vector, check_rank, check_vector, is_int)


def test_is_int_and_check_count():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert check_count(np.int32(4), "n", minimum=1) == 4
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"n must be an integer >= 1, got"):
            check_count(bad, "n", minimum=1)


def test_check_rank_numpy_and_tensor():
    assert check_rank(np.zeros((2, 3)), 2, "scores").shape == (2, 3)
    check_rank(tf.zeros((2,)), (1, 2), "v")
    with pytest.raises(ValueError, match=r"scores must be \[M, N\], got shape \(3,\)"):
        check_rank(np.zeros(3), 2, "scores", layout="[M, N]")
    with pytest.raises(ValueError, match=r"x must be rank 1 or 2, got shape \(1, 1, 1\)"):
        check_rank(tf.zeros((1, 1, 1)), (1, 2), "x")


def test_as_float_array_and_check_finite():
    a = as_float_array([[1, 2]], "logits", rank=2, layout="[M, N]")
    assert a.dtype == np.float64 and a.tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="logits must be an array of numbers"):
        as_float_array(["a"], "logits")
    with pytest.raises(ValueError, match=r"logits must be finite, got a NaN or an infinity"):
        check_finite(np.array([1.0, np.inf]), "logits")
    with pytest.raises(ValueError, match=r"b must be finite, got a non-finite entry in \[1.0, nan\]"):
        check_finite(np.array([1.0, np.nan]), "b", show=True)


def test_check_finite_tensor_eager_and_graph():
    x = tf.constant([1.0, 2.0])
    assert check_finite_tensor(x, "gates") is x
    with pytest.raises(ValueError, match="gates must be finite"):
        check_finite_tensor(tf.constant([np.nan]), "gates")
    f = tf.function(lambda t: check_finite_tensor(t, "gates"))
    np.testing.assert_array_equal(f(x).numpy(), [1.0, 2.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="gates must be finite"):
        f(tf.constant([np.inf, 1.0]))


def test_check_vector():
    np.testing.assert_array_equal(check_vector([0.5, 0.5], "bias", size=2), [0.5, 0.5])
    with pytest.raises(ValueError, match="bias has 2 entries but there are 3 experts; hint"):
        check_vector([0.5, 0.5], "bias", size=3, hint="; hint")
    with pytest.raises(ValueError, match=r"costs must be a non-empty 1-D vector .*shape \(0,\)"):
        check_vector([], "costs")
    with pytest.raises(ValueError, match="costs must be a 1-D sequence of numbers"):
        check_vector(["x"], "costs")
    with pytest.raises(ValueError, match="costs must be finite"):
        check_vector([1.0, np.nan], "costs")
    assert np.isnan(check_vector([np.nan], "v", finite=False)[0])


def test_check_index_vector():
    np.testing.assert_array_equal(check_index_vector([0, 2, 1], "a", size=3, bound=3), [0, 2, 1])
    with pytest.raises(ValueError, match=r"a must be a 1-D vector with one expert per example \(3\)"):
        check_index_vector([0, 1], "a", size=3, bound=3)
    with pytest.raises(ValueError, match="integer expert indices"):
        check_index_vector([0.0, 1.0], "a", size=2, bound=3)
    with pytest.raises(ValueError, match=r"a entries must be expert indices in \[0, 2\)"):
        check_index_vector([0, 2], "a", size=2, bound=2)


def test_library_modules_use_the_shared_checks():
    from bmoe_tf import assignment, bias, evaluation, routing

    with pytest.raises(ValueError, match="performances must be finite"):
        bias.select_bias([1.0, 2.0], [1.0, np.nan], target_cost=1.5)
    with pytest.raises(ValueError, match=r"scores must be \[M, N\]"):
        assignment.capacity_assignment(np.zeros(3), [3])
    with pytest.raises(ValueError, match="num_examples must be an integer >= 0"):
        evaluation.random_selection(-1, [1.0])
    with pytest.raises(ValueError, match=r"logits must be \[M, N\]"):
        routing.route_in_batches(np.zeros(4), [1.0], 2)
