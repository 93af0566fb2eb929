"""Images, image-level splits and 64x64 parts for the super-resolution experiment.

Paper Section IV-C: images are divided on a fixed grid into 64x64 parts (Fig. 2b),
super-resolution is performed on each part separately, and PSNR is measured per
test image after stitching its parts back together.

Sources (``load_images``):

* ``"bundled"``: the real colour photographs shipped inside scikit-image
  (``BUNDLED_IMAGES``); loads offline, used for smoke runs and tests.
* ``"folder:PATH"``: every image file under ``PATH`` (recursive, sorted).
* ``"tfds:NAME"``: a *prepared* TensorFlow Datasets dataset, e.g.
  ``tfds:div2k/bicubic_x2`` (the paper's DIV2K). Nothing is ever downloaded.

All images are returned as ``float32`` arrays of shape ``[H, W, 3]`` in ``[0, 1]``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from bmoe_tf.backend import tf

__all__ = [
    "BUNDLED_IMAGES",
    "BUNDLED_GROUPS",
    "IMAGE_EXTENSIONS",
    "PART_SIZE",
    "test_frames",
    "load_images",
    "split_images",
    "cut_parts",
    "stitch_parts",
    "PartSet",
    "make_part_set",
    "part_dataset",
]

PART_SIZE = 64

# Real colour photographs stored in site-packages/skimage/data (no pooch download).
# Left out on purpose: grayscale images (camera, coins, ...), synthetic/graphic
# colour images (colorwheel, logo, chessboard_RGB), ``cat`` (the same file as
# ``chelsea``) and everything that needs the optional pooch download.
BUNDLED_IMAGES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
)

# Images that show the same scene and must never be in different splits
# (the two views of the stereo pair are near-duplicates). Used by split_images.
BUNDLED_GROUPS: Mapping[str, str] = {
    "motorcycle_left": "motorcycle",
    "motorcycle_right": "motorcycle",
}

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------- images

def _to_rgb_float(image: np.ndarray, name: str) -> np.ndarray:
    """Any 2-D / [H, W, C] image (uint8, uint16, bool or float) -> float32 [H, W, 3] in [0, 1].

    Grayscale ([H, W], [H, W, 1], gray+alpha [H, W, 2]) is repeated to three
    channels; an alpha channel ([H, W, 4]) is dropped. Float input is clipped.
    """
    from skimage.util import img_as_float32

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{name}: unsupported image shape {image.shape} "
                         "(expected [H, W], [H, W, 1|2|3|4])")
    if image.shape[-1] in (1, 2):          # gray (+ alpha)
        image = np.repeat(image[..., :1], 3, axis=-1)
    elif image.shape[-1] == 4:             # RGBA
        image = image[..., :3]
    out = img_as_float32(image)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _load_bundled(max_images: int | None) -> list[tuple[str, np.ndarray]]:
    import skimage.data

    out = []
    stereo = None
    for name in BUNDLED_IMAGES[:max_images]:
        if name in ("motorcycle_left", "motorcycle_right"):
            if stereo is None:
                stereo = skimage.data.stereo_motorcycle()
            raw = stereo[0] if name == "motorcycle_left" else stereo[1]
        else:
            raw = getattr(skimage.data, name)()
        out.append((name, _to_rgb_float(raw, name)))
    return out


def _load_folder(path: str, max_images: int | None) -> list[tuple[str, np.ndarray]]:
    import skimage.io

    if not path:
        raise ValueError("folder: source needs a path, e.g. 'folder:/data/DIV2K_valid_HR'")
    if not os.path.isdir(path):
        raise ValueError(f"folder: {path!r} does not exist or is not a directory")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for fname in names:
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(root, fname))
    files.sort()
    if not files:
        raise ValueError(f"folder: {path!r} contains no image files {IMAGE_EXTENSIONS}")
    out = []
    for fpath in files[:max_images]:
        name = os.path.relpath(fpath, path)
        try:
            raw = skimage.io.imread(fpath)
        except Exception as err:  # imageio/PIL raise many types for a bad file
            raise ValueError(f"cannot read image {fpath}: it is corrupt or not an image "
                             f"({type(err).__name__}); fix or remove it") from None
        out.append((name, _to_rgb_float(raw, name)))
    return out


def _load_tfds(name: str, data_dir: str | None, split: str,
               max_images: int | None) -> list[tuple[str, np.ndarray]]:
    import tensorflow_datasets as tfds

    if not name:
        raise ValueError("tfds: source needs a dataset name, e.g. 'tfds:div2k/bicubic_x2'")
    hint = (f"prepare it with `tfds build {name}"
            + (f" --data_dir {data_dir}" if data_dir else "")
            + "` (DIV2K needs the archives in the manual/download dir) "
              "or pass --tfds_data_dir pointing at a prepared copy; nothing is downloaded")
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.DatasetNotFoundError as err:
        raise ValueError(f"tfds: unknown dataset {name!r}: {str(err).splitlines()[0]}") from err
    except (AssertionError, FileNotFoundError) as err:
        raise ValueError(f"tfds: dataset {name!r} is not prepared in "
                         f"{data_dir or 'the default data_dir'}; {hint}") from err
    spec = ds.element_spec
    if isinstance(spec, Mapping):
        key = "hr" if "hr" in spec else "image" if "image" in spec else None
        if key is None:
            raise ValueError(f"tfds: dataset {name!r} has neither an 'hr' nor an 'image' "
                             f"feature (features: {sorted(spec)})")
        ds = ds.map(lambda ex: ex[key])
    if max_images is not None:
        ds = ds.take(max_images)
    return [(f"{name}:{i}", _to_rgb_float(img, f"{name}:{i}"))
            for i, img in enumerate(tfds.as_numpy(ds))]


def load_images(source: str, *, tfds_data_dir: str | None = None, tfds_split: str = "train",
                max_images: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Load high-resolution images.

    Args:
      source: ``"bundled"``, ``"folder:PATH"`` or ``"tfds:NAME"`` (see module doc).
        ``tfds:`` reads the ``hr`` feature when the dataset has one (DIV2K), else
        ``image``, and never downloads.
      tfds_data_dir: ``data_dir`` for ``tfds.load`` (``None``: the TFDS default).
      tfds_split: the TFDS split to read (``"train"``, ``"validation"``, ...).
      max_images: keep only the first ``max_images`` images (``None``: all).

    Returns:
      ``[(name, image)]`` in a deterministic order; ``image`` is float32
      ``[H, W, 3]`` in ``[0, 1]``. Names: the bundled image name, the path
      relative to ``PATH``, or ``f"{NAME}:{index}"``.

    Raises:
      ValueError: unknown scheme, missing/empty folder, unknown or unprepared
        TFDS dataset, unsupported image shape.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    scheme, _, arg = source.partition(":")
    if scheme == "bundled" and not arg:
        return _load_bundled(max_images)
    if scheme == "folder":
        return _load_folder(arg, max_images)
    if scheme == "tfds":
        return _load_tfds(arg, tfds_data_dir, tfds_split, max_images)
    raise ValueError(f"unknown image source {source!r}; use 'bundled', 'folder:PATH' "
                     "or 'tfds:NAME'")


# --------------------------------------------------------------------------- splits

def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` units by largest remainder, ties to the earlier split; no split empty."""
    exact = [n * f for f in fractions]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):
        while counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_images(names: Sequence[str], *, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                 seed: int = 0,
                 groups: Mapping[str, str] | None = BUNDLED_GROUPS) -> dict[str, list[str]]:
    """Split image names (not parts) into train / validation / test.

    Names mapped to the same value in ``groups`` (default: the two views of the
    bundled stereo pair) always land in the same split; every other name is its
    own group. Groups are shuffled with ``np.random.default_rng(seed)`` (after
    sorting, so the input order does not matter) and allocated by largest
    remainder of ``n_groups * fraction``; each split gets at least one group.

    Args:
      names: unique image names.
      fractions: ``(train, validation, test)``, positive, summing to 1.
      seed: the split is a deterministic function of ``(set(names), seed, groups)``.
      groups: ``name -> group key``; names absent from it are singletons.

    Returns:
      ``{"train": [...], "validation": [...], "test": [...]}``; each list keeps
      the order of ``names``; the lists are disjoint and cover ``names``.

    Raises:
      ValueError: duplicate names, bad fractions, or fewer than 3 groups.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("split_images: image names must be unique")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 positive numbers summing to 1, got {fractions}")
    groups = groups or {}
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(groups.get(name, "\0" + name), []).append(name)
    keys = sorted(members)
    if len(keys) < 3:
        raise ValueError(f"split_images needs at least 3 images (independent groups) so "
                         f"that every split is non-empty, got {len(keys)}")
    perm = np.random.default_rng(seed).permutation(len(keys))
    counts = _allocate(len(keys), fractions)
    where: dict[str, str] = {}
    start = 0
    for split, count in zip(("train", "validation", "test"), counts):
        for k in perm[start:start + count]:
            for name in members[keys[k]]:
                where[name] = split
        start += count
    return {split: [n for n in names if where[n] == split]
            for split in ("train", "validation", "test")}


# --------------------------------------------------------------------------- parts

def cut_parts(image: np.ndarray, size: int = PART_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut an image into ``size x size`` parts on a fixed grid from the top-left corner.

    Args:
      image: ``[H, W, C]``.
      size: part side in pixels (paper: 64).

    Returns:
      ``(parts, (rows, cols))``: ``parts`` is ``[rows * cols, size, size, C]`` in
      row-major grid order (part ``r * cols + c`` covers
      ``image[r*size:(r+1)*size, c*size:(c+1)*size]``), ``rows = H // size``,
      ``cols = W // size``. The incomplete bottom/right margin is dropped.

    Raises:
      ValueError: ``image`` is not 3-D or is smaller than one part.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"cut_parts expects [H, W, C], got shape {image.shape}")
    if size < 1:
        raise ValueError(f"part size must be >= 1, got {size}")
    h, w, c = image.shape
    rows, cols = h // size, w // size
    if rows == 0 or cols == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than one {size}x{size} part")
    parts = (image[: rows * size, : cols * size]
             .reshape(rows, size, cols, size, c)
             .transpose(0, 2, 1, 3, 4)
             .reshape(rows * cols, size, size, c))
    return np.ascontiguousarray(parts), (rows, cols)


def stitch_parts(parts: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Inverse of ``cut_parts``.

    Args:
      parts: ``[rows * cols, h, w, ...]`` in row-major grid order.
      grid: ``(rows, cols)``.

    Returns:
      ``[rows * h, cols * w, ...]`` (``[rows*64, cols*64, 3]`` for RGB parts).
    """
    parts = np.asarray(parts)
    rows, cols = (int(g) for g in grid)
    if parts.ndim < 3 or parts.shape[0] != rows * cols:
        raise ValueError(f"stitch_parts: expected [{rows * cols}, h, w, ...] parts for grid "
                         f"{(rows, cols)}, got shape {parts.shape}")
    h, w, rest = parts.shape[1], parts.shape[2], parts.shape[3:]
    nrest = len(rest)
    perm = (0, 2, 1, 3) + tuple(range(4, 4 + nrest))
    return np.ascontiguousarray(parts.reshape(rows, cols, h, w, *rest)
                                .transpose(perm)
                                .reshape(rows * h, cols * w, *rest))


@dataclasses.dataclass
class PartSet:
    """All ``size x size`` parts of a list of images.

    Attributes:
      parts: float32 ``[P, size, size, 3]``; parts of image ``i`` are contiguous,
        in row-major grid order, images in the order of ``names``.
      image_index: int32 ``[P]``, index into ``names`` of the image of each part.
      grids: ``[(rows, cols)]`` per image (``rows * cols`` parts each).
      names: image names, one per image.
    """

    parts: np.ndarray
    image_index: np.ndarray
    grids: list[tuple[int, int]]
    names: list[str]

    def __len__(self) -> int:
        return int(self.parts.shape[0])

    @property
    def size(self) -> int:
        return int(self.parts.shape[1])

    def offsets(self) -> np.ndarray:
        """int64 ``[len(names) + 1]``: parts of image ``i`` are ``[off[i], off[i+1])``."""
        return np.concatenate([[0], np.cumsum([r * c for r, c in self.grids])]).astype(np.int64)

    def images_from_parts(self, parts_like: np.ndarray) -> list[np.ndarray]:
        """Stitch any per-part array back into one array per image.

        Args:
          parts_like: ``[P, ...]`` with ``P == len(self)`` in the order of ``parts``:
            ``[P, h, w, ...]`` (e.g. SR outputs ``[P, 64, 64, 3]``) is stitched to
            ``[rows*h, cols*w, ...]``; ``[P]`` or ``[P, k]`` (e.g. the selected
            expert per part) is reshaped to ``[rows, cols]`` / ``[rows, cols, k]``.

        Returns:
          one array per image, in the order of ``names``.
        """
        parts_like = np.asarray(parts_like)
        if parts_like.shape[0] != len(self):
            raise ValueError(f"images_from_parts: expected first axis {len(self)}, "
                             f"got shape {parts_like.shape}")
        off = self.offsets()
        out = []
        for i, grid in enumerate(self.grids):
            chunk = parts_like[off[i]:off[i + 1]]
            if chunk.ndim >= 3:
                out.append(stitch_parts(chunk, grid))
            else:
                out.append(chunk.reshape(*grid, *chunk.shape[1:]))
        return out

    def save(self, path: str) -> None:
        """Write one ``.npz`` (no pickles) at ``path``."""
        np.savez(path, parts=self.parts, image_index=self.image_index,
                 grids=np.asarray(self.grids, dtype=np.int64).reshape(-1, 2),
                 names=np.asarray(self.names, dtype=np.str_))

    @classmethod
    def load(cls, path: str) -> "PartSet":
        """Read a ``PartSet`` written by ``save``."""
        with np.load(path, allow_pickle=False) as f:
            return cls(parts=f["parts"].astype(np.float32, copy=False),
                       image_index=f["image_index"].astype(np.int32, copy=False),
                       grids=[(int(r), int(c)) for r, c in f["grids"]],
                       names=[str(n) for n in f["names"]])


def make_part_set(images: Iterable[tuple[str, np.ndarray]], size: int = PART_SIZE) -> PartSet:
    """Cut every ``(name, [H, W, 3] image)`` into parts (see ``cut_parts``).

    Returns:
      a ``PartSet`` with ``parts`` float32 ``[P, size, size, 3]``,
      ``P = sum_i (H_i // size) * (W_i // size)``.

    Raises:
      ValueError: an image is smaller than one part (the message names it).
    """
    all_parts, index, grids, names = [], [], [], []
    for i, (name, image) in enumerate(images):
        try:
            parts, grid = cut_parts(np.asarray(image, dtype=np.float32), size)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        all_parts.append(parts)
        index.append(np.full(parts.shape[0], i, dtype=np.int32))
        grids.append(grid)
        names.append(name)
    if all_parts:
        parts = np.concatenate(all_parts).astype(np.float32, copy=False)
        image_index = np.concatenate(index)
    else:
        parts = np.zeros((0, size, size, 3), np.float32)
        image_index = np.zeros((0,), np.int32)
    return PartSet(parts=parts, image_index=image_index, grids=grids, names=names)


def part_dataset(parts, batch_size: int, *, shuffle: bool, seed: int = 0) -> "tf.data.Dataset":
    """A batched ``tf.data.Dataset`` over parts.

    Args:
      parts: an array ``[P, ...]`` or a tuple/dict of arrays with the same ``P``
        (e.g. ``(inputs, targets)``).
      batch_size: batch size; the last batch may be smaller.
      shuffle: shuffle all ``P`` elements, reshuffled every epoch, seeded by ``seed``.
      seed: shuffle seed.

    Returns:
      a prefetched dataset of batches with the structure of ``parts``.
    """
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        n = int(tf.nest.flatten(parts)[0].shape[0])
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def test_frames(part_set):
    """``int64[P]``: the photo of each part of ``part_set`` in stored order, checked to be
    a sequence of whole photos (each photo's parts contiguous, photos in ``names`` order)."""
    index = np.asarray(part_set.image_index, np.int64)
    expected = np.repeat(np.arange(len(part_set.grids)), [r * c for r, c in part_set.grids])
    if not np.array_equal(index, expected):
        raise ValueError("the test parts are not stored photo by photo (image_index is not "
                         "the photos' contiguous runs); delete data/ and run again")
    return index
