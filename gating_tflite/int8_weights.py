"""Gates whose kernels lie on TFLite's int8 grid, so that a 16x8 export keeps their choices.

TFLite's converter stores every kernel as int8, symmetric, per output channel: for
channel ``c`` the scale is ``s_c = max|w_c| / 127`` and the stored value
``q = round(w / s_c)`` (half away from zero) in ``[-127, 127]``. A float gate's logits
move by that rounding; on a gate whose logits span +-160 (the SR compact gate) the move
is larger than the gaps a new b puts at its boundaries (WORKSPACE D77). A gate whose
kernels already are ``q * s_c`` converts with no weight rounding at all (re-quantizing
them gives the same scale and the same ``q``), and with int16 activations
(``python -m gating_tflite.export --activations=int16``) what is left is the activations'
rounding, ~1e-4 of the logits' range (WORKSPACE D78).

* :func:`snap_kernel` -- one kernel onto the grid (pure numpy);
* :func:`snap_gate_weights` -- every kernel of a Keras gate, in place;
* :func:`int8_grid_error` -- how far a gate's kernels are from the grid (0 when on it).

The experiments' ``--int8_weights`` snaps every trained gate before it is saved
(:func:`experiments.gates.train_gate`), so the gate the pipeline evaluates is the one
the sensor runs. Layers: Dense, Conv2D, DepthwiseConv2D, SeparableConv2D (both gates of
:mod:`bmoe_tf.gating`); biases stay float (the converter stores them as int32 / int64
with the product of the input and kernel scales). Any other layer with weights (a
BatchNormalization the converter would fold into a kernel, an Embedding, ...) is a
``ValueError``: its kernels would leave the grid on conversion.
"""
import numpy as np

from bmoe_tf.backend import keras

__all__ = ["snap_kernel", "snap_gate_weights", "int8_grid_error", "INT8_MAX"]

#: The symmetric int8 range of TFLite kernels: [-127, 127] (narrow range).
INT8_MAX = 127


def snap_kernel(kernel, channel_dims=1):
    """``kernel`` rounded to TFLite's per-channel symmetric int8 grid.

    Args:
      kernel: ``float[..., C]`` (a Dense ``[in, out]``, a Conv2D ``[h, w, in, out]``),
        or ``float[..., in, mult]`` with ``channel_dims=2`` (a depthwise kernel, whose
        ``in * mult`` output channels are its last two axes flattened).
      channel_dims: how many trailing axes index the output channel (1 or 2).
    Returns:
      ``float32`` of ``kernel``'s shape: ``q_c * s_c`` with ``s_c = max|w_c| / 127``
      and ``q_c = round(w_c / s_c)`` half away from zero; an all-zero channel stays 0.
    """
    w = np.asarray(kernel, np.float32)
    if channel_dims not in (1, 2) or w.ndim < channel_dims + 1:
        raise ValueError(f"snap_kernel: channel_dims must be 1 or 2 and leave an input "
                         f"axis, got channel_dims={channel_dims} for shape {w.shape}")
    flat = w.reshape(-1, int(np.prod(w.shape[w.ndim - channel_dims:])))
    scale = np.abs(flat).max(axis=0) / np.float32(INT8_MAX)
    safe = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    ratio = flat / safe
    q = np.clip(np.sign(ratio) * np.floor(np.abs(ratio) + 0.5), -INT8_MAX, INT8_MAX)
    return (q * safe).astype(np.float32).reshape(w.shape)


def _kernel_slots(layer):
    """``[(weight index, channel_dims)]`` of ``layer``'s kernels; ``[]`` for layers
    without weights; ValueError for layers with weights this module does not know."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        return [(0, 2), (1, 1)]  # depthwise [h, w, in, mult], pointwise [1, 1, in*mult, out]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [(0, 2)]
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        return [(0, 1)]
    if isinstance(layer, keras.Model):
        raise ValueError(f"int8 weights: nested model {layer.name!r}; pass a flat gate")
    if layer.weights:
        raise ValueError(f"int8 weights: layer {layer.name!r} ({type(layer).__name__}) "
                         f"has weights the int8 grid does not cover; gates may hold "
                         f"Dense, Conv2D, DepthwiseConv2D and SeparableConv2D layers")
    return []


def snap_gate_weights(model):
    """Rounds every kernel of the Keras gate ``model`` to the int8 grid, in place.

    Returns:
      the number of kernels snapped.
    Raises:
      ValueError: a layer with weights other than those of Dense / Conv2D /
        DepthwiseConv2D / SeparableConv2D (nothing is changed then).
    """
    plan = [(layer, _kernel_slots(layer)) for layer in model.layers]
    count = 0
    for layer, slots in plan:
        if not slots:
            continue
        weights = layer.get_weights()
        for index, dims in slots:
            weights[index] = snap_kernel(weights[index], dims)
            count += 1
        layer.set_weights(weights)
    return count


def int8_grid_error(model):
    """The largest ``|w - snap(w)| / s_c`` over every kernel of ``model``, in int8 steps:
    0 for a gate on the grid (up to float32 rounding, ~1e-5), up to 0.5 otherwise."""
    worst = 0.0
    for layer in model.layers:
        slots = _kernel_slots(layer)
        weights = layer.get_weights()
        for index, dims in slots:
            w = np.asarray(weights[index], np.float32)
            flat = w.reshape(-1, int(np.prod(w.shape[w.ndim - dims:])))
            scale = np.abs(flat).max(axis=0) / np.float32(INT8_MAX)
            snapped = snap_kernel(w, dims).reshape(flat.shape)
            steps = np.abs(flat - snapped) / np.where(scale > 0, scale, 1.0)
            worst = max(worst, float(steps.max(initial=0.0)))
    return worst
