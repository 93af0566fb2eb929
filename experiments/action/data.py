"""Clip sets of the action task from three sources: generated, a folder of videos, tfds.

Every source gives one :class:`~experiments.action.clips.ClipSet` per split of
``SPLIT_NAMES``: ``experts`` (the experts' training clips), ``train`` (the gate's
training clips), ``validation`` and ``test``. Clips keep F_t motion-vector maps
(``decoded.mv[1:F_t + 1]``: the motion into frames 1..F_t, so a clip needs F_t + 1
decoded frames) and F_s RGB frames evenly spaced over frames 0..F_t (for F_s = 2:
frames 0 and F_t), centre-cropped to a square and resized (PIL bilinear, which
anti-aliases when it shrinks) to S x S (:func:`clip_arrays`).

Sources (``load_splits(data, ...)``, ``data`` as :func:`parse_data` reads it):

* ``"generated"``: :func:`experiments.action.footage.generate_splits` (the default set).

* ``"folder:PATH"`` (:func:`load_folder`): videos in class subfolders, UCF-101's own
  layout (``PATH/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi``). A class is an
  immediate subfolder (sorted names -> class indices; hidden folders and
  ``ucfTrainTestlist`` are not classes; a subfolder with no video is skipped with a
  printed line). Videos are the files with extension .avi .mp4 .mkv .mov .webm (any
  case) directly in a class folder. The motion vectors are read from each file's own
  bitstream, in pixels per frame of the decoded video. Unlike the generated set
  (libx264 with one past reference, no B-frames), a file's own bitstream may have
  B-frames or several references (UCF-101's xvid AVIs have B-frames): FFmpeg does not
  say how far a vector reaches, so such vectors may span more than one frame and the
  maps are approximate (see :mod:`experiments.action.video`). The RGB frames are the
  file's decoded frames.

  Groups: the ``_gNN_`` part of a file name (``v_<Class>_g08_c03.avi`` -> group 8).
  UCF-101 numbers its groups g01..g25 in every class and its official splits hold out
  whole group *numbers* across all classes, so the folder is split by group number,
  globally: one number lands in one split for every class. A file without ``_gNN_``
  is a group of its own (keyed by its class and file stem). The ``groups`` field of
  a clip is ``"<class>/gNN"`` (or ``"<class>/<stem>"``), so no group of the ClipSets
  spans two splits.

  Splits: when ``trainlist01.txt`` and ``testlist01.txt`` (UCF-101 split 1) lie in
  PATH or ``PATH/ucfTrainTestlist/``, the testlist's files are the test split and the
  trainlist's groups are split into experts / train / validation (files in neither
  list are skipped with a printed count; listed files missing from the folder are
  ignored, so a folder may hold a subset of UCF-101). Otherwise all groups are split
  over the four splits. Group numbers are shuffled (seeded) from their sorted order
  and dealt out by ``DEFAULT_FRACTIONS`` (experts 0.4, train 0.3, validation 0.1,
  test 0.2 of the groups; renormalised over the first three with split lists; at
  least one group per split). The whole layout (classes, groups, lists, splits) is
  checked before any video is decoded.

* ``"tfds:NAME"`` (:func:`load_tfds`, e.g. ``tfds:ucf101/ucf101_1_256``): a *prepared*
  TensorFlow Datasets dataset (``--tfds_data_dir``); nothing is downloaded. tfds keeps
  JPEG frames, not the original bitstream, so the first F_t + 1 frames (cropped to an
  even height and width) are re-encoded with libx264
  (:func:`experiments.action.video.encode_h264`) and the motion vectors read from that
  encoding: they are x264's vectors of the re-encoded frames, not the source file's.
  The RGB frames are the tfds frames themselves. tfds has no UCF group, so its
  ``train`` split is dealt into experts / train / validation by a seeded permutation
  of the example indices (fractions as above, renormalised) and tfds ``test`` is our
  test; clips of one UCF group may therefore land in several of our splits. Groups
  are ``"tfds:<split>:<index>"``.

Caps (``sizes`` / ``max_clips``): at most that many clips per split (0 or None: all);
a folder's are chosen by a seeded round robin over the classes (a cap keeps the
classes balanced), tfds examples by a seeded random subset (their labels are not known
before reading). Only the chosen clips are decoded. Real data has ``degradation == ""`` throughout.

Bad input raises ``ValueError`` naming the path, file, class or tfds example.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping

import numpy as np

from experiments.action.clips import MV_GRID, ClipSet

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLIT_NAMES",
    "VIDEO_EXTENSIONS",
    "clip_arrays",
    "load_folder",
    "load_splits",
    "load_tfds",
    "parse_data",
]

#: experts: the experts' training clips; train: the gate's; validation; test.
SPLIT_NAMES = ("experts", "train", "validation", "test")
#: Share of the groups (folder) or examples (tfds train) each split gets.
DEFAULT_FRACTIONS = {"experts": 0.4, "train": 0.3, "validation": 0.1, "test": 0.2}
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm")
_LIST_DIR = "ucfTrainTestlist"
_GROUP_RE = re.compile(r"_g(\d+)_", re.IGNORECASE)
_PROGRESS_EVERY = 100
_FORMS = ("'generated', 'folder:PATH' (videos in class subfolders, UCF-101 layout) or "
          "'tfds:NAME' (a prepared tfds dataset, e.g. tfds:ucf101/ucf101_1_256)")


# --------------------------------------------------------------------------- parsing

def parse_data(data) -> tuple:
    """``"generated"`` -> ``("generated", None)``; ``"folder:PATH"`` -> ``("folder", PATH)``;
    ``"tfds:NAME"`` -> ``("tfds", NAME)``. Anything else: ValueError listing the forms."""
    data = str(data)
    if data == "generated":
        return "generated", None
    for kind in ("folder", "tfds"):
        prefix = kind + ":"
        if data.startswith(prefix):
            arg = data[len(prefix):]
            if not arg:
                raise ValueError(f"--data={data!r} needs a {'path' if kind == 'folder' else 'name'}"
                                 f" after '{prefix}'; use {_FORMS}")
            return kind, arg
    raise ValueError(f"unknown --data={data!r}; use {_FORMS}")


# --------------------------------------------------------------------------- one clip

def _rgb_frames(frames, *, mv_frames, rgb_frames, frame_size):
    """``uint8[F_s, S, S, 3]``: frames evenly spaced over 0..F_t, centre square, resized."""
    from PIL import Image

    idx = np.rint(np.linspace(0, mv_frames, int(rgb_frames))).astype(np.int64)
    out = np.empty((len(idx), frame_size, frame_size, 3), np.uint8)
    for k, i in enumerate(idx):
        frame = np.asarray(frames[i], np.uint8)
        h, w = frame.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = np.ascontiguousarray(frame[top:top + side, left:left + side, :3])
        if side != frame_size:
            square = np.asarray(Image.fromarray(square).resize(
                (frame_size, frame_size), Image.Resampling.BILINEAR))
        out[k] = square
    return out


def _check_sizes(mv_frames, rgb_frames, frame_size):
    if int(mv_frames) < 1 or int(rgb_frames) < 1 or int(frame_size) < 1:
        raise ValueError(f"mv_frames, rgb_frames and frame_size must be >= 1, got "
                         f"{mv_frames}, {rgb_frames}, {frame_size}")


def clip_arrays(decoded, *, mv_frames, rgb_frames, frame_size):
    """``(mv float32[F_t, 24, 24, 2], rgb uint8[F_s, S, S, 3])`` of a decoded video.

    ``mv = decoded.mv[1:F_t + 1]`` (the motion into frames 1..F_t); ``rgb``: F_s of
    ``decoded.frames`` evenly spaced from frame 0 to frame F_t, centre-cropped to a
    square and resized to S x S. ValueError if the video has fewer than F_t + 1 frames
    or was decoded without its frames.
    """
    _check_sizes(mv_frames, rgb_frames, frame_size)
    mv_frames, rgb_frames, frame_size = int(mv_frames), int(rgb_frames), int(frame_size)
    n = len(decoded.mv)
    if n < mv_frames + 1:
        raise ValueError(f"the video has {n} frames, fewer than the {mv_frames + 1} "
                         f"(mv_frames + 1) needed for {mv_frames} motion-vector maps")
    if decoded.frames is None or len(decoded.frames) < mv_frames + 1:
        raise ValueError("clip_arrays needs the decoded frames "
                         "(read_motion_vectors(..., keep_frames=True))")
    mv = np.asarray(decoded.mv[1:mv_frames + 1], np.float32)
    if mv.shape[1:] != (MV_GRID, MV_GRID, 2):
        raise ValueError(f"motion-vector maps must be [{MV_GRID}, {MV_GRID}, 2], "
                         f"got {mv.shape[1:]}")
    rgb = _rgb_frames(decoded.frames, mv_frames=mv_frames, rgb_frames=rgb_frames,
                      frame_size=frame_size)
    return mv, rgb


# --------------------------------------------------------------------------- helpers

@dataclasses.dataclass
class _Clip:
    path: str         # absolute or PATH-relative file path (for messages and decoding)
    rel: str          # "<class folder>/<file name>"
    label: int
    group: str        # the clip's group: "<class>/gNN" or "<class>/<stem>"
    unit: str         # the unit of splitting: "gNN" (global number) or "<class>/<stem>"


def _fractions(fractions, splits):
    """Normalised fractions of ``splits`` (from ``fractions`` or the defaults)."""
    given = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    unknown = sorted(set(given) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"fractions: unknown split(s) {unknown}; splits are {list(SPLIT_NAMES)}")
    missing = [s for s in splits if s not in given]
    if missing:
        raise ValueError(f"fractions: missing split(s) {missing}")
    vals = np.array([float(given[s]) for s in splits])
    if not np.all(np.isfinite(vals)) or np.any(vals <= 0):
        raise ValueError(f"fractions must be > 0 for {list(splits)}, got "
                         f"{dict(zip(splits, vals.tolist()))}")
    return vals / vals.sum()


def _deal(n, fractions):
    """Counts per split summing to ``n >= len(fractions)``, near ``n * fractions``, >= 1 each."""
    target = np.asarray(fractions, np.float64) * n
    counts = np.maximum(np.floor(target).astype(np.int64), 1)
    while counts.sum() > n:  # the minimum of one pushed the sum over: take from the largest
        k = int(np.argmax(np.where(counts > 1, counts - target, -np.inf)))
        counts[k] -= 1
    while counts.sum() < n:  # largest remainder first
        counts[int(np.argmax(target - counts))] += 1
    return counts


def _round_robin(labels, cap, rng):
    """Indices (sorted) of at most ``cap`` items: classes in turn, a seeded order within each."""
    labels = np.asarray(labels)
    if not cap or cap >= len(labels):
        return np.arange(len(labels))
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen = []
    while len(chosen) < cap:
        for items in per_class:
            if items and len(chosen) < cap:
                chosen.append(items.pop(0))
    return np.sort(np.asarray(chosen, np.int64))


def _caps(max_clips, splits):
    """``{split: cap or None}`` of an int (every split), a mapping, or None."""
    if max_clips is None:
        return {s: None for s in splits}
    if isinstance(max_clips, Mapping):
        unknown = sorted(set(max_clips) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown} in the caps; splits are "
                             f"{list(SPLIT_NAMES)}")
        raw = {s: max_clips.get(s) for s in splits}
    else:
        raw = {s: max_clips for s in splits}
    out = {}
    for s, v in raw.items():
        v = 0 if v is None else int(v)
        if v < 0:
            raise ValueError(f"caps must be >= 0 (0 = all), got {s}={v}")
        out[s] = v or None
    return out


def _progress(where, done, total, start):
    of = f"/{total}" if total else ""
    print(f"{where}: {done}{of} clips ({time.time() - start:.0f} s)", flush=True)


def _row(mv, rgb):
    """``(mv float16, rgb, mv_bytes, rgb_bytes)`` of one clip (bytes from the float32 maps)."""
    from experiments.action.video import compressed_mv_bytes, jpeg_bytes

    return mv.astype(np.float16), rgb, compressed_mv_bytes(mv), jpeg_bytes(rgb, 90)


def _build(rows, labels, groups, clip_ids, class_names, source, mv_frames, rgb_frames,
           frame_size):
    """A ClipSet of ``rows`` (:func:`_row` tuples) and the per-clip fields."""
    n = len(labels)
    mvs, rgbs, mv_bytes, rgb_bytes = zip(*rows) if n else ((), (), (), ())
    return ClipSet(
        mv=(np.stack(mvs) if n else np.zeros((0, mv_frames, MV_GRID, MV_GRID, 2), np.float16)),
        rgb=(np.stack(rgbs) if n else np.zeros((0, rgb_frames, frame_size, frame_size, 3),
                                               np.uint8)),
        labels=np.asarray(labels, np.int32), class_names=tuple(class_names),
        groups=np.asarray(groups, dtype=str), clip_ids=np.asarray(clip_ids, dtype=str),
        degradation=np.full(n, "", dtype=str), mv_bytes=np.asarray(mv_bytes, np.int64),
        rgb_bytes=np.asarray(rgb_bytes, np.int64), source=source)


# --------------------------------------------------------------------------- folder

def _find_lists(path):
    """``(trainlist, testlist)`` paths of UCF-101 split 1, or None when absent."""
    for folder in (path, os.path.join(path, _LIST_DIR)):
        train = os.path.join(folder, "trainlist01.txt")
        test = os.path.join(folder, "testlist01.txt")
        if os.path.isfile(train) and os.path.isfile(test):
            return train, test
        if os.path.isfile(train) or os.path.isfile(test):
            have, lack = (train, test) if os.path.isfile(train) else (test, train)
            raise ValueError(f"{have} found but not {lack}; the UCF-101 split lists come in "
                             f"pairs (trainlist01.txt and testlist01.txt)")
    return None


def _read_list(list_path):
    """Lower-cased ``"<class>/<file>"`` entries of a UCF-101 split list (labels ignored)."""
    entries = []
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{list_path}: cannot be read ({err})") from err
    for k, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        rel = line.split()[0].replace("\\", "/").strip("/")
        if rel.count("/") != 1:
            raise ValueError(f"{list_path} line {k}: {line!r} is not '<Class>/<file>' "
                             f"(UCF-101 list format: 'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
                             f" 1')")
        entries.append(rel.lower())
    return entries


def _scan_folder(path):
    """``(class_names, clips)``: the layout, checked, without decoding anything."""
    if not os.path.isdir(path):
        raise ValueError(f"video folder {path!r} does not exist or is not a directory")
    subdirs = sorted(d for d in os.listdir(path)
                     if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")
                     and d != _LIST_DIR)
    if not subdirs:
        raise ValueError(f"video folder {path!r} has no class subfolders; expected one "
                         f"subfolder per class holding its videos (UCF-101 layout: "
                         f"{path}/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi)")
    per_class, empty = {}, []
    for d in subdirs:
        files = sorted(f for f in os.listdir(os.path.join(path, d))
                       if f.lower().endswith(VIDEO_EXTENSIONS)
                       and os.path.isfile(os.path.join(path, d, f)))
        if files:
            per_class[d] = files
        else:
            empty.append(d)
    if not per_class:
        raise ValueError(f"video folder {path!r}: none of its subfolders {subdirs[:10]}"
                         f"{' ...' if len(subdirs) > 10 else ''} holds a video "
                         f"({', '.join(VIDEO_EXTENSIONS)})")
    if empty:
        print(f"video folder {path}: skipping {len(empty)} subfolder(s) without videos: "
              f"{empty[:10]}{' ...' if len(empty) > 10 else ''}")
    class_names = tuple(sorted(per_class))
    clips = []
    for label, name in enumerate(class_names):
        for f in per_class[name]:
            m = ([None] + list(_GROUP_RE.finditer(f)))[-1]  # the last _gNN_ of the name
            stem = os.path.splitext(f)[0]
            if m:
                unit = f"g{int(m.group(1)):02d}"
            else:
                unit = f"{name}/{stem}"
            clips.append(_Clip(path=os.path.join(path, name, f), rel=f"{name}/{f}", label=label,
                               group=f"{name}/{unit}" if m else unit, unit=unit))
    for label, name in enumerate(class_names):
        groups = sorted({c.group for c in clips if c.label == label})
        if len(groups) < 2:
            raise ValueError(
                f"class {name!r} in {path} has one group only ({groups[0]}, "
                f"{sum(c.label == label for c in clips)} video(s)); a group never spans two "
                f"splits, so a class needs videos of at least 2 groups (the '_gNN_' part of "
                f"UCF-101 file names, e.g. v_{name}_g01_c01.avi) to be in both the experts and "
                f"the test split")
    return class_names, clips


def _assign(path, class_names, clips, seed, fractions):
    """``{split: [clip index]}`` by group, checked."""
    rng = np.random.default_rng([int(seed), 0])
    lists = _find_lists(path)
    split_of = {}
    in_train = in_test = set()
    if lists is not None:
        train_list, test_list = lists
        in_train, in_test = set(_read_list(train_list)), set(_read_list(test_list))
        both = sorted(in_train & in_test)
        if both:
            raise ValueError(f"{both[0]} is in both {train_list} and {test_list}"
                             f"{f' (and {len(both) - 1} more)' if len(both) > 1 else ''}")
        test_groups = {c.group for c in clips if c.rel.lower() in in_test}
        train_groups = {c.group for c in clips if c.rel.lower() in in_train}
        shared = sorted(test_groups & train_groups)
        if shared:
            raise ValueError(f"group {shared[0]} has files in both {train_list} and {test_list}"
                             f"; one group must lie in one split")
        listed = in_train | in_test
        skipped = [c for c in clips if c.rel.lower() not in listed]
        if skipped:
            print(f"video folder {path}: {len(skipped)} video(s) in neither split list "
                  f"skipped (e.g. {skipped[0].rel})")
        for i, c in enumerate(clips):
            if c.rel.lower() in in_test:
                split_of[i] = "test"
        splits = SPLIT_NAMES[:3]
        units = sorted({c.unit for c in clips if c.rel.lower() in in_train})
        where = f"the groups of {train_list}"
    else:
        splits = SPLIT_NAMES
        units = sorted({c.unit for c in clips})
        where = f"the groups of {path}"
    fr = _fractions(fractions, splits)
    if len(units) < len(splits):
        raise ValueError(f"{where}: {len(units)} group(s) ({units}) cannot fill the "
                         f"{len(splits)} splits {list(splits)}; at least one group each is needed")
    counts = _deal(len(units), fr)
    shuffled = [units[i] for i in rng.permutation(len(units))]
    unit_split, start = {}, 0
    for split, n in zip(splits, counts):
        for u in shuffled[start:start + int(n)]:
            unit_split[u] = split
        start += int(n)
    for i, c in enumerate(clips):
        if lists is not None and c.rel.lower() not in in_train:
            continue  # test (set above) or in neither list (skipped)
        split_of[i] = unit_split[c.unit]
    out = {s: [i for i in range(len(clips)) if split_of.get(i) == s] for s in SPLIT_NAMES}
    for split in ("experts", "test"):
        present = {clips[i].label for i in out[split]}
        lacking = [class_names[k] for k in range(len(class_names)) if k not in present]
        if lacking:
            raise ValueError(
                f"video folder {path}: class(es) {lacking[:10]}"
                f"{' ...' if len(lacking) > 10 else ''}"
                f" have no video in the {split} split after splitting by group (seed {seed}); "
                f"every class needs groups in both the experts and the test split: add groups, "
                f"change the seed or the fractions"
                + (f", or the split lists {lists}" if lists else ""))
    return out


def _decode_file(clip, mv_frames, rgb_frames, frame_size):
    from experiments.action.video import read_motion_vectors

    try:
        decoded = read_motion_vectors(clip.path, max_frames=mv_frames + 1, keep_frames=True)
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if clip.path in msg else f"{clip.path}: {msg}") from err
    except Exception as err:  # anything PyAV raises past video.py
        raise ValueError(f"{clip.path}: PyAV cannot decode it ({type(err).__name__}: {err})") \
            from err
    n = len(decoded.mv)
    if n < mv_frames + 1:
        raise ValueError(f"{clip.path}: the video has {n} frame(s), fewer than the "
                         f"{mv_frames + 1} (mv_frames + 1) needed for {mv_frames} "
                         f"motion-vector maps")
    mv, rgb = clip_arrays(decoded, mv_frames=mv_frames, rgb_frames=rgb_frames,
                          frame_size=frame_size)
    return mv, rgb, bool(np.any(np.asarray(decoded.pict_types[1:mv_frames + 1]) == "B"))


def load_folder(path, *, mv_frames=16, rgb_frames=2, frame_size=96, seed=0, max_clips=None,
                fractions=None, progress=True) -> dict:
    """``{split: ClipSet}`` of a folder of videos in class subfolders (UCF-101 layout).

    See the module docstring for the classes, groups, split lists and fractions. The
    layout is checked before any video is decoded. ``max_clips``: a cap per split (an
    int for every split, or ``{split: cap}``; 0 / None = all), chosen by a seeded round
    robin over the classes. ``fractions``: ``{split: share of the groups}`` (default
    ``DEFAULT_FRACTIONS``; with split lists only experts / train / validation count).
    Each file's motion vectors come from its own bitstream; a file with B-frames or
    several references (UCF-101's xvid AVIs) gives vectors that may span more than
    one frame, unlike the generated set.

    ValueError (naming the path, class or file): the path is missing; no class
    subfolder or no video; a class with one group only; too few groups for the
    splits; a class missing from the experts or test split; a video PyAV cannot
    read; a video with fewer than ``mv_frames + 1`` frames.
    """
    _check_sizes(mv_frames, rgb_frames, frame_size)
    mv_frames, rgb_frames, frame_size = int(mv_frames), int(rgb_frames), int(frame_size)
    path = os.fspath(path)
    caps = _caps(max_clips, SPLIT_NAMES)
    class_names, clips = _scan_folder(path)
    parts = _assign(path, class_names, clips, seed, fractions)
    chosen = {}
    for k, split in enumerate(SPLIT_NAMES):
        idx = np.asarray(parts[split], np.int64)
        labels = [clips[i].label for i in idx]
        keep = _round_robin(labels, caps[split], np.random.default_rng([int(seed), 1, k]))
        chosen[split] = idx[keep]
    total = sum(len(v) for v in chosen.values())
    start, done, with_b = time.time(), 0, 0
    out = {}
    for split in SPLIT_NAMES:
        rows = []
        for i in chosen[split]:
            mv, rgb, has_b = _decode_file(clips[i], mv_frames, rgb_frames, frame_size)
            rows.append(_row(mv, rgb))
            with_b += has_b
            done += 1
            if progress and done % _PROGRESS_EVERY == 0:
                _progress(f"folder {path}", done, total, start)
        sel = [clips[i] for i in chosen[split]]
        out[split] = _build(rows, [c.label for c in sel], [c.group for c in sel],
                            [c.rel for c in sel], class_names, f"folder:{path}", mv_frames,
                            rgb_frames, frame_size)
    if with_b:
        print(f"WARNING: folder {path}: {with_b} of {total} clips have B-frames among their "
              f"first {mv_frames + 1} frames; FFmpeg exports no usable vectors for them (zero "
              "maps) and the P-frames' vectors then span several frames (WORKSPACE.md, D40)",
              flush=True)
    if progress:
        print(f"folder {path}: {len(class_names)} classes, "
              + ", ".join(f"{s} {len(out[s])}" for s in SPLIT_NAMES)
              + f" clips ({time.time() - start:.0f} s)", flush=True)
    return out


# --------------------------------------------------------------------------- tfds

def _tfds_builder(name, data_dir):
    from bmoe_tf import backend  # noqa: F401  (tf-keras set up before tfds imports TensorFlow)
    import tensorflow_datasets as tfds

    hint = (f"prepare it first (e.g. `tfds build {name} --data_dir DIR`; UCF-101 needs its "
            f"archive in the manual/download dir) and pass --tfds_data_dir DIR; nothing is "
            f"downloaded")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError, config errors, ...
        raise ValueError(f"tfds: cannot open dataset {name!r} "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                         f"; {hint}") from err
    features = builder.info.features
    try:
        class_names = tuple(features["label"].names)
        features["video"]
    except (KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"tfds dataset {name!r} has no 'video' and 'label' (ClassLabel) "
                         f"features; only action datasets such as ucf101 are supported") from err
    return builder, class_names, hint


def _tfds_dataset(builder, name, split, data_dir, hint):
    import tensorflow_datasets as tfds

    try:
        return builder.as_dataset(split=split, shuffle_files=False,
                                  decoders={"video": tfds.decode.SkipDecoding()})
    except Exception as err:
        raise ValueError(f"tfds: dataset {name!r} split {split!r} is not available in "
                         f"data_dir={data_dir!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); {hint}") from err


def _tfds_count(builder, name, split, data_dir, hint):
    """Examples in a tfds split: from its metadata, else by counting (frames undecoded)."""
    from bmoe_tf.backend import tf

    try:
        n = int(builder.info.splits[split].num_examples)
        if n > 0:
            return n
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    ds = _tfds_dataset(builder, name, split, data_dir, hint)
    return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1).numpy())


def _tfds_clips(builder, name, split, indices, data_dir, hint, mv_frames):
    """Yields ``(index, label, frames uint8[F_t + 1, H, W, 3])`` of the examples ``indices``
    (sorted; None: all) of a tfds split; only their first F_t + 1 frames are decoded."""
    import tensorflow_datasets as tfds

    from bmoe_tf.backend import tf

    need = mv_frames + 1
    ds = _tfds_dataset(builder, name, split, data_dir, hint).enumerate()
    if indices is not None:
        indices = np.asarray(indices, np.int64)
        if not len(indices):
            return
        keep = np.zeros(int(indices.max()) + 1, bool)
        keep[indices] = True
        keep_t = tf.constant(keep)
        ds = ds.take(len(keep)).filter(lambda i, ex: tf.gather(keep_t, i))

    def _decode(i, ex):
        encoded = ex["video"]
        length = tf.shape(encoded)[0]
        frames = tf.map_fn(lambda s: tf.io.decode_image(s, channels=3, expand_animations=False),
                           encoded[:need], fn_output_signature=tf.uint8)
        return i, ex["label"], length, frames

    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4)
    for i, label, length, frames in tfds.as_numpy(ds):
        if int(length) < need:
            raise ValueError(f"tfds {name} split {split!r} example {int(i)}: the video has "
                             f"{int(length)} frame(s), fewer than the {need} (mv_frames + 1) "
                             f"needed for {mv_frames} motion-vector maps")
        yield int(i), int(label), frames


def _tfds_arrays(frames, where, mv_frames, rgb_frames, frame_size):
    """Re-encodes the frames (cropped to even sizes) with libx264 and reads its vectors."""
    from experiments.action.video import encode_h264, read_motion_vectors

    h, w = frames.shape[1:3]
    even = np.ascontiguousarray(frames[:, : h - h % 2, : w - w % 2, :3])
    if even.shape[1] < 2 or even.shape[2] < 2:
        raise ValueError(f"{where}: frames of {h}x{w} px are too small to encode")
    decoded = read_motion_vectors(encode_h264(even), max_frames=mv_frames + 1)
    if len(decoded.mv) < mv_frames + 1:
        raise ValueError(f"{where}: the re-encoded video decodes to {len(decoded.mv)} frames, "
                         f"fewer than {mv_frames + 1}")
    mv = np.asarray(decoded.mv[1:mv_frames + 1], np.float32)
    rgb = _rgb_frames(frames, mv_frames=mv_frames, rgb_frames=rgb_frames, frame_size=frame_size)
    return mv, rgb


def load_tfds(name, *, data_dir=None, mv_frames=16, rgb_frames=2, frame_size=96, seed=0,
              sizes=None, progress=True) -> dict:
    """``{split: ClipSet}`` of a prepared tfds action dataset (features ``video``, ``label``).

    Never downloads. tfds ``train`` is dealt into experts / train / validation by a
    seeded permutation of its example indices (``DEFAULT_FRACTIONS`` renormalised);
    tfds ``test`` (or, when absent, ``validation``) is our test. The first
    ``mv_frames + 1`` frames of each chosen example are cropped to an even height and
    width and re-encoded with libx264; the motion vectors come from that encoding (tfds
    keeps JPEG frames, not the bitstream); the RGB frames are the tfds frames. ``sizes``:
    ``{split: cap}`` (0 / None = all), a seeded random subset of the examples. ValueError
    when the dataset is not prepared
    or an example is shorter than ``mv_frames + 1`` frames (naming its index).
    """
    _check_sizes(mv_frames, rgb_frames, frame_size)
    mv_frames, rgb_frames, frame_size = int(mv_frames), int(rgb_frames), int(frame_size)
    caps = _caps(sizes, SPLIT_NAMES)
    builder, class_names, hint = _tfds_builder(name, data_dir)
    available = set(builder.info.splits.keys()) if builder.info.splits else set()
    test_split = "test" if (not available or "test" in available) else "validation"
    if available and test_split not in available:
        raise ValueError(f"tfds dataset {name!r} has no 'test' or 'validation' split "
                         f"(splits: {sorted(available)})")

    n_train = _tfds_count(builder, name, "train", data_dir, hint)
    if n_train < 3:
        raise ValueError(f"tfds {name} split 'train' has {n_train} example(s); at least 3 are "
                         f"needed (one each for experts, train and validation)")
    counts = _deal(n_train, _fractions(None, SPLIT_NAMES[:3]))
    perm = np.random.default_rng([int(seed), 0]).permutation(n_train)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    wanted = {s: perm[bounds[k]:bounds[k + 1]] for k, s in enumerate(SPLIT_NAMES[:3])}
    if caps["test"]:  # a random subset needs the count; without a cap, read all of it
        n_test = _tfds_count(builder, name, test_split, data_dir, hint)
        wanted["test"] = np.arange(n_test)
    for k, split in enumerate(SPLIT_NAMES):
        cap = caps[split]
        if split in wanted and cap and cap < len(wanted[split]):
            # Labels are unknown before reading: a seeded random subset (not class-balanced).
            rng = np.random.default_rng([int(seed), 1, k])
            wanted[split] = rng.choice(wanted[split], size=cap, replace=False)

    start, done = time.time(), 0
    rows = {s: ([], [], [], []) for s in SPLIT_NAMES}  # _row, label, group, clip id
    passes = (("train", {int(i): s for s in SPLIT_NAMES[:3] for i in wanted[s]}),
              (test_split, {int(i): "test" for i in wanted["test"]} if "test" in wanted
               else None))
    for tfds_split, route in passes:  # one pass over each tfds split
        indices = np.sort(np.fromiter(route, np.int64)) if route is not None else None
        for i, label, frames in _tfds_clips(builder, name, tfds_split, indices, data_dir, hint,
                                            mv_frames):
            where = f"tfds {name} split {tfds_split!r} example {i}"
            mv, rgb = _tfds_arrays(frames, where, mv_frames, rgb_frames, frame_size)
            for row, value in zip(rows[route[i] if route is not None else "test"],
                                  (_row(mv, rgb), label, f"tfds:{tfds_split}:{i}",
                                   f"{name}:{tfds_split}:{i}")):
                row.append(value)
            done += 1
            if progress and done % _PROGRESS_EVERY == 0:
                _progress(f"tfds {name}", done, None, start)
    out = {s: _build(*rows[s], class_names, f"tfds:{name}", mv_frames, rgb_frames, frame_size)
           for s in SPLIT_NAMES}
    if progress:
        print(f"tfds {name}: {len(class_names)} classes, "
              + ", ".join(f"{s} {len(out[s])}" for s in SPLIT_NAMES)
              + f" clips, motion vectors from a libx264 re-encoding of the tfds JPEG frames "
              f"({time.time() - start:.0f} s)", flush=True)
    return out


# --------------------------------------------------------------------------- dispatch

def load_splits(data, *, seed, sizes, mv_frames=16, rgb_frames=2, frame_size=96,
                tfds_data_dir=None, unreliable_share=0.25, progress=True) -> dict:
    """``{split: ClipSet}`` for every split of ``SPLIT_NAMES`` from the source ``data``.

    ``"generated"``: :func:`experiments.action.footage.generate_splits` with ``sizes`` clips
    per split (``unreliable_share`` of them degraded). ``"folder:PATH"``:
    :func:`load_folder`, ``sizes`` caps per split (0 = all). ``"tfds:NAME"``:
    :func:`load_tfds` with ``tfds_data_dir``, ``sizes`` caps per split (0 = all).
    """
    kind, arg = parse_data(data)
    if sizes is not None:
        missing = [s for s in SPLIT_NAMES if s not in sizes]
        if missing:
            raise ValueError(f"sizes needs the splits {list(SPLIT_NAMES)}, missing {missing}")
    if kind == "generated":
        if sizes is None:
            raise ValueError(f"--data=generated needs sizes for {list(SPLIT_NAMES)}")
        from experiments.action.footage import generate_splits

        return generate_splits(seed, sizes, mv_frames=mv_frames, rgb_frames=rgb_frames,
                               frame_size=frame_size, unreliable_share=unreliable_share,
                               progress=progress)
    common = {"mv_frames": mv_frames, "rgb_frames": rgb_frames, "frame_size": frame_size,
              "seed": seed, "progress": progress}
    if kind == "folder":
        return load_folder(arg, max_clips=sizes, **common)
    return load_tfds(arg, data_dir=tfds_data_dir, sizes=sizes, **common)
