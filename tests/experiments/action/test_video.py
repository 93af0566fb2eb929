"""experiments.action.video: libx264 encoding and PyAV motion-vector maps."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from experiments.action.video import (
    MV_GRID,
    DecodedVideo,
    compressed_mv_bytes,
    encode_h264,
    jpeg_bytes,
    rasterise_motion_vectors,
    read_motion_vectors,
)

SIZE = 96
MV_DTYPE = np.dtype({
    "names": ["source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "flags", "motion_x",
              "motion_y", "motion_scale"],
    "formats": ["<i4", "u1", "u1", "<i2", "<i2", "<i2", "<i2", "<u8", "<i4", "<i4", "<u2"]})


def _texture(seed=0, size=160):
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size, 3)), (2.5, 2.5, 0))
    return (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def _panned(dx, dy, n=9, size=SIZE):
    """Frames whose content moves by (dx, dy) px per frame (+x right, +y down)."""
    img, c = _texture(), 32
    return np.stack([img[c - k * dy:c - k * dy + size, c - k * dx:c - k * dx + size]
                     for k in range(n)])


@pytest.fixture(scope="module")
def clip():
    """(frames, H.264 bytes) of content moving 2 px right and 1 px up per frame, keyint 4."""
    frames = _panned(2, -1)
    return frames, encode_h264(frames, keyint=4)


def _interior_median(mv, pict_types):
    p = mv[pict_types == "P"]
    assert len(p) >= 4
    return np.median(p[:, 4:-4, 4:-4].reshape(-1, 2), axis=0)


def test_pan_direction_and_sign(clip):
    frames, data = clip
    video = read_motion_vectors(data)
    assert isinstance(video, DecodedVideo)
    assert video.mv.shape == (len(frames), MV_GRID, MV_GRID, 2) and video.mv.dtype == np.float32
    assert (video.width, video.height) == (SIZE, SIZE)
    np.testing.assert_allclose(_interior_median(video.mv, video.pict_types), [2.0, -1.0], atol=0.3)
    back = read_motion_vectors(encode_h264(_panned(-2, 1)))
    np.testing.assert_allclose(_interior_median(back.mv, back.pict_types), [-2.0, 1.0], atol=0.3)


def test_keyframes_are_intra_with_zero_maps(clip):
    _, data = clip
    video = read_motion_vectors(data)
    expected = np.array(["I" if k % 4 == 0 else "P" for k in range(len(video.mv))])
    np.testing.assert_array_equal(video.pict_types, expected)
    intra = expected == "I"
    assert not video.mv[intra].any()
    assert (video.side_data_bytes[intra] == 0).all() and (video.side_data_bytes[~intra] > 0).all()
    assert video.side_data_bytes.dtype == np.int64


def test_bytes_and_path_agree_and_options(clip, tmp_path):
    frames, _ = clip
    path = tmp_path / "clip.mp4"
    # the file holds the returned bytes (not compared with the fixture's own encode: two
    # encodes of the same frames can differ in a few bytes under load, WORKSPACE D40)
    data = encode_h264(frames, keyint=4, path=path)
    assert path.read_bytes() == data
    from_bytes, from_file = read_motion_vectors(data), read_motion_vectors(path)
    np.testing.assert_array_equal(from_bytes.mv, from_file.mv)
    np.testing.assert_array_equal(from_bytes.pict_types, from_file.pict_types)
    assert from_bytes.frames is None
    few = read_motion_vectors(str(path), max_frames=3, grid=8, keep_frames=True)
    assert few.mv.shape == (3, 8, 8, 2) and len(few.pict_types) == 3
    assert few.frames.dtype == np.uint8 and few.frames.shape == (3, SIZE, SIZE, 3)
    assert np.abs(few.frames.astype(int) - frames[:3]).mean() < 8  # lossy, but the same picture


def _brute_force(vectors, width, height, grid):
    total = np.zeros((height, width, 2))
    count = np.zeros((height, width))
    for b in vectors:
        sign = 1.0 if b["source"] > 0 else -1.0
        m = sign * np.array([b["motion_x"], b["motion_y"]]) / b["motion_scale"]
        x0, y0 = int(b["dst_x"]) - int(b["w"]) // 2, int(b["dst_y"]) - int(b["h"]) // 2
        for y in range(max(y0, 0), min(y0 + int(b["h"]), height)):
            for x in range(max(x0, 0), min(x0 + int(b["w"]), width)):
                total[y, x] += m
                count[y, x] += 1
    field = total / np.maximum(count, 1)[..., None]
    # Exact area average: upsample each pixel grid x grid times, then average H x W blocks.
    fine = np.repeat(np.repeat(field, grid, axis=0), grid, axis=1)
    return fine.reshape(grid, height, grid, width, 2).mean(axis=(1, 3))


def _blocks(rows):
    out = np.zeros(len(rows), MV_DTYPE)
    for i, (source, w, h, dst_x, dst_y, mx, my, scale) in enumerate(rows):
        out[i] = (source, w, h, 0, 0, dst_x, dst_y, 0, mx, my, scale)
    return out


@pytest.mark.parametrize("rows, width, height, grid", [
    # 4-aligned blocks (H.264-like): one crossing the left/top edge, one past the right edge of
    # a 50-px-wide frame, a bi-predicted pair (past + future) on the same block, and gaps.
    ([(-1, 16, 16, 8, 8, -8, 4, 4), (-1, 8, 8, 0, 20, 3, -5, 4), (-1, 16, 8, 48, 4, 6, 2, 2),
      (-1, 8, 8, 28, 20, 4, 4, 4), (1, 8, 8, 28, 20, 8, -8, 4), (1, 4, 4, 38, 26, -3, 1, 1)],
     50, 30, 24),
    # Unaligned blocks (single-pixel step) with a partial overlap, odd frame size, coarse grid.
    ([(-1, 7, 5, 3, 2, 5, -1, 2), (-2, 6, 6, 6, 4, -7, 3, 4), (1, 3, 9, 20, 10, 2, 2, 1)],
     21, 13, 5),
])
def test_rasterise_matches_brute_force(rows, width, height, grid):
    vectors = _blocks(rows)
    got = rasterise_motion_vectors(vectors, width, height, grid)
    assert got.shape == (grid, grid, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, _brute_force(vectors, width, height, grid), atol=1e-5)


def test_rasterise_uniform_field_and_empty():
    # A frame tiled by 16x16 past-reference blocks all pointing 3 px left, 1 px down into the
    # reference: content moved 3 px right and 1 px up everywhere.
    xs, ys = np.meshgrid(np.arange(8, 96, 16), np.arange(8, 64, 16))
    vectors = _blocks([(-1, 16, 16, x, y, -12, 4, 4) for x, y in zip(xs.ravel(), ys.ravel())])
    got = rasterise_motion_vectors(vectors, 96, 64)
    np.testing.assert_allclose(got[..., 0], 3.0, atol=1e-5)
    np.testing.assert_allclose(got[..., 1], -1.0, atol=1e-5)
    assert not rasterise_motion_vectors(np.zeros(0, MV_DTYPE), 96, 64).any()


def test_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="garbage.mp4"):
        read_motion_vectors(garbage)
    with pytest.raises(ValueError, match="<bytes>"):
        read_motion_vectors(b"not a video at all" * 50)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="crop to even"):
        encode_h264(frames[:, :, :15])
    with pytest.raises(ValueError, match="crop to even"):
        encode_h264(frames[:, :15])
    with pytest.raises(ValueError, match="uint8"):
        encode_h264(frames.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_h264(frames[0])
    with pytest.raises(ValueError, match="at least one frame"):
        encode_h264(frames[:0])


def test_byte_counts():
    rng = np.random.default_rng(0)
    zeros = np.zeros((16, MV_GRID, MV_GRID, 2), np.float32)
    noise = rng.uniform(-20, 20, zeros.shape).astype(np.float32)
    assert 0 < compressed_mv_bytes(zeros) < compressed_mv_bytes(noise) / 20
    # Quantised at 0.25 px and clipped to int8: +-1000 px saturates like +-32 px.
    assert compressed_mv_bytes(np.full_like(zeros, 1000.0)) == compressed_mv_bytes(
        np.full_like(zeros, 40.0))
    frames = _panned(1, 0, n=3)
    low, high = jpeg_bytes(frames, quality=30), jpeg_bytes(frames, quality=95)
    assert 0 < low < high
    assert jpeg_bytes(frames) == sum(jpeg_bytes(f[None]) for f in frames)


@pytest.mark.slow  # ~20 s: keeps make test under 15 minutes on 2 cores
def test_encoding_is_identical_across_processes():
    """Two fresh processes encode the same generated clips to the same bitstreams (x264's
    threads pinned: WORKSPACE.md, D40)."""
    import subprocess
    import sys

    script = ("import hashlib\n"
              "from experiments.action import footage, video\n"
              "plans = footage.render_plan(0, dict(experts=24, test=8))['experts']\n"
              "print(' '.join(hashlib.md5(video.encode_h264(footage.render_clip(p, 96), "
              "crf=p.crf, keyint=p.keyint)).hexdigest() for p in plans))\n")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout.split() == runs[1].stdout.split()
    assert len(runs[0].stdout.split()) == 24


def test_rgb_to_yuv420p_bt601_limited_range():
    from experiments.action.video import rgb_to_yuv420p

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = 255                       # top half white, bottom half black
    rgb[2:, :2] = (255, 0, 0)           # bottom-left red
    yuv = rgb_to_yuv420p(rgb)
    assert yuv.shape == (6, 4)
    np.testing.assert_array_equal(yuv[:2], 235)
    np.testing.assert_array_equal(yuv[2:4, :2], 81)     # red: Y = 16 + 65.481
    np.testing.assert_array_equal(yuv[2:4, 2:], 16)
    u = yuv[4:5].reshape(2, 2)          # one row of 4 = the 2x2 chroma plane
    v = yuv[5:6].reshape(2, 2)
    np.testing.assert_array_equal(u[0], 128)            # white
    np.testing.assert_array_equal(v[0], 128)
    assert (u[1, 0], v[1, 0]) == (90, 240)             # red
    assert (u[1, 1], v[1, 1]) == (128, 128)            # black
