"""Choices under a budget in bytes, when every input has its own cost per expert.

With encoded payloads (:mod:`bmoe_tf.payload`) routing input ``i`` to expert ``n`` costs
``c[i, n]`` bytes, so a budget fixes the bytes, not how often each expert is used. Both
questions this raises are the same multiple-choice knapsack, maximise
``sum_i v[i, a_i]`` subject to ``sum_i c[i, a_i] <= B``, and one mechanism answers them:
the Lagrangian price ``lam >= 0`` of a byte, each input taking
``argmax_n v[i, n] - lam c[i, n]`` (:func:`priced_choice`), ``lam`` the smallest price whose
choices fit the budget (:func:`fit_budget`).

* The oracle (:func:`budget_oracle`): ``v`` the per-input scores, ``B`` the split's
  bytes at the target. The priced choice is optimal for its own bytes; the rows that
  change between the two prices around the budget are then added greedily, and the
  Lagrangian dual ``sum_i max_n (v[i, n] - lam c[i, n]) + lam B`` bounds every
  assignment within ``B``: the result carries that bound and its gap.
* The byte-aware assignment (:func:`byte_aware_assignment`): ``v`` a gate's logits, one
  budget per batch of ``batch_size`` inputs (``batch bytes <= batch_size x target``,
  spent as fully as the choices allow: the price may be negative), as Algorithm 1
  enforces b per batch; a batch whose cheapest choices already exceed its budget takes
  them (and is flagged).

Shapes: ``M`` inputs, ``N`` experts; values and costs ``float[M, N]``; choices ``int64[M]``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from bmoe_tf.checks import as_float_array, check_finite

__all__ = ["priced_choice", "fit_budget", "BudgetOracle", "budget_oracle",
           "byte_aware_assignment", "byte_aware_mask", "ByteRouting"]

_ITERATIONS = 64


def _check(values, costs):
    v = as_float_array(values, "values", rank=2, layout="[M, N]")
    c = as_float_array(costs, "costs", rank=2, layout="[M, N]")
    if v.shape != c.shape:
        raise ValueError(f"values {v.shape} and costs {c.shape} must have the same shape [M, N]")
    check_finite(v, "values")
    check_finite(c, "costs")
    if np.any(c < 0):
        raise ValueError("costs must be >= 0 (bytes)")
    return v, c


def priced_choice(values, costs, price):
    """``int64[M]``: each input's ``argmax_n values - price x costs``; a tie goes to the
    cheaper expert (then the lower index)."""
    v, c = np.asarray(values, np.float64), np.asarray(costs, np.float64)
    if v.shape[0] == 0:
        return np.zeros(0, np.int64)
    net = v - price * c
    best = net.max(axis=1, keepdims=True)
    tied = np.isclose(net, best, rtol=0, atol=1e-12 * max(1.0, float(np.abs(best).max())))
    return np.argmin(np.where(tied, c, np.inf), axis=1).astype(np.int64)


def _spent(costs, choice):
    return float(costs[np.arange(len(choice)), choice].sum())


def fit_budget(values, costs, budget, *, spend=False):
    """The smallest price whose choices fit ``budget`` bytes (in all).

    Args:
      spend: the price may be negative (a bonus per byte): the choices then spend as much
        of the budget as they can, as Algorithm 1 fills every capacity, instead of
        stopping at the values' own choices (price 0) when those already fit.

    Returns:
      ``(price, choice, low_choice)``: the price, its :func:`priced_choice` (within the
      budget whenever the cheapest choice of every input is), and the choice at a price
      just below it (over the budget; equal to ``choice`` when no lower price exists).
    """
    v, c = _check(values, costs)
    budget = float(budget)
    free = priced_choice(v, c, 0.0)
    if len(v) == 0:
        return 0.0, free, free
    if _spent(c, free) <= budget:
        if not spend:
            return 0.0, free, free
        return _spend_budget(v, c, budget, free)
    # above ``high`` every input takes (one of) its cheapest expert(s)
    cheap = c.min(axis=1, keepdims=True)
    dearer = c > cheap + 1e-12
    gain = v - np.max(np.where(~dearer, v, -np.inf), axis=1, keepdims=True)
    ratios = np.where(dearer, gain / np.where(dearer, c - cheap, 1.0), 0.0)
    high = max(float(ratios.max()), 0.0) * 2.0 + 1e-12
    low = 0.0
    for _ in range(_ITERATIONS):
        mid = 0.5 * (low + high)
        if _spent(c, priced_choice(v, c, mid)) <= budget:
            high = mid
        else:
            low = mid
    return high, priced_choice(v, c, high), priced_choice(v, c, low)


def _spend_budget(v, c, budget, free):
    """:func:`fit_budget` with ``spend``: the lowest price in ``[-H, 0]`` whose choices
    fit, H so large that every input takes (one of) its dearest expert(s)."""
    gaps = np.diff(np.sort(c, axis=1), axis=1)
    step = float(gaps[gaps > 1e-12].min()) if np.any(gaps > 1e-12) else 1.0
    high = 2.0 * float(v.max() - v.min()) / step + 1e-12
    dearest = priced_choice(v, c, -high)
    if _spent(c, dearest) <= budget:
        return -high, dearest, dearest
    low, top = -high, 0.0  # spent(low) > budget >= spent(top)
    for _ in range(_ITERATIONS):
        mid = 0.5 * (low + top)
        if _spent(c, priced_choice(v, c, mid)) <= budget:
            top = mid
        else:
            low = mid
    return top, priced_choice(v, c, top), priced_choice(v, c, low)


def _fill(v, c, a, below, budget):
    """``a`` with the rows whose choice differs in ``below`` (a dearer routing) moved to
    it, best value per extra byte first, while the bytes stay within ``budget``."""
    a = a.copy()
    spent = _spent(c, a)
    changed = np.flatnonzero(below != a)
    extra = c[changed, below[changed]] - c[changed, a[changed]]
    gain = v[changed, below[changed]] - v[changed, a[changed]]
    for k in np.argsort(-gain / np.maximum(extra, 1e-12), kind="stable"):
        if extra[k] > 0 and spent + extra[k] <= budget + 1e-9:
            a[changed[k]] = below[changed[k]]
            spent += extra[k]
    return a


def _top_up(v, c, a, budget):
    """``a`` with single-input moves to a dearer expert while the bytes fit ``budget``,
    the largest value gain per extra byte first (the budget left after the price's choices
    is smaller than the price's switch, not than every move: with payloads of kilobytes a
    batch would otherwise stop a whole switch short)."""
    a = a.copy()
    rows = np.arange(len(a))
    left = budget - _spent(c, a)
    while True:
        extra = c - c[rows, a][:, None]
        ok = (extra > 1e-12) & (extra <= left + 1e-9)
        if not ok.any():
            return a
        rate = np.where(ok, (v - v[rows, a][:, None]) / np.where(ok, extra, 1.0), -np.inf)
        i, n = np.unravel_index(int(np.argmax(rate)), rate.shape)
        left -= extra[i, n]
        a[i] = n


@dataclasses.dataclass(frozen=True)
class BudgetOracle:
    """The oracle under a byte budget.

    Attributes:
      assignment: ``int64[M]`` within the budget (when any assignment is).
      value: ``sum_i values[i, a_i]`` of it.
      bytes: its bytes in all.
      bound: the Lagrangian upper bound on the value of every assignment within the budget.
      gap: ``bound - value`` (>= 0; 0 means optimal).
      price: the price of a byte it was found at.
    """

    assignment: np.ndarray
    value: float
    bytes: float
    bound: float
    gap: float
    price: float


def budget_oracle(values, costs, budget) -> BudgetOracle:
    """The best assignment of at most ``budget`` bytes in all (a multiple-choice knapsack),
    with a bound on the optimum (module docstring)."""
    v, c = _check(values, costs)
    budget = float(budget)
    cheapest = float(c.min(axis=1).sum())
    if not np.isfinite(budget) or budget < cheapest - 1e-9:
        raise ValueError(f"a budget of {budget:.6g} B is below the {cheapest:.6g} B of the "
                         "cheapest choice of every input: no assignment fits it")
    price, a, below = fit_budget(v, c, budget)
    rows = np.arange(len(a))
    # the rows whose choice changes at the price: best value per extra byte first
    gain = v[rows, below] - v[rows, a]
    a = _fill(v, c, a, np.where(gain > 0, below, a), budget)
    spent = _spent(c, a)
    value = float(v[rows, a].sum())
    bound = float((v - price * c).max(axis=1).sum() + price * budget) if len(v) else 0.0
    return BudgetOracle(a, value, spent, max(bound, value), max(bound - value, 0.0), price)


@dataclasses.dataclass(frozen=True)
class ByteRouting:
    """What :func:`byte_aware_assignment` chose.

    Attributes:
      assignment: ``int64[M]``.
      prices: ``float[num_batches]`` the price of a byte in each batch.
      over: ``bool[num_batches]`` batches whose cheapest choices exceed their budget.
    """

    assignment: np.ndarray
    prices: np.ndarray
    over: np.ndarray


def byte_aware_assignment(logits, costs, target, batch_size) -> ByteRouting:
    """Per batch of ``batch_size`` consecutive inputs (the last may be smaller): the
    choices of ``argmax_n logits - lam c`` with the smallest price ``lam`` (negative where
    the gate's own choices spend less: a bonus per byte) that keeps the batch's bytes
    within ``len(batch) x target``, then the inputs whose choice changes just below that
    price moved to it, largest logit gain per byte first, while the batch stays within its
    budget. So a batch spends its budget as Algorithm 1 fills its capacities: its bytes
    are within one input's switch of ``len(batch) x target`` unless even every input's
    dearest expert costs less.

    Args:
      logits: ``float[M, N]`` the gate's logits (any monotone score per expert).
      costs: ``float[M, N]`` bytes of each input's payload per expert.
      target: mean bytes per input.
      batch_size: inputs per budget.
    """
    v, c = _check(logits, costs)
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    target = float(target)
    if not np.isfinite(target) or target < 0:
        raise ValueError(f"target must be a finite number of bytes >= 0, got {target!r}")
    out = np.zeros(len(v), np.int64)
    prices, over = [], []
    for start in range(0, len(v), batch_size):
        part = slice(start, start + batch_size)
        budget = target * len(v[part])
        price, choice, below = fit_budget(v[part], c[part], budget, spend=True)
        choice = _fill(v[part], c[part], choice, below, budget)
        choice = _top_up(v[part], c[part], choice, budget)
        out[part] = choice
        prices.append(price)
        over.append(_spent(c[part], choice) > target * len(v[part]) * (1 + 1e-12))
    return ByteRouting(out, np.array(prices, np.float64), np.array(over, bool))


def byte_aware_mask(logits, costs, target):
    """The byte-aware assignment of ONE batch as a TensorFlow op, for training a gate
    (:class:`bmoe_tf.BiasedMixture` ``method="enforce_bytes"``): ``float32[M, N]`` one-hot,
    the choices of :func:`byte_aware_assignment` ``(logits, costs, target, batch_size=M)``,
    so the batch's bytes stay within ``M x target`` (unless its cheapest choices exceed
    it). The same numpy code as at inference, through ``tf.numpy_function``: it runs in
    graph mode (``tf.function``, Keras ``fit``) but not under XLA, and under a
    ``tf.distribute`` strategy each replica's rows hold their own budget.

    Args:
      logits: ``float[M, N]`` tensor (no gradient flows through the choice).
      costs: ``float[M, N]`` tensor, each input's payload bytes per expert.
      target: mean bytes per input (a Python number).
    """
    from bmoe_tf.backend import tf

    target = float(target)
    if not np.isfinite(target) or target < 0:
        raise ValueError(f"target must be a finite number of bytes >= 0, got {target!r}")
    logits = tf.convert_to_tensor(logits)
    costs = tf.cast(tf.convert_to_tensor(costs), tf.float64)

    def choose(v, c):
        if len(v) == 0:
            return np.zeros(0, np.int64)
        return byte_aware_assignment(v, c, target, len(v)).assignment

    picks = tf.numpy_function(choose, [tf.cast(logits, tf.float64), costs], tf.int64,
                              stateful=False)
    picks.set_shape(logits.shape[:1])
    return tf.one_hot(picks, tf.shape(logits)[-1], dtype=tf.float32)
