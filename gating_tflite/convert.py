"""From a float Keras gate to a fully int8 ``.tflite`` (batch 1, int8 input).

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
import re

import numpy as np

from bmoe_tf.backend import keras, tf

__all__ = ["OUTPUTS", "MODES", "fold_offsets", "add_argmax", "initialize_ranges", "qat_finetune",
           "convert_int8",
           "float_decisions"]

OUTPUTS = ("logits", "index")
MODES = ("ptq", "qat")


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


def fold_offsets(gate, offsets):
    """A copy of ``gate`` whose logits are ``gate(x) + offsets``.

    If the last layer is a linear Dense with a bias, the offsets go into its bias
    (same ops, same size). Otherwise a constant add is appended.

    Args:
      gate: a Keras model ``[M, H, W, C] -> [M, N]`` logits.
      offsets: ``float[N]`` (e.g. :func:`bmoe_tf.routing.calibrate_offsets`).
    Returns:
      a new functional model with the same input; ``gate`` is unchanged.
    """
    n = _num_experts(gate)
    offsets = np.asarray(offsets, np.float32)
    if offsets.shape != (n,) or not np.all(np.isfinite(offsets)):
        raise ValueError(f"offsets must be {n} finite numbers (one per expert), got {offsets}")
    last = gate.layers[-1]
    if (isinstance(last, keras.layers.Dense) and last.use_bias
            and last.activation in (None, keras.activations.linear)
            and isinstance(gate, keras.Model) and getattr(gate, "_is_graph_network", False)):
        clone = keras.models.clone_model(gate)
        clone.set_weights(gate.get_weights())
        kernel, bias = clone.layers[-1].get_weights()
        clone.layers[-1].set_weights([kernel, bias + offsets])
        return clone
    inputs = keras.Input(gate.input_shape[1:], name="frame")
    constant = tf.constant(offsets)
    shifted = keras.layers.Lambda(lambda z: z + constant, name="offsets")(gate(inputs))
    return keras.Model(inputs, shifted, name=f"{gate.name}_offset")


def add_argmax(gate):
    """``[M, H, W, C] -> int32[M]``: the index of the largest logit (ARG_MAX)."""
    inputs = keras.Input(gate.input_shape[1:], name="frame")
    index = keras.layers.Lambda(lambda z: tf.argmax(z, axis=-1, output_type=tf.int32),
                                name="expert_index")(gate(inputs))
    return keras.Model(inputs, index, name=f"{gate.name}_index")


#: Activation-range variables of tfmot's MovingAverageQuantizer and their EMA decay.
_RANGE_VARIABLE = re.compile(r"/(post_activation|output)_(min|max):0$")
#: The input range of the QuantizeLayer (an all-values quantizer: running min/max).
_INPUT_RANGE_VARIABLE = re.compile(r"quantize_layer_(min|max):0$")
_EMA_DECAY = 0.999


def initialize_ranges(model, inputs, passes=3):
    """Sets the activation ranges of a tfmot QAT model to those of ``inputs``.

    tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay
    0.999 per training step, so a short fine-tuning keeps ranges near [-6, 6] and
    quantizes small activations coarsely. One training-mode forward pass updates
    each range to ``0.999 v0 + 0.001 m``; solving for the batch range ``m`` and
    assigning it, layer ranges converge in a few passes (each pass quantizes with
    the previous pass's ranges upstream).
    """
    variables = [w for layer in model.layers for w in layer.non_trainable_weights
                 if _RANGE_VARIABLE.search(w.name)]
    batch = np.asarray(inputs[:512], np.float32)
    for layer in model.layers:
        for w in layer.non_trainable_weights:
            match = _INPUT_RANGE_VARIABLE.search(w.name)
            if match:
                w.assign(min(0.0, float(batch.min())) if match.group(1) == "min"
                         else max(0.0, float(batch.max())))
    batch = tf.constant(batch)
    for _ in range(passes):
        before = [v.numpy().astype(np.float64) for v in variables]
        model(batch, training=True)
        for v, v0 in zip(variables, before):
            v.assign(((v.numpy() - _EMA_DECAY * v0) / (1.0 - _EMA_DECAY)).astype(np.float32))
    # A range of (almost) zero width (e.g. a ReLU that is never active on these
    # inputs) would give a zero quantization scale, which TFLite kernels refuse.
    for low, high in zip(variables[0::2], variables[1::2]):
        if float(high.numpy() - low.numpy()) < 1e-3:
            high.assign(low + 1e-3)


def qat_finetune(gate, inputs, *, epochs=3, learning_rate=1e-5, batch_size=32, seed=0,
                 verbose=0):
    """Quantization-aware fine-tuning of ``gate`` to reproduce its own float logits.

    Args:
      gate: a functional/Sequential float gate of layers tfmot can quantize.
      inputs: float ``[M, H, W, C]`` (unlabelled task inputs).
      epochs, learning_rate, batch_size, seed: the fine-tuning schedule.
    Returns:
      the quantization-aware Keras model (fake-quant wrappers), ready to convert.
    Raises:
      ValueError: the gate has layers ``quantize_model`` does not support.
    """
    import tensorflow_model_optimization as tfmot

    inputs = _check_inputs(inputs, "QAT inputs")
    if epochs < 0 or learning_rate <= 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0, learning_rate > 0, batch_size >= 1; got "
                         f"{epochs}, {learning_rate}, {batch_size}")
    targets = gate.predict(inputs, batch_size=256, verbose=0)
    try:
        model = tfmot.quantization.keras.quantize_model(gate)
    except (ValueError, RuntimeError, TypeError) as err:
        raise ValueError(f"tfmot cannot make this gate quantization-aware ({err}); "
                         "use --mode=ptq") from err
    initialize_ranges(model, inputs)
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    if epochs:
        model.fit(inputs, targets, epochs=epochs, batch_size=batch_size, shuffle=True,
                  verbose=verbose)
    return model


def convert_int8(model, representative, *, output="logits", max_samples=500):
    """Full-integer conversion of a float (or quantization-aware) gate.

    Args:
      model: Keras model ``[M, H, W, C] -> [M, N]`` logits (offsets already folded
        in for ``output="index"``, see :func:`fold_offsets`).
      representative: float ``[M, H, W, C]`` inputs for the activation ranges (the
        first ``max_samples`` are used).
      output: ``"logits"`` (int8 ``[1, N]``) or ``"index"`` (int32 ``[1]``, ARG_MAX).
    Returns:
      the ``.tflite`` bytes, input int8 ``[1, H, W, C]``.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    representative = _check_inputs(representative, "representative inputs")[:max_samples]
    if output == "index":
        model = add_argmax(model)

    def dataset():
        for row in representative:
            yield [row[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    if output == "logits":
        converter.inference_output_type = tf.int8
    try:
        return bytes(converter.convert())
    except Exception as err:  # the converter raises ConverterError and friends
        raise ValueError(f"the gate cannot be converted to a fully int8 TFLite model: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else err}"
                         ) from err


def float_decisions(gate, inputs, offsets, batch_size=256):
    """The float gate's routing one input at a time: ``argmax(gate(x) + offsets)``, int64[M]."""
    logits = gate.predict(_check_inputs(inputs, "inputs"), batch_size=batch_size, verbose=0)
    return np.argmax(logits + np.asarray(offsets, np.float32), axis=-1)
