"""Metrics and baselines of Section IV-A (pure numpy).

Shapes: ``M`` is the number of examples, ``N`` the number of experts. ``scores``
is ``float[M, N]``: ``scores[i, n]`` is expert n's performance on example i
(higher is better, e.g. accuracy or PSNR); an ``assignment`` is ``int[M]``, the
expert chosen for each example.

* :func:`rho` -- Eq. 11, the area under the performance / normalised-cost curve.
* :func:`random_selection` -- the paper's lower baseline ("Random Selection"):
  random experts with exactly the capacities that b prescribes.
* :func:`oracle_assignment` -- the best possible assignment under the same
  capacities (an upper bound for any gate).
* :func:`assigned_subset_performance` -- each expert on the inputs routed to it
  versus on all inputs (the per-expert tables of Section IV).
* :func:`routed_score`, :func:`oracle_gain_share` -- a mixture's mean score and
  where it sits between the random and oracle bounds.
"""
import numpy as np

from bmoe_tf.assignment import capacity_assignment
from bmoe_tf.bias import validate_bias
from bmoe_tf.checks import (as_float_array, check_count, check_finite,
                             check_index_vector)
from bmoe_tf.routing import expert_capacities

__all__ = [
    "rho", "random_selection", "oracle_assignment", "assigned_subset_performance",
    "routed_score", "oracle_gain_share",
]


def _check_scores(scores, *, allow_empty=False):
    s = as_float_array(scores, "scores", rank=2, layout="[M, N]")
    if s.shape[1] == 0:
        raise ValueError(f"scores must be [M, N] with N >= 1 experts, got shape {s.shape}")
    if s.shape[0] == 0 and not allow_empty:
        raise ValueError("scores has no examples (M = 0); need at least one")
    return check_finite(s, "scores")


def _check_assignment(assignment, m, n):
    return check_index_vector(assignment, "assignment", size=m, bound=n)


def rho(costs, performances):
    """Eq. 11: ``rho = integral_0^1 p(d_min + t (d_max - d_min)) dt``.

    The curve is known at the given points only; it is integrated with the
    trapezoid rule over the cost axis rescaled to ``t in [0, 1]`` by the smallest
    and largest cost *given*, i.e. rho is the mean height of the piecewise-linear
    curve. Points may come in any order (they are sorted by cost).

    Args:
      costs: ``float[K]``, the average data costs ``d_bar`` where performance was
        measured; ``K >= 2``, all distinct, finite.
      performances: ``float[K]``, performance at each cost, finite.

    Returns:
      ``float``.

    Raises:
      ValueError: lengths differ, fewer than 2 points, non-finite values,
        duplicate costs (the curve would be ambiguous there), or not 1-D.
    """
    c = as_float_array(costs, "costs")
    p = as_float_array(performances, "performances")
    if c.ndim != 1 or p.ndim != 1 or c.size != p.size:
        raise ValueError(
            f"costs and performances must be 1-D vectors of equal length, "
            f"got shapes {c.shape} and {p.shape}")
    if c.size < 2:
        raise ValueError(f"rho needs at least 2 points of the curve, got {c.size}")
    check_finite(c, "costs")
    check_finite(p, "performances")
    order = np.argsort(c, kind="stable")
    c, p = c[order], p[order]
    if np.any(np.diff(c) == 0):
        dup = np.unique(c[1:][np.diff(c) == 0])
        raise ValueError(
            f"costs must be distinct (one performance per cost), got duplicates {dup.tolist()}; "
            f"average or drop them first")
    t = (c - c[0]) / (c[-1] - c[0])
    return float(np.trapezoid(p, t))


def random_selection(num_examples, bias, *, seed=None, batch_size=None):
    """The "Random Selection" baseline: random experts meeting b exactly.

    Within each batch the labels ``n`` repeated ``expert_capacities(size, bias)[n]``
    times are shuffled, so every batch meets b as closely as integers allow and
    the choice ignores the input.

    Args:
      num_examples: M, an int ``>= 0``.
      bias: ``float[N]``.
      seed: anything ``np.random.default_rng`` accepts.
      batch_size: None for one batch of M; else consecutive chunks of this size,
        the last (possibly smaller) chunk with its own capacities.

    Returns:
      ``int64[M]``, the expert of each example.
    """
    m = check_count(num_examples, "num_examples", minimum=0)
    b = validate_bias(bias)
    size = m if batch_size is None else check_count(batch_size, "batch_size", minimum=1)
    rng = np.random.default_rng(seed)
    out = np.empty(m, dtype=np.int64)
    labels = {}
    for start in range(0, m, max(size, 1)):
        chunk = min(size, m - start)
        if chunk not in labels:
            labels[chunk] = np.repeat(np.arange(b.size, dtype=np.int64),
                                      expert_capacities(chunk, b))
        out[start:start + chunk] = rng.permutation(labels[chunk])
    return out


def oracle_assignment(scores, bias):
    """The best assignment under b's capacities: an upper bound for any gate.

    Maximises ``sum_i scores[i, a_i]`` with exactly ``expert_capacities(M, bias)``
    examples per expert (exact, via :func:`bmoe_tf.assignment.capacity_assignment`).
    Ties between optimal assignments are broken by the solver.

    Args:
      scores: ``float[M, N]``.
      bias: ``float[N]``.

    Returns:
      ``int64[M]``.
    """
    s = _check_scores(scores, allow_empty=True)
    b = validate_bias(bias, s.shape[1])
    return capacity_assignment(s, expert_capacities(s.shape[0], b))


def assigned_subset_performance(scores, assignment, *, expert_names=None):
    """Each expert's performance on the inputs routed to it versus on all inputs.

    Args:
      scores: ``float[M, N]``.
      assignment: ``int[M]`` in ``[0, N)``.
      expert_names: optional N labels for the ``"expert"`` field.

    Returns:
      A list of N dicts, one per expert n: ``expert`` (name, or n),
      ``count`` (int), ``share`` (count / M), ``assigned`` (mean of
      ``scores[assignment == n, n]``, nan when no input went to n), ``all``
      (mean of ``scores[:, n]``) and ``delta`` (assigned - all, nan if unused).
    """
    s = _check_scores(scores)
    m, n = s.shape
    a = _check_assignment(assignment, m, n)
    if expert_names is not None:
        expert_names = list(expert_names)
        if len(expert_names) != n:
            raise ValueError(
                f"expert_names has {len(expert_names)} entries but there are {n} experts")
    counts = np.bincount(a, minlength=n)
    rows = []
    for e in range(n):
        picked = s[a == e, e]
        assigned = float(picked.mean()) if picked.size else float("nan")
        overall = float(s[:, e].mean())
        rows.append({
            "expert": e if expert_names is None else expert_names[e],
            "count": int(counts[e]),
            "share": float(counts[e]) / m,
            "assigned": assigned,
            "all": overall,
            "delta": assigned - overall,
        })
    return rows


def routed_score(scores, assignment):
    """Mean of ``scores[i, assignment[i]]`` over the M examples: a ``float``."""
    s = _check_scores(scores)
    a = _check_assignment(assignment, s.shape[0], s.shape[1])
    return float(s[np.arange(s.shape[0]), a].mean())


def oracle_gain_share(method, random, oracle):
    """Where a method sits between the bounds: ``(method - random) / (oracle - random)``.

    0 is random selection, 1 is the oracle. Not clipped: a method below random
    gives a negative share.

    Raises:
      ValueError: a non-finite value, or ``oracle <= random`` (no gain to share).
    """
    values = [float(v) for v in (method, random, oracle)]
    if not all(np.isfinite(values)):
        raise ValueError(f"method, random and oracle must be finite, got {values}")
    method, random, oracle = values
    if oracle <= random:
        raise ValueError(
            f"oracle ({oracle!r}) must be above random ({random!r}); "
            f"there is no gain to share")
    return (method - random) / (oracle - random)
