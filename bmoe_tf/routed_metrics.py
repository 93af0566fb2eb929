"""A task's metric of a routing, from tables stored once: no expert and no task code runs.

A routing of M inputs to N frozen experts is ``assignment int[M]``; a task's metric of
it depends only on what each expert produced for each input, so it is a fixed function
of per-input, per-expert tables computed once (the expert cache). Each class here is one
such function, described by arrays only, so that it can be written to a file
(:meth:`RoutedMetric.arrays`) and read back (:func:`metric_from_arrays`) by a program
that has none of the task's code -- the int8 export (``gating_tflite``) computes the
task metric of the int8 gate's routing this way from the workdir's ``export_data.npz``.

* :class:`Accuracy` -- ``100 mean_i correct[i, a_i]`` (action: top-1 accuracy, %);
* :class:`ImagePSNR` -- the mean over images of ``10 log10(peak^2 / MSE)``, each image's
  MSE summed from its parts' squared errors (SR: per-photo Y-PSNR of the stitched
  reconstruction, dB);
* :class:`DetectionMAP` -- ``100 x`` COCO mAP@[.5:.95] of the union of each image's
  detections from its chosen expert (:class:`bmoe_tf.coco_map.RoutingEvaluator`).

Every metric is called as ``metric(assignment) -> float``.
"""
import numpy as np

__all__ = ["RoutedMetric", "Accuracy", "ImagePSNR", "DetectionMAP", "METRICS",
           "metric_from_arrays"]


def _table(value, name, dtype=np.float64):
    t = np.asarray(value)
    if t.ndim != 2 or t.shape[1] < 1:
        raise ValueError(f"{name} must be [M, N] (one row per input, one column per expert), "
                         f"got shape {t.shape}")
    return t.astype(dtype)


class RoutedMetric:
    """Base: a metric of ``assignment int[M]`` from stored arrays.

    Subclasses set :attr:`KIND` (the name the file records), implement
    :meth:`__call__` and :meth:`arrays` (``{name: np.ndarray}``, every constructor
    argument), and are rebuilt by ``cls(**arrays)``.
    """

    KIND = None
    num_inputs: int
    num_experts: int

    def __call__(self, assignment):
        raise NotImplementedError

    def arrays(self):
        raise NotImplementedError

    def _check_assignment(self, assignment):
        a = np.asarray(assignment)
        if a.shape != (self.num_inputs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{self.KIND}: the assignment must be int[{self.num_inputs}] (one "
                             f"expert per input), got {a.dtype} of shape {a.shape}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= self.num_experts):
            raise ValueError(f"{self.KIND}: the assignment must hold experts in "
                             f"[0, {self.num_experts}), got [{a.min()}, {a.max()}]")
        return a


class Accuracy(RoutedMetric):
    """``100 mean_i correct[i, a_i]`` (%).

    Args:
      correct: ``bool[M, N]``: expert n classifies input i correctly.
    """

    KIND = "accuracy"

    def __init__(self, correct):
        self.correct = _table(correct, "correct", bool)
        self.num_inputs, self.num_experts = self.correct.shape

    def __call__(self, assignment):
        a = self._check_assignment(assignment)
        return 100.0 * float(self.correct[np.arange(len(a)), a].mean())

    def arrays(self):
        return {"correct": self.correct}


class ImagePSNR(RoutedMetric):
    """Mean over images of ``10 log10(peak^2 / MSE_g)`` (dB; ``inf`` for an exact image),
    ``MSE_g = sum_{i in g} sse[i, a_i] / pixels[g]``.

    Args:
      sse: ``float[M, N]``: the squared error summed over the pixels of part i when
        expert n reconstructs it.
      image: ``int[M]``: the image (``0..G-1``) each part belongs to.
      pixels: ``float[G]``: the pixels each image's MSE is the mean over (every image
        must own parts).
      peak: the signal peak (255 for 8-bit Y).
    """

    KIND = "image_psnr"

    def __init__(self, sse, image, pixels, peak=255.0):
        self.sse = _table(sse, "sse")
        self.num_inputs, self.num_experts = self.sse.shape
        self.image = np.asarray(image, np.int64).reshape(-1)
        self.pixels = np.asarray(pixels, np.float64).reshape(-1)
        self.peak = float(np.asarray(peak))
        if len(self.image) != self.num_inputs:
            raise ValueError(f"image must give the image of each of the {self.num_inputs} "
                             f"parts, got {len(self.image)}")
        g = len(self.pixels)
        if not g or self.image.min() < 0 or self.image.max() >= g or len(
                np.unique(self.image)) != g:
            raise ValueError(f"image must name images 0..{g - 1} (one pixel count each), "
                             "every image with parts")
        if np.any(self.pixels <= 0) or not self.peak > 0:
            raise ValueError("pixels and peak must be positive")

    def __call__(self, assignment):
        a = self._check_assignment(assignment)
        chosen = self.sse[np.arange(len(a)), a]
        mse = np.bincount(self.image, weights=chosen, minlength=len(self.pixels)) / self.pixels
        with np.errstate(divide="ignore"):
            psnr = np.where(mse == 0.0, np.inf, 10.0 * np.log10(self.peak ** 2 / mse))
        return float(np.mean(psnr))

    def arrays(self):
        return {"sse": self.sse, "image": self.image, "pixels": self.pixels,
                "peak": np.float64(self.peak)}


class DetectionMAP(RoutedMetric):
    """``100 x`` COCO mAP@[.5:.95] (%) of a routing of N detectors' stored detections
    (:class:`bmoe_tf.coco_map.RoutingEvaluator`, built on the first call: pycocotools).

    Args:
      gt_boxes, gt_labels, gt_image, num_images, num_classes, image_size: the ground
        truth, as :func:`bmoe_tf.coco_map.coco_map` takes it.
      detections: ``float[M, N, K, 6]``: expert n's detections on image i.
    """

    KIND = "detection_map"

    def __init__(self, gt_boxes, gt_labels, gt_image, num_images, num_classes, detections,
                 image_size=300):
        self.gt_boxes = np.asarray(gt_boxes)
        self.gt_labels = np.asarray(gt_labels)
        self.gt_image = np.asarray(gt_image)
        self.num_inputs = int(np.asarray(num_images))
        self.num_classes = int(np.asarray(num_classes))
        self.detections = np.asarray(detections)
        self.image_size = int(np.asarray(image_size))
        if self.detections.ndim != 4 or self.detections.shape[0] != self.num_inputs:
            raise ValueError(f"detections must be [M={self.num_inputs}, N, K, 6], got shape "
                             f"{self.detections.shape}")
        self.num_experts = self.detections.shape[1]
        self._evaluator = None

    def __call__(self, assignment):
        from bmoe_tf.coco_map import RoutingEvaluator

        a = self._check_assignment(assignment)
        if self._evaluator is None:
            self._evaluator = RoutingEvaluator(
                self.gt_boxes, self.gt_labels, self.gt_image, self.num_inputs,
                self.num_classes, self.detections, image_size=self.image_size)
        return 100.0 * self._evaluator.map(a)

    def arrays(self):
        return {"gt_boxes": self.gt_boxes, "gt_labels": self.gt_labels,
                "gt_image": self.gt_image, "num_images": np.int64(self.num_inputs),
                "num_classes": np.int64(self.num_classes), "detections": self.detections,
                "image_size": np.int64(self.image_size)}


#: KIND -> class.
METRICS = {cls.KIND: cls for cls in (Accuracy, ImagePSNR, DetectionMAP)}


def metric_from_arrays(kind, arrays):
    """The :class:`RoutedMetric` ``kind`` (a :data:`METRICS` key) from its :meth:`arrays`.

    Raises:
      ValueError: an unknown kind, or arrays that do not describe one.
    """
    if kind not in METRICS:
        raise ValueError(f"unknown metric kind {kind!r}; known: {sorted(METRICS)}")
    try:
        return METRICS[kind](**arrays)
    except TypeError as err:
        raise ValueError(f"the arrays of a {kind} metric are {sorted(arrays)}: {err}") from None
