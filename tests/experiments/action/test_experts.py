"""Action experts (experiments/action/experts.py): packing, export/loading, fusion, training."""
import json
import os
import shutil

import numpy as np
import pytest

from bmoe_tf import Expert
from bmoe_tf.backend import keras, tf
from experiments.action import experts

FT, FS, S, C = 2, 2, 32, 4
SHAPES = {"mv_frames": FT, "rgb_frames": FS, "frame_size": S}


def random_clips(m, ft=FT, fs=FS, s=S, seed=0):
    rng = np.random.default_rng(seed)
    mv = (rng.normal(size=(m, ft, 24, 24, 2)) * 3).astype(np.float16)
    rgb = rng.integers(0, 256, size=(m, fs, s, s, 3), dtype=np.uint8)
    return mv, rgb


def motion_clips(per_class, ft=4, noise=1.0, seed=0):
    """``(mv, labels)`` with Gaussian noise: pan right (u = +2), pan left (u = -2), zoom in
    (divergence, |flow| <= 2 at the border), zoom out (the same flow reversed: only where
    the motion is tells it from zoom in)."""
    rng = np.random.default_rng(seed)
    centres = (np.arange(24) - 11.5) / 11.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    patterns = np.zeros((4, 24, 24, 2))
    patterns[0, ..., 0] = 2.0
    patterns[1, ..., 0] = -2.0
    patterns[2, ..., 0], patterns[2, ..., 1] = 2.0 * xx, 2.0 * yy
    patterns[3] = -patterns[2]
    labels = np.repeat(np.arange(4), per_class)
    rng.shuffle(labels)
    mv = patterns[labels][:, None] + noise * rng.normal(size=(len(labels), ft, 24, 24, 2))
    return mv.astype(np.float16), labels.astype(np.int32)


def test_pack_and_preprocess_round_trip():
    mv, rgb = random_clips(3)
    packed = experts.pack(mv, rgb)
    length = experts.packed_length(FT, FS, S)
    assert length == FT * 24 * 24 * 2 + FS * S * S * 3
    assert packed.dtype == np.float32 and packed.shape == (3, length)
    np.testing.assert_array_equal(packed[1, :FT * 1152], mv[1].astype(np.float32).reshape(-1))
    np.testing.assert_array_equal(packed[2, FT * 1152:],
                                  rgb[2].reshape(-1).astype(np.float32) / np.float32(255))
    t = experts.preprocess(packed, "temporal", **SHAPES)
    s = experts.preprocess(tf.constant(packed), "spatial", **SHAPES)
    f = experts.preprocess(packed, "fusion", **SHAPES)
    np.testing.assert_array_equal(t.numpy(), mv.astype(np.float32))
    np.testing.assert_array_equal(s.numpy(), rgb.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(f.numpy(), packed)
    with pytest.raises(ValueError, match="packed clips must be"):
        experts.preprocess(packed[:, 1:], "temporal", **SHAPES)
    with pytest.raises(ValueError, match="unknown expert kind"):
        experts.preprocess(packed, "audio", **SHAPES)


def _fusion_reference(t_logits, s_logits, w):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    z = (w["temporal_weight"] * log_softmax(t_logits.astype(np.float64))
         + w["spatial_weight"] * log_softmax(s_logits.astype(np.float64)) + np.asarray(w["bias"]))
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _softmax(z):
    return tf.nn.softmax(z).numpy()


def test_export_and_load_round_trip(tmp_path):
    keras.utils.set_random_seed(3)
    temporal = experts.build_temporal(FT, C)
    spatial = experts.build_spatial(FS, S, C)
    weights = {"temporal_weight": 0.7, "spatial_weight": 1.4, "bias": [0.2, -0.1, 0.0, 0.3]}
    fusion = experts.build_fusion(temporal, spatial, weights, FT, FS, S)
    mv, rgb = random_clips(7, seed=1)
    mv32, rgb32 = mv.astype(np.float32), rgb.astype(np.float32) / np.float32(255)
    t_logits = temporal(mv32, training=False).numpy()
    s_logits = spatial(rgb32, training=False).numpy()
    expected = {"temporal": _softmax(t_logits), "spatial": _softmax(s_logits),
                "fusion": fusion(experts.pack(mv, rgb), training=False).numpy()}
    np.testing.assert_allclose(expected["fusion"], _fusion_reference(t_logits, s_logits, weights),
                               atol=1e-5)
    for kind, model in (("temporal", temporal), ("spatial", spatial), ("fusion", fusion)):
        path = experts.export_expert(model, str(tmp_path / kind), kind, **SHAPES)
        assert not os.path.exists(path + ".partial")
        with open(os.path.join(path, "expert.json")) as fh:
            meta = json.load(fh)
        assert meta["kind"] == kind and meta["num_classes"] == C and meta["mv_frames"] == FT
        expert = experts.load_expert(path, name=kind, data_cost=123.0, **SHAPES)
        assert isinstance(expert, Expert) and expert.data_cost == 123.0
        assert expert.output_shape == (C,) and expert.name == kind
        probs = experts.predict_probabilities(expert, mv, rgb, batch_size=3)
        assert probs.dtype == np.float32 and probs.shape == (7, C)
        np.testing.assert_allclose(probs, expected[kind], atol=1e-5)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # the temporal SavedModel's second function: the hidden layer
    features = experts.temporal_features(str(tmp_path / "temporal"), mv, batch_size=4)
    hidden = keras.Model(temporal.inputs, temporal.get_layer("hidden").output)(mv32).numpy()
    assert features.shape == (7, experts.HIDDEN_UNITS) and features.dtype == np.float32
    np.testing.assert_allclose(features, hidden, atol=1e-5)
    with pytest.raises(ValueError, match="features need the temporal"):
        experts.temporal_features(str(tmp_path / "spatial"), mv)
    # the stream networks come back from their exports (logits out), e.g. to build Fusion
    streams = {k: experts.load_stream_model(str(tmp_path / k)) for k in ("temporal", "spatial")}
    for model, original in ((streams["temporal"], temporal), (streams["spatial"], spatial)):
        for a, b in zip(model.get_weights(), original.get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(experts.stream_logits(streams["temporal"], mv, batch_size=3),
                               t_logits, atol=1e-5)
    np.testing.assert_allclose(experts.stream_logits(streams["spatial"], rgb, batch_size=3),
                               s_logits, atol=1e-5)
    np.testing.assert_allclose(experts.stream_logits(streams["spatial"], rgb32), s_logits,
                               atol=1e-5)
    rebuilt = experts.build_fusion(streams["temporal"], streams["spatial"], weights, **SHAPES)
    np.testing.assert_allclose(rebuilt(experts.pack(mv, rgb)).numpy(), expected["fusion"],
                               atol=1e-6)
    with pytest.raises(ValueError, match="fusion.*stream network"):
        experts.load_stream_model(str(tmp_path / "fusion"))

    # not an export, or exported for other shapes: ValueError naming the path
    with pytest.raises(ValueError, match="other clip shapes"):
        experts.load_expert(str(tmp_path / "spatial"), name="s", data_cost=1.0, mv_frames=FT,
                            rgb_frames=FS, frame_size=48)
    broken = str(tmp_path / "broken")
    shutil.copytree(str(tmp_path / "temporal"), broken)
    with open(os.path.join(broken, "expert.json"), "w") as fh:
        json.dump({"kind": "nonsense"}, fh)
    with pytest.raises(ValueError, match="broken"):
        experts.load_expert(broken, name="b", data_cost=1.0, **SHAPES)
    os.remove(os.path.join(broken, "expert.json"))
    with pytest.raises(ValueError, match="broken.*not an exported action expert"):
        experts.load_expert(broken, name="b", data_cost=1.0, **SHAPES)
    with pytest.raises(ValueError, match="not an exported action expert"):
        experts.temporal_features(str(tmp_path / "missing"), mv)


def test_fit_fusion_beats_both_streams():
    rng = np.random.default_rng(0)
    m, c = 600, 6
    y = rng.integers(0, c, m)
    onehot = np.eye(c)[y]
    noise = rng.normal(size=(2, m, c))
    first_half = (y < c // 2)[:, None]
    # temporal informative for classes 0..2, spatial for 3..5; both pure noise elsewhere
    t = np.where(first_half, 4.0 * onehot, 0.0) + noise[0]
    s = np.where(~first_half, 4.0 * onehot, 0.0) + noise[1]
    w = experts.fit_fusion(t, s, y)
    assert json.loads(json.dumps(w)) == w
    assert w["temporal_weight"] >= 0 and w["spatial_weight"] >= 0 and len(w["bias"]) == c
    fused = _fusion_reference(t, s, w).argmax(-1)
    acc = float(np.mean(fused == y))
    best = max(np.mean(t.argmax(-1) == y), np.mean(s.argmax(-1) == y))
    assert acc >= best + 0.2, (acc, best)
    assert abs(acc - w["accuracy"]) < 1e-9 and abs(best - max(w["temporal_accuracy"],
                                                             w["spatial_accuracy"])) < 1e-9
    with pytest.raises(ValueError, match="labels must lie"):
        experts.fit_fusion(t, s, y + c)


def test_temporal_expert_learns_pan_direction_and_zoom():
    mv, y = motion_clips(60, seed=0)
    mv_test, y_test = motion_clips(20, seed=1)
    keras.utils.set_random_seed(0)
    model = experts.build_temporal(4, 4)
    history = experts.train_classifier(model, mv, y, mv_test, y_test, epochs=4, batch_size=32,
                                       learning_rate=2e-3, verbose=0)
    assert len(history["loss"]) == 4 and len(history["val_accuracy"]) == 4
    assert history["loss"][-1] < history["loss"][0]
    pred = model(mv_test.astype(np.float32), training=False).numpy().argmax(-1)
    assert np.mean(pred == y_test) > 0.9, history


class _Interrupt(keras.callbacks.Callback):
    """Kills training after epoch ``after`` (1-based), once its checkpoint is written."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt(f"simulated kill after epoch {self.after}")


@pytest.mark.slow  # ~42 s of make test; resumable_fit's exact resume stays there
# (tests/bmoe_tf/test_training.py)
def test_training_resumes_as_if_never_interrupted(tmp_path):
    mv, y = motion_clips(9, ft=1, seed=2)
    kwargs = {"epochs": 3, "batch_size": 10, "seed": 5, "verbose": 0}

    keras.utils.set_random_seed(1)
    straight = experts.build_temporal(1, 4)
    full = experts.train_classifier(straight, mv, y, **kwargs)

    ckpt = str(tmp_path / "ckpt")
    keras.utils.set_random_seed(1)
    killed = experts.build_temporal(1, 4)
    with pytest.raises(KeyboardInterrupt):
        experts.train_classifier(killed, mv, y, checkpoint_dir=ckpt, callbacks=[_Interrupt(2)],
                                 **kwargs)
    assert os.path.exists(os.path.join(ckpt, "history.json"))

    keras.utils.set_random_seed(99)  # other initial weights: all must come from the checkpoint
    resumed = experts.build_temporal(1, 4)
    history = experts.train_classifier(resumed, mv, y, checkpoint_dir=ckpt, **kwargs)
    assert not os.path.exists(ckpt)  # cleaned up at the end
    assert len(history["loss"]) == 3
    np.testing.assert_allclose(history["loss"], full["loss"], rtol=1e-6)
    np.testing.assert_allclose(history["accuracy"], full["accuracy"], rtol=1e-6)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # killed after the last epoch's checkpoint but before the clean-up: nothing to train
    keras.utils.set_random_seed(1)
    killed = experts.build_temporal(1, 4)
    with pytest.raises(KeyboardInterrupt):
        experts.train_classifier(killed, mv, y, checkpoint_dir=ckpt, callbacks=[_Interrupt(3)],
                                 **kwargs)
    keras.utils.set_random_seed(98)
    restored = experts.build_temporal(1, 4)
    history = experts.train_classifier(restored, mv, y, checkpoint_dir=ckpt, **kwargs)
    assert not os.path.exists(ckpt)
    np.testing.assert_allclose(history["loss"], full["loss"], rtol=1e-6)
    for a, b in zip(restored.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
