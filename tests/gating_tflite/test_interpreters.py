"""gating_tflite.interpreters: LiteRT and TFLite Micro runs, the smallest arena, op support."""
import numpy as np
import pytest

from gating_tflite import interpreters, model_file
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import SHAPE  # noqa: E402

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]


def test_smallest_arena_is_tight(exported, tflite_bytes):
    _, report, _ = exported
    arena = report.arena_bytes
    assert arena % 16 == 0
    frame = np.zeros((1,) + SHAPE, np.float32)
    assert interpreters.smallest_arena(tflite_bytes, frame) == arena
    interpreters.run_tflm(tflite_bytes, frame, arena)  # runs
    with pytest.raises(interpreters.TFLMError, match="arena"):
        interpreters.run_tflm(tflite_bytes, frame, arena - 64)


def test_litert_and_tflm_agree_and_quantize_like_the_sensor(tflite_bytes, data):
    x = data.test[:50]
    litert = interpreters.run_litert(tflite_bytes, x)
    tflm = interpreters.run_tflm(tflite_bytes, x, 64 * 1024)
    assert litert.shape == tflm.shape == (50,) and litert.dtype == np.int32
    assert np.mean(litert == tflm) >= 0.98 and set(np.unique(tflm)) <= {0, 1, 2}
    (info,), _ = model_file.model_io(tflite_bytes)
    q = interpreters.quantized_inputs(tflite_bytes, x)
    np.testing.assert_array_equal(q, np.clip(np.round(x / info.scale) + info.zero_point,
                                             -128, 127).astype(np.int8))
    assert interpreters.quantized_inputs(tflite_bytes, q) is q  # already int8: unchanged
    with pytest.raises(ValueError, match="do not match the model input"):
        interpreters.quantized_inputs(tflite_bytes, np.zeros((2, 8, 8, 3), np.float32))
    interpreters.check_tflm_support(tflite_bytes)  # supported: returns


def test_an_arena_that_crashes_tflm_is_a_clean_failure():
    """TFLM's wrapper segfaults constructing this MEAN + FULLY_CONNECTED gate with a
    1 KiB arena (it needs ~2 KiB): the probe runs in a child, so it is a TFLMError."""
    from gating_tflite import convert
    from tests.gating_tflite.tflite_fixtures import near_tie_data, near_tie_gate

    data = near_tie_data()
    tflite = convert.convert_int8(near_tie_gate(), data.representative, output="logits")
    assert model_file.model_ops(tflite) == ["MEAN", "FULLY_CONNECTED"]
    arena = interpreters.smallest_arena(tflite, data.test[:1])
    assert 1024 < arena <= 4096
    assert interpreters.run_tflm(tflite, data.test[:3], arena).shape == (3, 3)
    for size in (64, 1024, arena - 16):
        with pytest.raises(interpreters.TFLMError, match=f"arena {size} B"):
            interpreters.run_tflm(tflite, data.test[:3], size)
