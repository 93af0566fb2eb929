"""bmoe_tf.routed_metrics: a task metric of a routing from stored tables, through arrays."""
import numpy as np
import pytest

from bmoe_tf.coco_map import RoutingEvaluator
from bmoe_tf.routed_metrics import (METRICS, Accuracy, DetectionMAP, ImagePSNR,
                                    metric_from_arrays)
from tests.bmoe_tf.test_coco_map import _random_case


def _round_trip(metric):
    arrays = {k: np.asarray(v) for k, v in metric.arrays().items()}
    return metric_from_arrays(metric.KIND, arrays)


def test_accuracy_known_answer_and_round_trip():
    correct = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], bool)
    metric = Accuracy(correct)
    assert metric(np.array([0, 1, 0, 2])) == 100.0
    assert metric(np.array([1, 0, 2, 0])) == 0.0
    assert metric(np.array([0, 0, 0, 0])) == 50.0
    assert _round_trip(metric)(np.array([2, 2, 1, 2])) == 75.0


def test_image_psnr_sums_each_images_parts():
    # two images: parts 0-1 (16 pixels), part 2 (8 pixels); peak 255
    sse = np.array([[160.0, 16.0], [0.0, 16.0], [8.0, 80.0]])
    metric = ImagePSNR(sse, [0, 0, 1], [16.0, 8.0])
    expected = np.mean([10 * np.log10(255 ** 2 / (160 / 16)), 10 * np.log10(255 ** 2 / 1.0)])
    assert metric(np.array([0, 0, 0])) == pytest.approx(expected, rel=1e-15)
    assert _round_trip(metric)(np.array([0, 0, 0])) == metric(np.array([0, 0, 0]))
    # an image reproduced exactly is infinitely sharp, as psnr_y says
    assert ImagePSNR([[0.0], [0.0]], [0, 0], [4.0])(np.array([0, 0])) == np.inf


def test_detection_map_is_the_routing_evaluators():
    gt_boxes, gt_labels, gt_image, m, c, dets = _random_case(5)
    metric = DetectionMAP(gt_boxes, gt_labels, gt_image, m, c, dets)
    evaluator = RoutingEvaluator(gt_boxes, gt_labels, gt_image, m, c, dets)
    rng = np.random.default_rng(0)
    again = _round_trip(metric)
    for _ in range(3):
        a = rng.integers(0, dets.shape[1], m)
        assert metric(a) == 100.0 * evaluator.map(a)
        assert again(a) == metric(a)


def test_bad_assignments_and_arrays_are_refused():
    metric = Accuracy(np.ones((3, 2), bool))
    with pytest.raises(ValueError, match=r"int\[3\]"):
        metric(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"experts in \[0, 2\)"):
        metric(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"int\[3\]"):
        metric(np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"correct must be \[M, N\]"):
        Accuracy(np.ones(3, bool))
    with pytest.raises(ValueError, match="every image with parts"):
        ImagePSNR(np.ones((2, 2)), [0, 0], [4.0, 4.0])
    with pytest.raises(ValueError, match="unknown metric kind 'f1'"):
        metric_from_arrays("f1", {})
    with pytest.raises(ValueError, match="the arrays of a accuracy metric are"):
        metric_from_arrays("accuracy", {"sse": np.ones((2, 2))})
    assert sorted(METRICS) == ["accuracy", "detection_map", "image_psnr"]
