"""Scene shift: routing a test sequence in its natural order, as a sensor would.

The pipeline's curves route the test split in shuffled batches (Algorithm 1), which a
sensor cannot do: it sees its inputs one at a time (or one frame of inputs at a time),
in the order the scene produces them, and a scene the calibration set never showed
moves the gate's logits. :func:`route_natural_order` routes one gate's test logits in
that natural order with each routing a sensor could run (the one evaluator of the
pipeline's scene-shift stage and of the int8 export); :func:`scene_shift_rows` measures
what the budget sees (the pipeline's ``scene_shift.json`` rows; the export measures its
rows with :func:`bmoe_tf.budget.sequence_cost`):

* ``static``: ``argmax(logits + offsets)``, offsets calibrated on the validation split
  (:func:`bmoe_tf.routing.calibrate_offsets`): what the int8 firmware does today;
* ``controller``: :class:`bmoe_tf.budget.BudgetController` started at those offsets
  (``from_calibration(..., crossing=16)``), soft mode: the offsets track b online;
* ``controller_hard``: the same with a leaky bucket of ``B = max(bucket_fraction * W *
  d_t, ceil(largest used d_n))`` bytes (:func:`default_bucket_bytes`; 10% of a 64-input
  window's budget unless one used expert's whole-byte cost is larger), so that no window
  of inputs ever sends more than its budget plus B;
* ``per_frame``: Algorithm 1 over the inputs of each frame, capacities carried across
  frames (:func:`bmoe_tf.budget.route_frames`); only where a frame holds several inputs
  (SR: the parts of one photo); with one input per frame it would ignore the gate (a
  round robin of the capacities), so the row is marked skipped;
* ``per_batch``: Algorithm 1 over shuffled batches (a seeded permutation of the test
  inputs, :func:`bmoe_tf.routing.route_in_batches`, mapped back): the batch routing the
  paper evaluates, the reference.

With per-input payload bytes (``costs``, encoded mode) the budget is in bytes: the
controllers are :class:`bmoe_tf.byte_controller.ByteController` (the same scores and
initial offsets, a price on bytes instead of the frequency feedback; the hard one's
bucket at least the stream's largest cheapest payload, so that every input can be sent),
and every row counts each input's own bytes. ``data_costs`` are then the calibration
split's mean bytes per expert, so ``d_t = b . d`` is the point's target.

Per method: the mean data cost per input against the budget ``d_t = b . d`` (in %), the
worst window of W consecutive inputs in natural order (its mean cost against d_t, in %;
the whole sequence when it is shorter than W), the largest excess of a W-window's bytes
over ``W d_t``, for hard mode the bucket B and the largest overrun of ANY window (any
length) beyond ``W' d_t + B`` (0: never over the bucket), the frequencies and the task
metric of the routing.
"""
import dataclasses

import numpy as np

from bmoe_tf.bias import validate_bias
from bmoe_tf.budget import DEFAULT_CROSSING, BudgetController, route_frames
from bmoe_tf.byte_controller import ByteController
from bmoe_tf.checks import as_float_array, check_finite
from bmoe_tf.routing import calibrate_offsets, route, route_in_batches

__all__ = ["route_natural_order", "NaturalOrderRouting", "scene_shift_rows", "window_excess",
           "default_bucket_bytes", "METHODS", "LABELS", "CROSSING", "BUCKET_FRACTION", "WINDOW",
           "BATCH_SIZE", "ONE_INPUT_PER_FRAME"]

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


def default_bucket_bytes(bias, data_costs, window=WINDOW, fraction=BUCKET_FRACTION):
    """Hard mode's default bucket B in bytes: ``max(fraction * window * d_t, ceil(largest
    used d_n))``, ``d_t = b . d``: ``fraction`` of a window's budget, but never less than
    one input of the dearest used expert in whole bytes (the controller's bucket counts
    whole bytes, each d_n rounded up, so every used expert can be sent)."""
    d = np.asarray(data_costs, np.float64)
    b = np.asarray(bias, np.float64)
    return float(max(float(fraction) * int(window) * float(b @ d), float(np.ceil(d[b > 0]).max())))


@dataclasses.dataclass
class NaturalOrderRouting:
    """The result of :func:`route_natural_order`.

    Attributes:
      choices: ``{method: int64[M]}`` the expert of each input in natural order, for each
        of :data:`METHODS` that ran (``per_frame`` only with frames).
      soft, hard: the :class:`bmoe_tf.budget.BudgetController` of ``controller`` and
        ``controller_hard`` (after routing the sequence).
      bucket_bytes: hard mode's bucket B (the controller's, whole bytes).
      bucket_overrun_bytes: the largest overrun of ANY window (any length) of the hard
        routing beyond ``W' d_t + B`` in the controller's own accounting (whole bytes,
        refilled by its d_t; with per-input costs a wait is a slot that sends nothing);
        0: never over the bucket.
      waits: idle refills of the hard byte controller (per-input costs), else 0.
    """

    choices: dict
    soft: BudgetController
    hard: BudgetController
    bucket_bytes: float
    bucket_overrun_bytes: float
    waits: int = 0


def _check_inputs(z, v, bias, data_costs, frames, window, batch_size, seed, crossing, *,
                  names=("test_logits", "validation_logits")):
    zn, vn = names
    z = as_float_array(z, zn, rank=2, layout="[M, N]")
    check_finite(z, zn)
    m, n = z.shape
    if m == 0:
        raise ValueError(f"{zn} holds no input ([0, N])")
    v = as_float_array(v, vn, rank=2, layout="[V, N]")
    check_finite(v, vn)
    if v.shape[1] != n:
        raise ValueError(f"{vn} must hold {n} logits per row like {zn}, got {v.shape[1]}")
    if len(v) < n:
        raise ValueError(f"{vn} holds {len(v)} inputs, fewer than the {n} experts")
    b = validate_bias(bias, n, name="bias")
    d = np.asarray(data_costs, np.float64)
    if d.shape != (n,) or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"data_costs must be {n} positive byte counts, got "
                         f"{np.asarray(data_costs).tolist()}")
    f = _check_frames(frames, m)
    window = _positive_int(window, "window")
    batch_size = _positive_int(batch_size, "batch_size", minimum=n)
    seed = _positive_int(seed, "seed", minimum=0)
    crossing = float(crossing)
    if not (np.isfinite(crossing) and crossing > 0):
        raise ValueError(f"crossing must be a positive number, got {crossing}")
    return z, v, b, d, f, window, batch_size, seed, crossing


def route_natural_order(test_logits, frames, calibration_logits, bias, data_costs, *,
                        window=WINDOW, batch_size=BATCH_SIZE, seed=0, crossing=CROSSING,
                        bucket_bytes=None, bucket_fraction=BUCKET_FRACTION, static=None,
                        batch_logits=None, int8_scale=None, costs=None):
    """Every routing of :data:`METHODS` of a gate's test logits in their natural order
    (see the module docstring): a :class:`NaturalOrderRouting`.

    Args:
      test_logits: ``float[M, N]`` the gate's logits of the test inputs in natural order
        (with ``int8_scale``: the int8 model's raw int8 logits).
      frames: ``int[M]`` the frame of each input (a frame's inputs contiguous), or None:
        one input per frame (no ``per_frame`` routing).
      calibration_logits: ``float[V, N]`` the same gate's logits on the calibration set of
        the static offsets and the controllers, ``V >= N`` (float; the dequantized int8
        logits with ``int8_scale``).
      bias: ``float[N]`` b; data_costs: ``float[N]`` d_n, bytes per input (positive).
      window: W (inputs) of :func:`default_bucket_bytes`; batch_size: rows per shuffled
        batch (>= N); seed: the shuffle's seed; crossing: the controllers' ``crossing``.
      bucket_bytes: hard mode's bucket B (bytes, at least every used d_n in whole
        bytes), or None: :func:`default_bucket_bytes` with ``bucket_fraction``.
      static: ``int[M]`` the static routing's choices where the caller has them (the int8
        export: the exported model's own), or None: ``argmax(test_logits +
        calibrate_offsets(calibration_logits, b))``.
      batch_logits: ``float[M, N]`` the logits Algorithm 1 ranks for ``per_batch``, or
        None: ``test_logits`` (the int8 export passes the dequantized int8 logits).
      int8_scale: the int8 logits' scale: the controllers and ``per_frame`` then run the
        integer path (:class:`bmoe_tf.budget.BudgetController`), as ``gate_router.c``.
      costs: ``float[M, N]`` each test input's payload bytes per expert, in natural order
        (encoded mode): the controllers hold a budget in bytes
        (:class:`bmoe_tf.byte_controller.ByteController`); None: the fixed ``data_costs``.

    Raises:
      ValueError: naming the bad argument.
    """
    z, v, b, d, f, window, batch_size, seed, crossing = _check_inputs(
        test_logits, calibration_logits, bias, data_costs, frames, window, batch_size, seed,
        crossing, names=("test_logits", "calibration_logits"))
    m = len(z)
    if bucket_bytes is None:
        bucket_fraction = float(bucket_fraction)
        if not (np.isfinite(bucket_fraction) and bucket_fraction >= 0):
            raise ValueError(f"bucket_fraction must be a number >= 0, got {bucket_fraction}")
        bucket_bytes = default_bucket_bytes(b, d, window, bucket_fraction)
    kwargs = dict(crossing=crossing)
    if int8_scale is not None:
        kwargs["int8_scale"] = int8_scale
    if static is None:
        static = np.asarray(route(z.astype(np.float32), calibrate_offsets(v, b)), np.int64)
    choices = {"static": np.asarray(static, np.int64).reshape(-1)}
    if len(choices["static"]) != m:
        raise ValueError(f"static must give one expert per test input ({m}), got "
                         f"{len(choices['static'])}")
    c = _check_costs(costs, z.shape, b)
    waits = 0
    if c is None:
        soft = BudgetController.from_calibration(v, b, d, **kwargs)
        choices["controller"] = soft.route_sequence(z)
        hard = BudgetController.from_calibration(v, b, d, bucket_bytes=bucket_bytes, **kwargs)
        picks = hard.route_sequence(z)
        # the guarantee's own accounting: whole bytes, refilled by the controller's d_t
        sent = hard.cost_bytes[picks]
    else:
        soft = ByteController.from_calibration(v, b, d, **kwargs)
        choices["controller"] = soft.route_sequence(z, c)
        cheapest = float(np.ceil(np.where(b > 0, c, np.inf).min(axis=1)).max())
        hard = ByteController.from_calibration(v, b, d, bucket_bytes=max(bucket_bytes, cheapest),
                                               **kwargs)
        picks = hard.route_sequence(z, c)
        waits = hard.waits
        paid = np.ceil(c[np.arange(m), picks])
        sent = np.concatenate([np.r_[np.zeros(idle), [cost]]
                               for idle, cost in zip(hard.idle_before, paid)])
    choices["controller_hard"] = picks
    overrun = _any_window_excess(sent, hard.target_cost) - hard.bucket_bytes
    if f is not None:
        frame_kwargs = {} if int8_scale is None else {"int8_scale": int8_scale}
        choices["per_frame"] = route_frames(z, f, b, d, **frame_kwargs)
    ranked = z if batch_logits is None else np.asarray(batch_logits)  # ranked as given
    if ranked.shape != z.shape:
        raise ValueError(f"batch_logits must have the shape of test_logits {z.shape}, got "
                         f"{ranked.shape}")
    order = np.random.default_rng(seed).permutation(m)
    per_batch = np.empty(m, np.int64)
    per_batch[order] = route_in_batches(ranked[order], b, batch_size)
    choices["per_batch"] = per_batch
    return NaturalOrderRouting(choices, soft, hard, float(hard.bucket_bytes), max(0.0, overrun),
                               int(waits))


def _check_costs(costs, shape, b):
    if costs is None:
        return None
    c = as_float_array(costs, "costs", rank=2, layout="[M, N]")
    if c.shape != shape:
        raise ValueError(f"costs must give each test input's bytes per expert, shape {shape}, "
                         f"got {c.shape}")
    if not np.all(np.isfinite(c[:, b > 0])) or np.any(c[:, b > 0] < 0):
        raise ValueError("costs must be finite bytes >= 0 for every used expert")
    return c


def scene_shift_rows(test_logits, frames, validation_logits, bias, data_costs, metric, *,
                     window=WINDOW, batch_size=BATCH_SIZE, seed=0, crossing=CROSSING,
                     bucket_fraction=BUCKET_FRACTION, costs=None):
    """One JSON-able row per routing method (:data:`METHODS`) of a gate's test logits in
    their natural order (:func:`route_natural_order`, calibrated on the validation split;
    see the module docstring).

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
        the hard-mode bucket as a share of ``W d_t`` (:func:`default_bucket_bytes`).
      costs: ``float[M, N]`` each test input's payload bytes per expert in natural order
        (encoded mode; ``data_costs`` then the validation split's mean bytes), or None.

    Returns:
      ``[{"method", "label", "skipped", "budget", "reachable_cost", "mean_cost", "mean_vs_budget_pct",
      "window", "worst_window_cost", "worst_window_vs_budget_pct",
      "max_window_excess_bytes", "bucket_bytes", "bucket_overrun_bytes", "waits",
      "window_slack_bytes", "frequencies", "metric"}]`` (hard mode only fills the bucket
      fields and ``waits``, the soft controller with fixed costs ``window_slack_bytes``, its
      stated bound; ``reachable_cost`` the mean bytes with every input at its dearest used
      expert, the most any routing can spend; a skipped row has None values and
      ``skipped`` says why).

    Raises:
      ValueError: naming the bad argument.
    """
    z, v, b, d, f, window, batch_size, seed, crossing = _check_inputs(
        test_logits, validation_logits, bias, data_costs, frames, window, batch_size, seed,
        crossing)
    if metric is not None and not callable(metric):
        raise ValueError(f"metric must be a callable (assignment -> float) or None, got "
                         f"{type(metric).__name__}")
    bucket_fraction = float(bucket_fraction)
    if not (np.isfinite(bucket_fraction) and bucket_fraction >= 0):
        raise ValueError(f"bucket_fraction must be a number >= 0, got {bucket_fraction}")
    m, n = z.shape
    budget = float(b @ d)
    routing = route_natural_order(z, f, v, b, d, window=window, batch_size=batch_size,
                                  seed=seed, crossing=crossing, bucket_fraction=bucket_fraction,
                                  costs=costs)
    per_input = None if costs is None else np.asarray(costs, np.float64)
    used = b > 0  # the most any routing of b's experts can send per input, on average
    reachable = float(d[used].max()) if per_input is None else \
        float(per_input[:, used].max(axis=1).mean())

    def row(method, picks, **extra):
        if picks is None:
            out = dict(method=method, label=LABELS[method], skipped=extra.pop("skipped"),
                       budget=budget, reachable_cost=reachable, window=min(window, m))
            for key in ("mean_cost", "mean_vs_budget_pct", "worst_window_cost",
                        "worst_window_vs_budget_pct", "max_window_excess_bytes", "bucket_bytes",
                        "bucket_overrun_bytes", "waits", "window_slack_bytes", "frequencies",
                        "metric"):
                out[key] = None
            return out
        picks = np.asarray(picks, np.int64)
        sent = d[picks] if per_input is None else per_input[np.arange(m), picks]
        mean = float(sent.mean())
        worst, excess = window_excess(sent, budget, window)
        return dict(method=method, label=LABELS[method], skipped=None, budget=budget,
                    reachable_cost=reachable,
                    mean_cost=mean, mean_vs_budget_pct=100.0 * (mean / budget - 1.0),
                    window=min(window, m), worst_window_cost=worst,
                    worst_window_vs_budget_pct=100.0 * (worst / budget - 1.0),
                    max_window_excess_bytes=excess, bucket_bytes=extra.get("bucket_bytes"),
                    bucket_overrun_bytes=extra.get("bucket_overrun_bytes"),
                    waits=extra.get("waits"),
                    window_slack_bytes=extra.get("window_slack_bytes"),
                    frequencies=(np.bincount(picks, minlength=n) / m).tolist(),
                    metric=None if metric is None else float(metric(picks)))

    c = routing.choices
    slack = None if costs is not None else routing.soft.window_slack
    rows = [row("static", c["static"]),
            row("controller", c["controller"], window_slack_bytes=slack),
            row("controller_hard", c["controller_hard"], bucket_bytes=routing.bucket_bytes,
                bucket_overrun_bytes=routing.bucket_overrun_bytes, waits=routing.waits)]
    if f is None:
        rows.append(row("per_frame", None, skipped=ONE_INPUT_PER_FRAME))
    else:
        rows.append(row("per_frame", c["per_frame"]))
    rows.append(row("per_batch", c["per_batch"]))
    return rows
