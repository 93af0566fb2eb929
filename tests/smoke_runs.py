"""The SR smoke CLI, run as the tests run it: in a subprocess (:func:`sr_cli`) where the
command line itself is under test, else in this process (:func:`sr_run`: no TensorFlow
import in a subprocess). The session's SR smoke workdirs (tests/conftest.py) use these
flags."""
import os

#: The flags of the session's one SR smoke workdir (``sr_finished`` and ``sr_smoke``):
#: three gate epochs, so that a soft gate can be killed after its first backed-up epoch
#: (tests/test_pipeline.py). A run on either workdir with other gate flags retrains gates.
SR_SMOKE_FLAGS = ("--preset=smoke", "--verbose=0", "--epochs=3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sr_cli(workdir, *extra, ok=True, timeout=600):
    """``python -m experiments.super_resolution --workdir=WORKDIR`` with
    :data:`SR_SMOKE_FLAGS` and ``extra``; the CompletedProcess (status 0 asserted if
    ``ok``)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "experiments.super_resolution", f"--workdir={workdir}",
           *SR_SMOKE_FLAGS, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def sr_config(*argv):
    """``(task, cfg)``: the task and the Config the SR CLI builds from :data:`SR_SMOKE_FLAGS`
    and ``argv`` (in-process, fresh flags: ``experiments.config.from_flags``, as the CLI)."""
    from absl import flags

    from experiments import config
    from experiments.super_resolution import SuperResolutionTask

    task = SuperResolutionTask()
    fv = flags.FlagValues()
    config.define_shared_flags(fv)
    task.define_flags(fv)
    fv(["prog", "--workdir=unused", *SR_SMOKE_FLAGS, *argv])
    return task, config.from_flags(task, fv)


def sr_run(workdir, *argv):
    """What the SR CLI does with ``--workdir=WORKDIR`` and these flags, in this process
    (no TensorFlow import in a subprocess): ``experiments.pipeline.run``'s report. The
    errors the CLI prints as its one ``error:`` line (exit 2) are raised as they are."""
    from experiments import pipeline

    task, cfg = sr_config(*argv)
    return pipeline.run(task, cfg, str(workdir))
