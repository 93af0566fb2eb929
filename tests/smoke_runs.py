"""How the tests run the task CLIs: :func:`run_cli` (a subprocess the session can stop:
the background smoke runs of tests/conftest.py), and the SR smoke CLI on the command
line (:func:`sr_cli`, where the command line itself is under test) or in this process
(:func:`sr_run`: what the CLI calls, without a TensorFlow import in a subprocess), with
the flags of the session's SR smoke workdirs (:data:`SR_SMOKE_FLAGS`)."""
import os

#: The flags of the session's one SR smoke workdir (``sr_finished`` and ``sr_smoke``):
#: three gate epochs, so that a soft gate can be killed after its first backed-up epoch
#: (tests/experiments/test_pipeline.py). A run on either workdir with other gate flags retrains gates.
SR_SMOKE_FLAGS = ("--preset=smoke", "--verbose=0", "--epochs=3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_RUNNING = set()
_STOPPED = []  # kill_running was called: no new run starts


def run_cli(cmd, timeout, **kwargs):
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)``
    that :func:`kill_running` can stop (the session's background smoke runs)."""
    import subprocess

    if _STOPPED:
        raise RuntimeError("the session's smoke runs were stopped")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)
    _RUNNING.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finally:
        _RUNNING.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_running():
    """Kills the runs of :func:`run_cli` still going (a session that stops early); later
    calls of :func:`run_cli` raise."""
    _STOPPED.append(True)
    for proc in list(_RUNNING):
        proc.kill()


def sr_cli(workdir, *extra, ok=True, timeout=600):
    """``python -m experiments.super_resolution --workdir=WORKDIR`` with
    :data:`SR_SMOKE_FLAGS` and ``extra``; the CompletedProcess (status 0 asserted if
    ``ok``)."""
    import sys

    cmd = [sys.executable, "-m", "experiments.super_resolution", f"--workdir={workdir}",
           *SR_SMOKE_FLAGS, *extra]
    proc = run_cli(cmd, timeout=timeout, cwd=ROOT)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def sr_config(*argv):
    """``(task, cfg)``: the task and the Config the SR CLI builds from :data:`SR_SMOKE_FLAGS`
    and ``argv`` (in-process, fresh flags: ``experiments.config.from_flags``, as the CLI)."""
    from experiments import config
    from experiments.super_resolution import SuperResolutionTask

    task = SuperResolutionTask()
    return task, config.from_argv(task, ["--workdir=unused", *SR_SMOKE_FLAGS, *argv])


def sr_run(workdir, *argv):
    """What the SR CLI does with ``--workdir=WORKDIR`` and these flags, in this process
    (no TensorFlow import in a subprocess): ``experiments.pipeline.run``'s report. The
    errors the CLI prints as its one ``error:`` line (exit 2) are raised as they are."""
    from experiments import pipeline

    task, cfg = sr_config(*argv)
    return pipeline.run(task, cfg, str(workdir))
