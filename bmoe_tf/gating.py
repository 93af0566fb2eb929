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
  of any built Keras model, layer by layer (Table III style) and in total; they
  live in :mod:`bmoe_tf.macs` and are re-exported here.

Padding of the paper gates. The printed tables are not self-consistent: their
convolution costs use a SAME-padded output (detection: 112*112*(3*3*3 + 3*64) =
112*112*219 = 2,747,136), while their flatten sizes use a VALID one (224 -> 111,
7x7 stride 5 pool -> 21x21x64 = 28224). We build with VALID padding so that the
fully connected layers are exactly the printed 28224x1024, 6400x512 and 7744x1024;
``paper_gate(task, padding="same")`` reproduces the printed convolution costs.
"""
from bmoe_tf.backend import keras
from bmoe_tf.checks import check_count
from bmoe_tf.checks import is_int as _is_int
from bmoe_tf.macs import count_macs, mac_table  # noqa: F401  (re-exported)

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

def _positive_int(value, what, minimum=1):
    return check_count(value, what, minimum=minimum)


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
