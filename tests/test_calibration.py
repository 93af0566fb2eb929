"""gating_tflite.calibration: export inputs from npz:PATH or from the task registry."""
import numpy as np
import pytest

import experiments.tasks
from gating_tflite.calibration import ExportData, load_export_data, task_names


class FakeTask:
    """A registry task (``experiments.tasks`` contract): ``export_data(workdir) -> ExportData``."""

    calls = []

    def export_data(self, workdir):
        FakeTask.calls.append(workdir)
        rng = np.random.default_rng(0)
        frames = rng.uniform(0, 1, (40, 8, 8, 3)).astype(np.float32)
        return ExportData(representative=frames[:10], calibration=frames[10:30],
                          heldout=frames[30:], data_costs=np.array([1.0, 4.0]),
                          notes={"source": workdir})


class BrokenTask:
    def export_data(self, workdir):
        raise EOFError("truncated cache/test_outputs.npz")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(experiments.tasks.TASKS, "fake", f"{__name__}:FakeTask")
    monkeypatch.setitem(experiments.tasks.TASKS, "broken", f"{__name__}:BrokenTask")
    monkeypatch.setitem(experiments.tasks.TASKS, "missing", f"{__name__}:NoSuchTask")
    FakeTask.calls.clear()


def test_a_registry_task_reads_its_workdir(registry, tmp_path):
    assert "fake" in task_names() and "super_resolution" in task_names()
    data = load_export_data(str(tmp_path), task="fake")
    assert FakeTask.calls == [str(tmp_path)]
    assert data.representative.shape == (10, 8, 8, 3) and data.heldout.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(data.calibration,
                                  np.random.default_rng(0).uniform(0, 1, (40, 8, 8, 3))
                                  .astype(np.float32)[10:30])
    assert data.notes == {"source": str(tmp_path)} and data.data_costs.tolist() == [1.0, 4.0]


def test_registry_errors(registry, tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'no_such_task'; known tasks: \[.*'fake'"):
        load_export_data(str(tmp_path), task="no_such_task")
    with pytest.raises(ValueError, match="not a directory"):
        load_export_data(str(tmp_path / "nowhere"), task="fake")
    assert FakeTask.calls == []  # a missing workdir is refused before the task runs
    with pytest.raises(ValueError, match="'missing' is registered .* cannot be loaded: "
                                         "AttributeError"):
        load_export_data(str(tmp_path), task="missing")
    with pytest.raises(ValueError, match="'broken' cannot read the workdir .*EOFError: truncated"):
        load_export_data(str(tmp_path), task="broken")
    with pytest.raises(ValueError, match="--calibration is required"):
        load_export_data("", task="fake")


def test_npz_calibration(tmp_path):
    rng = np.random.default_rng(1)
    rep, cal = rng.uniform(0, 1, (5, 4, 4, 3)), rng.uniform(0, 1, (9, 4, 4, 3))
    path = tmp_path / "cal.npz"
    np.savez(path, representative=rep, calibration=cal, data_costs=[2, 3])
    loaded = load_export_data(f"npz:{path}", task="no such task: not used for npz")
    assert loaded.heldout is None and loaded.test is None
    assert loaded.calibration.dtype == np.float32 and loaded.calibration.shape == (9, 4, 4, 3)
    np.testing.assert_allclose(loaded.representative, rep, rtol=1e-6)
    assert loaded.data_costs.tolist() == [2.0, 3.0] and loaded.notes == {"source": f"npz:{path}"}


def test_bad_npz_files_name_the_file(tmp_path):
    np.savez(tmp_path / "bad.npz", calibration=np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"bad.npz lacks the arrays \['representative'\]"):
        load_export_data(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(ValueError, match="missing.npz: no such file"):
        load_export_data(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ValueError, match="corrupt.npz: cannot read it as .npz"):
        load_export_data(f"npz:{tmp_path / 'corrupt.npz'}")
    (tmp_path / "text.npz").write_text("representative,calibration\n1,2\n")
    with pytest.raises(ValueError, match="text.npz: cannot read it as .npz"):
        load_export_data(f"npz:{tmp_path / 'text.npz'}")
