"""Multiply-accumulates (MACs) per input example of any built Keras model.

* :func:`mac_table` -- one row per leaf layer call (Table III style).
* :func:`count_macs` -- their sum, e.g. C_g of a gating model.

:mod:`bmoe_tf.gating` re-exports both names.
"""
import numpy as np

from bmoe_tf.backend import keras, tf
from bmoe_tf.checks import is_int as _is_int

__all__ = ["count_macs", "mac_table"]


def _sublayers(layer):
    """Direct sub-layers (tf-keras' own traversal; empty for a leaf layer)."""
    return [s for s in layer._flatten_layers(include_self=False, recursive=False)]


def _is_graph_network(layer):
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def _is_symbolic(item):
    if isinstance(item, tf.TensorSpec):
        return True
    try:
        return bool(keras.backend.is_keras_tensor(item))
    except (ValueError, TypeError):
        return False


def _int_shape(tensor):
    return tuple(None if d is None else int(d) for d in tensor.shape)


def _per_example(shapes):
    """Drops the leading (batch) dimension of a shape or a nested structure of shapes."""
    if isinstance(shapes, tuple) and all(d is None or _is_int(d) for d in shapes):
        return shapes[1:]
    if isinstance(shapes, (list, tuple)):
        shapes = [_per_example(s) for s in shapes]
        return shapes[0] if len(shapes) == 1 else shapes
    if isinstance(shapes, dict):
        return {k: _per_example(v) for k, v in shapes.items()}
    return shapes


def _first_shape(shapes, batch_one):
    """The shape of the first tensor of a (possibly nested) structure of shapes.

    ``batch_one`` sets its leading (batch) dimension to 1; traced shapes already
    have batch 1, and keep their leading dimension (a wrapper such as
    TimeDistributed folds time into it).
    """
    first = shapes
    while not (isinstance(first, tuple) and all(d is None or _is_int(d) for d in first)):
        first = first[0] if isinstance(first, (list, tuple)) else next(iter(first.values()))
    return (1,) + tuple(first[1:]) if first and batch_one else first


def _non_channel_size(shape, layer, data_format):
    """Product of the batch-1 shape's dims other than the channel axis."""
    if any(d is None for d in shape):
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has an unknown "
                         f"dimension in shape {shape}; MACs need static shapes")
    dims = list(shape)
    del dims[1 if data_format == "channels_first" else -1]
    return int(np.prod(dims, dtype=np.int64))


def _check_weights(layer, expected):
    known = {id(w) for w in expected if w is not None}
    extra = [w.name for w in layer.weights if id(w) not in known]
    if extra:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has weights {extra} "
                         "that the MAC formula of its base class does not cover")


def _size(variable):
    return int(np.prod(variable.shape.as_list(), dtype=np.int64))


# Layers with weights that do no multiply-accumulates of their own (per-element
# affine maps, folded into the neighbouring convolution at inference).
_ZERO_MAC_WEIGHTED = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)


def _leaf_macs(layer, in_shape, out_shape):
    """MACs of one call of a leaf layer; shapes have batch dimension 1."""
    bias = getattr(layer, "bias", None)
    data_format = getattr(layer, "data_format", "channels_last")
    if isinstance(layer, keras.layers.SeparableConv1D) or isinstance(
            layer, keras.layers.SeparableConv2D):
        _check_weights(layer, [layer.depthwise_kernel, layer.pointwise_kernel, bias])
        positions = _non_channel_size(out_shape, layer, data_format)
        return positions * (_size(layer.depthwise_kernel) + _size(layer.pointwise_kernel))
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        _check_weights(layer, [layer.depthwise_kernel, bias])
        return _non_channel_size(out_shape, layer, data_format) * _size(layer.depthwise_kernel)
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                          keras.layers.Conv3DTranspose)):
        _check_weights(layer, [layer.kernel, bias])
        return _non_channel_size(in_shape, layer, data_format) * _size(layer.kernel)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        _check_weights(layer, [layer.kernel, bias])
        return _non_channel_size(out_shape, layer, data_format) * _size(layer.kernel)
    if isinstance(layer, keras.layers.Dense):
        _check_weights(layer, [layer.kernel, bias])
        return _non_channel_size(out_shape, layer, "channels_last") * _size(layer.kernel)
    if not layer.weights or isinstance(layer, _ZERO_MAC_WEIGHTED):
        return 0
    raise ValueError(f"count_macs does not know the MACs of layer {layer.name!r} "
                     f"({type(layer).__name__}), which has weights; supported: Conv1D/2D/3D "
                     "(and transposed), DepthwiseConv1D/2D, SeparableConv1D/2D, Dense, and "
                     "weightless layers (0 MACs)")


def _row(name, layer, in_shapes, out_shapes, batch_one):
    macs = _leaf_macs(layer, _first_shape(in_shapes, batch_one),
                      _first_shape(out_shapes, batch_one))
    return {"layer": name, "type": type(layer).__name__,
            "input_shape": _per_example(in_shapes), "output_shape": _per_example(out_shapes),
            "macs": int(macs)}


def _graph_rows(model, prefix):
    """Rows of a functional/Sequential model from its nodes' static shapes."""
    in_model = {id(n) for nodes in model._nodes_by_depth.values() for n in nodes}
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for node in layer._inbound_nodes:
            if id(node) not in in_model or node.is_input:
                continue
            name = prefix + layer.name
            if _sublayers(layer):
                node_shapes = [_int_shape(t)[1:] for t in tf.nest.flatten(node.input_tensors)]
                own_shapes = ([_int_shape(t)[1:] for t in layer.inputs]
                              if _is_graph_network(layer) else None)
                if own_shapes == node_shapes:
                    rows.extend(_graph_rows(layer, name + "/"))
                else:
                    rows.extend(_traced_rows(layer, node.call_args, node.call_kwargs, name + "/"))
                continue
            in_shapes = tf.nest.map_structure(_int_shape, node.input_tensors)
            out_shapes = tf.nest.map_structure(_int_shape, node.outputs)
            rows.append(_row(name, layer, in_shapes, out_shapes, batch_one=True))
    return rows


def _leaf_paths(layer, prefix, paths):
    subs = _sublayers(layer)
    if not subs:
        paths.setdefault(id(layer), (layer, prefix.rstrip("/") or layer.name))
    for sub in subs:
        _leaf_paths(sub, prefix + sub.name + "/", paths)
    return paths


def _traced_rows(container, args, kwargs, prefix):
    """Rows of a layer without a static graph, by tracing one call at batch size 1.

    Every leaf layer's ``call`` is wrapped for the duration of a symbolic trace
    (``tf.function.get_concrete_function``; nothing is computed) to record the
    shapes it sees. A leaf called inside control flow (``tf.while_loop``,
    ``tf.cond``, e.g. an RNN-style loop) raises, as its call count is not static.
    """
    flat = tf.nest.flatten((args, kwargs))
    positions, specs = [], []
    for i, item in enumerate(flat):
        if not _is_symbolic(item):
            continue
        shape = _int_shape(item)
        if any(d is None for d in shape[1:]):
            raise ValueError(f"layer {container.name!r} is called on a tensor of shape "
                             f"{shape}; MACs need static non-batch dimensions")
        positions.append(i)
        specs.append(tf.TensorSpec((1,) + shape[1:] if shape else shape, item.dtype))
    if not specs:
        raise ValueError(f"layer {container.name!r}: no input tensors to trace it with")

    paths = _leaf_paths(container, prefix, {})
    records = []
    state = {}

    def make_wrapper(leaf, original):
        def wrapper(*call_args, **call_kwargs):
            if tf.compat.v1.get_default_graph() is not state["graph"]:
                raise ValueError(f"layer {leaf.name!r} is called inside control flow (a loop "
                                 "or a conditional); count_macs cannot count it statically")
            outputs = original(*call_args, **call_kwargs)
            inputs = call_args[0] if call_args else call_kwargs.get("inputs")
            records.append((leaf, tf.nest.map_structure(_int_shape, inputs),
                            tf.nest.map_structure(_int_shape, outputs)))
            return outputs
        return wrapper

    def traced(*tensors):
        state["graph"] = tf.compat.v1.get_default_graph()
        items = list(flat)
        for position, tensor in zip(positions, tensors):
            items[position] = tensor
        call_args, call_kwargs = tf.nest.pack_sequence_as((args, kwargs), items)
        call_kwargs = dict(call_kwargs)
        call_kwargs.setdefault("training", False)
        return container(*call_args, **call_kwargs)

    patched = []
    try:
        for leaf, _ in paths.values():
            leaf.__dict__["call"] = make_wrapper(leaf, leaf.call)
            patched.append(leaf)
        tf.function(traced, autograph=True).get_concrete_function(*specs)
    finally:
        for leaf in patched:
            del leaf.__dict__["call"]
    # Weights used outside a recorded leaf call (a container's own weights, or a cell
    # whose kernels a fused RNN reads directly) would otherwise count as 0 MACs.
    covered = {id(w) for leaf, _, _ in records for w in leaf.weights}
    missed = [w.name for w in container.weights if id(w) not in covered]
    if missed:
        raise ValueError(f"count_macs cannot attribute the weights {missed} of layer "
                         f"{container.name!r} ({type(container).__name__}) to a layer call "
                         "it knows; e.g. weights owned by a container itself, or an RNN cell "
                         "used through a fused kernel")
    return [_row(paths[id(leaf)][1], leaf, in_shapes, out_shapes, batch_one=False)
            for leaf, in_shapes, out_shapes in records]


def _input_specs(layer):
    """``(args, kwargs)`` of TensorSpecs a built non-graph layer was called/built with."""
    if isinstance(layer, keras.Model):
        spec = layer.save_spec(dynamic_batch=True)
        if spec is not None:
            return spec
    shapes = getattr(layer, "_build_input_shape", None)
    if shapes is None:
        raise ValueError(f"layer {layer.name!r} has no known input shape; build it or call it "
                         "on an input first")
    dtype = tf.as_dtype(layer.compute_dtype or "float32")

    def to_spec(s):
        if isinstance(s, tf.TensorShape):
            return tf.TensorSpec(s, dtype)
        if isinstance(s, (list, tuple)) and all(d is None or _is_int(d) for d in s):
            return tf.TensorSpec(tf.TensorShape(s), dtype)
        if isinstance(s, (list, tuple)):
            return type(s)(to_spec(x) for x in s)
        if isinstance(s, dict):
            return {k: to_spec(v) for k, v in s.items()}
        raise ValueError(f"layer {layer.name!r}: cannot read its input shape {shapes!r}")

    return (to_spec(shapes),), {}


def mac_table(model):
    """Per-layer multiply-accumulates per input example (Table III style).

    MACs of one call, ``H_o, W_o`` the output and ``H_i, W_i`` the input size:

    * Conv1D/2D/3D: ``H_o*W_o * kh*kw*(C_in/groups)*C_out``;
    * Conv*Transpose: ``H_i*W_i * kh*kw*C_out*C_in``;
    * DepthwiseConv1D/2D: ``H_o*W_o * kh*kw*C_in*depth_multiplier``;
    * SeparableConv1D/2D: the depthwise part plus the pointwise part
      ``H_o*W_o * C_in*depth_multiplier*C_out``;
    * Dense: ``in * out`` times every leading non-batch dimension;
    * pooling, activations, bias adds, reshapes, BatchNormalization,
      LayerNormalization and every weightless layer: 0.

    Shapes are the static shapes the model was built with. Functional and
    Sequential models are read from their graph; nested models and layers that
    contain layers are recursed into (those without a static graph are traced once
    symbolically at batch size 1). Only leaf layers get rows; a nested leaf is
    named ``outer/inner``. A layer called twice gets two rows.

    Args:
      model: a built ``keras.Model`` or ``keras.layers.Layer``.
    Returns:
      ``list`` of ``{"layer": str, "type": str, "input_shape": tuple,
      "output_shape": tuple, "macs": int}``, in call order, shapes without the
      batch dimension (a list of tuples for a multi-input layer).
    Raises:
      ValueError: for an unbuilt model, an unknown non-batch dimension, or a layer
        with weights whose MACs are not known (named in the message), so that
        counts are never silently wrong.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"mac_table expects a Keras model or layer, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built; build it or call it first")
    if _is_graph_network(model):
        return _graph_rows(model, "")
    args, kwargs = _input_specs(model)
    return _traced_rows(model, args, kwargs, "")


def count_macs(model):
    """Multiply-accumulates per input example of a built model: ``sum`` of :func:`mac_table`.

    Args:
      model: a built ``keras.Model`` or ``keras.layers.Layer``.
    Returns:
      ``int``, e.g. C_g of a gating model (31,602,747 for ``paper_gate("detection")``).
    Raises:
      ValueError: as :func:`mac_table`.
    """
    return int(sum(row["macs"] for row in mac_table(model)))
