"""bmoe_tf.routing.BudgetController: its stated guarantees on adversarial and stationary
logit sequences, a scene change, the hard (leaky-bucket) mode, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmoe_tf.routing import BudgetController

COSTS = np.array([3072.0, 5292.0, 12288.0])


def _deficits(picks, b):
    counts = np.zeros(len(b))
    out = []
    for t, a in enumerate(picks, 1):
        counts[a] += 1
        out.append(t * b - counts)
    return np.array(out)


biases = st.sampled_from([(0.2, 0.5, 0.3), (0.0, 0.878, 0.122), (1 / 3, 1 / 3, 1 / 3),
                          (0.9, 0.0, 0.1)])


@settings(max_examples=40, deadline=None)
@given(b=biases, seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 3.0, 1e4]),
       step=st.sampled_from([0.02, 0.2]))
def test_deficits_and_windows_stay_within_the_stated_bounds_on_any_sequence(b, seed, scale,
                                                                             step):
    """Adversarial: logits of any scale, blocks favouring one expert, sign flips."""
    rng = np.random.default_rng(seed)
    m = 600
    logits = rng.normal(size=(m, 3)) * scale
    logits[rng.integers(0, m, 50)] += 50.0 * scale          # spikes
    block = rng.integers(0, 3)
    logits[200:400, block] += 10.0 * scale                  # a scene that wants one expert
    c = BudgetController(b, COSTS, step=step, logit_range=4.0)
    picks = c.route_sequence(logits)
    b = np.asarray(b)
    bound = 4.0 / step + 1.0
    used = b > 0
    d = _deficits(picks, b)
    assert d.min() >= -bound - 1e-9
    assert d.max() <= (used.sum() - 1) * bound + 1e-9
    assert not np.isin(picks, np.flatnonzero(~used)).any()  # b_n = 0: never chosen
    cost = np.concatenate([[0.0], np.cumsum(COSTS[picks])])
    target = b @ COSTS
    for w in (1, 16, 64, 256):
        worst = np.max(cost[w:] - cost[:-w] - w * target)
        assert worst <= c.window_slack + 1e-6


def test_stationary_frequencies_converge_to_b():
    rng = np.random.default_rng(0)
    b = np.array([0.2, 0.5, 0.3])
    c = BudgetController(b, COSTS, step=0.05)
    picks = c.route_sequence(rng.normal(size=(20000, 3)) + [1.0, 0.0, -1.0])
    freq = np.bincount(picks, minlength=3) / len(picks)
    np.testing.assert_allclose(freq, b, atol=2e-3)
    assert c.steps == 20000 and c.counts.sum() == 20000


def test_a_scene_change_is_recovered_within_the_stated_number_of_inputs():
    """After a block of inputs that all prefer expert 2, the running deficit is back
    within one input of zero in at most (R/eta + 1) / b_min inputs."""
    rng = np.random.default_rng(1)
    b = np.array([0.5, 0.3, 0.2])
    step, r = 0.1, 4.0
    scene = rng.normal(size=(3000, 3))
    scene[1000:2000, 2] += 20.0
    c = BudgetController(b, COSTS, step=step, logit_range=r)
    picks = c.route_sequence(scene)
    window = int(np.ceil((r / step + 1) / b.min()))
    tail = picks[2000 + window:]
    np.testing.assert_allclose(np.bincount(tail, minlength=3) / len(tail), b, atol=0.02)


@settings(max_examples=40, deadline=None)
@given(b=biases, seed=st.integers(0, 2**16), extra=st.sampled_from([0.0, 1000.0, 30000.0]))
def test_hard_mode_never_overflows_the_bucket(b, seed, extra):
    rng = np.random.default_rng(seed)
    bucket = float(COSTS[np.asarray(b) > 0].max()) + extra
    c = BudgetController(b, COSTS, bucket_bytes=bucket)
    picks = c.route_sequence(rng.normal(size=(500, 3)) * 10 + [0.0, 0.0, 5.0])
    cost = np.concatenate([[0.0], np.cumsum(COSTS[picks])])
    target = np.asarray(b) @ COSTS
    for w in (1, 7, 64, 500):
        assert np.max(cost[w:] - cost[:-w] - w * target) <= bucket + 1e-6
    assert c.level >= -1e-9


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="data_costs"):
        BudgetController([0.5, 0.5], COSTS)
    with pytest.raises(ValueError, match="smaller than the largest data cost"):
        BudgetController([0.2, 0.5, 0.3], COSTS, bucket_bytes=5000)
    with pytest.raises(ValueError, match="positive"):
        BudgetController([0.2, 0.5, 0.3], COSTS, step=0)
    c = BudgetController([0.2, 0.5, 0.3], COSTS)
    with pytest.raises(ValueError, match="logits"):
        c.choose([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="3 logits"):
        c.choose([0.0, 1.0])
    with pytest.raises(ValueError):
        BudgetController([0.5, 0.6, 0.1], COSTS)  # b does not sum to 1
