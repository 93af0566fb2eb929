"""The detection workdir as inputs for an int8 gate export
(``gating_tflite.export --task=detection``).

Sets (gate views ``float32[M, r, r, 3]``, RGB in [0, 1], exactly as the experiment
feeds its gates: the 224x224 centre crop, resized to the run's gate view r):

* representative: a seeded sample of 300 training images;
* calibration (offsets): the validation images (the gate never trained on them);
* heldout: the validation images mirrored left-right -- inputs neither the offsets
  nor the quantization saw, from the same distribution;
* test: the test images in their natural order, the stored one (one image per frame:
  ``test_frames`` None); the metric is the experiment's test mAP (%) of the routing,
  from the cached detections (no expert runs): the ground truth and every expert's
  detections (:class:`bmoe_tf.routed_metrics.DetectionMAP`).
"""
import os

import numpy as np

from bmoe_tf.routed_metrics import DetectionMAP
from experiments.layout import Layout
from experiments.detection.data import DetectionSet, gate_view
from experiments.stages import read_json
from experiments.export_files import encoded_test_costs
from gating_tflite.calibration import ExportData

__all__ = ["export_data", "REPRESENTATIVE_IMAGES"]

REPRESENTATIVE_IMAGES = 300


def export_data(workdir):
    """:class:`gating_tflite.calibration.ExportData` of a detection experiment workdir.

    Raises:
      ValueError: not a finished detection workdir.
      NotImplementedError: its gate is ``--gate=cascade`` (no image input to export).
    """
    wd = Layout.reading(workdir)
    needed = [wd.split_file(s) for s in ("train", "validation", "test")]
    needed += [wd.cache_file("test", "detections"), wd.expert_table(), wd.report_json()]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{workdir} is not a finished detection workdir: missing {missing}; "
                         "run python -m experiments.detection first")
    report = read_json(wd.report_json())
    if report.get("gate", {}).get("kind") == "cascade":
        from experiments.detection.cascade import RAW_INPUT_ERROR

        raise NotImplementedError(f"{workdir}: {RAW_INPUT_ERROR}")
    view = int(report["gate_view"])
    sets = {s: DetectionSet.load(wd.split_file(s)) for s in ("train", "validation",
                                                                        "test")}
    with np.load(wd.cache_file("test", "detections")) as f:
        detections = f["detections"]
    experts = read_json(wd.expert_table())
    train = sets["train"]
    pick = np.sort(np.random.default_rng(0).choice(
        len(train), min(REPRESENTATIVE_IMAGES, len(train)), replace=False))
    test = sets["test"]
    metric = DetectionMAP(test.boxes, test.labels, test.image_index, len(test),
                          len(test.class_names), detections)
    validation = gate_view(sets["validation"].images, view)

    return ExportData(
        representative=gate_view(train.images[pick], view),
        calibration=validation,
        heldout=np.ascontiguousarray(validation[:, :, ::-1]),
        test=gate_view(test.images, view),
        test_frames=None,  # natural order = the stored one, one image per frame
        test_costs=encoded_test_costs(wd),
        test_metric=metric,
        task="detection",
        metric_name="test mAP@[.5:.95] (%)",
        data_costs=np.array([e["data_cost"] for e in experts], np.float64),
        expert_names=tuple(e["name"] for e in experts),
        input_description=f"RGB in [0, 1], the 224x224 centre crop resized to {view}x{view}",
        notes={"representative": f"{len(pick)} training images (seed 0)",
               "calibration": f"the {len(validation)} validation images",
               "heldout": "the validation images mirrored left-right",
               "test": f"the {len(test)} test images in stored order (one per frame)"})
