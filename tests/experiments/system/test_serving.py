"""Each task's ``Serving`` part: the metric of the answers a server gives (each input's
output from its routed expert) equals the pipeline's metric of that routing, on the
session's smoke workdirs (the experts' cached outputs stand for the server's answers)."""
import numpy as np
import pytest

from experiments.system.workdir import load_run


def _check(workdir, cached, key):
    run = load_run(workdir, experts=False)
    with np.load(run.wd.cache_file("test", cached)) as f:
        outputs = f[key]                       # [M, N, ...]: every expert's output
    m, n = outputs.shape[:2]
    view = run.view("test")
    rng = np.random.default_rng(0)
    for assignment in (rng.integers(0, n, m), np.full(m, n - 1)):
        served = outputs[np.arange(m), assignment]
        got = run.task.serving.metric(run.cfg, run.data, "test", served)
        assert got == pytest.approx(view.metric(assignment), abs=1e-9)
    assert len(run.task.serving.inputs(run.cfg, run.data, "test")) == m


def test_super_resolution_serving_metric(sr_finished):
    _check(sr_finished[0], "outputs", "outputs")


def test_detection_serving_metric(det_smoke):
    _check(det_smoke[0], "detections", "detections")


def test_action_serving_metric(act_smoke):
    _check(act_smoke[0], "probabilities", "probabilities")
