"""Reading a ``.tflite`` flatbuffer: its ops, tensor types and input quantization.

Uses the schema bindings that ship with the ``tflite-micro`` package, so what is
read is what TFLite Micro will see.
"""
import dataclasses

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

__all__ = ["TensorInfo", "model_ops", "model_io", "tensor_type_names", "check_fully_int8"]

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_NUMPY = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "FLOAT32": np.float32, "BOOL": np.bool_}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One model input or output: ``shape`` (with batch), ``dtype`` name, ``scale`` and
    ``zero_point`` (None when the tensor is not quantized)."""

    name: str
    shape: tuple
    dtype: str
    scale: float | None
    zero_point: int | None

    @property
    def numpy_dtype(self):
        return _NUMPY[self.dtype]

    def quantize(self, values):
        """float values -> this tensor's integer type: ``round(x / scale) + zero_point``,
        saturated (what the sensor does to its frame)."""
        if self.scale is None:
            raise ValueError(f"tensor {self.name!r} ({self.dtype}) is not quantized")
        info = np.iinfo(self.numpy_dtype)
        q = np.round(np.asarray(values, np.float64) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.numpy_dtype)

    def dequantize(self, values):
        if self.scale is None:
            return np.asarray(values)
        return (np.asarray(values, np.float64) - self.zero_point) * self.scale

    def as_dict(self):
        return dataclasses.asdict(self)


def _root(model_bytes):
    if not isinstance(model_bytes, (bytes, bytearray)) or len(model_bytes) < 8:
        raise ValueError("expected the bytes of a .tflite model")
    if bytes(model_bytes[4:8]) != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (file identifier is not 'TFL3')")
    return schema.Model.GetRootAsModel(bytearray(model_bytes), 0)


def model_ops(model_bytes):
    """Builtin op names in order of first use, e.g. ``["CONV_2D", "MEAN", "ARG_MAX"]``.

    Raises:
      ValueError: for a custom op (TFLite Micro needs a registered kernel for it).
    """
    model = _root(model_bytes)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            raise ValueError(f"the model uses the custom op {custom!r}; TFLite Micro has no "
                             "kernel for it (export only builtin ops)")
        names.append(_OP_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    subgraph = model.Subgraphs(0)
    order = []
    for i in range(subgraph.OperatorsLength()):
        name = names[subgraph.Operators(i).OpcodeIndex()]
        if name not in order:
            order.append(name)
    return order


def _tensor_info(subgraph, index):
    tensor = subgraph.Tensors(index)
    q = tensor.Quantization()
    scale = zero_point = None
    if q is not None and q.ScaleLength() == 1:
        scale, zero_point = float(q.Scale(0)), int(q.ZeroPoint(0))
    name = tensor.Name()
    return TensorInfo(name=name.decode() if isinstance(name, bytes) else str(name),
                      shape=tuple(int(d) for d in tensor.ShapeAsNumpy()),
                      dtype=_TYPE_NAMES[tensor.Type()], scale=scale, zero_point=zero_point)


def model_io(model_bytes):
    """``(inputs, outputs)``: lists of :class:`TensorInfo` of the first subgraph."""
    subgraph = _root(model_bytes).Subgraphs(0)
    return ([_tensor_info(subgraph, int(i)) for i in subgraph.InputsAsNumpy()],
            [_tensor_info(subgraph, int(i)) for i in subgraph.OutputsAsNumpy()])


def tensor_type_names(model_bytes):
    """Set of the tensor type names used anywhere in the model (e.g. ``{"INT8", "INT32"}``)."""
    subgraph = _root(model_bytes).Subgraphs(0)
    return {_TYPE_NAMES[subgraph.Tensors(i).Type()] for i in range(subgraph.TensorsLength())}


def check_fully_int8(model_bytes, activations="int8"):
    """Raises ValueError unless the model computes in integers end to end.

    Allowed: int8 activations and weights, int32 biases / indices; with
    ``activations="int16"`` (16x8) int16 inputs, activations and outputs, int64 biases.
    A float tensor means a float kernel (or a QUANTIZE/DEQUANTIZE pair) would run on
    the sensor.
    """
    want = {"int8": "INT8", "int16": "INT16"}.get(activations)
    if want is None:
        raise ValueError(f"activations must be 'int8' or 'int16', got {activations!r}")
    inputs, _ = model_io(model_bytes)
    bad_inputs = [t.name for t in inputs if t.dtype != want]
    if bad_inputs:
        raise ValueError(f"model inputs {bad_inputs} are not {activations}; the sensor feeds "
                         f"{activations} frames")
    types = tensor_type_names(model_bytes)
    floats = sorted(t for t in types if t.startswith("FLOAT"))
    if floats:
        raise ValueError(f"the model is not fully integer: it has {floats} tensors "
                         f"(ops: {model_ops(model_bytes)})")
