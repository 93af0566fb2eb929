"""Exact t-SNE (van der Maaten & Hinton, 2008) in numpy, for the Fig. 9 layout.

O(M^2) memory and time per iteration: meant for the ~1000 points of a figure,
not for large sets. Deterministic given ``seed``.
"""
import numpy as np

__all__ = ["tsne", "joint_probabilities"]


def _conditional_row(d2, beta):
    p = np.exp(-(d2 - d2.min()) * beta)
    s = p.sum()
    return p / s, np.log(s) - d2.min() * beta + beta * float(np.dot(d2, p / s))


def joint_probabilities(x, perplexity=30.0, tol=1e-5, max_steps=60):
    """``float64[M, M]``: symmetric affinities P of ``x [M, D]`` whose conditional rows
    have the given perplexity (binary search on each row's precision)."""
    x = np.asarray(x, np.float64)
    m = len(x)
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    target = np.log(perplexity)
    p = np.zeros((m, m))
    for i in range(m):  # one binary search per row: M is a figure's points
        row = np.delete(d2[i], i)
        lo, hi, beta = 0.0, np.inf, 1.0 / max(np.median(row), 1e-12)
        for _ in range(max_steps):
            cond, entropy = _conditional_row(row, beta)
            if abs(entropy - target) < tol:
                break
            if entropy > target:
                lo, beta = beta, beta * 2.0 if hi == np.inf else (beta + hi) / 2.0
            else:
                hi, beta = beta, (beta + lo) / 2.0
        p[i, np.arange(m) != i] = cond
    p = (p + p.T) / (2.0 * m)
    return np.maximum(p, 1e-12)


def tsne(x, *, perplexity=30.0, iterations=500, learning_rate=None, seed=0):
    """``float64[M, 2]``: a t-SNE embedding of ``x [M, D]``.

    Early exaggeration (x12) for the first 100 iterations, momentum 0.5 then 0.8,
    gains as in the reference implementation; the learning rate defaults to
    ``max(M / 12, 50)``. Raises ValueError for fewer than 5 points or a perplexity
    not below M.
    """
    x = np.asarray(x, np.float64)
    m = len(x)
    if x.ndim != 2 or m < 5:
        raise ValueError(f"tsne needs [M, D] points with M >= 5, got shape {x.shape}")
    if not 1.0 <= perplexity < m:
        raise ValueError(f"perplexity must be in [1, M={m}), got {perplexity}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    p = joint_probabilities(x, perplexity)
    rate = learning_rate or max(m / 12.0, 50.0)
    y = np.random.default_rng(seed).normal(scale=1e-4, size=(m, 2))
    update = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        sq = np.sum(y * y, axis=1)
        num = sq[:, None] + sq[None, :]
        num -= 2.0 * (y @ y.T)
        num += 1.0
        np.reciprocal(num, out=num)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        w = (exaggeration * p - q) * num
        grad = 4.0 * (w.sum(axis=1)[:, None] * y - w @ y)
        same = np.sign(grad) == np.sign(update)
        gains = np.where(same, gains * 0.8, gains + 0.2).clip(0.01)
        momentum = 0.5 if it < 250 else 0.8
        update = momentum * update - rate * gains * grad
        y = y + update
        y -= y.mean(0)
    return y
