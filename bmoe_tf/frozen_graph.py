"""Frozen TF1 GraphDefs (``frozen_inference_graph.pb``) as frozen Keras layers.

Many detectors exist only as a TF1 Object Detection API export: a binary
``GraphDef`` with the weights folded into constants, fed through
``image_tensor:0`` (``uint8 [1 or None, H, W, 3]``, pixel values 0..255) and
answering ``detection_boxes:0`` ``[B, 100, 4]`` (normalized ymin, xmin, ymax, xmax),
``detection_scores:0`` ``[B, 100]``, ``detection_classes:0`` ``[B, 100]`` (1-based, as
floats) and ``num_detections:0`` ``[B]``.

:class:`FrozenGraph` imports such a graph once with ``tf.compat.v1.wrap_function`` +
``import_graph_def`` and prunes it to a TF2 function from the input tensor to the
output tensors; as a Keras layer it runs eagerly, inside ``tf.function`` and in
functional models, and has no variables (nothing to train). An expert must return
one tensor, so several outputs go through ``combine``; :func:`detection_outputs`
is the ready ``combine`` for the Object Detection API's four outputs.
:meth:`bmoe_tf.Expert.from_frozen_graph` wraps the whole thing as an expert.
"""
import os

from bmoe_tf.backend import keras, tf

__all__ = ["FrozenGraph", "detection_outputs", "read_graph_def"]


def read_graph_def(path):
    """Reads a ``GraphDef`` from a binary ``.pb`` (or a text ``.pbtxt``).

    Raises:
      ValueError: the file is missing, unreadable, not a GraphDef, or has no nodes
        (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"frozen graph {path!r} does not exist (or is not a file)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"frozen graph {path!r} cannot be read: {err}") from err
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as binary_err:  # noqa: BLE001 - protobuf's DecodeError and friends
        from google.protobuf import text_format

        graph_def = tf.compat.v1.GraphDef()
        try:
            text_format.Merge(data.decode("utf-8"), graph_def)
        except Exception:  # noqa: BLE001
            raise ValueError(
                f"frozen graph {path!r} is not a GraphDef (binary .pb or text .pbtxt): "
                f"{binary_err}") from binary_err
    if not graph_def.node:
        raise ValueError(f"frozen graph {path!r} holds no nodes: not a (non-empty) GraphDef")
    return graph_def


def _tensor_name(name, what):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a tensor name such as 'image_tensor:0', got {name!r}")
    return name if ":" in name else name + ":0"


def _graph_summary(graph, limit=8):
    ops = graph.get_operations()
    placeholders = [op.name for op in ops if op.type == "Placeholder"]
    consumed = {t.op.name for op in ops for t in op.inputs}
    sinks = [op.name for op in ops if op.name not in consumed and op.type not in ("Const", "NoOp")]

    def show(names):
        if not names:
            return "none"
        more = f", ... ({len(names)} in all)" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more

    return f"placeholders: {show(placeholders)}; unconsumed ops (likely outputs): {show(sinks)}"


def detection_outputs(tensors):
    """The Object Detection API's outputs as one ``float32 [B, K, 6]`` tensor.

    Args:
      tensors: ``[boxes [B, K, 4], scores [B, K], classes [B, K], num_detections [B]]``
        (classes 1-based, as the API exports them).
    Returns:
      rows ``(ymin, xmin, ymax, xmax, score, class - 1)``; rows at or beyond
      ``num_detections`` are padding: all zeros with class -1.
    """
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 4:
        got = f"{len(tensors)} tensors" if isinstance(tensors, (list, tuple)) else \
            type(tensors).__name__
        raise ValueError("detection_outputs needs the 4 tensors [detection_boxes, "
                         f"detection_scores, detection_classes, num_detections], got {got}")
    boxes, scores, classes, num = (tf.cast(t, tf.float32) for t in tensors)
    k = tf.shape(scores)[1]
    valid = tf.range(k, dtype=tf.float32)[None, :] < num[:, None]  # [B, K]
    rows = tf.concat([boxes, scores[..., None], classes[..., None] - 1.0], axis=-1)
    padding = tf.concat([tf.zeros_like(boxes), tf.zeros_like(scores)[..., None],
                         -tf.ones_like(classes)[..., None]], axis=-1)
    return tf.where(valid[..., None], rows, padding)


class FrozenGraph(keras.layers.Layer):
    """A frozen TF1 GraphDef as a frozen Keras layer: inputs -> one tensor.

    Args:
      path: the binary ``.pb`` (a text ``.pbtxt`` also loads).
      inputs: the name of the one tensor fed, e.g. ``"image_tensor:0"`` (``":0"`` is
        added to a bare op name).
      outputs: a tensor name or a list of them.
      combine: ``callable(list of output tensors) -> tensor``; needed with several
        outputs (an expert returns one tensor), e.g. :func:`detection_outputs`.
        Default for one output: that output.
      input_dtype: the dtype the graph is fed; None for the input tensor's own dtype
        (given, it must equal it). The layer converts what it receives to it: for an
        integer dtype (``image_tensor`` is ``uint8``) it rounds and saturates, so the
        caller (the expert's P_n) must produce what the graph expects, e.g. pixel
        values in 0..255 at the graph's resolution; nothing is rescaled here.
      **kwargs: for ``keras.layers.Layer`` (``name``, ...); the layer is never trainable.

    A graph whose input has a static batch of 1 (``[1, H, W, 3]``, as some exports)
    is run once per example (``tf.map_fn``) so it takes batches of any size.

    Raises:
      ValueError: the file is missing or not a GraphDef, a tensor name is unknown
        (the message lists the graph's placeholders and likely outputs), several
        outputs without ``combine``, or ``input_dtype`` differs from the graph's.
    """

    def __init__(self, path, inputs, outputs, *, combine=None, input_dtype=None, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.path = os.fspath(path)
        self.input_name = _tensor_name(inputs, "inputs")
        single = isinstance(outputs, str)
        names = [outputs] if single else list(outputs) if outputs is not None else []
        if not names:
            raise ValueError("outputs must name at least one tensor")
        self.output_names = [_tensor_name(n, "outputs") for n in names]
        if combine is not None and not callable(combine):
            raise ValueError(f"combine must be callable, got {type(combine).__name__}")
        if combine is None and len(self.output_names) > 1:
            raise ValueError(
                f"frozen graph {self.path!r}: {len(self.output_names)} outputs "
                f"({', '.join(self.output_names)}) but an expert returns one tensor: pass "
                f"combine= (e.g. bmoe_tf.frozen_graph.detection_outputs for the Object "
                f"Detection API outputs)")
        self.combine = combine
        graph_def = read_graph_def(self.path)

        def _import():
            tf.compat.v1.import_graph_def(graph_def, name="")

        try:
            wrapped = tf.compat.v1.wrap_function(_import, [])
        except Exception as err:  # noqa: BLE001 - import errors of a malformed graph
            raise ValueError(f"frozen graph {self.path!r} cannot be imported: {err}") from err
        graph = wrapped.graph
        unknown = []
        for name in [self.input_name] + self.output_names:
            try:
                graph.as_graph_element(name, allow_tensor=True, allow_operation=False)
            except (KeyError, ValueError, TypeError):
                unknown.append(name)
        if unknown:
            raise ValueError(f"frozen graph {self.path!r} has no tensor "
                             f"{', '.join(repr(n) for n in unknown)}; {_graph_summary(graph)}")
        feed = graph.get_tensor_by_name(self.input_name)
        self.graph_input_dtype = feed.dtype
        if input_dtype is not None and tf.as_dtype(input_dtype) != feed.dtype:
            raise ValueError(
                f"input_dtype {tf.as_dtype(input_dtype).name} differs from the dtype of "
                f"{self.input_name!r} in {self.path!r}: {feed.dtype.name}")
        self.graph_input_shape = feed.shape
        self._batch_of_one = feed.shape.rank is not None and feed.shape.rank > 0 and \
            feed.shape[0] == 1
        self._function = wrapped.prune(feeds=feed, fetches=[
            graph.get_tensor_by_name(n) for n in self.output_names])

    def _feed(self, x):
        x = tf.convert_to_tensor(x)
        target = self.graph_input_dtype
        if x.dtype == target:
            return x
        if target.is_integer and (x.dtype.is_floating or x.dtype.is_integer):
            if x.dtype.is_floating:
                x = tf.round(x)
            return tf.saturate_cast(x, target)
        return tf.cast(x, target)

    def call(self, inputs):
        x = self._feed(inputs)
        if self._batch_of_one:
            specs = [tf.TensorSpec(t.shape[1:], t.dtype) for t in self._function.outputs]
            outs = tf.map_fn(lambda e: [o[0] for o in self._function(e[None])], x,
                             fn_output_signature=specs)
        else:
            outs = self._function(x)
        outs = list(outs)
        return outs[0] if self.combine is None else self.combine(outs)

    def get_config(self):
        if self.combine not in (None, detection_outputs):
            raise NotImplementedError(
                "FrozenGraph with a custom combine cannot be serialized; rebuild it from "
                "its path instead")
        return {**super().get_config(), "path": self.path, "inputs": self.input_name,
                "outputs": self.output_names,
                "combine": None if self.combine is None else "detection_outputs"}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("trainable", None)
        if config.get("combine") == "detection_outputs":
            config["combine"] = detection_outputs
        return cls(**config)
