"""gating_tflite.router_lib: the emitted byte router compiled as a host library makes the
Python ByteController's choices, and an export report's router block rebuilds the exact
controller (same C source) with another target."""
import numpy as np
import pytest

from bmoe_tf.byte_controller import ByteController
from gating_tflite.router_c import router_sources
from gating_tflite.router_lib import CRouter, byte_controller_from_report, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C compiler on this machine")

COSTS = np.array([120.0, 260.0, 640.0])


def _controller(target=None, bucket=None):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 3)) * 0.05
    return ByteController.from_calibration(logits, [0.5, 0.3, 0.2], COSTS, target_bytes=target,
                                           bucket_bytes=bucket, int8_scale=0.0004)


def _report(c):
    return {"output": "logits", "bias": c.bias.tolist(),
            "router": {"step": c.step, "logit_range": c.logit_range, "gap_scale": c.gap_scale,
                       "int8_scale": c.int8_scale, "budget": "bytes (each input's payload)",
                       "initial_offsets": [float(v) for v in
                                           np.where(c.used, c.initial_ticks / c.ticks, 0.0)]}}


@pytest.mark.parametrize("bucket", [None, 2000.0])
def test_compiled_router_makes_the_python_controllers_choices(tmp_path, bucket):
    c = _controller(target=300.0, bucket=bucket)
    router = CRouter.build(str(tmp_path), c)
    rng = np.random.default_rng(2)
    z = rng.integers(-128, 128, size=(1500, 3))
    z[300:500, 2] = 127                                  # a block that wants the dearest
    costs = rng.integers(60, 900, size=(1500, 3))
    got = [router.choose_bytes(a, b) for a, b in zip(z, costs)]
    c.reset()
    want = [c.choose(a.astype(np.int8), b) for a, b in zip(z, costs)]
    assert got == want
    assert router.bytes_sent == c.bytes_sent and router.steps == 1500
    if bucket is not None:
        assert router.waits == c.waits
    with pytest.raises(ValueError, match="hold 3 values"):
        router.choose_bytes([1, 2], [1, 2])


def test_report_block_rebuilds_the_controller_and_its_source():
    c = _controller()
    rebuilt = byte_controller_from_report(_report(c), COSTS, target_bytes=c.target_cost)
    assert router_sources(rebuilt) == router_sources(c)
    other = byte_controller_from_report(_report(c), COSTS, target_bytes=400.0, bucket_bytes=5000)
    assert other.target_cost == 400.0 and other.bucket_bytes == 5000
    assert np.array_equal(other.initial_ticks, c.initial_ticks)


def test_report_without_int8_logits_or_bytes_is_refused():
    c = _controller()
    with pytest.raises(ValueError, match="--output=logits"):
        byte_controller_from_report(dict(_report(c), output="index"), COSTS, target_bytes=1.0)
    bad = _report(c)
    bad["router"]["budget"] = "frequencies b"
    with pytest.raises(ValueError, match="--data_cost=encoded"):
        byte_controller_from_report(bad, COSTS, target_bytes=1.0)
