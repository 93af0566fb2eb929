"""The exact capacity-constrained assignment against a transportation LP."""
import numpy as np
import pytest
from scipy import optimize, sparse

from bmoe_tf.assignment import capacity_assignment
from bmoe_tf.routing import expert_capacities


def _lp_optimum(scores, capacities):
    """Reference: the transportation LP (totally unimodular, so the LP value is exact)."""
    m, n = scores.shape
    rows = sparse.kron(sparse.eye(m), np.ones((1, n)))
    cols = sparse.kron(np.ones((1, m)), sparse.eye(n))
    res = optimize.linprog(-scores.ravel(), A_eq=sparse.vstack([rows, cols]),
                           b_eq=np.concatenate([np.ones(m), capacities]), bounds=(0, 1),
                           method="highs")
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_lp_optimum(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(5, 250)), int(rng.integers(2, 7))
    scores = rng.normal(size=(m, n)) * rng.uniform(0.1, 10, size=n) + rng.normal(size=(m, 1))
    if seed % 3 == 0:
        scores = np.round(scores)  # many ties
    b = rng.dirichlet(np.ones(n))
    if seed % 4 == 0:
        b[0] = 0.0
    b = b / b.sum()
    caps = expert_capacities(m, np.round(b, 9) / np.round(b, 9).sum())
    a = capacity_assignment(scores, caps)
    np.testing.assert_array_equal(np.bincount(a, minlength=n), caps)
    value = scores[np.arange(m), a].sum()
    assert value == pytest.approx(_lp_optimum(scores, caps), rel=1e-9, abs=1e-9)


def test_one_expert_takes_everything_and_empty_input():
    scores = np.random.default_rng(0).normal(size=(10, 3))
    assert capacity_assignment(scores, [0, 10, 0]).tolist() == [1] * 10
    assert capacity_assignment(np.zeros((0, 3)), [0, 0, 0]).shape == (0,)


def test_bad_input():
    with pytest.raises(ValueError, match="sum to M"):
        capacity_assignment(np.zeros((4, 2)), [1, 2])
    with pytest.raises(ValueError, match="one entry per expert"):
        capacity_assignment(np.zeros((4, 2)), [4])
    with pytest.raises(ValueError, match="finite"):
        capacity_assignment(np.full((2, 2), np.nan), [1, 1])
