"""COCO mAP of a routing of frozen detectors, evaluated without re-running anything.

The detection task (paper Section IV-B) routes each image to one of N frozen SSD
experts; the dataset metric is COCO mAP@[.5:.95] (and AP50) over the union of every
image's detections from its chosen expert. The pipeline asks for it at every point
of every curve, so it must be fast; it must also be *exactly* pycocotools' number.

How (:class:`RoutingEvaluator`): pycocotools' ``COCOeval.evaluate`` produces one
``evalImgs`` entry per (category, area range, image), and each entry depends only on
that image's ground truth and detections. So ``evaluate`` runs once per expert on
all images; a routing's ``evalImgs`` are, for image i, expert ``assignment[i]``'s
entries, and only ``accumulate`` and the summary statistic remain per routing. They
are re-implemented for the two numbers we need (area "all", maxDets 100), on arrays
prepared once: per category, every expert's matched / ignored flags of every
detection, stably sorted by score over all experts together. A routing keeps the
detections whose expert is the one chosen for their image; a stable sort of a subset
is the subsequence of the stable sort of the whole, so the kept detections are
already in the order ``accumulate``'s merge sort gives the union. Only the true
positives need visiting: recall rises only there, so every one of the 101 sampled
indices is a true positive's position, and the precision envelope there is the
running maximum over later true positives; the counts ``tp`` and ``fp`` at those
positions are the same integers, so the same floats, as ``accumulate``'s cumulative
sums (``precision(..., literal=True)`` runs ``accumulate``'s steps line by line
instead, and does for categories with ignored detections). The means are taken as
``summarize`` takes them, over the same array in the same order: the result is
identical to :func:`coco_map` on the union (bit for bit in the tests), in about 2 ms
per routing on 300 images (``python -m benchmarks.detection_eval``).
``RoutingEvaluator(..., full_stats=True).stats(assignment)`` instead hands the
routing's ``evalImgs`` to pycocotools' own ``accumulate``/``summarize`` (all 12 COCO
numbers; measured on the benchmark's case: construction 3.9 s instead of 1.6 s, and
0.27 s per routing).

COCO conventions used everywhere here: images ``1..M`` (all listed, with or without
ground truth) of ``image_size x image_size`` pixels; categories ``1..C``; boxes in
pixels ``[x, y, w, h]`` from the normalized ``(ymin, xmin, ymax, xmax)``; ground truth
``area = w * h`` in pixels, ``iscrowd = 0``, ids from 1; detections through
``COCO.loadRes``; default ``COCOeval`` parameters (IoU .50:.05:.95, 101 recall points,
maxDets 1/10/100). Detection rows with class ``-1`` are padding and ignored (a real
detection with score 0 is kept, as COCO would).

Per-image score (:func:`per_image_scores`, for the oracle and the gate's losses)
---------------------------------------------------------------------------------
The oracle maximises the *sum* of per-image scores under capacity constraints, so
the best score is the one whose constrained optimum has the highest dataset mAP.
Measured with ``python -m benchmarks.detection_eval --score_study`` (300 synthetic
images, ~5 objects each, 10% without objects, 4 classes, K = 100 detections; three
experts that see the image at 100 / 150 / 300 px: misses of small objects,
localization noise and false positives grow as the resolution falls, per-image
difficulty and per-expert luck vary; dataset mAP of
``bmoe_tf.evaluation.oracle_assignment(scores, b)``, seeds 0-2 averaged; alone, the
experts score 0.169 / 0.253 / 0.434):

==================  ======  ======  ======  ======  =========  ======
b                   ap      ap50    f1      ap,     ap,        random
                                            e=0     e=1/(1+n)
==================  ======  ======  ======  ======  =========  ======
(1/3, 1/3, 1/3)     0.3783  0.3549  0.3466  0.3789  0.3728     0.2755
(0.6, 0.3, 0.1)     0.2870  0.2734  0.2679  0.2870  0.2764     0.2134
(0.1, 0.3, 0.6)     0.4338  0.4014  0.3891  0.4326  0.4334     0.3429
(0.5, 0.5, 0)       0.2693  0.2572  0.2518  0.2694  0.2675     0.2094
mean                0.3421  0.3217  0.3139  0.3420  0.3375     0.2603
==================  ======  ======  ======  ======  =========  ======

Decision: ``kind="ap"`` (the default), the image's own COCO AP -- the image's
detections of all classes pooled and ranked by score, matched by pycocotools
(class-aware), precision sampled at the 101 recall points, averaged over IoU
.50:.05:.95. It gave the highest mAP for every b, +0.020 over AP50 (which ignores
localization, half of what mAP@[.5:.95] measures) and +0.028 over F1 at IoU .5 of
the detections with score >= 0.5 (which ignores the ranking); "ap50" and "f1" stay
available.

Images without ground truth (e= in the table): every detection on them is a false
positive of its class. Their score is ``max(0, 1 - 0.02 n)``, n the number of
detections with score >= 0.5: 1 for a clean image (as a perfect AP), and a small
tie-break against confident false positives, so no expert is favoured where none
fires confidently. It measured the same as a constant (equal for every expert,
``e=0``: 0.3421 vs 0.3420, within noise) and better than the steeper
``1/(1+n)`` (0.3375), which let empty images outweigh real differences on images
with objects; penalties of 0.05 n and 0.1 n gave 0.3417 and 0.3406.
"""
import contextlib
import io

import numpy as np

__all__ = ["RoutingEvaluator", "coco_map", "per_image_scores", "SCORE_KINDS"]

#: Per-image score kinds of :func:`per_image_scores` (the first is the default).
SCORE_KINDS = ("ap", "ap50", "f1")
#: Score threshold of the "f1" kind, and of "confident" false positives on images
#: without ground truth.
CONFIDENT_SCORE = 0.5
#: Score lost per confident detection on an image without ground truth.
EMPTY_FP_PENALTY = 0.02
_MAX_DETS = 100


# ----------------------------------------------------------------------------- inputs
def _int_array(value, name, rank, layout):
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - ragged lists and the like
        raise ValueError(f"{name} must be a {layout} array of integers, got {value!r}") from err
    if array.ndim != rank:
        raise ValueError(f"{name} must be {layout}, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or np.any(array != np.round(array)):
            raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _float_array(value, name, rank, layout, last=None):
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a {layout} array of numbers, got {value!r}") from err
    if array.ndim != rank or (last is not None and array.shape[-1] != last):
        raise ValueError(f"{name} must be {layout}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite (found NaN or infinity)")
    return array


def _count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_ground_truth(gt_boxes, gt_labels, gt_image, num_images, num_classes, image_size):
    boxes = _float_array(gt_boxes, "gt_boxes", 2, "[B, 4]", last=4)
    labels = _int_array(gt_labels, "gt_labels", 1, "[B]")
    image = _int_array(gt_image, "gt_image", 1, "[B]")
    m = _count(num_images, "num_images")
    c = _count(num_classes, "num_classes")
    if not (isinstance(image_size, (int, float, np.integer, np.floating))
            and not isinstance(image_size, bool) and image_size > 0):
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
    b = len(boxes)
    if len(labels) != b or len(image) != b:
        raise ValueError(f"gt_boxes, gt_labels and gt_image must have the same length B, got "
                         f"{b}, {len(labels)}, {len(image)}")
    if b and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"gt_labels must be in 0..{c - 1} (num_classes={c}), got "
                         f"{labels.min()}..{labels.max()}")
    if b and (image.min() < 0 or image.max() >= m):
        raise ValueError(f"gt_image must be in 0..{m - 1} (num_images={m}), got "
                         f"{image.min()}..{image.max()}")
    return boxes, labels, image, m, c, float(image_size)


def _check_detections(detections, name, rank, layout, m, c):
    dets = _float_array(detections, name, rank, layout, last=6)
    if dets.shape[0] != m:
        raise ValueError(f"{name} must have num_images={m} rows on axis 0, got shape "
                         f"{dets.shape}")
    cls = dets[..., 5]
    if np.any(cls != np.round(cls)) or np.any(cls < -1) or np.any(cls >= c):
        raise ValueError(f"{name}[..., 5] (class) must be an integer in -1..{c - 1} "
                         f"(-1: padding), got values in {cls.min():g}..{cls.max():g}")
    return dets


# ------------------------------------------------------------------------ COCO objects
def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _xywh(boxes, size):
    """Normalized (ymin, xmin, ymax, xmax) -> pixel [x, y, w, h], float64."""
    b = np.asarray(boxes, np.float64)
    return np.stack([b[..., 1] * size, b[..., 0] * size,
                     (b[..., 3] - b[..., 1]) * size, (b[..., 2] - b[..., 0]) * size], axis=-1)


def _coco_gt(boxes, labels, image, m, c, size):
    from pycocotools.coco import COCO

    xywh = _xywh(boxes, size)
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i + 1, "width": size, "height": size} for i in range(m)],
        "categories": [{"id": k + 1, "name": str(k)} for k in range(c)],
        "annotations": [
            {"id": j + 1, "image_id": int(image[j]) + 1, "category_id": int(labels[j]) + 1,
             "bbox": [float(v) for v in xywh[j]], "area": float(xywh[j, 2] * xywh[j, 3]),
             "iscrowd": 0}
            for j in range(len(boxes))],
    }
    _quiet(gt.createIndex)
    return gt


def _coco_dt(gt, dets_per_image, size):
    """``COCO.loadRes`` of ``[M, K, 6]`` detections (class -1 rows dropped), row order kept."""
    from pycocotools.coco import COCO

    xywh = _xywh(dets_per_image[..., :4], size)
    anns = []
    for i, (rows, boxes) in enumerate(zip(dets_per_image, xywh)):
        for r in np.flatnonzero(rows[:, 5] >= 0):
            anns.append({"image_id": i + 1, "category_id": int(rows[r, 5]) + 1,
                         "bbox": [float(v) for v in boxes[r]], "score": float(rows[r, 4])})
    if anns:
        return _quiet(gt.loadRes, anns)
    empty = COCO()  # loadRes cannot take an empty list
    empty.dataset = {"images": list(gt.dataset["images"]),
                     "categories": list(gt.dataset["categories"]), "annotations": []}
    _quiet(empty.createIndex)
    return empty


def _cocoeval(gt, dt, m, all_areas_only):
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = list(range(1, m + 1))
    if all_areas_only:  # the "all" entries are unchanged; the others are not needed
        ev.params.areaRng = ev.params.areaRng[:1]
        ev.params.areaRngLbl = ev.params.areaRngLbl[:1]
    _quiet(ev.evaluate)
    return ev


def _map_ap50(precision, iou_thrs):
    """COCOeval.summarize's stats[0] and stats[1] from precision ``[T, R, K]`` (area all,
    maxDets 100), with the same indexing, so the same mean in the same order."""
    def mean(s):
        s = s[s > -1]
        return -1.0 if len(s) == 0 else float(np.mean(s))

    t50 = np.where(0.5 == iou_thrs)[0]
    return {"map": mean(precision), "ap50": mean(precision[t50])}


def coco_map(gt_boxes, gt_labels, gt_image, num_images, num_classes, detections_per_image, *,
             image_size=300):
    """COCO mAP@[.5:.95] and AP50 of one set of detections: plain pycocotools.

    Builds the COCO ground truth and ``loadRes`` detections, runs ``COCOeval``'s
    ``evaluate`` / ``accumulate`` / ``summarize`` (their printing captured).

    Args:
      gt_boxes: ``float[B, 4]`` normalized (ymin, xmin, ymax, xmax).
      gt_labels: ``int[B]`` in ``0..C-1``.
      gt_image: ``int[B]`` image index in ``0..M-1``.
      num_images: M (images without ground truth are allowed).
      num_classes: C.
      detections_per_image: ``float[M, K, 6]`` rows (ymin, xmin, ymax, xmax, score,
        class), normalized; class -1 rows are padding.
      image_size: image side in pixels (COCO's area ranges are in pixels).
    Returns:
      ``{"map": float, "ap50": float}`` (stats[0], stats[1]; -1 when no class has
      ground truth, as pycocotools).
    Raises:
      ValueError: a malformed argument (the message names it).
    """
    boxes, labels, image, m, c, size = _check_ground_truth(
        gt_boxes, gt_labels, gt_image, num_images, num_classes, image_size)
    dets = _check_detections(detections_per_image, "detections_per_image", 3, "[M, K, 6]", m, c)
    gt = _coco_gt(boxes, labels, image, m, c, size)
    ev = _cocoeval(gt, _coco_dt(gt, dets, size), m, all_areas_only=False)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return {"map": float(ev.stats[0]), "ap50": float(ev.stats[1])}


# --------------------------------------------------------------------------- routing
class RoutingEvaluator:
    """COCO mAP of any routing of N experts' precomputed detections, fast and exact.

    Args:
      gt_boxes, gt_labels, gt_image, num_images, num_classes, image_size: the ground
        truth, as in :func:`coco_map`.
      detections: ``float[M, N, K, 6]``: expert n's detections on image i.
      full_stats: also keep the small / medium / large area ranges so that
        :meth:`stats` can give all 12 COCO numbers (construction about 2.5x slower).
    Raises:
      ValueError: a malformed argument (the message names it).
    """

    def __init__(self, gt_boxes, gt_labels, gt_image, num_images, num_classes, detections, *,
                 image_size=300, full_stats=False):
        boxes, labels, image, m, c, size = _check_ground_truth(
            gt_boxes, gt_labels, gt_image, num_images, num_classes, image_size)
        dets = _check_detections(detections, "detections", 4, "[M, N, K, 6]", m, c)
        self.num_images, self.num_experts, self.num_classes = m, dets.shape[1], c
        self.full_stats = bool(full_stats)
        gt = _coco_gt(boxes, labels, image, m, c, size)
        self._evals = [_cocoeval(gt, _coco_dt(gt, dets[:, n], size), m, not full_stats)
                       for n in range(self.num_experts)]
        params = self._evals[0].params
        self._iou_thrs = np.asarray(params.iouThrs)
        self._rec_thrs = np.asarray(params.recThrs)
        self._num_areas = len(params.areaRng)
        # per expert, per category, per image: the area-"all" evalImgs entry
        self._entries = [[[ev.evalImgs[k * self._num_areas * m + i] for i in range(m)]
                          for k in range(c)] for ev in self._evals]
        self._prepare_categories()
        if full_stats:
            self._eval_imgs = [list(ev.evalImgs) for ev in self._evals]
        else:
            self._evals = None  # the arrays hold all that map / ap50 need

    def _prepare_categories(self):
        m, n_exp, t = self.num_images, self.num_experts, len(self._iou_thrs)
        self._categories = []  # one dict per category with ground truth, see precision()
        for k in range(self.num_classes):
            # the ground truth is the same for every expert: count it from expert 0's entries
            npig = sum(int(np.count_nonzero(e["gtIgnore"] == 0))
                       for e in self._entries[0][k] if e is not None)
            if npig == 0:
                continue  # pycocotools leaves this category at -1 for every routing
            scores, imgs, exps, match, ignore = [], [], [], [], []
            for i in range(m):  # image-major, then expert, then the entry's own order
                for n in range(n_exp):
                    e = self._entries[n][k][i]
                    if e is None:
                        continue
                    d = len(e["dtScores"][:_MAX_DETS])
                    scores.append(np.asarray(e["dtScores"][:_MAX_DETS], np.float64))
                    imgs.append(np.full(d, i, np.int64))
                    exps.append(np.full(d, n, np.int64))
                    match.append(np.asarray(e["dtMatches"][:, :_MAX_DETS]).reshape(t, d))
                    ignore.append(np.asarray(e["dtIgnore"][:, :_MAX_DETS]).reshape(t, d))
            # accumulate() merge-sorts the union by score; sorting everything once,
            # stably, puts every routing's subset in that same order
            order = np.argsort(-np.concatenate(scores), kind="mergesort")
            match = np.concatenate(match, axis=1)[:, order].astype(bool)
            ignore = np.concatenate(ignore, axis=1)[:, order].astype(bool)
            tps = match & ~ignore
            tp_t, tp_index = np.nonzero(tps)  # T-major, then score order
            # the recall thresholds as TP counts: rc >= thr <=> count >= need (same floats)
            rc = np.arange(1, npig + 1, dtype=float) / npig
            self._categories.append({
                "k": k, "npig": npig,
                "img": np.concatenate(imgs)[order],
                "exp": np.concatenate(exps)[order],
                "match": match, "ignore": ignore, "any_ignore": bool(ignore.any()),
                "tp_t": tp_t, "tp_index": tp_index,
                "need": np.searchsorted(rc, self._rec_thrs, side="left") + 1,
            })

    def _assignment(self, assignment):
        a = _int_array(assignment, "assignment", 1, "int[M]")
        if len(a) != self.num_images:
            raise ValueError(f"assignment must have num_images={self.num_images} entries, "
                             f"got {len(a)}")
        if len(a) and (a.min() < 0 or a.max() >= self.num_experts):
            raise ValueError(f"assignment must hold expert indices in 0..{self.num_experts - 1}, "
                             f"got {a.min()}..{a.max()}")
        return a

    def precision(self, assignment, *, literal=False):
        """pycocotools' ``eval["precision"][:, :, :, area all, maxDets 100]``: ``[T, R, C]``.

        Args:
          assignment: ``int[M]``.
          literal: use the line-by-line translation of ``accumulate`` for every
            category (slower; the fast path gives the same numbers, see below).
        """
        a = self._assignment(assignment)
        t, r = len(self._iou_thrs), len(self._rec_thrs)
        precision = -np.ones((t, r, self.num_classes))
        for cat in self._categories:
            keep = a[cat["img"]] == cat["exp"]
            if literal or cat["any_ignore"]:
                precision[:, :, cat["k"]] = self._literal(cat, keep)
            else:
                precision[:, :, cat["k"]] = self._at_true_positives(cat, keep)
        return precision

    def _literal(self, cat, keep):
        """``accumulate``'s own steps on the routing's detections of one category."""
        t, r = len(self._iou_thrs), len(self._rec_thrs)
        dtm = cat["match"][:, keep]
        dtig = cat["ignore"][:, keep]
        tps = np.logical_and(dtm, np.logical_not(dtig))
        fps = np.logical_and(np.logical_not(dtm), np.logical_not(dtig))
        tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
        fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
        nd = tp_sum.shape[1]
        rc = tp_sum / cat["npig"]
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the envelope
        q = np.zeros((t, r))
        for ti in range(t):
            inds = np.searchsorted(rc[ti], self._rec_thrs, side="left")
            ok = inds < nd  # pycocotools stops at the first index past the end
            q[ti, ok] = pr[ti, inds[ok]]
        return q

    def _at_true_positives(self, cat, keep):
        """The same numbers from the true positives alone (no ignored detections).

        Recall only rises at a true positive, so every sampled index (first index with
        ``rc >= thr``) is the position of the ``need[r]``-th true positive; precision
        falls at every false positive, so the envelope there is the running maximum
        over the later true positives. At the j-th kept true positive, at position p
        in the routing's score order, ``tp = j`` and ``fp = p + 1 - j``: the same
        integers, hence the same floats, as ``accumulate``'s cumulative sums.
        """
        t, r = len(self._iou_thrs), len(self._rec_thrs)
        rank = np.cumsum(keep)  # kept detections up to and including each one
        kept = keep[cat["tp_index"]]
        tp_t, tp_index = cat["tp_t"][kept], cat["tp_index"][kept]
        counts = np.bincount(tp_t, minlength=t)
        q = np.zeros((t, r))
        if len(tp_t) == 0:
            return q
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        j = np.arange(len(tp_t)) - starts[tp_t] + 1  # 1-based count within its threshold
        tp = j.astype(float)
        fp = (rank[tp_index] - j).astype(float)
        pr = np.zeros((t, counts.max()))  # padded with 0 <= any precision
        pr[tp_t, j - 1] = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        need = cat["need"]
        ok = need[None, :] <= counts[:, None]  # [T, R]
        rows, cols = np.nonzero(ok)
        q[rows, cols] = pr[rows, need[cols] - 1]
        return q

    def evaluate(self, assignment):
        """COCO mAP@[.5:.95] and AP50 of the routing: ``{"map": float, "ap50": float}``.

        Args:
          assignment: ``int[M]``, the expert chosen for each image.
        """
        return _map_ap50(self.precision(assignment), self._iou_thrs)

    def map(self, assignment):
        """COCO mAP@[.5:.95] of the routing."""
        return self.evaluate(assignment)["map"]

    def expert_map(self, n):
        """:meth:`evaluate` with every image on expert ``n``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not (
                0 <= n < self.num_experts):
            raise ValueError(f"n must be an expert index in 0..{self.num_experts - 1}, got {n!r}")
        return self.evaluate(np.full(self.num_images, int(n)))

    def stats(self, assignment):
        """pycocotools' own ``accumulate`` + ``summarize`` on the routing's evalImgs.

        Needs ``full_stats=True``. Returns ``float64[12]``, ``COCOeval.stats``.
        """
        if not self.full_stats:
            raise ValueError("stats() needs RoutingEvaluator(..., full_stats=True)")
        a = self._assignment(assignment)
        m = self.num_images
        ev = self._evals[0]
        ev.evalImgs = [self._eval_imgs[a[j % m]][j] for j in range(len(self._eval_imgs[0]))]
        _quiet(ev.accumulate)
        _quiet(ev.summarize)
        return np.array(ev.stats, np.float64)

    def per_image_scores(self, kind="ap"):
        """``float32[M, N]``: expert n's score on image i (higher is better).

        See the module docstring for the kinds and for images without ground truth.
        """
        if kind not in SCORE_KINDS:
            raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
        m, n_exp = self.num_images, self.num_experts
        out = np.zeros((m, n_exp), np.float32)
        for n in range(n_exp):
            for i in range(m):
                out[i, n] = self._image_score(
                    [self._entries[n][k][i] for k in range(self.num_classes)], kind)
        return out

    def _image_score(self, entries, kind):
        entries = [e for e in entries if e is not None]
        t = len(self._iou_thrs)
        npig = sum(int(np.count_nonzero(e["gtIgnore"] == 0)) for e in entries)
        if entries:
            scores = np.concatenate([np.asarray(e["dtScores"], np.float64) for e in entries])
            dtm = np.concatenate([np.asarray(e["dtMatches"]).reshape(t, -1) for e in entries],
                                 axis=1).astype(bool)
            dtig = np.concatenate([np.asarray(e["dtIgnore"]).reshape(t, -1) for e in entries],
                                  axis=1).astype(bool)
        else:
            scores, dtm, dtig = np.zeros(0), np.zeros((t, 0), bool), np.zeros((t, 0), bool)
        if npig == 0:  # nothing to find: a small tie-break against confident false positives
            return max(0.0, 1.0 - EMPTY_FP_PENALTY * np.count_nonzero(scores >= CONFIDENT_SCORE))
        order = np.argsort(-scores, kind="mergesort")
        scores, dtm, dtig = scores[order], dtm[:, order], dtig[:, order]
        tps = dtm & ~dtig
        fps = ~dtm & ~dtig
        if kind == "f1":
            sure = scores >= CONFIDENT_SCORE
            tp = np.count_nonzero(tps[0, sure])
            fp = np.count_nonzero(fps[0, sure])
            return 2.0 * tp / (2.0 * tp + fp + (npig - tp))
        if kind == "ap50":
            tps, fps = tps[:1], fps[:1]
        tp_sum = np.cumsum(tps, axis=1).astype(float)
        fp_sum = np.cumsum(fps, axis=1).astype(float)
        nd = tp_sum.shape[1]
        if nd == 0:
            return 0.0
        rc = tp_sum / npig
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        aps = []
        for ti in range(len(rc)):
            inds = np.searchsorted(rc[ti], self._rec_thrs, side="left")
            ok = inds < nd
            q = np.zeros(len(self._rec_thrs))
            q[ok] = pr[ti, inds[ok]]
            aps.append(q.mean())
        return float(np.mean(aps))


def per_image_scores(gt_boxes, gt_labels, gt_image, num_images, detections, *, image_size=300,
                     num_classes=None, kind="ap"):
    """Each expert's score on each image, higher is better: ``float32[M, N]`` in [0, 1].

    ``kind="ap"`` (default): the image's own COCO AP@[.5:.95] (classes pooled within
    the image, pycocotools' matching, 101-point interpolation); ``"ap50"``: the same
    at IoU .5; ``"f1"``: F1 at IoU .5 of the detections with score >= 0.5. Images
    without ground truth score ``max(0, 1 - 0.02 * #detections with score >= 0.5)``
    for every kind. The module docstring has the measurements behind these choices.

    Args:
      gt_boxes, gt_labels, gt_image, num_images, image_size: as in :func:`coco_map`.
      detections: ``float[M, N, K, 6]``.
      num_classes: C; default the largest class seen in gt_labels or detections + 1.
      kind: one of :data:`SCORE_KINDS`.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    if num_classes is None:
        labels = _int_array(gt_labels, "gt_labels", 1, "[B]")
        dets = _float_array(detections, "detections", 4, "[M, N, K, 6]", last=6)
        seen = [labels.max() if labels.size else -1, dets[..., 5].max() if dets.size else -1]
        num_classes = max(1, int(max(seen)) + 1)
    ev = RoutingEvaluator(gt_boxes, gt_labels, gt_image, num_images, num_classes, detections,
                          image_size=image_size)
    return ev.per_image_scores(kind)
