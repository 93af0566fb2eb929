"""Super-resolution experts (experiments/super_resolution/models.py): shapes, P_n, export, training."""
import numpy as np
import pytest

from bmoe_tf.backend import keras, tf
from experiments.super_resolution import models

LOW = {4: 16, 3: 21, 2: 32}


def smooth_parts(n, size=64, seed=0):
    """Random low-frequency sinusoid patterns in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        for c in range(3):
            acc = np.zeros((size, size))
            for _ in range(3):
                fx, fy = rng.uniform(-6, 6, 2)
                acc += np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
            out[i, :, :, c] = 0.5 + 0.15 * acc
    return np.clip(out, 0.0, 1.0)


def mse(model, parts, scale):
    pred = model(models.downsample(parts, scale), training=False).numpy()
    return float(np.mean((pred - parts) ** 2))


@pytest.mark.parametrize("family", models.FAMILIES)
@pytest.mark.parametrize("scale", models.SCALES)
def test_shapes_and_residual_init_is_bicubic(family, scale):
    assert models.low_resolution_size(scale) == LOW[scale]
    parts = smooth_parts(3, seed=scale)
    low = models.downsample(parts, scale)
    assert low.dtype == tf.float32 and tuple(low.shape) == (3, LOW[scale], LOW[scale], 3)
    model = models.build_expert_model(family, scale)
    assert tuple(model.input_shape) == (None, LOW[scale], LOW[scale], 3)
    out = model(low).numpy()
    assert out.shape == (3, 64, 64, 3)
    # Last layer starts at zero: the untrained residual expert is exactly bicubic.
    np.testing.assert_allclose(out, models.bicubic_upscale(parts, scale), rtol=0, atol=1e-6)
    plain = models.build_expert_model(family, scale, residual=False)
    assert plain(low).shape == (3, 64, 64, 3)


def test_resampling_is_tf_image_resize_and_compiles():
    parts = np.random.default_rng(0).random((4, 64, 64, 3)).astype(np.float32)
    for scale in models.SCALES:
        low = models.downsample(parts, scale).numpy()
        ref = tf.image.resize(parts, (LOW[scale],) * 2, method="bicubic", antialias=True)
        np.testing.assert_allclose(low, ref.numpy(), atol=1e-5)
        up = tf.image.resize(low, (64, 64), method="bicubic").numpy()
        np.testing.assert_allclose(models.bicubic_upscale(parts, scale), up, atol=1e-5)
        xla = tf.function(lambda x, s=scale: models.downsample(x, s), jit_compile=True)
        np.testing.assert_allclose(xla(parts).numpy(), low, atol=1e-6)
    # integer inputs are cast; a single part works too
    assert models.downsample(np.zeros((64, 64, 3), np.uint8), 2).dtype == tf.float32
    assert tuple(models.downsample(parts[0], 3).shape) == (21, 21, 3)


@pytest.mark.parametrize("family,scale", [("espcn", 4), ("fsrcnn", 3), ("espcn", 2)])
def test_export_load_round_trip(tmp_path, family, scale):
    keras.utils.set_random_seed(scale)
    model = models.build_expert_model(family, scale, residual=False)
    path = models.export_expert(model, str(tmp_path / f"{family}_x{scale}"))
    assert not (tmp_path / f"{family}_x{scale}.tmp").exists()
    expert = models.load_expert(path, scale, family)
    assert expert.name == f"{family}_x{scale}"
    assert expert.data_cost == LOW[scale] * LOW[scale] * 3 * 4
    assert expert.output_shape == (64, 64, 3)
    for n in (1, 5):  # dynamic batch
        parts = smooth_parts(n, seed=n)
        want = model(models.downsample(parts, scale)).numpy()
        np.testing.assert_allclose(expert(parts).numpy(), want, rtol=1e-5, atol=1e-6)
    # exporting again replaces the model
    models.export_expert(model, path)
    assert models.load_expert(path, scale, family).data_cost == LOW[scale] ** 2 * 12


def test_config_round_trip():
    model = models.build_expert_model("fsrcnn", 3)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = models.downsample(smooth_parts(2), 3)
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("residual", [True, False])
def test_training_lowers_mse(residual):
    keras.utils.set_random_seed(0)
    train, val = smooth_parts(64, seed=1), smooth_parts(16, seed=2)
    model = models.build_expert_model("espcn", 2, residual=residual)
    before = mse(model, val, 2)
    history = models.train_expert(model, 2, train, val, epochs=4, batch_size=8, verbose=0)
    assert len(history["loss"]) == 4 and len(history["val_loss"]) == 4
    after = mse(model, val, 2)
    assert after < before
    assert history["val_loss"][-1] == pytest.approx(after, rel=1e-4)


def test_resume_from_checkpoint(tmp_path):
    keras.utils.set_random_seed(0)
    train = smooth_parts(32, seed=3)
    ckpt = str(tmp_path / "ckpt")
    model = models.build_expert_model("espcn", 4)
    history = models.train_expert(model, 4, train, None, epochs=2, batch_size=16,
                                  checkpoint_dir=ckpt, verbose=0)
    assert list(history) == ["loss"] and len(history["loss"]) == 2
    trained = model.get_weights()

    # All epochs done: weights restored, nothing trained.
    fresh = models.build_expert_model("espcn", 4)
    history = models.train_expert(fresh, 4, train, None, epochs=2, batch_size=16,
                                  checkpoint_dir=ckpt, verbose=0)
    assert history == {"loss": []}
    for a, b in zip(fresh.get_weights(), trained):
        np.testing.assert_array_equal(a, b)

    # One more epoch: only epoch 3 runs, continuing the optimizer's step count.
    fresh = models.build_expert_model("espcn", 4)
    history = models.train_expert(fresh, 4, train, None, epochs=3, batch_size=16,
                                  checkpoint_dir=ckpt, verbose=0)
    assert len(history["loss"]) == 1
    assert int(fresh.optimizer.iterations.numpy()) == 3 * 2


def test_unknown_family_or_scale():
    with pytest.raises(ValueError, match="espcn, fsrcnn"):
        models.build_expert_model("srcnn", 2)
    with pytest.raises(ValueError, match="4, 3, 2"):
        models.build_expert_model("espcn", 8)
    with pytest.raises(ValueError, match="4, 3, 2"):
        models.downsample(np.zeros((1, 64, 64, 3), np.float32), 5)
    with pytest.raises(ValueError, match="4, 3, 2"):
        models.low_resolution_size(1)
    with pytest.raises(ValueError, match="espcn, fsrcnn"):
        models.load_expert("/nonexistent", 2, "edsr")
