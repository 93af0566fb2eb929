"""experiments.system.workdir: a workdir the system cannot serve is refused before
anything starts, and the recorded command gives the task and its flags."""
import pytest

from experiments.system.workdir import SystemRunError, check_servable, recorded_command


def test_a_paper_cost_workdir_is_refused_before_anything_starts(sr_finished):
    with pytest.raises(SystemRunError, match="--data_cost=paper.*--data_cost=encoded"):
        check_servable(sr_finished[0])
    task, argv = recorded_command(sr_finished[0])
    assert task == "super_resolution" and "--preset=smoke" in argv
    assert not any(a.startswith("--workdir") for a in argv)


def test_a_missing_or_unfinished_workdir_is_refused(tmp_path):
    with pytest.raises(SystemRunError, match="not a directory"):
        check_servable(str(tmp_path / "nope"))
    with pytest.raises(SystemRunError, match="report.json"):
        check_servable(str(tmp_path))
