"""experiments.action.payloads: each mode's payload, what its expert receives, and Fusion's
bytes as the sum of Temporal's and Spatial's."""
import numpy as np
import pytest

from experiments.action import payloads
from experiments.action.experts import pack, preprocess
from experiments.action.video import compressed_mv_bytes

SHAPES = dict(mv_frames=3, rgb_frames=2, frame_size=32)


def _clips(m=4, seed=0, smooth=False):
    rng = np.random.default_rng(seed)
    mv = rng.integers(-60, 60, size=(m, 3, 24, 24, 2)) * 0.25  # quarter-pel, as decoded
    mv[0, 0, 0, 0, 0] = 40.0  # beyond int8 quarter-pel: clipped to 31.75
    rgb = rng.integers(0, 256, size=(m, 2, 32, 32, 3))
    if smooth:  # a photo-like frame: gradients and a little noise
        ramp = np.linspace(0, 200, 32)
        rgb = ramp[:, None, None] + ramp[None, :, None] * 0.2 + rgb * 0.1
    return mv.astype(np.float32), np.clip(rgb, 0, 255).astype(np.uint8)


def _round_trip(mode, image_codec="png", smooth=False):
    from bmoe_tf.payload import round_trip

    mv, rgb = _clips(smooth=smooth)
    x = preprocess(pack(mv, rgb), mode, **SHAPES).numpy()
    codec = payloads.mode_codec(mode, image_codec, **SHAPES)
    buf = payloads.to_payload(mode, **SHAPES)(x)
    decoded, sizes = round_trip(codec, buf)
    return x, payloads.from_payload(mode, **SHAPES)(decoded), sizes, (mv, rgb)


@pytest.mark.parametrize("mode", ["temporal", "spatial", "fusion"])
def test_lossless_codecs_give_the_expert_its_input_back(mode):
    x, received, _, _ = _round_trip(mode)
    expected = x.copy()
    if mode in ("temporal", "fusion"):  # the one vector over int8's quarter-pel range
        flat = expected.reshape(len(x), -1)
        flat[0, 0] = 31.75
    np.testing.assert_allclose(received, expected, atol=1e-6)
    assert received.dtype == np.float32 and received.shape == x.shape


def test_fusion_sends_exactly_the_temporal_and_spatial_payloads():
    sizes = {m: _round_trip(m, "jpeg:90:tables")[2] for m in ("temporal", "spatial", "fusion")}
    np.testing.assert_array_equal(sizes["fusion"], sizes["temporal"] + sizes["spatial"])
    mv, _ = _clips()
    # Temporal: the zlib stream compressed_mv_bytes counts, plus its 2-byte length prefix
    expected = [compressed_mv_bytes(c) + (1 if compressed_mv_bytes(c) < 128 else 2) for c in mv]
    np.testing.assert_array_equal(sizes["temporal"], expected)


def test_jpeg_frames_arrive_within_a_stated_error():
    x, received, sizes, _ = _round_trip("spatial", "jpeg:90:tables", smooth=True)
    # within 8 levels on average (the frames carry +-13 levels of per-channel noise, which
    # JPEG's 4:2:0 chroma subsampling averages away)
    assert np.abs(received - x).mean() < 8.0 / 255
    assert (sizes > 0).all()
