"""The SR workdir as inputs for an int8 gate export (``gating_tflite.export --task=super_resolution``).

Sets (parts ``float32[M, 64, 64, 3]``, RGB in [0, 1], exactly as the experiment
feeds its gates):

* representative: a seeded sample of 300 training parts;
* calibration (offsets): the training and validation images cut on the grids shifted
  by a quarter and three quarters of a part ((16, 16) and (48, 48));
* heldout: the same images cut on the grid shifted by half a part (32, 32) --
  windows neither the offsets nor the quantization saw, from the calibration
  distribution;

Why shifted windows: the gate was trained on the experiment's (0, 0) grid of the
training images, and its logits there are not those of unseen inputs -- offsets
calibrated on them missed b by 3.5 points on every shifted grid, while offsets from
the (16, 16) + (48, 48) windows land within 1 point on the others (WORKSPACE.md).
* test: the test parts in their natural order (the stored one: photo by photo, each
  photo's parts in raster order; ``test_frames`` is the photo of each part); the metric
  is the experiment's test PSNR-Y of the stitched images when each part is
  reconstructed by the expert the gate picks, as a table
  (:class:`bmoe_tf.routed_metrics.ImagePSNR`: each part's Y squared error under each
  expert, from the ``cache/test_outputs.npz`` expert outputs, summed per photo).
"""
import os

import numpy as np

from bmoe_tf.routed_metrics import ImagePSNR
from experiments.layout import Layout
from experiments.stages import read_json
from experiments.super_resolution import data as sr_data
from experiments.super_resolution.metrics import PEAK, rgb_to_y
from experiments.export_files import encoded_test_costs
from gating_tflite.calibration import ExportData

__all__ = ["export_data", "shifted_parts", "psnr_metric", "REPRESENTATIVE_PARTS"]

REPRESENTATIVE_PARTS = 300


def shifted_parts(part_set, shift):
    """``float32[P', s, s, 3]``: every image of ``part_set`` cut on a grid offset by ``shift``."""
    out = []
    for image in part_set.images_from_parts(part_set.parts):
        window = image[shift:, shift:]
        if min(window.shape[:2]) >= part_set.size:
            out.append(sr_data.cut_parts(window, part_set.size)[0])
    if not out:
        return np.zeros((0, part_set.size, part_set.size, 3), np.float32)
    return np.concatenate(out).astype(np.float32)


def psnr_metric(part_set, outputs):
    """:class:`bmoe_tf.routed_metrics.ImagePSNR` of ``part_set``'s photos: the test PSNR-Y
    of :func:`experiments.super_resolution.evaluate.assignment_psnr` as a table
    (``outputs``: ``[P, N, s, s, 3]``; the stitched photo is its parts, so its squared
    error is theirs summed)."""
    y_true = rgb_to_y(np.clip(part_set.parts, 0, 1))[:, None]
    sse = np.sum((rgb_to_y(np.clip(outputs, 0, 1)) - y_true) ** 2, axis=(2, 3))
    pixels = [r * c * part_set.size * part_set.size for r, c in part_set.grids]
    return ImagePSNR(sse, part_set.image_index, pixels, peak=PEAK)


def export_data(workdir):
    """:class:`gating_tflite.calibration.ExportData` of an SR experiment workdir."""
    wd = Layout.reading(workdir)
    needed = [wd.split_file(s) for s in ("train", "validation", "test")]
    needed += [wd.cache_file("test", "outputs"), wd.expert_table()]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{workdir} is not a finished super-resolution workdir: missing "
                         f"{missing}; run python -m experiments.super_resolution first")
    sets = {s: sr_data.PartSet.load(wd.split_file(s))
            for s in ("train", "validation", "test")}
    with np.load(wd.cache_file("test", "outputs")) as f:
        outputs = f["outputs"]
    experts = read_json(wd.expert_table())
    train = sets["train"].parts
    pick = np.sort(np.random.default_rng(0).choice(
        len(train), min(REPRESENTATIVE_PARTS, len(train)), replace=False))
    test_set = sets["test"]
    half = test_set.size // 2

    return ExportData(
        representative=train[pick],
        calibration=np.concatenate([shifted_parts(sets[s], shift)
                                    for shift in (half // 2, half + half // 2)
                                    for s in ("train", "validation")]),
        heldout=np.concatenate([shifted_parts(sets[s], half) for s in ("train", "validation")]),
        test=test_set.parts,
        test_frames=sr_data.test_frames(test_set),
        test_costs=encoded_test_costs(wd),
        test_metric=psnr_metric(test_set, outputs),
        task="super_resolution",
        metric_name="test PSNR-Y (dB)",
        data_costs=np.array([e["data_cost"] for e in experts], np.float64),
        expert_names=tuple(e["name"] for e in experts),
        input_description="RGB in [0, 1]",
        notes={"representative": f"{len(pick)} training parts (seed 0)",
               "calibration": f"training + validation images on the grids shifted by "
                              f"{half // 2} and {half + half // 2} px",
               "heldout": f"training + validation images on the grid shifted by {half} px",
               "test": f"test parts ({', '.join(test_set.names)}), photo by photo, each "
                       "photo's parts in raster order (test_frames: the photo of each part)"})
