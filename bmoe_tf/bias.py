"""The bias vector b (Section III-A) and how to choose it (Section III-D, Eqs. 6-10).

``b[n]`` is the share of inputs sent to expert ``n``: ``0 <= b[n] <= 1`` and
``sum(b) == 1``. Every public function of the package that takes a bias passes it
through :func:`validate_bias`, so a bad vector fails loudly, the same way, wherever
it enters. Nothing is silently renormalised.

Choosing b (Section III-D) is a small linear program over the simplex
``{b : sum(b) = 1, 0 <= b <= 1}``, solved with HiGHS (``scipy.optimize.linprog``):

* :func:`select_bias` with ``target_cost=d_t`` -- the primal, Eqs. 6-8:
  maximise ``b.p`` subject to ``b.d = d_t``;
* :func:`select_bias` with ``target_performance=p_t`` -- the dual, Eqs. 7, 9-10:
  minimise ``b.d`` subject to ``b.p = p_t``.

The optimal value of the primal, as a function of ``d_t``, is the upper concave
hull of the points ``(d_n, p_n)`` (:func:`upper_hull`): the "benchmark experts"
curve of Section IV-A, with mixtures of two neighbouring hull experts in between.
"""
import numpy as np
from scipy import optimize

from bmoe_tf.checks import check_vector

#: Largest ``|sum(b) - 1|`` accepted (the issue's contract).
BIAS_SUM_TOLERANCE = 1e-6


def validate_bias(bias, num_experts=None, *, name="bias"):
    """Checks a bias vector and returns it as ``float64[N]``.

    Args:
      bias: sequence of N frequencies.
      num_experts: expected N, or None to accept any N >= 1.
      name: how to call the argument in error messages.

    Raises:
      ValueError: not 1-D, wrong length, a non-finite or negative entry, an entry
        above 1, or a sum off 1 by more than ``BIAS_SUM_TOLERANCE``.
    """
    b = check_vector(bias, name, size=num_experts, hint="; give one frequency per expert")
    if np.any(b < 0) or np.any(b > 1):
        raise ValueError(
            f"{name} entries must lie in [0, 1] (they are frequencies of use), got {b.tolist()}")
    total = float(b.sum())
    if abs(total - 1.0) > BIAS_SUM_TOLERANCE:
        raise ValueError(
            f"{name} must sum to 1 (within {BIAS_SUM_TOLERANCE:g}), got sum {total!r} for "
            f"{b.tolist()}; it is not renormalised for you")
    return b


#: Relative slack accepted on a target just outside the feasible interval (it is
#: then clipped onto the interval), to absorb float noise such as ``d_max / 1``.
TARGET_TOLERANCE = 1e-9


def _check_experts(data_costs, performances):
    """Validates the expert data costs ``d[N]`` and performances ``p[N]``."""
    arrays = [check_vector(values, name)
              for name, values in (("data_costs", data_costs), ("performances", performances))]
    d, p = arrays
    if d.size != p.size:
        raise ValueError(
            f"data_costs has {d.size} entries but performances has {p.size}; "
            f"give one data cost and one performance per expert")
    if np.any(d <= 0):
        raise ValueError(
            f"data_costs must be > 0 (the amount of data each expert ingests), got {d.tolist()}")
    return d, p


def _check_target(target, values, name, what):
    """Returns ``target`` as a float clipped onto ``[min(values), max(values)]``."""
    try:
        t = float(target)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number, got {target!r}") from err
    if not np.isfinite(t):
        raise ValueError(f"{name} must be finite, got {t!r}")
    lo, hi = float(values.min()), float(values.max())
    slack = TARGET_TOLERANCE * max(abs(lo), abs(hi))
    if t < lo - slack or t > hi + slack:
        raise ValueError(
            f"{name} {t!r} is outside the feasible interval [{lo!r}, {hi!r}] "
            f"(the smallest and largest expert {what}); no mixture of the experts can reach it")
    return min(max(t, lo), hi)


def _polish(b, constraint, target):
    """Re-solves the LP vertex exactly on its support (at most two experts).

    A basic solution of a two-equality LP over the box has at most two fractional
    entries; solving ``b_i + b_j = 1, b_i c_i + b_j c_j = target`` in closed form
    removes the solver's ~1e-9 feasibility error. Anything else is left as is.
    """
    support = np.flatnonzero(b > 1e-12)
    if support.size == 1:
        i = support[0]
        if abs(constraint[i] - target) <= 1e-7 * max(abs(target), 1.0):
            out = np.zeros_like(b)
            out[i] = 1.0
            return out
    elif support.size == 2:
        i, j = support
        if constraint[i] != constraint[j]:
            bi = (constraint[j] - target) / (constraint[j] - constraint[i])
            if -1e-7 <= bi <= 1 + 1e-7:
                bi = min(max(bi, 0.0), 1.0)
                out = np.zeros_like(b)
                out[i], out[j] = bi, 1.0 - bi
                return out
    return b


def _normalise(values):
    """Affine rescaling to [0, 1] (identity shift when all values are equal)."""
    lo, hi = values.min(), values.max()
    return (values - lo) / (hi - lo) if hi > lo else values - lo


def select_bias(data_costs, performances, *, target_cost=None, target_performance=None):
    """Bias vector for a target data cost (Eqs. 6-8) or a target performance (Eqs. 7, 9-10).

    Primal (``target_cost=d_t``): maximise ``b.p`` subject to ``b.d = d_t``,
    ``sum(b) = 1``, ``0 <= b <= 1``. Dual (``target_performance=p_t``): minimise
    ``b.d`` subject to ``b.p = p_t`` and the same simplex constraints. Both are
    solved with ``scipy.optimize.linprog(method="highs")`` on affinely rescaled
    costs and performances (same optimum, better conditioned), then the vertex is
    re-solved in closed form on its (at most two-expert) support.

    The primal optimum lies on the upper concave hull of the points ``(d_n, p_n)``
    (:func:`upper_hull`): at most two experts, neighbours on the hull, are mixed;
    an expert below the chord of its neighbours gets ``b_n = 0``. When experts tie
    (equal costs, or performances collinear on the hull) the optimal *value* is
    unique but the vector need not be; HiGHS returns one optimal vertex.

    The dual's constraint is an equality, as Eq. 9: a ``p_t`` below the
    cheapest expert's performance is met exactly, by mixing in a worse expert.

    Args:
      data_costs: ``float[N]``, ``d_n > 0``, the per-input data cost of each expert.
      performances: ``float[N]``, ``p_n`` (higher is better), any finite values.
      target_cost: ``d_t`` in ``[min(d), max(d)]``; exclusive with ``target_performance``.
      target_performance: ``p_t`` in ``[min(p), max(p)]``.

    Returns:
      ``float64[N]`` that passes :func:`validate_bias`: tiny negatives are clipped
      to 0, and when the LP's sum is off 1 by float noise (``|sum - 1| < 1e-9``)
      the vector is divided by its sum, which only changes the last digits.

    Raises:
      ValueError: not exactly one target; ``data_costs``/``performances`` not
        non-empty 1-D vectors of equal length, non-finite, or a cost ``<= 0``; a
        target outside the feasible interval (relative slack ``1e-9``, then clipped).
    """
    if (target_cost is None) == (target_performance is None):
        raise ValueError(
            "give exactly one of target_cost (the primal, Eqs. 6-8) or target_performance "
            "(the dual, Eqs. 7, 9-10)")
    d, p = _check_experts(data_costs, performances)
    n = d.size
    if target_cost is not None:
        target = _check_target(target_cost, d, "target_cost", "data cost")
        constraint, objective = d, -p          # maximise b.p
    else:
        target = _check_target(target_performance, p, "target_performance", "performance")
        constraint, objective = p, d           # minimise b.d
    lo, hi = constraint.min(), constraint.max()
    scaled_constraint = _normalise(constraint)
    scaled_target = (target - lo) / (hi - lo) if hi > lo else 0.0
    res = optimize.linprog(
        _normalise(objective),
        A_eq=np.stack([scaled_constraint, np.ones(n)]),
        b_eq=[scaled_target, 1.0],
        bounds=(0, 1), method="highs")
    if res.status != 0:  # pragma: no cover - a target inside the interval is always feasible
        raise RuntimeError(f"bias selection LP failed: {res.message}")
    b = _polish(np.asarray(res.x, dtype=np.float64), constraint, target)
    b = np.clip(b, 0.0, 1.0)
    total = b.sum()
    if abs(total - 1.0) < 1e-9:
        b = b / total
    return validate_bias(b, n, name="selected bias")


def upper_hull(data_costs, performances):
    """The upper concave hull of the points ``(d_n, p_n)``: the "benchmark experts" curve.

    The value of the primal LP of :func:`select_bias` at ``d_t`` equals
    ``np.interp(d_t, *upper_hull(d, p))``. Points strictly below the hull, points
    on a hull edge (collinear), and all but the best of equal-cost points are
    dropped. The hull spans the whole cost range, so it may go down after the
    best expert.

    Args:
      data_costs: ``float[N]``, ``> 0``.
      performances: ``float[N]``.

    Returns:
      ``(costs[K], perfs[K])``, ``float64``, costs strictly increasing, the slopes
      between consecutive vertices strictly decreasing; ``1 <= K <= N``.
    """
    d, p = _check_experts(data_costs, performances)
    order = np.lexsort((-p, d))               # by cost, best performance first on ties
    d, p = d[order], p[order]
    keep = np.concatenate([[True], d[1:] != d[:-1]])
    d, p = d[keep], p[keep]
    hull = []
    for i in range(d.size):
        while len(hull) >= 2:
            j, k = hull[-2], hull[-1]
            # drop k unless it lies strictly above the chord from j to i
            cross = (d[k] - d[j]) * (p[i] - p[j]) - (p[k] - p[j]) * (d[i] - d[j])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return d[hull].copy(), p[hull].copy()
