"""The cascade gate (``--gate=cascade``): its features on hand-made detections, its
refusals, and a run on the smoke workdir's experts and caches."""
import json
import re
import shutil

import numpy as np
import pytest

from experiments import config
from experiments.detection import DetectionTask
from experiments.detection import cascade


def _box(side_px, score, cls=0, y=0.1, x=0.1):
    s = side_px / 300.0
    return [y, x, y + s, x + s, score, cls]


def test_features_count_detections_by_size_and_score():
    pad = [0.0, 0.0, 1.0, 1.0, 0.99, -1]  # padding: never counted, even with a score
    detections = np.array([
        [_box(10, 0.9), _box(30, 0.3), _box(30, 0.5), _box(100, 0.65), pad],
        [pad, pad, pad, pad, pad],
    ], np.float32)
    f = cascade.features(detections)
    assert f.shape == (2, cascade.NUM_FEATURES) == (2, 17) and f.dtype == np.float32
    # per bin (<20, 20-40, 40-80, >=80 px): counts above 0.2 / 0.4 / 0.6, summed score
    expected = [[1, 1, 1, 0.9], [2, 1, 0, 0.8], [0, 0, 0, 0.0], [1, 1, 1, 0.65]]
    np.testing.assert_allclose(f[0, :16], np.log1p(np.ravel(expected)), rtol=1e-6)
    assert np.isclose(f[0, 16], 0.9)  # the top score
    np.testing.assert_array_equal(f[1], np.zeros(17))
    # an image with no detections at all (K = 0) reads zeros too
    np.testing.assert_array_equal(cascade.features(np.zeros((3, 0, 6))), np.zeros((3, 17)))


def test_gate_inputs_read_the_cheapest_expert():
    rng = np.random.default_rng(0)
    detections = rng.uniform(0, 1, (4, 3, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(cascade.gate_inputs(detections),
                                  cascade.features(detections[:, 0]))
    with pytest.raises(ValueError, match=re.escape("[M, N, K, 6]")):
        cascade.gate_inputs(detections[0])
    with pytest.raises(ValueError, match=re.escape("[M, K, 6]")):
        cascade.features(detections[..., :5])
    bad = detections[:, 0].copy()
    bad[0, 0, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cascade.features(bad)


def test_cascade_gate_is_one_dense_layer():
    gate = cascade.cascade_gate(3)
    assert gate.count_params() == 17 * 3 + 3
    x = np.random.default_rng(1).normal(size=(5, 17)).astype(np.float32)
    kernel, bias = gate.get_layer("logits").get_weights()
    np.testing.assert_allclose(gate.predict(x, verbose=0), x @ kernel + bias, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_experts"):
        cascade.cascade_gate(1)


@pytest.mark.parametrize("task_name", ["super_resolution", "action"])
def test_other_tasks_refuse_the_cascade_gate(task_name):
    from experiments.tasks import get_task

    task = get_task(task_name)
    with pytest.raises(config.ConfigError, match=re.escape(
            f"--gate takes ['paper', 'compact'] for the {task_name} task, got 'cascade'")):
        config.from_argv(task, ["--workdir=x", "--preset=smoke", "--gate=cascade"])


@pytest.mark.parametrize("argv, message", [
    (["--gate_resolution=64"], "--gate=cascade sees no image"),
    (["--ablation=experts"], "does not take --gate=cascade"),
])
def test_detection_refuses_what_the_cascade_gate_cannot_take(argv, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.from_argv(DetectionTask(), ["--workdir=x", "--preset=smoke", "--gate=cascade",
                                           *argv])


def test_raw_images_are_refused():
    cfg = config.from_argv(DetectionTask(), ["--workdir=x", "--preset=smoke", "--gate=cascade"])
    shape, view = DetectionTask().gate_view(cfg)
    assert shape == (300, 300, 3)
    with pytest.raises(ValueError, match="cheapest expert's detections"):
        view(np.zeros((1, 300, 300, 3), np.float32))
    image_gate = config.from_argv(DetectionTask(), ["--workdir=x", "--preset=smoke"])
    assert DetectionTask().gate_view(image_gate) is None


def test_a_cascade_run_on_the_smoke_experts(det_smoke, tmp_path):
    """Only the gates and what follows rerun; the gate trained on expert 0's cached
    detections; the report counts that expert's MACs; no int8 export or system."""
    from bmoe_tf.macs import count_macs
    from experiments import pipeline
    from experiments.detection.ssd import build_ssd
    from experiments.layout import Layout
    from experiments.system.workdir import SystemRunError, check_servable
    from experiments.tasks import get_task

    wd, _, _ = det_smoke
    copy = tmp_path / "cascade"
    shutil.copytree(wd, copy)
    assert (copy / "export_data.npz").exists()  # the compact gate's
    task = DetectionTask()
    cfg = config.from_argv(task, [f"--workdir={copy}", "--preset=smoke", "--gate=cascade",
                                  "--methods=enforce,random,oracle", "--verbose=0"])
    pipeline.run(task, cfg, str(copy))
    report = json.loads((copy / "report.json").read_text())
    assert report["gate"] == {"kind": "cascade", "macs": 17 * 3, "params": 17 * 3 + 3}
    ssd = build_ssd(100, len(json.loads((copy / "data" / "split.json").read_text())
                             ["class_names"]))
    assert report["cascade"]["expert"] == "ssd100"
    assert report["cascade"]["expert_macs"] == count_macs(ssd) > 6_000_000
    assert report["cascade"]["total_macs"] == count_macs(ssd) + 51
    assert report["gate_view"] == 0
    assert "cascade gate" in (copy / "report.md").read_text()
    # the experts and caches were reused: the same test rho of random and the oracle
    before = json.loads((wd / "report.json").read_text())
    for method in ("random", "oracle"):
        assert report["rho"][method] == before["rho"][method]
    # what the gate trained on: expert 0's cached training detections, as features
    data = task.load_data(cfg, Layout(str(copy)))
    train = task.training_set(cfg, Layout(str(copy)), data)
    with np.load(copy / "cache" / "train_detections.npz") as f:
        np.testing.assert_array_equal(train.gate_inputs, cascade.features(f["detections"][:, 0]))
    # no image gate to export or to put on a sensor: the stale export file is gone
    assert not (copy / "export_data.npz").exists()
    with pytest.raises(NotImplementedError, match="--gate=cascade"):
        get_task("detection").export_data(str(copy))
    with pytest.raises(SystemRunError, match="--gate=cascade"):
        check_servable(str(copy))
