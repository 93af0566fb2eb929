"""The gating model f(x; W_g) of Section IV and its per-input cost C_g.

Section IV-A: "we specify the gating model (i.e. f(x; W_g)) as a single conv-pool
layer followed by a fully connected network ... we use ReLU activated depthwise
separable convolutions [43], and report the per input number of
multiply-accumulate gating operations C_g". Tables III, V and VII give the layers.

Shapes: ``N`` is the number of experts, ``M`` the batch size.

* :func:`build_gate` -- ``[M, H, W, C]`` -> ``[M, N]`` logits: SeparableConv2D (ReLU)
  -> optional AveragePooling2D (VALID) -> Flatten -> Dense+ReLU ... -> Dense(N).
* :func:`paper_gate` -- the three gates of Tables III, V and VII (see
  :data:`PAPER_GATES` and :data:`PAPER_MAC_CAPS`).
* :func:`mac_table` / :func:`count_macs` -- multiply-accumulates per input example
  of any built Keras model, layer by layer (Table III style) and in total.

Padding of the paper gates. The printed tables are not self-consistent: their
convolution costs use a SAME-padded output (detection: 112*112*(3*3*3 + 3*64) =
112*112*219 = 2,747,136), while their flatten sizes use a VALID one (224 -> 111,
7x7 stride 5 pool -> 21x21x64 = 28224). We build with VALID padding so that the
fully connected layers are exactly the printed 28224x1024, 6400x512 and 7744x1024;
``paper_gate(task, padding="same")`` reproduces the printed convolution costs.
"""
import numbers

import numpy as np

from bmoe_tf.backend import keras, tf

__all__ = ["PAPER_GATES", "PAPER_MAC_CAPS", "build_gate", "paper_gate", "compact_gate",
           "count_macs", "mac_table"]

#: ``build_gate`` arguments of the paper's gates (N is passed separately).
#:
#: * ``"detection"`` (Table III): 224x224x3 -> conv 3x3/2 -> 111x111x64 -> avg pool
#:   7x7/5 -> 21x21x64 -> FC 28224x1024 -> FC 1024xN.
#: * ``"super_resolution"`` (Table V): 64x64x3 -> conv 3x3/2 -> 31x31x64 -> avg pool
#:   3x3/3 -> 10x10x64 -> FC 6400x512 -> FC 512xN. Table V prints pool stride 2,
#:   which would give 15x15x64 = 14400 features, not its own 6400; stride 3 gives
#:   the printed 10x10x64 = 6400.
#: * ``"action"`` (Table VII): 24x24x320 temporal modes -> conv 3x3/2 -> 11x11x64
#:   (no pooling) -> FC 7744x1024 -> FC 1024xN.
PAPER_GATES = {
    "detection": dict(input_shape=(224, 224, 3), filters=64, kernel_size=3, strides=2,
                      padding="valid", pool_size=7, pool_strides=5, hidden_units=(1024,)),
    "super_resolution": dict(input_shape=(64, 64, 3), filters=64, kernel_size=3, strides=2,
                             padding="valid", pool_size=3, pool_strides=3, hidden_units=(512,)),
    "action": dict(input_shape=(24, 24, 320), filters=64, kernel_size=3, strides=2,
                   padding="valid", pool_size=None, pool_strides=None, hidden_units=(1024,)),
}

#: The caps on C_g (Mult-Adds per input) stated in Sections IV-B, IV-C and IV-D.
PAPER_MAC_CAPS = {"detection": 1e8, "super_resolution": 1e7, "action": 1e8}

_PADDINGS = ("valid", "same")


# --------------------------------------------------------------------------- #
# Argument checking
# --------------------------------------------------------------------------- #

def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(value, what, minimum=1):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _pair(value, what):
    """An int or a pair of ints, each >= 1, as a 2-tuple."""
    if _is_int(value):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if pair is None or len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{what} must be a positive integer or a pair of positive integers, "
                         f"got {value!r}")
    return tuple(int(v) for v in pair)


def _conv_output_length(length, kernel, stride, padding):
    if padding == "same":
        return -(-length // stride)
    return (length - kernel) // stride + 1 if length >= kernel else 0


# --------------------------------------------------------------------------- #
# The gating model
# --------------------------------------------------------------------------- #

def build_gate(input_shape, num_experts, *, filters=64, kernel_size=3, strides=2, padding="valid",
               pool_size=None, pool_strides=None, hidden_units=(1024,), name="gate"):
    """The gating model f(x; W_g): one conv-pool layer and a fully connected network.

    Layers (``M`` batch, ``N = num_experts``)::

        x                         [M, H, W, C]            (input_shape = (H, W, C))
        SeparableConv2D + ReLU    [M, H1, W1, filters]    depth_multiplier 1
        AveragePooling2D (VALID)  [M, H2, W2, filters]    only if pool_size is given
        Flatten                   [M, H2 * W2 * filters]
        Dense + ReLU, per unit    [M, hidden_units[i]]
        Dense (linear)            [M, N]                  the logits f(x; W_g)

    with ``H1 = floor((H - kh) / sh) + 1`` for ``padding="valid"`` and
    ``H1 = ceil(H / sh)`` for ``"same"``, and ``H2 = floor((H1 - ph) / psh) + 1``.

    Args:
      input_shape: ``(H, W, C)``, positive integers (the flatten size must be static).
      num_experts: ``N >= 2``.
      filters: output channels of the pointwise part of the separable convolution.
      kernel_size, strides: int or ``(h, w)`` of the depthwise convolution.
      padding: ``"valid"`` (the paper gates, see the module docstring) or ``"same"``.
      pool_size: int or ``(h, w)`` of a VALID average pooling, or None for none.
      pool_strides: int or ``(h, w)``; None means ``pool_size`` (Keras' default).
      hidden_units: sizes of the ReLU hidden Dense layers (may be empty; an int is
        one layer).
      name: model name, also the prefix of its layer names.
    Returns:
      A built functional ``keras.Model`` mapping ``float[M, H, W, C]`` to
      ``float[M, N]`` logits.
    Raises:
      ValueError: for a bad argument, naming it.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
        raise ValueError("input_shape must be (height, width, channels) with positive integer "
                         f"dimensions (no batch dimension), got {input_shape!r}")
    height, width, _ = (int(d) for d in shape)
    num_experts = _positive_int(num_experts, "num_experts", minimum=2)
    filters = _positive_int(filters, "filters")
    kernel = _pair(kernel_size, "kernel_size")
    stride = _pair(strides, "strides")
    if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    padding = padding.lower()
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if _is_int(hidden_units):
        hidden_units = (hidden_units,)
    try:
        hidden = tuple(hidden_units)
    except TypeError:
        raise ValueError("hidden_units must be a sequence of positive integers, "
                         f"got {hidden_units!r}") from None
    hidden = tuple(_positive_int(u, f"hidden_units[{i}]") for i, u in enumerate(hidden))

    conv_hw = (_conv_output_length(height, kernel[0], stride[0], padding),
               _conv_output_length(width, kernel[1], stride[1], padding))
    if min(conv_hw) < 1:
        raise ValueError(f"kernel_size {kernel} is larger than the input {height}x{width} "
                         f"with padding={padding!r}")
    if pool_size is None:
        if pool_strides is not None:
            raise ValueError(f"pool_strides={pool_strides!r} given without pool_size")
        pool = None
    else:
        pool = _pair(pool_size, "pool_size")
        pool_stride = pool if pool_strides is None else _pair(pool_strides, "pool_strides")
        if pool[0] > conv_hw[0] or pool[1] > conv_hw[1]:
            raise ValueError(f"pool_size {pool} is larger than the convolution output "
                             f"{conv_hw[0]}x{conv_hw[1]} (input {height}x{width}, kernel "
                             f"{kernel}, strides {stride}, padding={padding!r})")

    inputs = keras.Input(shape=(height, width, shape[2]), name=f"{name}_input")
    x = keras.layers.SeparableConv2D(filters, kernel, strides=stride, padding=padding,
                                     depth_multiplier=1, activation="relu",
                                     name=f"{name}_conv")(inputs)
    if pool is not None:
        x = keras.layers.AveragePooling2D(pool, strides=pool_stride, padding="valid",
                                          name=f"{name}_pool")(x)
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"{name}_fc{i + 1}")(x)
    logits = keras.layers.Dense(num_experts, name=f"{name}_logits")(x)
    return keras.Model(inputs, logits, name=name)


def paper_gate(task, num_experts=3, **overrides):
    """The gating model of Table III, V or VII, built with :func:`build_gate`.

    Args:
      task: ``"detection"`` (Table III), ``"super_resolution"`` (Table V) or
        ``"action"`` (Table VII); see :data:`PAPER_GATES`.
      num_experts: ``N`` (the tables use 3).
      **overrides: any other :func:`build_gate` keyword, e.g. ``padding="same"`` to
        reproduce the printed convolution costs.
    Returns:
      A functional ``keras.Model``: ``float[M, *PAPER_GATES[task]["input_shape"]]``
      -> ``float[M, num_experts]`` logits. With the default VALID padding the
      flatten sizes are 28224, 6400 and 7744 and C_g is 31,602,747, 3,488,795 and
      10,759,488 Mult-Adds for N = 3 (all below :data:`PAPER_MAC_CAPS`).
    Raises:
      ValueError: for an unknown task (listing the allowed ones) or a bad argument.
      TypeError: for an override that is not a :func:`build_gate` keyword.
    """
    if task not in PAPER_GATES:
        raise ValueError(f"unknown task {task!r}; allowed tasks: {sorted(PAPER_GATES)}")
    config = dict(PAPER_GATES[task])
    allowed = set(config) | {"name"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"paper_gate got unexpected keyword(s) {unknown}; "
                        f"allowed: {sorted(allowed)}")
    config.update(overrides)
    return build_gate(num_experts=num_experts, **config)


def compact_gate(input_shape, num_experts, *, filters=(16, 32, 32), hidden_units=32,
                 name="compact_gate"):
    """A gate small enough for a microcontroller (hundreds of kB, not MB).

    The paper gates end in large fully connected layers (Table V's 6400x512 alone
    is 3.3 M weights). The compact family keeps their depthwise-separable
    convolutions but replaces flatten + FC by global average pooling and a small
    head, which also suits the SR task: what a gate needs there is how much
    high-frequency energy a part holds, not where.

    Layers (``M`` batch, ``N = num_experts``)::

        x                                     [M, H, W, C]
        SeparableConv2D 3x3/2 + ReLU, each    [M, ~H/2^k, ~W/2^k, filters[k]]  VALID
        GlobalAveragePooling2D                [M, filters[-1]]
        Dense + ReLU                          [M, hidden_units]
        Dense (linear)                        [M, N]

    Args:
      input_shape: ``(H, W, C)``.
      num_experts: ``N >= 2``.
      filters: channels of each stride-2 separable convolution (at least one).
      hidden_units: size of the hidden layer (0 for none).
    Returns:
      A functional ``keras.Model``: ``float[M, H, W, C]`` -> ``float[M, N]`` logits.
    """
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    num_experts = _positive_int(num_experts, "num_experts", minimum=2)
    if _is_int(filters):
        filters = (filters,)
    filters = tuple(_positive_int(f, f"filters[{i}]") for i, f in enumerate(filters))
    if not filters:
        raise ValueError("filters must name at least one convolution")
    hidden_units = _positive_int(hidden_units, "hidden_units", minimum=0)
    size = min(shape[:2])
    for _ in filters:
        size = _conv_output_length(size, 3, 2, "valid")
    if size < 1:
        raise ValueError(f"{len(filters)} stride-2 convolutions do not fit a "
                         f"{shape[0]}x{shape[1]} input; use fewer filters")
    inputs = keras.Input(shape=shape, name=f"{name}_input")
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.SeparableConv2D(f, 3, strides=2, padding="valid", activation="relu",
                                         name=f"{name}_conv{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name=f"{name}_fc1")(x)
    logits = keras.layers.Dense(num_experts, name=f"{name}_logits")(x)
    return keras.Model(inputs, logits, name=name)


# --------------------------------------------------------------------------- #
# Multiply-accumulate counting
# --------------------------------------------------------------------------- #

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
