"""gating_tflite.convert: offsets folded into the gate, the routing head, int8 conversion."""
import numpy as np
import pytest

from bmoe_tf.backend import keras
from bmoe_tf.gating import compact_gate
from bmoe_tf.routing import calibrate_offsets
from gating_tflite import convert
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import (BIAS, SHAPE, inputs, near_tie_data,  # noqa: E402
                                                near_tie_gate)

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]


def test_offsets_reproduce_b_on_the_calibration_set(gate, data):
    logits = gate.predict(data.calibration, verbose=0)
    offsets = calibrate_offsets(logits, BIAS)
    freq = np.bincount(np.argmax(logits + offsets, 1), minlength=3) / len(logits)
    np.testing.assert_allclose(freq, BIAS, atol=1e-3)
    decisions = convert.float_decisions(gate, data.calibration[:100], offsets)
    np.testing.assert_array_equal(decisions, np.argmax(logits[:100] + offsets, 1))


def test_fold_offsets_shifts_logits_and_keeps_the_gate(gate, data):
    offsets = np.array([1.0, -2.0, 0.5], np.float32)
    folded = convert.fold_offsets(gate, offsets)
    x = data.test[:16]
    np.testing.assert_allclose(folded.predict(x, verbose=0),
                               gate.predict(x, verbose=0) + offsets, rtol=1e-5, atol=1e-5)
    assert len(folded.layers) == len(gate.layers)  # folded into the bias, no extra layer
    with pytest.raises(ValueError, match="one per expert"):
        convert.fold_offsets(gate, [1.0, 2.0])


@pytest.mark.parametrize("clip", [1e-3, 0.5, 50.0])
def test_pairwise_routing_head_keeps_the_argmax_for_any_clip(clip):
    """s_a - s_b >= 2 clip((z_a - z_b)/C) > 0: the float head routes exactly as argmax(z)."""
    keras.utils.set_random_seed(1)
    gate = compact_gate(SHAPE, 4, filters=(8,), hidden_units=8)
    gate.layers[-1].set_weights([w * 40 for w in gate.layers[-1].get_weights()])  # wide logits
    x = inputs(400, 9)
    offsets = np.array([0.5, -1.0, 2.0, -0.2], np.float32)
    used = np.array([True, True, False, True])
    z = gate.predict(x, verbose=0) + offsets
    z[:, ~used] = -np.inf
    head = convert.fold_offsets(gate, offsets, used=used, clip=clip)
    scores = head.predict(x, verbose=0)
    assert [layer.name for layer in head.layers[-2:]] == ["routing_pairs", "routing"]
    assert head.layers[-2].units == 3  # K(K-1)/2 pairs of the 3 used experts
    np.testing.assert_array_equal(np.argmax(scores, 1), np.argmax(z, 1))
    assert np.all(scores[:, 2] == -3.0)  # the unused expert is never chosen


def test_routing_clip_is_the_median_top_two_gap():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, -9.0], [1.0, 0.0, 4.0]])
    assert convert.routing_clip(logits, np.zeros(3), [True, True, True]) == pytest.approx(2.0)
    assert convert.routing_clip(logits, np.zeros(3), [True, True, False]) == pytest.approx(1.0)


def test_convert_int8_rejects_bad_arguments(gate):
    with pytest.raises(ValueError, match="output must be one of"):
        convert.convert_int8(gate, inputs(4, 0), output="softmax")
    with pytest.raises(ValueError, match="non-empty batch"):
        convert.convert_int8(gate, np.zeros((0,) + SHAPE, np.float32))
    bad = inputs(4, 0)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        convert.convert_int8(gate, bad)


def test_int16_activations_round_the_logits_50_times_finer_than_int8():
    """16x8 (D77): int16 input, activations and logits, int8 weights. The near-tie gate's
    weights are exact in int8 (one non-zero per output channel), so what is left is the
    activations' rounding: int8 moves its logits by about one int8 step (pooling, then the
    output), int16 by a fiftieth of that or less."""
    from gating_tflite import interpreters, model_file

    gate, data = near_tie_gate(), near_tie_data()
    x = data.representative  # inside the calibrated ranges (no saturation)
    want = gate.predict(x, verbose=0)
    errors = {}
    for activations in convert.ACTIVATIONS:
        tflite = convert.convert_int8(gate, data.representative, activations=activations)
        (ii,), (oi,) = model_file.model_io(tflite)
        assert ii.dtype == oi.dtype == activations.upper()
        model_file.check_fully_int8(tflite, activations)
        got = oi.dequantize(interpreters.run_tflm(tflite, x, 200_000))
        errors[activations] = (np.abs(got - want).max(), oi.scale)
    (e8, s8), (e16, s16) = errors["int8"], errors["int16"]
    assert s16 < s8 / 100  # symmetric int16 (32767 steps of max|z|) vs asymmetric int8
    assert e16 < e8 / 50 and e8 > s8 / 4  # measured: 1.7e-4 vs 0.0125 (s8 0.0137)
    with pytest.raises(ValueError, match="are not int8"):
        model_file.check_fully_int8(tflite)  # the int16 model is not an int8 one


def test_check_activations_refuses_what_cannot_be_exported():
    convert.check_activations("int16", output="logits")
    with pytest.raises(ValueError, match="activations must be one of"):
        convert.check_activations("int4", output="logits")
    with pytest.raises(ValueError, match="no 16x8 ARG_MAX"):
        convert.check_activations("int16", output="index")
    with pytest.raises(ValueError, match="quantization-aware"):
        convert.check_activations("int16", output="logits", quantization_aware=True)
    convert.check_activations("int8", output="index", quantization_aware=True)


def test_qat_default_schedule_is_the_measured_one():
    """Issue 11: 3 epochs at 1e-5 left QAT worse than PTQ (the weights never moved off
    PTQ's rounding); the defaults are the measured 10 epochs at 1e-4."""
    import inspect

    params = inspect.signature(convert.qat_finetune).parameters
    assert params["epochs"].default == convert.QAT_EPOCHS == 10
    assert params["learning_rate"].default == convert.QAT_LEARNING_RATE == 1e-4
