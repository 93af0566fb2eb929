"""Exact capacity-constrained assignment (a transportation problem with N sinks).

Given per-example scores ``S[M, N]`` and capacities ``K[N]`` with ``sum(K) == M``,
find the assignment ``a[M]`` that maximises ``sum_i S[i, a_i]`` with exactly ``K[n]``
examples on expert ``n``.

N is small and M large, so instead of an LP with M*N variables we work on the N
experts: an assignment with the right counts is optimal if and only if no cycle of
single moves between experts (expert p gives its best-suited example to q, q to r,
..., back to p) gains anything. We start close to the optimum (dual offsets from
a few quantile sweeps, counts repaired greedily) and cancel gaining cycles, found
by Bellman-Ford on the N x N graph of best moves, until none is left. Each
cancellation strictly increases the objective, so the loop ends, at the exact
optimum.

This one solver serves both the oracle upper bound
(:func:`bmoe_tf.evaluation.oracle_assignment`) and the streaming offsets
(:func:`bmoe_tf.routing.calibrate_offsets`).
"""
import numpy as np

from bmoe_tf.checks import as_float_array, check_finite

__all__ = ["capacity_assignment"]

_SWEEPS = 30


def _check(scores, capacities):
    s = as_float_array(scores, "scores", rank=2, layout="[M, N]")
    m, n = s.shape
    k = np.asarray(capacities)
    if k.shape != (n,):
        raise ValueError(f"capacities must have one entry per expert ({n}), got shape {k.shape}")
    if np.any(k < 0) or int(k.sum()) != m:
        raise ValueError(f"capacities must be >= 0 and sum to M={m}, got {k.tolist()}")
    check_finite(s, "scores")
    return s, k.astype(np.int64)


def _quantile_offsets(s, k):
    """Offsets o such that argmax(s + o) has counts close to k (coordinate sweeps)."""
    m, n = s.shape
    o = np.zeros(n)
    used = k > 0
    o[~used] = -np.inf
    for _ in range(_SWEEPS):
        for j in np.flatnonzero(used):
            others = np.delete(s + o, j, axis=1)
            margin = s[:, j] - others.max(axis=1)  # j wins i iff o_j > -margin_i
            top = np.sort(margin)[::-1]
            kth = top[k[j] - 1]
            nxt = top[k[j]] if k[j] < m else kth - 1.0
            o[j] = -(kth + nxt) / 2.0
    return o


def _repair_counts(s, a, k):
    """Moves single examples from over- to under-full experts, cheapest first."""
    n = s.shape[1]
    counts = np.bincount(a, minlength=n)
    while np.any(counts != k):
        over = np.flatnonzero(counts > k)
        under = np.flatnonzero(counts < k)
        own = s[np.arange(len(a)), a]
        best = None
        for p in over:
            idx = np.flatnonzero(a == p)
            gains = s[np.ix_(idx, under)] - own[idx, None]
            i, j = np.unravel_index(np.argmax(gains), gains.shape)
            if best is None or gains[i, j] > best[0]:
                best = (gains[i, j], idx[i], under[j])
        _, i, q = best
        counts[a[i]] -= 1
        counts[q] += 1
        a[i] = q
    return a


def _best_moves(s, a, n):
    """gain[p, q] of moving expert p's best example to q, and which example."""
    own = s[np.arange(len(a)), a]
    gain = np.full((n, n), -np.inf)
    which = np.zeros((n, n), np.int64)
    for p in range(n):
        idx = np.flatnonzero(a == p)
        if idx.size == 0:
            continue
        g = s[idx] - own[idx, None]
        j = np.argmax(g, axis=0)
        gain[p] = g[j, np.arange(n)]
        which[p] = idx[j]
    np.fill_diagonal(gain, -np.inf)
    return gain, which


def _gaining_cycle(gain, tol):
    """A cycle of experts whose moves gain more than tol in total, or None."""
    n = gain.shape[0]
    cost = -gain
    dist = np.zeros(n)
    pred = np.full(n, -1)
    last = -1
    for _ in range(n):
        last = -1
        for p in range(n):
            for q in range(n):
                if np.isfinite(cost[p, q]) and dist[p] + cost[p, q] < dist[q] - tol:
                    dist[q] = dist[p] + cost[p, q]
                    pred[q] = p
                    last = q
        if last < 0:
            return None
    node = last
    for _ in range(n):  # step back into the cycle
        node = pred[node]
    cycle, v = [node], pred[node]
    while v != node:
        cycle.append(v)
        v = pred[v]
    cycle.reverse()  # pred edges point backwards: p -> q means pred[q] = p
    total = sum(gain[cycle[i], cycle[(i + 1) % len(cycle)]] for i in range(len(cycle)))
    return cycle if total > tol else None


def capacity_assignment(scores, capacities):
    """Optimal assignment of M examples to N experts under exact capacities.

    Args:
      scores: ``float[M, N]``, higher is better; finite.
      capacities: ``int[N]``, non-negative, summing to M.

    Returns:
      ``int64[M]``, the expert of each example.

    Raises:
      ValueError: on a shape mismatch, non-finite scores, or capacities that are
        negative or do not sum to M.
    """
    s, k = _check(scores, capacities)
    m, n = s.shape
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    s = s - s.max()  # same optimum, better conditioned
    if np.count_nonzero(k) == 1:
        return np.full(m, int(np.argmax(k)), dtype=np.int64)
    a = np.argmax(s + _quantile_offsets(s, k), axis=1)
    a = _repair_counts(s, a, k)
    tol = 1e-12 * max(1.0, float(np.abs(s).max()))
    while True:
        gain, which = _best_moves(s, a, n)
        cycle = _gaining_cycle(gain, tol)
        if cycle is None:
            return a.astype(np.int64)
        movers = [which[cycle[i], cycle[(i + 1) % len(cycle)]] for i in range(len(cycle))]
        for i, mover in enumerate(movers):
            a[mover] = cycle[(i + 1) % len(cycle)]
