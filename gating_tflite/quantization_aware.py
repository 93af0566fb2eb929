"""Rounding-aware gates: a float Keras gate wrapped with tfmot's fake-quant ops.

A quantization-aware (QAT) gate computes in float what its int8 conversion computes
in integers: every weight is rounded to its int8 grid and every activation (the input,
each layer's output, the logits) to the int8 steps of its range on the forward pass.
The pipeline's ``--quantization_aware`` fine-tunes each trained gate this way
(:func:`experiments.gates.train_gate`), so the gate it evaluates is the gate the
sensor runs: the export then converts it without changing it, and the int8 model's
choices are the float gate's up to the few inputs where TFLite's integer arithmetic
rounds differently from the fake-quant ops (WORKSPACE D76).

* :func:`quantization_aware_model` -- a float gate -> its QAT model (ranges set on
  sample inputs);
* :func:`is_quantization_aware` -- whether a Keras model holds fake-quant wrappers;
* :func:`load_gate_model` -- load a gate SavedModel, float or QAT;
* :func:`gate_macs`, :func:`gate_parameters` -- MACs per input and weights of a gate,
  float or QAT (of the layers inside the fake-quant wrappers).

Only Keras layers tfmot knows can be wrapped (Conv2D, SeparableConv2D, Dense, pooling,
Flatten, ...: both gates of :mod:`bmoe_tf.gating`); anything else is a ``ValueError``.
"""
import re

import numpy as np

from bmoe_tf.backend import keras, tf

__all__ = ["quantization_aware_model", "is_quantization_aware", "load_gate_model",
           "quantize_scope", "gate_macs", "gate_parameters", "initialize_ranges",
           "routing_head_config", "clip_unit"]


def clip_unit(x):
    """The index head's pair activation: ``clip(x, -1, 1)``."""
    return tf.clip_by_value(x, -1.0, 1.0)


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


_HEAD_CONFIG = []


def routing_head_config():
    """tfmot QuantizeConfig of the clipped routing head: int8 kernel, one output
    quantizer after the clip (tfmot has no config for a custom activation)."""
    if not _HEAD_CONFIG:
        import tensorflow_model_optimization as tfmot

        qk = tfmot.quantization.keras

        class RoutingHeadQuantizeConfig(qk.QuantizeConfig):
            def get_weights_and_quantizers(self, layer):
                return [(layer.kernel, qk.quantizers.LastValueQuantizer(
                    num_bits=8, symmetric=True, narrow_range=False, per_axis=False))]

            def get_activations_and_quantizers(self, layer):
                return []

            def set_quantize_weights(self, layer, quantize_weights):
                layer.kernel = quantize_weights[0]

            def set_quantize_activations(self, layer, quantize_activations):
                pass

            def get_output_quantizers(self, layer):
                return [qk.quantizers.MovingAverageQuantizer(
                    num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

            def get_config(self):
                return {}

        _HEAD_CONFIG.append(RoutingHeadQuantizeConfig())
    return _HEAD_CONFIG[0]


def quantize_scope():
    """The tfmot scope under which QAT models (and the export's routing head) load."""
    import tensorflow_model_optimization as tfmot

    head = routing_head_config()
    return tfmot.quantization.keras.quantize_scope(
        {type(head).__name__: type(head), "clip_unit": clip_unit})


def quantization_aware_model(gate, sample=None):
    """``gate`` with fake-quant ops (a new model; ``gate`` is unchanged).

    Args:
      gate: a functional or Sequential float Keras gate ``[M, ...] -> [M, N]``.
      sample: float ``[M, ...]`` gate inputs: the activation ranges start at theirs
        (:func:`gating_tflite.initialize_ranges`); None leaves tfmot's
        [-6, 6], which its EMA (decay 0.999 per step) leaves only slowly.
    Returns:
      the QAT Keras model, same input and output shapes, the same weights.
    Raises:
      ValueError: the gate is already quantization-aware, or has layers tfmot cannot
        wrap.
    """
    import tensorflow_model_optimization as tfmot

    if is_quantization_aware(gate):
        raise ValueError(f"gate {gate.name!r} is already quantization-aware")
    qk = tfmot.quantization.keras
    head = routing_head_config()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if getattr(layer, "activation", None) is clip_unit:
            return qk.quantize_annotate_layer(layer, quantize_config=head)
        return qk.quantize_annotate_layer(layer)

    try:
        annotated = keras.models.clone_model(gate, clone_function=annotate)
        with quantize_scope():
            model = qk.quantize_apply(annotated)
    except (ValueError, RuntimeError, TypeError) as err:
        raise ValueError(f"tfmot cannot make gate {gate.name!r} quantization-aware "
                         f"({str(err).strip().splitlines()[0] if str(err).strip() else err})"
                         ) from err
    if sample is not None:
        initialize_ranges(model, sample)
    return model


def is_quantization_aware(model):
    """True when ``model`` holds tfmot wrappers (a QAT model, trained or loaded)."""
    for layer in getattr(model, "layers", []):
        name = type(layer).__name__
        if name.startswith("QuantizeWrapper") or name == "QuantizeLayer":
            return True
    return False


def load_gate_model(path):
    """A gate SavedModel (float or quantization-aware) as a Keras model, uncompiled."""
    with quantize_scope():
        return keras.models.load_model(path, compile=False)


def _wrapped(model):
    """The layers inside a QAT model's wrappers (its QuantizeLayer holds only ranges)."""
    return [layer.layer for layer in model.layers if hasattr(layer, "layer")]


def gate_macs(model):
    """MACs per input (:func:`bmoe_tf.gating.count_macs`), of a float or a QAT gate."""
    from bmoe_tf.gating import count_macs

    if not is_quantization_aware(model):
        return count_macs(model)
    # weightless layers (pooling, flatten) have 0 MACs, and a wrapped one may not know
    # its input shape
    return int(sum(count_macs(wrapper.layer) for wrapper in model.layers
                   if hasattr(wrapper, "layer") and wrapper.trainable_weights))


def gate_parameters(model):
    """Weights of the gate (a QAT gate's activation ranges and step counters, which are
    not trainable, left out)."""
    if not is_quantization_aware(model):
        return int(model.count_params())
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
