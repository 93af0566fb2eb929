"""bmoe_tf.budget.BudgetController: its stated guarantees on adversarial and stationary
logit sequences, a scene change, the hard (leaky-bucket) mode, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmoe_tf.budget import BudgetController

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
    b = c.bias_q / 2 ** 16  # b' (b at 1/65536 resolution): the frequencies' limit
    bound = 4.0 / step + 1.0
    used = b > 0
    d = _deficits(picks, b)
    np.testing.assert_allclose(d[-1], c.deficits)
    assert d.min() >= -bound - 1e-9
    assert d.max() <= (used.sum() - 1) * bound + 1e-9
    assert not np.isin(picks, np.flatnonzero(~used)).any()  # b_n = 0: never chosen
    cost = np.concatenate([[0.0], np.cumsum(COSTS[picks])])
    target = c.target_cost
    assert abs(target - np.asarray(b) @ COSTS) < 1.0
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
    target = c.target_cost
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


# ------------------------------------------------------------ scores, int8, frames

@settings(max_examples=30, deadline=None)
@given(b=biases, seed=st.integers(0, 2**16), tau=st.sampled_from([0.5, 4.0]),
       offset=st.sampled_from([0.0, 3.0]))
def test_log_scores_and_initial_offsets_keep_the_bounds_with_S(b, seed, tau, offset):
    """The bounds hold with S = L + spread(o0), L = tau log(1 + R / tau)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(500, 3)) * 200.0
    logits[100:300, rng.integers(0, 3)] += 500.0
    o0 = np.array([offset, -offset, 0.5 * offset])
    c = BudgetController(b, COSTS, step=0.3, logit_range=300.0, gap_scale=tau, offsets=o0)
    assert c.spread == pytest.approx(tau * np.log1p(300.0 / tau)
                                     + np.ptp((o0 - o0[c.used].mean())[c.used]), abs=1e-3)
    picks = c.route_sequence(logits)
    bq = c.bias_q / 2 ** 16
    d = _deficits(picks, bq)
    bound = c.spread / c.step + 1.0
    assert d.min() >= -bound - 1e-6 and d.max() <= (c.used.sum() - 1) * bound + 1e-6
    cost = np.concatenate([[0.0], np.cumsum(COSTS[picks])])
    assert np.max(cost[64:] - cost[:-64] - 64 * c.target_cost) <= c.window_slack + 1e-6


def test_quantized_bias_sums_to_the_resolution_and_keeps_zeros():
    from bmoe_tf.budget import quantize_bias

    for b in ([1 / 3, 1 / 3, 1 / 3], [0.0, 1e-7, 1 - 1e-7], [0.2, 0.5, 0.3], [1.0, 0.0]):
        q = quantize_bias(b)
        assert q.sum() == 2 ** 16
        np.testing.assert_array_equal(q > 0, np.asarray(b) > 0)
        assert np.all(np.abs(q / 2 ** 16 - b) <= 1.0 / 2 ** 16)


def test_int8_controller_decides_like_the_float_one_on_exactly_representable_logits():
    """With R and tau such that every int8 gap maps exactly (linear scores, an int8 step
    of 1/4 logit, step a power of two), integer and float controllers agree choice by
    choice; ints outside int8 are refused."""
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, size=(400, 3))
    q[150:250, 1] = 127
    kw = dict(step=0.125, logit_range=16.0)
    ci = BudgetController([0.2, 0.5, 0.3], COSTS, int8_scale=0.25, **kw)
    cf = BudgetController([0.2, 0.5, 0.3], COSTS, **kw)
    np.testing.assert_array_equal(ci.route_sequence(q), cf.route_sequence(q * 0.25))
    assert ci.integer_tables()["score_table"][4] == -(2 ** 16 / 0.125)  # gap 1 logit
    with pytest.raises(ValueError, match="int8"):
        ci.choose([0, 200, 1])
    with pytest.raises(ValueError, match="int8"):
        ci.choose([0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="int8 controller"):
        cf.integer_tables()


def _algorithm1_reference(z, caps, used):
    """Brute force: experts in order take their capacity of the highest margins over
    the best other used expert among the free rows, ties to the lower row."""
    m = len(z)
    out = [-1] * m
    for n in range(z.shape[1]):
        others = [k for k in np.flatnonzero(used) if k != n]
        value = [z[i, n] - max(z[i, k] for k in others) for i in range(m)]
        free = sorted((i for i in range(m) if out[i] < 0), key=lambda i: (-value[i], i))
        for i in free[:caps[n]]:
            out[i] = n
    return np.array(out)


@settings(max_examples=25, deadline=None)
@given(b=biases, seed=st.integers(0, 2**16), sizes=st.lists(st.integers(1, 40), min_size=1,
                                                            max_size=12))
def test_route_frame_is_algorithm1_with_carried_capacities(b, seed, sizes):
    rng = np.random.default_rng(seed)
    c = BudgetController(b, COSTS)
    bq = c.bias_q / 2 ** 16
    seen = 0
    for size in sizes:
        z = np.round(rng.normal(size=(size, 3)) * 3, 1)
        caps = c.frame_capacities(size)
        assert caps.sum() == size and np.all(caps[~c.used] == 0)
        picks = c.route_frame(z)
        np.testing.assert_array_equal(np.bincount(picks, minlength=3), caps)
        np.testing.assert_array_equal(picks, _algorithm1_reference(z, caps, c.used))
        seen += size
        assert np.all(c.deficits > -1.0) and np.all(c.deficits < c.used.sum())
        np.testing.assert_allclose(c.deficits, seen * bq - c.counts)


def test_route_frames_holds_b_exactly_where_per_frame_rounding_drifts():
    """Frames of 77 inputs at b = (0.539, 0.461): each frame's own rounding would give
    41/36 every time (0.532); carried capacities give b over the sequence."""
    from bmoe_tf.budget import route_frames

    rng = np.random.default_rng(0)
    frames = np.repeat(np.arange(20), 77)
    b = [0.5387387387387388, 0.4612612612612612, 0.0]
    picks = route_frames(rng.normal(size=(len(frames), 3)), frames, b, COSTS)
    assert abs(np.mean(picks == 0) - b[0]) < 1.0 / len(frames)
    with pytest.raises(ValueError, match="contiguous"):
        route_frames(np.zeros((4, 3)), [0, 1, 0, 1], b)
    with pytest.raises(ValueError, match="one frame per row"):
        route_frames(np.zeros((4, 3)), [0, 1, 1], b)
    with pytest.raises(ValueError, match="hard-mode"):
        BudgetController(b, COSTS, bucket_bytes=6000).route_frame(np.zeros((4, 3)))


def test_from_calibration_starts_at_the_static_offsets():
    """On its own calibration set the controller's first choices are static routing's."""
    from bmoe_tf.routing import calibrate_offsets, route

    rng = np.random.default_rng(5)
    z = rng.normal(size=(600, 3)) * [1.0, 3.0, 10.0]
    b = [0.2, 0.5, 0.3]
    c = BudgetController.from_calibration(z, b, COSTS, crossing=1e9, logit_range=1e3,
                                          gap_scale=None)
    static = route(z, calibrate_offsets(z, b))
    assert np.mean(c.route_sequence(z) == static) > 0.99
    auto = BudgetController.from_calibration(z, b, COSTS)
    assert auto.gap_scale > 0 and auto.logit_range > auto.gap_scale
    assert auto.step == pytest.approx(auto.score_range / 16)  # DEFAULT_CROSSING


def test_sequence_cost_against_a_brute_force_window_scan():
    from bmoe_tf.budget import sequence_cost

    rng = np.random.default_rng(2)
    b = [0.5, 0.5, 0.0]
    a = rng.integers(0, 3, size=90)
    r = sequence_cost(a, COSTS, b, window=16)
    d_t = 0.5 * (3072 + 5292)
    c = COSTS[a]
    assert r["budget"] == d_t and r["mean_over"] == pytest.approx(c.mean() / d_t - 1)
    worst = max(c[i:i + 16].sum() for i in range(90 - 15)) / 16
    assert r["worst_window_over"] == pytest.approx(worst / d_t - 1)
    excess = max(c[i:j].sum() - (j - i) * d_t for i in range(90) for j in range(i, 91))
    assert r["worst_window_excess"] == pytest.approx(excess)
    np.testing.assert_allclose(r["frequencies"], np.bincount(a, minlength=3) / 90)
    assert sequence_cost(a[:5], COSTS, b, window=16)["inputs"] == 5
    with pytest.raises(ValueError, match="assignment"):
        sequence_cost([0, 3], COSTS, b)


def test_workspace_budget_example_runs_as_written_and_prints_what_it_says(capsys):
    """WORKSPACE.md "Budget on a new scene": the library's runnable block runs as written
    and its printed figures are the ones the text quotes."""
    import os
    import re

    from tests import ROOT

    path = os.path.join(ROOT, "WORKSPACE.md")
    text = open(path, encoding="utf-8").read()
    section = text.split("## Budget on a new scene", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(block, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    for quoted in ("+18.3%", "+23.4%", "+0.4%", "+3.0%", "-0.0%", "+3.9%"):
        assert quoted in out and quoted in section, quoted


def _scene_shift_windows(controller, seed=0):
    """The worst 64- and 256-input windows (their bytes / budget) after 3000 inputs whose
    logits favour the dearest expert by +4, then 3000 that favour the cheapest."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(6000, 3))
    logits[:3000, 2] += 4.0
    logits[3000:, 0] += 4.0
    cost = np.concatenate([[0.0], np.cumsum(COSTS[controller.route_sequence(logits)])])
    return [np.max(cost[w:] - cost[:-w]) / (w * controller.target_cost) for w in (64, 256)]


def test_the_defaults_keep_256_input_windows_within_10_percent_after_a_scene_shift():
    """The stated slack at the defaults (docstring: 583,236 B) and what a shift does."""
    b = [0.5, 0.3, 0.2]
    c = BudgetController(b, COSTS)
    assert c.step == 0.5
    assert c.window_slack == pytest.approx(3 * (8.0 / 0.5 + 1) * (2220 + 9216))
    w64, w256 = _scene_shift_windows(c)
    assert w256 < 1.10
    slow64, slow256 = _scene_shift_windows(BudgetController(b, COSTS, step=0.05))
    assert slow256 > 1.2 and slow64 > w64  # the old default step: a shift overran
