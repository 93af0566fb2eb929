"""bmoe_tf.byte_controller.ByteController: a budget in bytes with per-input payload costs:
hard mode never over its bucket on adversarial cost sequences, soft mode's mean on the
target, a scene shift in bytes, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmoe_tf.byte_controller import ByteController

MEANS = np.array([80.0, 170.0, 260.0])  # SR-like JPEG part bytes per expert


def _costs(rng, m, spread=0.5):
    """Per-input payload bytes: a lognormal scene factor times each expert's mean."""
    scene = np.exp(rng.normal(0.0, spread, size=(m, 1)))
    return np.ceil(MEANS * scene * np.exp(rng.normal(0.0, 0.1, size=(m, 3))))


def _slots(controller, picks, costs):
    """Bytes per input slot in time order: a wait is a slot that sends nothing."""
    sent = costs[np.arange(len(picks)), picks]
    out = []
    for idle, c in zip(controller.idle_before, sent):
        out.extend([0.0] * idle + [float(c)])
    return np.array(out)


def _max_excess(series, target):
    """The largest ``bytes(window) - len(window) T`` over windows of every length."""
    cum = np.concatenate([[0.0], np.cumsum(series - target)])
    return float(np.max(cum - np.minimum.accumulate(cum)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), spread=st.sampled_from([0.0, 0.5, 1.5]),
       bucket=st.sampled_from([1.0, 3.0, 20.0]), b=st.sampled_from([(0.5, 0.3, 0.2),
                                                                      (0.0, 0.7, 0.3)]))
def test_hard_mode_never_goes_over_its_bucket_on_any_cost_sequence(seed, spread, bucket, b):
    """Adversarial: spikes of dear payloads, a block of inputs whose every payload is over
    the target, logits that want the dearest expert."""
    rng = np.random.default_rng(seed)
    m = 500
    costs = _costs(rng, m, spread)
    costs[rng.integers(0, m, 40)] *= 6.0                    # spikes
    costs[150:250] = np.maximum(costs[150:250], 400.0)      # nothing meets the target
    logits = rng.normal(size=(m, 3)) * 3.0
    logits[:, 2] += 4.0
    target = float(np.asarray(b) @ MEANS)
    size = max(bucket * target, float(costs.max()))
    c = ByteController(b, MEANS, bucket_bytes=size, step=0.5)
    picks = c.route_sequence(logits, costs)
    series = _slots(c, picks, costs)
    assert _max_excess(series, c.target_cost) <= c.bucket_bytes + 1e-6
    assert c.bytes_sent == int(costs[np.arange(m), picks].sum())
    assert c.waits == len(series) - m
    assert not np.isin(picks, np.flatnonzero(np.asarray(b) == 0)).any()


@pytest.mark.parametrize("target_scale", [0.7, 1.0, 1.3])
def test_soft_mode_mean_meets_the_target_on_a_stationary_stream(target_scale):
    rng = np.random.default_rng(1)
    m = 5000
    costs = _costs(rng, m)
    logits = rng.normal(size=(m, 3)) + [0.0, 0.5, 1.0]
    b = np.array([0.5, 0.3, 0.2])
    target = target_scale * float(b @ MEANS)
    c = ByteController(b, MEANS, target_bytes=target, step=0.5)
    picks = c.route_sequence(logits, costs)
    mean = costs[np.arange(m), picks].mean()
    assert abs(mean / target - 1.0) < 0.01
    assert abs(c.byte_deficit) <= m * target * 0.01


def test_a_frequency_controller_misses_a_byte_budget_that_the_byte_controller_meets():
    """The scene compresses better than the calibration (SR's test photos do, 2x): holding
    b sends less than the budget; the price spends it."""
    from bmoe_tf.budget import BudgetController

    rng = np.random.default_rng(2)
    m = 4000
    calib = rng.normal(size=(500, 3))
    logits = rng.normal(size=(m, 3))
    costs = np.ceil(_costs(rng, m) * 0.7)
    b = np.array([0.5, 0.3, 0.2])
    target = float(b @ MEANS)
    freq = BudgetController.from_calibration(calib, b, MEANS).route_sequence(logits)
    byte = ByteController.from_calibration(calib, b, MEANS)
    picks = byte.route_sequence(logits, costs)
    rows = np.arange(m)
    assert costs[rows, freq].mean() < 0.85 * target
    assert abs(costs[rows, picks].mean() / target - 1.0) < 0.01


def test_scene_shift_in_bytes_keeps_long_windows_near_the_budget():
    """3000 inputs whose logits favour the dearest expert by +4, then 3000 the cheapest
    (the frequency controller's test of the same name, with per-input costs)."""
    rng = np.random.default_rng(3)
    m = 6000
    costs = _costs(rng, m)
    logits = rng.normal(size=(m, 3))
    logits[:3000, 2] += 4.0
    logits[3000:, 0] += 4.0
    b = np.array([0.5, 0.3, 0.2])
    c = ByteController.from_calibration(rng.normal(size=(500, 3)), b, MEANS)
    picks = c.route_sequence(logits, costs)
    sent = costs[np.arange(m), picks]
    target = c.target_cost
    assert abs(sent.mean() / target - 1.0) < 0.01
    for w, limit in ((256, 1.10),):
        cum = np.concatenate([[0.0], np.cumsum(sent)])
        worst = np.max(cum[w:] - cum[:-w]) / (w * target)
        assert worst < limit, (w, worst)


def test_equal_costs_for_every_input_reduce_to_a_byte_budget_of_b_dot_d():
    rng = np.random.default_rng(4)
    m = 3000
    b = np.array([0.5, 0.3, 0.2])
    costs = np.tile(MEANS, (m, 1))
    c = ByteController(b, MEANS, step=0.5)
    picks = c.route_sequence(rng.normal(size=(m, 3)) * 2.0, costs)
    assert abs(MEANS[picks].mean() / (b @ MEANS) - 1.0) < 0.01


def test_bad_input_is_refused_clearly():
    b = np.array([0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="target_bytes"):
        ByteController(b, MEANS, target_bytes=0.0)
    with pytest.raises(ValueError, match="bucket_bytes"):
        ByteController(b, MEANS, bucket_bytes=10.0)
    c = ByteController(b, MEANS, bucket_bytes=300.0)
    with pytest.raises(ValueError, match="costs must hold the 3"):
        c.choose(np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="costs must be bytes"):
        c.choose(np.zeros(3), [1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match="larger than the bucket"):
        c.choose(np.zeros(3), [400.0, 500.0, 600.0])
    with pytest.raises(ValueError, match="shape of logits"):
        c.route_sequence(np.zeros((4, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="one input at a time"):
        c.route_frame(np.zeros((4, 3)))
    with pytest.raises(AttributeError, match="no worst-case window bound"):
        c.window_slack
