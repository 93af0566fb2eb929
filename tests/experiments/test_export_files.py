"""experiments.export_files: the pipeline writes what the int8 export reads; the tasks'
export_data producers give the export the experiment's own metric as a table."""
import os

import numpy as np
import pytest

from experiments.super_resolution import data as sr_data
from experiments.super_resolution.evaluate import assignment_psnr
from experiments.super_resolution.export_data import psnr_metric
from gating_tflite.calibration import EXPORT_FILE, ExportData, load_export_data


def test_the_psnr_table_is_the_stitched_photos_psnr():
    rng = np.random.default_rng(0)
    images = [("a", rng.uniform(0, 1, (128, 192, 3))), ("b", rng.uniform(0, 1, (64, 128, 3)))]
    parts = sr_data.make_part_set(images, 64)
    noise = rng.normal(size=(len(parts), 3, 64, 64, 3)) * np.array([0.02, 0.05, 0.1])[
        None, :, None, None, None]
    outputs = np.clip(parts.parts[:, None] + noise, -0.1, 1.1).astype(np.float32)
    metric = psnr_metric(parts, outputs)
    for seed in range(3):
        a = np.random.default_rng(seed).integers(0, 3, len(parts))
        assert metric(a) == pytest.approx(assignment_psnr(parts, outputs, a), rel=1e-12, abs=0)


def test_the_pipeline_writes_the_export_file_of_its_workdir(sr_smoke):
    """The smoke run's export_data.npz holds the task's export data: the same sets, and a
    metric equal to the experiment's own test PSNR for every routing."""
    from experiments.tasks import get_task

    workdir, _ = sr_smoke
    path = os.path.join(workdir, EXPORT_FILE)
    assert os.path.isfile(path)
    stored = load_export_data(workdir, task="super_resolution")
    made = get_task("super_resolution").export_data(workdir)
    for name in ("representative", "calibration", "heldout", "test"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(made, name))
    np.testing.assert_array_equal(stored.test_frames, made.test_frames)
    assert stored.data_costs.tolist() == made.data_costs.tolist() == [3072.0, 5292.0, 12288.0]
    assert stored.task == "super_resolution" and stored.metric_name == "test PSNR-Y (dB)"
    test = sr_data.PartSet.load(os.path.join(workdir, "data", "test.npz"))
    with np.load(os.path.join(workdir, "cache", "test_outputs.npz")) as f:
        outputs = f["outputs"]
    for n in range(3):
        a = np.full(len(test), n)
        assert stored.test_metric(a) == pytest.approx(assignment_psnr(test, outputs, a),
                                                      rel=1e-12)
    assert isinstance(ExportData.load(path).test_metric, type(made.test_metric))
