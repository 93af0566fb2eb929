"""Online budget control: routing that holds b (and a byte budget) on any input
sequence, for a sensor that routes one input (or one frame of inputs) at a time.

:class:`BudgetController` routes ``argmax(w(logits) + offsets)`` and updates the
offsets from its own choices (a dual / stochastic-approximation step towards b), so a
scene the gate never saw cannot push the frequencies away from b for long. Its initial
offsets are :func:`bmoe_tf.offsets.calibrate_offsets`. Exported as
``bmoe_tf.routing.BudgetController`` (with :func:`route_frames`, :func:`sequence_cost`).

Scores. ``w`` only looks at the used experts (``b_n > 0``): with ``u_n = min(max(0,
max_used(z) - z_n), R)`` (the gap to the row's best used expert, clipped to the
``logit_range`` R) it is ``w_n = -u_n`` (``gap_scale=None``) or ``w_n = -tau log(1 +
u_n / tau)`` (``gap_scale=tau``: slope 1 near the boundary, logarithmic for the huge
gaps a relative-loss gate produces, so one step size suits both). Either way the
scores lie in ``[-L, 0]`` with ``L = R`` or ``tau log(1 + R / tau)``.

State. Everything that decides is kept in integers, so the Python controller and the
C router (``gating_tflite``'s ``gate_router.c``) make identical choices: b is held as
``b_q`` (integers summing to ``Q = 2**16``, largest remainders, ``b_q > 0`` exactly
where ``b > 0``), the deficits as ``E_n = t b_q[n] - Q c_n(t)`` and the offsets as
``o = o0 + eta E / Q``; scores are compared in ticks of ``eta / Q`` score units. For int8
logits (``int8_scale=s``) ``w`` is a table of 256 integers (gap in int8 steps -> ticks),
so that path has no floating point at all.

Guarantees (proved in the class docstring, tested with adversarial sequences in
``tests/bmoe_tf/test_budget.py``), for ANY sequence of finite logits, soft mode, with ``S = L +
spread(o0)`` (``spread`` = max - min over the used experts of the initial offsets):

* deficits ``D_n(t) = t b'_n - c_n(t)`` (``b' = b_q / Q``, within ``1/Q`` of b) stay in
  ``[-(S/eta + 1), (N_u - 1)(S/eta + 1)]``, N_u the number of used experts: the
  frequencies converge to b at rate O(1/t), and an expert with ``b_n = 0`` is never
  chosen;
* the bytes sent over any window of W consecutive inputs are at most ``W d_t +
  window_slack`` with ``d_t = b' . d`` and ``window_slack = N_u (S/eta + 1) sum_n (d_n -
  d_min)``;
* hard mode (``bucket_bytes=B``): a leaky bucket of B bytes refilled by d_t per input
  never goes negative, so the bytes sent over any window of W inputs never exceed
  ``W d_t + B``; when the chosen expert does not fit, the best affordable one (by score)
  is taken. The bucket counts whole bytes (each d_n rounded up).

:meth:`BudgetController.route_frame` is per-frame enforcement for a frame of many
inputs (SR: the parts of one photo): Algorithm 1 over the frame with capacities taken
from the same deficits (largest deficit first, one slot at a time), so frame after
frame the deficits stay in ``(-1, N_u)`` and the frequencies meet b exactly in the long
run instead of drifting by each frame's rounding.
"""
import numpy as np

from bmoe_tf.bias import validate_bias
from bmoe_tf.checks import as_float_array, check_finite, check_vector
from bmoe_tf.offsets import calibrate_offsets

__all__ = ["BudgetController", "route_frames", "quantize_bias", "sequence_cost", "RESOLUTION",
           "DEFAULT_CROSSING"]

#: Q: b is held as integers summing to Q.
RESOLUTION = 2 ** 16

#: ``from_calibration``'s default speed: the offsets cross the whole score range in this
#: many inputs (a quarter of a 64-input window; chosen on the SR test scene, WORKSPACE
#: D46).
DEFAULT_CROSSING = 16


def quantize_bias(bias, resolution=RESOLUTION):
    """``int64[N]`` summing to ``resolution``: largest remainders of ``b * resolution``,
    with at least 1 for every ``b_n > 0`` and exactly 0 for ``b_n = 0``."""
    b = np.asarray(bias, np.float64)
    raw = b * resolution
    q = np.floor(raw).astype(np.int64)
    q[(b > 0) & (q == 0)] = 1
    while q.sum() < resolution:
        room = np.where(b > 0, raw - q, -np.inf)
        q[int(np.argmax(room))] += 1
    while q.sum() > resolution:
        room = np.where(q > 1, raw - q, np.inf)
        q[int(np.argmin(room))] -= 1
    return q


def _warp(gaps, gap_scale):
    """Score of a clipped gap ``u >= 0`` (float): ``-u`` or ``-tau log1p(u / tau)``."""
    return -gaps if gap_scale is None else -gap_scale * np.log1p(gaps / gap_scale)


class BudgetController:
    """Per-input routing whose offsets track b online (see the module docstring).

    Args:
      bias: ``float[N]``, the frequencies b.
      data_costs: ``float[N]``, d_n in bytes per input (positive).
      bucket_bytes: hard mode: the leaky bucket's size B in bytes (at least the largest
        d_n of a used expert); None: soft mode only (frequencies and windows as above).
      step: eta, the offsets' step per input in score units (larger: faster reaction to a
        scene change, a looser stated bound); positive, or None (the default): the score
        range divided by :data:`DEFAULT_CROSSING` (0.5 at the default ``logit_range``).
        At the defaults, with b = (0.5, 0.3, 0.2) and d = (3072, 5292, 12288) B,
        ``window_slack`` is 583,236 B (a 256-input window's budget is 1,428,782 B); after
        a scene shift (3000 inputs favouring the dearest expert by +4, then 3000 the
        cheapest) the worst 256-input window carried 1.035x its budget and the worst
        64-input window 1.14x (``tests/bmoe_tf/test_budget.py``; a step of 0.2: 1,406,628 B,
        1.09x / 1.35x; 0.05, the earlier default: 5,523,588 B, 1.35x / 2.01x).
      logit_range: R, gaps to the row's best used expert are clipped to R (bounds the
        worst case; a gate whose logits differ by more than R is as decided as it can be).
      gap_scale: tau of the logarithmic score (module docstring), or None (linear).
      offsets: ``float[N]`` initial offsets o0 in score units (e.g. static offsets
        calibrated on the training distribution, :meth:`from_calibration`), or None (0).
      int8_scale: the gate's int8 output scale s: :meth:`choose` then takes int8 logits
        (integers in [-128, 127]) and decides in integers only, like ``gate_router.c``.

    Proof sketch of the deficit bounds: each step adds ``eta (b' - e_a)`` to the offsets,
    so ``o(t) = o0 + eta D(t)`` and ``sum_n D_n = 0``. Expert n can be chosen only if its
    score beats every other: ``o_n >= o_m - L`` for every m, i.e. ``D_n >= max_m D_m -
    S/eta >= -S/eta`` (the largest deficit is >= 0); a choice lowers D_n by at most 1, so
    ``D_n >= -(S/eta + 1)`` always, and with ``sum D = 0`` the largest is at most ``(N_u -
    1)(S/eta + 1)``. The window bound follows from ``cost(t) - t d_t = -sum_n (d_n -
    d_min) D_n(t)``. (Ties between equal integer scores go to the lower expert index.)

    Attributes:
      offsets: ``float64[N]`` current offsets in score units (``-inf`` for ``b_n = 0``).
      counts: ``int64[N]`` choices so far; ``steps``: inputs routed so far.
      level: bytes in the bucket (hard mode, starts full at B), else None.
      bias_q: ``int64[N]``, b as integers summing to :data:`RESOLUTION`.
      target_cost: d_t, bytes per input the budget allows (``b' . d``).
    """

    def __init__(self, bias, data_costs, *, bucket_bytes=None, step=None, logit_range=8.0,
                 gap_scale=None, offsets=None, int8_scale=None):
        self.bias = validate_bias(bias, name="bias")
        n = len(self.bias)
        self.data_costs = check_vector(data_costs, "data_costs", size=n)
        if np.any(self.data_costs <= 0):
            raise ValueError(f"data_costs must be positive bytes, got {self.data_costs.tolist()}")
        if step is None:
            step = float(-_warp(np.float64(logit_range), gap_scale)) / DEFAULT_CROSSING \
                if np.isfinite(float(logit_range)) and float(logit_range) > 0 else logit_range
        for name, value in (("step", step), ("logit_range", logit_range)):
            if not (np.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if gap_scale is not None and not (np.isfinite(float(gap_scale)) and gap_scale > 0):
            raise ValueError(f"gap_scale must be a positive number or None, got {gap_scale}")
        if int8_scale is not None and not (np.isfinite(float(int8_scale)) and int8_scale > 0):
            raise ValueError(f"int8_scale must be a positive number or None, got {int8_scale}")
        self.step, self.logit_range = float(step), float(logit_range)
        self.gap_scale = None if gap_scale is None else float(gap_scale)
        self.int8_scale = None if int8_scale is None else float(int8_scale)
        self.used = self.bias > 0
        self.bias_q = quantize_bias(self.bias)
        self.ticks = RESOLUTION / self.step  # ticks per score unit
        o0 = np.zeros(n) if offsets is None else check_vector(offsets, "offsets", size=n)
        if offsets is not None:
            check_finite(o0[self.used], "offsets")
        o0 = o0 - o0[self.used].mean()
        self.initial_ticks = np.where(self.used, np.round(o0 * self.ticks), 0).astype(np.int64)
        self.score_range = float(-_warp(np.float64(self.logit_range), self.gap_scale))
        self.cost_bytes = np.ceil(self.data_costs).astype(np.int64)
        self.refill_q = int(self.bias_q @ self.cost_bytes)  # bytes * Q per input
        self.target_cost = self.refill_q / RESOLUTION
        self.bucket_bytes = None if bucket_bytes is None else float(bucket_bytes)
        if self.bucket_bytes is not None:
            largest = float(self.cost_bytes[self.used].max())
            if not np.isfinite(self.bucket_bytes) or self.bucket_bytes < largest:
                raise ValueError(f"bucket_bytes={bucket_bytes} is smaller than the largest data "
                                 f"cost of a used expert ({largest:g} bytes): that expert could "
                                 "never be sent")
            self.bucket_q = int(np.floor(self.bucket_bytes)) * RESOLUTION
        self.table = None
        if self.int8_scale is not None:
            gaps = np.minimum(np.arange(256) * self.int8_scale, self.logit_range)
            self.table = np.round(_warp(gaps, self.gap_scale) * self.ticks).astype(np.int64)
            if self.table.min() < -(2 ** 31 - 1) or self._state_bound_ticks() >= 2 ** 62:
                raise ValueError("int8 score table does not fit int32: raise step or lower "
                                 "logit_range")
        self.reset()

    @classmethod
    def from_calibration(cls, logits, bias, data_costs, *, crossing=DEFAULT_CROSSING,
                         gap_scale="auto",
                         logit_range="auto", **kwargs):
        """A controller started at the static offsets of a calibration set.

        ``logit_range="auto"``: the largest gap between used experts on the set;
        ``gap_scale="auto"``: the median gap between the two best used experts (the
        scores are logarithmic beyond it); ``step``: the score range divided by
        ``crossing`` (the offsets cross the whole range in that many inputs). The initial
        offsets are :func:`bmoe_tf.routing.calibrate_offsets` of the scores, so on the
        calibration distribution the controller starts where static routing is.

        Args:
          logits: ``float[M, N]`` calibration logits (float; for an int8 controller pass
            the dequantized int8 logits and ``int8_scale``).
        """
        z = as_float_array(logits, "logits", rank=2, layout="[M, N]")
        check_finite(z, "logits")
        b = validate_bias(bias, z.shape[1], name="bias")
        used = b > 0
        zu = z[:, used]
        if logit_range == "auto":
            logit_range = float(np.max(zu.max(1) - zu.min(1))) if used.sum() > 1 else 1.0
            logit_range = max(logit_range, 1e-3)
        if gap_scale == "auto":
            top2 = np.sort(zu, axis=1)[:, -2:] if used.sum() > 1 else np.zeros((len(z), 2))
            gap_scale = max(float(np.median(top2[:, 1] - top2[:, 0])), 1e-3)
        score_range = float(-_warp(np.float64(logit_range), gap_scale))
        kwargs.setdefault("step", score_range / float(crossing))
        scores = cls._scores_of(z, used, logit_range, gap_scale)
        offsets = calibrate_offsets(np.where(used, scores, -1e9), b) if used.sum() > 1 else None
        if offsets is not None:
            offsets = np.where(used, offsets, 0.0)
        return cls(b, data_costs, logit_range=logit_range, gap_scale=gap_scale,
                   offsets=offsets, **kwargs)

    @staticmethod
    def _scores_of(z, used, logit_range, gap_scale):
        best = z[:, used].max(axis=1, keepdims=True)
        return _warp(np.clip(best - z, 0.0, logit_range), gap_scale)

    def _state_bound_ticks(self):
        return (abs(self.initial_ticks).max() if hasattr(self, "initial_ticks") else 0) + \
            RESOLUTION * len(self.bias) * (self.score_range / self.step + 2)

    def reset(self):
        """Back to the initial state (initial offsets, empty counts, a full bucket)."""
        self.deficits_q = np.zeros(len(self.bias), np.int64)  # t b_q - Q c
        self.counts = np.zeros(len(self.bias), np.int64)
        self.steps = 0
        self.level_q = self.bucket_q if self.bucket_bytes is not None else None

    # ----------------------------------------------------------------- views

    @property
    def offsets(self):
        ticks = (self.initial_ticks + self.deficits_q) / self.ticks
        return np.where(self.used, ticks, -np.inf)

    @property
    def level(self):
        return None if self.level_q is None else self.level_q / RESOLUTION

    @property
    def deficits(self):
        """``float[N]``: ``t b'_n - c_n(t)`` (b' = b_q / Q)."""
        return self.deficits_q / RESOLUTION

    @property
    def window_slack(self):
        """Bytes by which any window may exceed ``W d_t`` in soft mode (module docstring)."""
        d = self.cost_bytes[self.used].astype(np.float64)
        return float(self.used.sum() * (self.spread / self.step + 1.0) * np.sum(d - d.min()))

    @property
    def spread(self):
        """S = L + spread of the initial offsets (score units): the bounds' constant."""
        o0 = self.initial_ticks[self.used] / self.ticks
        return self.score_range + float(o0.max() - o0.min())

    def integer_tables(self):
        """The integers ``gate_router.c`` is generated from (int8 controllers only)."""
        if self.table is None:
            raise ValueError("integer_tables() needs an int8 controller (int8_scale=...)")
        return {"num_experts": len(self.bias), "resolution": RESOLUTION,
                "bias_q": self.bias_q.tolist(), "used": self.used.astype(int).tolist(),
                "initial_ticks": self.initial_ticks.tolist(), "score_table": self.table.tolist(),
                "cost_bytes": self.cost_bytes.tolist(), "refill_q": self.refill_q,
                "bucket_q": None if self.bucket_bytes is None else self.bucket_q}

    # ----------------------------------------------------------------- scores

    def _row_scores(self, rows):
        """Scores without offsets, ``[M, N]`` (float64, or int64 ticks for int8)."""
        if self.table is None:
            return self._scores_of(rows, self.used, self.logit_range, self.gap_scale) * self.ticks
        best = rows[:, self.used].max(axis=1, keepdims=True)
        return self.table[np.clip(best - rows, 0, 255)]

    def _margins(self, rows):
        """Column values of Algorithm 1 inside a frame, ``[M, N]``: each used expert's
        margin over the best OTHER used expert, ``v_n = z_n - max_{m != n, used} z_m``
        (raw: any increasing transform ranks a column the same; unlike the gap to the
        best, it keeps the order among the rows an expert already leads; int8: integers)."""
        m, n = rows.shape
        idx = np.flatnonzero(self.used)
        z = rows.astype(np.float64 if self.table is None else np.int64)
        if len(idx) < 2:
            return np.zeros_like(z)
        others = np.empty_like(z)
        for k in range(n):
            others[:, k] = z[:, idx[idx != k]].max(axis=1)
        return z - others

    def _check_rows(self, rows, name):
        if self.table is None:
            x = as_float_array(rows, name, rank=2, layout="[M, N]")
            check_finite(x, name)
        else:
            x = np.asarray(rows)
            if x.ndim != 2 or not (np.issubdtype(x.dtype, np.integer)
                                   or np.all(np.mod(x, 1) == 0)):
                raise ValueError(f"{name} must be int8 logits [M, N] (an int8 controller), "
                                 f"got {x.dtype} of shape {x.shape}")
            x = x.astype(np.int64)
            if x.size and (x.min() < -128 or x.max() > 127):
                raise ValueError(f"{name} must lie in [-128, 127] (int8), got "
                                 f"[{x.min()}, {x.max()}]")
        if x.shape[1] != len(self.bias):
            raise ValueError(f"{name} must hold {len(self.bias)} logits per row, got "
                             f"{x.shape[1]}")
        return x

    def _update(self, a):
        self.deficits_q[self.used] += self.bias_q[self.used]
        self.deficits_q[a] -= RESOLUTION
        self.counts[a] += 1
        self.steps += 1

    # ----------------------------------------------------------------- routing

    def choose(self, logits_row):
        """Routes one input (``[N]`` logits: float, or int8 for an int8 controller);
        updates the state; returns the expert."""
        row = self._check_rows(np.asarray(logits_row).reshape(1, -1), "logits_row")
        scores = self._row_scores(row)[0] + self.initial_ticks + self.deficits_q
        allowed = self.used
        if self.level_q is not None:
            self.level_q = min(self.level_q + self.refill_q, self.bucket_q)
            allowed = self.used & (self.cost_bytes * RESOLUTION <= self.level_q)
        a = int(np.argmax(np.where(allowed, scores, -np.inf)))
        if self.level_q is not None:
            self.level_q -= int(self.cost_bytes[a]) * RESOLUTION
        self._update(a)
        return a

    def route_sequence(self, logits):
        """Routes ``[M, N]`` logits one row at a time, in order; returns ``int64[M]``."""
        x = self._check_rows(logits, "logits")
        return np.array([self.choose(row) for row in x], np.int64)

    def frame_capacities(self, size):
        """``int64[N]`` capacities of the next frame of ``size`` inputs: one slot at a time
        to the expert with the largest deficit after the slot's share (ties: lower index).
        Does not change the state (:meth:`route_frame` does)."""
        d = self.deficits_q.copy()
        caps = np.zeros(len(self.bias), np.int64)
        for _ in range(int(size)):
            d[self.used] += self.bias_q[self.used]
            a = int(np.argmax(np.where(self.used, d, np.iinfo(np.int64).min)))
            d[a] -= RESOLUTION
            caps[a] += 1
        return caps

    def route_frame(self, logits):
        """Per-frame enforcement: Algorithm 1 over one frame's inputs (``[m, N]``; int8
        for an int8 controller) with :meth:`frame_capacities`; returns ``int64[m]``.

        Experts in order 0..N-1 each take their capacity of the highest margins over the
        best other used expert (raw logits, neither clipped nor warped; offsets play no
        part inside a frame) among the inputs not yet taken (stable: ties to the lower
        input). Soft mode only (the bucket is a per-input mechanism)."""
        if self.level_q is not None:
            raise ValueError("route_frame is per-frame enforcement; a hard-mode (bucket) "
                             "controller routes one input at a time with choose()")
        x = self._check_rows(logits, "logits")
        caps = self.frame_capacities(len(x))
        scores = self._margins(x)
        out = np.full(len(x), -1, np.int64)
        for n in np.flatnonzero(caps):
            free = np.flatnonzero(out < 0)
            order = free[np.argsort(-scores[free, n], kind="stable")]
            out[order[:caps[n]]] = n
        for a in out:
            self._update(int(a))
        return out


def route_frames(logits, frames, bias, data_costs=None, **kwargs):
    """Per-frame enforcement over a sequence: :meth:`BudgetController.route_frame` on each
    run of equal ``frames`` values, in order; returns ``int64[M]``.

    Args:
      logits: ``[M, N]`` (float; int8 with ``int8_scale=`` in kwargs).
      frames: ``int[M]`` frame of each row; rows of one frame must be contiguous.
      bias: ``float[N]``; data_costs: ``float[N]`` (only for the controller's checks;
        ones if None); kwargs: more :class:`BudgetController` arguments.
    """
    frames = np.asarray(frames).reshape(-1)
    x = np.asarray(logits)
    if x.ndim != 2 or len(frames) != len(x):
        raise ValueError(f"frames must give one frame per row of logits [M, N]; got "
                         f"{len(frames)} frames for logits of shape {x.shape}")
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    if len(np.unique(frames)) != len(starts):
        raise ValueError("the rows of each frame must be contiguous (sort by frame first)")
    costs = np.ones(x.shape[1]) if data_costs is None else data_costs
    c = BudgetController(bias, costs, **kwargs)
    ends = np.r_[starts[1:], len(x)]
    parts = [c.route_frame(x[s:e]) for s, e in zip(starts, ends)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def sequence_cost(assignment, data_costs, bias, *, window=64, costs=None):
    """What a routed sequence sent, against the budget ``d_t = b . d``.

    Args:
      assignment: ``int[M]`` experts in the order the inputs were routed.
      data_costs: ``float[N]`` bytes per input; bias: ``float[N]``; window: W.
      costs: ``float[M, N]`` each input's own payload bytes per expert (encoded), or
        None: every input costs ``data_costs``. The budget stays ``b . data_costs``.
    Returns:
      dict: ``budget`` (d_t), ``mean`` (bytes per input), ``mean_over`` (``mean / d_t -
      1``), ``worst_window_over`` (the largest mean of W consecutive inputs, ``/ d_t -
      1``; the whole sequence when shorter than W), ``worst_window_excess`` (the largest
      ``bytes(window) - W d_t`` over windows of every length: the bucket size a hard
      budget would have needed), ``frequencies`` (``float[N]``), ``inputs``, ``window``.
    """
    b = validate_bias(bias, name="bias")
    d = check_vector(data_costs, "data_costs", size=len(b))
    a = np.asarray(assignment, np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= len(b)):
        raise ValueError(f"assignment must hold experts in [0, {len(b)}), got "
                         f"[{a.min()}, {a.max()}]")
    if int(window) < 1:
        raise ValueError(f"window must be a positive number of inputs, got {window}")
    budget = float(b @ d)
    if not a.size:
        return {"budget": budget, "mean": 0.0, "mean_over": -1.0, "worst_window_over": -1.0,
                "worst_window_excess": 0.0, "frequencies": [0.0] * len(b), "inputs": 0,
                "window": int(window)}
    sent = d[a]
    if costs is not None:
        c = np.asarray(costs, np.float64)
        if c.shape != (a.size, len(b)):
            raise ValueError(f"costs must be [{a.size}, {len(b)}] (each input's bytes per "
                             f"expert), got {c.shape}")
        sent = c[np.arange(a.size), a]
    spent = sent - budget
    cum = np.concatenate([[0.0], np.cumsum(spent)])
    w = min(int(window), a.size)
    worst = float(np.max(cum[w:] - cum[:-w])) / w
    excess = float(np.max(cum - np.minimum.accumulate(cum)))  # max over all windows
    return {"budget": budget, "mean": float(sent.mean()), "mean_over": float(sent.mean() / budget
                                                                             - 1.0),
            "worst_window_over": worst / budget, "worst_window_excess": excess,
            "frequencies": (np.bincount(a, minlength=len(b)) / a.size).tolist(),
            "inputs": int(a.size), "window": int(window)}
