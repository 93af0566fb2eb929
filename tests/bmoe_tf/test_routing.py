"""Tests for bmoe_tf.routing: Eqs. 1 and 3, Algorithm 1, capacities, streaming routing.

Algorithm 1 is checked against a literal numpy transcription of the paper's
pseudo-code, and capacities against an exact (``fractions``) largest-remainder
reference, so neither side of a comparison reuses the code under test.
"""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bmoe_tf.backend import keras, tf
from bmoe_tf.routing import (
    BatchwiseBiasEnforcement, SparseGate, calibrate_offsets, enforce_bias,
    enforcement_mask, expert_capacities, route, softmax_gates, sparse_gates,
)

FIG3_BIAS = [0.5, 0.25, 0.25]


# --------------------------------------------------------------------------- references

def capacities_reference(batch_size, weights):
    """Largest remainder in exact arithmetic for b = weights / sum(weights)."""
    total = sum(weights)
    exact = [Fraction(w, total) * batch_size for w in weights]
    floors = [x.numerator // x.denominator for x in exact]
    fracs = [x - f for x, f in zip(exact, floors)]
    order = sorted(range(len(weights)), key=lambda n: (-fracs[n], n))
    caps = list(floors)
    for n in order[:batch_size - sum(floors)]:
        caps[n] += 1
    return caps


def algorithm1_reference(gates, capacities):
    """Algorithm 1 of the paper, line by line (0-based indices)."""
    g = np.array(gates, dtype=np.float64, copy=True)
    m, n_experts = g.shape
    for n in range(n_experts):                                  # 1: for n = 1..N
        k = int(capacities[n])                                  # 2: K <- M b_n
        order = np.argsort(-g[:, n], kind="stable")             # 3: T <- TopK(G[:, n], K)
        t = np.zeros(m, dtype=bool)
        t[order[:k]] = True
        for i in range(m):                                      # 4: for i = 1..M
            if t[i]:                                            # 5: if T_i != 0
                for j in range(n_experts):
                    if j != n:
                        g[i, j] = 0.0                           # 6: G[i, j] <- 0, j != n
            else:
                g[i, n] = 0.0                                   # 8: G[i, n] <- 0
    return g


def softmax_np(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def random_gates(rng, m, n, dtype=np.float32, scale=2.0):
    return softmax_np(rng.normal(scale=scale, size=(m, n))).astype(dtype)


# Hypothesis: bias as integer weights (exact rationals known), batch >= N.
bias_weights = st.integers(2, 6).flatmap(
    lambda n: st.lists(st.integers(0, 12), min_size=n, max_size=n).filter(lambda w: sum(w) > 0))


def as_bias(weights):
    total = sum(weights)
    return [w / total for w in weights]


# --------------------------------------------------------------------------- Eq. 1 / Eq. 3

def test_softmax_gates_is_a_normal_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(50, 4)).astype(np.float32)
    gates = softmax_gates(logits).numpy()
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(gates, softmax_np(logits.astype(np.float64)), rtol=1e-5, atol=1e-7)
    # Not the printed m != n denominator, which would exceed 1 for a dominant expert.
    assert gates.max() <= 1.0


def test_sparse_gates_keep_the_softmax_max_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(64, 5)).astype(np.float32)
    out = sparse_gates(logits).numpy()
    soft = softmax_gates(logits).numpy()
    assert np.all(np.count_nonzero(out, axis=1) == 1)
    top = np.argmax(logits, axis=1)
    np.testing.assert_array_equal(np.argmax(out, axis=1), top)
    np.testing.assert_array_equal(out[np.arange(64), top], soft.max(axis=1))
    np.testing.assert_array_equal(out[np.arange(64), top], soft[np.arange(64), top])


def test_sparse_gates_tie_goes_to_lower_expert():
    out = sparse_gates(np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], np.float32)).numpy()
    np.testing.assert_array_equal(np.flatnonzero(out[0]), [1])
    np.testing.assert_array_equal(np.flatnonzero(out[1]), [0])
    np.testing.assert_allclose(out[1, 0], 1.0 / 3.0, rtol=1e-6)


# --------------------------------------------------------------------------- capacities

@pytest.mark.parametrize("m, bias, expected", [
    (4, [0.75, 0.125, 0.125], [3, 1, 0]),     # tie of remainders .5/.5 -> lower index
    (10, [0.7, 0.2, 0.1], [7, 2, 1]),         # 10 * 0.7 = 7.000000000000001 is still 7
    (5, [1 / 3] * 3, [2, 2, 1]),
    (4, FIG3_BIAS, [2, 1, 1]),                # Fig. 3
    (7, FIG3_BIAS, [3, 2, 2]),                # 3.5, 1.75, 1.75: remainders .5 < .75
    (3, [0.5, 0.5], [2, 1]),
    (6, [0.0, 1.0, 0.0], [0, 6, 0]),
    (0, FIG3_BIAS, [0, 0, 0]),
    # Remainders equal in exact arithmetic but not in floating point:
    (5, [0.66, 0.07, 0.27], [3, 1, 1]),       # 0.35 vs 0.3500000000000001
    (4, [0.15, 0.4, 0.19, 0.09, 0.17], [1, 1, 1, 0, 1]),  # 0.6 vs 0.6000000000000001
])
def test_expert_capacities_hand_cases(m, bias, expected):
    caps = expert_capacities(m, bias)
    np.testing.assert_array_equal(caps, expected)
    assert caps.dtype == np.int64


@settings(max_examples=150, deadline=None)
@given(weights=bias_weights, m=st.integers(0, 500))
def test_expert_capacities_properties(weights, m):
    bias = as_bias(weights)
    caps = expert_capacities(m, bias)
    assert int(caps.sum()) == m
    floors = np.array([(Fraction(w, sum(weights)) * m).__floor__() for w in weights])
    assert np.all((caps == floors) | (caps == floors + 1))
    np.testing.assert_array_equal(caps, capacities_reference(m, weights))
    assert np.all(caps[np.asarray(weights) == 0] == 0)


def test_expert_capacities_with_a_dynamic_batch_size_in_graph():
    bias = [0.6, 0.3, 0.1]

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def caps_of(m):
        return expert_capacities(m, bias)

    for m in [3, 7, 10, 11, 64, 101]:
        np.testing.assert_array_equal(caps_of(tf.constant(m)).numpy(), expert_capacities(m, bias))


# --------------------------------------------------------------------------- Algorithm 1

def test_algorithm1_worked_example_fig3_setting():
    # M = 4, N = 3, b = [.5, .25, .25] -> K = [2, 1, 1].
    g = np.array([
        [0.60, 0.30, 0.10],
        [0.50, 0.40, 0.10],   # best row for expert 2, but expert 1 takes it first
        [0.20, 0.35, 0.45],   # best row for expert 3, but expert 2 takes it first
        [0.30, 0.30, 0.40],   # left for expert 3
    ], dtype=np.float32)
    # Expert 1: top-2 of [.6, .5, .2, .3] -> rows 0, 1; rows 2, 3 lose column 1.
    # Expert 2: column is [0, 0, .35, .3] -> row 2 (not row 1's .4, already zeroed).
    # Expert 3: column is [0, 0, 0, .4] -> row 3 (not row 2's .45, already zeroed).
    expected = np.array([
        [0.60, 0.00, 0.00],
        [0.50, 0.00, 0.00],
        [0.00, 0.35, 0.00],
        [0.00, 0.00, 0.40],
    ], dtype=np.float32)
    out = enforce_bias(g, FIG3_BIAS).numpy()
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(algorithm1_reference(g, [2, 1, 1]).astype(np.float32), expected)
    # The per-input argmax would have sent rows 2 and 3 both to expert 3.
    np.testing.assert_array_equal(np.argmax(sparse_gates(np.log(g)).numpy(), axis=1), [0, 0, 2, 2])
    np.testing.assert_array_equal(enforcement_mask(g, FIG3_BIAS).numpy(), (expected != 0).astype(np.float32))


def test_algorithm1_ties_go_to_the_lower_row():
    g = np.tile(np.array([[0.4, 0.3, 0.3]], np.float32), (4, 1))
    out = enforce_bias(g, FIG3_BIAS).numpy()
    expected = np.array([[0.4, 0, 0], [0.4, 0, 0], [0, 0.3, 0], [0, 0, 0.3]], np.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(algorithm1_reference(g, [2, 1, 1]).astype(np.float32), expected)


def test_algorithm1_matches_literal_transcription_on_random_batches():
    rng = np.random.default_rng(2)
    cases = 0
    for m, weights in [(4, [2, 1, 1]), (5, [2, 1, 1]), (7, [1, 1, 1]), (10, [7, 2, 1]),
                       (13, [3, 0, 5, 2]), (17, [0, 1, 0, 3, 1]), (32, [8, 3, 1]),
                       (33, [1, 1, 1, 1, 1, 1]), (100, [80, 15, 5]), (9, [0, 0, 1]),
                       (6, [1, 1, 1, 1, 1, 1]), (50, [1, 2, 3, 4])]:
        caps = capacities_reference(m, weights)
        for dtype in (np.float32, np.float64):
            for _ in range(4):
                g = random_gates(rng, m, len(weights), dtype, scale=rng.uniform(0.3, 4.0))
                out = enforce_bias(g, as_bias(weights)).numpy()
                assert out.dtype == dtype
                np.testing.assert_array_equal(out, algorithm1_reference(g, caps).astype(dtype))
                cases += 1
    assert cases == 96


def test_algorithm1_matches_reference_with_many_tied_values():
    rng = np.random.default_rng(3)
    for m, weights in [(8, [2, 1, 1]), (12, [1, 2, 3]), (11, [3, 3, 2, 2])]:
        for _ in range(5):
            # Gates from a coarse grid: many exact ties inside columns.
            g = rng.integers(1, 4, size=(m, len(weights))).astype(np.float32) / 8.0
            out = enforce_bias(g, as_bias(weights)).numpy()
            np.testing.assert_array_equal(
                out, algorithm1_reference(g, capacities_reference(m, weights)).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(weights=bias_weights, extra=st.integers(0, 40), seed=st.integers(0, 2**32 - 1),
       scale=st.floats(0.1, 6.0))
def test_enforce_bias_properties(weights, extra, seed, scale):
    n = len(weights)
    m = n + extra
    bias = as_bias(weights)
    g = random_gates(np.random.default_rng(seed), m, n, scale=scale)
    out = enforce_bias(g, bias).numpy()
    nonzero = out != 0
    assert np.all(nonzero.sum(axis=1) == 1)                        # one expert per row
    np.testing.assert_array_equal(nonzero.sum(axis=0), expert_capacities(m, bias))
    np.testing.assert_array_equal(out[nonzero], g[nonzero])        # kept values unchanged
    np.testing.assert_array_equal(
        out, algorithm1_reference(g, capacities_reference(m, weights)).astype(np.float32))


def test_enforce_bias_one_expert_per_row_when_gates_underflow_to_zero():
    # Rows whose gate for a later expert is exactly 0 must still get one expert.
    g = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                 np.float32)
    mask = enforcement_mask(g, FIG3_BIAS).numpy()
    np.testing.assert_array_equal(mask.sum(axis=1), [1, 1, 1, 1])
    np.testing.assert_array_equal(mask.sum(axis=0), [2, 1, 1])
    np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])


# --------------------------------------------------------------------------- graph / XLA

@pytest.mark.parametrize("jit", [False, True])
def test_enforce_bias_graph_and_xla_match_eager_with_dynamic_batch(jit):
    bias = [0.5, 0.3, 0.2, 0.0]

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)], jit_compile=jit)
    def enforce(g):
        return enforce_bias(g, bias)

    rng = np.random.default_rng(4)
    for m in [4, 5, 7, 10, 33, 128]:
        g = random_gates(rng, m, 4)
        eager = enforce_bias(g, bias).numpy()
        np.testing.assert_array_equal(enforce(tf.constant(g)).numpy(), eager)
        np.testing.assert_array_equal(
            eager, algorithm1_reference(g, capacities_reference(m, [5, 3, 2, 0])).astype(np.float32))
    # Ties under XLA, too.
    g = np.tile(np.array([[0.4, 0.3, 0.2, 0.1]], np.float32), (10, 1))
    np.testing.assert_array_equal(enforce(tf.constant(g)).numpy(), enforce_bias(g, bias).numpy())
    # One trace for all batch sizes.
    assert len(enforce.get_concrete_function().graph.inputs) >= 1
    if not jit:
        assert enforce.experimental_get_tracing_count() == 1


def test_graph_dynamic_batch_smaller_than_num_experts_fails_at_run_time():
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def enforce(g):
        return enforce_bias(g, FIG3_BIAS)

    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than the number of experts"):
        enforce(tf.constant([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]))


def test_graph_non_finite_gates_fail_at_run_time():
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def enforce(g):
        return enforce_bias(g, FIG3_BIAS)

    g = np.full((4, 3), 1 / 3, np.float32)
    g[2, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be finite"):
        enforce(tf.constant(g))


# --------------------------------------------------------------------------- gradients

def test_enforce_bias_gradient_is_weight_times_mask():
    rng = np.random.default_rng(5)
    m, n = 11, 3
    bias = [0.6, 0.3, 0.1]
    g = tf.Variable(random_gates(rng, m, n))
    w = tf.constant(rng.normal(size=(m, n)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(enforce_bias(g, bias) * w)
    grad = tape.gradient(loss, g).numpy()
    mask = (algorithm1_reference(g.numpy(), capacities_reference(m, [6, 3, 1])) != 0)
    np.testing.assert_array_equal(grad, w.numpy() * mask.astype(np.float32))
    assert np.count_nonzero(grad) == m


def test_gradient_flows_through_softmax_to_logits():
    rng = np.random.default_rng(6)
    logits = tf.Variable(rng.normal(size=(8, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(enforce_bias(softmax_gates(logits), FIG3_BIAS))
    grad = tape.gradient(loss, logits)
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    assert np.abs(grad.numpy()).sum() > 0


# --------------------------------------------------------------------------- streaming routing

_MEANS = np.array([0.5, 0.0, -0.3])
_SCALES = np.array([1.0, 1.5, 0.7])
_CHOL = np.linalg.cholesky(np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]]))


def draw_logits(rng, m):
    """Correlated Gaussian logits with a different mean and scale per expert."""
    return (_MEANS + (rng.standard_normal((m, 3)) @ _CHOL.T) * _SCALES).astype(np.float32)


# 20000 calibration and 20000 held-out rows: the sampling noise of a share is
# about 0.5 points, well inside the 2-point contract.
CALIBRATION_ROWS = 20000


@pytest.mark.parametrize("bias", [[0.5, 0.25, 0.25], [1 / 3] * 3, [0.8, 0.15, 0.05],
                                  [0.6, 0.0, 0.4]])
def test_calibrated_offsets_reproduce_bias_on_held_out_inputs(bias):
    rng = np.random.default_rng(0)
    calibration = draw_logits(rng, CALIBRATION_ROWS)
    held_out = draw_logits(rng, 20000)
    offsets = calibrate_offsets(calibration, bias)
    assert offsets.shape == (3,) and offsets.dtype == np.float32
    used = np.asarray(bias) > 0
    assert abs(float(offsets[used].mean())) < 1e-5

    caps = expert_capacities(CALIBRATION_ROWS, bias)
    on_calibration = np.bincount(route(calibration, offsets).numpy(), minlength=3)
    assert np.all(np.abs(on_calibration - caps) <= 3), (on_calibration, caps)

    freq = np.bincount(route(held_out, offsets).numpy(), minlength=3) / len(held_out)
    np.testing.assert_allclose(freq, bias, rtol=0, atol=0.02)
    assert np.all(freq[~used] == 0)
    # The offsets matter: the plain argmax is far from these biases.
    plain = np.bincount(np.argmax(held_out, axis=1), minlength=3) / len(held_out)
    assert np.abs(plain - bias).max() > 0.05


def test_calibrate_offsets_all_mass_on_one_expert():
    rng = np.random.default_rng(7)
    calibration = draw_logits(rng, 500)
    offsets = calibrate_offsets(calibration, [0.0, 0.0, 1.0])
    held_out = draw_logits(rng, 5000)
    assert np.all(route(held_out, offsets).numpy() == 2)
    assert np.all(route(calibration, offsets).numpy() == 2)


def test_route_is_per_input():
    rng = np.random.default_rng(8)
    logits = draw_logits(rng, 40)
    offsets = np.array([0.3, -0.1, -0.2], np.float32)
    whole = route(logits, offsets).numpy()
    np.testing.assert_array_equal(whole, np.argmax(logits + offsets, axis=1))
    single = [int(route(logits[i:i + 1], offsets).numpy()[0]) for i in range(40)]
    np.testing.assert_array_equal(whole, single)
    assert whole.dtype == np.int32


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bias, match", [
    ([0.6, -0.1, 0.5], r"must lie in \[0, 1\]"),
    ([0.5, 0.3, 0.3], "must sum to 1"),
    ([0.5, 0.3, 0.2 + 2e-6], "must sum to 1"),
    ([[0.5, 0.5]], "1-D"),
])
def test_bad_bias_is_rejected_everywhere(bias, match):
    g = random_gates(np.random.default_rng(9), 6, 3)
    with pytest.raises(ValueError, match=match):
        expert_capacities(6, bias)
    with pytest.raises(ValueError, match=match):
        enforce_bias(g, bias)
    with pytest.raises(ValueError, match=match):
        calibrate_offsets(np.log(g), bias)
    with pytest.raises(ValueError, match=match):
        BatchwiseBiasEnforcement(bias)


def test_bias_sum_within_tolerance_is_accepted():
    np.testing.assert_array_equal(expert_capacities(4, [0.5, 0.25, 0.25 + 5e-7]), [2, 1, 1])


def test_bias_of_the_wrong_length_is_rejected():
    g = random_gates(np.random.default_rng(9), 6, 3)
    with pytest.raises(ValueError, match="gates have 3 experts but bias has 2 entries"):
        enforce_bias(g, [0.5, 0.5])
    with pytest.raises(ValueError, match="has 4 entries but there are 3 experts"):
        calibrate_offsets(np.log(g), [0.25] * 4)


def test_negative_batch_size_is_rejected():
    with pytest.raises(ValueError, match="batch_size must be >= 0"):
        expert_capacities(-1, FIG3_BIAS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_eagerly(bad):
    logits = np.zeros((5, 3), np.float32)
    logits[3, 2] = bad
    for fn in (softmax_gates, sparse_gates):
        with pytest.raises(ValueError, match="logits must be finite"):
            fn(logits)
    with pytest.raises(ValueError, match="gates must be finite"):
        enforce_bias(logits, FIG3_BIAS)
    with pytest.raises(ValueError, match="logits must be finite"):
        calibrate_offsets(logits, FIG3_BIAS)
    with pytest.raises(ValueError, match="logits must be finite"):
        route(logits, np.zeros(3, np.float32))


def test_static_batch_smaller_than_num_experts_is_rejected():
    with pytest.raises(ValueError, match=r"batch of 2 is smaller than the number of experts \(3\)"):
        enforce_bias(np.full((2, 3), 1 / 3, np.float32), FIG3_BIAS)
    with pytest.raises(ValueError, match="calibration set of 2 inputs is smaller than the 3 experts"):
        calibrate_offsets(np.zeros((2, 3)), FIG3_BIAS)


def test_wrong_rank_is_rejected():
    with pytest.raises(ValueError, match=r"gates must be \[batch, num_experts\]"):
        enforce_bias(np.full((4, 3, 1), 0.1, np.float32), FIG3_BIAS)
    with pytest.raises(ValueError, match=r"gates must be \[batch, num_experts\]"):
        enforce_bias(np.full((3,), 1 / 3, np.float32), FIG3_BIAS)
    with pytest.raises(ValueError, match=r"logits must be \[M, N\]"):
        calibrate_offsets(np.zeros(6), FIG3_BIAS)
    with pytest.raises(ValueError, match=r"logits must be \[M, N\]"):
        route(np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_route_with_offsets_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"offsets must be \[N\] matching logits' 3 experts"):
        route(np.zeros((4, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"offsets must be \[N\]"):
        route(np.zeros((4, 3), np.float32), np.zeros((1, 3), np.float32))


# --------------------------------------------------------------------------- Keras layers

def _gating_model(bias):
    inputs = keras.Input(shape=(5,))
    logits = keras.layers.Dense(3, name="gating")(inputs)
    soft = keras.layers.Softmax()(logits)
    enforced = BatchwiseBiasEnforcement(bias, name="enforce")(soft)
    sparse = SparseGate(name="sparse")(logits)
    return keras.Model(inputs, [enforced, sparse])


def test_layers_in_a_functional_model():
    keras.utils.set_random_seed(0)
    bias = [0.5, 0.25, 0.25]
    model = _gating_model(bias)
    x = np.random.default_rng(11).normal(size=(12, 5)).astype(np.float32)
    enforced, sparse = (t.numpy() for t in model(x))
    logits = model.get_layer("gating")(x).numpy()
    soft = softmax_np(logits.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(enforced, enforce_bias(softmax_gates(logits), bias).numpy(), atol=1e-7)
    np.testing.assert_array_equal(np.count_nonzero(enforced, axis=0), [6, 3, 3])
    np.testing.assert_array_equal(np.count_nonzero(sparse, axis=1), np.ones(12))
    np.testing.assert_array_equal(np.argmax(sparse, axis=1), np.argmax(logits, axis=1))
    np.testing.assert_allclose(sparse.max(axis=1), soft.max(axis=1), rtol=1e-5)
    assert model.output_shape == [(None, 3), (None, 3)]

    # Trains end to end: the gating kernel gets a gradient through the enforced gates.
    with tf.GradientTape() as tape:
        out, _ = model(x, training=True)
        loss = tf.reduce_sum(out * tf.constant(np.arange(3, dtype=np.float32)))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    assert np.abs(grads[0].numpy()).sum() > 0


def test_layer_config_round_trip():
    layer = BatchwiseBiasEnforcement([0.7, 0.2, 0.1], global_batch=False, name="bbe")
    config = layer.get_config()
    assert config["bias"] == [0.7, 0.2, 0.1] and config["global_batch"] is False
    clone = BatchwiseBiasEnforcement.from_config(config)
    assert clone.name == "bbe" and clone.global_batch is False
    np.testing.assert_array_equal(clone.bias, [0.7, 0.2, 0.1])
    g = random_gates(np.random.default_rng(12), 10, 3)
    np.testing.assert_array_equal(clone(g).numpy(), layer(g).numpy())
    np.testing.assert_array_equal(np.count_nonzero(clone(g).numpy(), axis=0), [7, 2, 1])

    sparse = SparseGate(name="sg")
    assert SparseGate.from_config(sparse.get_config()).name == "sg"


def test_model_config_round_trip():
    keras.utils.set_random_seed(1)
    model = _gating_model([0.6, 0.3, 0.1])
    clone = keras.Model.from_config(
        model.get_config(),
        custom_objects={"BatchwiseBiasEnforcement": BatchwiseBiasEnforcement,
                        "SparseGate": SparseGate})
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(13).normal(size=(10, 5)).astype(np.float32)
    for a, b in zip(model(x), clone(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(clone.get_layer("enforce").bias, [0.6, 0.3, 0.1])
    np.testing.assert_array_equal(np.count_nonzero(clone(x)[0].numpy(), axis=0), [6, 3, 1])


# --------------------------------------------------------------------------- non-finite values


def test_route_refuses_non_finite_offsets():
    logits = np.zeros((4, 3), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="offsets must be finite"):
            route(logits, np.array([0.0, bad, 0.0], np.float32))
    graph = tf.function(route)
    with pytest.raises(tf.errors.InvalidArgumentError, match="offsets must be finite"):
        graph(tf.constant(logits), tf.constant([0.0, np.nan, 0.0]))


def test_enforce_bias_under_xla_ranks_nan_gates_last():
    bias = [0.5, 0.3, 0.2]
    gates = np.random.default_rng(0).uniform(size=(10, 3)).astype(np.float32)
    gates[2] = np.nan          # a whole NaN row
    gates[5, 1] = np.nan       # one NaN entry
    with pytest.raises(ValueError, match="gates must be finite"):
        enforce_bias(gates, bias)  # eagerly refused
    out = tf.function(lambda g: enforce_bias(g, bias), jit_compile=True)(gates).numpy()
    picked = ~(out == 0)       # the kept entry (a NaN counts as kept)
    np.testing.assert_array_equal(picked.sum(axis=1), np.ones(10))  # one expert per row
    np.testing.assert_array_equal(picked.sum(axis=0), expert_capacities(10, bias))
    assert np.isnan(out[2]).sum() == 1 and np.isnan(out).sum() == 1  # only row 2, once
    assert picked[5, 1] == 0   # a NaN entry never wins its column
    # the NaN row ranks last everywhere: it is left for the last expert with room
    assert np.flatnonzero(picked[2]).tolist() == [2]
    # finite rows: the same as Algorithm 1 on the rows without the NaNs ranked
    clean = np.where(np.isnan(gates), -np.inf, gates)
    want = np.zeros_like(picked)
    taken = np.zeros(10, bool)
    for n, cap in enumerate(expert_capacities(10, bias)):
        order = [i for i in np.argsort(-clean[:, n], kind="stable") if not taken[i]][:cap]
        want[order, n] = True
        taken[order] = True
    np.testing.assert_array_equal(picked, want)
