"""Online routing that holds a budget in bytes when every input has its own cost.

With encoded payloads (:mod:`bmoe_tf.payload`) sending input ``i`` to expert ``n`` costs
``c[i, n]`` bytes, and the same frequencies b cost more on a busy scene than on a plain
one. :class:`bmoe_tf.budget.BudgetController` holds the frequencies b; a link holds bytes.
:class:`ByteController` keeps the same scores (the warped gaps of the gate's logits,
started at the static offsets of a calibration set) and replaces the frequency feedback
by a price on bytes, the online form of :func:`bmoe_tf.byte_budget.byte_aware_assignment`:

    a(t) = argmax_n  w_n(z_t) + o0_n - lam(t) c[t, n] / T,
    lam(t) = gain * eta * (bytes(t) - t T) / T          (clipped, see below)

``T`` the target in bytes per input, ``eta`` the step (score units), ``bytes(t)`` what
was sent before input t. Overspending one input's worth of target raises the price by
``gain * eta``, as one choice moves a frequency controller's offset by ``eta``. The price
is a function of the byte deficit ``D(t) = t T - bytes(t)`` alone; D is clipped to
``+-price_range * S / (gain * eta) * T`` (the price to at most ``price_range`` score ranges
per target's worth of bytes, ``S`` the scores' range plus the offsets' spread), so a stretch
where nothing can meet the budget (every input's cheapest payload dearer than T) does not
wind the price up for ever.

What the sensor needs: the sizes of every used expert's payload of the input (it encodes
each of them: measured in ``benchmarks/payload_sizes.py``), passed to :meth:`choose`.

Guarantees. Hard mode (``bucket_bytes=B``): a leaky bucket of B bytes, refilled by T per
input, never goes negative: only payloads that fit the bucket are chosen (by score), and
when not even the cheapest used payload fits, the sensor waits: the controller counts the
idle refills (``waits``, ``idle_before``) and sends the cheapest after them. So the bytes
over any span of W input slots (inputs and waits) are at most ``W T + B``. Soft mode has no
worst-case bound (a cost gap between experts can be arbitrarily small, so no price forces
a choice); it is measured on adversarial sequences in the tests and on each task's
natural-order stream (``scene_shift.json``). Its long-run mean meets T whenever T lies
between the stream's cheapest and dearest used payloads: the clipped deficit bounds
``|bytes(t) - t T|`` by ``price_range S / (gain eta) T`` plus one input.

All state is integer (bytes * Q, ticks of ``eta / Q`` score units) as in
:class:`bmoe_tf.budget.BudgetController`, so an integer port makes the same choices.
"""
import numpy as np

from bmoe_tf.budget import RESOLUTION, BudgetController

__all__ = ["ByteController", "PRICE_GAIN", "PRICE_RANGE"]

#: The price's gain: one target's worth of bytes over moves the price by this many steps.
#: (On the toy task's 240-input test stream the soft controller ended 1.3-1.6% under its
#: reachable targets at gain 1, 0.6% at 4, 0.1-0.2% at 8, whose metric was lower; a
#: shorter memory of the deficit is what a higher gain buys.)
PRICE_GAIN = 4.0
#: The price is clipped to this many score ranges per target's worth of bytes (the
#: deficit to ``PRICE_RANGE / PRICE_GAIN`` crossings' worth of inputs: 32 at crossing 16).
PRICE_RANGE = 8.0


class ByteController(BudgetController):
    """Per-input routing whose byte price tracks a budget in bytes (module docstring).

    Args:
      bias: ``float[N]`` the frequencies b the gate was trained for: which experts are
        used (``b_n > 0``) and, with ``data_costs``, the default target.
      data_costs: ``float[N]`` mean bytes per input of each expert (positive; e.g. on the
        calibration set): ``T = b . d`` unless ``target_bytes`` is given.
      target_bytes: T, bytes per input; None: ``b . d``.
      bucket_bytes: hard mode's bucket B in bytes (at least every payload that will be
        sent; a cheapest payload larger than B is refused in :meth:`choose`), or None.
      price_gain, price_range: see the module docstring.
      Other keyword arguments (``step``, ``logit_range``, ``gap_scale``, ``offsets``,
      ``int8_scale``) as :class:`bmoe_tf.budget.BudgetController`.

    Attributes (besides the parent's ``counts``, ``steps``):
      bytes_sent: int, whole bytes sent so far; waits: idle refills so far (hard mode);
      idle_before: ``list[int]`` idle refills before each input (hard mode);
      level: bytes in the bucket (hard mode), else None; target_cost: T.
    """

    def __init__(self, bias, data_costs, *, target_bytes=None, bucket_bytes=None,
                 price_gain=None, price_range=PRICE_RANGE, **kwargs):
        super().__init__(bias, data_costs, **kwargs)
        price_gain = PRICE_GAIN if price_gain is None else price_gain
        for name, value in (("price_gain", price_gain), ("price_range", price_range)):
            if not (np.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        target = float(self.bias @ self.data_costs) if target_bytes is None else float(target_bytes)
        if not (np.isfinite(target) and target > 0):
            raise ValueError(f"target_bytes must be a positive number of bytes, got {target_bytes}")
        self.price_gain, self.price_range = float(price_gain), float(price_range)
        self.refill_q = int(round(target * RESOLUTION))
        self.target_cost = self.refill_q / RESOLUTION
        self.gain_q = max(1, int(round(self.price_gain * RESOLUTION)))
        # |lam| <= price_range * S  <=>  |D_q| <= price_range * S_ticks * T_q / gain_q
        spread_ticks = self.spread * self.ticks
        self.deficit_limit_q = int(np.ceil(self.price_range * spread_ticks * self.refill_q
                                           / self.gain_q))
        self.bucket_bytes = None if bucket_bytes is None else float(bucket_bytes)
        if self.bucket_bytes is not None:
            if not (np.isfinite(self.bucket_bytes) and self.bucket_bytes >= max(1.0, target)):
                raise ValueError(f"bucket_bytes={bucket_bytes} must be at least the target "
                                 f"({target:g} bytes per input)")
            self.bucket_q = int(np.floor(self.bucket_bytes)) * RESOLUTION
        self.reset()

    def reset(self):
        super().reset()
        self.byte_deficit_q = 0  # t T_q - Q bytes(t), clipped
        self.bytes_sent = 0
        self.waits = 0
        self.idle_before = []
        if getattr(self, "bucket_bytes", None) is not None and hasattr(self, "bucket_q"):
            self.level_q = self.bucket_q

    @property
    def byte_deficit(self):
        """Bytes under budget so far, ``t T - bytes(t)`` (clipped; negative: over)."""
        return self.byte_deficit_q / RESOLUTION

    @property
    def price_ticks(self):
        """The current price: ticks per target's worth of bytes (``lam Q / eta``)."""
        return -(self.gain_q * self.byte_deficit_q) // self.refill_q

    @property
    def offsets(self):
        return np.where(self.used, self.initial_ticks / self.ticks, -np.inf)

    @property
    def window_slack(self):
        raise AttributeError("a ByteController's soft mode has no worst-case window bound "
                             "(module docstring); use hard mode (bucket_bytes) for one")

    def integer_tables(self):
        """The integers ``gate_router.c``'s byte mode is generated from (int8 controllers
        only): the parent's tables (``refill_q`` is T in bytes * Q here) and the price's."""
        t = super().integer_tables()
        t.update(byte_mode=True, gain_q=self.gain_q, deficit_limit_q=self.deficit_limit_q,
                 cost_bytes=[0] * len(self.bias))
        return t

    def _payload_costs(self, costs):
        c = np.asarray(costs)
        if c.shape != (len(self.bias),):
            raise ValueError(f"costs must hold the {len(self.bias)} experts' payload bytes of "
                             f"this input, got shape {c.shape}")
        c = c.astype(np.float64)
        if not np.all(np.isfinite(c[self.used])) or np.any(c[self.used] < 0):
            raise ValueError(f"costs must be bytes >= 0 for every used expert, got {c.tolist()}")
        return np.where(self.used, np.ceil(c), 0).astype(np.int64)

    def choose(self, logits_row, costs):
        """Routes one input: ``[N]`` logits (float; int8 for an int8 controller) and its
        ``[N]`` payload sizes in bytes (whole bytes, rounded up); returns the expert."""
        row = self._check_rows(np.asarray(logits_row).reshape(1, -1), "logits_row")
        c = self._payload_costs(costs)
        penalty = (self.price_ticks * c * RESOLUTION) // self.refill_q
        scores = self._row_scores(row)[0] + self.initial_ticks - penalty
        allowed = self.used
        if self.level_q is not None:
            cheapest = int(c[self.used].min())
            if cheapest * RESOLUTION > self.bucket_q:
                raise ValueError(f"the cheapest payload of this input ({cheapest} bytes) is "
                                 f"larger than the bucket ({self.bucket_q // RESOLUTION} bytes): "
                                 "it could never be sent")
            self.level_q = min(self.level_q + self.refill_q, self.bucket_q)
            idle = 0
            while cheapest * RESOLUTION > self.level_q:  # wait for the refill
                self.level_q = min(self.level_q + self.refill_q, self.bucket_q)
                idle += 1
            self.waits += idle
            self.idle_before.append(idle)
            allowed = self.used & (c * RESOLUTION <= self.level_q)
        a = int(np.argmax(np.where(allowed, scores, -np.inf)))
        if self.level_q is not None:
            self.level_q -= int(c[a]) * RESOLUTION
        self._update(a)
        self.bytes_sent += int(c[a])
        d = self.byte_deficit_q + self.refill_q - int(c[a]) * RESOLUTION
        self.byte_deficit_q = int(np.clip(d, -self.deficit_limit_q, self.deficit_limit_q))
        return a

    def route_sequence(self, logits, costs):
        """Routes ``[M, N]`` logits with their ``[M, N]`` payload sizes one row at a time,
        in order; returns ``int64[M]``."""
        x = self._check_rows(logits, "logits")
        c = np.asarray(costs)
        if c.shape != x.shape:
            raise ValueError(f"costs must have the shape of logits {x.shape} (bytes of each "
                             f"input's payload per expert), got {c.shape}")
        return np.array([self.choose(row, cost) for row, cost in zip(x, c)], np.int64)

    def route_frame(self, logits):
        raise ValueError("a ByteController routes one input at a time (choose); per-frame "
                         "enforcement holds frequencies (BudgetController.route_frame)")
