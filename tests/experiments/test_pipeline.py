"""The experiment pipeline (experiments.pipeline) through the SR task's CLI, smoke size:
stage keys, resuming to the same numbers after SIGKILL, flags validated before work,
one run per workdir, corrupt artefacts, --eval_image_dir on a finished workdir.

The session's SR smoke workdirs (tests/conftest.py) are shared: ``finished`` is
``sr_finished``; a test that changes a workdir works on a copy. What the CLI turns into
its one ``error:`` line and exit 2 is checked on the command line once per kind of
error (a bad flag, a changed setting, a corrupt artefact); the other cases call what the
CLI calls, in this process (:func:`smoke_runs.sr_run`), and check the error it raises."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.cli import USER_ERRORS  # what the CLI prints as one error line, exit 2
from experiments.config import ConfigError
from experiments.stages import WorkdirBusy, WorkdirLock
from tests.smoke_runs import ROOT, SR_SMOKE_FLAGS, sr_cli, sr_config, sr_run

SMOKE = list(SR_SMOKE_FLAGS)


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "experiments.super_resolution", f"--workdir={workdir}",
            *SMOKE, *extra]


_run = sr_cli


def _refused(workdir, *argv):
    """The error the SR CLI would print with these flags (in-process: sr_run)."""
    with pytest.raises(USER_ERRORS) as err:
        sr_run(workdir, *argv)
    return str(err.value)


def _running(stdout):
    return [line[1:].split("]")[0] for line in stdout.splitlines()
            if line.endswith("running ...")]


def _numbers(report):
    """report.json without what legitimately differs between runs (commands)."""
    return {k: v for k, v in report.items() if k != "commands"}


def _report(workdir):
    with open(os.path.join(workdir, "report.json")) as f:
        return json.load(f)


def _copy(src, dst, keep=("data", "experts", "cache", "stages", "experts.json", "config.json")):
    os.makedirs(dst)
    for name in keep:
        s = os.path.join(src, name)
        if os.path.isdir(s):
            shutil.copytree(s, os.path.join(dst, name))
        elif os.path.exists(s):
            shutil.copy(s, os.path.join(dst, name))


@pytest.fixture
def finished(sr_finished):
    """The session's finished SR smoke workdir (tests/conftest.py; read only)."""
    return sr_finished[0]


def test_a_second_run_skips_every_stage_and_reports_the_same(sr_smoke, sr_resumed):
    before, again = sr_resumed  # the same command once more on the finished sr_smoke
    assert _running(again) == []
    assert _numbers(_report(sr_smoke[0])) == _numbers(before)


def test_a_deleted_artefact_rebuilt_the_same_keeps_what_was_made_from_it(finished, tmp_path,
                                                                       capsys):
    """bias.json and a gate deleted, then the same command: both rebuilt (deterministic:
    the same content), so the stages made from them are reused (experiments.stages records
    each stage's inputs by content); the report is the same."""
    workdir = str(tmp_path / "rebuilt")
    shutil.copytree(finished, workdir)
    os.remove(os.path.join(workdir, "bias.json"))
    shutil.rmtree(os.path.join(workdir, "gates", "enforce", "shared"))
    capsys.readouterr()
    sr_run(workdir)
    out = capsys.readouterr().out
    running = _running(out)
    assert running == ["bias", "gate enforce/shared"], running
    assert "rebuilt and differ" not in out
    assert not os.path.exists(os.path.join(workdir, "superseded"))
    assert _numbers(_report(workdir)) == _numbers(_report(finished))


@pytest.mark.slow  # ~47 s of make test (a CLI process killed, then the rest of the run);
# the interrupted CLI's exit 130 stays there (tests/experiments/test_cli.py)
def test_sigkill_in_the_gate_stage_then_resume_gives_the_same_report(finished, tmp_path,
                                                                    capsys):
    """Killed while a soft gate trains (after an epoch of it was backed up), then run
    again (what the CLI runs, in this process): report.json equals the uninterrupted
    run's, number for number."""
    workdir = str(tmp_path / "killed")
    _copy(finished, workdir)
    backup = os.path.join(workdir, "gates", "soft", "2", "candidates", "w1", "backup")
    proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(backup) and any(os.scandir(backup)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(workdir, "report.json"))
    capsys.readouterr()
    sr_run(workdir)
    running = _running(capsys.readouterr().out)
    assert "gate enforce/shared" not in running and "data" not in running
    assert "gate soft/2 w_bias=1" in running
    assert _numbers(_report(workdir)) == _numbers(_report(finished))


@pytest.mark.slow  # ~20 s: keeps make test under 15 minutes on 2 cores
def test_a_gate_setting_retrains_gates_and_keeps_data_experts_caches(finished, tmp_path):
    workdir = str(tmp_path / "epochs")
    _copy(finished, workdir, keep=("data", "experts", "cache", "stages", "experts.json",
                                   "bias.json", "gates", "evaluation.json"))
    proc = _run(workdir, "--epochs=2", "--learning_rate=0.002")
    running = _running(proc.stdout)
    assert not any(s.startswith(("data", "expert", "cache")) for s in running), running
    assert "gate enforce/shared" in running and "evaluation" in running
    assert "moved gates to superseded/gates-" in proc.stdout
    with open(os.path.join(workdir, "gates", "enforce", "shared", "gate.json")) as f:
        info = json.load(f)
    assert info["epochs"] == 2 and info["learning_rate"] == 0.002
    superseded = sorted(os.listdir(os.path.join(workdir, "superseded")))
    assert [s.split("-")[0] for s in superseded] == ["evaluation", "gates"]


@pytest.mark.parametrize("flag, message", [
    ("--seed=7", "seed: 0 -> 7"),
    ("--expert_epochs=2", "expert_epochs: 1 -> 2"),
    ("--image_scale=0.4", "image_scale: 0.5 -> 0.4"),
])
def test_a_data_or_expert_setting_is_refused_naming_the_stages(finished, flag, message):
    # on the command line: tests/experiments/super_resolution/test_task.py (--seed=7, exit 2)
    err = _refused(finished, flag)
    assert message in err and "invalidate" in err and "--workdir" in err


_config = sr_config  # the task and the Config the SR CLI builds from argv (in-process)


@pytest.mark.parametrize("flags, message", [
    (["--targets=20000"], "--targets: 20000 is outside [3072, 12288]"),
    (["--targets=5000,x"], "--targets: 'x' is not a number"),
    (["--targets=5000,5000"], "--targets: duplicate costs"),
    (["--scales=2,2"], "--scales lists a scale twice"),
    (["--scales=2,x"], "--scales: 'x' is not an integer"),
    (["--bias=0.5,0.6,0.1"], "--bias"),
    (["--bias=0.5,nan,0.5"], "--bias: 'nan' is not a finite number"),
    (["--batch_size=2"], "--batch_size 2 is smaller than the 3 experts"),
    (["--batch_size=128"], "--max_train_parts 96 is smaller than --batch_size 128"),
    (["--methods=enforce,magic"], "--methods takes"),
    (["--bias_weights=1,-1"], "--bias_weights"),
    (["--eval_image_dir=/no/such/dir"], "--eval_image_dir/--eval_data: '/no/such/dir'"),
    (["--seed=-1"], "--seed must be >= 0"),
    (["--eval_batch_seed=-3"], "--eval_batch_seed must be >= 0"),
    (["--data=folder:/no/such/dir"], "--data=folder:/no/such/dir: '/no/such/dir' is not"),
    (["--data=s3://bucket"], "--data takes bundled, folder:PATH or tfds:NAME"),
])
def test_bad_flags_are_refused_with_the_flag_named(flags, message):
    from experiments.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _config(*flags)
    assert message in str(err.value)


def test_a_batch_larger_than_the_training_set_fails_before_the_experts(tmp_path):
    from experiments import pipeline
    from experiments.config import ConfigError

    task, cfg = _config("--batch_size=5000", "--max_train_parts=0")
    with pytest.raises(ConfigError, match="--batch_size 5000 is larger than the .* training"):
        pipeline.run(task, cfg, str(tmp_path / "wd"))
    assert not os.listdir(tmp_path / "wd" / "experts")


def test_the_cli_prints_one_line_and_exits_before_any_work(tmp_path):
    start = time.time()
    proc = _run(str(tmp_path / "wd"), "--targets=20000", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --targets")
    assert "--targets: 20000 is outside [3072, 12288]" in proc.stderr
    assert not (tmp_path / "wd").exists() and time.time() - start < 60


def test_a_second_run_on_a_busy_workdir_exits_at_once_naming_the_holder(finished):
    with WorkdirLock(finished):  # an flock: another open of .lock is refused, here too
        start = time.time()
        with pytest.raises(WorkdirBusy) as err:
            sr_run(finished)
    assert "is in use by another run (pid " in str(err.value)
    assert str(os.getpid()) in str(err.value)
    assert time.time() - start < 30


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    root = tmp_path / "stale"
    root.mkdir()
    (root / ".lock").write_text("pid 999999: a run that was killed")
    with WorkdirLock(root) as lock:
        assert f"pid {os.getpid()}" in (root / ".lock").read_text()
        assert lock.path == str(root / ".lock")


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    from experiments.stages import WorkdirBusy

    code = ("import sys, time; from experiments.stages import WorkdirLock\n"
            f"with WorkdirLock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusy, match=f"pid {holder.pid}"):
            with WorkdirLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(tmp_path):  # the kernel released it with the process
        pass


@pytest.mark.parametrize("victim", [
    "cache/test_outputs.npz", "data/test.npz", "bias.json",
    "gates/enforce/shared/gate/saved_model.pb",
    "gates/enforce/shared/gate/variables/variables.data-00000-of-00001",
    "experts/espcn_x3/variables/variables.data-00000-of-00001"])
def test_a_corrupt_artefact_is_named_in_one_line(finished, tmp_path, victim):
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(finished, workdir)
    os.remove(os.path.join(workdir, "evaluation.json"))
    path = os.path.join(workdir, victim)
    with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 2, 1))
    # an error the CLI prints as one line (on the command line: the stage-key test below)
    last = _refused(workdir)
    assert len(last.splitlines()) == 1, last
    named = victim.split("/variables/")[0].replace("/saved_model.pb", "")  # a SavedModel
    assert f"{named} is corrupt" in last and "delete" in last


def test_eval_images_added_to_a_finished_workdir_are_honoured(finished, sr_smoke,
                                                              sr_extra_images, tmp_path):
    # sr_smoke is a copy of the finished workdir run again with --eval_image_dir
    workdir, stdout = sr_smoke
    running = _running(stdout)
    assert "eval data" in running and "cache eval" in running and "evaluation" in running
    assert not any(s.startswith(("gate", "expert espcn", "data")) for s in running), running
    report = _report(workdir)
    assert report["parts"]["eval"] == 4 and "enforce" in report["eval_images"]["rho"]
    assert report["config"]["eval_data"] == sr_extra_images
    assert _numbers(report)["rho"] == _report(finished)["rho"]  # test numbers unchanged
    # a corrupt image in the folder is named
    extra = tmp_path / "extra"
    shutil.copytree(sr_extra_images, extra)
    (extra / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    err = _refused(tmp_path / "fresh", f"--eval_image_dir={extra}")
    assert "broken.png" in err.splitlines()[-1]


def test_every_curve_point_has_its_realised_cost_and_the_oracle_bounds_the_gates(finished):
    report = _report(finished)
    assert report["oracle"].startswith("capacity-constrained assignment maximising")
    for method, pts in report["points"].items():
        for pt, (cost, metric) in zip(pts, report["curves"][method]):
            assert pt["cost"] == cost and pt["metric"] == metric
            assert pt["over_target"] == (cost > pt["target"] * (1 + 1e-9))
    assert report["oracle_exceeded"] == []
    for method in ("enforce", "soft", "random"):
        for p, q in zip(report["points"][method], report["points"]["oracle"]):
            assert p["metric"] <= q["metric"] + 1e-9


def test_a_corrupt_stage_key_says_what_it_is_and_not_to_delete_it(finished, tmp_path):
    workdir = str(tmp_path / "key")
    shutil.copytree(finished, workdir)
    with open(os.path.join(workdir, "stages", "experts.json"), "w") as f:
        f.write('{"stage": "exp')
    proc = _run(workdir, ok=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "the key of the experts stage) is corrupt" in last and "new --workdir" in last


@pytest.mark.slow  # ~20 s: keeps make test under 15 minutes on 2 cores
def test_a_data_stage_that_failed_can_be_run_again_with_corrected_flags(tmp_path):
    """A data stage that never finished holds no work: other data flags are accepted."""
    workdir = str(tmp_path / "typo")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(workdir, f"--data=folder:{empty}", "--methods=random,oracle",
                "--expert_epochs=1", ok=False)
    assert proc.returncode == 2 and "contains no image files" in proc.stderr
    with open(os.path.join(workdir, "stages", "data.json")) as f:
        assert json.load(f)["settings"]["data"] == f"folder:{empty}"
    _run(workdir, "--methods=random,oracle")  # the default --data now


@pytest.mark.slow  # three CLI runs (~40 s); the added-images test above stays in make test
def test_changing_the_eval_images_reevaluates_them_from_scratch(finished, tmp_path):
    """--eval_image_dir A then B on one workdir gives B's numbers, as a run with B only."""
    from skimage import data, io

    folders = {}
    for name, image in (("a", data.camera()[:192, :192]), ("b", data.coins()[:192, :192])):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        io.imsave(str(folders[name] / f"{name}.png"), np.stack([image] * 3, axis=-1))
    both, only_b = str(tmp_path / "both"), str(tmp_path / "only_b")
    shutil.copytree(finished, both)
    shutil.copytree(finished, only_b)
    _run(both, f"--eval_image_dir={folders['a']}")
    first = _report(both)["eval_images"]["rho"]
    _run(both, f"--eval_image_dir={folders['b']}")
    _run(only_b, f"--eval_image_dir={folders['b']}")
    a, b = _report(both), _report(only_b)
    assert a["eval_images"] == b["eval_images"] and a["experts"] == b["experts"]
    assert first != a["eval_images"]["rho"]
