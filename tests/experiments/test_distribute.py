"""experiments.distribute and gate training under tf.distribute: two worker processes
(MultiWorkerMirroredStrategy on loopback) train the same gate as one process with two
logical devices (MirroredStrategy); Algorithm 1's capacities hold for the global batch."""
import contextlib
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import distribute

from tests import ROOT  # noqa: E402
WORKER = os.path.join(ROOT, "tests", "experiments", "distributed_worker.py")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(out, *args, die_at=None, fail_data=False, learning_rate=None):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("TF_CONFIG", "BMOE_TEST_DIE_AT_EPOCH", "BMOE_TEST_FAIL_DATA",
                 "BMOE_TEST_LEARNING_RATE"):
        env.pop(name, None)
    if learning_rate is not None:
        env["BMOE_TEST_LEARNING_RATE"] = str(learning_rate)
    if die_at is not None:
        env["BMOE_TEST_DIE_AT_EPOCH"] = str(die_at)
    if fail_data:
        env["BMOE_TEST_FAIL_DATA"] = "1"
    return subprocess.Popen([sys.executable, WORKER, str(out), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=300):
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:  # bounded in time: never left running
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow  # two worker processes and a mirrored one, twice (~145 s on 2 cores)
def test_two_workers_train_the_two_device_gate_also_when_one_is_killed(tmp_path):
    """Two workers train a gate with b enforced; worker 1 dies at the start of epoch 1 (of
    2); the chief cannot go on without it and is stopped (as a cluster manager would);
    both restart with the same command: BackupAndRestore resumes them at epoch 1, every
    step's routing met Algorithm 1's capacities for the GLOBAL batch, and the gate equals
    the one a single process trains on two logical devices (MirroredStrategy)."""
    ports = ",".join(str(p) for p in _free_ports(2))
    mirrored = _start(tmp_path / "one", "mirrored")
    chief = _start(tmp_path / "mw", "multi_worker", "0", ports)
    dying = _start(tmp_path / "mw", "multi_worker", "1", ports, die_at=1)
    out, _ = dying.communicate(timeout=300)
    assert dying.returncode == 3, out[-3000:]
    time.sleep(1.0)  # the chief is stuck in the step's collective (it would stop by
    chief.kill()     # itself after ~9 s of missed heartbeats); a cluster restarts it
    chief.wait()
    assert os.path.isdir(tmp_path / "mw" / "gate" / "backup")
    assert not os.path.exists(tmp_path / "mw" / "gate" / "gate.json")
    ports = ",".join(str(p) for p in _free_ports(2))
    again = [_start(tmp_path / "mw", "multi_worker", str(i), ports) for i in range(2)]
    _finish(again + [mirrored])
    one = np.load(tmp_path / "one" / "mirrored.npz")
    w0, w1 = (np.load(tmp_path / "mw" / f"worker{i}.npz") for i in range(2))
    assert bool(w0["chief"]) and not bool(w1["chief"])
    for k in [k for k in one.files if k.startswith("arr_")]:
        np.testing.assert_allclose(w0[k], one[k], atol=1e-5)
        np.testing.assert_array_equal(w0[k], w1[k])
    # capacities for the global batch of 8 at b = (0.75, 0.125, 0.125): 6 / 1 / 1 on every
    # step (per worker of 4 it would be 3 / 1 / 0, i.e. 6 / 2 / 0 in all); the resumed
    # workers trained epoch 1 only
    for run, epochs in ((one, 2), (w0, 1), (w1, 1)):
        steps = run["steps"]
        assert steps.shape == (epochs * 96 // 8, 3)
        np.testing.assert_allclose(steps, np.tile([0.75, 0.125, 0.125], (len(steps), 1)),
                                   atol=1e-6)
    # only the chief wrote the gate
    assert os.path.exists(tmp_path / "mw" / "gate" / "gate" / "saved_model.pb")
    assert os.path.exists(tmp_path / "mw" / "gate" / "gate.json")


def test_tf_config_is_checked_with_clear_messages(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="not JSON"):
        distribute.check_tf_config("{cluster")
    with pytest.raises(ValueError, match="'cluster' and 'task'"):
        distribute.check_tf_config('{"cluster": {}}')
    with pytest.raises(ValueError, match="index 2 is outside"):
        distribute.check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, '
                                   '"task": {"type": "worker", "index": 2}}')
    with pytest.raises(ValueError, match="'chief' and 'worker' jobs only"):
        distribute.check_tf_config('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, '
                                   '"task": {"type": "worker", "index": 0}}')
    with pytest.raises(ValueError, match="unknown --strategy='tpu'"):
        distribute.make_strategy("tpu")
    assert distribute.is_chief(distribute.make_strategy("default"))


@pytest.mark.slow  # the toy pipeline on two workers and in one process (~235 s on 2 cores)
def test_the_pipeline_runs_on_two_workers(tmp_path):
    """--strategy=multi_worker through experiments.multi_worker.run (the toy task): both workers
    build their shard of every cache, the chief merges them into the files one process
    writes (byte for byte), the gates (two soft w_bias candidates each) train across both
    and equal the gates one process trains with the default strategy (to 1e-5; the same
    w_bias chosen, the same routing of every test example), only the chief reports."""
    import json

    from experiments import pipeline
    from tests.experiments.test_pipeline_toy_task import ToyTask

    ports = ",".join(str(p) for p in _free_ports(2))
    workers = [_start(tmp_path / "wd", "pipeline", str(i), ports) for i in range(2)]
    from tests.experiments.distributed_worker import pipeline_config

    task = ToyTask()
    single = pipeline.run(task, pipeline_config(task), str(tmp_path / "single"), command="toy")
    _finish(workers)
    with open(tmp_path / "worker0.json") as f:
        report = json.load(f)
    with open(tmp_path / "worker1.json") as f:
        assert json.load(f) is None
    for split in pipeline.SPLITS:
        name = f"{split}_outputs.npz"
        merged = np.load(tmp_path / "wd" / "cache" / name)
        alone = np.load(tmp_path / "single" / "cache" / name)
        assert merged["outputs"].tobytes() == alone["outputs"].tobytes()
    assert not [p for p in os.listdir(tmp_path / "wd" / "cache") if ".shard-" in p]
    # the gates two workers train are the gates one process trains: the same routings
    for method in ("enforce", "soft", "random", "oracle", "benchmark"):
        assert report["rho"][method] == pytest.approx(single["rho"][method], abs=1e-9), method
    from experiments.gates import load_gate

    for index in ("1", "3"):  # the chief alone chose w_bias on the validation split
        with open(tmp_path / "wd" / "gates" / "soft" / index / "chosen.json") as f, \
                open(tmp_path / "single" / "gates" / "soft" / index / "chosen.json") as g:
            assert json.load(f) == json.load(g)
    for gate in ("enforce/shared", "soft/1/candidates/w1", "soft/1/candidates/w4",
                 "soft/3/candidates/w1", "soft/3/candidates/w4"):
        two = load_gate(str(tmp_path / "wd" / "gates" / gate))[0].get_weights()
        one = load_gate(str(tmp_path / "single" / "gates" / gate))[0].get_weights()
        for a, b in zip(two, one):
            np.testing.assert_allclose(a, b, atol=1e-5)
    with open(tmp_path / "wd" / "evaluation.json") as f, \
            open(tmp_path / "single" / "evaluation.json") as g:
        two, one = json.load(f)["test"]["subsets"], json.load(g)["test"]["subsets"]
    for method in ("enforce", "soft"):
        for index in one[method]:
            assert two[method][index]["picks"] == one[method][index]["picks"], (method, index)
    assert os.path.exists(tmp_path / "wd" / "report.md")


@pytest.mark.parametrize("failure", [  # ~40 s each; make test keeps the data stage's
    "data", pytest.param("busy", marks=pytest.mark.slow),
    pytest.param("settings", marks=pytest.mark.slow)])
def test_a_failed_chief_stage_stops_the_other_worker_with_a_message(tmp_path, failure):
    """The chief's data stage raises, or its workdir is locked by another run, or worker 1
    was started with another learning rate: the failing worker tells the other at the
    barrier, both stop (status 2, the other's error names the barrier), nothing hangs."""
    import json

    from experiments.stages import WorkdirLock

    ports = ",".join(str(p) for p in _free_ports(2))
    with WorkdirLock(str(tmp_path / "wd")) if failure == "busy" else contextlib.nullcontext():
        workers = [_start(tmp_path / "wd", "pipeline", str(i), ports,
                          fail_data=failure == "data",
                          learning_rate=0.5 if failure == "settings" and i == 1 else None)
                   for i in range(2)]
        try:
            for p in workers:
                p.communicate(timeout=300)
        finally:
            for p in workers:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    assert [p.returncode for p in workers] == [2, 2]
    errors = []
    for i in range(2):
        with open(tmp_path / f"worker{i}.json") as f:
            errors.append(json.load(f)["error"])
    if failure == "data":
        assert errors[0] == "ValueError: the data stage failed (test)"
        assert errors[1].startswith("ClusterError: another worker failed before 'data'")
    elif failure == "settings":
        assert errors[1].startswith("ConfigError: worker 1 was started with other settings "
                                    "than worker 0 for the gates stage (learning_rate: chief "
                                    "0.01, this worker 0.5)"), errors[1]
        assert errors[0].startswith("ClusterError: another worker failed before "
                                    "'caches loaded'")
    else:
        assert errors[0].startswith("WorkdirBusy: ") and "in use by another run" in errors[0]
        assert errors[1].startswith("ClusterError: another worker failed before "
                                    "'workdir lock'")


def test_merged_shards_needs_a_complete_set_and_names_corrupt_ones(tmp_path):
    from bmoe_tf.cache import as_cache_shard, save_cache, shard_path
    from experiments.stages import ArtefactError

    path = str(tmp_path / "train_outputs.npz")
    values = np.arange(40, dtype=np.float32).reshape(20, 2)
    assert distribute.merged_shards(path) is None
    for i in range(3):
        rows = np.arange(20).reshape(-1, 4)[i::3].reshape(-1)  # batches of 4, k = i mod 3
        save_cache(shard_path(path, i, 3), as_cache_shard(
            {"kind": np.array("outputs"), "outputs": values[rows]}, num_examples=20,
            batch_size=4, num_shards=3, shard_index=i))
        assert (distribute.complete_shards(path) == 3) == (i == 2)
    assert distribute.merged_shards(path)["outputs"].tobytes() == values.tobytes()
    with open(shard_path(path, 1, 3), "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(ArtefactError, match=r"the 3 cache shards of .* do not merge"):
        distribute.merged_shards(path)
    open(path[:-4] + ".shard-0-of-3.npz.tmp.npz", "w").close()
    distribute.remove_shards(path)
    assert os.listdir(tmp_path) == []


# ---- cluster start-up: bounded in time, stopped by signals ---------------------------
def _lonely_worker(tmp_path, timeout_s):
    """Worker 0 of a two-worker loopback cluster whose worker 1 is never started."""
    import json

    ports = _free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", BMOE_CLUSTER_TIMEOUT_S=str(timeout_s),
               TF_CONFIG=json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                     "task": {"type": "worker", "index": 0}}))
    proc = subprocess.Popen([sys.executable, "-m", "experiments.super_resolution",
                             f"--workdir={tmp_path / 'wd'}", "--preset=smoke", "--verbose=0",
                             "--strategy=multi_worker", "--batch_size=16"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return proc, ports


def _reap(proc, timeout):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_whose_peer_never_starts_stops_after_the_timeout(tmp_path):
    start = time.time()
    proc, ports = _lonely_worker(tmp_path, 4)
    out, err = _reap(proc, 120)
    assert proc.returncode == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]], err[-2000:]
    assert "did not start within 4 s (BMOE_CLUSTER_TIMEOUT_S)" in errors[0]
    assert f"worker 1 (localhost:{ports[1]}) never joined" in errors[0]
    assert "Traceback" not in err and time.time() - start < 90


def test_a_worker_waiting_for_its_peer_stops_on_sigterm_and_on_sigint(tmp_path):
    """Two lonely workers at once (one per signal), each signalled once its supervisor
    runs the worker (its handlers are set by then; the worker itself starts, or waits for
    its peer: either stops)."""
    import signal

    procs = {signum: _lonely_worker(tmp_path / signum, 600)[0] for signum in ("SIGTERM", "SIGINT")}
    deadline = time.time() + 180
    for proc in procs.values():
        children = f"/proc/{proc.pid}/task/{proc.pid}/children"
        while proc.poll() is None and time.time() < deadline:
            with open(children) as f:
                if f.read().split():
                    break
            time.sleep(0.1)
    time.sleep(2)
    sent = time.time()
    for signum, proc in procs.items():
        proc.send_signal(getattr(signal, signum))
    for signum, proc in procs.items():
        out, err = _reap(proc, 60)
        assert proc.returncode == 130, (signum, err[-2000:])
        assert err.strip().splitlines()[-1].startswith("interrupted:"), (signum, err[-2000:])
    assert time.time() - sent < distribute.STOP_GRACE_S + 15


def test_the_cluster_timeout_is_read_from_the_environment():
    assert distribute.cluster_timeout({}) == distribute.CLUSTER_TIMEOUT_S
    assert distribute.cluster_timeout({"BMOE_CLUSTER_TIMEOUT_S": "2.5"}) == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ValueError, match="BMOE_CLUSTER_TIMEOUT_S"):
            distribute.cluster_timeout({"BMOE_CLUSTER_TIMEOUT_S": bad})
