"""The action workdir as inputs for an int8 gate export
(``gating_tflite.export --task=action``).

Sets (gate inputs ``float32[M, 24, 24, 2 F_t]``, the MV maps stacked on channels in
pixels per frame, exactly as the experiment feeds its gates):

* representative: a seeded sample of 300 of the gate's training clips;
* calibration (offsets): the validation clips (the gate never trained on them);
* heldout: the validation clips mirrored left-right, horizontal motion negated (the
  same clips filmed in a mirror: a pan left becomes a pan right) -- inputs neither
  the offsets nor the quantization saw;
* test: the test clips in their natural order (:func:`experiments.action.natural_order`:
  source video by source video; one clip per frame, ``test_frames`` None); the metric
  is the experiment's test top-1 accuracy (%) of the routing (one expert per clip in
  that order), from the cached class probabilities (no expert runs), as a table
  (:class:`bmoe_tf.routed_metrics.Accuracy`).
"""
import os

import numpy as np

from bmoe_tf.routed_metrics import Accuracy
from experiments.layout import Layout
from experiments.action.clips import ClipSet, gate_input, natural_order
from experiments.stages import read_json
from experiments.export_files import encoded_test_costs
from gating_tflite.calibration import ExportData

__all__ = ["export_data", "mirror", "REPRESENTATIVE_CLIPS"]

REPRESENTATIVE_CLIPS = 300


def mirror(inputs):
    """Gate inputs ``[M, 24, 24, 2 F_t]`` of the left-right mirrored clips: columns
    reversed, horizontal components (even channels) negated."""
    out = np.array(inputs[:, :, ::-1], np.float32)
    out[..., 0::2] *= -1.0
    return out


def export_data(workdir):
    """:class:`gating_tflite.calibration.ExportData` of an action experiment workdir."""
    wd = Layout.reading(workdir)
    needed = [wd.split_file(s) for s in ("train", "validation", "test")]
    needed += [wd.cache_file("test", "probabilities"), wd.expert_table(),
               wd.report_json()]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{workdir} is not a finished action workdir: missing {missing}; "
                         "run python -m experiments.action first")
    sets = {s: ClipSet.load(wd.split_file(s)) for s in ("train", "validation", "test")}
    with np.load(wd.cache_file("test", "probabilities")) as f:
        probs = f["probabilities"]
    test = sets["test"]
    correct = np.argmax(probs, axis=-1) == test.labels[:, None]
    experts = read_json(wd.expert_table())
    train = sets["train"]
    pick = np.sort(np.random.default_rng(0).choice(
        len(train), min(REPRESENTATIVE_CLIPS, len(train)), replace=False))
    validation = gate_input(sets["validation"].mv)

    order = natural_order(test)  # the test clips are stored shuffled

    f_t = test.mv_frames
    return ExportData(
        representative=gate_input(train.mv[pick]),
        calibration=validation,
        heldout=mirror(validation),
        test=gate_input(test.mv[order]),
        test_frames=None,  # one clip per frame
        test_costs=encoded_test_costs(wd, order),
        test_metric=Accuracy(correct[order]),  # one expert per clip in natural order
        task="action",
        metric_name="test top-1 accuracy (%)",
        data_costs=np.array([e["data_cost"] for e in experts], np.float64),
        expert_names=tuple(e["name"] for e in experts),
        input_description=f"{f_t} motion-vector maps 24x24x2 stacked on channels (24x24x"
                          f"{2 * f_t}), pixels per frame",
        notes={"representative": f"{len(pick)} gate-training clips (seed 0)",
               "calibration": f"the {len(validation)} validation clips",
               "heldout": "the validation clips mirrored left-right (horizontal motion negated)",
               "test": f"the {len(test)} test clips in natural order (source video by "
                       "source video, clip-id order within one; one clip per frame)"})
