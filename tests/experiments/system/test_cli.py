"""``python -m experiments.system``: --help lists its flags and exits 0; a workdir it
cannot serve is one ``error:`` line and exit 2."""
import subprocess
import sys

from tests.smoke_runs import ROOT


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.system", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_flags_and_a_bad_workdir_is_one_error_line(tmp_path):
    out = _cli("--help")
    assert out.returncode == 0
    assert "--sensors" in out.stdout + out.stderr and "--link_kbps" in out.stdout + out.stderr
    out = _cli(f"--workdir={tmp_path}")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --workdir={tmp_path} has no report.json (a finished run): run "
                      "the task's CLI there to the end first"]
