"""The gate's losses: Eq. 4 utility, Eq. 5 bias loss, and the training losses.

Soft bias regularisation (Section III-B): :func:`expert_utility` (Eq. 4) and
:func:`bias_loss` (Eq. 5).

Training losses (what the gate's weights follow, ``BiasedMixture(training_loss=)``),
one pure function each, per example ``[M]``, chosen by name from
:data:`TRAINING_LOSSES`; :data:`TRAINING_LOSS_INPUTS` says what each one needs:

* ``"selected"`` -- :func:`selected_loss`: the task loss of the mixture output
  (Eq. 2) with the selected expert, the paper's loss;
* ``"gated"`` -- :func:`gated_loss`: ``G_a * loss_a`` for the selected expert a
  (the competitive loss of Jacobs et al. 1991);
* ``"expected"`` -- :func:`expected_loss`: ``sum_n softmax_n * loss_n``;
* ``"relative"`` -- :func:`relative_loss`: a regression of centred logits onto the
  centred ``-loss_n``.

Here ``loss_n`` is expert n's own task loss on the example (``expert_losses [M, N]``,
from an expert cache; for a ``"scores"`` cache it is ``-score``).

Under a ``tf.distribute`` strategy with several replicas, the batch statistics are
over the GLOBAL batch: :func:`expert_utility` ``(global_batch=True)`` (all-reduce) and
the scale of :func:`relative_loss` (all-gather); the other losses are per example.
"""
import math

from bmoe_tf.backend import tf
from bmoe_tf.bias import validate_bias
from bmoe_tf.routing import _replica_context

__all__ = ["expert_utility", "bias_loss", "selected_loss", "gated_loss", "expected_loss",
           "relative_loss", "TRAINING_LOSSES", "TRAINING_LOSS_INPUTS"]

# 1 - ||u - b|| / sqrt(2) reaches 0 only when u and b are orthogonal one-hot
# vectors; the log is clipped there so the loss stays finite (decision D5).
_LOG_FLOOR = 1e-7


def expert_utility(gates, global_batch=False):
    """Eq. 4: each expert's total contribution per batch, ``u_n = mean_x G(x)_n``.

    Args:
      gates: ``float[M, N]`` (sparse gates of Eq. 3, or a one-hot selection, in
        which case u is the share of the batch routed to each expert).
      global_batch: in the replica context of a ``tf.distribute`` strategy with
        several replicas, the mean over the GLOBAL batch: ``all_reduce(SUM)`` of
        every replica's ``sum_x G(x)`` over the all-reduced row count, the same u on
        every replica (every replica must call it). Its gradient reaches every
        replica's rows: the gradient of an all-reduce sum is the all-reduce sum of
        the replicas' upstream gradients, so with each replica's loss divided by
        the number of replicas R (as ``BiasedMixture.train_step`` does) and the
        gradients summed over replicas, a loss ``f(u)`` gets exactly the
        single-device gradient of ``f(u)`` on the whole batch (not R times it, nor
        1/R). Elsewhere (no strategy, one replica, cross-replica context) the
        plain mean.
    Returns:
      ``float[N]``.
    """
    gates = tf.convert_to_tensor(gates)
    if gates.shape.rank != 2:
        raise ValueError(f"gates must be [batch, num_experts], got shape {gates.shape}")
    ctx = _replica_context() if global_batch else None
    if ctx is None:
        return tf.reduce_mean(gates, axis=0)
    rows = tf.cast(tf.shape(gates)[0:1], gates.dtype)
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                           tf.concat([tf.reduce_sum(gates, axis=0), rows], axis=0))
    return total[:-1] / tf.stop_gradient(total[-1])


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


# --------------------------------------------------------------------------- #
# Training losses: per example, float[M]
# --------------------------------------------------------------------------- #

def selected_loss(mixture_loss):
    """``"selected"`` (the paper): the task loss of Eq. 2's output, per example.

    Args:
      mixture_loss: ``float[M]``, ``loss(y, sum_n G_n E_n)`` with the sparse /
        enforced gates G (the gradient reaches the gate through G).
    Returns:
      ``float[M]``, the same values.
    """
    return tf.convert_to_tensor(mixture_loss)


def gated_loss(gates, selected_expert_loss):
    """``"gated"``: ``G_a(x) * loss(y, E_a(x))`` for the selected expert a.

    Args:
      gates: ``float[M, N]``, one non-zero per row (the selected expert's gate).
      selected_expert_loss: ``float[M]``, the selected expert's own (unscaled) task
        loss; no gradient flows into it.
    Returns:
      ``float[M]``.
    """
    gates = tf.convert_to_tensor(gates)
    own = tf.stop_gradient(tf.cast(selected_expert_loss, gates.dtype))
    return tf.reduce_sum(gates, axis=1) * own


def expected_loss(logits, expert_losses):
    """``"expected"``: ``sum_n softmax(logits)_n * loss_n``, the loss expected under Eq. 1.

    Args:
      logits: ``float[M, N]``.
      expert_losses: ``float[M, N]``, every expert's task loss on every example.
    Returns:
      ``float[M]``.
    """
    logits = tf.convert_to_tensor(logits)
    probs = tf.nn.softmax(logits, axis=-1)
    return tf.reduce_sum(probs * tf.cast(expert_losses, logits.dtype), axis=1)


def relative_loss(logits, expert_losses, global_batch=True):
    """``"relative"``: per-example ``mean_n (l_n - mean l - t_n)^2``, ``t = -(L - mean L) / s``.

    ``s`` is the batch's median absolute centred loss, at least a tenth of the
    mean one (no gradient), so the targets are in units of a typical loss gap:
    the logits learn which expert does relatively better on each input without
    saturating a softmax.

    Args:
      logits: ``float[M, N]``.
      expert_losses: ``float[M, N]`` (no gradient flows into it).
      global_batch: in the replica context of a ``tf.distribute`` strategy with
        several replicas, ``s`` is taken over the GLOBAL batch (the replicas'
        centred losses are all-gathered; every replica must call it), so every
        replica uses the one ``s`` a single device would.
    Returns:
      ``float[M]``.
    """
    logits = tf.convert_to_tensor(logits)
    per_expert = tf.stop_gradient(tf.cast(expert_losses, logits.dtype))
    centred = per_expert - tf.reduce_mean(per_expert, axis=1, keepdims=True)
    flat = tf.reshape(tf.abs(centred), [-1])
    ctx = _replica_context() if global_batch else None
    if ctx is not None:
        flat = ctx.all_gather(flat, axis=0)
    flat = tf.sort(flat)
    # the median, but never below a tenth of the mean: if most experts agree on
    # most inputs the median gap is ~0 and would blow the targets up
    scale = tf.maximum(flat[tf.size(flat) // 2], 0.1 * tf.reduce_mean(flat) + 1e-12)
    target = -centred / scale
    own = logits - tf.reduce_mean(logits, axis=1, keepdims=True)
    return tf.reduce_mean(tf.square(own - target), axis=1)


#: name -> per-example training loss function (see the module docstring).
TRAINING_LOSSES = {
    "selected": selected_loss,
    "gated": gated_loss,
    "expected": expected_loss,
    "relative": relative_loss,
}

#: name -> what the loss function takes besides what every step has:
#: ``"mixture_loss"`` (Eq. 2's output loss), ``"selected_expert_loss"`` (with the
#: gates) or ``"expert_losses"`` (every expert's loss, with the logits; only an
#: expert cache has them).
TRAINING_LOSS_INPUTS = {
    "selected": "mixture_loss",
    "gated": "selected_expert_loss",
    "expected": "expert_losses",
    "relative": "expert_losses",
}
