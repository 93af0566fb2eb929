"""Scene shift: routing the test split in its natural order (issue 11).

The pipeline's curves route the test split in shuffled batches (Algorithm 1), which a
sensor cannot do: it sees its inputs one at a time (or one frame of inputs at a time),
in the order the scene produces them, and a scene the calibration set never showed
moves the gate's logits. :func:`scene_shift_rows` routes one gate's test logits in that
natural order with each routing a sensor could run, and measures what the budget sees:

* ``static``: ``argmax(logits + offsets)``, offsets calibrated on the validation split
  (:func:`bmoe_tf.routing.calibrate_offsets`): what the int8 firmware does today;
* ``controller``: :class:`bmoe_tf.routing.BudgetController` started at those offsets
  (``from_calibration(..., crossing=16)``), soft mode: the offsets track b online;
* ``controller_hard``: the same with a leaky bucket of ``B = max(bucket_fraction * W *
  d_t, largest used d_n)`` bytes (default: 10% of a 64-input window's budget), so that
  no window of inputs ever sends more than its budget plus B;
* ``per_frame``: Algorithm 1 over the inputs of each frame, capacities carried across
  frames (:func:`bmoe_tf.routing.route_frames`); only where a frame holds several inputs
  (SR: the parts of one photo); with one input per frame it would ignore the gate (a
  round robin of the capacities), so the row is marked skipped;
* ``per_batch``: Algorithm 1 over shuffled batches (a seeded permutation of the test
  inputs, :func:`bmoe_tf.routing.route_in_batches`, mapped back): the batch routing the
  paper evaluates, the reference.

Per method: the mean data cost per input against the budget ``d_t = b . d`` (in %), the
worst window of W consecutive inputs in natural order (its mean cost against d_t, in %;
the whole sequence when it is shorter than W), the largest excess of a W-window's bytes
over ``W d_t``, for hard mode the bucket B and the largest overrun of ANY window (any
length) beyond ``W' d_t + B`` (0: never over the bucket), the frequencies and the task
metric of the routing.
"""
import numpy as np

from bmoe_tf.bias import validate_bias
from bmoe_tf.budget import DEFAULT_CROSSING
from bmoe_tf.checks import as_float_array, check_finite

__all__ = ["scene_shift_rows", "scene_shift_markdown", "window_excess", "METHODS", "LABELS",
           "CROSSING", "BUCKET_FRACTION", "WINDOW", "BATCH_SIZE"]

METHODS = ("static", "controller", "controller_hard", "per_frame", "per_batch")
LABELS = {"static": "static offsets (validation)",
          "controller": "budget controller (soft)",
          "controller_hard": "budget controller (hard, leaky bucket)",
          "per_frame": "per frame (Algorithm 1)",
          "per_batch": "shuffled batches (Algorithm 1, reference)"}
#: The controller's step: the offsets cross the score range in this many inputs.
CROSSING = DEFAULT_CROSSING
#: Hard mode's bucket: this share of a window's budget (W d_t) in bytes.
BUCKET_FRACTION = 0.1
WINDOW = 64
BATCH_SIZE = 128
#: What a skipped per-frame row says.
ONE_INPUT_PER_FRAME = "one input per frame"


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _prefix(costs):
    return np.concatenate([[0.0], np.cumsum(costs, dtype=np.float64)])


def window_excess(costs, budget, window):
    """``(worst window mean cost, largest excess of a window's bytes over window * budget)``
    over the windows of ``min(window, M)`` consecutive entries of ``costs`` (``float[M]``)."""
    costs = np.asarray(costs, np.float64)
    w = min(int(window), len(costs))
    p = _prefix(costs)
    sums = p[w:] - p[:-w]
    worst = float(sums.max())
    return worst / w, worst - w * float(budget)


def _any_window_excess(costs, budget):
    """Largest ``sum(costs[i:j]) - (j - i) budget`` over every non-empty window (O(M))."""
    p = _prefix(costs) - float(budget) * np.arange(len(costs) + 1)
    running_min = np.minimum.accumulate(p[:-1])
    return float(np.max(p[1:] - running_min))


def _check_frames(frames, m):
    if frames is None:
        return None
    f = np.asarray(frames)
    if f.ndim != 1 or len(f) != m or not (np.issubdtype(f.dtype, np.integer) or (
            f.size and np.all(np.mod(f, 1) == 0))):
        raise ValueError(f"frames must be int[M] with M = {m} (one frame per test input), got "
                         f"{f.dtype} of shape {f.shape}")
    f = f.astype(np.int64)
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]]) if m else np.zeros(0, int)
    if len(np.unique(f)) != len(starts):
        raise ValueError("frames: the inputs of each frame must be contiguous in the natural "
                         "order (a frame's inputs one after another)")
    return f


def scene_shift_rows(test_logits, frames, validation_logits, bias, data_costs, metric, *,
                     window=WINDOW, batch_size=BATCH_SIZE, seed=0, crossing=CROSSING,
                     bucket_fraction=BUCKET_FRACTION):
    """One JSON-able row per routing method (:data:`METHODS`) of a gate's test logits in
    their natural order (see the module docstring).

    Args:
      test_logits: ``float[M, N]`` the gate's logits of the test inputs, in natural order.
      frames: ``int[M]`` the frame of each test input (a frame's inputs contiguous), or
        None: one input per frame (the per-frame row is then skipped).
      validation_logits: ``float[V, N]`` the same gate's logits on the validation split
        (the calibration set of the static offsets and the controller), ``V >= N``.
      bias: ``float[N]`` the frequencies b.
      data_costs: ``float[N]`` d_n, bytes per input (positive).
      metric: ``assignment int[M] (natural order) -> float``, the task metric, or None.
      window: W, inputs per window; batch_size: rows per shuffled batch (>= N); seed:
        the shuffle's seed; crossing: the controller's ``crossing``; bucket_fraction:
        the hard-mode bucket as a share of ``W d_t``.

    Returns:
      ``[{"method", "label", "skipped", "budget", "mean_cost", "mean_vs_budget_pct",
      "window", "worst_window_cost", "worst_window_vs_budget_pct",
      "max_window_excess_bytes", "bucket_bytes", "bucket_overrun_bytes", "frequencies",
      "metric"}]`` (hard mode only fills the bucket fields; a skipped row has None values
      and ``skipped`` says why).

    Raises:
      ValueError: naming the bad argument.
    """
    from bmoe_tf.routing import (BudgetController, calibrate_offsets, route, route_frames,
                                 route_in_batches)

    z = as_float_array(test_logits, "test_logits", rank=2, layout="[M, N]")
    check_finite(z, "test_logits")
    m, n = z.shape
    if m == 0:
        raise ValueError("test_logits holds no input ([0, N])")
    v = as_float_array(validation_logits, "validation_logits", rank=2, layout="[V, N]")
    check_finite(v, "validation_logits")
    if v.shape[1] != n:
        raise ValueError(f"validation_logits must hold {n} logits per row like test_logits, "
                         f"got {v.shape[1]}")
    if len(v) < n:
        raise ValueError(f"validation_logits holds {len(v)} inputs, fewer than the {n} experts")
    b = validate_bias(bias, n, name="bias")
    d = np.asarray(data_costs, np.float64)
    if d.shape != (n,) or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"data_costs must be {n} positive byte counts, got "
                         f"{np.asarray(data_costs).tolist()}")
    f = _check_frames(frames, m)
    if metric is not None and not callable(metric):
        raise ValueError(f"metric must be a callable (assignment -> float) or None, got "
                         f"{type(metric).__name__}")
    window = _positive_int(window, "window")
    batch_size = _positive_int(batch_size, "batch_size", minimum=n)
    seed = _positive_int(seed, "seed", minimum=0)
    crossing = float(crossing)
    if not (np.isfinite(crossing) and crossing > 0):
        raise ValueError(f"crossing must be a positive number, got {crossing}")
    bucket_fraction = float(bucket_fraction)
    if not (np.isfinite(bucket_fraction) and bucket_fraction >= 0):
        raise ValueError(f"bucket_fraction must be a number >= 0, got {bucket_fraction}")

    budget = float(b @ d)
    used = b > 0

    def row(method, picks, **extra):
        if picks is None:
            out = dict(method=method, label=LABELS[method], skipped=extra.pop("skipped"),
                       budget=budget, window=min(window, m))
            for key in ("mean_cost", "mean_vs_budget_pct", "worst_window_cost",
                        "worst_window_vs_budget_pct", "max_window_excess_bytes", "bucket_bytes",
                        "bucket_overrun_bytes", "frequencies", "metric"):
                out[key] = None
            return out
        picks = np.asarray(picks, np.int64)
        costs = d[picks]
        mean = float(costs.mean())
        worst, excess = window_excess(costs, budget, window)
        return dict(method=method, label=LABELS[method], skipped=None, budget=budget,
                    mean_cost=mean, mean_vs_budget_pct=100.0 * (mean / budget - 1.0),
                    window=min(window, m), worst_window_cost=worst,
                    worst_window_vs_budget_pct=100.0 * (worst / budget - 1.0),
                    max_window_excess_bytes=excess, bucket_bytes=extra.get("bucket_bytes"),
                    bucket_overrun_bytes=extra.get("bucket_overrun_bytes"),
                    frequencies=(np.bincount(picks, minlength=n) / m).tolist(),
                    metric=None if metric is None else float(metric(picks)))

    rows = []
    offsets = calibrate_offsets(v, b)
    rows.append(row("static", np.asarray(route(z.astype(np.float32), offsets), np.int64)))
    soft = BudgetController.from_calibration(v, b, d, crossing=crossing)
    rows.append(row("controller", soft.route_sequence(z)))
    bucket = max(bucket_fraction * window * budget, float(np.ceil(d[used]).max()))
    hard = BudgetController.from_calibration(v, b, d, crossing=crossing, bucket_bytes=bucket)
    picks = hard.route_sequence(z)
    # the guarantee's own accounting: whole bytes, refilled by the controller's d_t
    overrun = _any_window_excess(hard.cost_bytes[picks], hard.target_cost) - hard.bucket_bytes
    rows.append(row("controller_hard", picks, bucket_bytes=float(hard.bucket_bytes),
                    bucket_overrun_bytes=max(0.0, overrun)))
    if f is None:
        rows.append(row("per_frame", None, skipped=ONE_INPUT_PER_FRAME))
    else:
        rows.append(row("per_frame", route_frames(z, f, b, d)))
    order = np.random.default_rng(seed).permutation(m)
    picks = np.empty(m, np.int64)
    picks[order] = route_in_batches(z[order], b, batch_size)
    rows.append(row("per_batch", picks))
    return rows


def _pct(value, digits=1):
    return "-" if value is None else f"{value:+.{digits}f}%"


def scene_shift_markdown(rows, *, metric_name="metric", expert_names=None, unit="B"):
    """Markdown table of :func:`scene_shift_rows`: method | mean cost vs budget | worst
    W-window | bucket | frequencies | metric."""
    rows = list(rows)
    if not rows:
        return ""
    w = rows[0]["window"]
    budget = rows[0]["budget"]
    names = "" if not expert_names else " (" + " / ".join(expert_names) + ")"
    out = [f"| method | mean cost vs budget ({budget:,.0f} {unit}) | worst {w}-window | "
           f"bucket | frequencies{names} | {metric_name} |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r["skipped"]:
            out.append(f"| {r['method']} | skipped: {r['skipped']} | - | - | - | - |")
            continue
        bucket = "-"
        if r["bucket_bytes"] is not None:
            over = r["bucket_overrun_bytes"]
            bucket = (f"B = {r['bucket_bytes']:,.0f} {unit}, "
                      + ("never over" if over == 0 else f"**over by {over:,.0f} {unit}**"))
        freqs = " / ".join(f"{x:.3f}" for x in r["frequencies"])
        metric = "-" if r["metric"] is None else f"{r['metric']:.3f}"
        out.append(f"| {r['method']} | {_pct(r['mean_vs_budget_pct'], 2)} "
                   f"({r['mean_cost']:,.0f} {unit}) | {_pct(r['worst_window_vs_budget_pct'])} | "
                   f"{bucket} | {freqs} | {metric} |")
    return "\n".join(out)
