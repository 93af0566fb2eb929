"""Soft bias regularisation (Section III-B): Eq. 4 utility and Eq. 5 bias loss."""
import math

from bmoe_tf.backend import tf
from bmoe_tf.bias import validate_bias

__all__ = ["expert_utility", "bias_loss"]

# 1 - ||u - b|| / sqrt(2) reaches 0 only when u and b are orthogonal one-hot
# vectors; the log is clipped there so the loss stays finite (decision D5).
_LOG_FLOOR = 1e-7


def expert_utility(gates):
    """Eq. 4: each expert's total contribution per batch, ``u_n = mean_x G(x)_n``.

    Args:
      gates: ``float[M, N]`` (sparse gates of Eq. 3, or a one-hot selection, in
        which case u is the share of the batch routed to each expert).
    Returns:
      ``float[N]``.
    """
    gates = tf.convert_to_tensor(gates)
    if gates.shape.rank != 2:
        raise ValueError(f"gates must be [batch, num_experts], got shape {gates.shape}")
    return tf.reduce_mean(gates, axis=0)


def bias_loss(utility, bias, weight):
    """Eq. 5: ``-w_bias * log(1 - ||u - b||_2 / sqrt(2))``.

    Args:
      utility: ``float[N]`` from :func:`expert_utility`.
      bias: ``float[N]``, validated.
      weight: ``w_bias >= 0``.
    Returns:
      scalar, 0 when ``u == b``.
    """
    utility = tf.convert_to_tensor(utility)
    if utility.shape.rank != 1:
        raise ValueError(f"utility must be [num_experts], got shape {utility.shape}")
    b = validate_bias(bias, utility.shape[0])
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"bias weight must be a finite number >= 0, got {weight}")
    squared = tf.reduce_sum(tf.square(utility - tf.constant(b, dtype=utility.dtype)))
    # sqrt with a zero gradient at u == b instead of NaN.
    positive = squared > 0
    distance = tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)
    inside = tf.maximum(1.0 - distance / math.sqrt(2.0), _LOG_FLOOR)
    return -weight * tf.math.log(inside)
