"""Static per-input routing for a sensor: offsets added to the logits so that
``argmax(logits + offsets)`` reproduces the frequencies b (:func:`calibrate_offsets`) and
that routing (:func:`route`). Re-exported by :mod:`bmoe_tf.routing`; the online
controller (:mod:`bmoe_tf.budget`) starts from these offsets."""
import numpy as np
from scipy import optimize

from bmoe_tf.assignment import capacity_assignment
from bmoe_tf.backend import tf
from bmoe_tf.bias import validate_bias
from bmoe_tf.capacities import expert_capacities
from bmoe_tf.checks import as_float_array, check_finite, check_finite_tensor

__all__ = ["calibrate_offsets", "route"]


def calibrate_offsets(logits, bias):
    """Per-expert offsets so that ``argmax(logits + offsets)`` has frequencies b.

    The offsets are the dual variables of the capacity-constrained assignment on
    the calibration set: first the exact optimal assignment with
    ``expert_capacities(M, bias)`` examples per expert
    (:func:`bmoe_tf.assignment.capacity_assignment`), then, among the offsets
    that reproduce it, the ones with the largest margin to the nearest decision
    boundary (a small LP), so that held-out inputs from the same distribution
    land on either side as often as the calibration set did. An expert with
    ``b_n = 0`` gets an offset below every logit range, so it is never chosen.

    Args:
      logits: ``float[M, N]`` gate logits on a calibration set (numpy or tensor).
      bias: ``float[N]``.
    Returns:
      ``float32[N]`` offsets with mean zero over the used experts.
    """
    logits = as_float_array(logits, "logits", rank=2, layout="[M, N]")
    b = validate_bias(bias, logits.shape[1])
    check_finite(logits, "logits")
    m, n = logits.shape
    if m < n:
        raise ValueError(f"calibration set of {m} inputs is smaller than the {n} experts")
    caps = expert_capacities(m, b)
    assignment = capacity_assignment(logits, caps)
    used = np.flatnonzero(caps > 0)
    # margin[p, q] = max over rows routed to p of (l_q - l_p): o_p - o_q must exceed it.
    pairs, rhs = [], []
    for p in used:
        rows = logits[assignment == p]
        for q in used:
            if q != p:
                pairs.append((p, q))
                rhs.append(np.max(rows[:, q] - rows[:, p]))
    k = used.size
    index = {e: i for i, e in enumerate(used)}
    offsets = np.zeros(n)
    if k > 1:
        # variables: o_used (k), t; maximise t s.t. o_q - o_p + t <= -margin[p, q].
        a_ub = np.zeros((len(pairs), k + 1))
        for row, (p, q) in enumerate(pairs):
            a_ub[row, index[p]] -= 1.0
            a_ub[row, index[q]] += 1.0
            a_ub[row, k] = 1.0
        a_eq = np.concatenate([np.ones((1, k)), np.zeros((1, 1))], axis=1)
        c = np.zeros(k + 1)
        c[k] = -1.0
        res = optimize.linprog(c, A_ub=a_ub, b_ub=-np.asarray(rhs), A_eq=a_eq, b_eq=[0.0],
                               bounds=[(None, None)] * k + [(None, 1e9)], method="highs")
        if res.status != 0:  # pragma: no cover - always feasible for an optimal assignment
            raise RuntimeError(f"offset LP failed: {res.message}")
        offsets[used] = res.x[:k]
    unused = np.flatnonzero(caps == 0)
    if unused.size:
        spread = float(logits.max() - logits.min())
        offsets[unused] = offsets[used].min() - 2.0 * spread - 1.0
    return offsets.astype(np.float32)


def route(logits, offsets):
    """Per-input routing: ``argmax(logits + offsets)``, ``int32[M]``.

    Each row is decided on its own, so batching changes nothing: this is what a
    sensor computes one frame at a time.
    """
    logits = tf.convert_to_tensor(logits)
    offsets = tf.cast(tf.convert_to_tensor(offsets), logits.dtype)
    if logits.shape.rank != 2:
        raise ValueError(f"logits must be [M, N], got shape {logits.shape}")
    if offsets.shape.rank != 1 or (logits.shape[-1] is not None
                                   and offsets.shape[0] != logits.shape[-1]):
        raise ValueError(
            f"offsets must be [N] matching logits' {logits.shape[-1]} experts, "
            f"got shape {offsets.shape}")
    logits = check_finite_tensor(logits, "logits")
    offsets = check_finite_tensor(offsets, "offsets")
    return tf.argmax(logits + offsets, axis=-1, output_type=tf.int32)
