"""experiments.system.sensor: a frame's routing (gate -> payload sizes + framing -> the
compiled router) without sockets, and a sensor process imports no TensorFlow."""
import subprocess
import sys

import numpy as np
import pytest

from bmoe_tf.byte_controller import ByteController
from bmoe_tf.payload import make_codec
from experiments.system import wire
from experiments.system.sensor import FrameRouter
from gating_tflite.router_lib import CRouter, compiler


@pytest.mark.skipif(compiler() is None, reason="no C compiler on this machine")
def test_frame_router_charges_framing_and_matches_the_controller(tmp_path):
    rng = np.random.default_rng(0)
    costs = np.array([150.0, 250.0, 400.0])
    c = ByteController.from_calibration(rng.normal(size=(200, 3)) * 0.1, [0.6, 0.0, 0.4], costs,
                                        target_bytes=300.0, bucket_bytes=6000,
                                        int8_scale=0.001)
    router = CRouter.build(str(tmp_path), c)
    logits = rng.integers(-100, 100, size=(40, 3))
    gate = iter(logits)
    codecs = [make_codec("png"), make_codec("png"), make_codec("jpeg:80")]
    frames = [rng.integers(0, 255, size=(8, 16, 16, 3), dtype=np.uint8) for _ in range(5)]
    fr = FrameRouter(lambda x: next(gate), router, codecs, c.used, head=120)
    rows = []
    for images in frames:
        parts, got = fr.route(np.zeros((8, 4)), [images, images, images])
        assert [p.expert for p in parts] == [r[2] for r in got]
        assert all(p.payload == codecs[p.expert].encode(img) for p, img in zip(parts, images))
        framing = wire.framing_costs(8, 120)
        assert [r[3] for r in got] == [r[1][r[2]] + framing[j] for j, r in enumerate(got)]
        assert all(r[1][1] == 0 for r in got)              # an unused expert is not encoded
        rows += got
    c.reset()
    framing = np.tile(wire.framing_costs(8, 120), 5)
    want = [c.choose(r[0].astype(np.int8), np.where(c.used, r[1] + f, 0))
            for r, f in zip(rows, framing)]
    assert want == [r[2] for r in rows]


def test_a_sensor_process_imports_no_tensorflow():
    code = ("import sys, experiments.system.sensor, bmoe_tf.payload, "
            "gating_tflite.interpreters, gating_tflite.router_lib; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
