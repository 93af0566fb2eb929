"""Gates and routing: Eqs. 1 and 3, Algorithm 1, and per-input streaming routing.

Shapes: ``M`` is the batch size, ``N`` the number of experts.

* :func:`softmax_gates` -- Eq. 1, ``[M, N]``.
* :func:`sparse_gates` -- Eq. 3, the softmax kept only at the argmax, ``[M, N]``.
* :func:`expert_capacities` -- how many of M examples each expert gets under b.
* :func:`enforce_bias` -- Algorithm 1 (batchwise bias enforcement), ``[M, N]``.
* :func:`calibrate_offsets` / :func:`route` -- a sensor that sees one frame at a
  time cannot enforce b over a batch; instead it adds fixed offsets to the logits
  so that argmax reproduces the frequencies b.
* :class:`SparseGate`, :class:`BatchwiseBiasEnforcement` -- thin Keras layers.
* :class:`BudgetController`, :func:`route_frames`, :func:`sequence_cost` -- online
  routing that holds b on any sequence (:mod:`bmoe_tf.budget`).

:func:`expert_capacities` lives in :mod:`bmoe_tf.capacities`, :func:`calibrate_offsets`
and :func:`route` in :mod:`bmoe_tf.offsets` (the online controller builds on them, and
this module re-exports all three and the controller, so nothing imports back).

The math is in pure functions; the layers only hold configuration.
"""
import numpy as np

from bmoe_tf.backend import keras, tf
from bmoe_tf.bias import validate_bias
from bmoe_tf.budget import BudgetController, route_frames, sequence_cost
from bmoe_tf.capacities import _capacities_tensor, expert_capacities
from bmoe_tf.checks import as_float_array, check_finite_tensor
from bmoe_tf.offsets import calibrate_offsets, route

__all__ = [
    "softmax_gates", "sparse_gates", "expert_capacities", "enforcement_mask",
    "enforce_bias", "calibrate_offsets", "route", "route_in_batches", "SparseGate",
    "BatchwiseBiasEnforcement", "BudgetController", "route_frames", "sequence_cost",
]

def softmax_gates(logits):
    """Eq. 1 as a normal softmax over the N experts.

    The printed denominator sums over ``m != n``; that does not give a
    distribution (rows would not sum to 1 and the gate of the best expert could
    exceed 1), so we use the ordinary softmax (see WORKSPACE.md, decision D1).

    Args:
      logits: ``float[M, N]``, the gating model's output f(x; W_g).
    Returns:
      ``float[M, N]``, rows summing to 1.
    """
    logits = tf.convert_to_tensor(logits)
    logits = check_finite_tensor(logits, "logits")
    return tf.nn.softmax(logits, axis=-1)


def sparse_gates(logits):
    """Eq. 3: the softmax gate of the top expert, zero elsewhere.

    Args:
      logits: ``float[M, N]``.
    Returns:
      ``float[M, N]`` with exactly one non-zero per row (the argmax; ties go to the
      lower expert index), equal to that expert's softmax value.
    """
    gates = softmax_gates(logits)
    top = tf.argmax(logits, axis=-1, output_type=tf.int32)
    one_hot = tf.one_hot(top, tf.shape(gates)[-1], dtype=gates.dtype)
    return gates * one_hot


def _check_gates(gates, b):
    gates = tf.convert_to_tensor(gates)
    if gates.shape.rank != 2:
        raise ValueError(f"gates must be [batch, num_experts], got shape {gates.shape}")
    n = gates.shape[-1]
    if n is not None and n != b.size:
        raise ValueError(f"gates have {n} experts but bias has {b.size} entries")
    gates = check_finite_tensor(gates, "gates")
    m = gates.shape[0]
    if m is not None and m < b.size:
        raise ValueError(
            f"batch of {m} is smaller than the number of experts ({b.size}); batchwise "
            f"enforcement needs at least N examples: use batches of at least {b.size} "
            f"(e.g. drop_remainder=True for a dataset's last batch)")
    if m is None and not tf.executing_eagerly():
        check = tf.debugging.assert_greater_equal(
            tf.shape(gates)[0], b.size, message=(
                f"batch smaller than the number of experts ({b.size}): use batches of at "
                f"least {b.size} (e.g. drop_remainder=True for a dataset's last batch)"))
        with tf.control_dependencies([check]):
            gates = tf.identity(gates)
    return gates


def enforcement_mask(gates, bias):
    """The expert selection of Algorithm 1 as a one-hot ``[M, N]`` (no gradient).

    Experts are visited in order 1..N; expert n takes the ``K_n`` highest values of
    its column among the rows not yet taken (stable: ties to the lower row index).
    Rows taken by an earlier expert have had column n zeroed by Algorithm 1, so
    they can only be picked again when gate values underflow to 0; we exclude them
    explicitly, which keeps one expert per row in that corner (decision D2).

    Only the order of values within each column matters, so any increasing
    transform of the gates gives the same mask: callers that hold logits pass
    ``log_softmax(logits)``, whose float32 values do not all round to 0 or 1 when
    the softmax saturates (decision D20).

    Graph- and XLA-safe: one sort per expert, no loop over rows; M may be dynamic.
    """
    b = validate_bias(bias)
    gates = _check_gates(gates, b)
    caps = _capacities_tensor(tf.shape(gates)[0], b)
    # NaN never ranks above a number (decision on non-finite gates, D22): where the
    # finiteness assertion cannot stop a graph (XLA), NaN and -inf gates become the
    # lowest finite value, so they rank below every number but strictly above the
    # rows already taken (-inf): taken rows never use a slot, the capacities hold and
    # every row gets exactly one expert. (No cumsum: XLA compiles it as a reduce
    # window, 100x slower to compile at M = 4096.)
    lowest = tf.constant(np.finfo(gates.dtype.as_numpy_dtype).min, gates.dtype)
    neg_inf = tf.constant(-np.inf, dtype=gates.dtype)
    values = tf.where(tf.logical_or(tf.math.is_nan(gates), tf.equal(gates, neg_inf)),
                      lowest, gates)
    taken = tf.zeros_like(gates[:, 0], dtype=tf.bool)
    columns = []
    for n in range(b.size):
        column = tf.where(taken, neg_inf, values[:, n])
        order = tf.argsort(column, direction="DESCENDING", stable=True)
        rank = tf.math.invert_permutation(order)
        pick = tf.logical_and(rank < caps[n], tf.logical_not(taken))
        columns.append(pick)
        taken = tf.logical_or(taken, pick)
    return tf.stop_gradient(tf.cast(tf.stack(columns, axis=1), gates.dtype))


def _keep_selected(gates, mask):
    """``gates`` where ``mask`` is 1, exactly 0 elsewhere (a NaN stays in its own entry)."""
    return tf.where(mask > 0, gates, tf.zeros_like(gates))


def enforce_bias(gates, bias):
    """Algorithm 1: batchwise bias enforcement.

    Args:
      gates: ``float[M, N]`` soft gates (normally :func:`softmax_gates`).
      bias: ``float[N]``.
    Returns:
      ``float[M, N]``: each row keeps exactly one entry, its original gate value,
      and column n has exactly ``expert_capacities(M, bias)[n]`` of them.
      Gradients flow to the kept gate values.
    Non-finite gates are refused (``ValueError`` eagerly, ``InvalidArgumentError``
    in a graph). Under XLA (``jit_compile=True``), where assertions do not stop the
    computation, a NaN gate ranks below every number in its column (ties to the
    lower row index): the capacities still hold exactly, every row still gets
    exactly one expert, and the NaN row's kept value is the NaN itself, so it stays
    visible downstream (in the loss) instead of being hidden.

    Raises:
      ValueError: bad bias, non-2-D gates, a width that is not N, non-finite
        values, or a static batch smaller than N.
    """
    gates = tf.convert_to_tensor(gates)
    return _keep_selected(gates, enforcement_mask(gates, bias))


def _replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


class SparseGate(keras.layers.Layer):
    """Keras layer for Eq. 3: logits ``[M, N]`` -> sparse gates ``[M, N]``."""

    def call(self, logits):
        return sparse_gates(logits)

    def compute_output_shape(self, input_shape):
        return input_shape


class BatchwiseBiasEnforcement(keras.layers.Layer):
    """Keras layer for Algorithm 1: soft gates ``[M, N]`` -> enforced gates ``[M, N]``.

    Under a ``tf.distribute`` strategy with several replicas, the selection is made
    over the *global* batch: every replica all-gathers the gate values, computes
    the same mask for the whole batch, and keeps its own rows, so the capacities
    hold for the global batch. Gradients only flow through each replica's own
    gate values (the mask is piecewise constant).

    Args:
      bias: ``float[N]``.
      global_batch: enforce over the global batch under a distribution strategy.
    """

    def __init__(self, bias, global_batch=True, **kwargs):
        super().__init__(**kwargs)
        self.bias = validate_bias(bias)
        self.global_batch = bool(global_batch)

    def selection(self, gates):
        """The one-hot expert selection ``[M, N]`` for this replica's rows."""
        gates = tf.convert_to_tensor(gates)
        ctx = _replica_context() if self.global_batch else None
        if ctx is None:
            return enforcement_mask(gates, self.bias)
        local = tf.shape(gates)[0:1]
        sizes = ctx.all_gather(local, axis=0)
        everyone = ctx.all_gather(tf.stop_gradient(gates), axis=0)
        start = tf.reduce_sum(sizes[:ctx.replica_id_in_sync_group])
        mask = enforcement_mask(everyone, self.bias)
        return tf.slice(mask, [start, 0], [local[0], -1])

    def call(self, gates):
        gates = tf.convert_to_tensor(gates)
        return _keep_selected(gates, self.selection(gates))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(bias=self.bias.tolist(), global_batch=self.global_batch)
        return config


_PICKERS = {}


def _batch_picker(b):
    """One traced ``chunk [m, N] -> int64[m]`` per b, kept for the process (a new
    tf.function per call would retrace every time and make TensorFlow warn)."""
    if b not in _PICKERS:
        @tf.function(input_signature=[tf.TensorSpec([None, len(b)], tf.float32)])
        def pick(chunk):
            mask = enforcement_mask(tf.nn.log_softmax(chunk, axis=-1), np.array(b))  # G's order
            return tf.argmax(mask, axis=1)

        _PICKERS[b] = pick
    return _PICKERS[b]


def route_in_batches(logits, bias, batch_size):
    """Algorithm 1 over consecutive batches of precomputed logits, ``int64[M]``.

    What "batch" routing does at test time: each chunk of ``batch_size`` rows
    (the last one with its own capacities) gets exactly
    ``expert_capacities(len(chunk), bias)`` examples per expert.

    Args:
      logits: ``float[M, N]`` (numpy or tensor).
      bias: ``float[N]``.
      batch_size: rows per batch, >= N.
    """
    logits = as_float_array(logits, "logits", rank=2, layout="[M, N]").astype(np.float32)
    b = validate_bias(bias, logits.shape[1])
    if int(batch_size) < b.size:
        raise ValueError(f"batch_size {batch_size} is smaller than the {b.size} experts")
    pick = _batch_picker(tuple(float(v) for v in b))
    picks = []
    for start in range(0, len(logits), int(batch_size)):
        chunk = logits[start:start + int(batch_size)]
        if len(chunk) < b.size:  # a tail smaller than N: per-row argmax, no capacities
            picks.append(np.argmax(chunk, axis=1))
            continue
        picks.append(pick(chunk).numpy())
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)

