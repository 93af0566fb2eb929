"""The expert cache: frozen experts' outputs (or loss statistics), computed once.

The experts never change while a gate trains, so running them every epoch is
waste. Two kinds of cache give *exactly* the loss of the mixture output
``y = sum_n G_n E_n(P_n(x))`` (Eq. 2) for any gate values G:

``"outputs"``
  ``outputs[M, N, ...]``: every expert's output; the mixture output is rebuilt
  from them and any Keras loss applies.
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
``tf.data`` pipeline that :class:`bmoe_tf.mixture.BiasedMixture` trains on.
"""
import os

import numpy as np

from bmoe_tf.backend import keras, tf

__all__ = ["CACHE_KINDS", "build_expert_cache", "cache_dataset", "save_cache", "load_cache",
           "mse_from_statistics"]

CACHE_KINDS = ("outputs", "mse")
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


def cache_dataset(gate_inputs, cache, targets=None, *, batch_size=128, shuffle=True, seed=0,
                  drop_remainder=False):
    """A ``tf.data.Dataset`` of ``(features, y)`` for training a gate on a cache.

    ``features`` is a dict with ``"gate_input"`` (``[B, ...]``, what the gate sees)
    and the cache entries for the batch; ``y`` is the target batch (an
    ``"outputs"`` cache needs it; an ``"mse"`` cache holds what it needs, and
    ``y`` is then ``target_energy``, unused).
    """
    kind = cache_kind(cache)
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
    else:
        y = cache["target_energy"]
    ds = tf.data.Dataset.from_tensor_slices((features, y))
    if shuffle:
        ds = ds.shuffle(m, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


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
