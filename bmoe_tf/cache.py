"""The expert cache: frozen experts' outputs (or loss statistics), computed once.

The experts never change while a gate trains, so running them every epoch is
waste. Two kinds of cache give *exactly* the loss of the mixture output
``y = sum_n G_n E_n(P_n(x))`` (Eq. 2) for any gate values G:

``"outputs"``
  ``outputs[M, N, ...]``: every expert's output; the mixture output is rebuilt
  from them and any Keras loss applies.
``"scores"``
  ``scores[M, N]``: each expert's own score on each example, higher is better
  (e.g. minus a detection loss, or a per-clip log-likelihood), made by
  :func:`score_cache`. It holds no outputs, so it cannot give Eq. 2's loss; the
  training losses that need only each expert's own loss (``"gated"``,
  ``"expected"``, ``"relative"``) use ``loss_n = -scores[:, n]``.
``"mse"``
  sufficient statistics of the mean squared error, far smaller than outputs.
  With residuals ``r_n = E_n - t`` for target t (flattened to D elements):
  ``residual_gram[M, N, N] = <r_n, r_k>``, ``residual_target[M, N] = <r_n, t>``,
  ``target_energy[M] = ||t||^2``. Then with ``s = sum_n G_n - 1``,
  ``||y - t||^2 = G^T R G + 2 s (G . q) + s^2 ||t||^2`` and the MSE is that over
  D. Written in residuals, the terms stay small when the experts are good, so
  float32 keeps the loss accurate (no cancellation of large energies).

A cache is a dict of numpy arrays plus its kind; :func:`save_cache` /
:func:`load_cache` store it as one ``.npz``; :func:`cache_dataset` turns it into the
``tf.data`` pipeline that :class:`bmoe_tf.mixture.BiasedMixture` trains on. Its
shuffled order is a function of ``(seed, epoch)`` only (:func:`epoch_order`), so a
run resumed by ``keras.callbacks.BackupAndRestore`` sees the same batches as an
uninterrupted one.
"""
import os
import weakref

import numpy as np

from bmoe_tf.backend import keras, tf
from bmoe_tf.checks import as_float_array, check_count, check_finite

__all__ = ["CACHE_KINDS", "build_expert_cache", "score_cache", "cache_dataset", "epoch_order",
           "set_dataset_epoch", "DatasetEpoch", "save_cache", "load_cache",
           "mse_from_statistics"]

CACHE_KINDS = ("outputs", "mse", "scores")
_MSE_KEYS = ("residual_gram", "residual_target", "target_energy", "num_elements")


def _batches(inputs, targets, batch_size):
    if isinstance(inputs, tf.data.Dataset):
        for item in inputs:
            x, y = item if isinstance(item, tuple) else (item, None)
            yield np.asarray(x), (None if y is None else np.asarray(y))
        return
    x_all = np.asarray(inputs)
    y_all = None if targets is None else np.asarray(targets)
    if y_all is not None and len(y_all) != len(x_all):
        raise ValueError(f"{len(x_all)} inputs but {len(y_all)} targets")
    for start in range(0, len(x_all), batch_size):
        yield (x_all[start:start + batch_size],
               None if y_all is None else y_all[start:start + batch_size])


def build_expert_cache(experts, inputs, targets=None, *, kind="outputs", batch_size=256,
                       verbose=1):
    """Runs every expert once on every input and keeps what the loss needs.

    Args:
      experts: list of :class:`bmoe_tf.Expert`.
      inputs: ``[M, ...]`` raw inputs (numpy) or a ``tf.data.Dataset`` of batched
        ``(x, y)`` pairs.
      targets: ``[M, ...]`` targets for numpy inputs (needed for ``"mse"``).
      kind: ``"outputs"`` or ``"mse"``.
      batch_size: batch size for numpy inputs.
      verbose: 1 for a Keras progress bar.
    Returns:
      dict of numpy arrays with key ``"kind"`` and, for ``"outputs"``,
      ``outputs[M, N, ...]``; for ``"mse"`` the statistics described above plus
      ``num_elements[M]`` (D per example).
    """
    if kind == "scores":
        raise ValueError("a 'scores' cache is built from the scores themselves: "
                         "use score_cache(scores)")
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; allowed: {', '.join(CACHE_KINDS)}")
    total = None if isinstance(inputs, tf.data.Dataset) else len(inputs)
    bar = keras.utils.Progbar(total, unit_name="example", verbose=verbose)
    chunks = {}
    for x, y in _batches(inputs, targets, batch_size):
        outs = np.stack([np.asarray(e(tf.convert_to_tensor(x, tf.float32))) for e in experts],
                        axis=1)
        if kind == "outputs":
            parts = {"outputs": outs.astype(np.float32)}
        else:
            if y is None:
                raise ValueError("an 'mse' cache needs targets")
            m, n = outs.shape[:2]
            e = outs.reshape(m, n, -1).astype(np.float64)
            t = np.asarray(y, np.float64).reshape(m, -1)
            if t.shape[1] != e.shape[2]:
                raise ValueError(
                    f"targets have {t.shape[1]} elements per example but experts output "
                    f"{e.shape[2]}")
            r = e - t[:, None, :]
            parts = {
                "residual_gram": np.einsum("mnd,mkd->mnk", r, r).astype(np.float32),
                "residual_target": np.einsum("mnd,md->mn", r, t).astype(np.float32),
                "target_energy": np.einsum("md,md->m", t, t).astype(np.float32),
                "num_elements": np.full((m,), t.shape[1], np.float32),
            }
        for key, value in parts.items():
            chunks.setdefault(key, []).append(value)
        bar.add(len(x))
    if not chunks:
        raise ValueError("no inputs to cache")
    cache = {key: np.concatenate(values) for key, values in chunks.items()}
    cache["kind"] = np.array(kind)
    return cache


def cache_kind(cache):
    kind = str(np.asarray(cache.get("kind", "")))
    if kind not in CACHE_KINDS:
        raise ValueError(f"not an expert cache (kind {kind!r}); build one with build_expert_cache")
    return kind


def score_cache(scores):
    """A ``"scores"`` cache from per-example, per-expert scores.

    Args:
      scores: ``float[M, N]``, expert n's score on example i, higher is better
        (e.g. minus a detection loss, a per-clip log-likelihood, a PSNR); finite.
    Returns:
      ``{"kind": "scores", "scores": float32[M, N]}``, usable by :func:`save_cache`,
      :func:`load_cache` and :func:`cache_dataset` like the other kinds.
    Raises:
      ValueError: not ``[M, N]`` with ``M >= 1`` and ``N >= 2``, or a NaN / infinity.
    """
    s = as_float_array(scores, "scores", rank=2, layout="[M, N]")
    if s.shape[0] < 1 or s.shape[1] < 2:
        raise ValueError(f"scores must be [M, N] with M >= 1 examples and N >= 2 experts, "
                         f"got shape {s.shape}")
    check_finite(s, "scores")
    return {"kind": np.array("scores"), "scores": s.astype(np.float32)}


def epoch_order(seed, epoch, num_examples):
    """The order in which :func:`cache_dataset` visits the examples in an epoch.

    A function of ``(seed, epoch)`` only: ``argsort`` (stable) of
    ``tf.random.stateless_uniform([M], seed=[seed, epoch], dtype=int64)`` (Philox,
    the same on every machine and in every process).

    Args:
      seed: int in ``[0, 2**63)``.
      epoch: int ``>= 0``.
      num_examples: M.
    Returns:
      ``int64[M]``, a permutation of ``range(M)``.
    """
    seed = check_count(seed, "seed")
    epoch = check_count(epoch, "epoch")
    m = check_count(num_examples, "num_examples")
    return _order_tensor(tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64), m).numpy()


def _order_tensor(seed, epoch, m):
    keys = tf.random.stateless_uniform([m], seed=tf.stack([seed, epoch]), minval=None,
                                       maxval=None, dtype=tf.int64)
    return tf.argsort(keys, stable=True)


# dataset -> its epoch variable (see cache_dataset)
_EPOCH_VARIABLES = weakref.WeakKeyDictionary()


def _epoch_variable(dataset):
    try:
        return _EPOCH_VARIABLES.get(dataset)
    except TypeError:  # not weak-referenceable: not one of ours
        return None


def set_dataset_epoch(dataset, epoch):
    """Makes the next pass over a shuffled :func:`cache_dataset` be epoch ``epoch``.

    Returns True, or False when ``dataset`` has no epoch (not shuffled, or not
    made by :func:`cache_dataset`).
    """
    variable = _epoch_variable(dataset)
    if variable is None:
        return False
    variable.assign(check_count(epoch, "epoch"))
    return True


class DatasetEpoch(keras.callbacks.Callback):
    """Tells shuffled :func:`cache_dataset` datasets which epoch Keras is in.

    ``on_epoch_begin(epoch)`` calls :func:`set_dataset_epoch`, so epoch ``e`` of
    ``fit`` uses :func:`epoch_order` ``(seed, e)`` whatever ran before: also when
    ``fit`` resumes at epoch k through ``BackupAndRestore``.
    :meth:`bmoe_tf.BiasedMixture.fit` adds it by itself; add it to other models' fit.
    """

    def __init__(self, *datasets):
        super().__init__()
        self.datasets = [d for d in datasets if _epoch_variable(d) is not None]

    def on_epoch_begin(self, epoch, logs=None):
        for dataset in self.datasets:
            set_dataset_epoch(dataset, epoch)


def cache_dataset(gate_inputs, cache, targets=None, *, batch_size=128, shuffle=True, seed=0,
                  drop_remainder=False, initial_epoch=0):
    """A ``tf.data.Dataset`` of ``(features, y)`` for training a gate on a cache.

    ``features`` is a dict with ``"gate_input"`` (``[B, ...]``, what the gate sees)
    and the cache entries for the batch; ``y`` is the target batch (an
    ``"outputs"`` cache needs it; an ``"mse"`` cache holds what it needs, and
    ``y`` is then ``target_energy``, unused; for a ``"scores"`` cache ``y`` is the
    ``scores [B, N]`` batch).

    Order. One pass over the dataset is one epoch of ``ceil(M / batch_size)``
    batches (``floor`` with ``drop_remainder``). With ``shuffle=True``, epoch ``e``
    visits the examples in :func:`epoch_order` ``(seed, e)``: a function of the seed
    and the epoch number only, not of how often this (or another) dataset object
    was iterated before, nor of the process. The epoch number of a pass is read
    when its first batch is requested: ``initial_epoch`` for the first pass, then
    one more for each pass, unless :func:`set_dataset_epoch` (or the
    :class:`DatasetEpoch` callback, which :meth:`bmoe_tf.BiasedMixture.fit` adds by
    itself) says otherwise. So ``mixture.fit(ds, epochs=E,
    callbacks=[keras.callbacks.BackupAndRestore(...)])`` resumed at epoch k sees
    exactly the batches of an uninterrupted run. (Under a multi-device
    ``tf.distribute`` strategy, whose input prefetching starts a pass before Keras
    announces the epoch, the order is deterministic but the epoch labels of a
    resumed run are not guaranteed.) With ``shuffle=False`` the order is the
    input order, every epoch.

    Args:
      gate_inputs: ``[M, ...]`` numpy.
      cache: from :func:`build_expert_cache`, :func:`score_cache` or
        :func:`load_cache`.
      targets: ``[M, ...]``, needed for an ``"outputs"`` cache only.
      batch_size: B.
      shuffle: shuffle every epoch (see Order).
      seed: int in ``[0, 2**63)``.
      drop_remainder: drop a last batch smaller than B.
      initial_epoch: the epoch number of the first pass.
    """
    kind = cache_kind(cache)
    batch_size = check_count(batch_size, "batch_size", minimum=1)
    gate_inputs = np.asarray(gate_inputs, np.float32)
    features = {"gate_input": gate_inputs}
    features.update({k: v for k, v in cache.items() if k != "kind"})
    m = len(gate_inputs)
    for key, value in features.items():
        if len(value) != m:
            raise ValueError(f"cache entry {key!r} has {len(value)} rows but there are {m} inputs")
    if kind == "outputs":
        if targets is None:
            raise ValueError("an 'outputs' cache needs the targets to compute the task loss")
        y = np.asarray(targets, np.float32)
    elif kind == "scores":
        y = cache["scores"]
    else:
        y = cache["target_energy"]
    if not shuffle:
        ds = tf.data.Dataset.from_tensor_slices((features, y))
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    seed = check_count(seed, "seed")
    epoch = tf.Variable(check_count(initial_epoch, "initial_epoch"), dtype=tf.int64,
                        trainable=False, name="cache_dataset_epoch")
    data = tf.nest.map_structure(tf.constant, (features, y))
    seed_t = tf.constant(seed, tf.int64)

    def one_epoch(_):
        # read when the pass's first batch is requested (nothing is prefetched
        # outside this function), then count the pass
        e = epoch.read_value()
        with tf.control_dependencies([e]):
            step = epoch.assign_add(1)
        with tf.control_dependencies([step]):
            order = _order_tensor(seed_t, e, m)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=drop_remainder)
        return batches.map(lambda idx: tf.nest.map_structure(lambda t: tf.gather(t, idx), data),
                           num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True).prefetch(tf.data.AUTOTUNE)

    num_batches = m // batch_size if drop_remainder else -(-m // batch_size)
    ds = tf.data.Dataset.from_tensors(0).flat_map(one_epoch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
    _EPOCH_VARIABLES[ds] = epoch
    return ds


def mse_from_statistics(scales, features):
    """Per-example MSE of ``y = sum_n scales_n E_n`` from an ``"mse"`` cache batch.

    Args:
      scales: ``float[B, N]``, the factor on each expert's output (G of Eq. 2).
      features: dict with the ``"mse"`` cache entries for the batch.
    Returns:
      ``float[B]``, the mean over the D output elements of ``(y - t)^2``.
    """
    gram = features["residual_gram"]
    cross = features["residual_target"]
    energy = features["target_energy"]
    dev = tf.reduce_sum(scales, axis=1) - 1.0
    quad = tf.einsum("bn,bnk,bk->b", scales, gram, scales)
    quad += 2.0 * dev * tf.reduce_sum(scales * cross, axis=1) + tf.square(dev) * energy
    return quad / features["num_elements"]


def save_cache(path, cache):
    """Writes the cache atomically to ``path`` (``.npz``)."""
    cache_kind(cache)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **cache)
    os.replace(tmp, path)


def load_cache(path):
    """Reads a cache written by :func:`save_cache`."""
    with np.load(os.fspath(path)) as data:
        cache = {k: data[k] for k in data.files}
    cache_kind(cache)
    return cache
