"""Frozen, pretrained experts E_n with their preprocessing P_n and data cost d_n.

An :class:`Expert` wraps one of:

* a TF2 SavedModel directory, or a TF Hub handle, loaded with
  ``hub.KerasLayer(path_or_handle, trainable=False)``;
* a Keras layer or model (its weights are frozen: ``trainable = False``);
* a frozen TF1 GraphDef (e.g. an Object Detection API ``frozen_inference_graph.pb``)
  through :meth:`Expert.from_frozen_graph` (a :class:`bmoe_tf.frozen_graph.FrozenGraph`
  layer).

``expert(x)`` computes ``E_n(P_n(x))`` for a batch ``x`` of ``[M, ...]`` raw inputs.
The data cost ``d_n`` is what the sensor must send for one example: by default
the float32 bytes of ``P_n(x)`` (elements x K with K = 4, as the paper counts).

With a payload codec (``codec=``, :mod:`bmoe_tf.payload`) the expert sees what the
server decodes: ``P_n(x) = decode(encode(to_payload(preprocess(x))))``, brought back to
the model's input by ``from_payload``; :meth:`Expert.payload_sizes` gives the bytes of
each input's payload (its per-input cost ``c[i, n]``).
"""
import os

import numpy as np

from bmoe_tf.backend import keras, tf

__all__ = ["Expert", "data_cost_bytes", "check_mixable", "BYTES_PER_FLOAT"]

#: K in the paper: bytes needed to store one floating-point value.
BYTES_PER_FLOAT = 4


def data_cost_bytes(shape, bytes_per_element=BYTES_PER_FLOAT):
    """Bytes of one example of the given per-example shape (no batch axis)."""
    dims = [d if d is None else int(d) for d in shape]
    if any(d is None or d <= 0 for d in dims):
        raise ValueError(f"data cost needs a fully known, positive shape, got {tuple(shape)}")
    return int(np.prod(dims, dtype=np.int64)) * int(bytes_per_element)


def _load(model):
    if isinstance(model, (str, os.PathLike)):
        import tensorflow_hub as hub  # imported lazily: it pulls in a lot

        path = os.fspath(model)
        if os.path.isfile(path) and path.endswith((".pb", ".pbtxt")):
            if os.path.basename(path) in ("saved_model.pb", "saved_model.pbtxt"):
                raise ValueError(f"expert model {path!r} is a SavedModel's graph file: pass its "
                                 f"directory {os.path.dirname(path) or '.'!r}")
            raise ValueError(
                f"expert model {path!r} is a file, not a SavedModel directory; if it is a "
                f"frozen TF1 GraphDef use Expert.from_frozen_graph(path, inputs, outputs, ...)")
        if "://" not in path and not os.path.exists(path):
            raise ValueError(
                f"expert model {path!r} is neither an existing SavedModel directory nor a "
                f"TF Hub URL handle")
        return hub.KerasLayer(path, trainable=False)
    if isinstance(model, keras.layers.Layer):  # FrozenGraph layers included
        model.trainable = False
        return model
    raise ValueError(
        f"expert model must be a SavedModel directory, a TF Hub handle or a Keras "
        f"layer/model, got {type(model).__name__}")


class Expert:
    """One frozen expert of the mixture.

    Args:
      model: SavedModel directory / TF Hub handle (str or path) or Keras layer/model
        (a :class:`bmoe_tf.frozen_graph.FrozenGraph` too; see
        :meth:`from_frozen_graph`).
      preprocess: P_n, a callable ``[M, ...] -> [M, ...]`` applied before the model
        (e.g. a downsample); None for the identity.
      data_cost: d_n in bytes per example; None to use the float32 bytes of P_n(x),
        which needs the raw input shape (see :meth:`resolve`).
      name: a short name (used in metric names and reports).
      input_shape: the raw per-example input shape; when given the expert is
        resolved at once (output spec and data cost known).
      codec: a :class:`bmoe_tf.payload.Codec` (or its name): the expert's input travels
        as that payload and the model sees its decoded value; None: the input as is.
      to_payload: ``numpy [M, ...] -> [M, ...]`` the preprocessed input as the sensor
        holds it (default: float ``[0, 1]`` images to ``uint8``, :func:`payload.to_uint8`).
      from_payload: ``numpy [M, ...] -> float32 [M, ...]`` a decoded payload as the model's
        input (default: ``uint8 / 255``).
    """

    def __init__(self, model, *, preprocess=None, data_cost=None, name=None, input_shape=None,
                 codec=None, to_payload=None, from_payload=None):
        self.model = _load(model)
        if preprocess is not None and not callable(preprocess):
            raise ValueError(f"preprocess must be callable, got {type(preprocess).__name__}")
        self.preprocess = preprocess
        self.codec = None
        if codec is not None:
            from bmoe_tf import payload

            self.codec = payload.make_codec(codec)
        self._to_payload = to_payload
        self._from_payload = from_payload
        if data_cost is not None:
            data_cost = float(data_cost)
            if not np.isfinite(data_cost) or data_cost <= 0:
                raise ValueError(f"data_cost must be a positive number of bytes, got {data_cost}")
        self._data_cost = data_cost
        self._data_cost_given = data_cost is not None
        self.name = name or getattr(self.model, "name", None) or "expert"
        self.input_shape = None
        self.output_shape = None
        self.output_dtype = None
        if input_shape is not None:
            self.resolve(input_shape)

    @classmethod
    def from_frozen_graph(cls, path, inputs, outputs, *, combine=None, input_dtype=None,
                          preprocess=None, data_cost=None, name=None, input_shape=None):
        """An expert from a frozen TF1 GraphDef (``.pb``), e.g. an Object Detection API
        ``frozen_inference_graph.pb``.

        Args:
          path, inputs, outputs, combine, input_dtype: as
            :class:`bmoe_tf.frozen_graph.FrozenGraph`. For the Object Detection API:
            ``inputs="image_tensor:0"``, ``outputs=["detection_boxes:0",
            "detection_scores:0", "detection_classes:0", "num_detections:0"]``,
            ``combine=bmoe_tf.frozen_graph.detection_outputs`` (one ``[M, K, 6]``
            tensor), ``input_dtype=tf.uint8``.
          preprocess: P_n; it must produce what the graph expects (for
            ``image_tensor``: pixel values 0..255 at the expert's resolution R_n; the
            layer rounds and saturates them to uint8).
          data_cost, name, input_shape: as the constructor (d_n is by default the
            float32 bytes of P_n(x), e.g. 3 x R_n x R_n x 4).
        """
        from bmoe_tf.frozen_graph import FrozenGraph  # noqa: PLC0415 - no import cycle

        layer = FrozenGraph(path, inputs, outputs, combine=combine, input_dtype=input_dtype)
        return cls(layer, preprocess=preprocess, data_cost=data_cost, name=name,
                   input_shape=input_shape)

    def _preprocessed(self, x):
        return x if self.preprocess is None else self.preprocess(x)

    def set_payload(self, codec, *, to_payload=None, from_payload=None):
        """Sends this expert's input as a payload from now on (the constructor's ``codec``,
        ``to_payload`` and ``from_payload``; ``codec=None``: the input as is). Returns self."""
        from bmoe_tf import payload

        self.codec = None if codec is None else payload.make_codec(codec)
        self._to_payload, self._from_payload = to_payload, from_payload
        return self

    def _sensor_side(self, y):
        from bmoe_tf import payload

        y = np.asarray(y)
        return self._to_payload(y) if self._to_payload is not None else payload.to_uint8(y)

    def sensor_inputs(self, x) -> np.ndarray:
        """numpy ``[M, ...]``: what the sensor encodes for this expert, ``to_payload(P_n(x))``
        (``x``: raw inputs ``[M, ...]``); ``codec.encode`` of a row is its payload."""
        return self._sensor_side(np.asarray(self._preprocessed(tf.convert_to_tensor(x))))

    def received_inputs(self, decoded) -> np.ndarray:
        """``float32 [M, ...]``: the model's input from decoded payloads ``[M, ...]``
        (``codec.decode`` of each, stacked): what the server feeds the model."""
        if self._from_payload is not None:
            return np.asarray(self._from_payload(decoded), np.float32)
        return np.asarray(decoded).astype(np.float32) / 255.0

    def _received(self, y):
        """numpy: the model's input from the preprocessed batch ``y`` after the payload's
        round trip."""
        from bmoe_tf import payload

        decoded, _ = payload.round_trip(self.codec, self._sensor_side(y))
        if self._from_payload is not None:
            return np.asarray(self._from_payload(decoded), np.float32)
        return (decoded.astype(np.float32) / 255.0).reshape(np.shape(y))

    def _prepare(self, x):
        y = self._preprocessed(x)
        if self.codec is None:
            return y
        out = tf.numpy_function(self._received, [y], tf.float32, stateful=False)
        out.set_shape(y.shape)
        return out

    def payload_sizes(self, x):
        """``int64[M]``: the bytes of each input's payload (``x``: raw inputs ``[M, ...]``);
        without a codec, the data cost of every input."""
        from bmoe_tf import payload

        if self.codec is None:
            return np.full(len(x), int(round(self.data_cost)), np.int64)
        y = self._preprocessed(tf.convert_to_tensor(x))
        return payload.payload_sizes(self.codec, self._sensor_side(y.numpy()))

    def __call__(self, x):
        """``E_n(P_n(x))`` for a batch ``x`` of raw inputs ``[M, ...]``."""
        return self.model(self._prepare(x), training=False)

    def resolve(self, input_shape):
        """Learns the output spec and data cost for raw inputs of ``input_shape``.

        Runs P_n and E_n once on a zero example. Returns self.
        """
        shape = tuple(int(d) for d in input_shape)
        if self.input_shape == shape:
            return self
        probe = tf.zeros((1,) + shape, tf.float32)
        prepared = self._prepare(probe)
        out = self.model(prepared, training=False)
        if not isinstance(out, tf.Tensor):
            raise ValueError(
                f"expert {self.name!r} returns {type(out).__name__}; a mixture needs one "
                f"tensor per expert (wrap the model to return a single tensor)")
        self.input_shape = shape
        self.output_shape = tuple(out.shape[1:])
        self.output_dtype = out.dtype
        if not self._data_cost_given:  # measured for this input shape
            self._data_cost = float(data_cost_bytes(prepared.shape[1:]))
        return self

    @property
    def data_cost(self):
        """d_n in bytes per example (needs :meth:`resolve` unless given)."""
        if self._data_cost is None:
            raise ValueError(
                f"expert {self.name!r} has no data cost yet: pass data_cost=, or "
                f"input_shape= / call resolve(input_shape) so it can measure P_n(x)")
        return self._data_cost

    @property
    def variables(self):
        return list(self.model.variables)

    def __repr__(self):
        cost = "?" if self._data_cost is None else f"{self._data_cost:g} B"
        return f"Expert({self.name!r}, data_cost={cost}, output_shape={self.output_shape})"


def check_mixable(experts, input_shape):
    """Resolves every expert and checks that their outputs can be summed (Eq. 2).

    Returns:
      ``(output_shape, output_dtype)`` shared by all experts.
    Raises:
      ValueError: fewer than two experts, a non-Expert, duplicate names, or
        outputs whose shape or dtype differ.
    """
    experts = list(experts)
    if len(experts) < 2:
        raise ValueError(f"a mixture needs at least 2 experts, got {len(experts)}")
    for e in experts:
        if not isinstance(e, Expert):
            raise ValueError(f"experts must be bmoe_tf.Expert instances, got {type(e).__name__}")
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise ValueError(f"expert names must be unique, got {names}")
    for e in experts:
        e.resolve(input_shape)
    first = experts[0]
    for e in experts[1:]:
        if e.output_shape != first.output_shape or e.output_dtype != first.output_dtype:
            raise ValueError(
                "experts' outputs cannot be mixed: "
                + ", ".join(f"{x.name} -> {x.output_shape} {x.output_dtype.name}" for x in experts)
                + "; every expert must return the same shape and dtype (bring outputs to a "
                "common size in the expert, e.g. resize SR outputs to the target size)")
    return first.output_shape, first.output_dtype
