"""The task CLIs (experiments.cli): one ``error:`` line and exit 2 for a bad flag or
workdir, ``--help`` exits 0, an interrupt is one line and exit 130."""
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import cli

from tests import ROOT  # noqa: E402


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _cli(task, *argv, timeout=300):
    return subprocess.run([sys.executable, "-m", f"experiments.{task}", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _assert_one_error(proc, *expected):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "FATAL" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    for text in expected:
        assert text in errors[0]
    assert not proc.stdout.strip()  # no usage text
    return errors[0]


# ---- in-process: the parser itself ---------------------------------------------------
def _flag_values():
    from absl import flags

    from experiments import config

    fv = flags.FlagValues()
    config.define_shared_flags(fv)
    return fv


@pytest.mark.parametrize("argv, expected", [
    (["--epoch=3"], ["Unknown command line flag 'epoch'", "epochs"]),
    (["--preset=bogus"], ["--preset=bogus", "smoke|quick|full"]),
    (["--batch_size=abc"], ["--batch_size=abc", "'abc'"]),
    ([], ["--workdir is required"]),
    (["--workdir="], ["--workdir is required"]),
    (["--workdir=w", "extra"], ["unexpected arguments ['extra']"]),
])
def test_a_flag_error_is_one_error_line_and_exit_2(argv, expected, capsys):
    fv = _flag_values()
    with pytest.raises(SystemExit) as stop:
        cli.parse_flags(["prog", *argv], fv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert not captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for text in expected:
        assert text in lines[0]


def test_a_good_command_line_parses():
    fv = _flag_values()
    assert cli.parse_flags(["prog", "--workdir=w", "--preset=smoke"], fv) == ["prog"]
    assert fv.preset == "smoke"


def test_a_workdir_that_is_a_file_or_not_writable_is_refused(tmp_path, monkeypatch):
    from experiments.config import ConfigError

    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=r"--workdir=.*/f is a file, not a directory"):
        cli.check_workdir(str(afile))
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        cli.check_workdir(str(afile / "sub"))
    cli.check_workdir(str(tmp_path / "new" / "dir"))  # created later by the run
    locked = tmp_path / "ro"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked)
                        else real(p, mode))  # root may write anywhere: simulate read-only
    with pytest.raises(ConfigError, match=r"--workdir=.*/ro is not writable"):
        cli.check_workdir(str(locked))
    with pytest.raises(ConfigError, match=r"would be created in .*/ro, which is not writable"):
        cli.check_workdir(str(locked / "run"))


def test_the_recorded_command_quotes_paths_with_spaces():
    line = cli.command_line("detection", ["--workdir=/tmp/my runs/a", "--preset=smoke",
                                          "--targets=3,experts"])
    assert line == ("python -m experiments.detection '--workdir=/tmp/my runs/a' "
                    "--preset=smoke --targets=3,experts")
    import shlex

    assert shlex.split(line)[3] == "--workdir=/tmp/my runs/a"


def test_eval_data_support_is_read_from_the_task():
    from experiments.tasks import get_task

    assert cli.supports_eval_data(get_task("super_resolution"))
    assert not cli.supports_eval_data(get_task("detection"))
    assert not cli.supports_eval_data(get_task("action"))

    from experiments.task import EvalData

    class Declares:
        eval_data = EvalData()

    assert cli.supports_eval_data(Declares())


@pytest.mark.parametrize("task", ["super_resolution", "detection", "action"])
def test_every_task_parser_names_an_unknown_flag_in_one_line(task, capsys):
    """Each task's own flags beside the shared ones: the closest flag is named."""
    from absl import flags

    from experiments import config
    from experiments.tasks import get_task

    fv = flags.FlagValues()
    config.define_task_flags(get_task(task), fv)
    with pytest.raises(SystemExit) as stop:
        cli.parse_flags(["prog", "--epoch=3", "--workdir=unused"], fv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Unknown command line flag 'epoch'")
    assert "epochs" in lines[0]


# ---- the real CLIs (one process each; the parser itself is tested above) ---------------
def test_a_task_cli_names_an_unknown_flag_in_one_line():
    error = _assert_one_error(_cli("action", "--epoch=3", "--workdir=unused"), "'epoch'",
                              "epochs")
    assert error.startswith("error: Unknown command line flag")


def test_detection_cli_refuses_a_file_workdir_and_helps(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    _assert_one_error(_cli("detection", f"--workdir={afile}", "--preset=smoke"),
                      "is a file, not a directory")
    helped = _cli("detection", "--help")
    assert helped.returncode == 0 and "--workdir" in helped.stdout
    assert "--eval_data" not in helped.stdout  # detection refuses it: not listed
    assert "--resolutions" in helped.stdout or "--gate_resolution" in helped.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_prints_one_line_and_exits_130(tmp_path, signum):
    workdir = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, "-u", "-m", "experiments.super_resolution",
                             f"--workdir={workdir}", "--preset=smoke", "--verbose=0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job ignores SIGINT and its children
                            # inherit that: the run must see the signal as a user's Ctrl-C
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        for line in proc.stdout:  # interrupt once a stage runs
            if line.rstrip().endswith("running ...") or time.time() > deadline:
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == cli.INTERRUPTED_MESSAGE
