"""gating_tflite.calibration: export inputs from a workdir's export_data.npz or npz:PATH."""
import numpy as np
import pytest

from bmoe_tf.routed_metrics import Accuracy, ImagePSNR
from gating_tflite.calibration import EXPORT_FILE, ExportData, load_export_data


def _fake(task="fake", metric=None):
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (40, 8, 8, 3)).astype(np.float32)
    return ExportData(representative=frames[:10], calibration=frames[10:30],
                      heldout=frames[30:], test=frames[:6], data_costs=np.array([1.0, 4.0]),
                      test_frames=np.array([0, 0, 1, 1, 1, 2]), test_metric=metric,
                      metric_name="accuracy (%)", expert_names=("small", "large"),
                      input_description="RGB in [0, 1]", notes={"source": "fake"}, task=task)


def test_a_workdir_file_round_trips_every_field(tmp_path):
    correct = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], bool)
    saved = _fake(metric=Accuracy(correct))
    saved.save(str(tmp_path / EXPORT_FILE))
    assert EXPORT_FILE == "export_data.npz" and sorted(p.name for p in tmp_path.iterdir()) == [
        EXPORT_FILE]  # no temporary file left
    data = load_export_data(str(tmp_path), task="fake")
    for name in ("representative", "calibration", "heldout", "test"):
        np.testing.assert_array_equal(getattr(data, name), getattr(saved, name))
        assert getattr(data, name).dtype == np.float32
    assert data.data_costs.tolist() == [1.0, 4.0] and data.test_frames.tolist() == [0, 0, 1, 1,
                                                                                     1, 2]
    assert (data.metric_name, data.expert_names, data.input_description, data.notes,
            data.task) == ("accuracy (%)", ("small", "large"), "RGB in [0, 1]",
                           {"source": "fake"}, "fake")
    assert data.input_shape == (8, 8, 3)
    # the metric came back as a table: 100 * mean of correct[i, a_i]
    assert isinstance(data.test_metric, Accuracy)
    assert data.test_metric(np.array([0, 1, 1, 0, 0, 1])) == pytest.approx(100 * 5 / 6)
    assert data.test_metric(np.zeros(6, np.int64)) == pytest.approx(50.0)


def test_a_psnr_metric_round_trips(tmp_path):
    metric = ImagePSNR(np.array([[100.0, 400.0], [300.0, 0.0], [50.0, 50.0]]), [0, 0, 1],
                       [8.0, 4.0], peak=255.0)
    ExportData(representative=np.zeros((2, 4, 4, 3)), calibration=np.zeros((3, 4, 4, 3)),
               test_metric=metric, task="sr").save(str(tmp_path / EXPORT_FILE))
    loaded = load_export_data(str(tmp_path), task="sr").test_metric
    # image 0: (100 + 0) / 8 = 12.5, image 1: 50 / 4 = 12.5
    assert loaded(np.array([0, 1, 1])) == pytest.approx(10 * np.log10(255 ** 2 / 12.5))


def test_workdir_errors_name_the_flag_or_file(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_export_data(str(tmp_path / "nowhere"), task="fake")
    with pytest.raises(ValueError, match=f"no {EXPORT_FILE} .*python -m experiments.action "
                                         f"--workdir={tmp_path}"):
        load_export_data(str(tmp_path), task="action")
    _fake(task="super_resolution").save(str(tmp_path / EXPORT_FILE))
    with pytest.raises(ValueError, match="--task=action but .*export_data.npz holds the export "
                                         "data of the super_resolution task; pass "
                                         "--task=super_resolution"):
        load_export_data(str(tmp_path), task="action")
    with pytest.raises(ValueError, match="--calibration is required"):
        load_export_data("", task="fake")
    (tmp_path / EXPORT_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="export_data.npz: cannot read it as .npz"):
        load_export_data(str(tmp_path), task="super_resolution")


def test_only_a_table_metric_can_be_saved(tmp_path):
    with pytest.raises(ValueError, match="test_metric must be a bmoe_tf.routed_metrics."
                                         "RoutedMetric to be saved, got function"):
        _fake(metric=lambda a: 0.0).save(str(tmp_path / EXPORT_FILE))
    assert not list(tmp_path.iterdir())


def test_npz_calibration(tmp_path):
    rng = np.random.default_rng(1)
    rep, cal = rng.uniform(0, 1, (5, 4, 4, 3)), rng.uniform(0, 1, (9, 4, 4, 3))
    path = tmp_path / "cal.npz"
    np.savez(path, representative=rep, calibration=cal, data_costs=[2, 3])
    loaded = load_export_data(f"npz:{path}", task="no such task: not used for npz")
    assert loaded.heldout is None and loaded.test is None and loaded.test_metric is None
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
