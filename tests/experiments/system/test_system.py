"""The system end to end on an encoded SR smoke workdir with the real Ray Serve (local,
loopback, stopped by each test; ``slow``: ``make test-slow``): the sensors' routing equals
the offline controller's, the served outputs and metric equal the pipeline's, every frame
is answered once while a replica is killed, a link outage buffers then drops, bad requests
get error answers. The refusals before anything starts: test_workdir.py, test_runner.py."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from experiments.system import wire
from tests.smoke_runs import ROOT


# ---- slow: the real Ray Serve --------------------------------------------------------------
@pytest.fixture(scope="module")
def sr_encoded(tmp_path_factory):
    """An SR smoke workdir run with --data_cost=encoded and the compact gate (~30 s)."""
    wd = str(tmp_path_factory.mktemp("sr_encoded") / "wd")
    cmd = [sys.executable, "-m", "experiments.super_resolution", "--preset=smoke",
           "--data_cost=encoded", "--gate=compact", "--methods=enforce,random,oracle",
           f"--workdir={wd}", "--verbose=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return wd


@pytest.mark.slow
def test_two_sensors_while_a_replica_is_killed(sr_encoded):
    from experiments.system.runner import kill_one_replica, run_system

    # two replicas of each expert: the other serves while Ray Serve restarts the killed one
    # (a bucket that holds the whole stream: a slow machine delays frames, drops none)
    report = run_system(sr_encoded, sensors=2, fps=4.0, passes=8, timeout_s=240, replicas=2,
                        bucket_bytes=1e6, faults=[(1.0, lambda: kill_one_replica(0))])
    checks = report["checks"]
    assert checks["same_routing_as_offline_controller"] and checks["same_routing_on_every_sensor"]
    assert checks["metric_equals_pipeline"] and checks["outputs_equal_offline"]
    assert report["outputs_max_abs_diff"] < 1e-5
    assert checks["every_frame_answered_once"] and checks["hard_window_bound_held"]
    assert report["faults"] and "expert0" in report["faults"][0]["what"]
    server = report["server"]
    killed = report["faults"][0]["what"].split()[-1]
    alive = server["replicas_at_end"]["expert0"]
    assert len(alive) == 2 and killed not in alive  # restarted under a new name
    for row in report["per_sensor"]:
        assert row["answered_frames"] == row["frames"] == 16 and row["dropped_frames"] == 0
        assert server["answered_per_sensor"][str(row["sensor"])] == 16
        # the bytes on the socket: the requests, each once unless retried
        assert row["wire_bytes"] >= row["request_bytes"]
        if row["retries"] == 0:
            assert row["wire_bytes"] == row["request_bytes"]
        assert row["worst_excess_bytes"] <= report["bucket_bytes"]
        assert row["framing_per_input"] > 0 and row["payload_per_input"] > 0
    pipeline_metric = json.load(open(os.path.join(sr_encoded, "system", "system_report.json")))
    assert pipeline_metric["per_sensor"][0]["metric"] == pytest.approx(
        report["per_sensor"][0]["pipeline_metric"], abs=1e-4)


@pytest.mark.slow
def test_a_link_outage_buffers_up_to_the_bucket_then_drops(sr_encoded):
    from experiments.system.runner import run_system

    report = run_system(sr_encoded, sensors=1, fps=8.0, passes=12, timeout_s=120,
                        bucket_bytes=6000.0, outages=[(0.3, 2.5)])
    (row,) = report["per_sensor"]
    assert row["dropped_frames"] > 0 and row["dropped_bytes"] > 0
    assert row["answered_frames"] + row["dropped_frames"] == row["frames"]
    assert row["buffer_peak_bytes"] <= report["link_bucket_bytes"]
    assert row["unanswered_frames"] == 0 and report["checks"]["every_frame_answered_once"]


def _post(port, body, token, length=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{wire.PATH}", data=body, method="POST")
    req.add_header(wire.TOKEN_HEADER, token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.slow
def test_bad_requests_get_error_answers_and_retries_are_answered_once(sr_encoded):
    from experiments.system import server
    from experiments.system.runner import stats
    from experiments.system.sensor import load_feed
    from experiments.system.prepare import prepare
    from experiments.system.workdir import load_run

    run = load_run(sr_encoded)
    token = "s3cret"
    prep = prepare(run, gate_dir=run.wd.gate_dir("enforce", "shared"), host="h", token=token)
    arrays, meta = load_feed(prep.feed)
    codec = run.experts[0].codec
    good = wire.Part(0, codec.encode(arrays["sensor_0"][0]))

    def body(parts, seq=0):
        data = wire.encode_request(wire.Request(5, seq, tuple(parts)), "h", token)
        return data[wire.head_bytes("h", token):]

    port = server.start(sr_encoded, len(run.experts), token)
    try:
        assert _post(port, body([good]), "wrong")[0] == 401
        status, text = _post(port, body([wire.Part(7, b"x")]), token)
        assert status == 422 and b"expert 7" in text
        status, text = _post(port, body([good, wire.Part(0, b"\xff\xd8broken")]), token)
        assert status == 400 and b"did not decode" in text
        assert _post(port, b"BMS1" + b"\x00" * 3, token)[0] == 400
        assert _post(port, b"\x00" * (wire.MAX_REQUEST_BYTES + 1), token)[0] == 413
        first = _post(port, body([good], seq=1), token)
        again = _post(port, body([good], seq=1), token)
        assert first[0] == again[0] == 200 and first[1] == again[1]
        _, seq, (out,) = wire.parse_answer(first[1])
        decoded = codec.decode(good.payload, arrays["sensor_0"][0].shape)
        want = run.experts[0].model(run.experts[0].received_inputs(decoded[None]),
                                    training=False).numpy()[0]
        assert seq == 1 and np.max(np.abs(out - want)) < 1e-5
        counters = stats(port)
        assert counters["answered_per_sensor"] == {"5": 1} and counters["duplicates"] == 1
        assert counters["refused"] == {"401": 1, "422": 1, "400": 2, "413": 1}
    finally:
        server.stop()


@pytest.mark.slow
def test_the_readme_system_block_runs_as_written(sr_encoded, tmp_path, monkeypatch):
    """README "The system"'s python block, in a folder whose workdir/sr_system is the
    encoded smoke workdir."""
    import re

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## The system:", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (tmp_path / "workdir").mkdir()
    os.symlink(sr_encoded, tmp_path / "workdir" / "sr_system")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert scope["report"]["sensors"] == 2
    assert all(r["answered_frames"] == 4 for r in scope["report"]["per_sensor"])
