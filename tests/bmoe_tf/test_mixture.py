"""BiasedMixture: training on tiny Keras experts, the cache, streaming, distribution."""
import numpy as np
import pytest

from bmoe_tf import BiasedMixture, Expert
from bmoe_tf.backend import keras, tf
from bmoe_tf.cache import build_expert_cache, cache_dataset

B = [0.5, 0.25, 0.25]


def _data(m=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, 6)).astype(np.float32)
    y = (x[:, :2] * 2.0 + x[:, 2:4] - 0.5 * x[:, 4:6]).astype(np.float32)
    return x, y


def _experts(seed=1):
    experts = []
    for i, k in enumerate((2, 4, 6)):
        keras.utils.set_random_seed(seed + i)
        model = keras.Sequential([keras.Input((k,)), keras.layers.Dense(2)], name=f"dense{k}")
        experts.append(Expert(model, preprocess=lambda x, k=k: x[:, :k], name=f"e{k}"))
    return experts


def _gate(seed=7, bias_init=None):
    keras.utils.set_random_seed(seed)
    init = "zeros" if bias_init is None else keras.initializers.Constant(bias_init)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3, bias_initializer=init)])


def _mixture(**kwargs):
    mix = BiasedMixture(_gate(), _experts(), kwargs.pop("bias", B), **kwargs)
    mix.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return mix


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_data_cost_defaults_to_float32_bytes_of_preprocessed_input():
    mix = _mixture()
    np.testing.assert_array_equal(mix.data_costs, [2 * 4, 4 * 4, 6 * 4])


@pytest.mark.parametrize("through_cache", [False, True])
def test_fit_trains_only_the_gate_and_enforces_b_every_batch(through_cache):
    x, y = _data()
    mix = _mixture()
    expert_before = [[w.copy() for w in e.model.get_weights()] for e in mix.experts]
    gate_before = [w.copy() for w in mix.gate.get_weights()]
    logs = _BatchLogs()
    if through_cache:
        cache = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)
        mix.fit(cache_dataset(x, cache, batch_size=8), epochs=2, verbose=0, callbacks=[logs])
    else:
        mix.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[logs])
    for expert, before in zip(mix.experts, expert_before):
        for w_after, w_before in zip(expert.model.get_weights(), before):
            np.testing.assert_array_equal(w_after, w_before)  # bit-identical
    changed = [not np.array_equal(a, b) for a, b in zip(mix.gate.get_weights(), gate_before)]
    assert all(changed)
    assert len(logs.logs) == 16
    for entry in logs.logs:  # running means over batches that each hit b exactly
        np.testing.assert_allclose(
            [entry["utility_e2"], entry["utility_e4"], entry["utility_e6"]], B, atol=1e-7)
        assert entry["data_cost"] == pytest.approx(0.5 * 8 + 0.25 * 16 + 0.25 * 24)


def test_enforce_training_lowers_the_task_loss():
    x, y = _data(256)
    mix = _mixture()
    cache = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)
    ds = cache_dataset(x, cache, batch_size=32, seed=1)
    before = mix.evaluate(ds, verbose=0, return_dict=True)["task_loss"]
    mix.fit(ds, epochs=30, verbose=0)
    after = mix.evaluate(ds, verbose=0, return_dict=True)["task_loss"]
    assert after < 0.9 * before


def _loss_and_grads(mix, inputs, y):
    with tf.GradientTape() as tape:
        total = mix.compute_gate_loss(inputs, y, training=True).total
    return float(total), [g.numpy() for g in tape.gradient(total, mix.gate.trainable_variables)]


@pytest.mark.parametrize("method", ["enforce", "soft"])
@pytest.mark.parametrize("combine", ["gate", "straight_through"])
def test_cache_gives_the_same_loss_and_gradients_as_the_experts(method, combine):
    x, y = _data(32, seed=3)
    mix = _mixture(method=method, combine=combine, bias_weight=0.3)
    mse = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)
    outs = build_expert_cache(mix.experts, x, y, kind="outputs", verbose=0)
    ref_loss, ref_grads = _loss_and_grads(mix, x, y)
    for cache in (mse, outs):
        batch = {"gate_input": x, **{k: v for k, v in cache.items() if k != "kind"}}
        loss, grads = _loss_and_grads(mix, batch, y)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_soft_mode_moves_utility_toward_b():
    x, y = _data(512, seed=5)
    b = [0.2, 0.4, 0.4]
    # The gate starts by sending (almost) everything to the first expert.
    gate = _gate(bias_init=[3.0, 0.0, 0.0])
    mix = BiasedMixture(gate, _experts(), b, method="soft", bias_weight=5.0, routing="argmax")
    mix.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    cache = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)

    def distance():
        share = np.bincount(mix.select_experts(x), minlength=3) / len(x)
        return np.linalg.norm(share - b)

    before = distance()
    mix.fit(cache_dataset(x, cache, batch_size=64), epochs=15, verbose=0)
    after = distance()
    assert before > 0.5
    assert after < 0.5 * before


def test_streaming_routing_meets_b_on_held_out_inputs():
    # 20000 + 20000 inputs: sampling noise of a share is about 0.5 points.
    x, y = _data(40000, seed=11)
    mix = _mixture(routing="streaming", bias=[0.6, 0.3, 0.1])
    with pytest.raises(ValueError, match="calibrate"):
        mix.select_experts(x[:10])
    mix.calibrate(x[:20000])
    share = np.bincount(mix.select_experts(x[20000:]), minlength=3) / 20000
    np.testing.assert_allclose(share, [0.6, 0.3, 0.1], atol=0.02)
    # one input at a time gives the same picks as a batch
    single = [int(mix.select_experts(x[i:i + 1])[0]) for i in range(20000, 20010)]
    assert single == mix.select_experts(x[20000:20010]).tolist()


def test_predict_dispatches_each_example_only_to_its_expert():
    x, _ = _data(12)
    mix = _mixture(combine="straight_through")
    calls = []
    for expert in mix.experts:
        original = expert.model

        def counting(inputs, training=None, original=original):
            calls.append(int(inputs.shape[0]))
            return original(inputs, training=training)

        expert.model = counting
    y = mix(tf.constant(x)).numpy()
    assert sorted(calls) == sorted([6, 3, 3])  # capacities for M=12, b=[.5,.25,.25]
    picks = mix.select_experts(x, batch_size=12)
    for i in range(12):  # straight-through: the output is the selected expert's output
        want = mix.experts[picks[i]].model(x[i:i + 1, :[2, 4, 6][picks[i]]]).numpy()[0]
        np.testing.assert_allclose(y[i], want, rtol=1e-6)


def test_gate_combine_multiplies_the_expert_output_by_its_gate():
    x, _ = _data(8)
    mix = _mixture()
    logits = mix.gate(x)
    gates, _, picks = mix.select(logits)
    y = mix(tf.constant(x)).numpy()
    for i in range(8):
        e = mix.experts[int(picks[i])]
        np.testing.assert_allclose(y[i], gates.numpy()[i].sum() * e(x[i:i + 1]).numpy()[0],
                                   rtol=1e-6)


def test_bad_arguments_raise_clear_errors():
    gate, experts = _gate(), _experts()
    with pytest.raises(ValueError, match="method"):
        BiasedMixture(gate, experts, B, method="hard")
    with pytest.raises(ValueError, match="routing"):
        BiasedMixture(gate, experts, B, routing="random")
    with pytest.raises(ValueError, match="3 experts"):
        BiasedMixture(gate, experts, [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        BiasedMixture(gate, experts, [0.5, 0.3, 0.3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BiasedMixture(gate, experts, [1.2, -0.1, -0.1])
    odd = Expert(keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]), name="odd")
    with pytest.raises(ValueError, match="cannot be mixed"):
        BiasedMixture(gate, experts[:2] + [odd], B)
    mix = BiasedMixture(gate, experts, B, method="soft")
    mix.compile(optimizer="adam", loss="mae")
    x, y = _data(8)
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    with pytest.raises(ValueError, match="mean squared error"):
        mix.compute_gate_loss({"gate_input": x, **{k: v for k, v in cache.items()
                                                   if k != "kind"}}, y)
    with pytest.raises(ValueError, match="smaller than the number of experts"):
        _mixture().compute_gate_loss(x[:2], y[:2])


def test_mirrored_strategy_enforces_b_over_the_global_batch():
    devices = ["/cpu:0", "/cpu:1"]
    assert len(tf.config.list_logical_devices("CPU")) >= 2
    strategy = tf.distribute.MirroredStrategy(devices)
    # Global batch 8 over 2 replicas; capacities for the global batch are [6, 1, 1],
    # while enforcing per replica of 4 would give [3, 1, 0] twice = [6, 2, 0].
    b = [0.75, 0.125, 0.125]
    x, y = _data(64)
    with strategy.scope():
        experts = _experts()
        mix = BiasedMixture(_gate(), experts, b)
        mix.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    logs = _BatchLogs()
    gate_before = [w.copy() for w in mix.gate.get_weights()]
    mix.fit(cache_dataset(x, cache, batch_size=8), epochs=1, verbose=0, callbacks=[logs])
    assert len(logs.logs) == 8
    for entry in logs.logs:
        np.testing.assert_allclose(
            [entry["utility_e2"], entry["utility_e4"], entry["utility_e6"]], b, atol=1e-6)
    assert any(not np.array_equal(a, c) for a, c in zip(mix.gate.get_weights(), gate_before))


def test_alternative_training_losses_match_their_formulas():
    x, y = _data(16, seed=4)
    experts = _experts()
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    batch = {"gate_input": x, **{k: v for k, v in cache.items() if k != "kind"}}
    losses = np.stack([np.mean((e(x).numpy() - y) ** 2, axis=1) for e in experts], axis=1)
    for name in ("gated", "expected", "relative"):
        mix = BiasedMixture(_gate(), experts, B, training_loss=name)
        mix.compile(optimizer="adam", loss="mse")
        logits = mix.gate(x).numpy().astype(np.float64)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        result = mix.compute_gate_loss(batch, y)
        total = result.total
        if name == "expected":
            want = np.mean(np.sum(probs * losses, axis=1))
        elif name == "gated":
            a = result.assignment.numpy()
            want = np.mean(probs[np.arange(16), a] * losses[np.arange(16), a])
            # the same through the experts (only the selected expert runs)
            total_raw = mix.compute_gate_loss(x, y).total
            assert float(total_raw) == pytest.approx(want, rel=1e-5)
        else:
            centred = losses - losses.mean(1, keepdims=True)
            gaps = np.abs(centred).ravel()
            scale = max(np.sort(gaps)[gaps.size // 2], 0.1 * gaps.mean())
            target = -centred / scale
            own = logits - logits.mean(1, keepdims=True)
            want = np.mean((own - target) ** 2)
        assert float(total) == pytest.approx(want, rel=1e-4), name
    mix = BiasedMixture(_gate(), experts, B, training_loss="relative")
    mix.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="expert cache"):
        mix.compute_gate_loss(x, y)
    with pytest.raises(ValueError, match="training_loss"):
        BiasedMixture(_gate(), experts, B, training_loss="other")


def test_relative_loss_learns_which_expert_is_relatively_better():
    # Expert e2 sees 2 features, e6 all 6. Where |x[2:]| is small e2 loses little.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 6)).astype(np.float32)
    x[:512, 2:] *= 0.05
    experts = [Expert(keras.Sequential([keras.Input((k,)), keras.layers.Lambda(
        lambda t: tf.reduce_sum(t, axis=1, keepdims=True) * tf.ones((1, 2)))]),
        preprocess=lambda t, k=k: t[:, :k], name=f"sum{k}") for k in (2, 6)]
    y = np.repeat(x.sum(axis=1, keepdims=True), 2, axis=1)
    keras.utils.set_random_seed(0)
    gate = keras.Sequential([keras.Input((6,)), keras.layers.Lambda(tf.abs),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    mix = BiasedMixture(gate, experts, [0.5, 0.5], training_loss="relative")
    mix.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    mix.fit(cache_dataset(x, cache, batch_size=128), epochs=20, verbose=0)
    picks = mix.select_experts(x, batch_size=1024)
    assert np.mean(picks[:512] == 0) > 0.9  # the cheap expert gets the easy half


def test_test_time_tail_smaller_than_n_falls_back_to_argmax():
    x, y = _data(65)
    mix = _mixture()
    # 65 = 2 x 32 + 1: the last batch has one row for three experts
    out = mix.predict(x, batch_size=32, verbose=0)
    assert out.shape == (65, 2)
    logs = mix.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert np.isfinite(logs["loss"])
    with pytest.raises(ValueError, match="metrics"):
        mix.compile(optimizer="adam", loss="mse", metrics=["mae"])
    with pytest.raises(ValueError, match="sample weights"):
        mix.fit(x, y, sample_weight=np.ones(65), batch_size=32, epochs=1, verbose=0)


def test_fit_resets_streaming_offsets():
    x, y = _data(64)
    mix = _mixture(routing="streaming")
    mix.calibrate(x)
    assert np.all(np.isfinite(mix.offsets.numpy()))
    mix.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="calibrate"):
        mix.select_experts(x)


def test_select_and_compute_gate_loss_return_named_results():
    from bmoe_tf.mixture import GateLoss, Selection

    x, y = _data(12)
    mix = _mixture()
    selection = mix.select(mix.gate(x))
    assert isinstance(selection, Selection)
    gates, scales, assignment = selection  # still unpacks
    assert gates is selection.gates and assignment is selection.assignment
    assert selection.gates.shape == (12, 3) and selection.scales.shape == (12, 3)
    assert selection.assignment.dtype == tf.int32
    np.testing.assert_array_equal(np.bincount(assignment.numpy(), minlength=3), [6, 3, 3])
    result = mix.compute_gate_loss(x, y)
    assert isinstance(result, GateLoss)
    assert float(result.total) == pytest.approx(float(result.task_loss) + float(result.bias_loss))
    assert float(result.task_loss) == pytest.approx(float(np.mean(result.per_example.numpy())))
    assert result.per_example.shape == (12,) and result.gates.shape == (12, 3)
    with pytest.raises(Exception):
        result.total = 0.0  # frozen


def test_gate_preprocess_lets_the_gate_see_part_of_the_input(toy_problem):
    x, y, experts = toy_problem
    keras.utils.set_random_seed(3)
    gate = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="input_shape"):
        BiasedMixture(gate, experts, [0.2, 0.3, 0.5], gate_preprocess=lambda t: t[:, 4:])
    mixture = BiasedMixture(gate, experts, [0.2, 0.3, 0.5], input_shape=(6,),
                            gate_preprocess=lambda t: t[:, 4:])
    mixture.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    result = mixture.compute_gate_loss(tf.constant(x), tf.constant(y), training=False)
    # the routing is that of the gate on the last two features alone
    routed = mixture.select(gate(x[:, 4:]), training=False)[2]
    np.testing.assert_array_equal(result.assignment.numpy(), routed.numpy())
    assert result.gates.shape == (64, 3)


def test_fit_tells_the_dataset_its_epoch_also_through_a_wrapped_keras_fit(monkeypatch):
    """BiasedMixture.fit finds x and the callbacks by keras.Model.fit's own signature, also
    when a wrapper ``fit(self, *args, **kwargs)`` replaced it (as tests/experiments/distributed_worker.py
    does), adds DatasetEpoch first and checkpoints the epoch variable (not a weight)."""
    import inspect

    from bmoe_tf.cache import DatasetEpoch, dataset_epoch_variable

    seen = {}
    original = keras.Model.fit

    def wrapper(self, *args, **kwargs):
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        seen["callbacks"] = list(bound.arguments.get("callbacks") or [])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", wrapper)
    x, y = _data(32)
    mix = _mixture()
    cache = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)
    ds = cache_dataset(x, cache, batch_size=8, seed=3).with_options(tf.data.Options())
    names = [w.name for w in mix.weights]
    mix.fit(ds, None, 8, 3, 0, initial_epoch=2)  # x, y, batch_size, epochs, verbose
    assert isinstance(seen["callbacks"][0], DatasetEpoch)
    variable = dataset_epoch_variable(ds)
    assert int(variable.numpy()) == 3  # epoch 2 ran, epoch 3 is next
    assert mix._lookup_dependency("cache_dataset_epoch") is variable
    assert [w.name for w in mix.weights] == names


def test_a_gate_whose_logits_do_not_number_the_experts_is_refused_at_construction():
    keras.utils.set_random_seed(7)
    four = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="gives 4 logits per example but there are 3 experts"):
        BiasedMixture(four, _experts(), B)

    class Unbuilt(keras.layers.Layer):  # output shape unknown until it runs
        def build(self, shape):
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    mixture = BiasedMixture(Unbuilt(), _experts(), B, input_shape=(6,))
    x, y = _data(8)
    with pytest.raises(ValueError, match="gives 2 logits per example but there are 3 experts"):
        mixture.compute_gate_loss(tf.constant(x), tf.constant(y), training=False)


def _payload_bytes(m, seed=5):
    """``float[M, 3]``: bytes per input and expert, dearer for the bigger experts and
    varying per input (as encoded payloads do)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(50, 150, size=(m, 1)) * np.array([1.0, 2.0, 4.0])
            + rng.integers(0, 40, size=(m, 3))).astype(np.float64)


def test_enforce_bytes_trains_every_batch_within_its_bytes():
    """method='enforce_bytes': each training batch is routed by the byte-aware assignment
    of its own logits and payload bytes (the inference code, choice for choice), within
    M x byte_target bytes; data_cost counts those bytes; only the gate trains."""
    from bmoe_tf.byte_budget import byte_aware_assignment

    x, y = _data()
    costs = _payload_bytes(len(x))
    target = float(costs.mean(axis=0) @ np.array(B))
    mix = _mixture(method="enforce_bytes", byte_target=target)
    cache = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)
    ds = cache_dataset(x, cache, batch_size=16, seed=3, drop_remainder=True,
                       payload_bytes=costs)
    batches = 0
    for features, target_batch in ds:
        result = mix.compute_gate_loss(features, target_batch, training=True)
        logits = mix.gate(features["gate_input"]).numpy()
        c = features["payload_bytes"].numpy().astype(np.float64)
        expect = byte_aware_assignment(logits, c, target, len(c)).assignment
        np.testing.assert_array_equal(result.assignment.numpy(), expect)
        spent = c[np.arange(len(c)), expect]
        np.testing.assert_array_equal(result.payload_bytes.numpy(), spent)
        assert spent.sum() <= 16 * target
        batches += 1
    assert batches == 4
    gate_before = [w.copy() for w in mix.gate.get_weights()]
    logs = _BatchLogs()
    mix.fit(ds, epochs=2, verbose=0, callbacks=[logs])
    assert all(not np.array_equal(a, b) for a, b in zip(mix.gate.get_weights(), gate_before))
    assert len(logs.logs) == 8
    for entry in logs.logs:  # running means of batches that each stayed within the target
        assert entry["data_cost"] <= target * (1 + 1e-6)
        assert entry["data_cost"] > 0.9 * target  # and spent it (the top-up)


def test_enforce_bytes_settings_and_batches_are_checked():
    x, y = _data(16)
    with pytest.raises(ValueError, match="byte_target"):
        BiasedMixture(_gate(), _experts(), B, method="enforce_bytes")
    with pytest.raises(ValueError, match="byte_target"):
        BiasedMixture(_gate(), _experts(), B, method="enforce", byte_target=100.0)
    with pytest.raises(ValueError, match="> 0"):
        BiasedMixture(_gate(), _experts(), B, method="enforce_bytes", byte_target=0.0)
    mix = _mixture(method="enforce_bytes", byte_target=100.0)
    cache = build_expert_cache(mix.experts, x, y, kind="mse", verbose=0)
    features, target = next(iter(cache_dataset(x, cache, batch_size=8)))
    with pytest.raises(ValueError, match="payload_bytes"):
        mix.compute_gate_loss(features, target, training=True)
    with pytest.raises(ValueError, match="payload_bytes"):
        cache_dataset(x, cache, payload_bytes=-_payload_bytes(16))
    with pytest.raises(ValueError, match="'payload_bytes' has 8 rows"):
        cache_dataset(x, cache, payload_bytes=_payload_bytes(8))
