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


class _Kill(keras.callbacks.Callback):
    """Stops training like a kill after epoch ``after`` (1-based), once it is checkpointed."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt(f"simulated kill after epoch {self.after}")


def test_shuffle_orders_are_those_of_keras_fit_on_a_shuffled_dataset():
    """train_expert trains exactly as ``fit`` on ``shuffle(n, seed).batch`` did before."""
    train = smooth_parts(24, seed=3)
    low = models.downsample(train, 4).numpy()
    keras.utils.set_random_seed(4)
    reference = models.build_expert_model("espcn", 4)
    reference.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    reference.fit(tf.data.Dataset.from_tensor_slices((low, train))
                  .shuffle(24, seed=5, reshuffle_each_iteration=True).batch(8),
                  epochs=3, verbose=0)
    keras.utils.set_random_seed(4)
    model = models.build_expert_model("espcn", 4)
    models.train_expert(model, 4, train, None, epochs=3, batch_size=8, seed=5, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(4)
    orders = models.shuffle_orders(24, 5, 3)
    assert orders.shape == (3, 24)
    assert all(sorted(o) == list(range(24)) for o in orders)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch


def test_resume_from_checkpoint(tmp_path):
    train = smooth_parts(32, seed=3)
    kwargs = dict(epochs=3, batch_size=16, seed=2, verbose=0)
    keras.utils.set_random_seed(0)
    straight = models.build_expert_model("espcn", 4)
    full = models.train_expert(straight, 4, train, None, **kwargs)
    assert list(full) == ["loss", "seconds"] and len(full["loss"]) == 3

    ckpt = str(tmp_path / "ckpt")
    keras.utils.set_random_seed(0)
    killed = models.build_expert_model("espcn", 4)
    with pytest.raises(KeyboardInterrupt):
        models.train_expert(killed, 4, train, None, checkpoint_dir=ckpt, callbacks=[_Kill(2)],
                            **kwargs)
    assert (tmp_path / "ckpt" / "history.json").exists()
    keras.utils.set_random_seed(0)  # as the task does before building each expert
    resumed = models.build_expert_model("espcn", 4)
    resumed.set_weights([w + 1.0 for w in resumed.get_weights()])  # the checkpoint must win
    history = models.train_expert(resumed, 4, train, None, checkpoint_dir=ckpt, **kwargs)
    assert history["loss"] == full["loss"]  # epochs 1-2 from history.json, 3 run again
    assert int(resumed.optimizer.iterations.numpy()) == 3 * 2
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "ckpt").exists()  # removed once trained


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
