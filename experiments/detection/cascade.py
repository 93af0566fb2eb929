"""The cascade gate (``--gate=cascade``): a linear router on the cheapest expert's own
detections.

The sensor runs the cheapest SSD (100 px: 123,811 weights, 6.66 M MACs per image, within
the paper's 1e8 cap on C_g for detection) on its 100x100 image and routes from what it
found: how many objects of each size it detected, how confidently. The compact gate,
trained from pixels, does not learn to count objects by size (WORKSPACE.md D79: R^2 <= 0.44
on its own training images), which is what decides whether an image needs resolution;
the cheapest expert already does (WORKSPACE.md D81).

Features of one image (:func:`features`, ``float32[M, NUM_FEATURES]``) from its K
detections ``[ymin, xmin, ymax, xmax, score, class]`` (normalized boxes; padding rows
have class -1): for each box-size bin (the side ``sqrt(h w)`` on the 300 px image, bins
split at :data:`SIZE_BINS` px), ``log(1 + count)`` of the detections scoring above each of
:data:`SCORE_THRESHOLDS` and ``log(1 + summed score)``; then the top score. The gate
(:func:`cascade_gate`) is one Dense layer ``[M, NUM_FEATURES] -> [M, N]``, trained by the
pipeline exactly as the image gates are (Algorithm 1 for enforce).

In the pipeline the features come from the cached detections of the cheapest expert
(the same detections its routing is scored with), so no expert runs again; raw images
(``BiasedMixture`` on images, the int8 export, the system) are refused with a message:
routing raw images means running that expert first (:func:`gate_inputs`).
"""
import numpy as np

from experiments.detection.data import IMAGE_SIZE

__all__ = ["SIZE_BINS", "SCORE_THRESHOLDS", "NUM_FEATURES", "features", "gate_inputs",
           "cascade_gate", "RAW_INPUT_ERROR"]

#: Box-size bin edges, px of the box side sqrt(h w) on the 300x300 image.
SIZE_BINS = (20.0, 40.0, 80.0)
#: Detection scores above which a detection is counted (one count per threshold and bin).
SCORE_THRESHOLDS = (0.2, 0.4, 0.6)
#: Features per image: per bin, one count per threshold and the summed score; the top score.
NUM_FEATURES = (len(SIZE_BINS) + 1) * (len(SCORE_THRESHOLDS) + 1) + 1

RAW_INPUT_ERROR = ("--gate=cascade routes from the cheapest expert's detections, not from "
                   "pixels: feed it experiments.detection.cascade.gate_inputs(detections) "
                   "(the int8 export and the system take --gate=compact or paper workdirs)")


def features(detections):
    """The cascade gate's input from one expert's detections.

    Args:
      detections: ``float[M, K, 6]`` rows ``(ymin, xmin, ymax, xmax, score, class)``,
        boxes normalized to the image; rows with class < 0 are padding.
    Returns:
      ``float32[M, NUM_FEATURES]`` (see the module docstring for the order).
    Raises:
      ValueError: not ``[M, K, 6]`` or not finite.
    """
    d = np.asarray(detections, np.float64)
    if d.ndim != 3 or d.shape[-1] != 6:
        raise ValueError(f"detections must be [M, K, 6], got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("detections hold non-finite values")
    score = np.where(d[..., 5] >= 0, d[..., 4], 0.0)
    side = np.sqrt(np.maximum((d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1]), 0.0))
    size_bin = np.digitize(side * IMAGE_SIZE, SIZE_BINS)
    out = []
    for k in range(len(SIZE_BINS) + 1):
        in_bin = size_bin == k
        for t in SCORE_THRESHOLDS:
            out.append(np.log1p(((score > t) & in_bin).sum(-1)))
        out.append(np.log1p((score * in_bin).sum(-1)))
    out.append(score.max(-1) if d.shape[1] else np.zeros(len(d)))
    return np.stack(out, axis=1).astype(np.float32)


def gate_inputs(detections):
    """The gate inputs ``float32[M, NUM_FEATURES]`` of every-expert detections
    ``[M, N, K, 6]`` (experts cheapest first: the cascade reads expert 0's)."""
    d = np.asarray(detections)
    if d.ndim != 4:
        raise ValueError(f"detections must be [M, N, K, 6], got shape {d.shape}")
    return features(d[:, 0])


def cascade_gate(num_experts):
    """A new cascade gate: ``float32[M, NUM_FEATURES] -> logits [M, num_experts]``, one
    Dense layer (``NUM_FEATURES x N + N`` weights)."""
    from bmoe_tf.backend import keras
    from bmoe_tf.checks import check_count

    check_count(num_experts, "num_experts", minimum=2)
    inputs = keras.Input((NUM_FEATURES,), name="cascade_features")
    logits = keras.layers.Dense(num_experts, name="logits")(inputs)
    return keras.Model(inputs, logits, name="cascade_gate")
