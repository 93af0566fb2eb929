"""From a float Keras gate to a fully int8 ``.tflite`` (batch 1, int8 input), or with
``activations="int16"`` to TFLite's 16x8 scheme (int16 input, activations and logits,
int8 weights; WORKSPACE D77).

Two outputs (``output=``):

* ``"logits"`` -- int8 ``[1, N]`` gate logits; the sensor (or the host) adds the
  calibrated offsets and takes the argmax itself.
* ``"index"`` -- int32 ``[1]``, the expert to use. The offsets of
  :func:`bmoe_tf.routing.calibrate_offsets` are folded into the bias of the last
  Dense layer (``W x + b + o``: no extra op) and an ``ARG_MAX`` ends the graph, so
  the sensor gets the routing decision and nothing else to compute.

Two modes (``mode=``):

* ``"ptq"`` -- post-training full-integer quantization with a representative
  dataset (the TFLite converter's calibration of activation ranges).
* ``"qat"`` -- quantization-aware fine-tuning first: ``tfmot``'s ``quantize_model``
  wraps the (offset-folded) gate with fake-quant ops and it is fine-tuned to
  reproduce the float gate's logits (distillation, MSE; no labels needed, and the
  routing the gate learned is the target), then converted.
"""

import numpy as np

from bmoe_tf.backend import keras, tf
from gating_tflite.quantization_aware import (clip_unit, initialize_ranges,  # noqa: F401
                                              is_quantization_aware, quantization_aware_model,
                                              routing_head_config)

__all__ = ["OUTPUTS", "MODES", "ACTIVATIONS", "QAT_EPOCHS", "QAT_LEARNING_RATE", "routing_clip", "fold_offsets",
           "shift_last_bias", "add_argmax", "routing_head_config", "clip_unit", "initialize_ranges", "qat_finetune",
           "convert_int8",
           "check_activations", "float_decisions"]

OUTPUTS = ("logits", "index")
MODES = ("ptq", "qat")

#: Activation types of the integer model (weights are int8 either way): ``"int8"``, or
#: ``"int16"`` (TFLite's 16x8 scheme: int16 activations and logits, int8 weights, int64
#: biases; logits output only -- the converter has no 16x8 ARG_MAX; WORKSPACE D77).
ACTIVATIONS = ("int8", "int16")

#: The QAT fine-tuning schedule (:func:`qat_finetune`). Measured on the SR compact gate
#: (held-out agreement with the float gate, TFLite Micro; issue 11): 3 epochs at 1e-5
#: leave the weights where PTQ rounds them and only change the activation ranges
#: (b = 0.2,0.5,0.3: 85.8% vs PTQ 86.4%; the gate's own b: 91.6% vs 97.5%), while
#: 10 epochs at 1e-4 let the fine-tuning compensate the int8 weight rounding, the
#: main error source (95.4%, 99.6%; b = 0.6,0.1,0.3: 99.0% vs 94.1%). 30 epochs at
#: 3e-4 gave no more (94.8%, 99.6%, 98.9%).
QAT_EPOCHS = 10
QAT_LEARNING_RATE = 1e-4


def _check_inputs(inputs, what):
    inputs = np.asarray(inputs, np.float32)
    if inputs.ndim < 2 or len(inputs) == 0:
        raise ValueError(f"{what} must be a non-empty batch [M, ...], got shape {inputs.shape}")
    if not np.all(np.isfinite(inputs)):
        raise ValueError(f"{what} contains NaN or infinity")
    return inputs


def _num_experts(gate):
    shape = gate.output_shape
    if not isinstance(shape, tuple) or len(shape) != 2 or shape[-1] is None:
        raise ValueError(f"the gate must output logits [batch, num_experts], got {shape}")
    return int(shape[-1])


def routing_clip(logits, offsets, used):
    """The scale C of the int8 index head: the median gap between the best and the
    second-best shifted logit of the used experts on the calibration set.

    Any C > 0 keeps the argmax (see :func:`fold_offsets`); a smaller C gives the
    decisions near a boundary finer int8 steps (2C/255 in logits).
    """
    logits = np.asarray(logits, np.float64)
    used = np.asarray(used, bool)
    if used.sum() < 2:
        return 1.0
    shifted = np.sort(logits[:, used] + np.asarray(offsets, np.float64)[used], axis=1)
    return float(max(np.median(shifted[:, -1] - shifted[:, -2]), 1e-3))


def fold_offsets(gate, offsets, *, used=None, clip=None):
    """A copy of ``gate`` whose outputs pick ``argmax(gate(x) + offsets)`` over ``used``.

    Without ``clip`` the outputs are the shifted logits ``z = gate(x) + offsets``
    (experts not ``used`` get a logit 1000 below the used ones' bias).

    With ``clip = C`` they are the *routing scores* of the int8 index head, two
    fully connected layers on the gate's last features ``h`` (``K`` used experts)::

        d_ij = clip((z_i - z_j) / C, -1, 1)      for used i < j   [M, K(K-1)/2]
        s_i  = sum_j d_ij - sum_j d_ji            (s = -K for unused experts)  [M, N]

    ``s_a - s_b >= 2 d_ab > 0`` whenever ``z_a > z_b``, so ``argmax s = argmax z``
    exactly, for any C. Each ``d_ij`` is one linear map of ``h`` (W_i - W_j) whose
    clip is fused into the FULLY_CONNECTED (no new op), so its int8 output steps are
    2C/255 in logits whatever the range of the logits themselves. Why: gate logits
    can span hundreds (SR gates trained with the relative loss reach -500), and an
    int8 logit tensor over that range has steps of ~2 logits, so near a boundary
    the experts tie and ARG_MAX hands every tie to the lower index (4 points off b
    on the SR compact gate with one int8 logits layer; see WORKSPACE.md).

    If the last layer is a linear Dense with a bias, it is replaced (same input
    features); otherwise the head is appended to the gate's logits.

    Args:
      gate: a Keras model ``[M, H, W, C] -> [M, N]`` logits.
      offsets: ``float[N]`` (e.g. :func:`bmoe_tf.routing.calibrate_offsets`).
      used: ``bool[N]``, experts that may be chosen (default all); the others never are.
      clip: C > 0 (see :func:`routing_clip`) or None.
    Returns:
      a new functional model with the same input; ``gate`` is unchanged.
    """
    n = _num_experts(gate)
    offsets = np.asarray(offsets, np.float32)
    if offsets.shape != (n,) or not np.all(np.isfinite(offsets)):
        raise ValueError(f"offsets must be {n} finite numbers (one per expert), got {offsets}")
    used = np.ones(n, bool) if used is None else np.asarray(used, bool)
    if used.shape != (n,) or not used.any():
        raise ValueError(f"used must be {n} booleans with at least one True, got {used}")
    if clip is not None and not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive number, got {clip}")
    last = gate.layers[-1]
    foldable = (isinstance(last, keras.layers.Dense) and last.use_bias
                and last.activation in (None, keras.activations.linear)
                and isinstance(gate, keras.Model) and getattr(gate, "_is_graph_network", False))
    if foldable:
        clone = keras.models.clone_model(gate)  # flat, so that tfmot can quantize it
        clone.set_weights(gate.get_weights())
        inputs, features = clone.inputs, clone.layers[-2].output
        kernel, bias = last.get_weights()
    else:
        inputs = keras.Input(gate.input_shape[1:], name="frame")
        features = gate(inputs)
        kernel, bias = np.eye(n, dtype=np.float32), np.zeros(n, np.float32)
    bias = bias + offsets
    index = np.flatnonzero(used)
    if clip is None or index.size < 2:
        kernel, bias = kernel.copy(), bias.copy()
        kernel[:, ~used] = 0.0
        bias[~used] = np.min(bias[used]) - 1e3
        if clip is not None:  # one used expert: a constant choice
            kernel[:] = 0.0
            bias = np.where(used, 1.0, -1.0).astype(np.float32)
        head = keras.layers.Dense(n, name="routing")
        outputs = head(features)
        head.set_weights([kernel, bias.astype(np.float32)])
        return keras.Model(inputs, outputs, name=f"{gate.name}_routing")
    pairs = [(i, j) for a, i in enumerate(index) for j in index[a + 1:]]
    pair_kernel = np.stack([kernel[:, i] - kernel[:, j] for i, j in pairs], axis=1) / clip
    pair_bias = np.array([bias[i] - bias[j] for i, j in pairs]) / clip
    combine = np.zeros((len(pairs), n), np.float32)
    for p, (i, j) in enumerate(pairs):
        combine[p, i], combine[p, j] = 1.0, -1.0
    pair_layer = keras.layers.Dense(len(pairs), activation=clip_unit, name="routing_pairs")
    score_layer = keras.layers.Dense(n, name="routing")
    outputs = score_layer(pair_layer(features))
    pair_layer.set_weights([pair_kernel.astype(np.float32), pair_bias.astype(np.float32)])
    score_layer.set_weights([combine, np.where(used, 0.0, -float(index.size)).astype(np.float32)])
    return keras.Model(inputs, outputs, name=f"{gate.name}_routing")


def shift_last_bias(model, delta):
    """Adds ``delta[N]`` to the bias of the last Dense layer of ``model``, in place.

    Works on a float model and on a tfmot QAT model (whose last layer is a
    ``QuantizeWrapperV2`` around the Dense; its output range moves with the bias).
    """
    delta = np.asarray(delta, np.float32)
    last = model.layers[-1]
    dense = getattr(last, "layer", last)
    if not isinstance(dense, keras.layers.Dense) or not dense.use_bias:
        raise ValueError(f"the last layer {last.name!r} is not a Dense layer with a bias")
    dense.bias.assign(dense.bias.numpy() + delta)
    if dense is not last:  # QAT: move the output range along
        for w in last.non_trainable_weights:
            if w.name.endswith("post_activation_min:0"):
                w.assign(w + min(0.0, float(delta.min())))
            elif w.name.endswith("post_activation_max:0"):
                w.assign(w + max(0.0, float(delta.max())))


def add_argmax(gate):
    """``[M, H, W, C] -> int32[M]``: the index of the largest logit (ARG_MAX)."""
    inputs = keras.Input(gate.input_shape[1:], name="frame")
    index = keras.layers.Lambda(lambda z: tf.argmax(z, axis=-1, output_type=tf.int32),
                                name="expert_index")(gate(inputs))
    return keras.Model(inputs, index, name=f"{gate.name}_index")


def qat_finetune(gate, inputs, *, epochs=QAT_EPOCHS, learning_rate=QAT_LEARNING_RATE,
                 batch_size=32, seed=0,
                 verbose=0):
    """Quantization-aware fine-tuning of ``gate`` to reproduce its own float logits.

    Args:
      gate: a functional/Sequential float gate of layers tfmot can quantize.
      inputs: float ``[M, H, W, C]`` (unlabelled task inputs).
      epochs, learning_rate, batch_size, seed: the fine-tuning schedule (defaults
        :data:`QAT_EPOCHS`, :data:`QAT_LEARNING_RATE`: enough steps for the weights to
        move off the grid points PTQ would round them to).
    Returns:
      the quantization-aware Keras model (fake-quant wrappers), ready to convert.
    Raises:
      ValueError: the gate has layers ``quantize_model`` does not support.
    """
    inputs = _check_inputs(inputs, "QAT inputs")
    if epochs < 0 or learning_rate <= 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0, learning_rate > 0, batch_size >= 1; got "
                         f"{epochs}, {learning_rate}, {batch_size}")
    targets = gate.predict(inputs, batch_size=256, verbose=0)
    try:
        model = quantization_aware_model(gate)
    except ValueError as err:
        raise ValueError(f"{err}; use --mode=ptq") from err
    initialize_ranges(model, inputs)
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    if epochs:
        model.fit(inputs, targets, epochs=epochs, batch_size=batch_size, shuffle=True,
                  verbose=verbose)
    return model


def convert_int8(model, representative, *, output="logits", max_samples=500,
                 activations="int8"):
    """Full-integer conversion of a float (or quantization-aware) gate.

    Args:
      model: Keras model ``[M, H, W, C] -> [M, N]`` logits (offsets already folded
        in for ``output="index"``, see :func:`fold_offsets`).
      representative: float ``[M, H, W, C]`` inputs for the activation ranges (the
        first ``max_samples`` are used).
      output: ``"logits"`` (int8 ``[1, N]``) or ``"index"`` (int32 ``[1]``, ARG_MAX).
      activations: ``"int8"``, or ``"int16"`` (16x8: int16 input, activations and
        logits ``[1, N]``; ``output="logits"`` only; not for a quantization-aware gate,
        whose fake-quant ops are int8).
    Returns:
      the ``.tflite`` bytes, input int8 (int16) ``[1, H, W, C]``.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    check_activations(activations, output=output, quantization_aware=is_quantization_aware(model))
    representative = _check_inputs(representative, "representative inputs")[:max_samples]
    if output == "index":
        model = add_argmax(model)

    def dataset():
        for row in representative:
            yield [row[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    if activations == "int16":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int16
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        if output == "logits":
            converter.inference_output_type = tf.int8
    try:
        return bytes(converter.convert())
    except Exception as err:  # the converter raises ConverterError and friends
        raise ValueError(f"the gate cannot be converted to a fully integer ({activations} "
                         "activations) TFLite model: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else err}"
                         ) from err


def check_activations(activations, *, output, quantization_aware=False):
    """The one check of an ``activations`` choice against the output and the gate.

    Raises:
      ValueError: an unknown type; int16 with ``output="index"`` (the TFLite converter
        has no 16x8 ARG_MAX) or with a quantization-aware gate (int8 fake-quant ops).
    """
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if activations == "int16" and output != "logits":
        raise ValueError("int16 activations export with --output=logits: the TFLite converter "
                         f"has no 16x8 ARG_MAX (got --output={output})")
    if activations == "int16" and quantization_aware:
        raise ValueError("a quantization-aware gate (--quantization_aware) was fine-tuned for "
                         "int8 activations; export it with --activations=int8, or export its "
                         "float_gate/ with --activations=int16")


def float_decisions(gate, inputs, offsets, batch_size=256):
    """The float gate's routing one input at a time: ``argmax(gate(x) + offsets)``, int64[M]."""
    logits = gate.predict(_check_inputs(inputs, "inputs"), batch_size=batch_size, verbose=0)
    return np.argmax(logits + np.asarray(offsets, np.float32), axis=-1)
