"""COCO mAP of routings (bmoe_tf.coco_map): exact against plain pycocotools."""
import numpy as np
import pytest

from bmoe_tf.coco_map import SCORE_KINDS, RoutingEvaluator, coco_map, per_image_scores


def _pad(rows, k):
    """``[n, 6]`` detection rows -> ``[k, 6]`` with padding rows (score 0, class -1)."""
    out = np.zeros((k, 6), np.float32)
    out[:, 5] = -1
    rows = np.asarray(rows, np.float32).reshape(-1, 6)
    out[:len(rows)] = rows
    return out


def _random_case(seed, m=24, n=3, k=16, c=3):
    """Random ground truth and detections with the awkward cases mixed in."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, m)
    counts[:2] = 0  # images without ground truth
    gt_image = np.repeat(np.arange(m), counts).astype(np.int32)
    b = len(gt_image)
    yx = rng.uniform(0, 0.7, (b, 2))
    gt_boxes = np.concatenate([yx, yx + rng.uniform(0.03, 0.3, (b, 2))], 1).astype(np.float32)
    gt_labels = rng.integers(0, c - 1, b).astype(np.int32)  # class c-1: detections only
    dets = np.zeros((m, n, k, 6), np.float32)
    dets[..., 5] = -1
    for i in range(m):
        for e in range(n):
            rows = []
            for j in np.flatnonzero(gt_image == i):
                if rng.uniform() < 0.8:
                    box = gt_boxes[j] + rng.normal(0, 0.01 + 0.02 * e, 4)
                    box[2:] = np.maximum(box[2:], box[:2] + 0.005)  # not inverted
                    label = gt_labels[j] if rng.uniform() < 0.9 else rng.integers(c)
                    rows.append([*box, np.round(rng.uniform(0.2, 1), 1), label])  # score ties
            for _ in range(rng.integers(0, k - len(rows) + 1)):
                y, x = rng.uniform(0, 0.8, 2)
                rows.append([y, x, y + 0.1, x + 0.15, np.round(rng.uniform(0, 0.7), 1),
                             rng.integers(c)])
            if e == 2 and i % 5 == 0:
                rows = []  # an expert that finds nothing on some images
            dets[i, e] = _pad(np.array(rows, np.float32).reshape(-1, 6)[:k], k)
    return gt_boxes, gt_labels, gt_image, m, c, dets


def test_perfect_detections_give_one():
    gt_boxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.5, 0.5, 0.9, 0.95], [0.2, 0.6, 0.3, 0.7]],
                        np.float32)
    gt_labels = np.array([0, 1, 1], np.int32)
    gt_image = np.array([0, 0, 1], np.int32)
    dets = np.stack([_pad([[*gt_boxes[0], 0.9, 0], [*gt_boxes[1], 0.8, 1]], 5),
                     _pad([[*gt_boxes[2], 0.7, 1]], 5),
                     _pad([], 5)])  # a third image with nothing in it
    assert coco_map(gt_boxes, gt_labels, gt_image, 3, 2, dets) == {"map": 1.0, "ap50": 1.0}
    ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, 3, 2, dets[:, None])
    assert ev.evaluate([0, 0, 0]) == {"map": 1.0, "ap50": 1.0}
    assert ev.map(np.zeros(3, int)) == 1.0


def _one_image(gt_rows, det_rows):
    gt = np.array(gt_rows, np.float32)
    dets = _pad(np.array(det_rows, np.float32).reshape(-1, 6), 4)[None]
    return coco_map(gt, np.zeros(len(gt), np.int32), np.zeros(len(gt), np.int32), 1, 1, dets)


def test_known_average_precisions():
    recall_points = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation
    # two objects, the only detection finds one exactly: recall 0.5 at precision 1
    got = _one_image([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.8, 0.9]], [[0.1, 0.1, 0.4, 0.4, 0.9, 0]])
    expected = np.mean(recall_points <= 0.5)  # precision 1 up to recall .5, then 0
    assert expected == pytest.approx(51 / 101)
    assert got["map"] == pytest.approx(expected, abs=1e-12)
    assert got["ap50"] == pytest.approx(expected, abs=1e-12)
    # a false positive ranked above the only true positive: precision 1/2 at recall 1
    got = _one_image([[0.1, 0.1, 0.4, 0.4]], [[0.6, 0.6, 0.9, 0.9, 0.9, 0],
                                              [0.1, 0.1, 0.4, 0.4, 0.8, 0]])
    assert got == pytest.approx({"map": 0.5, "ap50": 0.5}, abs=1e-12)
    # IoU 0.72 matches at thresholds .50 .55 .60 .65 .70 only: 5 of 10
    got = _one_image([[0.0, 0.0, 0.5, 0.5]], [[0.0, 0.0, 0.5, 0.36, 0.9, 0]])
    assert got == pytest.approx({"map": 0.5, "ap50": 1.0}, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_routing_evaluator_equals_coco_map_on_the_union(seed):
    gt_boxes, gt_labels, gt_image, m, c, dets = _random_case(seed)
    if seed == 1:  # an inverted (negative-area) box is ignored when unmatched: the literal path
        dets[3, 1, 0] = [0.5, 0.5, 0.4, 0.6, 0.95, 0]
    ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, m, c, dets, full_stats=True)
    assert any(cat["any_ignore"] for cat in ev._categories) == (seed == 1)
    rng = np.random.default_rng(seed + 10)
    routings = [rng.integers(0, 3, m) for _ in range(4)] + [np.full(m, n) for n in range(3)]
    for a in routings:
        union = dets[np.arange(m), a]
        want = coco_map(gt_boxes, gt_labels, gt_image, m, c, union)
        got = ev.evaluate(a)
        assert got["map"] == pytest.approx(want["map"], abs=1e-12, rel=0)
        assert got["ap50"] == pytest.approx(want["ap50"], abs=1e-12, rel=0)
        assert 0.0 < got["map"] < got["ap50"] < 1.0
        np.testing.assert_array_equal(ev.precision(a), ev.precision(a, literal=True))
        np.testing.assert_allclose(ev.stats(a)[:2], [want["map"], want["ap50"]], rtol=0,
                                   atol=1e-12)
    for n in range(3):
        assert ev.expert_map(n) == ev.evaluate(np.full(m, n))


def test_padding_rows_are_ignored():
    gt_boxes, gt_labels, gt_image, m, c, dets = _random_case(3, n=1)
    union = dets[:, 0]
    base = coco_map(gt_boxes, gt_labels, gt_image, m, c, union)
    padded = np.concatenate([union, _pad([], 8)[None].repeat(m, 0)], axis=1)
    padded[:, -8:, :4] = np.random.default_rng(0).uniform(0, 1, (m, 8, 4))  # junk boxes
    assert coco_map(gt_boxes, gt_labels, gt_image, m, c, padded) == base
    ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, m, c, padded[:, None])
    assert ev.evaluate(np.zeros(m, int)) == base


def test_per_image_scores():
    gt_boxes, gt_labels, gt_image, m, c, dets = _random_case(4, n=3)
    k = dets.shape[2]
    perfect = np.stack([_pad([[*gt_boxes[j], 1.0, gt_labels[j]]
                              for j in np.flatnonzero(gt_image == i)], k) for i in range(m)])
    dets = np.concatenate([dets[:, :2], perfect[:, None]], axis=1)  # expert 2 is perfect
    has_gt = np.isin(np.arange(m), gt_image)
    for kind in SCORE_KINDS:
        s = per_image_scores(gt_boxes, gt_labels, gt_image, m, dets, num_classes=c, kind=kind)
        assert s.shape == (m, 3) and s.dtype == np.float32
        assert np.all((s >= 0) & (s <= 1))
        np.testing.assert_array_equal(s[:, 2], 1.0)  # perfect, and silent on empty images
        assert np.all(s[:, 2] >= s.max(axis=1))
        assert np.all(s[has_gt, :2].mean(axis=0) < 1.0)
    # the number of classes is inferred from the data by default
    np.testing.assert_array_equal(
        per_image_scores(gt_boxes, gt_labels, gt_image, m, dets),
        per_image_scores(gt_boxes, gt_labels, gt_image, m, dets, num_classes=c))


def test_empty_image_score_penalises_confident_false_positives():
    gt = np.array([[0.1, 0.1, 0.4, 0.4]], np.float32)
    quiet = _pad([[0.5, 0.5, 0.6, 0.6, 0.3, 0]], 4)
    loud = _pad([[0.5, 0.5, 0.6, 0.6, 0.9, 0], [0.2, 0.2, 0.3, 0.3, 0.8, 0]], 4)
    found = _pad([[*gt[0], 0.9, 0]], 4)
    dets = np.stack([np.stack([found, found]), np.stack([quiet, loud])])  # image 1: no gt
    s = per_image_scores(gt, [0], [0], 2, dets)
    np.testing.assert_allclose(s, [[1.0, 1.0], [1.0, 0.96]], rtol=1e-6)


def test_an_expert_without_any_detection():
    gt_boxes, gt_labels, gt_image, m, c, dets = _random_case(5, n=2)
    dets[:, 1] = _pad([], dets.shape[2])
    ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, m, c, dets)
    assert ev.expert_map(1) == {"map": 0.0, "ap50": 0.0}
    assert ev.expert_map(1) == coco_map(gt_boxes, gt_labels, gt_image, m, c, dets[:, 1])


def test_bad_arguments_name_themselves():
    gt_boxes, gt_labels, gt_image, m, c, dets = _random_case(6, m=6, n=2)
    args = dict(gt_boxes=gt_boxes, gt_labels=gt_labels, gt_image=gt_image, num_images=m,
                num_classes=c)

    def call(fn, **change):
        kwargs = {**args, **change}
        last = kwargs.pop("dets", dets[:, 0] if fn is coco_map else dets)
        return fn(*kwargs.values(), last)

    for change, name in [({"gt_boxes": gt_boxes[:, :3]}, "gt_boxes"),
                         ({"gt_labels": gt_labels[:-1]}, "gt_labels"),
                         ({"gt_labels": gt_labels + c}, "gt_labels"),
                         ({"gt_image": gt_image + m}, "gt_image"),
                         ({"num_images": 0}, "num_images"),
                         ({"num_classes": 1.5}, "num_classes")]:
        with pytest.raises(ValueError, match=name):
            call(coco_map, **change)
    with pytest.raises(ValueError, match="detections_per_image"):
        call(coco_map, dets=dets)  # [M, N, K, 6] where [M, K, 6] is expected
    with pytest.raises(ValueError, match="detections_per_image"):
        call(coco_map, dets=dets[:-1, 0])
    with pytest.raises(ValueError, match="detections"):
        call(RoutingEvaluator, dets=dets[:, 0])
    bad = dets.copy()
    bad[0, 0, 0, 5] = c
    with pytest.raises(ValueError, match="class"):
        call(RoutingEvaluator, dets=bad)
    with pytest.raises(ValueError, match="detections"):
        call(RoutingEvaluator, dets=dets[..., :5])
    ev = call(RoutingEvaluator)
    with pytest.raises(ValueError, match="assignment"):
        ev.evaluate(np.zeros(m - 1, int))
    with pytest.raises(ValueError, match="assignment"):
        ev.evaluate(np.full(m, 2))
    with pytest.raises(ValueError, match="n must"):
        ev.expert_map(2)
    with pytest.raises(ValueError, match="full_stats"):
        ev.stats(np.zeros(m, int))
    with pytest.raises(ValueError, match="kind"):
        ev.per_image_scores("map")
