"""gating_tflite.convert: offsets folded into the gate, the routing head, int8 conversion."""
import numpy as np
import pytest

from bmoe_tf.backend import keras
from bmoe_tf.gating import compact_gate
from bmoe_tf.routing import calibrate_offsets
from gating_tflite import convert
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import BIAS, SHAPE, inputs  # noqa: E402

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


def test_qat_default_schedule_is_the_measured_one():
    """Issue 11: 3 epochs at 1e-5 left QAT worse than PTQ (the weights never moved off
    PTQ's rounding); the defaults are the measured 10 epochs at 1e-4."""
    import inspect

    params = inspect.signature(convert.qat_finetune).parameters
    assert params["epochs"].default == convert.QAT_EPOCHS == 10
    assert params["learning_rate"].default == convert.QAT_LEARNING_RATE == 1e-4
