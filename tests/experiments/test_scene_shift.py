"""The scene-shift evaluation (bmoe_tf.scene_shift, the one evaluator of the pipeline and
the int8 export; experiments.scene_shift its report view): routing the test split in its
natural order with static offsets, the budget controller (soft / hard), per frame and
shuffled batches; and its pipeline stage on the smoke workdirs."""
import json
import os

import numpy as np
import pytest

from bmoe_tf.scene_shift import (METHODS, default_bucket_bytes, route_natural_order,
                                 scene_shift_rows, window_excess)
from experiments.scene_shift import scene_shift_markdown

D = np.array([1000.0, 2000.0, 4000.0])
B = np.array([0.5, 0.5, 0.0])


def _calibration(m=400, seed=0):
    """Validation logits: expert 0 or 1 preferred in equal measure, expert 2 never."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(m, 3))
    z[:, 2] -= 1.0
    return z


def _scene_change(m=600, seed=1):
    """Test logits: the calibration scene, then a scene where every input looks like a
    job for the dearer expert 1 (a shift the static offsets never saw)."""
    z = _calibration(m, seed)
    z[m // 3:, 1] += 3.0
    return z


def _by(rows):
    return {r["method"]: r for r in rows}


def test_a_scene_change_overruns_static_offsets_but_not_the_controller():
    z, v = _scene_change(), _calibration()
    frames = np.repeat(np.arange(60), 10)
    rows = _by(scene_shift_rows(z, frames, v, B, D, lambda a: float(np.mean(a == 1)),
                                window=64, batch_size=128, seed=3))
    assert list(rows) == list(METHODS)
    budget = float(B @ D)
    for r in rows.values():
        assert r["budget"] == budget and r["window"] == 64 and r["skipped"] is None
    assert rows["static"]["mean_vs_budget_pct"] > 15  # the shifted scene goes to expert 1
    assert rows["static"]["worst_window_vs_budget_pct"] > 25
    for method in ("controller", "controller_hard", "per_frame", "per_batch"):
        assert abs(rows[method]["mean_vs_budget_pct"]) < 1.0, method
        assert np.allclose(rows[method]["frequencies"], B, atol=0.01), method
        assert rows[method]["frequencies"][2] == 0.0
    assert rows["controller"]["worst_window_vs_budget_pct"] < 10
    # the metric sees the routing in natural order
    assert rows["static"]["metric"] == pytest.approx(rows["static"]["frequencies"][1])
    # per frame: every frame of 10 inputs gets 5 + 5 (b exact frame by frame)
    assert rows["per_frame"]["frequencies"] == [0.5, 0.5, 0.0]


def test_the_default_bucket_rounds_the_dearest_used_expert_up_to_whole_bytes():
    # 10% of a 64-window's budget when that is larger ...
    assert default_bucket_bytes(B, D) == pytest.approx(0.1 * 64 * 1500.0)
    # ... else the dearest used expert in whole bytes (the controller's accounting)
    assert default_bucket_bytes([0.9, 0.1, 0.0], [10.0, 2000.4, 9000.0], window=4) == 2001.0
    assert default_bucket_bytes(B, D, window=16, fraction=0.0) == 2000.0


def test_one_evaluator_serves_the_pipeline_rows_and_the_export():
    """The rows' choices are route_natural_order's; the export's hooks (its own static
    choices, Algorithm 1 on other logits, a given bucket) change only what they name."""
    z, v = _scene_change(), _calibration()
    frames = np.repeat(np.arange(60), 10)
    routing = route_natural_order(z, frames, v, B, D, seed=3)
    rows = _by(scene_shift_rows(z, frames, v, B, D, None, seed=3))
    assert list(routing.choices) == ["static", "controller", "controller_hard", "per_frame",
                                     "per_batch"]
    for method, picks in routing.choices.items():
        assert picks.dtype == np.int64 and picks.shape == (600,)
        assert rows[method]["frequencies"] == (np.bincount(picks, minlength=3) / 600).tolist()
    assert routing.bucket_bytes == rows["controller_hard"]["bucket_bytes"] == 9600.0
    assert routing.bucket_overrun_bytes == rows["controller_hard"]["bucket_overrun_bytes"] == 0
    static = np.zeros(600, np.int64)
    other = route_natural_order(z, None, v, B, D, seed=3, static=static, batch_logits=-z,
                                bucket_bytes=4000.0)
    assert "per_frame" not in other.choices and other.choices["static"] is not None
    np.testing.assert_array_equal(other.choices["static"], static)
    np.testing.assert_array_equal(other.choices["controller"], routing.choices["controller"])
    assert not np.array_equal(other.choices["per_batch"], routing.choices["per_batch"])
    assert other.bucket_bytes == 4000.0 and other.hard.bucket_bytes == 4000.0
    with pytest.raises(ValueError, match="calibration_logits holds 2 inputs"):
        route_natural_order(z, None, v[:2], B, D)


def test_hard_mode_is_never_over_its_bucket_on_any_window():
    v = _calibration()
    z = _scene_change(300)
    z[::7, 1] += 20.0  # bursts of inputs that all want the dear expert
    rows = _by(scene_shift_rows(z, None, v, B, D, None, window=16, bucket_fraction=0.1))
    hard = rows["controller_hard"]
    assert hard["bucket_bytes"] == max(0.1 * 16 * 1500.0, 2000.0)
    assert hard["bucket_overrun_bytes"] == 0.0
    assert hard["max_window_excess_bytes"] <= hard["bucket_bytes"]
    assert rows["controller"]["bucket_bytes"] is None
    assert hard["metric"] is None
    # an independent check of the guarantee over every window, recomputed from the choices
    from bmoe_tf.budget import BudgetController

    c = BudgetController.from_calibration(v, B, D, crossing=16, bucket_bytes=hard["bucket_bytes"])
    costs = D[c.route_sequence(z)]
    p = np.concatenate([[0.0], np.cumsum(costs)])
    for w in range(1, len(z) + 1):
        assert (p[w:] - p[:-w]).max() <= w * 1500.0 + hard["bucket_bytes"] + 1e-6
    assert np.mean(costs == 2000.0) == pytest.approx(hard["frequencies"][1])


def test_one_input_per_frame_skips_the_per_frame_row():
    rows = _by(scene_shift_rows(_scene_change(200), None, _calibration(), B, D, None))
    assert rows["per_frame"]["skipped"] == "one input per frame"
    assert rows["per_frame"]["mean_cost"] is None and rows["per_frame"]["frequencies"] is None
    text = scene_shift_markdown(list(rows.values()), metric_name="F1",
                                expert_names=["a", "b", "c"])
    assert "skipped: one input per frame" in text
    assert "| method | mean cost vs budget (1,500 B) | worst 64-window |" in text
    assert "never over" in text and "(a / b / c)" in text
    json.dumps(list(rows.values()))  # JSON-able


def test_per_batch_is_the_pipelines_shuffled_batch_routing():
    from experiments.pipeline import gate_assignment

    z = _scene_change(300)
    rows = _by(scene_shift_rows(z, None, _calibration(), B, D, None, batch_size=64, seed=11))
    a = gate_assignment(z, B, 64, seed=11)
    assert rows["per_batch"]["mean_cost"] == pytest.approx(D[a].mean())
    assert rows["per_batch"]["frequencies"] == (np.bincount(a, minlength=3) / len(a)).tolist()


def test_window_excess_known_answer_and_a_sequence_shorter_than_the_window():
    costs = np.array([1.0, 1.0, 5.0, 5.0, 1.0])
    assert window_excess(costs, 2.0, 2) == (5.0, 6.0)
    assert window_excess(costs, 2.0, 64) == (13.0 / 5, 3.0)  # the whole sequence
    rows = _by(scene_shift_rows(_calibration(20, 3), None, _calibration(), B, D, None))
    assert rows["static"]["window"] == 20


@pytest.mark.parametrize("change, named", [
    (dict(frames=np.array([0, 0, 1, 1, 0] + [2] * 195)), "frames"),
    (dict(frames=np.zeros(7, int)), "frames"),
    (dict(validation_logits=np.zeros((10, 2))), "validation_logits"),
    (dict(validation_logits=np.zeros((2, 3))), "validation_logits"),
    (dict(test_logits=np.full((5, 3), np.nan)), "test_logits"),
    (dict(test_logits=np.zeros((0, 3))), "test_logits"),
    (dict(bias=[0.5, 0.5]), "bias"),
    (dict(bias=[0.7, 0.5, 0.0]), "bias"),
    (dict(data_costs=[1.0, -2.0, 3.0]), "data_costs"),
    (dict(metric="psnr"), "metric"),
    (dict(window=0), "window"),
    (dict(batch_size=2), "batch_size"),
    (dict(seed=-1), "seed"),
])
def test_bad_input_is_refused_naming_the_argument(change, named):
    args = dict(test_logits=_scene_change(200), frames=None, validation_logits=_calibration(),
                bias=B, data_costs=D, metric=None)
    kwargs = {k: change.pop(k) for k in ("window", "batch_size", "seed") if k in change}
    args.update(change)
    with pytest.raises(ValueError, match=named):
        scene_shift_rows(**args, **kwargs)


# ---- the pipeline stage on the session's smoke workdirs (already built for the task tests)
def test_the_stage_on_the_sr_smoke_workdir_routes_photo_by_photo(sr_smoke):
    workdir, stdout = sr_smoke
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    ss = report["scene_shift"]
    assert ss["gate_method"] == "enforce" and ss["window"] == 64 and ss["crossing"] == 16
    with np.load(os.path.join(workdir, "data", "test.npz")) as f:
        assert ss["frame_count"] == len(f["names"]) and ss["inputs"] == len(f["parts"])
    main = [p for p in ss["points"] if p["index"] == ss["main"]]
    assert len(main) == 1
    rows = _by(main[0]["rows"])
    assert list(rows) == list(METHODS)
    assert rows["per_frame"]["skipped"] is None  # a photo holds several parts
    assert rows["controller_hard"]["bucket_overrun_bytes"] == 0
    assert "scene shift (test split in natural order" in stdout
    with open(os.path.join(workdir, "report.md")) as f:
        assert "## Scene shift: the test split in its natural order" in f.read()


def test_the_stage_is_skipped_on_a_finished_workdir_and_one_input_per_frame(det_smoke):
    wd, first, second = det_smoke
    assert "[scene shift] running ..." in first.stdout
    assert "[scene shift] skipped" in second.stdout and "running ..." not in second.stdout
    report = json.loads((wd / "report.json").read_text())
    ss = report["scene_shift"]
    assert ss["frame_count"] == ss["inputs"] == report["examples"]["test"]
    for point in ss["points"]:
        assert _by(point["rows"])["per_frame"]["skipped"] == "one input per frame"


def test_per_input_bytes_hold_the_target_in_bytes_where_held_frequencies_miss_it():
    """Encoded mode: the scene's payloads shrink by 30% after a third of the stream (a
    plain scene): the frequency routings (static, per_batch) keep b and send less than the
    target; the byte controllers spend the target; the hard one is never over its bucket,
    recomputed here from its choices and waits."""
    v, b = _calibration(), np.array([0.5, 0.3, 0.2])
    z = _calibration(900, seed=5)
    rng = np.random.default_rng(6)
    costs = D * rng.uniform(0.8, 1.2, size=(900, 3))
    costs[300:] *= 0.7
    costs[rng.integers(0, 900, 30)] *= 4.0  # dear spikes
    rows = _by(scene_shift_rows(z, None, v, b, D, None, window=64, costs=costs))
    budget = float(b @ D)
    assert rows["controller"]["budget"] == budget and rows["controller"]["waits"] is None
    assert rows["per_batch"]["mean_cost"] < 0.9 * budget
    assert abs(rows["controller"]["mean_vs_budget_pct"]) < 1.0
    assert abs(rows["controller_hard"]["mean_vs_budget_pct"]) < 2.0
    hard = rows["controller_hard"]
    assert hard["bucket_overrun_bytes"] == 0.0
    assert hard["window_slack_bytes"] is None and rows["controller"]["window_slack_bytes"] is None
    routing = route_natural_order(z, None, v, b, D, costs=costs)
    picks = routing.choices["controller_hard"]
    paid = np.ceil(costs[np.arange(900), picks])
    slots = np.concatenate([np.r_[np.zeros(i), [c]] for i, c in
                            zip(routing.hard.idle_before, paid)])
    assert len(slots) == 900 + routing.waits and routing.waits == hard["waits"]
    p = np.concatenate([[0.0], np.cumsum(slots)])
    for w in range(1, len(slots) + 1, 7):
        assert (p[w:] - p[:-w]).max() <= w * routing.hard.target_cost + routing.bucket_bytes + 1e-6
    # each row counts each input's own bytes
    static = route_natural_order(z, None, v, b, D, costs=costs).choices["static"]
    assert rows["static"]["mean_cost"] == pytest.approx(costs[np.arange(900), static].mean())


def test_fixed_costs_report_the_soft_controllers_stated_slack():
    rows = _by(scene_shift_rows(_scene_change(), None, _calibration(), B, D, None))
    from bmoe_tf.budget import BudgetController

    c = BudgetController.from_calibration(_calibration(), B, D, crossing=16)
    assert rows["controller"]["window_slack_bytes"] == pytest.approx(c.window_slack)
    assert rows["static"]["window_slack_bytes"] is None
