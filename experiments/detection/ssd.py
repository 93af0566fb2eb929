"""SSD experts of Section IV-B: a compact MobileNet-style single-shot detector.

Each expert E_n sees P_n(x), the 300x300 RGB image resized (anti-aliased) to
R_n x R_n (100, 150, 300), and returns detections. One fully convolutional
architecture serves every resolution; only the number of anchors changes
(``ceil(R / stride)^2`` cells per feature level).

Conventions
-----------
* Boxes are normalized ``(ymin, xmin, ymax, xmax)`` in [0, 1]; anchors are
  normalized ``(cy, cx, h, w)``, the same sizes at every resolution.
* Raw model output ``[B, A, 4 + C + 1]``: 4 box offsets (:func:`encode_boxes`),
  then C + 1 class logits with **background first** (logit 0 is background,
  logit c + 1 is data class c), so a matched target ``cls_targets`` indexes the
  logits directly.
* Detections ``[B, K, 6]``: ``(ymin, xmin, ymax, xmax, score, class)`` with class
  in the data's 0..C-1, sorted by score; padding rows have score 0 and class -1.

Architecture (width 1, 122,650 parameters with the 5 generated classes): a 3x3
stride-2 stem and depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each
followed by BatchNorm and ReLU6): 16 (/2), 32 (/4), 32, 64 (/8), 64, 128 (/16), 128,
192 (/32), 192. Features at the strides of :class:`AnchorConfig` (the last block at
each stride) feed one SSDLite head per level (3x3 depthwise + BN + ReLU6, then a
1x1 convolution to ``anchors_per_cell * (4 + C + 1)``, its background bias starting
at ``log(99 C)``). Default anchors: strides 8/16/32, three square anchors per cell
(0.03/0.05/0.08, 0.12/0.18/0.26, 0.36/0.5/0.7 of the image side) for objects of
7 to 280 px in a 300 px image; 702 / 1458 / 5715 anchors at 100 / 150 / 300 px.
XLA compiles the model and loss, but on CPU an XLA training step is ~8x slower
(depthwise convolutions), so training does not use it.
"""
import dataclasses
import functools
import math
import os

import numpy as np

from bmoe_tf.backend import keras, tf
from bmoe_tf.experts import Expert
from bmoe_tf.training import resumable_fit
from experiments.stages import atomic_dir

__all__ = [
    "interpolate_epochs",
    "AnchorConfig", "anchors", "anchors_per_cell", "feature_sizes", "encode_boxes",
    "decode_boxes", "box_iou", "match", "match_set", "ssd_loss", "nms", "build_ssd",
    "postprocess", "resize_images", "train_ssd", "export_ssd", "load_expert", "detect",
    "INPUT_SIZE", "VARIANCES", "QUICK_TRAINING",
]

#: Side of the raw images every expert receives (P_n resizes them to R_n).
INPUT_SIZE = 300
#: SSD box-coding variances (centre, size).
VARIANCES = (0.1, 0.2)
#: Training settings (``train_ssd`` keywords) for the task's quick preset, tuned on
#: the generated set (1200 training / 300 validation images) on 2 shared CPU cores:
#: about 1 / 2 / 5.5 minutes (validation loss every epoch included) for val mAP
#: (COCO AP@[.5:.95]) 0.093 / 0.191 / 0.406 at 100 / 150 / 300 px. The 300 px
#: expert needs the most epochs: with fewer it falls towards the 150 px one.
QUICK_TRAINING = {
    100: {"epochs": 16, "batch_size": 32, "learning_rate": 2e-2},
    150: {"epochs": 20, "batch_size": 32, "learning_rate": 2e-2},
    300: {"epochs": 18, "batch_size": 32, "learning_rate": 2e-2},
}

# (filters, stride) of the depthwise-separable blocks after the stride-2, 16-filter stem.
_BLOCKS = ((32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (192, 2), (192, 1),
           (192, 2), (192, 1))
_STEM_FILTERS = 16
_BN_MOMENTUM = 0.97


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """Anchors in normalized coordinates, the same for every resolution.

    Attributes:
      strides: feature levels (powers of two from 8 to 64; the backbone has them).
      sizes: per level, anchor side lengths as fractions of the image side
        (``sqrt(h * w)``).
      aspect_ratios: width / height ratios, applied to every size of every level.
        Anchors per cell at level l: ``len(sizes[l]) * len(aspect_ratios)``.
    """
    strides: tuple = (8, 16, 32)
    sizes: tuple = ((0.03, 0.05, 0.08), (0.12, 0.18, 0.26), (0.36, 0.5, 0.7))
    aspect_ratios: tuple = (1.0,)

    def __post_init__(self):
        if len(self.strides) != len(self.sizes) or not self.strides:
            raise ValueError(f"AnchorConfig needs one tuple of sizes per stride, got "
                             f"strides={self.strides}, sizes={self.sizes}")
        if any(s not in (8, 16, 32, 64) for s in self.strides) or \
                list(self.strides) != sorted(set(self.strides)):
            raise ValueError(f"strides must be increasing values from 8, 16, 32, 64, got "
                             f"{self.strides}")
        if any(not level or any(not 0 < s <= 2 for s in level) for level in self.sizes):
            raise ValueError(f"anchor sizes must be non-empty tuples in (0, 2], got {self.sizes}")
        if not self.aspect_ratios or any(r <= 0 for r in self.aspect_ratios):
            raise ValueError(f"aspect ratios must be positive, got {self.aspect_ratios}")


def anchors_per_cell(config=AnchorConfig()):
    """Anchors per feature-map cell, one number per level."""
    return tuple(len(sizes) * len(config.aspect_ratios) for sizes in config.sizes)


def feature_sizes(resolution, config=AnchorConfig()):
    """Feature-map sides of :func:`build_ssd` at ``resolution``: ``ceil(R / stride)``."""
    return tuple(-(-int(resolution) // s) for s in config.strides)


@functools.lru_cache(maxsize=None)
def _anchors(resolution, config):
    out = []
    for f, sizes in zip(feature_sizes(resolution, config), config.sizes):
        shapes = [(s / math.sqrt(r), s * math.sqrt(r)) for s in sizes for r in config.aspect_ratios]
        centres = (np.arange(f, dtype=np.float64) + 0.5) / f
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # [f, f], row-major cells
        grid = np.empty((f, f, len(shapes), 4), np.float64)
        grid[..., 0] = cy[..., None]
        grid[..., 1] = cx[..., None]
        grid[..., 2] = [h for h, _ in shapes]
        grid[..., 3] = [w for _, w in shapes]
        out.append(grid.reshape(-1, 4))
    result = np.concatenate(out).astype(np.float32)
    result.setflags(write=False)
    return result


def anchors(resolution, config=AnchorConfig()):
    """``[A, 4]`` float32 anchors ``(cy, cx, h, w)``, normalized.

    Order: level by level (increasing stride); within a level row-major cells
    (centre ``((i + 0.5) / f, (j + 0.5) / f)``), then the cell's anchors (sizes
    outer, aspect ratios inner) -- the order of :func:`build_ssd`'s output.
    """
    return _anchors(int(resolution), config).copy()


@functools.lru_cache(maxsize=None)
def _mirror_index(resolution, config):
    """Anchor index of each anchor's horizontal mirror image (column j -> f - 1 - j)."""
    out, base = [], 0
    for f, k in zip(feature_sizes(resolution, config), anchors_per_cell(config)):
        idx = np.arange(f * f * k).reshape(f, f, k)
        out.append(base + idx[:, ::-1, :].reshape(-1))
        base += f * f * k
    return np.concatenate(out).astype(np.int32)


# ---- box coding --------------------------------------------------------------------------
def _is_tf(*xs):
    return any(isinstance(x, (tf.Tensor, tf.Variable)) for x in xs)


def encode_boxes(boxes, anchors, variances=VARIANCES):
    """SSD offsets of ``boxes [..., 4] (ymin, xmin, ymax, xmax)`` w.r.t. ``anchors [..., 4]``.

    ``((cy - acy) / ah / v0, (cx - acx) / aw / v0, log(h / ah) / v1, log(w / aw) / v1)``.
    numpy in, numpy out; a tf tensor in either argument gives a tf tensor.
    """
    if _is_tf(boxes, anchors):
        xp, log, stack = tf, tf.math.log, tf.stack
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        anchors = tf.convert_to_tensor(anchors, tf.float32)
    else:
        xp, log, stack = np, np.log, np.stack
        boxes = np.asarray(boxes, np.float32)
        anchors = np.asarray(anchors, np.float32)
    v0, v1 = float(variances[0]), float(variances[1])
    h = xp.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    w = xp.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    cy = (boxes[..., 0] + boxes[..., 2]) * 0.5
    cx = (boxes[..., 1] + boxes[..., 3]) * 0.5
    ah, aw = anchors[..., 2], anchors[..., 3]
    return stack([(cy - anchors[..., 0]) / ah / v0, (cx - anchors[..., 1]) / aw / v0,
                  log(h / ah) / v1, log(w / aw) / v1], -1)


def decode_boxes(offsets, anchors, variances=VARIANCES):
    """The inverse of :func:`encode_boxes`: ``[..., 4]`` offsets -> (ymin, xmin, ymax, xmax)."""
    if _is_tf(offsets, anchors):
        exp, stack, minimum = tf.exp, tf.stack, tf.minimum
        offsets = tf.convert_to_tensor(offsets, tf.float32)
        anchors = tf.convert_to_tensor(anchors, tf.float32)
    else:
        exp, stack, minimum = np.exp, np.stack, np.minimum
        offsets = np.asarray(offsets, np.float32)
        anchors = np.asarray(anchors, np.float32)
    v0, v1 = float(variances[0]), float(variances[1])
    cy = anchors[..., 0] + offsets[..., 0] * v0 * anchors[..., 2]
    cx = anchors[..., 1] + offsets[..., 1] * v0 * anchors[..., 3]
    # exp of at most 10 (a box 2.2e4 times its anchor): no inf from untrained outputs
    h = anchors[..., 2] * exp(minimum(offsets[..., 2] * v1, 10.0))
    w = anchors[..., 3] * exp(minimum(offsets[..., 3] * v1, 10.0))
    return stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], -1)


def _anchor_corners(anchors):
    a = np.asarray(anchors, np.float64)
    return np.stack([a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2,
                     a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2], -1)


def box_iou(a, b):
    """``[n, m]`` IoU of numpy boxes ``a [n, 4]`` and ``b [m, 4]`` (ymin, xmin, ymax, xmax)."""
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match(gt_boxes, gt_labels, anchors, iou_threshold=0.5, variances=VARIANCES):
    """SSD matching of one image's ground truth to ``anchors [A, 4] (cy, cx, h, w)``.

    Every anchor whose best IoU with a ground-truth box is ``>= iou_threshold`` is
    matched to that box; then every box claims its own best anchor (so each box
    has at least one; where two boxes have the same best anchor the later wins).

    Returns:
      ``(loc_targets float32 [A, 4], cls_targets int32 [A])``: encoded offsets of
      the matched box (zeros where unmatched) and ``label + 1`` (0 = background).
      An image without ground truth is all background.
    """
    anchors = np.asarray(anchors, np.float32)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1).astype(np.int32)
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"{len(gt_boxes)} boxes but {len(gt_labels)} labels")
    num = len(anchors)
    loc = np.zeros((num, 4), np.float32)
    cls = np.zeros((num,), np.int32)
    if len(gt_boxes) == 0:
        return loc, cls
    iou = box_iou(gt_boxes, _anchor_corners(anchors))  # [g, A]
    best_gt = iou.argmax(0)
    best_iou = iou[best_gt, np.arange(num)]
    for g, a in enumerate(iou.argmax(1)):  # each box's best anchor
        best_gt[a], best_iou[a] = g, 2.0
    pos = best_iou >= iou_threshold
    cls[pos] = gt_labels[best_gt[pos]] + 1
    loc[pos] = encode_boxes(gt_boxes[best_gt[pos]], anchors[pos], variances)
    return loc, cls


def match_set(boxes, labels, image_index, num_images, anchors, iou_threshold=0.5):
    """:func:`match` for every image of a set (flat boxes with ``image_index``).

    Returns ``(loc [M, A, 4] float32, cls [M, A] int32)``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    image_index = np.asarray(image_index, np.int64).reshape(-1)
    if not len(boxes) == len(labels) == len(image_index):
        raise ValueError("boxes, labels and image_index must have the same length")
    if len(image_index) and (image_index.min() < 0 or image_index.max() >= num_images):
        raise ValueError(f"image_index out of range [0, {num_images})")
    num = len(anchors)
    loc = np.zeros((num_images, num, 4), np.float32)
    cls = np.zeros((num_images, num), np.int32)
    order = np.argsort(image_index, kind="stable")
    starts = np.searchsorted(image_index[order], np.arange(num_images + 1))
    for i in range(num_images):
        sel = order[starts[i]:starts[i + 1]]
        if len(sel):
            loc[i], cls[i] = match(boxes[sel], labels[sel], anchors, iou_threshold)
    return loc, cls


# ---- loss --------------------------------------------------------------------------------
def ssd_loss(loc_targets, cls_targets, loc_pred, cls_logits, neg_pos_ratio=3):
    """Per-image SSD loss ``[B]`` (float32).

    ``(sum over positives of smooth-L1(loc) + softmax CE over positives and the
    hardest negatives) / max(1, P)``, P = number of positive anchors of the image.
    Negatives are the background anchors with the largest CE, ``min(neg_pos_ratio
    * max(P, 1), A - P)`` of them per image (at least ``neg_pos_ratio`` so an image
    without objects still teaches background). Vectorised over the batch.

    Args:
      loc_targets, loc_pred: ``[B, A, 4]``.
      cls_targets: ``[B, A]`` int, 0 = background, c + 1 = class c.
      cls_logits: ``[B, A, C + 1]``, background first.
    """
    loc_targets = tf.convert_to_tensor(loc_targets, tf.float32)
    loc_pred = tf.cast(loc_pred, tf.float32)
    cls_logits = tf.cast(cls_logits, tf.float32)
    cls_targets = tf.cast(cls_targets, tf.int32)
    pos = cls_targets > 0
    posf = tf.cast(pos, tf.float32)
    num_pos = tf.reduce_sum(posf, -1)  # [B]

    diff = tf.abs(loc_pred - loc_targets)
    smooth_l1 = tf.reduce_sum(tf.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5), -1)
    loc_loss = tf.reduce_sum(smooth_l1 * posf, -1)

    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=cls_targets, logits=cls_logits)
    pos_ce = tf.reduce_sum(ce * posf, -1)
    # hard negative mining: rank background anchors by CE (positives ranked last)
    neg_ce = tf.where(pos, tf.constant(-1.0, ce.dtype), tf.stop_gradient(ce))
    order = tf.argsort(neg_ce, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # rank of each anchor
    num_anchors = tf.cast(tf.shape(cls_targets)[-1], tf.float32)
    num_neg = tf.minimum(float(neg_pos_ratio) * tf.maximum(num_pos, 1.0), num_anchors - num_pos)
    neg = tf.logical_and(tf.cast(rank, tf.float32) < num_neg[:, None], tf.logical_not(pos))
    neg_loss = tf.reduce_sum(ce * tf.cast(neg, tf.float32), -1)
    return (loc_loss + pos_ce + neg_loss) / tf.maximum(num_pos, 1.0)


def _keras_loss(neg_pos_ratio):
    def ssd(y_true, y_pred):
        return ssd_loss(y_true[..., :4], tf.cast(tf.round(y_true[..., 4]), tf.int32),
                        y_pred[..., :4], y_pred[..., 4:], neg_pos_ratio)
    return ssd


# ---- NMS and postprocessing -------------------------------------------------------------
def nms(boxes, scores, iou_threshold=0.45, max_output=100):
    """Greedy NMS: indices (int32) of kept boxes, by decreasing score.

    A box is dropped when its IoU with an already kept box is ``> iou_threshold``
    (``tf.image.non_max_suppression``).
    """
    return tf.image.non_max_suppression(tf.convert_to_tensor(boxes, tf.float32),
                                        tf.convert_to_tensor(scores, tf.float32),
                                        int(max_output), iou_threshold=float(iou_threshold))


def postprocess(raw, anchors, *, max_detections=100, score_threshold=0.01, iou_threshold=0.45):
    """Raw SSD output ``[B, A, 4 + C + 1]`` -> detections ``[B, K, 6]`` float32.

    Rows ``(ymin, xmin, ymax, xmax, score, class)``, K = ``max_detections``, sorted
    by score, boxes clipped to [0, 1], class in 0..C-1; padding rows are zeros with
    class -1. Class-wise NMS (``tf.image.combined_non_max_suppression``) over the
    softmax scores above ``score_threshold``. Graph-safe.
    """
    raw = tf.cast(raw, tf.float32)
    boxes = decode_boxes(raw[..., :4], tf.constant(np.asarray(anchors, np.float32)))
    scores = tf.nn.softmax(raw[..., 4:], axis=-1)[..., 1:]  # [B, A, C]
    k = int(max_detections)
    nmsed = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], scores, max_output_size_per_class=k, max_total_size=k,
        iou_threshold=float(iou_threshold), score_threshold=float(score_threshold),
        pad_per_class=False, clip_boxes=True)
    valid = tf.range(k)[None, :] < nmsed.valid_detections[:, None]  # [B, K]
    validf = tf.cast(valid, tf.float32)
    out_boxes = nmsed.nmsed_boxes * validf[..., None]
    out_scores = nmsed.nmsed_scores * validf
    out_classes = tf.where(valid, nmsed.nmsed_classes, -1.0)
    return tf.concat([out_boxes, out_scores[..., None], out_classes[..., None]], -1)


# ---- model -------------------------------------------------------------------------------
def resize_images(images, resolution):
    """P_n: ``[B, H, W, 3]`` uint8 (0..255) or float (in [0, 1]) -> float32 ``[B, R, R, 3]``.

    Anti-aliased bilinear ``tf.image.resize(..., antialias=True)``; the identity
    (up to the uint8 scaling) when the images already have side R.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    elif images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    r = int(resolution)
    if images.shape.rank != 4:
        raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    if tuple(images.shape[1:3]) == (r, r):
        return images
    return tf.image.resize(images, (r, r), method="bilinear", antialias=True)


def _conv_bn(x, filters, stride, name):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            name=name)(x)
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def _separable(x, filters, stride, name):
    x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                     name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_pw_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def build_ssd(resolution, num_classes, *, config=AnchorConfig(), width=1.0, name=None):
    """The SSD at ``resolution``: float32 ``[B, R, R, 3]`` in [0, 1] -> ``[B, A, 4 + C + 1]``.

    Output per anchor (order of :func:`anchors`): 4 offsets (:func:`encode_boxes`),
    then ``num_classes + 1`` logits, background first. ``width`` multiplies every
    layer's channels (rounded to multiples of 8). Weights do not depend on the
    resolution (fully convolutional).
    """
    r, c = int(resolution), int(num_classes)
    if r < max(config.strides) or c < 1:
        raise ValueError(f"need resolution >= {max(config.strides)} and num_classes >= 1, got "
                         f"{resolution}, {num_classes}")

    def ch(n):
        return max(8, int(round(n * width / 8)) * 8)

    inputs = keras.Input((r, r, 3), name="images")
    x = _conv_bn(inputs, ch(_STEM_FILTERS), 2, "stem")
    stride, features = 2, {}
    for i, (filters, s) in enumerate(_BLOCKS):
        if stride * s > max(config.strides):
            break
        x = _separable(x, ch(filters), s, f"block{i + 1}")
        stride *= s
        features[stride] = x  # the last block at each stride
    outputs = []
    for f, k, s in zip(feature_sizes(r, config), anchors_per_cell(config), config.strides):
        h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                         name=f"head{s}_dw")(features[s])
        h = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"head{s}_bn")(h)
        h = keras.layers.ReLU(6.0, name=f"head{s}_relu")(h)
        # background logit starts at log(99 C): every anchor starts as 99 % background,
        # as RetinaNet's prior (keeps the first steps from drowning in negatives)
        bias = np.zeros((k, 5 + c), np.float32)
        bias[:, 4] = math.log(99.0 * c)
        h = keras.layers.Conv2D(k * (5 + c), 1, name=f"head{s}_out",
                                bias_initializer=keras.initializers.Constant(
                                    bias.reshape(-1).tolist()))(h)
        if tuple(h.shape[1:3]) != (f, f):
            raise AssertionError(f"feature map {h.shape} at stride {s} is not {f}x{f}")
        outputs.append(keras.layers.Reshape((f * f * k, 5 + c), name=f"head{s}_flat")(h))
    out = keras.layers.Concatenate(axis=1, name="raw")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, out, name=name or f"ssd{r}")


# ---- training ----------------------------------------------------------------------------
def _resize_all(images, resolution, chunk=256):
    """Training inputs at R: uint8 kept as is when R is the image side, float32 otherwise."""
    images = np.asarray(images)
    r = int(resolution)
    if images.shape[1:3] == (r, r):
        return images if images.dtype == np.uint8 else images.astype(np.float32)
    parts = [resize_images(images[i:i + chunk], r).numpy() for i in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, r, r, 3), np.float32)


def _set_targets(data_set, resolution, config):
    a = anchors(resolution, config)
    images = np.asarray(data_set.images)
    loc, cls = match_set(data_set.boxes, data_set.labels, data_set.image_index, len(images), a)
    y = np.concatenate([loc, cls[..., None].astype(np.float32)], -1)  # [M, A, 5]
    return _resize_all(images, resolution), y


def _as_float(x):
    return tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else x


def train_ssd(model, resolution, train_set, validation_set=None, *, epochs, batch_size=32,
              learning_rate=2e-2, seed=0, checkpoint_dir=None, verbose=1, config=AnchorConfig(),
              flip=True, weight_decay=0.0, warmup_epochs=1, validation_freq=1, callbacks=()):
    """Trains ``model`` (from :func:`build_ssd` at ``resolution``) with :func:`ssd_loss`.

    Images are resized to R once (:func:`resize_images`) and the targets matched
    once in numpy; every epoch reads a permutation drawn from ``(seed, epoch)``
    (drop-remainder batches) with a random horizontal flip per image (``flip``;
    boxes flipped too: the anchor grid is mirror-symmetric, so the targets are
    mirrored instead of re-matched), so an epoch sees the same data however the run
    was interrupted. Adam with a linear warm-up over ``warmup_epochs`` and cosine
    decay to 1 % of ``learning_rate`` over all ``epochs``.

    Args:
      train_set, validation_set: ``DetectionSet``-like (``images [M, 300, 300, 3]``
        uint8, flat ``boxes``, ``labels``, ``image_index``); ``validation_set`` may
        be None.
      epochs: total number of epochs (including those done before a resume).
      checkpoint_dir: when given, model, optimizer, epoch count and history are
        saved after every epoch and a later call resumes after the last saved
        epoch with the weights of an uninterrupted run (a killed run loses at most
        one epoch); deleted when training ends
        (:func:`bmoe_tf.training.resumable_fit`).
      verbose: 0 silent, 1 one line per epoch, 2 Keras progress bars too.
      weight_decay: > 0 uses AdamW with this decoupled weight decay.
      validation_freq: validate after every this many epochs (Keras semantics:
        after epoch e when ``e % validation_freq == 0``, e counted from 1); the
        validation loss costs about 0.3 / 0.6 / 2.3 s per epoch for 300 images at
        100 / 150 / 300 px on 2 CPU cores.
      callbacks: extra Keras callbacks.

    Returns:
      The history of all epochs (also those run before a resume): ``loss`` and
      ``seconds`` (wall time) per epoch, ``val_loss`` per validation.
    """
    r = int(resolution)
    if tuple(model.input_shape[1:]) != (r, r, 3):
        raise ValueError(f"model input {model.input_shape} does not match resolution {r}")
    num_anchors = len(anchors(r, config))
    if model.output_shape[1] != num_anchors:
        raise ValueError(f"model predicts {model.output_shape[1]} anchors, config has "
                         f"{num_anchors} at {r} px")
    x_train, y_train = _set_targets(train_set, r, config)
    n = len(x_train)
    batch_size = int(min(batch_size, n))
    if n == 0:
        raise ValueError("train_set is empty")
    steps = n // batch_size

    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_epochs else learning_rate, max(1, (epochs - warmup_epochs) * steps),
        alpha=0.01, warmup_target=learning_rate if warmup_epochs else None,
        warmup_steps=int(warmup_epochs * steps))
    if weight_decay:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss=_keras_loss(3))  # XLA: ~8x slower on CPU

    # per epoch: a permutation and flip flags drawn from (seed, epoch)
    def draws(e):
        rng = np.random.default_rng([int(seed), e])
        idx = rng.permutation(n)[:steps * batch_size].reshape(steps, batch_size)
        flips = (rng.random((steps, batch_size)) < 0.5 if flip else
                 np.zeros((steps, batch_size), bool))
        return idx, flips

    x_all, y_all = tf.constant(x_train), tf.constant(y_train)
    mirror = tf.constant(_mirror_index(r, config))
    sign = tf.constant([1.0, -1.0, 1.0, 1.0, 1.0])

    def load(batch, flipped):
        x = _as_float(tf.gather(x_all, batch))
        y = tf.gather(y_all, batch)
        f = flipped[:, None, None, None]
        x = tf.where(f, x[:, :, ::-1, :], x)
        y = tf.where(flipped[:, None, None], tf.gather(y, mirror, axis=1) * sign, y)
        return x, y

    no_autograph = tf.autograph.experimental.do_not_convert

    def data(first_epoch):
        idx, flips = zip(*(draws(e) for e in range(first_epoch, epochs)))
        return (tf.data.Dataset.from_tensor_slices((np.concatenate(idx).astype(np.int32),
                                                    np.concatenate(flips)))
                .map(no_autograph(load), num_parallel_calls=1, deterministic=True)
                .prefetch(2))

    val = None
    if validation_set is not None and len(validation_set.images):
        x_val, y_val = _set_targets(validation_set, r, config)
        val = (tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(2 * batch_size)
               .map(no_autograph(lambda x, y: (_as_float(x), y))))
    return resumable_fit(model, data, epochs=epochs, steps_per_epoch=steps, validation_data=val,
                         validation_freq=validation_freq, checkpoint_dir=checkpoint_dir,
                         verbose=verbose, callbacks=callbacks)


# ---- export and inference ----------------------------------------------------------------
class _Serving(tf.Module):
    # plain attributes (not tf.Module's properties), saved with the object: TF Hub's
    # reusable-SavedModel names, so hub.KerasLayer (hence Expert.variables) sees them
    variables = ()
    trainable_variables = ()

    def __init__(self, model, resolution, config, max_detections):
        super().__init__(name=f"ssd{resolution}_serving")
        # the weights are tracked as plain lists and the model is called through a
        # closure (untracked): saving a tracked Keras model would also trace and save
        # every layer's call functions, which takes several times longer
        self.variables = list(model.variables)
        self.trainable_variables = list(model.trainable_variables)
        self._model = functools.partial(model.__call__, training=False)
        self._anchors = anchors(resolution, config)
        self._max_detections = int(max_detections)

    @tf.function
    def __call__(self, images):
        raw = self._model(images)
        return postprocess(raw, self._anchors, max_detections=self._max_detections)


def export_ssd(model, resolution, path, *, config=AnchorConfig(), max_detections=100):
    """Writes a SavedModel: float32 ``[None, R, R, 3]`` in [0, 1] -> detections ``[None, K, 6]``.

    The module's ``__call__`` (also the ``serving_default`` signature) runs the
    model and :func:`postprocess`. Written to ``path + ".partial"`` and renamed, so
    ``path`` never holds a partial export. Returns ``path``.
    """
    r = int(resolution)
    path = os.path.normpath(os.fspath(path))
    module = _Serving(model, r, config, max_detections)
    spec = tf.TensorSpec([None, r, r, 3], tf.float32, name="images")
    concrete = module.__call__.get_concrete_function(spec)
    with atomic_dir(path) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": concrete})
    return path


def load_expert(path, resolution, *, name=None):
    """The exported SSD at ``path`` as a :class:`bmoe_tf.Expert` on 300x300x3 images.

    P_n is :func:`resize_images` to R; d_n is the float32 bytes of P_n(x):
    ``3 * R * R * 4`` (120000, 270000, 1080000 bytes at 100, 150, 300).
    """
    r = int(resolution)
    return Expert(os.fspath(path), preprocess=functools.partial(resize_images, resolution=r),
                  name=name or f"ssd{r}", input_shape=(INPUT_SIZE, INPUT_SIZE, 3))


def detect(expert_or_model, images, batch_size=64, *, config=AnchorConfig(), max_detections=100,
           verbose=0):
    """Detections ``[M, K, 6]`` float32 for raw images ``[M, 300, 300, 3]`` (uint8 or float).

    ``expert_or_model``: a :class:`bmoe_tf.Expert` (e.g. from :func:`load_expert`),
    or a Keras model from :func:`build_ssd` (then images are resized to its input
    size and :func:`postprocess` applied with ``config`` and ``max_detections``).
    """
    images = np.asarray(images)
    if isinstance(expert_or_model, Expert):
        expert = expert_or_model

        @tf.function(autograph=False)
        def run(x):
            return expert(x)
    elif isinstance(expert_or_model, keras.Model):
        model = expert_or_model
        r = int(model.input_shape[1])
        a = anchors(r, config)

        @tf.function(autograph=False)
        def run(x):
            raw = model(resize_images(x, r), training=False)
            return postprocess(raw, a, max_detections=max_detections)
    else:
        raise ValueError(f"detect needs an Expert or a Keras SSD model, got "
                         f"{type(expert_or_model).__name__}")
    out = []
    for i in range(0, len(images), int(batch_size)):
        out.append(run(tf.constant(images[i:i + batch_size])).numpy())
        if verbose:
            print(f"detect: {min(i + batch_size, len(images))}/{len(images)}", flush=True)
    if not out:
        raise ValueError("no images")
    return np.concatenate(out).astype(np.float32)


def interpolate_epochs(default, resolutions):
    """Expert epochs for resolutions the preset does not list: interpolated in R."""
    return tuple(int(round(np.interp(r, default.resolutions, default.expert_epochs)))
                 for r in resolutions)
