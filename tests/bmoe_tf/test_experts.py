"""Expert loading (SavedModel through hub.KerasLayer), data costs, routed inference."""
import os

import numpy as np
import pytest

from bmoe_tf import BiasedMixture, Expert
from bmoe_tf.backend import keras, tf
from bmoe_tf.experts import check_mixable, data_cost_bytes


def test_package_uses_keras_2():
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert keras.__name__.startswith("tf_keras")
    assert keras.__version__.startswith("2.")


def _upsampler(scale):
    return keras.Sequential([keras.Input((8 // scale, 8 // scale, 1)),
                             keras.layers.Conv2D(scale * scale, 3, padding="same"),
                             keras.layers.Lambda(lambda t, s=scale: tf.nn.depth_to_space(t, s))])


def _downsample(scale):
    return lambda x, s=scale: tf.nn.avg_pool2d(x, s, s, "VALID")


def test_saved_model_expert_loads_through_hub_keras_layer(tmp_path):
    model = _upsampler(2)
    path = str(tmp_path / "x2")
    tf.saved_model.save(model, path)
    expert = Expert(path, preprocess=_downsample(2), name="x2", input_shape=(8, 8, 1))
    import tensorflow_hub as hub
    assert isinstance(expert.model, hub.KerasLayer)
    assert not expert.model.trainable
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(expert(x).numpy(), model(_downsample(2)(x)).numpy(), rtol=1e-5)
    assert expert.output_shape == (8, 8, 1)
    assert expert.data_cost == 4 * 4 * 1 * 4  # P_n(x) is 4x4x1 float32


def test_saved_model_experts_train_a_mixture(tmp_path):
    paths = []
    for s in (4, 2):
        paths.append(str(tmp_path / f"x{s}"))
        tf.saved_model.save(_upsampler(s), paths[-1])
    experts = [Expert(p, preprocess=_downsample(s), name=f"x{s}") for p, s in zip(paths, (4, 2))]
    gate = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    mix = BiasedMixture(gate, experts, [0.5, 0.5])
    np.testing.assert_array_equal(mix.data_costs, [2 * 2 * 4, 4 * 4 * 4])
    mix.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype(np.float32)
    hist = mix.fit(x, x, batch_size=8, epochs=1, verbose=0)
    assert hist.history["utility_x4"] == [0.5]
    assert mix.predict(x, batch_size=8, verbose=0).shape == (16, 8, 8, 1)


def test_data_cost_follows_the_input_shape_it_was_resolved_for():
    expert = Expert(_upsampler(2), preprocess=_downsample(2), name="a", input_shape=(8, 8, 1))
    assert expert.data_cost == 4 * 4 * 4
    flat = Expert(keras.Sequential([keras.layers.Lambda(lambda t: 2.0 * t)]), name="f")
    assert flat.resolve((4,)).data_cost == 16
    assert flat.resolve((8,)).data_cost == 32


def test_keras_expert_is_frozen_and_explicit_data_cost_wins():
    model = _upsampler(2)
    expert = Expert(model, preprocess=_downsample(2), data_cost=123, name="a")
    assert not model.trainable and model.trainable_weights == []
    assert expert.data_cost == 123.0


def test_expert_errors():
    with pytest.raises(ValueError, match="neither an existing SavedModel"):
        Expert("/no/such/dir")
    with pytest.raises(ValueError, match="Keras layer"):
        Expert(42)
    with pytest.raises(ValueError, match="positive"):
        Expert(_upsampler(2), data_cost=-1)
    with pytest.raises(ValueError, match="no data cost yet"):
        Expert(_upsampler(2)).data_cost
    a = Expert(_upsampler(2), preprocess=_downsample(2), name="a")
    b = Expert(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 1)]), name="b")
    with pytest.raises(ValueError, match="cannot be mixed"):
        check_mixable([a, b], (8, 8, 1))
    with pytest.raises(ValueError, match="unique"):
        check_mixable([a, a], (8, 8, 1))
    with pytest.raises(ValueError, match="at least 2"):
        check_mixable([a], (8, 8, 1))


def test_data_cost_bytes_matches_the_paper():
    # Table I: d_n = 3 x R_n x R_n x K gives exactly {120, 270, 1080} kB.
    assert data_cost_bytes((100, 100, 3)) == 120_000
    assert data_cost_bytes((150, 150, 3)) == 270_000
    assert data_cost_bytes((300, 300, 3)) == 1_080_000
    assert data_cost_bytes((32, 32, 3), bytes_per_element=1) == 3072
    with pytest.raises(ValueError):
        data_cost_bytes((None, 3))


# --------------------------------------------------------------------------- #
# Routed inference on raw inputs with SavedModel SR experts (issue 7)
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def sr_experts(tmp_path_factory):
    """Untrained ESPCN x4/x3/x2 SavedModels (exactly bicubic), loaded through hub."""
    from experiments.super_resolution.models import build_expert_model, export_expert

    root = tmp_path_factory.mktemp("experts")
    experts = []
    for s in (4, 3, 2):
        path = export_expert(build_expert_model("espcn", s), root / f"espcn_x{s}")
        experts.append(Expert(path, name=f"x{s}", preprocess=lambda x, s=s: tf.image.resize(
            x, (64 // s, 64 // s), antialias=True)))
    return experts


def _sr_gate():
    from bmoe_tf.gating import compact_gate

    keras.utils.set_random_seed(3)
    return compact_gate((64, 64, 3), 3, filters=(4,), hidden_units=0)


@pytest.mark.parametrize("bias", [[0.0, 0.9, 0.1], [1.0, 0.0, 0.0]])
@pytest.mark.parametrize("combine", ["gate", "straight_through"])
def test_routed_inference_with_experts_that_get_no_rows(sr_experts, bias, combine):
    x = np.random.default_rng(0).uniform(size=(20, 64, 64, 3)).astype(np.float32)
    mix = BiasedMixture(_sr_gate(), sr_experts, bias, combine=combine)
    mix.compile(loss="mse")
    y = mix.predict(x, batch_size=10, verbose=0)  # graph mode (Keras predict_function)
    picks = mix.select_experts(x, batch_size=10)
    want_counts = np.round(np.asarray(bias) * 20).astype(int)
    np.testing.assert_array_equal(np.bincount(picks, minlength=3), want_counts)
    logits = mix.gate_logits(x)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for i in range(20):
        own = sr_experts[picks[i]](x[i:i + 1]).numpy()[0]
        weight = probs[i, picks[i]] if combine == "gate" else 1.0
        np.testing.assert_allclose(y[i], weight * own, rtol=1e-4, atol=1e-5)
    # eager call too (one batch of 10: capacities 0/9/1 or 10/0/0)
    np.testing.assert_allclose(mix(tf.constant(x[:10])).numpy(), y[:10], rtol=1e-4, atol=1e-5)


def test_an_expert_with_a_codec_sees_the_decoded_payload_and_counts_its_bytes():
    """P_n(x) = decode(encode(to_uint8(preprocess(x)))): lossless PNG gives the uint8
    rounding of the preprocessed input exactly; JPEG is close; the sizes are the payloads'."""
    from bmoe_tf import payload
    from skimage import data as skdata

    x = (skdata.astronaut()[:128, :128].astype(np.float32) / 255.0)[None].repeat(2, axis=0)
    x[1] = x[1, ::-1]  # another picture, another size
    down = lambda t: tf.image.resize(t, (32, 32), antialias=True)  # noqa: E731
    ident = keras.layers.Lambda(lambda t: t)
    png = Expert(ident, preprocess=down, codec="png", name="png")
    seen = png(tf.constant(x)).numpy()
    expected = payload.to_uint8(down(tf.constant(x)).numpy()).astype(np.float32) / 255.0
    np.testing.assert_array_equal(seen, expected)
    sizes = png.payload_sizes(x)
    assert sizes.tolist() == payload.payload_sizes("png", payload.to_uint8(
        down(tf.constant(x)).numpy())).tolist()
    assert sizes[0] != sizes[1] and sizes.max() < 32 * 32 * 3
    jpeg = Expert(ident, preprocess=down, codec=payload.Jpeg(90, shared_tables=True))
    close = jpeg(tf.constant(x)).numpy()
    assert close.shape == expected.shape and 0 < np.abs(close - expected).mean() < 0.03
    assert (jpeg.payload_sizes(x) < sizes).all()
    plain = Expert(ident, preprocess=down, data_cost=123)
    assert plain.payload_sizes(x).tolist() == [123, 123]
    with pytest.raises(ValueError, match="unknown codec 'gif'"):
        Expert(ident, codec="gif")
