"""The expert cache (bmoe_tf.cache): mse statistics, npz files, the "scores" kind and
the deterministic per-epoch order of cache_dataset."""
import numpy as np
import pytest

from bmoe_tf import BiasedMixture
from bmoe_tf.backend import keras, tf
from bmoe_tf.cache import (SHARD_KEYS, DatasetEpoch, build_expert_cache, cache_dataset,
                           dataset_epoch_variable, epoch_order, is_cache_shard, load_cache,
                           load_cache_shards, merge_cache_shards, mse_from_statistics,
                           save_cache, score_cache, set_dataset_epoch, shard_path)

B = [0.5, 0.25, 0.25]


def _batch(x, cache):
    return {"gate_input": x, **{k: v for k, v in cache.items() if k != "kind"}}


def test_mse_statistics_are_exact_for_any_gate_values(toy_problem):
    x, y, experts = toy_problem
    x, y = x[:16], y[:16]
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    outs = np.stack([e(x).numpy() for e in experts], axis=1)
    g = np.random.default_rng(0).uniform(0, 1.3, size=(16, 3)).astype(np.float32)  # dense G
    got = mse_from_statistics(g, cache).numpy()
    want = np.mean((np.einsum("mn,mnd->md", g, outs) - y) ** 2, axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mse", "outputs", "scores"])
def test_cache_round_trips_through_npz(tmp_path, toy_problem, kind):
    x, y, experts = toy_problem
    if kind == "scores":
        cache = score_cache(np.random.default_rng(1).normal(size=(8, 3)))
    else:
        cache = build_expert_cache(experts, x[:8], y[:8], kind=kind, verbose=0)
    save_cache(tmp_path / "c.npz", cache)
    back = load_cache(tmp_path / "c.npz")
    assert set(back) == set(cache)
    assert str(back["kind"]) == kind
    for k in cache:
        np.testing.assert_array_equal(back[k], cache[k])


# --------------------------------------------------------------------------- scores


def test_score_cache_validates_and_feeds_a_dataset():
    scores = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    cache = score_cache(scores)
    assert str(cache["kind"]) == "scores" and cache["scores"].dtype == np.float32
    x = np.zeros((2, 6), np.float32)
    (features, y), = list(cache_dataset(x, cache, batch_size=4, shuffle=False))
    np.testing.assert_array_equal(y.numpy(), scores.astype(np.float32))  # y is the scores
    np.testing.assert_array_equal(features["scores"].numpy(), scores.astype(np.float32))
    with pytest.raises(ValueError, match=r"scores must be \[M, N\]"):
        score_cache([1.0, 2.0])
    with pytest.raises(ValueError, match="N >= 2 experts"):
        score_cache([[1.0], [2.0]])
    with pytest.raises(ValueError, match="scores must be finite"):
        score_cache([[1.0, np.nan]])
    with pytest.raises(ValueError, match="score_cache"):
        build_expert_cache([], x, kind="scores")


def _loss_and_grads(mix, batch, y):
    with tf.GradientTape() as tape:
        result = mix.compute_gate_loss(batch, y, training=True)
    grads = tape.gradient(result.total, mix.gate.trainable_variables)
    return result, [g.numpy() for g in grads]


@pytest.mark.parametrize("training_loss", ["relative", "expected", "gated"])
def test_scores_cache_of_minus_the_mse_trains_like_the_mse_cache(toy_problem, toy_gate,
                                                                  training_loss):
    x, y, experts = toy_problem
    mse = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    per_expert = np.diagonal(mse["residual_gram"], axis1=1, axis2=2) / mse["num_elements"][:, None]
    scores = score_cache(-per_expert)
    mix = BiasedMixture(toy_gate(), experts, B, training_loss=training_loss)
    mix.compile(optimizer="adam", loss="mse")
    ref, ref_grads = _loss_and_grads(mix, _batch(x, mse), y)
    got, grads = _loss_and_grads(mix, _batch(x, scores), scores["scores"])
    assert float(ref.total) > 0.01
    np.testing.assert_allclose(float(got.total), float(ref.total), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.per_example.numpy(), ref.per_example.numpy(), atol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)
    assert np.abs(ref_grads[0]).max() > 1e-4  # the gradients are not trivially zero
    # test time on a scores cache: minus the selected expert's score, unscaled
    test = mix.compute_gate_loss(_batch(x, scores), scores["scores"], training=False)
    a = test.assignment.numpy()
    np.testing.assert_allclose(test.per_example.numpy(), per_expert[np.arange(64), a], rtol=1e-6)


def test_selected_loss_on_a_scores_cache_names_the_alternatives(toy_problem, toy_gate):
    x, _, experts = toy_problem
    cache = score_cache(np.random.default_rng(0).normal(size=(64, 3)))
    mix = BiasedMixture(toy_gate(), experts, B, training_loss="selected")
    mix.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="'gated', 'expected' or 'relative'"):
        mix.compute_gate_loss(_batch(x, cache), cache["scores"], training=True)
    with pytest.raises(ValueError, match="no expert outputs"):
        mix(_batch(x, cache))


# --------------------------------------------------------------------------- order


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(5, 3, 50)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    np.testing.assert_array_equal(a, epoch_order(5, 3, 50))
    assert not np.array_equal(a, epoch_order(5, 4, 50))
    assert not np.array_equal(a, epoch_order(6, 3, 50))
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        epoch_order(5, -1, 50)


def _passes(ds, n):
    return [[b[0]["gate_input"].numpy() for b in ds] for _ in range(n)]


def test_cache_dataset_order_depends_on_seed_and_epoch_only(toy_problem):
    x, y, experts = toy_problem
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)
    first = _passes(cache_dataset(x, cache, batch_size=16, seed=5), 3)
    second = _passes(cache_dataset(x, cache, batch_size=16, seed=5), 3)
    for e in range(3):
        want = x[epoch_order(5, e, 64)]
        np.testing.assert_array_equal(np.concatenate(first[e]), want)
        for a, b in zip(first[e], second[e]):
            np.testing.assert_array_equal(a, b)
    assert [len(p) for p in first] == [4, 4, 4]
    # a fresh dataset told to start at epoch 2 gives what epochs 0, 1 then 2 gave
    late = _passes(cache_dataset(x, cache, batch_size=16, seed=5, initial_epoch=2), 1)[0]
    np.testing.assert_array_equal(np.concatenate(late), np.concatenate(first[2]))
    # and so does one iterated many times, then told which epoch comes next
    ds = cache_dataset(x, cache, batch_size=16, seed=5)
    _passes(ds, 4)
    assert set_dataset_epoch(ds, 1)
    np.testing.assert_array_equal(np.concatenate(_passes(ds, 1)[0]), np.concatenate(first[1]))
    # no shuffling: input order every time; drop_remainder: floor(M / B) batches
    plain = _passes(cache_dataset(x, cache, batch_size=16, shuffle=False), 2)
    np.testing.assert_array_equal(np.concatenate(plain[1]), x)
    assert not set_dataset_epoch(cache_dataset(x, cache, shuffle=False), 1)
    dropped = cache_dataset(x, cache, batch_size=24, seed=5, drop_remainder=True)
    assert int(dropped.cardinality()) == 2 and len(_passes(dropped, 1)[0]) == 2


class _Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("killed after epoch 0")


class _Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


class _EpochAtTrainBegin(keras.callbacks.Callback):
    """The dataset's next epoch once BackupAndRestore (before it) has restored the model."""

    def __init__(self, dataset):
        super().__init__()
        self.variable = dataset_epoch_variable(dataset)
        self.value = None

    def on_train_begin(self, logs=None):
        self.value = int(self.variable.numpy())


def test_backup_and_restore_resume_matches_an_uninterrupted_run(tmp_path, toy_problem, toy_gate):
    x, y, experts = toy_problem
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)

    def run(backup, callbacks, warm_up=0, derived=False):
        mix = BiasedMixture(toy_gate(), experts, B)
        mix.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        ds = cache_dataset(x, cache, batch_size=8, seed=11)
        _passes(ds, warm_up)  # e.g. a process that trained other gates on ds first
        if derived:  # as experiments.gates.train_gate under several replicas
            ds = ds.with_options(tf.data.Options())
        seen, start = _Seen(), _EpochAtTrainBegin(ds)
        names = [w.name for w in mix.weights]
        mix.fit(ds, epochs=2, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(str(backup)), start, seen]
                + callbacks)
        # the epoch variable is checkpointed with the mixture, but is no Keras weight
        assert [w.name for w in mix.weights] == names
        return mix.gate.get_weights(), seen.epochs, start.value

    reference, epochs, _ = run(tmp_path / "a", [])
    assert epochs == [0, 1]
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "b", [_Kill()])
    resumed, epochs, start = run(tmp_path / "b", [], warm_up=3, derived=True)
    assert epochs == [1]  # BackupAndRestore skipped epoch 0
    assert start == 1  # restored with the model (3 after the warm-up), before any pass
    for a, b in zip(resumed, reference):
        np.testing.assert_array_equal(a, b)  # bit for bit
    # without the epoch callback the resumed epoch would replay epoch 0's order
    assert not np.array_equal(epoch_order(11, 0, 64), epoch_order(11, 1, 64))
    assert DatasetEpoch(cache_dataset(x, cache, seed=1), np.zeros(3)).datasets


def test_the_epoch_is_found_through_with_options_map_prefetch_only(toy_problem):
    x, y, experts = toy_problem
    cache = score_cache(np.random.default_rng(2).normal(size=(64, 3)))
    ds = cache_dataset(x, cache, batch_size=16, seed=5)
    variable = dataset_epoch_variable(ds)
    derived = ds.with_options(tf.data.Options()).map(lambda f, s: (f, s)).prefetch(1)
    assert dataset_epoch_variable(derived) is variable
    for other in (ds.repeat(2), ds.take(1), ds.unbatch(), cache_dataset(x, cache, shuffle=False),
                  np.zeros(3), None):
        assert dataset_epoch_variable(other) is None
        assert not set_dataset_epoch(other, 1)
    assert set_dataset_epoch(derived, 2) and int(variable.numpy()) == 2
    np.testing.assert_array_equal(np.concatenate(_passes(derived, 1)[0]), x[epoch_order(5, 2, 64)])
    callback = DatasetEpoch(derived, None)
    assert callback.variables == [variable]
    callback.on_epoch_begin(4)
    assert int(variable.numpy()) == 4
    callback.on_epoch_end(4)  # the next epoch, before Keras makes its iterator
    assert int(variable.numpy()) == 5


# --------------------------------------------------------------------------- shards


def _assert_same_cache(got, want):
    assert list(got) == list(want)  # same keys, same order (so np.savez writes the same file)
    for key in want:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert np.array_equal(a, b), key
        assert a.tobytes() == b.tobytes(), key


def _shards(experts, inputs, targets, kind, count, batch_size=10):
    return [build_expert_cache(experts, inputs, targets, kind=kind, batch_size=batch_size,
                               verbose=0, num_shards=count, shard_index=i)
            for i in range(count)]


@pytest.mark.parametrize("kind", ["outputs", "mse"])
@pytest.mark.parametrize("source", ["numpy", "dataset"])
def test_cache_built_in_shards_merges_to_the_single_process_cache(toy_problem, kind, source):
    x, y, experts = toy_problem  # 64 rows in batches of 10: the last batch holds 4
    if source == "numpy":
        inputs, targets = x, y
    else:
        inputs, targets = tf.data.Dataset.from_tensor_slices((x, y)).batch(10), None
    single = build_expert_cache(experts, inputs, targets, kind=kind, batch_size=10, verbose=0)
    for count in (2, 3):
        shards = _shards(experts, inputs, targets, kind, count)
        for i, shard in enumerate(shards):
            assert is_cache_shard(shard)
            held = list(range(i, 7, count))
            np.testing.assert_array_equal(shard["shard_batches"], held)
            np.testing.assert_array_equal(shard["shard_batch_sizes"],
                                          [4 if k == 6 else 10 for k in held])
            assert int(shard["shard_total_batches"]) == 7
            assert int(shard["shard_batch_size"]) == (10 if source == "numpy" else -1)
        merged = merge_cache_shards(shards[::-1])  # any order
        assert not is_cache_shard(merged)
        _assert_same_cache(merged, single)
        rolled = shards[1:] + shards[:1]
        _assert_same_cache(merge_cache_shards(rolled), single)


def test_num_shards_one_is_the_plain_cache(toy_problem):
    x, y, experts = toy_problem
    plain = build_expert_cache(experts, x, y, kind="mse", batch_size=10, verbose=0)
    one = build_expert_cache(experts, x, y, kind="mse", batch_size=10, verbose=0,
                             num_shards=1, shard_index=0)
    assert set(plain) == {"residual_gram", "residual_target", "target_energy", "num_elements",
                          "kind"}
    assert not is_cache_shard(one)
    _assert_same_cache(one, plain)


def test_more_shards_than_batches_and_shard_files(tmp_path, toy_problem):
    x, y, experts = toy_problem
    x, y = x[:16], y[:16]  # two batches of 10 and 6; shard 2 of 3 gets none
    single = build_expert_cache(experts, x, y, kind="outputs", batch_size=10, verbose=0)
    shards = _shards(experts, x, y, "outputs", 3)
    assert set(shards[2]) == {"kind", *SHARD_KEYS} and len(shards[2]["shard_batches"]) == 0
    path = tmp_path / "cache" / "train_outputs.npz"
    for i, shard in enumerate(shards):
        save_cache(shard_path(path, i, 3), shard)
    assert shard_path(path, 1, 3) == str(tmp_path / "cache" / "train_outputs.shard-1-of-3.npz")
    merged = load_cache_shards(path, 3)
    _assert_same_cache(merged, single)
    save_cache(path, merged)
    _assert_same_cache(load_cache(path), single)
    with pytest.raises(FileNotFoundError, match=r"shard-1-of-2\.npz"):
        load_cache_shards(path, 2)


def test_bad_shard_arguments_and_bad_shards_are_refused(toy_problem):
    x, y, experts = toy_problem
    x, y = x[:30], y[:30]
    for kwargs, match in [({"num_shards": 0}, "num_shards must be an integer >= 1"),
                          ({"num_shards": 2.0}, "num_shards must be an integer"),
                          ({"num_shards": 2, "shard_index": 2}, r"shard_index must be .*\[0, "),
                          ({"num_shards": 2, "shard_index": -1}, "shard_index must be"),
                          ({"num_shards": 2, "shard_index": True}, "shard_index must be"),
                          ({"batch_size": 0}, "batch_size must be an integer >= 1")]:
        with pytest.raises(ValueError, match=match):
            build_expert_cache(experts, x, y, kind="outputs", verbose=0, **kwargs)
    outs = _shards(experts, x, y, "outputs", 3)  # three batches of 10, one per shard
    mse = _shards(experts, x, y, "mse", 3)
    plain = build_expert_cache(experts, x, y, kind="outputs", batch_size=10, verbose=0)
    with pytest.raises(ValueError, match="no shard caches"):
        merge_cache_shards([])
    with pytest.raises(ValueError, match=r"shards\[1\] is not a cache shard"):
        merge_cache_shards([outs[0], plain])
    with pytest.raises(ValueError, match="overlapping shards: shard 1 of 3 is given twice"):
        merge_cache_shards([outs[0], outs[1], outs[1], outs[2]])
    with pytest.raises(ValueError, match="missing shards: 2 of 3"):
        merge_cache_shards([outs[1], outs[0]])
    with pytest.raises(ValueError, match="disagree on the cache kind"):
        merge_cache_shards([outs[0], mse[1], outs[2]])
    two = _shards(experts, x, y, "outputs", 2)
    with pytest.raises(ValueError, match="disagree on the number of shards"):
        merge_cache_shards([two[0], two[1], outs[2]])
    other_batch = _shards(experts, x, y, "outputs", 3, batch_size=8)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        merge_cache_shards([outs[0], other_batch[1], outs[2]])
    extra = dict(outs[1], more=outs[1]["outputs"])
    with pytest.raises(ValueError, match="different entries"):
        merge_cache_shards([outs[0], extra, outs[2]])
    wider = dict(outs[2], outputs=np.zeros((10, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"entry 'outputs' of shards\[2\].*per row"):
        merge_cache_shards([outs[0], outs[1], wider])
    recast = dict(outs[2], outputs=outs[2]["outputs"].astype(np.float64))
    with pytest.raises(ValueError, match="float64"):
        merge_cache_shards([outs[0], outs[1], recast])
    short = dict(outs[1], outputs=outs[1]["outputs"][:7])
    with pytest.raises(ValueError, match="has 7 rows but its batches hold 10"):
        merge_cache_shards([outs[0], short, outs[2]])
    # a shard that stopped early (its batch missing) is noticed through the batch count
    truncated = {k: v for k, v in outs[2].items() if k != "outputs"}
    truncated.update(shard_batches=np.zeros(0, np.int64),
                     shard_batch_sizes=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"missing batches: 2 \(shard 2\) of 3"):
        merge_cache_shards([outs[0], outs[1], truncated])
    with pytest.raises(ValueError, match="merge_cache_shards"):
        cache_dataset(x[:10], outs[0], y[:10], shuffle=False)


def test_shard_rows_and_as_cache_shard_merge_to_the_whole(toy_problem):
    from bmoe_tf.cache import as_cache_shard, shard_rows
    rng = np.random.default_rng(3)
    values = rng.normal(size=(23, 3, 2)).astype(np.float32)
    whole = {"kind": np.array("outputs"), "outputs": values}
    for count in (1, 2, 3, 7):
        shards = []
        for i in range(count):
            rows, batches, sizes = shard_rows(23, 5, count, i)
            np.testing.assert_array_equal(batches, np.arange(i, 5, count))
            assert sizes.sum() == len(rows) and all(r // 5 % count == i for r in rows)
            shards.append(as_cache_shard({"kind": np.array("outputs"), "outputs": values[rows]},
                                         num_examples=23, batch_size=5, num_shards=count,
                                         shard_index=i))
        if count == 1:
            continue
        merged = merge_cache_shards(shards[::-1])
        assert merged["outputs"].tobytes() == whole["outputs"].tobytes()
    with pytest.raises(ValueError, match="has 4 rows, shard 0 of 2 holds 13"):
        as_cache_shard({"kind": np.array("outputs"), "outputs": values[:4]}, num_examples=23,
                       batch_size=5, num_shards=2, shard_index=0)
