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
import numpy as np

from bmoe_tf.backend import keras

__all__ = ["quantization_aware_model", "is_quantization_aware", "load_gate_model",
           "quantize_scope", "gate_macs", "gate_parameters"]


def quantize_scope():
    """The tfmot scope under which QAT models (and the export's routing head) load."""
    import tensorflow_model_optimization as tfmot

    from gating_tflite import convert

    head = convert.routing_head_config()
    return tfmot.quantization.keras.quantize_scope(
        {type(head).__name__: type(head), "clip_unit": convert.clip_unit})


def quantization_aware_model(gate, sample=None):
    """``gate`` with fake-quant ops (a new model; ``gate`` is unchanged).

    Args:
      gate: a functional or Sequential float Keras gate ``[M, ...] -> [M, N]``.
      sample: float ``[M, ...]`` gate inputs: the activation ranges start at theirs
        (:func:`gating_tflite.convert.initialize_ranges`); None leaves tfmot's
        [-6, 6], which its EMA (decay 0.999 per step) leaves only slowly.
    Returns:
      the QAT Keras model, same input and output shapes, the same weights.
    Raises:
      ValueError: the gate is already quantization-aware, or has layers tfmot cannot
        wrap.
    """
    import tensorflow_model_optimization as tfmot

    from gating_tflite import convert

    if is_quantization_aware(gate):
        raise ValueError(f"gate {gate.name!r} is already quantization-aware")
    qk = tfmot.quantization.keras
    head = convert.routing_head_config()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if getattr(layer, "activation", None) is convert.clip_unit:
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
        convert.initialize_ranges(model, sample)
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
