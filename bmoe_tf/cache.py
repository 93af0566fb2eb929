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
``tf.data`` pipeline that :class:`bmoe_tf.mixture.BiasedMixture` trains on. A cache
can be built in S shards (``build_expert_cache(..., num_shards=S, shard_index=i)``, one
process or machine each, saved at :func:`shard_path`); :func:`merge_cache_shards` /
:func:`load_cache_shards` join them into the single-process cache, byte for byte. Its
shuffled order is a function of ``(seed, epoch)`` only (:func:`epoch_order`), so a
run resumed by ``keras.callbacks.BackupAndRestore`` sees the same batches as an
uninterrupted one.
"""
import os
import weakref

import numpy as np

from bmoe_tf.backend import keras, tf
from bmoe_tf.checks import as_float_array, check_count, check_finite, is_int

__all__ = ["CACHE_KINDS", "build_expert_cache", "score_cache", "cache_dataset", "epoch_order",
           "set_dataset_epoch", "dataset_epoch_variable", "DatasetEpoch", "save_cache",
           "load_cache", "mse_from_statistics", "SHARD_KEYS", "is_cache_shard",
           "merge_cache_shards", "shard_path", "load_cache_shards", "shard_rows", "as_cache_shard"]

CACHE_KINDS = ("outputs", "mse", "scores")
_MSE_KEYS = ("residual_gram", "residual_target", "target_energy", "num_elements")
#: the metadata of a cache shard (``build_expert_cache(..., num_shards=S)``), int64 scalars
#: but the per-batch ``shard_batches`` / ``shard_batch_sizes``
SHARD_KEYS = ("shard_index", "shard_count", "shard_batches", "shard_batch_sizes",
              "shard_total_batches", "shard_batch_size")


def _check_shard(num_shards, shard_index):
    num_shards = check_count(num_shards, "num_shards", minimum=1)
    if not is_int(shard_index) or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be an integer in [0, num_shards={num_shards}), "
                         f"got {shard_index!r}")
    return num_shards, int(shard_index)


def _batches(inputs, targets, batch_size, num_shards=1, shard_index=0):
    """Yields ``(k, x, y)`` for the batches ``k`` with ``k % num_shards == shard_index``."""
    if isinstance(inputs, tf.data.Dataset):
        if num_shards > 1:
            inputs = inputs.shard(num_shards, shard_index)
        for j, item in enumerate(inputs):
            x, y = item if isinstance(item, tuple) else (item, None)
            yield (shard_index + j * num_shards, np.asarray(x),
                   (None if y is None else np.asarray(y)))
        return
    x_all = np.asarray(inputs)
    y_all = None if targets is None else np.asarray(targets)
    if y_all is not None and len(y_all) != len(x_all):
        raise ValueError(f"{len(x_all)} inputs but {len(y_all)} targets")
    num_batches = -(-len(x_all) // batch_size)
    for k in range(shard_index, num_batches, num_shards):
        start = k * batch_size
        yield (k, x_all[start:start + batch_size],
               None if y_all is None else y_all[start:start + batch_size])


def build_expert_cache(experts, inputs, targets=None, *, kind="outputs", batch_size=256,
                       verbose=1, num_shards=1, shard_index=0):
    """Runs every expert once on every input and keeps what the loss needs.

    Sharding. With ``num_shards = S > 1`` this builds shard ``shard_index = i`` of
    the cache only: the batches ``k`` with ``k % S == i``, where batch ``k`` is the
    one a single process sees (numpy inputs: rows ``[k * batch_size, (k + 1) *
    batch_size)``; a dataset: its k-th element, through ``dataset.shard(S, i)``).
    Every expert therefore runs on exactly the batches it runs on in one process,
    and :func:`merge_cache_shards` of the S shards (in any order) gives the
    single-process cache byte for byte. A dataset must yield the same batches in
    every process (no unseeded or per-iteration shuffling). A shard holds the
    cache entries of its batches (concatenated in batch order) plus the
    ``int64`` metadata of :data:`SHARD_KEYS`: ``shard_index``, ``shard_count``,
    ``shard_batches`` (the global batch indices held), ``shard_batch_sizes``
    (their rows), ``shard_total_batches`` (batches in the whole input, -1 when a
    dataset's cardinality is unknown) and ``shard_batch_size`` (``batch_size``
    for numpy inputs, -1 for a dataset). A shard that gets no batch (more shards
    than batches) holds only ``kind`` and the metadata. Save shards with
    :func:`save_cache` (e.g. at :func:`shard_path`); :func:`cache_dataset`
    refuses them until merged. ``num_shards=1`` gives the plain cache (no
    metadata).

    Args:
      experts: list of :class:`bmoe_tf.Expert`.
      inputs: ``[M, ...]`` raw inputs (numpy) or a ``tf.data.Dataset`` of batched
        ``(x, y)`` pairs.
      targets: ``[M, ...]`` targets for numpy inputs (needed for ``"mse"``).
      kind: ``"outputs"`` or ``"mse"``.
      batch_size: batch size for numpy inputs.
      verbose: 1 for a Keras progress bar.
      num_shards: S, the number of shards the cache is built in (int >= 1).
      shard_index: which shard to build (int in ``[0, S)``).
    Returns:
      dict of numpy arrays with key ``"kind"`` and, for ``"outputs"``,
      ``outputs[M, N, ...]``; for ``"mse"`` the statistics described above plus
      ``num_elements[M]`` (D per example). For ``S > 1``, the shard's rows only,
      plus the shard metadata.
    """
    if kind == "scores":
        raise ValueError("a 'scores' cache is built from the scores themselves: "
                         "use score_cache(scores)")
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; allowed: {', '.join(CACHE_KINDS)}")
    num_shards, shard_index = _check_shard(num_shards, shard_index)
    is_dataset = isinstance(inputs, tf.data.Dataset)
    if is_dataset:
        cardinality = int(inputs.cardinality())
        total_batches = cardinality if cardinality >= 0 else -1
        total = None
    else:
        batch_size = check_count(batch_size, "batch_size", minimum=1)
        inputs = np.asarray(inputs)
        total_batches = -(-len(inputs) // batch_size)
        total = sum(min(batch_size, len(inputs) - k * batch_size)
                    for k in range(shard_index, total_batches, num_shards))
        if kind == "mse" and targets is None:
            raise ValueError("an 'mse' cache needs targets")
    bar = keras.utils.Progbar(total, unit_name="example", verbose=verbose)
    chunks = {}
    held, sizes = [], []
    for k, x, y in _batches(inputs, targets, batch_size, num_shards, shard_index):
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
        held.append(k)
        sizes.append(len(x))
        bar.add(len(x))
    if not chunks and (num_shards == 1 or total_batches == 0):
        raise ValueError("no inputs to cache")
    cache = {key: np.concatenate(values) for key, values in chunks.items()}
    cache["kind"] = np.array(kind)
    if num_shards > 1:
        cache.update({
            "shard_index": np.array(shard_index, np.int64),
            "shard_count": np.array(num_shards, np.int64),
            "shard_batches": np.array(held, np.int64),
            "shard_batch_sizes": np.array(sizes, np.int64),
            "shard_total_batches": np.array(total_batches, np.int64),
            "shard_batch_size": np.array(-1 if is_dataset else batch_size, np.int64),
        })
    return cache


def shard_rows(num_examples, batch_size, num_shards, shard_index):
    """The rows of shard ``i`` of ``S`` of ``M`` examples cut in batches of ``batch_size``.

    The same rule as :func:`build_expert_cache`: the ``ceil(M / batch_size)``
    consecutive batches ``k`` with ``k % S == i``, in increasing order. For work that
    is not a :class:`bmoe_tf.Expert` call (e.g. a detector with its own post-processing):
    run it on ``rows``, then :func:`as_cache_shard` the result.

    Returns:
      ``(rows int64[r], batches int64[b], sizes int64[b])``: the rows, the global
      batch indices held and their sizes.
    """
    m = check_count(num_examples, "num_examples")
    batch_size = check_count(batch_size, "batch_size", minimum=1)
    num_shards, shard_index = _check_shard(num_shards, shard_index)
    batches = np.arange(shard_index, -(-m // batch_size), num_shards, dtype=np.int64)
    sizes = np.minimum(batch_size, m - batches * batch_size).astype(np.int64)
    rows = (np.concatenate([np.arange(k * batch_size, k * batch_size + n) for k, n in
                            zip(batches, sizes)]).astype(np.int64)
            if len(batches) else np.zeros(0, np.int64))
    return rows, batches, sizes


def as_cache_shard(cache, *, num_examples, batch_size, num_shards, shard_index):
    """``cache`` (an ``"outputs"`` or ``"mse"`` cache of exactly the rows
    :func:`shard_rows` ``(num_examples, batch_size, num_shards, shard_index)``, in that
    order) with the shard metadata :func:`merge_cache_shards` needs.

    Raises:
      ValueError: an entry with another number of rows than the shard holds.
    """
    kind = cache_kind(cache)
    if is_cache_shard(cache):
        raise ValueError("cache is a shard already")
    rows, batches, sizes = shard_rows(num_examples, batch_size, num_shards, shard_index)
    out = {}
    for key, value in cache.items():
        if key == "kind":
            continue
        if len(value) != len(rows):
            raise ValueError(f"cache entry {key!r} has {len(value)} rows, shard {shard_index} of "
                             f"{num_shards} holds {len(rows)}")
        if len(rows):
            out[key] = value
    out["kind"] = np.array(kind)
    out.update({
        "shard_index": np.array(shard_index, np.int64),
        "shard_count": np.array(num_shards, np.int64),
        "shard_batches": batches,
        "shard_batch_sizes": sizes,
        "shard_total_batches": np.array(-(-int(num_examples) // int(batch_size)), np.int64),
        "shard_batch_size": np.array(batch_size, np.int64),
    })
    return out


def is_cache_shard(cache):
    """True when ``cache`` is one shard of a cache (see :func:`build_expert_cache`)."""
    return any(key in cache for key in SHARD_KEYS)


def _shard_int(shard, key):
    return int(np.asarray(shard[key]))


def merge_cache_shards(shards):
    """The cache one process builds, from the shards of :func:`build_expert_cache`.

    Args:
      shards: the S shard caches (from ``build_expert_cache(..., num_shards=S,
        shard_index=i)`` for every i, or :func:`load_cache` of their files), in any
        order.
    Returns:
      the single-process cache: the same keys in the same order, dtypes and rows
      (batch order), byte for byte, without the shard metadata.
    Raises:
      ValueError: no shards, something that is not a shard, shards of different
        kinds, shard counts, batch sizes, totals, entries or entry shapes /
        dtypes, a shard given twice (overlap), a missing shard or batch, or a
        shard whose metadata does not match its entries.
    """
    if isinstance(shards, dict):
        raise ValueError("shards must be a sequence of shard caches, got one cache (a dict)")
    shards = list(shards)
    if not shards:
        raise ValueError("shards: no shard caches to merge")
    for pos, shard in enumerate(shards):
        if not isinstance(shard, dict) or not is_cache_shard(shard):
            raise ValueError(f"shards[{pos}] is not a cache shard (no shard metadata); build "
                             f"shards with build_expert_cache(..., num_shards=S, shard_index=i)")
        missing = [key for key in SHARD_KEYS if key not in shard]
        if missing:
            raise ValueError(f"shards[{pos}] lacks the shard metadata {', '.join(missing)}")
        cache_kind(shard)

    def same(what, values):
        if len(set(values)) > 1:
            shown = ", ".join(f"shards[{p}]: {v}" for p, v in enumerate(values))
            raise ValueError(f"the shards disagree on {what} ({shown})")
        return values[0]

    kind = same("the cache kind", [str(np.asarray(s["kind"])) for s in shards])
    count = same("the number of shards", [_shard_int(s, "shard_count") for s in shards])
    batch_size = same("the batch size", [_shard_int(s, "shard_batch_size") for s in shards])
    total = same("the total number of batches",
                 [_shard_int(s, "shard_total_batches") for s in shards])
    by_index = {}
    for pos, shard in enumerate(shards):
        index = _shard_int(shard, "shard_index")
        if not 0 <= index < count:
            raise ValueError(f"shards[{pos}] has shard_index {index}, not in [0, {count})")
        if index in by_index:
            raise ValueError(f"overlapping shards: shard {index} of {count} is given twice "
                             f"(shards[{by_index[index]}] and shards[{pos}])")
        by_index[index] = pos
    absent = [i for i in range(count) if i not in by_index]
    if absent:
        raise ValueError(f"missing shards: {', '.join(map(str, absent))} of {count} "
                         f"(got {len(shards)} shards)")

    layout = None  # key -> (dtype, shape[1:]) of the entries, in the first full shard's order
    pieces = {}  # global batch index -> (shard position, first row, rows)
    for index in range(count):
        pos = by_index[index]
        shard = shards[pos]
        batches = np.asarray(shard["shard_batches"]).reshape(-1)
        sizes = np.asarray(shard["shard_batch_sizes"]).reshape(-1)
        entries = [key for key in shard if key not in SHARD_KEYS and key != "kind"]
        where = f"shards[{pos}] (shard {index} of {count})"
        if len(batches) != len(sizes):
            raise ValueError(f"{where} lists {len(batches)} batches but {len(sizes)} sizes")
        if np.any(batches % count != index) or np.any(np.diff(batches) <= 0) or (
                len(batches) and batches[0] < 0):
            raise ValueError(f"{where} holds batches {batches.tolist()}, not the batches "
                             f"k = {index} mod {count} in increasing order")
        if np.any(sizes < 1):
            raise ValueError(f"{where} lists empty batches (sizes {sizes.tolist()})")
        if not len(batches):
            if entries:
                raise ValueError(f"{where} holds no batches but has entries {entries}")
            continue
        shard_layout = {key: (np.asarray(shard[key]).dtype, np.shape(shard[key])[1:])
                        for key in entries}
        if layout is None:
            layout = shard_layout
        elif set(shard_layout) != set(layout):
            raise ValueError(f"the shards hold different entries: {sorted(layout)} and "
                             f"{sorted(shard_layout)} in {where}")
        else:
            for key, (dtype, shape) in shard_layout.items():
                if (dtype, shape) != layout[key]:
                    raise ValueError(
                        f"entry {key!r} of {where} is {dtype}{list(shape)} per row, other "
                        f"shards have {layout[key][0]}{list(layout[key][1])}")
        rows = int(sizes.sum())
        for key in entries:
            if len(shard[key]) != rows:
                raise ValueError(f"entry {key!r} of {where} has {len(shard[key])} rows but its "
                                 f"batches hold {rows}")
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for k, start, size in zip(batches.tolist(), first.tolist(), sizes.tolist()):
            pieces[k] = (pos, start, size)
    if layout is None:
        raise ValueError("no inputs to cache: every shard is empty")
    num_batches = max(pieces) + 1
    if total >= 0 and num_batches > total:
        raise ValueError(f"the shards hold batch {num_batches - 1} but the input had {total}")
    want = total if total >= 0 else num_batches
    lost = [k for k in range(want) if k not in pieces]
    if lost:
        shown = ", ".join(f"{k} (shard {k % count})" for k in lost[:10])
        raise ValueError(f"missing batches: {shown}{' ...' if len(lost) > 10 else ''} of {want}")
    if batch_size > 0:
        wrong = [k for k in range(want) if pieces[k][2] > batch_size
                 or (pieces[k][2] != batch_size and k != want - 1)]
        if wrong:
            raise ValueError(f"batch {wrong[0]} has {pieces[wrong[0]][2]} rows, not "
                             f"batch_size={batch_size}")
    order = [pieces[k] for k in range(want)]
    cache = {key: np.concatenate([np.asarray(shards[pos][key])[start:start + size]
                                  for pos, start, size in order])
             for key in layout}
    cache["kind"] = np.array(kind)
    return cache


def shard_path(path, shard_index, num_shards):
    """Where shard ``i`` of ``S`` of the cache at ``path`` goes:
    ``<stem>.shard-<i>-of-<S>.npz`` next to ``path`` (``<stem>`` is ``path`` without
    ``.npz``)."""
    num_shards, shard_index = _check_shard(num_shards, shard_index)
    path = os.fspath(path)
    stem = path[:-4] if path.endswith(".npz") else path
    return f"{stem}.shard-{shard_index}-of-{num_shards}.npz"


def load_cache_shards(path, num_shards):
    """:func:`merge_cache_shards` of the S files :func:`shard_path` ``(path, i, S)``.

    Raises:
      FileNotFoundError: shard files are missing (all of them are named).
      ValueError: a file holds another shard than its name says, or the shards do
        not merge (see :func:`merge_cache_shards`).
    """
    num_shards = check_count(num_shards, "num_shards", minimum=1)
    paths = [shard_path(path, i, num_shards) for i in range(num_shards)]
    absent = [p for p in paths if not os.path.exists(p)]
    if absent:
        raise FileNotFoundError(f"missing cache shard files: {', '.join(absent)}")
    shards = []
    for i, p in enumerate(paths):
        shard = load_cache(p)
        if not is_cache_shard(shard):
            raise ValueError(f"{p} is not a cache shard")
        got = (_shard_int(shard, "shard_index"), _shard_int(shard, "shard_count"))
        if got != (i, num_shards):
            raise ValueError(f"{p} holds shard {got[0]} of {got[1]}, not {i} of {num_shards}")
        shards.append(shard)
    return merge_cache_shards(shards)


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

# transformations that keep one pass of their input per pass (what they wrap is found
# through them): Dataset.with_options, map, prefetch, assert_cardinality
_TRANSPARENT = frozenset(("optionsdataset", "mapdataset", "parallelmapdataset",
                          "prefetchdataset", "assertcardinalitydataset"))


def _epoch_variable(dataset):
    """The epoch variable of a shuffled :func:`cache_dataset`, also seen through the
    :data:`_TRANSPARENT` transformations of one (``ds.with_options(...)`` as
    ``tf.distribute`` set-ups need); None for anything else."""
    for _ in range(64):
        try:
            variable = _EPOCH_VARIABLES.get(dataset)
        except TypeError:  # not weak-referenceable: not one of ours
            return None
        if variable is not None:
            return variable
        if (not isinstance(dataset, tf.data.Dataset)
                or type(dataset).__name__.replace("_", "").lower() not in _TRANSPARENT):
            return None
        inputs = dataset._inputs()
        if len(inputs) != 1:
            return None
        dataset = inputs[0]
    return None


def dataset_epoch_variable(dataset):
    """The ``int64`` ``tf.Variable`` holding the epoch number of the next pass over a
    shuffled :func:`cache_dataset` (or one derived from it by ``with_options``, ``map``,
    ``prefetch``), or None. :meth:`bmoe_tf.BiasedMixture.fit` checkpoints it with the
    model, so that ``BackupAndRestore`` restores it."""
    return _epoch_variable(dataset)


def set_dataset_epoch(dataset, epoch):
    """Makes the next pass over a shuffled :func:`cache_dataset` be epoch ``epoch``.

    ``dataset`` may also be derived from one by ``with_options``, ``map`` or
    ``prefetch``. Returns True, or False when ``dataset`` has no epoch (not
    shuffled, or not made by :func:`cache_dataset`).
    """
    variable = _epoch_variable(dataset)
    if variable is None:
        return False
    variable.assign(check_count(epoch, "epoch"))
    return True


class DatasetEpoch(keras.callbacks.Callback):
    """Tells shuffled :func:`cache_dataset` datasets which epoch Keras is in.

    ``on_epoch_begin(epoch)`` sets the next pass to ``epoch`` (:func:`set_dataset_epoch`)
    and ``on_epoch_end(epoch)`` to ``epoch + 1``, so epoch ``e`` of ``fit`` uses
    :func:`epoch_order` ``(seed, e)`` whatever ran before: also after ``fit(initial_epoch=k)``
    and when ``fit`` resumes at epoch k through ``BackupAndRestore``. This holds for every
    ``tf.distribute`` strategy (default, ``MirroredStrategy`` with several devices,
    ``MultiWorkerMirroredStrategy``): Keras creates each epoch's iterator after the
    previous ``on_epoch_end`` and the pass reads its epoch number at its first batch,
    after ``on_epoch_begin`` (tf.data and the distributed iterators start prefetching
    at the first batch, not when the iterator is made; measured with TF 2.21, tested in
    ``tests/bmoe_tf/test_mixture_distributed.py``). Placed before ``BackupAndRestore`` (as
    :meth:`bmoe_tf.BiasedMixture.fit` does, which adds this callback by itself and
    checkpoints the training dataset's :func:`dataset_epoch_variable` with the model),
    the backup made at the end of epoch ``k - 1`` holds ``k``, and the restore sets
    it before the resumed run makes any iterator. Add it to other models' fit.

    Args:
      *datasets: datasets (others, e.g. numpy arrays or None, are ignored); shuffled
        :func:`cache_dataset` ones and those derived from them by ``with_options``,
        ``map``, ``prefetch`` are followed.
    """

    def __init__(self, *datasets):
        super().__init__()
        self.datasets = [d for d in datasets if _epoch_variable(d) is not None]
        #: their epoch variables, in the same order
        self.variables = [_epoch_variable(d) for d in self.datasets]

    def _set(self, epoch):
        for variable in self.variables:
            variable.assign(check_count(epoch, "epoch"))

    def on_epoch_begin(self, epoch, logs=None):
        self._set(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._set(epoch + 1)


def cache_dataset(gate_inputs, cache, targets=None, *, batch_size=128, shuffle=True, seed=0,
                  drop_remainder=False, initial_epoch=0, payload_bytes=None):
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
    itself) says otherwise. Guaranteed: ``mixture.fit(ds, epochs=E, ...)`` trains epoch
    ``e`` on ``epoch_order(seed, e)`` for every ``e`` under every ``tf.distribute``
    strategy (default, ``MirroredStrategy`` with several devices,
    ``MultiWorkerMirroredStrategy``; each global batch then splits over the replicas),
    with ``initial_epoch=k``, and when ``keras.callbacks.BackupAndRestore`` resumes it at
    epoch k in a fresh process with a fresh dataset: exactly the batches of an
    uninterrupted run. This holds as well for ``ds.with_options(...)``, ``ds.map(...)``
    and ``ds.prefetch(...)`` of it (:class:`DatasetEpoch` finds the epoch through them),
    not for other transformations. With ``shuffle=False`` the order is the input order,
    every epoch.

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
      payload_bytes: ``float[M, N]``, each input's payload bytes per expert
        (:meth:`bmoe_tf.Expert.payload_sizes`), or None. Given, every batch carries it as
        ``"payload_bytes"``: what a gate trained with ``method="enforce_bytes"`` routes
        on, and what the mixture's ``data_cost`` metric then counts.
    """
    kind = cache_kind(cache)
    if is_cache_shard(cache):
        raise ValueError(
            f"cache is shard {_shard_int(cache, 'shard_index')} of "
            f"{_shard_int(cache, 'shard_count')} of an expert cache; merge the shards with "
            f"merge_cache_shards (or load_cache_shards) first")
    batch_size = check_count(batch_size, "batch_size", minimum=1)
    gate_inputs = np.asarray(gate_inputs, np.float32)
    features = {"gate_input": gate_inputs}
    features.update({k: v for k, v in cache.items() if k != "kind"})
    m = len(gate_inputs)
    if payload_bytes is not None:
        c = np.asarray(payload_bytes, np.float32)
        if c.ndim != 2 or not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ValueError(f"payload_bytes must be finite bytes >= 0 of shape [M, N], got "
                             f"shape {c.shape}")
        features["payload_bytes"] = c
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
