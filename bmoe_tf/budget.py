"""Online budget control: per-input routing that holds b (and a byte budget) on any
input sequence, for a sensor that routes one input at a time.

:class:`BudgetController` routes ``argmax(clip(logits) + offsets)`` and updates the
offsets from its own choices (a dual / stochastic-approximation step towards b),
so no calibration set is needed and a scene the gate never saw cannot push the
frequencies away from b for long. Exported as ``bmoe_tf.routing.BudgetController``.

Guarantees (proved in the class docstring, tested with adversarial sequences in
``tests/test_budget.py``), for ANY sequence of finite logits, in soft mode:

* deficits ``D_n(t) = t b_n - c_n(t)`` (c_n: times expert n was chosen in the first
  t inputs) stay in ``[-(R/eta + 1), (N_u - 1)(R/eta + 1)]``, where R is the
  ``logit_range`` the logits are clipped to, eta the ``step`` and N_u the number of
  experts with ``b_n > 0``; so the frequencies ``c_n(t) / t`` converge to b at rate
  O(1/t), and an expert with ``b_n = 0`` is never chosen;
* the bytes sent over any window of W consecutive inputs are at most
  ``W d_t + N_u (R/eta + 1) sum_n (d_n - d_min)`` (``window_slack``), with
  ``d_t = b . d``;
* hard mode (``bucket_bytes=B``): a leaky bucket of B bytes refilled by d_t per input
  never goes negative, i.e. the bytes sent over any window of W inputs never exceed
  ``W d_t + B``; when the chosen expert does not fit, the best affordable one (by
  ``logits + offsets``) is taken.
"""
import numpy as np

from bmoe_tf.bias import validate_bias
from bmoe_tf.checks import as_float_array, check_finite, check_vector

__all__ = ["BudgetController"]


class BudgetController:
    """Per-input routing whose offsets track b online (see the module docstring).

    Args:
      bias: ``float[N]``, the frequencies b.
      data_costs: ``float[N]``, d_n in bytes per input (positive).
      bucket_bytes: hard mode: the leaky bucket's size B in bytes (at least the largest
        d_n of a used expert); None: soft mode only (frequencies and windows as above).
      step: eta, the offsets' step per input (larger: faster reaction to a scene change,
        wider windows); positive.
      logit_range: R, each row's logits are clipped to ``[max - R, max]`` before routing
        (bounds the worst case; a gate whose logits differ by more than R between
        experts is as decided as it can be).

    Proof sketch of the deficit bounds: each step adds ``eta (b - e_a)`` to the offsets,
    so ``o(t) = o(0) + eta D(t)`` and ``sum_n D_n = 0``. Expert n can be chosen only if
    ``o_n >= o_m - R`` for every m, i.e. ``D_n >= max_m D_m - R/eta >= -R/eta`` (the
    largest deficit is >= 0); a choice lowers D_n by at most 1, so ``D_n >= -(R/eta +
    1)`` always, and with ``sum D = 0`` the largest is at most ``(N_u - 1)(R/eta + 1)``.
    The window bound follows from ``cost(t) - t d_t = -sum_n (d_n - d_min) D_n(t)``.

    Attributes:
      offsets: ``float64[N]`` current offsets (``-inf`` for ``b_n = 0``).
      counts: ``int64[N]`` choices so far; ``steps``: inputs routed so far.
      level: bytes in the bucket (hard mode), starts full at B.
    """

    def __init__(self, bias, data_costs, *, bucket_bytes=None, step=0.05, logit_range=8.0):
        self.bias = validate_bias(bias, name="bias")
        n = len(self.bias)
        self.data_costs = check_vector(data_costs, "data_costs", size=n)
        if np.any(self.data_costs <= 0):
            raise ValueError(f"data_costs must be positive bytes, got {self.data_costs.tolist()}")
        self.step = float(step)
        self.logit_range = float(logit_range)
        if not (np.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step must be a positive number, got {step}")
        if not (np.isfinite(self.logit_range) and self.logit_range > 0):
            raise ValueError(f"logit_range must be a positive number, got {logit_range}")
        self.used = self.bias > 0
        self.target_cost = float(self.bias @ self.data_costs)
        self.bucket_bytes = None if bucket_bytes is None else float(bucket_bytes)
        if self.bucket_bytes is not None:
            largest = float(self.data_costs[self.used].max())
            if not np.isfinite(self.bucket_bytes) or self.bucket_bytes < largest:
                raise ValueError(f"bucket_bytes={bucket_bytes} is smaller than the largest data "
                                 f"cost of a used expert ({largest:g} bytes): that expert could "
                                 "never be sent")
        self.reset()

    def reset(self):
        """Back to the initial state (zero offsets, empty counts, a full bucket)."""
        self.offsets = np.where(self.used, 0.0, -np.inf)
        self.counts = np.zeros(len(self.bias), np.int64)
        self.steps = 0
        self.level = self.bucket_bytes

    @property
    def window_slack(self):
        """Bytes by which any window may exceed ``W d_t`` in soft mode (module docstring)."""
        d = self.data_costs[self.used]
        return float(self.used.sum() * (self.logit_range / self.step + 1.0)
                     * np.sum(d - d.min()))

    def _scores(self, logits_row):
        row = np.asarray(logits_row, np.float64).reshape(-1)
        if row.shape != self.bias.shape:
            raise ValueError(f"logits_row must hold {len(self.bias)} logits, got {row.shape}")
        check_finite(row, "logits_row")
        row = np.maximum(row, row[self.used].max() - self.logit_range)
        return row + self.offsets

    def choose(self, logits_row):
        """Routes one input (``float[N]`` logits); updates the state; returns the expert."""
        scores = self._scores(logits_row)
        if self.level is not None:
            self.level = min(self.level + self.target_cost, self.bucket_bytes)
            affordable = self.used & (self.data_costs <= self.level + 1e-9)
            if not affordable.any():  # cannot happen: d_min <= d_t <= level (kept for safety)
                affordable = self.used & (self.data_costs == self.data_costs[self.used].min())
            scores = np.where(affordable, scores, -np.inf)
        a = int(np.argmax(scores))
        if self.level is not None:
            self.level -= float(self.data_costs[a])
        self.offsets[self.used] += self.step * self.bias[self.used]
        self.offsets[a] -= self.step
        self.counts[a] += 1
        self.steps += 1
        return a

    def route_sequence(self, logits):
        """Routes ``float[M, N]`` logits one row at a time, in order; returns ``int64[M]``."""
        x = as_float_array(logits, "logits", rank=2, layout="[M, N]")
        check_finite(x, "logits")
        return np.array([self.choose(row) for row in x], np.int64)
