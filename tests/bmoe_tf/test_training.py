"""The resumable training loop (bmoe_tf/training.py) on a tiny dense model."""
import json
import os

import numpy as np
import pytest

from bmoe_tf.backend import keras, tf
from bmoe_tf.training import HISTORY_FILE, resumable_fit, saved_epoch

EPOCHS, STEPS, BATCH = 4, 3, 8


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(7, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(x), name="tiny")
    schedule = keras.optimizers.schedules.CosineDecay(0.05, EPOCHS * STEPS, alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    return model


_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(STEPS * BATCH, 5)).astype(np.float32)
Y = (X @ _RNG.normal(size=(5, 1))).astype(np.float32)


def _data(first_epoch):
    """Epoch e: a permutation drawn from e (a function of the epoch only)."""
    order = np.concatenate([np.random.default_rng([9, e]).permutation(len(X))
                            for e in range(first_epoch, EPOCHS)])
    return tf.data.Dataset.from_tensor_slices((X[order], Y[order])).batch(BATCH)


class _Kill(keras.callbacks.Callback):
    """Raises like a kill after epoch ``after`` (1-based), once it is checkpointed."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt(f"simulated kill after epoch {self.after}")


def _fit(model, **kwargs):
    return resumable_fit(model, _data, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0,
                         **kwargs)


def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    straight = _model()
    full = _fit(straight)
    assert list(full) == ["loss", "seconds"] and len(full["loss"]) == EPOCHS
    assert full["loss"][-1] < full["loss"][0]

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), checkpoint_dir=ckpt, callbacks=[_Kill(2)])
    assert saved_epoch(ckpt) == 2
    with open(ckpt / HISTORY_FILE) as fh:
        assert [r["epoch"] for r in json.load(fh)] == [1, 2]

    resumed = _model(seed=5)  # other initial weights: the checkpoint must win
    history = resumable_fit(resumed, _data, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=1,
                            checkpoint_dir=ckpt)
    out = capsys.readouterr().out
    assert f"tiny: resuming after epoch 2 from {ckpt}" in out
    assert "tiny epoch 3/4: loss " in out and "tiny epoch 4/4: loss " in out
    assert "tiny epoch 2/4" not in out
    assert history["loss"] == full["loss"]  # epochs 1-2 from history.json
    assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * STEPS
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not ckpt.exists()  # checkpoint, history.json and the folder: removed


def test_killed_after_the_last_checkpoint_restores_and_trains_nothing(tmp_path):
    straight = _model()
    full = _fit(straight)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):  # after the last checkpoint, before the clean-up
        _fit(_model(), checkpoint_dir=ckpt, callbacks=[_Kill(EPOCHS)])
    assert saved_epoch(ckpt) == EPOCHS

    def refuse(first_epoch):
        raise AssertionError("no data needed: nothing left to train")

    restored = _model(seed=3)
    history = resumable_fit(restored, refuse, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0,
                            checkpoint_dir=ckpt)
    assert history["loss"] == full["loss"]
    for a, b in zip(restored.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not ckpt.exists()


def test_a_dataset_pass_per_epoch_validation_and_tensorboard(tmp_path):
    model = _model()
    one_epoch = tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH)
    history = resumable_fit(model, one_epoch, epochs=2, validation_data=one_epoch,
                            validation_freq=2, tensorboard_dir=tmp_path / "logs",
                            checkpoint_dir=tmp_path / "ckpt", verbose=0)
    assert len(history["loss"]) == 2 and len(history["val_loss"]) == 1
    assert history["val_loss"][0] == pytest.approx(
        model.evaluate(one_epoch, verbose=0), rel=1e-5)
    assert os.listdir(tmp_path / "logs" / "train")
    assert not (tmp_path / "ckpt").exists()


def test_seed_is_set_first():
    resumable_fit(_model(), _data, epochs=1, steps_per_epoch=STEPS, seed=11, verbose=0)
    first = np.random.random()
    keras.utils.set_random_seed(11)
    assert first == np.random.random()


def test_a_resume_at_another_epoch_than_the_data_is_refused(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), checkpoint_dir=ckpt, callbacks=[_Kill(1)])
    # the data is built from epoch 0, but BackupAndRestore resumes at epoch 1
    monkeypatch.setattr("bmoe_tf.training.saved_epoch", lambda directory: 0)
    with pytest.raises(RuntimeError, match="tiny: Keras resumed at epoch 1, the data was "
                                           "prepared from epoch 0"):
        _fit(_model(), checkpoint_dir=ckpt)


def test_bad_arguments_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="compiled keras.Model.*not compiled"):
        resumable_fit(keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)]), _data,
                      epochs=1, steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        resumable_fit(model, _data, epochs=0, steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 2.5"):
        resumable_fit(model, _data, epochs=2.5, steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="needs steps_per_epoch"):
        resumable_fit(model, _data, epochs=1)
    with pytest.raises(ValueError, match="steps_per_epoch goes with data given as a callable"):
        resumable_fit(model, _data(0), epochs=1, steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="data must be a tf.data.Dataset or a callable"):
        resumable_fit(model, (X, Y), epochs=1)
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2, got 3"):
        resumable_fit(model, _data, epochs=1, steps_per_epoch=STEPS, verbose=3)
    with pytest.raises(ValueError, match="validation_freq must be an integer >= 1"):
        resumable_fit(model, _data, epochs=1, steps_per_epoch=STEPS, validation_freq=0)
