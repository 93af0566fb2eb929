"""gating_tflite.model_file: ops, tensor types and quantization read from a .tflite."""
import numpy as np
import pytest

from bmoe_tf.backend import keras, tf
from gating_tflite import model_file
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import SHAPE  # noqa: E402

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]


def test_model_io_and_ops_of_the_exported_gate(exported, tflite_bytes):
    _, report, _ = exported
    (inp,), (out,) = model_file.model_io(tflite_bytes)
    assert inp.as_dict() == report.input and out.as_dict() == report.output_tensor
    assert inp.dtype == "INT8" and inp.shape == (1,) + SHAPE and out.dtype == "INT32"
    assert model_file.model_ops(tflite_bytes) == report.ops
    assert "FLOAT32" not in model_file.tensor_type_names(tflite_bytes)
    q = inp.quantize([0.0, 0.5, 1.0, 9.0])
    assert q.dtype == np.int8 and q[-1] == 127  # saturated
    np.testing.assert_allclose(inp.dequantize(q[:3]), [0.0, 0.5, 1.0], atol=inp.scale)
    with pytest.raises(ValueError, match="not quantized"):
        out.quantize([1.0])


def test_a_float_model_is_not_fully_int8():
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(ValueError, match="not int8"):
        model_file.check_fully_int8(tflite)


def test_corrupt_bytes_are_refused():
    with pytest.raises(ValueError, match="TFL3"):
        model_file.model_ops(b"not a model at all")
    with pytest.raises(ValueError, match="bytes of a .tflite"):
        model_file.model_io(b"abc")
