"""Detection metric benchmark: ``python -m benchmarks.detection_eval [--images M] [--score_study]``.

On a synthetic, seeded detection problem (M images of 300x300 px, ~5 objects each,
10% without objects, C = 4 classes; N = 3 experts with K = 100 detections each,
seeing the image at 100 / 150 / 300 px), measures on this machine:

1. :class:`bmoe_tf.coco_map.RoutingEvaluator`: the one-off construction
   (pycocotools' per-image evaluation of every expert), the median time of one
   routing's evaluation, and the plain pycocotools :func:`coco_map` of the same
   routing's union; their ratio, and whether the numbers are identical.
2. ``--score_study``: for each per-image score kind, the dataset mAP of the oracle
   routing (the constrained assignment maximising the summed score) for a few
   capacity vectors b, against random selection and the experts alone (the numbers
   behind the choice documented in :mod:`bmoe_tf.coco_map`).
"""
import argparse
import statistics
import time

import numpy as np

from benchmarks.timing import median_seconds
from bmoe_tf.coco_map import (CONFIDENT_SCORE, SCORE_KINDS, RoutingEvaluator,
                                         coco_map)

RESOLUTIONS = (100, 150, 300)
BIASES = ((1 / 3, 1 / 3, 1 / 3), (0.6, 0.3, 0.1), (0.1, 0.3, 0.6), (0.5, 0.5, 0.0))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_detections(num_images=300, *, num_classes=4, resolutions=RESOLUTIONS, k=100,
                         objects_per_image=5.0, empty_share=0.1, image_size=300, seed=0):
    """A seeded synthetic case: ground truth and every expert's detections.

    Expert n sees the image at ``resolutions[n]`` px: an object of side s px looks
    ``s * R_n / image_size`` px wide to it, so it misses small objects more often,
    localizes worse and fires more false positives the lower R_n is. Each image has a
    difficulty (clutter) shared by the experts and an expert-specific luck term, so
    the best expert varies between images. Every expert returns exactly ``k`` rows
    (true detections, false positives, then low-score clutter), as SSD after NMS.

    Returns:
      ``(gt_boxes float32[B, 4], gt_labels int32[B], gt_image int32[B],
      detections float32[M, N, k, 6])``.
    """
    rng = np.random.default_rng(seed)
    m, c, n_exp = num_images, num_classes, len(resolutions)
    counts = rng.poisson(objects_per_image, m).clip(1, k // 2)
    counts[rng.uniform(size=m) < empty_share] = 0
    gt_image = np.repeat(np.arange(m), counts).astype(np.int32)
    b = len(gt_image)
    side = np.exp(rng.uniform(np.log(12), np.log(200), b))  # px: small, medium and large
    aspect = np.exp(rng.uniform(-0.5, 0.5, b))
    h = np.minimum(side * aspect, image_size - 1)
    w = np.minimum(side / aspect, image_size - 1)
    y0 = rng.uniform(0, image_size - h)
    x0 = rng.uniform(0, image_size - w)
    gt_boxes = (np.stack([y0, x0, y0 + h, x0 + w], 1) / image_size).astype(np.float32)
    gt_labels = rng.integers(0, c, b).astype(np.int32)
    difficulty = rng.uniform(size=m)
    dets = np.zeros((m, n_exp, k, 6), np.float32)
    dets[..., 5] = -1
    for n, res in enumerate(resolutions):
        scale = res / image_size
        coarse = np.sqrt(image_size / res)
        luck = rng.normal(0.0, 0.7, m)
        for i in range(m):
            rows = []
            g = np.flatnonzero(gt_image == i)
            if len(g):
                apparent = side[g] * scale
                logit = (apparent - 7.0) / 3.0 + 1.5 - 1.5 * difficulty[i] + luck[i]
                found = g[rng.uniform(size=len(g)) < _sigmoid(logit)]
                for j in found:
                    box = gt_boxes[j].astype(np.float64)
                    hw = np.array([box[2] - box[0], box[3] - box[1]] * 2)
                    noise = rng.normal(0.0, 0.06 * coarse * (1 + difficulty[i]), 4) * hw
                    label = gt_labels[j] if rng.uniform() > 0.04 * coarse else rng.integers(c)
                    score = _sigmoid(rng.normal(1.5 + luck[i] - difficulty[i], 1.0))
                    rows.append([*(box + noise), score, label])
            for _ in range(rng.poisson(1.0 + 3.0 * difficulty[i] * coarse)):  # false positives
                s = rng.uniform(20, 150) / image_size
                y, x = rng.uniform(0, 1 - s, 2)
                rows.append([y, x, y + s, x + s, rng.beta(2, 4), rng.integers(c)])
            while len(rows) < k:  # low-score clutter up to k rows
                s = rng.uniform(10, 100) / image_size
                y, x = rng.uniform(0, 1 - s, 2)
                rows.append([y, x, y + s, x + s, rng.uniform(0.0, 0.1), rng.integers(c)])
            rows = np.array(rows[:k], np.float64)
            rows[:, :4] = rows[:, :4].clip(0.0, 1.0)
            dets[i, n] = rows[np.argsort(-rows[:, 4], kind="stable")]
    return gt_boxes, gt_labels, gt_image, dets


def _time(fn, repeats, warmup=1):
    return median_seconds(fn, repeats, warmup)


def bench_routing(num_images, num_classes, repeats, seed=0):
    gt_boxes, gt_labels, gt_image, dets = synthetic_detections(
        num_images, num_classes=num_classes, seed=seed)
    m, n = dets.shape[:2]
    print(f"1. routing evaluation: M={m} images, {len(gt_boxes)} gt boxes, C={num_classes}, "
          f"N={n} experts x K={dets.shape[2]} detections")
    start = time.perf_counter()
    ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, m, num_classes, dets)
    t_build = time.perf_counter() - start
    rng = np.random.default_rng(seed + 1)
    routings = [rng.integers(0, n, m) for _ in range(repeats)]
    t_fast, t_plain, identical, diffs = [], [], True, []
    ev.evaluate(routings[0])  # warm-up
    for a in routings:
        start = time.perf_counter()
        fast = ev.evaluate(a)
        t_fast.append(time.perf_counter() - start)
        start = time.perf_counter()
        plain = coco_map(gt_boxes, gt_labels, gt_image, m, num_classes, dets[np.arange(m), a])
        t_plain.append(time.perf_counter() - start)
        identical &= fast == plain
        diffs.append(max(abs(fast[key] - plain[key]) for key in fast))
    fast_s, plain_s = statistics.median(t_fast), statistics.median(t_plain)
    print(f"RoutingEvaluator construction: {t_build:.3f} s (once per split)")
    print(f"one routing, RoutingEvaluator.evaluate: {fast_s * 1e3:.2f} ms "
          f"(median of {repeats} random routings)")
    print(f"one routing, plain coco_map on the union: {plain_s:.3f} s")
    print(f"speed-up {plain_s / fast_s:.0f}x; identical map/ap50 on all {repeats} routings: "
          f"{identical} (max |difference| {max(diffs):.1e})")
    print("experts alone: " + ", ".join(
        f"{r} px mAP {ev.expert_map(j)['map']:.4f}" for j, r in enumerate(RESOLUTIONS[:n])))
    start = time.perf_counter()
    ev.per_image_scores()
    print(f"per_image_scores (kind='ap') from the evaluator: {time.perf_counter() - start:.3f} s")
    return ev


def score_study(num_images, num_classes, seeds):
    from bmoe_tf.evaluation import oracle_assignment, random_selection

    print(f"\n2. per-image score study: dataset mAP of the oracle routing for each score "
          f"(M={num_images}, seeds {list(seeds)} averaged)")
    variants = list(SCORE_KINDS) + ["ap, empty=const", "ap, empty=1/(1+n)"]
    rows = {bias: {v: [] for v in variants + ["random"]} for bias in BIASES}
    alone = []
    for seed in seeds:
        gt_boxes, gt_labels, gt_image, dets = synthetic_detections(
            num_images, num_classes=num_classes, seed=seed)
        m = dets.shape[0]
        ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, m, num_classes, dets)
        alone.append([ev.expert_map(j)["map"] for j in range(dets.shape[1])])
        scores = {kind: ev.per_image_scores(kind) for kind in SCORE_KINDS}
        # the other rules for images without ground truth (n: detections with score >= .5)
        empty = np.setdiff1d(np.arange(m), gt_image)
        confident = np.count_nonzero(dets[empty, ..., 4] >= CONFIDENT_SCORE, axis=-1)
        for name, value in (("ap, empty=const", 0.0), ("ap, empty=1/(1+n)", 1 / (1 + confident))):
            scores[name] = scores["ap"].copy()
            scores[name][empty] = value
        for bias in BIASES:
            for v in variants:
                rows[bias][v].append(ev.map(oracle_assignment(scores[v], bias)))
            rows[bias]["random"].append(np.mean(
                [ev.map(random_selection(m, bias, seed=s)) for s in range(5)]))
    print(f"{'b':>18} " + " ".join(f"{v:>17}" for v in variants + ["random"]))
    for bias in BIASES:
        print(f"{'(' + ', '.join(f'{x:.2f}' for x in bias) + ')':>18} "
              + " ".join(f"{np.mean(rows[bias][v]):>17.4f}" for v in variants + ["random"]))
    print("experts alone: " + ", ".join(
        f"{r} px {v:.4f}" for r, v in zip(RESOLUTIONS, np.mean(alone, axis=0))))
    print(f"{'mean over b':>18} " + " ".join(
        f"{np.mean([np.mean(rows[b][v]) for b in BIASES]):>17.4f}" for v in variants + ["random"]))
    for v in variants:
        wins = sum(np.sum(np.array(rows[bias][v]) >= np.max(
            [rows[bias][u] for u in variants], axis=0)) for bias in BIASES)
        print(f"{v}: best (or tied) in {wins} of {len(BIASES) * len(seeds)} (b, seed) cases")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="number of images M")
    parser.add_argument("--classes", type=int, default=4, help="number of classes C")
    parser.add_argument("--repeats", type=int, default=10, help="random routings timed")
    parser.add_argument("--score_study", action="store_true",
                        help="also compare the per-image score kinds (about a minute)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the score study")
    args = parser.parse_args(argv)
    bench_routing(args.images, args.classes, args.repeats)
    if args.score_study:
        score_study(args.images, args.classes, range(args.seeds))


if __name__ == "__main__":
    main()
