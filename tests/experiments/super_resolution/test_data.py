"""Super-resolution data pipeline (experiments/super_resolution/data.py) and PSNR (experiments/super_resolution/metrics.py)."""
import hashlib
import math

import numpy as np
import pytest
import skimage.io

from experiments.super_resolution import data as sr_data
from experiments.super_resolution.metrics import mean_psnr_y, psnr_y, rgb_to_y


@pytest.fixture(scope="module")
def bundled():
    return sr_data.load_images("bundled")


# ---------------------------------------------------------------- loading

def test_bundled_images_load_offline_as_float_rgb(bundled):
    assert len(bundled) >= 8
    assert [n for n, _ in bundled] == list(sr_data.BUNDLED_IMAGES)
    for name, img in bundled:
        assert img.dtype == np.float32, name
        assert img.ndim == 3 and img.shape[-1] == 3, name
        assert img.shape[0] >= 64 and img.shape[1] >= 64, name
        assert 0.0 <= img.min() and img.max() <= 1.0, name
        assert img.std() > 0.01, name  # a real photo, not a constant
        # colour: channels are not all equal
        assert np.abs(img[..., 0] - img[..., 1]).max() > 0.05, name
    assert len(sr_data.load_images("bundled", max_images=2)) == 2


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    skimage.io.imsave(tmp_path / "a_rgb.png", rng.integers(0, 256, (70, 80, 3), dtype=np.uint8),
                      check_contrast=False)
    skimage.io.imsave(tmp_path / "b_gray.png", rng.integers(0, 256, (65, 66), dtype=np.uint8),
                      check_contrast=False)
    skimage.io.imsave(tmp_path / "c_rgba.png", rng.integers(0, 256, (64, 64, 4), dtype=np.uint8),
                      check_contrast=False)
    (tmp_path / "notes.txt").write_text("not an image")
    images = sr_data.load_images(f"folder:{tmp_path}")
    assert [n for n, _ in images] == ["a_rgb.png", "b_gray.png", "c_rgba.png"]
    shapes = [img.shape for _, img in images]
    assert shapes == [(70, 80, 3), (65, 66, 3), (64, 64, 3)]
    for _, img in images:
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
    gray = images[1][1]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    assert len(sr_data.load_images(f"folder:{tmp_path}", max_images=1)) == 1


def test_source_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sr_data.load_images(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        sr_data.load_images(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="unknown image source"):
        sr_data.load_images("http://example.com/images")
    with pytest.raises(ValueError, match="unknown image source"):
        sr_data.load_images("bundled:extra")


def test_tfds_source_reads_hr_from_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=3):
        images = sr_data.load_images("tfds:div2k/bicubic_x2")
    assert [n for n, _ in images] == [f"div2k/bicubic_x2:{i}" for i in range(3)]
    for _, img in images:
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 3
        assert 0.0 <= img.min() and img.max() <= 1.0


def test_tfds_unprepared_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="tfds build"):
        sr_data.load_images("tfds:div2k/bicubic_x2", tfds_data_dir=str(tmp_path))


# ---------------------------------------------------------------- parts

def test_cut_and_stitch_round_trip():
    rng = np.random.default_rng(1)
    img = rng.random((200, 330, 3), dtype=np.float32)
    parts, grid = sr_data.cut_parts(img, 64)
    assert grid == (3, 5)
    assert parts.shape == ((200 // 64) * (330 // 64), 64, 64, 3)
    # row-major: part r * cols + c is the block at (r, c)
    for r in range(3):
        for c in range(5):
            np.testing.assert_array_equal(parts[r * 5 + c],
                                          img[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64])
    np.testing.assert_array_equal(sr_data.stitch_parts(parts, grid), img[:192, :320])
    with pytest.raises(ValueError, match="smaller than one"):
        sr_data.cut_parts(img[:63], 64)


def test_part_set_stitches_per_part_arrays_and_round_trips(tmp_path, bundled):
    images = bundled[:2]
    ps = sr_data.make_part_set(images)
    assert ps.parts.dtype == np.float32 and ps.image_index.dtype == np.int32
    assert len(ps) == sum((im.shape[0] // 64) * (im.shape[1] // 64) for _, im in images)
    back = ps.images_from_parts(ps.parts)
    for (name, im), rec, (r, c) in zip(images, back, ps.grids):
        np.testing.assert_array_equal(rec, im[:r * 64, :c * 64])
    maps = ps.images_from_parts(np.arange(len(ps)))
    assert maps[0].shape == ps.grids[0] and maps[1][0, 0] == ps.grids[0][0] * ps.grids[0][1]
    ps.save(tmp_path / "parts.npz")
    loaded = sr_data.PartSet.load(tmp_path / "parts.npz")
    np.testing.assert_array_equal(loaded.parts, ps.parts)
    np.testing.assert_array_equal(loaded.image_index, ps.image_index)
    assert loaded.grids == ps.grids and loaded.names == ps.names


def test_part_dataset_batches():
    parts = np.zeros((10, 8, 8, 3), np.float32)
    batches = list(sr_data.part_dataset((parts, parts), 4, shuffle=True, seed=3))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]


# ---------------------------------------------------------------- splits

NAMES = [f"img{i:02d}" for i in range(12)]


def test_split_is_a_deterministic_partition():
    s = sr_data.split_images(NAMES, seed=0)
    assert set(s) == {"train", "validation", "test"}
    all_names = s["train"] + s["validation"] + s["test"]
    assert sorted(all_names) == sorted(NAMES) and len(all_names) == len(set(all_names))
    # largest remainder of 12 x (0.6, 0.2, 0.2) = (7.2, 2.4, 2.4); tie goes to validation
    assert [len(s[k]) for k in ("train", "validation", "test")] == [7, 3, 2]
    assert sr_data.split_images(NAMES, seed=0) == s
    assert sr_data.split_images(list(reversed(NAMES)), seed=0)["test"] == \
        sorted(s["test"], reverse=True)  # input order does not change the assignment
    assert sr_data.split_images(NAMES, seed=1) != s
    assert sr_data.split_images(NAMES[:9], seed=0) != sr_data.split_images(NAMES[:9], seed=5)


def test_split_small_inputs():
    s = sr_data.split_images(["a", "b", "c"])
    assert sorted(len(v) for v in s.values()) == [1, 1, 1]
    with pytest.raises(ValueError, match="at least 3"):
        sr_data.split_images(["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        sr_data.split_images(["a", "a", "b", "c"])


def test_stereo_pair_never_split(bundled):
    names = [n for n, _ in bundled]
    for seed in range(20):
        s = sr_data.split_images(names, seed=seed)
        where = {n: k for k, v in s.items() for n in v}
        assert where["motorcycle_left"] == where["motorcycle_right"]


def test_no_part_leaks_across_splits(bundled):
    split = sr_data.split_images([n for n, _ in bundled], seed=0)
    by_name = dict(bundled)
    hashes = {}
    for key, names in split.items():
        ps = sr_data.make_part_set([(n, by_name[n]) for n in names])
        assert {ps.names[i] for i in np.unique(ps.image_index)} == set(names)
        hashes[key] = {hashlib.sha1(p.tobytes()).hexdigest() for p in ps.parts}
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]


# ---------------------------------------------------------------- PSNR

def test_rgb_to_y_range():
    assert rgb_to_y(np.zeros(3)) == pytest.approx(16.0)
    assert rgb_to_y(np.ones(3)) == pytest.approx(235.0)
    assert rgb_to_y(np.zeros((2, 5, 4, 3))).shape == (2, 5, 4)


def test_psnr_hand_computed():
    target = np.full((16, 16, 3), 0.5)
    pred = target.copy()
    pred[..., 0] += 10 / 255
    dy = 65.481 * 10 / 255
    expected = 10 * math.log10(255 ** 2 / dy ** 2)  # = 20 log10(255 / 2.5679) ~ 39.94 dB
    assert psnr_y(pred, target) == pytest.approx(expected, abs=1e-9)
    assert psnr_y(pred, target, border=2) == pytest.approx(expected, abs=1e-9)
    assert psnr_y(target, target) == math.inf
    # inputs are clipped to [0, 1] first
    assert psnr_y(np.full((4, 4, 3), 1.5), np.ones((4, 4, 3))) == math.inf


def test_mean_psnr_averages_per_image():
    t = [np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 0.5)]
    p = [t[0] + 1 / 255, t[1] + 8 / 255]
    per = [psnr_y(a, b) for a, b in zip(p, t)]
    assert per[0] - per[1] == pytest.approx(20 * math.log10(8))
    assert mean_psnr_y(p, t) == pytest.approx((per[0] + per[1]) / 2)
    pooled = 10 * math.log10(255 ** 2 / np.mean([(219 / 255) ** 2, (8 * 219 / 255) ** 2]))
    assert mean_psnr_y(p, t) != pytest.approx(pooled)
