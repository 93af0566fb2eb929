"""gating_tflite.int8_weights: kernels on TFLite's int8 grid convert without rounding, so
a 16x8 export keeps the gate's logits to the int16 activations' precision (WORKSPACE D78)."""
import numpy as np
import pytest

from bmoe_tf.backend import keras
from gating_tflite import convert, int8_weights, interpreters, model_file
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import SHAPE  # noqa: E402

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]


def copy_of(gate):
    model = keras.models.clone_model(gate)
    model.set_weights(gate.get_weights())
    return model


def test_snap_kernel_is_the_per_channel_symmetric_grid():
    """Brute force on a Dense kernel: s_c = max|w_c| / 127, round half away from zero."""
    w = np.array([[0.5, -2.0, 0.0], [-1.0, 1.1, 0.0], [0.25, 0.3, 0.0]], np.float32)
    got = int8_weights.snap_kernel(w)
    scales = np.array([1.0, 2.0, 1.0]) / 127
    want = np.stack([np.round(w[:, 0] / scales[0]) * scales[0],
                     np.round(w[:, 1] / scales[1]) * scales[1], np.zeros(3)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[1, 0] == pytest.approx(-1.0) and got[0, 1] == pytest.approx(-2.0)  # 127 steps
    assert got[2, 1] == pytest.approx(19 * 2 / 127)  # 0.3 / (2/127) = 19.05 -> 19
    half = np.array([[2.5, -2.5], [127.0, 127.0], [-0.5, 1.5]], np.float32)  # scale 1 exactly
    np.testing.assert_array_equal(int8_weights.snap_kernel(half),
                                  [[3, -3], [127, 127], [-1, 2]])  # half away from zero
    np.testing.assert_array_equal(int8_weights.snap_kernel(got), got)  # idempotent
    depthwise = np.random.default_rng(0).normal(size=(3, 3, 4, 2)).astype(np.float32)
    snapped = int8_weights.snap_kernel(depthwise, 2)
    for i in range(4):  # one channel per (input, multiplier) pair
        for m in range(2):
            channel = depthwise[:, :, i, m]
            s = np.abs(channel).max() / 127
            np.testing.assert_allclose(snapped[:, :, i, m], np.round(channel / s) * s, rtol=1e-6)
    with pytest.raises(ValueError, match="channel_dims must be 1 or 2"):
        int8_weights.snap_kernel(w, 3)


def _keras_layout(name, gate):
    """The Keras kernel behind a TFLite weight tensor, in TFLite's layout."""
    layer = gate.get_layer(name.split("/")[1])
    if "/depthwise" in name:  # [h, w, in, 1] -> [1, h, w, in] (named depthwise or depthwise1)
        k = layer.depthwise_kernel.numpy()
        return k.reshape(k.shape[:2] + (-1,))[None]
    if isinstance(layer, keras.layers.SeparableConv2D):  # [1, 1, in, out] -> [out, 1, 1, in]
        return layer.pointwise_kernel.numpy().transpose(3, 0, 1, 2)
    return layer.kernel.numpy().T  # Dense [in, out] -> FULLY_CONNECTED [out, in]


def _weight_mismatch(gate, tflite):
    """Largest |dequantized TFLite weight - Keras weight| over every int8 weight tensor,
    relative to the tensor's largest weight."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    worst, seen = 0.0, 0
    for d in it.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] != np.int8 or q["scales"].size < 2:  # activations: one scale
            continue
        shape = [1] * len(d["shape"])
        shape[q["quantized_dimension"]] = -1
        deq = it.get_tensor(d["index"]).astype(np.float64) * q["scales"].reshape(shape)
        want = _keras_layout(d["name"], gate)
        worst = max(worst, float(np.abs(deq - want).max() / np.abs(want).max()))
        seen += 1
    assert seen == 4  # depthwise, pointwise, fc1, logits
    return worst


@pytest.mark.parametrize("activations", convert.ACTIVATIONS)
def test_the_converter_keeps_snapped_kernels_exactly(gate, data, activations):
    """The converter's per-channel int8 weights, dequantized, are the snapped kernels to
    float32 rounding; the trained gate's own kernels are not (up to half a step off)."""
    snapped = copy_of(gate)
    assert int8_weights.snap_gate_weights(snapped) == 4
    assert int8_weights.int8_grid_error(snapped) < 1e-3
    assert int8_weights.int8_grid_error(gate) > 0.3  # measured 0.5: trained weights are anywhere
    for model, bound in ((snapped, 1e-6), (gate, None)):
        tflite = convert.convert_int8(model, data.representative, activations=activations)
        mismatch = _weight_mismatch(model, tflite)
        if bound is None:
            assert mismatch > 1e-3  # about half a step of 1/127
        else:
            assert mismatch < bound


def test_int16_logits_of_a_snapped_gate_follow_it_ten_times_closer(gate, data):
    """What the flag buys: with kernels on the grid, the 16x8 model's logits differ from the
    gate's by the int16 activations' rounding only, far less than the weights' rounding
    moves an unsnapped gate's."""
    x = data.representative  # inside the calibrated ranges (no saturation)
    errors = []
    for model in (gate, copy_of(gate)):
        if model is not gate:
            int8_weights.snap_gate_weights(model)
        tflite = convert.convert_int8(model, data.representative, activations="int16")
        (_,), (oi,) = model_file.model_io(tflite)
        got = oi.dequantize(interpreters.run_tflm(tflite, x, 200_000))
        want = model.predict(x, verbose=0)
        errors.append(np.abs(got - want).max() / np.ptp(want))
    unsnapped, snapped = errors
    assert snapped < unsnapped / 10, errors  # measured 4.3e-5 vs 2.1e-3 of the range
    assert snapped < 1e-3


def test_layers_off_the_grid_are_refused_and_nothing_changes():
    x = keras.Input(SHAPE)
    y = keras.layers.Conv2D(4, 3)(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Flatten()(y)))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="layer 'bn' \\(BatchNormalization\\) has weights"):
        int8_weights.snap_gate_weights(model)
    for w, w0 in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, w0)
