"""Exact capacity-constrained assignment (a transportation linear program).

Given per-example scores ``S[M, N]`` and capacities ``K[N]`` with ``sum(K) == M``,
find the assignment ``a[M]`` that maximises ``sum_i S[i, a_i]`` with exactly ``K[n]``
examples on expert ``n``. The constraint matrix is totally unimodular, so a basic
(vertex) solution of the LP relaxation is integral; HiGHS' dual simplex returns one.

This one solver serves both the oracle upper bound
(:func:`bmoe_tf.evaluation.oracle_assignment`) and the streaming offsets
(:func:`bmoe_tf.routing.calibrate_offsets`).
"""
import numpy as np
from scipy import optimize, sparse


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
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be [M, N], got shape {s.shape}")
    m, n = s.shape
    k = np.asarray(capacities)
    if k.shape != (n,):
        raise ValueError(f"capacities must have one entry per expert ({n}), got shape {k.shape}")
    if np.any(k < 0) or int(k.sum()) != m:
        raise ValueError(f"capacities must be >= 0 and sum to M={m}, got {k.tolist()}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    # Shift scores to keep the LP well scaled; the optimum is unchanged.
    c = -(s - s.max()).ravel()
    rows = sparse.kron(sparse.eye(m, format="csr"), np.ones((1, n)), format="csr")
    cols = sparse.kron(np.ones((1, m)), sparse.eye(n, format="csr"), format="csr")
    a_eq = sparse.vstack([rows, cols], format="csr")
    b_eq = np.concatenate([np.ones(m), k.astype(np.float64)])
    res = optimize.linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=(0, 1), method="highs-ds")
    if res.status != 0:  # pragma: no cover - the problem is always feasible and bounded
        raise RuntimeError(f"assignment LP failed: {res.message}")
    x = res.x.reshape(m, n)
    assignment = np.argmax(x, axis=1)
    if not np.array_equal(np.bincount(assignment, minlength=n), k):  # pragma: no cover
        raise RuntimeError("assignment LP returned a fractional solution")
    return assignment.astype(np.int64)
