"""The biased mixture of experts as a Keras model (Section III).

:class:`BiasedMixture` only wires the pieces together: the gating model
(:mod:`bmoe_tf.gating`) gives logits, :mod:`bmoe_tf.routing` turns them into gates
(Algorithm 1 or Eq. 3), each example goes to its one selected expert
(:mod:`bmoe_tf.experts`), and the output is Eq. 2. Training updates the gate's
weights only; the experts stay frozen, so training normally runs on an expert
cache (:mod:`bmoe_tf.cache`) instead of the experts themselves.

Inputs to ``fit``/``evaluate``/``predict`` are either raw inputs ``x`` (the
experts run, each only on the examples routed to it) or a cache batch: a dict with
``"gate_input"`` and the cache entries, as made by
:func:`bmoe_tf.cache.cache_dataset`.
"""
import dataclasses
import inspect
from typing import NamedTuple

import numpy as np

from bmoe_tf import cache as cache_lib
from bmoe_tf import losses as losses_lib
from bmoe_tf import routing as routing_lib
from bmoe_tf.backend import keras, tf
from bmoe_tf.bias import validate_bias
from bmoe_tf.byte_budget import byte_aware_mask
from bmoe_tf.cache import mse_from_statistics
from bmoe_tf.experts import check_mixable
from bmoe_tf.losses import bias_loss, expert_utility

__all__ = ["BiasedMixture", "Selection", "GateLoss", "METHODS", "ROUTINGS", "COMBINES",
           "TRAINING_LOSSES"]

#: Training methods: Algorithm 1 ("enforce"), Eq. 3 + Eq. 5 ("soft"), or the byte-aware
#: assignment of each batch ("enforce_bytes": a budget in payload bytes instead of b's
#: frequencies, :func:`bmoe_tf.byte_budget.byte_aware_mask`).
METHODS = ("enforce", "soft", "enforce_bytes")
#: Test-time routing: b enforced per batch, calibrated per-input offsets, or the
#: plain argmax of Eq. 3 (no bias control at all).
ROUTINGS = ("batch", "streaming", "argmax")
#: How the selected expert's output is weighted: Eq. 2 literally ("gate": y = G_n E_n)
#: or straight-through ("straight_through": y = E_n forward, dy/dG_n = E_n backward).
COMBINES = ("gate", "straight_through")
#: What the gate is trained on: the task loss of the mixture output (Eq. 2) with the
#: selected expert ("selected", the paper); the selected expert's own loss weighted
#: by its gate, ``sum_n G_n loss(y, E_n)`` with the sparse / enforced G ("gated", the
#: competitive loss of Jacobs et al. 1991); or the expected loss under the dense
#: softmax over every expert ("expected"; needs an expert cache); or a regression of
#: the centred logits onto the centred negative expert losses, in units of the
#: batch's median loss gap ("relative"; needs an expert cache). See WORKSPACE.md.
#: Each is a pure function in :data:`bmoe_tf.losses.TRAINING_LOSSES`.
TRAINING_LOSSES = tuple(losses_lib.TRAINING_LOSSES)


class Selection(NamedTuple):
    """What :meth:`BiasedMixture.select` returns (unpacks as ``gates, scales, assignment``)."""

    #: ``float[M, N]``: one non-zero per row, the selected expert's softmax gate.
    gates: tf.Tensor
    #: ``float[M, N]``: the factor on each expert's output (see ``combine``).
    scales: tf.Tensor
    #: ``int32[M]``: the selected expert of each example.
    assignment: tf.Tensor


@dataclasses.dataclass(frozen=True)
class GateLoss:
    """What :meth:`BiasedMixture.compute_gate_loss` returns."""

    #: scalar: ``task_loss + bias_loss``, what the gate's gradient follows.
    total: tf.Tensor
    #: scalar: mean of ``per_example`` over the batch.
    task_loss: tf.Tensor
    #: scalar: Eq. 5 (``"soft"`` method), else 0.
    bias_loss: tf.Tensor
    #: ``float[M]``: the training loss (or at test time the routed task loss) per example.
    per_example: tf.Tensor
    #: ``float[M, N]``: the selection's gates (see :class:`Selection`).
    gates: tf.Tensor
    #: ``int32[M]``: the selected expert of each example.
    assignment: tf.Tensor
    #: ``float32[M]``: the selected expert's payload bytes per example, when the batch
    #: carries ``"payload_bytes"``; else None (the ``data_cost`` metric then counts d_n).
    payload_bytes: tf.Tensor | None = None


def _selected_bytes(x, assignment):
    if not (_is_cache_batch(x) and "payload_bytes" in x):
        return None
    c = tf.cast(tf.convert_to_tensor(x["payload_bytes"]), tf.float32)
    return tf.gather(c, assignment, axis=1, batch_dims=1)

_MSE_NAMES = ("mse", "mean_squared_error", "MeanSquaredError")
#: the checkpoint name of the training dataset's epoch variable (see ``BiasedMixture.fit``)
_EPOCH_DEPENDENCY = "cache_dataset_epoch"
#: ``keras.Model.fit``'s signature, ``(self, x=None, y=None, ...)``
_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


def _choice(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


def _is_mse(loss):
    if isinstance(loss, str):
        return loss in _MSE_NAMES
    if isinstance(loss, keras.losses.MeanSquaredError):
        return True
    return getattr(loss, "__name__", None) in _MSE_NAMES


def _per_example_loss_fn(loss):
    """A function ``(y, y_pred) -> [M]``: the compiled loss, mean over non-batch axes."""
    if loss is None:
        raise ValueError("compile the mixture with a task loss first: mixture.compile(loss=...)")
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError("a mixture has one output; compile it with a single loss")
    obj = keras.losses.get(loss)
    if isinstance(obj, keras.losses.Loss):
        config = dict(obj.get_config(), reduction=keras.losses.Reduction.NONE)
        obj = type(obj).from_config(config)

    def per_example(y, y_pred):
        value = tf.convert_to_tensor(obj(y, y_pred))
        if value.shape.rank and value.shape.rank > 1:
            value = tf.reduce_mean(value, axis=list(range(1, value.shape.rank)))
        return value

    return per_example


#: kept for callers of the old private name
_relative_loss = losses_lib.relative_loss


def _is_cache_batch(x):
    return isinstance(x, dict) and "gate_input" in x


def _gate_output_width(gate):
    """The last dimension of ``gate``'s output when Keras knows it statically, else None."""
    try:
        shape = gate.output_shape
    except (AttributeError, RuntimeError, ValueError):
        return None
    if isinstance(shape, list) or shape is None or not len(shape):
        return None
    return None if shape[-1] is None else int(shape[-1])


def _check_gate_outputs(gate, num_experts):
    """Refuses a gate whose logits do not number the experts (known statically)."""
    width = _gate_output_width(gate)
    if width is not None and width != num_experts:
        raise ValueError(f"the gate gives {width} logits per example but there are "
                         f"{num_experts} experts; the gate needs one logit per expert")


def _check_logits(logits, num_experts):
    """The same check when the gate first runs (a gate whose output shape was unknown)."""
    width = logits.shape[-1] if logits.shape.rank else None
    if width is not None and int(width) != num_experts:
        raise ValueError(f"the gate gives {int(width)} logits per example but there are "
                         f"{num_experts} experts; the gate needs one logit per expert")


class BiasedMixture(keras.Model):
    """A biased mixture of N frozen experts with a trainable gate.

    Args:
      gate: Keras model, raw input ``[M, ...]`` -> logits ``[M, N]``.
      experts: list of N :class:`bmoe_tf.Expert` with mixable outputs.
      bias: ``float[N]``, the frequencies of use b.
      method: ``"enforce"`` (Algorithm 1 every training batch), ``"soft"``
        (Eq. 3 sparse gates + the Eq. 5 bias loss) or ``"enforce_bytes"`` (each
        training batch routed by the byte-aware assignment: its payload bytes within
        ``M x byte_target``; the batches must carry ``"payload_bytes"``,
        :func:`bmoe_tf.cache.cache_dataset` ``(payload_bytes=...)``; b then only serves
        the test-time ``"batch"`` routing).
      byte_target: mean payload bytes per input, ``method="enforce_bytes"`` only.
      bias_weight: w_bias of Eq. 5 (soft method only).
      routing: test-time routing, see :data:`ROUTINGS`. ``"batch"`` enforces b over
        each evaluation batch (as in the paper); ``"streaming"`` routes one input
        at a time with offsets from :meth:`calibrate`; ``"argmax"`` is Eq. 3 alone.
      combine: see :data:`COMBINES`; ``"gate"`` is the paper's Eq. 2.
      training_loss: see :data:`TRAINING_LOSSES`; ``"selected"`` is the paper's.
        ``"gated"`` trains on ``G_a * loss(y, E_a)`` for the selected expert a;
        ``"expected"`` on ``sum_n softmax_n * loss_n`` over every expert, and
        ``"relative"`` regresses centred logits onto centred ``-loss_n``; both need
        every expert's loss, which only an expert cache provides (the experts are
        never all run on an input).
      input_shape: per-example raw input shape; default: the gate's input shape.
      gate_preprocess: P_g, a callable raw inputs ``[M, *input_shape]`` -> the gate's
        inputs, for a gate that sees part of x only (the action task's gate sees the
        motion-vector modality of a packed clip); None: the gate sees x. An expert
        cache batch carries the gate's inputs already (``"gate_input"``).

    Under a ``tf.distribute`` strategy with several replicas (``MirroredStrategy``,
    ``MultiWorkerMirroredStrategy``), each step's batch is the GLOBAL batch, split into
    per-replica parts. Global (the same on every replica, as on one device with the
    whole batch): Algorithm 1's capacities and selection (the gate values are
    all-gathered, :class:`bmoe_tf.routing.BatchwiseBiasEnforcement`); the soft method's
    utility u of Eq. 4 in the Eq. 5 loss (``ctx.all_reduce`` of each replica's summed
    gates and row count: :func:`bmoe_tf.losses.expert_utility` ``(global_batch=True)``;
    the all-reduce's gradient, itself an all-reduce, gives each replica's rows their
    share of the one bias loss, so the summed gradients are the single-device ones);
    the ``"relative"`` training loss's scale (the median gap over the global batch); the
    data order (:func:`bmoe_tf.cache.cache_dataset`); the metrics. Per replica: the byte
    budget of ``method="enforce_bytes"`` (each replica's rows within their own bytes); the
    forward / backward pass on its rows, the per-example losses and their mean, divided
    by the number of replicas (gradients summed over replicas: the global mean when
    the parts are equal, e.g. ``cache_dataset(drop_remainder=True)`` and a global batch
    divisible by the number of replicas). Tested: a gate trained under
    ``MirroredStrategy`` on two devices equals the default strategy's to 1e-5
    (``tests/bmoe_tf/test_mixture_distributed.py``).

    Metrics (per epoch, over examples): ``loss``, ``task_loss``, ``bias_loss``,
    ``data_cost`` (mean d_n of the selected experts, bytes per example; the selected
    payloads' own bytes when the batches carry ``"payload_bytes"``), and per
    expert ``utility_<name>`` (share of examples routed to it; Eq. 4 applied to
    the selection) and ``gate_<name>`` (Eq. 4 on the gate values).
    """

    def __init__(self, gate, experts, bias, *, method="enforce", bias_weight=1.0,
                 routing="batch", combine="gate", training_loss="selected", input_shape=None,
                 gate_preprocess=None, byte_target=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(gate, keras.layers.Layer):
            raise ValueError(f"gate must be a Keras model or layer, got {type(gate).__name__}")
        self.method = _choice(method, METHODS, "method")
        self.routing = _choice(routing, ROUTINGS, "routing")
        self.combine = _choice(combine, COMBINES, "combine")
        self.training_loss = _choice(training_loss, TRAINING_LOSSES, "training_loss")
        experts = list(experts)
        self.bias = validate_bias(bias, len(experts))
        bias_weight = float(bias_weight)
        if not np.isfinite(bias_weight) or bias_weight < 0:
            raise ValueError(f"bias_weight must be a finite number >= 0, got {bias_weight}")
        self.bias_weight = bias_weight
        if (method == "enforce_bytes") != (byte_target is not None):
            raise ValueError("byte_target (mean payload bytes per input) goes with "
                             "method='enforce_bytes', and only with it")
        if byte_target is not None:
            byte_target = float(byte_target)
            if not np.isfinite(byte_target) or byte_target <= 0:
                raise ValueError(f"byte_target must be a finite number of bytes > 0, got "
                                 f"{byte_target!r}")
        self.byte_target = byte_target
        if gate_preprocess is not None and not callable(gate_preprocess):
            raise ValueError(f"gate_preprocess must be callable, got "
                             f"{type(gate_preprocess).__name__}")
        if gate_preprocess is not None and input_shape is None:
            raise ValueError("gate_preprocess needs input_shape= (the raw input shape)")
        self.gate_preprocess = gate_preprocess
        if input_shape is None:
            shape = getattr(gate, "input_shape", None)
            if shape is None or isinstance(shape, list) or any(d is None for d in shape[1:]):
                raise ValueError(
                    "cannot tell the raw input shape from the gate; pass input_shape=")
            input_shape = shape[1:]
        self.raw_input_shape = tuple(int(d) for d in input_shape)
        self.output_spec_shape, self.output_dtype = check_mixable(experts, self.raw_input_shape)
        _check_gate_outputs(gate, len(experts))
        self.gate = gate
        # Our metrics are means over synchronized (SyncOnRead) variables, already global on
        # every replica; Keras' "auto" would SUM them across the workers of a
        # MultiWorkerMirroredStrategy (utilities 2x with 2 workers).
        self.distribute_reduction_method = "first"
        self.experts = experts
        self.expert_names = [e.name for e in experts]
        self.data_costs = np.array([e.data_cost for e in experts], np.float64)
        self._enforcer = routing_lib.BatchwiseBiasEnforcement(self.bias, name="bias_enforcement")
        self.offsets = tf.Variable(np.full(len(experts), np.nan, np.float32), trainable=False,
                                   name="routing_offsets")
        self._loss_tracker = keras.metrics.Mean("loss")
        self._task_tracker = keras.metrics.Mean("task_loss")
        self._bias_tracker = keras.metrics.Mean("bias_loss")
        self._cost_tracker = keras.metrics.Mean("data_cost")
        self._utility_trackers = [keras.metrics.Mean(f"utility_{n}") for n in self.expert_names]
        self._gate_trackers = [keras.metrics.Mean(f"gate_{n}") for n in self.expert_names]
        # Every weight lives in the (built) gate and the frozen experts, so the
        # mixture is built once they are: callbacks such as BackupAndRestore need it.
        self.built = bool(getattr(gate, "built", False))

    def _gate_view(self, x):
        return x if self.gate_preprocess is None else self.gate_preprocess(x)

    def compile(self, *args, metrics=None, weighted_metrics=None, **kwargs):
        """Keras ``compile``; the mixture reports its own metrics (see the class doc)."""
        if metrics or weighted_metrics:
            raise ValueError(
                "BiasedMixture reports loss, task_loss, bias_loss, data_cost, utility_<expert> "
                "and gate_<expert> itself; compile(metrics=...) is not supported")
        return super().compile(*args, **kwargs)

    @property
    def num_experts(self):
        return len(self.expert_names)

    @property
    def metrics(self):
        return ([self._loss_tracker, self._task_tracker, self._bias_tracker, self._cost_tracker]
                + self._utility_trackers + self._gate_trackers)

    # ---- routing -----------------------------------------------------------------
    def _mode(self, training):
        if training:
            return {"enforce": "enforce", "enforce_bytes": "bytes"}.get(self.method, "argmax")
        return "enforce" if self.routing == "batch" else self.routing

    def select(self, logits, training=False, payload_bytes=None):
        """Gates for a batch of logits ``[M, N]`` (``payload_bytes [M, N]``: the batch's
        bytes per expert, which ``method="enforce_bytes"`` trains on).

        Returns:
          :class:`Selection` ``(gates [M, N], scales [M, N], assignment int32[M])``:
          ``gates`` with one non-zero per row (the selected expert's softmax gate),
          ``scales`` the factor on each expert's output (see ``combine``).
        """
        probs = routing_lib.softmax_gates(logits)
        mode = self._mode(training)
        if mode == "enforce":
            mask = self._enforced_mask(logits, probs, training)
        elif mode == "argmax":
            mask = tf.one_hot(tf.argmax(logits, axis=-1), self.num_experts, dtype=probs.dtype)
        elif mode == "bytes":
            if payload_bytes is None:
                raise ValueError("method='enforce_bytes' trains on batches that carry each "
                                 "input's payload bytes: bmoe_tf.cache.cache_dataset(..., "
                                 "payload_bytes=[M, N])")
            mask = tf.cast(byte_aware_mask(logits, payload_bytes, self.byte_target),
                           probs.dtype)
        else:
            offsets = tf.debugging.assert_all_finite(
                self.offsets, "routing='streaming' needs mixture.calibrate(...) first")
            mask = tf.one_hot(routing_lib.route(logits, offsets), self.num_experts,
                              dtype=probs.dtype)
        gates = probs * mask
        if self.combine == "gate":
            scales = gates
        else:
            scales = mask * (1.0 + probs - tf.stop_gradient(probs))
        assignment = tf.argmax(mask, axis=-1, output_type=tf.int32)
        return Selection(gates, scales, assignment)

    def _enforced_mask(self, logits, probs, training):
        """Algorithm 1's selection; at test time a batch of fewer than N rows (the
        tail of a dataset) falls back to the argmax, since no capacities can hold."""
        # Algorithm 1 only compares values within a column, so ranking by log G
        # (same order as G) keeps float32 resolution when the softmax saturates.
        def enforce():
            return self._enforcer.selection(tf.nn.log_softmax(logits, axis=-1))

        def argmax():
            return tf.one_hot(tf.argmax(logits, axis=-1), self.num_experts, dtype=probs.dtype)

        if training:
            return enforce()
        rows = logits.shape[0]
        if rows is not None:
            return enforce() if rows >= self.num_experts else argmax()
        return tf.cond(tf.shape(logits)[0] >= self.num_experts, enforce, argmax)

    def _dispatch(self, x, scales, assignment):
        """Eq. 2 with each example run only through its selected expert.

        An expert that gets no row (any b, e.g. ``b_n = 0``) is not run at all
        (``tf.cond``; graph- and XLA-safe): some models, e.g. SavedModels loaded
        through ``hub.KerasLayer``, fail on an empty batch.
        """
        n = self.num_experts
        rows = tf.dynamic_partition(tf.range(tf.shape(assignment)[0]), assignment, n)
        parts = tf.dynamic_partition(x, assignment, n)
        empty_shape = [0] + [int(d) for d in self.output_spec_shape]
        outs = []
        for expert, part in zip(self.experts, parts):
            def run(expert=expert, part=part):
                return tf.cast(expert(part), self.output_dtype)

            def skip():
                return tf.zeros(empty_shape, self.output_dtype)

            outs.append(tf.cond(tf.shape(part)[0] > 0, run, skip))
        stitched = tf.dynamic_stitch(rows, outs)
        weight = tf.cast(tf.reduce_sum(scales, axis=1), self.output_dtype)
        return stitched * tf.reshape(weight, [-1] + [1] * len(self.output_spec_shape))

    def _combine_cached(self, outputs, scales):
        outputs = tf.convert_to_tensor(outputs)
        weight = tf.reshape(tf.cast(scales, outputs.dtype),
                            [-1, self.num_experts] + [1] * (outputs.shape.rank - 2))
        return tf.reduce_sum(outputs * weight, axis=1)

    def _output(self, x, scales, assignment):
        if not _is_cache_batch(x):
            return self._dispatch(tf.convert_to_tensor(x, tf.float32), scales, assignment)
        if "outputs" in x:
            return self._combine_cached(x["outputs"], scales)
        raise ValueError(
            "an 'mse' statistics or 'scores' cache holds no expert outputs, so there is no "
            "mixture output to predict; use raw inputs or an 'outputs' cache")

    def call(self, inputs, training=None):
        """Mixture output ``[M, ...]`` (Eq. 2) with the test-time routing."""
        gate_input = inputs["gate_input"] if _is_cache_batch(inputs) else self._gate_view(inputs)
        logits = self.gate(gate_input, training=False)
        _check_logits(logits, self.num_experts)
        _, scales, assignment = self.select(logits, training=False)
        return self._output(inputs, scales, assignment)

    # ---- losses ------------------------------------------------------------------
    def compute_gate_loss(self, x, y, training=True):
        """Total loss of a batch and what it is made of.

        Training (``training=True``) uses the training loss
        :data:`bmoe_tf.losses.TRAINING_LOSSES` ``[self.training_loss]``; test time
        uses the task loss of Eq. 2's output with the test-time routing, except on a
        ``"scores"`` cache (no outputs), where it is ``-score`` of the selected expert.

        Args:
          x: raw inputs ``[M, ...]`` or a cache batch dict.
          y: targets ``[M, ...]`` (ignored for an ``"mse"`` or ``"scores"`` cache).
          training: training routing (the method) or test-time routing.
        Returns:
          :class:`GateLoss` ``(total, task_loss, bias_loss, per_example [M],
          gates [M, N], assignment int32[M])``.
        Raises:
          ValueError: a training loss that needs what the batch cannot give (every
            expert's loss without a cache; Eq. 2's output from a ``"scores"`` cache).
        """
        gate_input = x["gate_input"] if _is_cache_batch(x) else self._gate_view(x)
        logits = self.gate(gate_input, training=training)
        _check_logits(logits, self.num_experts)
        gates, scales, assignment = self.select(
            logits, training=training,
            payload_bytes=x.get("payload_bytes") if _is_cache_batch(x) else None)
        scores = _is_cache_batch(x) and "scores" in x
        if not training and scores:
            mask = tf.one_hot(assignment, self.num_experts, dtype=gates.dtype)
            per_example = tf.reduce_sum(
                mask * tf.cast(self._per_expert_losses(x, y), gates.dtype), axis=1)
        elif not training:
            per_example = self._mixture_loss(x, y, scales, assignment)
        else:
            name = self.training_loss
            loss_fn = losses_lib.TRAINING_LOSSES[name]
            needs = losses_lib.TRAINING_LOSS_INPUTS[name]
            if needs == "expert_losses":
                per_example = loss_fn(logits, self._per_expert_losses(x, y))
            elif needs == "selected_expert_loss":
                mask = tf.one_hot(assignment, self.num_experts, dtype=gates.dtype)
                if _is_cache_batch(x):
                    own = tf.reduce_sum(
                        mask * tf.cast(self._per_expert_losses(x, y), gates.dtype), axis=1)
                else:  # only the selected expert runs: its output unscaled, its loss
                    own = self._per_example(y, self._output(x, mask, assignment))
                per_example = loss_fn(gates, own)
            else:
                if scores:
                    raise ValueError(
                        f"training_loss={name!r} needs the mixture output of Eq. 2, which a "
                        "'scores' cache does not hold; train with training_loss='gated', "
                        "'expected' or 'relative', or on an 'outputs' or 'mse' cache")
                per_example = loss_fn(self._mixture_loss(x, y, scales, assignment))
        task = tf.reduce_mean(per_example)
        if self.method == "soft":
            # u of Eq. 4 over the global batch (the same on every replica)
            b_loss = tf.cast(bias_loss(expert_utility(gates, global_batch=True), self.bias,
                                       self.bias_weight), task.dtype)
        else:
            b_loss = tf.zeros((), task.dtype)
        return GateLoss(total=task + b_loss, task_loss=task, bias_loss=b_loss,
                        per_example=per_example, gates=gates, assignment=assignment,
                        payload_bytes=_selected_bytes(x, assignment))

    def _mixture_loss(self, x, y, scales, assignment):
        """``[M]``: the task loss of Eq. 2's output ``sum_n scales_n E_n``."""
        if _is_cache_batch(x) and "residual_gram" in x:
            self._check_mse()
            return mse_from_statistics(scales, x)
        return self._per_example(y, self._output(x, scales, assignment))

    def _check_mse(self):
        if not _is_mse(self.loss):
            raise ValueError(
                f"an 'mse' statistics cache gives the mean squared error only, but the "
                f"mixture was compiled with loss={self.loss!r}; compile(loss='mse') or "
                f"build an 'outputs' cache")

    def _per_expert_losses(self, x, y):
        """``[M, N]``: each expert's task loss on each example, from a cache batch."""
        if not _is_cache_batch(x):
            raise ValueError(
                f"training_loss={self.training_loss!r} needs every expert's output on every "
                "example, "
                "which only an expert cache holds; train on bmoe_tf.cache.cache_dataset(...)")
        if "scores" in x:  # higher is better: the loss is minus the score
            return -tf.convert_to_tensor(x["scores"])
        if "residual_gram" in x:
            self._check_mse()
            gram = tf.convert_to_tensor(x["residual_gram"])
            return tf.linalg.diag_part(gram) / tf.convert_to_tensor(x["num_elements"])[:, None]
        outputs = tf.convert_to_tensor(x["outputs"])
        return tf.stack([self._per_example(y, outputs[:, n]) for n in range(self.num_experts)],
                        axis=1)

    @property
    def _per_example(self):
        return _per_example_loss_fn(self.loss)

    def _update_metrics(self, result):
        m = tf.cast(tf.shape(result.assignment)[0], tf.float32)
        self._loss_tracker.update_state(result.total, sample_weight=m)
        self._task_tracker.update_state(result.task_loss, sample_weight=m)
        self._bias_tracker.update_state(result.bias_loss, sample_weight=m)
        costs = (tf.gather(tf.constant(self.data_costs, tf.float32), result.assignment)
                 if result.payload_bytes is None else result.payload_bytes)
        self._cost_tracker.update_state(tf.reduce_mean(costs), sample_weight=m)
        share = expert_utility(tf.one_hot(result.assignment, self.num_experts))
        mass = expert_utility(result.gates)
        for n in range(self.num_experts):
            self._utility_trackers[n].update_state(share[n], sample_weight=m)
            self._gate_trackers[n].update_state(mass[n], sample_weight=m)
        return {t.name: t.result() for t in self.metrics}

    def fit(self, *args, **kwargs):
        """Keras ``fit``; streaming offsets are reset, since they belong to the old gate.

        Shuffled :func:`bmoe_tf.cache.cache_dataset` datasets given as ``x`` or
        ``validation_data`` (or ``with_options`` / ``map`` / ``prefetch`` of one) are
        told each epoch's number (:class:`bmoe_tf.cache.DatasetEpoch`, put first in the
        callbacks), so epoch e's order is :func:`bmoe_tf.cache.epoch_order` ``(seed, e)``
        under any strategy, also with ``initial_epoch`` and when ``BackupAndRestore``
        resumes at epoch k. The training dataset's epoch variable becomes a checkpoint
        dependency of the mixture (``"cache_dataset_epoch"``; not a Keras weight), so
        ``BackupAndRestore`` saves and restores it with the gate.
        """
        self.offsets.assign(np.full(self.num_experts, np.nan, np.float32))
        # bound to keras.Model.fit's own signature (taken at import), so that x and the
        # callbacks are found also when a wrapper replaced keras.Model.fit since
        bound = _FIT_SIGNATURE.bind_partial(self, *args, **kwargs)
        arguments = bound.arguments
        epochs = cache_lib.DatasetEpoch(arguments.get("x"), arguments.get("validation_data"))
        if epochs.datasets:
            # first: its on_epoch_end runs before BackupAndRestore's backup
            arguments["callbacks"] = [epochs] + list(arguments.get("callbacks") or [])
        variable = cache_lib.dataset_epoch_variable(arguments.get("x"))
        if variable is not None:
            # a checkpoint dependency, not a Keras weight (not in weights / get_weights):
            # BackupAndRestore saves it and restores it before the first iterator exists
            self._track_trackable(variable, name=_EPOCH_DEPENDENCY, overwrite=True)
        return super().fit(*bound.args[1:], **bound.kwargs)

    @staticmethod
    def _unpack(data):
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return data[0], data[1]
        raise ValueError(
            "a BiasedMixture trains and evaluates on (inputs, targets) pairs; sample "
            "weights and input-only batches are not supported")

    def train_step(self, data):
        x, y = self._unpack(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            result = self.compute_gate_loss(x, y, training=True)
            scaled = result.total / tf.cast(replicas, result.total.dtype)
        variables = self.gate.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_metrics(result)

    def test_step(self, data):
        x, y = self._unpack(data)
        return self._update_metrics(self.compute_gate_loss(x, y, training=False))

    # ---- streaming calibration and routing helpers ----------------------------------
    def gate_logits(self, gate_inputs, batch_size=256):
        """Gate logits ``float32[M, N]`` for raw gate inputs (numpy)."""
        return self.gate.predict(np.asarray(gate_inputs, np.float32), batch_size=batch_size,
                                 verbose=0)

    def calibrate(self, gate_inputs, batch_size=256):
        """Sets the streaming offsets from a calibration set; returns them ``[N]``."""
        offsets = routing_lib.calibrate_offsets(self.gate_logits(gate_inputs, batch_size),
                                                self.bias)
        self.offsets.assign(offsets)
        return offsets

    def select_experts(self, gate_inputs, batch_size=128):
        """Expert index per input ``int64[M]`` with the test-time routing.

        ``"batch"`` routing enforces b over consecutive chunks of ``batch_size``
        (:func:`bmoe_tf.routing.route_in_batches`).
        """
        self._check_routing_ready()
        logits = self.gate_logits(gate_inputs)
        if self.routing == "batch":
            return routing_lib.route_in_batches(logits, self.bias, batch_size)
        if self.routing == "streaming":
            return routing_lib.route(logits, self.offsets).numpy().astype(np.int64)
        return np.argmax(logits, axis=1).astype(np.int64)

    def _check_routing_ready(self):
        if self.routing == "streaming" and not np.all(np.isfinite(self.offsets.numpy())):
            raise ValueError(
                "routing='streaming' needs calibrated offsets: call "
                "mixture.calibrate(calibration_gate_inputs) first")

    def evaluate(self, *args, **kwargs):
        self._check_routing_ready()
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self._check_routing_ready()
        return super().predict(*args, **kwargs)
