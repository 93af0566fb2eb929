"""The bias vector b (Section III-A) and how to choose it (Section III-D, Eqs. 6-10).

``b[n]`` is the share of inputs sent to expert ``n``: ``0 <= b[n] <= 1`` and
``sum(b) == 1``. Every public function of the package that takes a bias passes it
through :func:`validate_bias`, so a bad vector fails loudly, the same way, wherever
it enters. Nothing is silently renormalised.
"""
import numpy as np

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
    try:
        b = np.asarray(bias, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got {bias!r}") from err
    if b.ndim != 1 or b.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {b.shape}")
    if num_experts is not None and b.size != num_experts:
        raise ValueError(
            f"{name} has {b.size} entries but there are {num_experts} experts; "
            f"give one frequency per expert")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} has a non-finite entry: {b.tolist()}")
    if np.any(b < 0) or np.any(b > 1):
        raise ValueError(
            f"{name} entries must lie in [0, 1] (they are frequencies of use), got {b.tolist()}")
    total = float(b.sum())
    if abs(total - 1.0) > BIAS_SUM_TOLERANCE:
        raise ValueError(
            f"{name} must sum to 1 (within {BIAS_SUM_TOLERANCE:g}), got sum {total!r} for "
            f"{b.tolist()}; it is not renormalised for you")
    return b
