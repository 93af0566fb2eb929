"""How many of M examples each expert gets under b: ``K_n = floor(M b_n)`` plus the
leftover slots by largest remainder (Algorithm 1's capacities, the oracle's, the static
offsets'). Re-exported by :mod:`bmoe_tf.routing`."""
import numpy as np

from bmoe_tf.backend import tf
from bmoe_tf.bias import validate_bias

__all__ = ["expert_capacities"]

# |M*b_n - round(M*b_n)| below this (relative to M) counts as an exact integer, so that
# e.g. 10 * 0.7 = 7.000000000000001 gives K = 7 and not a spurious fractional part.
_INTEGER_SNAP = 1e-9


def _capacities_tensor(batch_size, bias):
    """Largest-remainder capacities as an ``int32[N]`` tensor (graph-safe)."""
    b = tf.constant(bias, dtype=tf.float64)
    m = tf.cast(batch_size, tf.float64)
    exact = m * b
    rounded = tf.round(exact)
    snap = tf.abs(exact - rounded) <= _INTEGER_SNAP * tf.maximum(m, 1.0)
    exact = tf.where(snap, rounded, exact)
    floors = tf.floor(exact)
    # Fractional parts on a grid of _INTEGER_SNAP, so that parts equal in exact
    # arithmetic but not in floating point (5 * 0.07 -> 0.35000000000000003 vs
    # 5 * 0.27 - 1 -> 0.3500000000000001) tie, and the tie goes to the lower index.
    # Rounding (unlike a tolerance in the comparison) keeps the ranking a total
    # order, so the ranks stay a permutation and sum(K) == M.
    frac = tf.round((exact - floors) / _INTEGER_SNAP)
    leftover = tf.cast(m - tf.reduce_sum(floors), tf.int32)
    # rank_n = #{m: frac_m > frac_n} + #{m < n: frac_m == frac_n}; the `leftover`
    # best-ranked experts get one more slot (ties to the lower index).
    n = len(bias)
    greater = tf.cast(frac[None, :] > frac[:, None], tf.int32)
    lower_tie = tf.cast(frac[None, :] == frac[:, None], tf.int32) * tf.constant(
        np.tril(np.ones((n, n), dtype=np.int32), k=-1))
    rank = tf.reduce_sum(greater + lower_tie, axis=1)
    return tf.cast(floors, tf.int32) + tf.cast(rank < leftover, tf.int32)


def expert_capacities(batch_size, bias):
    """Examples per expert in a batch of M: ``K_n = floor(M b_n)`` plus leftovers.

    The ``M - sum(K)`` leftover slots go one each to the largest fractional parts
    ``M b_n - floor(M b_n)``, ties to the lower expert index, so ``sum(K) == M``
    always.

    Args:
      batch_size: M, a Python int (eager result) or a scalar integer tensor
        (graph-safe result, e.g. a dynamic batch size).
      bias: ``float[N]``, validated by :func:`bmoe_tf.bias.validate_bias`.
    Returns:
      ``int64[N]`` numpy array for a Python int, else an ``int32[N]`` tensor.
    """
    b = validate_bias(bias)
    if isinstance(batch_size, (int, np.integer)):
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        with tf.init_scope():
            return _capacities_tensor(int(batch_size), b).numpy().astype(np.int64)
    return _capacities_tensor(batch_size, b)
