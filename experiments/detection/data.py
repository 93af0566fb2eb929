"""Images and boxes for the detection task (SSD experts at 100 / 150 / 300 px).

Every source is turned into a :class:`DetectionSet`: 300x300x3 ``uint8`` images
(``IMAGE_SIZE``) and their boxes as normalized ``(ymin, xmin, ymax, xmax)`` in
``[0, 1]`` with ``int32`` labels ``0..C-1``. Images are squashed to 300x300 (no
aspect preservation, as SSD does) with an anti-aliased resize; boxes stay
normalized, so squashing does not move them.

Sources (``load_splits(spec, ...)``):

* ``"generated"`` (the default data of the task, :func:`generate_set`): seeded
  synthetic scenes. Five object classes of clearly different shape (``CLASSES``:
  disc, square, triangle, ring, cross; squares, triangles and crosses at random
  rotation), 1..8 objects per image, filled with a texture cropped from the photos
  and textures bundled with scikit-image and tinted by a random colour that does
  not depend on the class (the class is decided by shape, never by colour), on a
  background that is itself a scaled crop of a bundled photo/texture, with
  unlabelled clutter (elongated wobbly blobs and thick line strokes, which are
  not any class's shape) drawn under the objects. Each image draws a *scale
  regime*: one third hold only small objects (8..30 px: they need the 300 px
  expert), one third only large objects (60..280 px: found at 100 px), one third
  a mix (object sizes are the larger side of the box; the tight box of a
  smallest object can be 7 px). Nothing but the boxes records the regime.
  Objects never overlap each other (their boxes are at least 1 px apart, so no
  object is occluded) and lie wholly inside the frame; every box is the exact
  tight bounding box of the object's drawn mask.
  Image ``i`` depends only on ``(seed, i)`` (``np.random.default_rng([seed, i])``),
  so a set can be grown (``start_index``) without changing existing images. The
  three splits use disjoint index ranges (train from 0, validation from
  ``1_000_000``, test from ``2_000_000``), so each split can grow on its own.

  What it proves: that the pipeline trains detectors, routes images by the
  resolution they need (small-object images to the 300 px expert, large-object
  images to the 100 px one) and measures the accuracy/cost trade-off end to end,
  offline and fast. What it does not prove: it is not COCO; its objects are
  simple shapes, so absolute mAP numbers (and which expert wins by how much) are
  not comparable with the paper's and say nothing about natural images.

* ``"tfds:coco/2017"`` / ``"tfds:voc/2007"`` (:func:`load_tfds`): a *prepared*
  TensorFlow Datasets dataset; nothing is ever downloaded. Crowd boxes (COCO
  ``is_crowd``) are dropped; degenerate boxes (zero area after clipping to
  ``[0, 1]``) are dropped with one printed line giving their count. Split
  mapping: a seeded permutation of tfds ``train`` is halved, the first half our
  ``experts`` split (the SSDs train on it), the second our ``train`` (the gates
  train on it: images no expert saw, D75). COCO has no labelled test split, so a
  seeded permutation of tfds ``validation`` is halved: the first half is our
  validation, the second half our test. VOC 2007: tfds ``validation`` -> our
  validation, tfds ``test`` -> our test. (Any other tfds name: its ``test``
  split if it has one, else the COCO rule.) Caps from ``sizes`` apply after the
  mapping (0 = all).

* ``"folder:PATH"`` (:func:`load_folder`): image files plus ``annotations.json``
  in COCO format (``images[{id, file_name, width, height}]``,
  ``annotations[{id, image_id, category_id, bbox: [x, y, w, h] px, iscrowd?}]``,
  ``categories[{id, name}]``). Category ids map to ``0..C-1`` in sorted id order.
  Crowd annotations (``iscrowd`` true) are dropped; images without annotations
  are kept. Bad input raises ``ValueError`` naming the file and the entry.
  ``load_splits`` splits the folder by a seeded permutation 40/20/20/20
  (experts/train/validation/test, :data:`FOLDER_FRACTIONS`, at least one image each),
  caps applied after.

Real images whose shorter side is below 300 px (the largest expert's input)
raise ``ValueError`` unless ``allow_small_images=True`` (then they are upsampled).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "GATE_CROP", "gate_view",
    "IMAGE_SIZE",
    "CLASSES",
    "DetectionSet",
    "generate_set",
    "load_tfds",
    "load_folder",
    "load_splits",
    "check_ground_truth",
]

IMAGE_SIZE = 300
#: The centre crop the paper's gate sees (Table III).
GATE_CROP = 224
CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross")

#: Default view of the compact gate: the centre crop downsampled so that its int8
#: input (96 x 96 x 3 = 27 KiB) leaves room in a 256 KiB arena.
COMPACT_VIEW = 96

# First image index of each split of the generated set (disjoint ranges). The experts'
# split keeps the range the experts always trained on (so they are the same experts); the
# gates' training split has a range of its own (D75).
GENERATED_SPLIT_START = {"experts": 0, "train": 3_000_000, "validation": 1_000_000,
                         "test": 2_000_000}

#: The splits of a detection workdir: the experts' training images (D75), then the
#: pipeline's three (the gates train on ``train``, whose images no expert saw).
SPLITS = ("experts", "train", "validation", "test")

#: Folder data: shares of the experts', train, validation and test splits.
FOLDER_FRACTIONS = (0.4, 0.2, 0.2, 0.2)

_SMALL_RANGE = (8.0, 30.0)    # object extent in px at 300 px (small-only regime)
_LARGE_RANGE = (60.0, 280.0)  # object extent in px at 300 px (large-only regime)
_GAP = 2.0                    # min distance in px between two objects' boxes

_NPZ_KEYS = ("images", "boxes", "labels", "image_index", "names", "class_names")


# --------------------------------------------------------------------------- DetectionSet

@dataclasses.dataclass(frozen=True, eq=False)
class DetectionSet:
    """Images and their boxes. ``boxes``/``labels`` are flat, grouped by image.

    ``images`` uint8 [M, S, S, 3]; ``boxes`` float32 [B, 4] normalized
    ``(ymin, xmin, ymax, xmax)``; ``labels`` int32 [B]; ``image_index`` int32 [B]
    (non-decreasing: the image of each box); ``names`` M image names;
    ``class_names`` C class names.
    """

    images: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    names: tuple
    class_names: tuple

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"DetectionSet images must be uint8 [M, H, W, 3], got "
                             f"{images.dtype} {images.shape}")
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, np.int32).reshape(-1)
        image_index = np.asarray(self.image_index, np.int32).reshape(-1)
        if not len(boxes) == len(labels) == len(image_index):
            raise ValueError(f"DetectionSet: {len(boxes)} boxes, {len(labels)} labels and "
                             f"{len(image_index)} image indices must be equally many")
        names = tuple(str(n) for n in self.names)
        class_names = tuple(str(n) for n in self.class_names)
        if len(names) != len(images):
            raise ValueError(f"DetectionSet: {len(names)} names for {len(images)} images")
        if len(image_index) and (np.any(np.diff(image_index) < 0) or image_index[0] < 0
                                 or image_index[-1] >= len(images)):
            raise ValueError("DetectionSet: image_index must be non-decreasing in [0, M)")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"DetectionSet: labels must be in [0, {len(class_names)})")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "image_index", image_index)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _bounds(self) -> np.ndarray:
        """int64 [M + 1]: boxes of image i are ``boxes[b[i]:b[i + 1]]``."""
        return np.searchsorted(self.image_index, np.arange(len(self) + 1), side="left")

    def boxes_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes float32 [k, 4], labels int32 [k])`` of image ``i``."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} out of range for a DetectionSet of {len(self)} images")
        i %= len(self)
        lo, hi = np.searchsorted(self.image_index, [i, i + 1], side="left")
        return self.boxes[lo:hi], self.labels[lo:hi]

    def subset(self, indices) -> "DetectionSet":
        """The images ``indices`` (in that order; repeats allowed) with their boxes."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} images")
        indices = indices % max(len(self), 1)
        bounds = self._bounds()
        parts = [np.arange(bounds[i], bounds[i + 1]) for i in indices]
        sel = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        counts = bounds[indices + 1] - bounds[indices]
        return DetectionSet(
            images=self.images[indices],
            boxes=self.boxes[sel],
            labels=self.labels[sel],
            image_index=np.repeat(np.arange(len(indices)), counts).astype(np.int32),
            names=tuple(self.names[i] for i in indices),
            class_names=self.class_names,
        )

    def save(self, path: str) -> None:
        """One uncompressed ``.npz``, written atomically (tmp file, then ``os.replace``)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz"
                np.savez(f, images=self.images, boxes=self.boxes, labels=self.labels,
                         image_index=self.image_index,
                         names=np.asarray(self.names, dtype=np.str_).reshape(-1),
                         class_names=np.asarray(self.class_names, dtype=np.str_).reshape(-1))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str) -> "DetectionSet":
        """Read a file written by :meth:`save`; a bad file raises ``ValueError`` naming it."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in _NPZ_KEYS if k not in data.files]
                if missing:
                    raise ValueError(f"{path}: not a DetectionSet file, missing keys "
                                     f"{missing} (has {sorted(data.files)})")
                arrays = {k: data[k] for k in _NPZ_KEYS}
        except ValueError as e:
            if str(e).startswith(path):
                raise
            raise ValueError(f"{path}: cannot read a DetectionSet: {e}") from e
        except (OSError, EOFError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{path}: cannot read a DetectionSet: {e}") from e
        except Exception as e:  # zipfile.BadZipFile, pickle errors, ...
            raise ValueError(f"{path}: cannot read a DetectionSet: {type(e).__name__}: {e}") from e
        try:
            return cls(images=arrays["images"], boxes=arrays["boxes"], labels=arrays["labels"],
                       image_index=arrays["image_index"],
                       names=tuple(arrays["names"].tolist()),
                       class_names=tuple(arrays["class_names"].tolist()))
        except ValueError as e:
            raise ValueError(f"{path}: inconsistent DetectionSet: {e}") from e


def _from_lists(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                labels: Sequence[np.ndarray], names: Sequence[str],
                class_names: Sequence[str], size: int = IMAGE_SIZE) -> DetectionSet:
    counts = [len(b) for b in boxes]
    return DetectionSet(
        images=(np.stack(images).astype(np.uint8, copy=False) if len(images)
                else np.zeros((0, size, size, 3), np.uint8)),
        boxes=(np.concatenate(boxes).astype(np.float32) if sum(counts)
               else np.zeros((0, 4), np.float32)),
        labels=(np.concatenate(labels).astype(np.int32) if sum(counts)
                else np.zeros(0, np.int32)),
        image_index=np.repeat(np.arange(len(images)), counts).astype(np.int32),
        names=tuple(names),
        class_names=tuple(class_names),
    )


def concatenate(sets: Sequence[DetectionSet]) -> DetectionSet:
    """The images of ``sets`` one after another (all must share class names)."""
    if not sets:
        raise ValueError("concatenate needs at least one DetectionSet")
    class_names = sets[0].class_names
    for s in sets[1:]:
        if s.class_names != class_names:
            raise ValueError("concatenate: the sets have different class names")
    offsets = np.cumsum([0] + [len(s) for s in sets[:-1]])
    return DetectionSet(
        images=np.concatenate([s.images for s in sets]),
        boxes=np.concatenate([s.boxes for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        image_index=np.concatenate([s.image_index + o for s, o in zip(sets, offsets)]),
        names=sum((s.names for s in sets), ()),
        class_names=class_names,
    )


# --------------------------------------------------------------------------- generated set

# Bundled with scikit-image (site-packages/skimage/data; no pooch download).
_COLOUR_TEXTURES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
_GRAY_TEXTURES = ("grass", "brick", "gravel", "camera", "moon", "text", "page", "cell")
_TEXTURES: list[np.ndarray] | None = None  # uint8 [H, W, 3] each, loaded once
_GRAYS: list[np.ndarray] | None = None     # uint8 [H, W]: their luminance
_THIRD = np.full(3, 1.0 / 3.0, np.float32)


def _textures() -> list[np.ndarray]:
    global _TEXTURES, _GRAYS
    if _TEXTURES is None:
        import skimage.data

        out = []
        for name in _COLOUR_TEXTURES + _GRAY_TEXTURES:
            img = np.asarray(getattr(skimage.data, name)())
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            out.append(np.ascontiguousarray(img[:, :, :3].astype(np.uint8)))
        _GRAYS = [np.ascontiguousarray((t.astype(np.float32) @ _THIRD + 0.5).astype(np.uint8))
                  for t in out]
        _TEXTURES = out
    return _TEXTURES


def _mean_rgb(a: np.ndarray) -> np.ndarray:
    """Mean colour [3] of an image window (sampled every 3rd px; fast)."""
    a = a[::3, ::3]
    return np.einsum("ijk->k", a) / np.float32(max(a.shape[0] * a.shape[1], 1))


def _texture_patch(rng: np.random.Generator, h: int, w: int, zoom: float,
                   gray: bool = False) -> np.ndarray:
    """float32 [h, w, 3] (``gray``: [h, w]) in [0, 1]: a random crop of a bundled texture,
    scaled by ``zoom`` source px per output px (nearest neighbour), randomly flipped."""
    textures = _textures()
    k = int(rng.integers(len(textures)))
    tex = _GRAYS[k] if gray else textures[k]
    H, W = tex.shape[:2]
    z = min(zoom, H / h, W / w)
    ch, cw = h * z, w * z
    y0 = rng.uniform(0.0, max(H - ch, 0.0))
    x0 = rng.uniform(0.0, max(W - cw, 0.0))
    ys = np.minimum((y0 + (np.arange(h) + 0.5) * z).astype(np.int64), H - 1)
    xs = np.minimum((x0 + (np.arange(w) + 0.5) * z).astype(np.int64), W - 1)
    if rng.random() < 0.5:
        ys = ys[::-1]
    if rng.random() < 0.5:
        xs = xs[::-1]
    patch = np.take(np.take(tex, ys, axis=0), xs, axis=1).astype(np.float32)
    patch *= np.float32(1.0 / 255.0)
    return patch


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """float32 [S, S, 3]: a scaled photo/texture crop, sometimes tinted or blended."""
    zoom = float(np.exp(rng.uniform(np.log(0.3), np.log(2.0))))
    if rng.random() < 0.4:  # recolour (gray textures get a colour, photos a new one)
        lum = _texture_patch(rng, S, S, zoom, gray=True)
        bg = lum[:, :, None] * (0.35 + 0.65 * rng.random(3)).astype(np.float32)
    else:
        bg = _texture_patch(rng, S, S, zoom)
    if rng.random() < 0.4:
        other = _texture_patch(rng, S, S, zoom=float(rng.uniform(0.3, 1.5)))
        a = np.float32(rng.uniform(0.2, 0.5))
        bg *= 1 - a
        bg += a * other
    contrast = np.float32(rng.uniform(0.5, 1.0))
    mean = _mean_rgb(bg)
    bg *= contrast
    bg += (1 - contrast) * mean
    return bg


def _polygon_inside(dy: np.ndarray, dx: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """bool mask: points (dy, dx) inside the convex polygon ``verts`` [n, 2] as (y, x)."""
    inside = None
    centre = verts.mean(axis=0)
    for k in range(len(verts)):
        (y0, x0), (y1, x1) = verts[k], verts[(k + 1) % len(verts)]
        sign = np.sign((x1 - x0) * (centre[0] - y0) - (y1 - y0) * (centre[1] - x0))
        side = ((x1 - x0) * (dy - y0) - (y1 - y0) * (dx - x0)) * sign >= 0
        inside = side if inside is None else inside & side
    return inside


def _rotate(verts: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    y, x = verts[:, 0], verts[:, 1]
    return np.stack([s * x + c * y, c * x - s * y], axis=1)


def _shape(rng: np.random.Generator, label: int, extent: float):
    """``(mask_fn(dy, dx) -> bool, (ymin, xmin, ymax, xmax))`` of class ``label`` with
    the larger side of its bounding box ``extent`` px, relative to its reference point."""
    name = CLASSES[label]
    if name in ("disc", "ring"):
        r = extent / 2.0
        if name == "disc":
            fn = lambda dy, dx: dy * dy + dx * dx <= r * r  # noqa: E731
        else:
            r_in = r * rng.uniform(0.45, 0.65)
            fn = lambda dy, dx: (lambda d2: (d2 <= r * r) & (d2 > r_in * r_in))(  # noqa: E731
                dy * dy + dx * dx)
        return fn, (-r, -r, r, r)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    if name == "square":
        polys = [np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], np.float64)]
    elif name == "triangle":
        ang = math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        polys = [np.stack([np.sin(ang), np.cos(ang)], axis=1)]
    elif name == "cross":
        t = rng.uniform(0.22, 0.34)
        polys = [np.array([[-t, -1], [-t, 1], [t, 1], [t, -1]], np.float64),
                 np.array([[-1, -t], [-1, t], [1, t], [1, -t]], np.float64)]
    else:  # pragma: no cover
        raise AssertionError(name)
    polys = [_rotate(p, theta) for p in polys]
    allv = np.concatenate(polys)
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    scale = extent / float((hi - lo).max())
    centre = (lo + hi) / 2.0
    polys = [(p - centre) * scale for p in polys]
    half = (hi - lo) * scale / 2.0

    def fn(dy, dx):
        m = _polygon_inside(dy, dx, polys[0])
        for p in polys[1:]:
            m = m | _polygon_inside(dy, dx, p)
        return m

    return fn, (-half[0], -half[1], half[0], half[1])


def _window(S: int, cy: float, cx: float, ext):
    """Integer window [r0, r1) x [c0, c1) covering the continuous box, clipped to the frame,
    and the pixel-centre offsets (dy [h, 1], dx [1, w]) from the reference point."""
    r0 = max(0, int(math.floor(cy + ext[0])))
    c0 = max(0, int(math.floor(cx + ext[1])))
    r1 = min(S, int(math.ceil(cy + ext[2])) + 1)
    c1 = min(S, int(math.ceil(cx + ext[3])) + 1)
    dy = (np.arange(r0, r1, dtype=np.float32) + 0.5 - np.float32(cy))[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) + 0.5 - np.float32(cx))[None, :]
    return r0, r1, c0, c1, dy, dx


def _paint(img: np.ndarray, r0: int, c0: int, mask: np.ndarray, fill: np.ndarray) -> None:
    h, w = mask.shape
    win = img[r0:r0 + h, c0:c0 + w]
    np.copyto(win, fill, where=mask[:, :, None])


def _tinted_fill(rng: np.random.Generator, h: int, w: int, against: np.ndarray) -> np.ndarray:
    """A tinted texture patch [h, w, 3] whose colour contrasts with ``against`` (mean RGB)."""
    lum = _texture_patch(rng, h, w, float(np.exp(rng.uniform(np.log(0.4), np.log(2.5)))),
                         gray=True)
    lo, hi = float(lum.min()), float(lum.max())
    floor = rng.uniform(0.45, 0.85)
    scale = np.float32((1.0 - floor) / max(hi - lo, 1e-3))
    lum = np.float32(floor) + scale * (lum - np.float32(lo))
    candidates = rng.random((6, 3))
    expected = candidates * (floor + (1.0 - floor) * 0.5)
    tint = candidates[int(np.argmax(((expected - against) ** 2).sum(axis=1)))]
    return lum[:, :, None] * tint.astype(np.float32)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _clutter(rng: np.random.Generator, img: np.ndarray, S: int, f: float) -> None:
    """Unlabelled distractors: elongated wobbly blobs and thick strokes (no class's shape)."""
    for _ in range(int(rng.integers(0, 7))):
        cy, cx = rng.uniform(0, S, size=2)
        if rng.random() < 0.6:  # elongated blob: ellipse-like (aspect ~1.6..2.6) with wobble
            R = float(np.exp(rng.uniform(np.log(5.0 * f), np.log(70.0 * f))))
            a2 = rng.uniform(0.3, 0.5)
            a5, a7 = rng.uniform(0.03, 0.15, size=2)
            p2, p5, p7 = rng.uniform(0, 2 * math.pi, size=3)
            reach = R * (1 + a2 + a5 + a7)
            r0, r1, c0, c1, dy, dx = _window(S, cy, cx, (-reach, -reach, reach, reach))
            if r1 <= r0 or c1 <= c0:
                continue
            phi = np.arctan2(dy, dx)
            rad = R * (1 + a2 * np.cos(2 * (phi - p2)) + a5 * np.cos(5 * phi + p5)
                       + a7 * np.cos(7 * phi + p7))
            mask = dy * dy + dx * dx <= rad * rad
        else:  # thick stroke
            length = float(np.exp(rng.uniform(np.log(15.0 * f), np.log(200.0 * f))))
            width = rng.uniform(1.0, 4.0) * max(f, 0.5)
            ang = rng.uniform(0, math.pi)
            uy, ux = math.sin(ang), math.cos(ang)
            hy, hx = abs(uy) * length / 2 + width, abs(ux) * length / 2 + width
            r0, r1, c0, c1, dy, dx = _window(S, cy, cx, (-hy, -hx, hy, hx))
            if r1 <= r0 or c1 <= c0:
                continue
            along = np.clip(dy * uy + dx * ux, -length / 2, length / 2)
            mask = (dy - along * uy) ** 2 + (dx - along * ux) ** 2 <= (width / 2) ** 2
        if not mask.any():
            continue
        against = _mean_rgb(img[r0:r1, c0:c1])
        _paint(img, r0, c0, mask, _tinted_fill(rng, r1 - r0, c1 - c0, against))


def _render(seed: int, index: int, size: int = IMAGE_SIZE, with_masks: bool = False):
    """Image ``index`` of the generated set for ``seed``.

    Returns ``(image uint8 [S, S, 3], boxes float32 [k, 4], labels int32 [k], masks)``;
    ``masks`` is a list of full-frame bool [S, S] object masks when ``with_masks``
    (else ``None``), in box order.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    S = int(size)
    f = S / float(IMAGE_SIZE)
    img = _background(rng, S)
    _clutter(rng, img, S, f)

    regime = int(rng.integers(3))  # 0 small-only, 1 large-only, 2 mixed
    lo_s, hi_s = (max(4.0, v * f) for v in _SMALL_RANGE)
    lo_l, hi_l = (min(max(4.0, v * f), S - 4.0) for v in _LARGE_RANGE)

    def draw(small: bool) -> float:
        lo, hi = (lo_s, hi_s) if small else (lo_l, hi_l)
        return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))

    if regime == 0:
        extents = [draw(True) for _ in range(int(rng.integers(1, 9)))]
    elif regime == 1:
        extents = [draw(False) for _ in range(int(rng.integers(1, 5)))]
    else:
        n = int(rng.integers(2, 9))
        extents = [draw(False), draw(True)] + [draw(bool(rng.random() < 0.5)) for _ in range(n - 2)]
    extents.sort(reverse=True)  # place the largest first: it always fits

    placed: list[tuple[float, float, float, float]] = []
    boxes, labels, masks = [], [], []
    for extent in extents:
        label = int(rng.integers(len(CLASSES)))
        fn, ext = _shape(rng, label, extent)
        for _attempt in range(25):
            cy = rng.uniform(1.0 - ext[0], S - 1.0 - ext[2])
            cx = rng.uniform(1.0 - ext[1], S - 1.0 - ext[3])
            box = (cy + ext[0], cx + ext[1], cy + ext[2], cx + ext[3])
            if all(box[0] >= q[2] + _GAP or q[0] >= box[2] + _GAP or
                   box[1] >= q[3] + _GAP or q[1] >= box[3] + _GAP for q in placed):
                break
        else:
            continue
        r0, r1, c0, c1, dy, dx = _window(S, cy, cx, ext)
        mask = fn(dy, dx)
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        placed.append(box)
        against = _mean_rgb(img[r0:r1, c0:c1])
        fill = _tinted_fill(rng, r1 - r0, c1 - c0, against)
        if rng.random() < 0.4:
            edge = _outline(mask)
            shade = np.float32(0.05 if rng.random() < 0.5 else 0.95)
            fill[edge] = fill[edge] * 0.3 + shade * 0.7
        _paint(img, r0, c0, mask, fill)
        boxes.append(((r0 + rows[0]) / S, (c0 + cols[0]) / S,
                      (r0 + rows[-1] + 1) / S, (c0 + cols[-1] + 1) / S))
        labels.append(label)
        if with_masks:
            full = np.zeros((S, S), bool)
            full[r0:r1, c0:c1] = mask
            masks.append(full)

    if rng.random() < 0.5:  # sensor-like gray noise
        noise = rng.standard_normal((S, S, 1), dtype=np.float32)
        noise *= np.float32(rng.uniform(0.005, 0.03))
        img += noise
    img *= np.float32(255.0)
    img += np.float32(0.5)
    image = np.clip(img, 0.0, 255.0, out=img).astype(np.uint8)
    return (image, np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int32), masks if with_masks else None)


def _render_with_masks(seed: int, index: int, size: int = IMAGE_SIZE):
    """``(image, boxes, labels, masks)`` of generated image ``index`` (for tests)."""
    return _render(seed, index, size, with_masks=True)


def generate_set(num_images: int, seed: int, *, size: int = IMAGE_SIZE,
                 start_index: int = 0) -> DetectionSet:
    """Images ``start_index .. start_index + num_images - 1`` of the generated set.

    Deterministic per ``(seed, image index)``: image ``i`` is the same whatever
    ``num_images`` and ``start_index`` select it. Names are ``gen-{index:06d}``.
    """
    num_images, seed, start_index = int(num_images), int(seed), int(start_index)
    if num_images < 0 or seed < 0 or start_index < 0:
        raise ValueError("generate_set: num_images, seed and start_index must be >= 0")
    if size < 16:
        raise ValueError(f"generate_set: size must be >= 16 px, got {size}")
    images = np.empty((num_images, size, size, 3), np.uint8)
    boxes, labels, names = [], [], []
    for k in range(num_images):
        idx = start_index + k
        images[k], b, l, _ = _render(seed, idx, size)
        boxes.append(b)
        labels.append(l)
        names.append(f"gen-{idx:06d}")
    counts = [len(b) for b in boxes]
    return DetectionSet(
        images=images,
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int32),
        image_index=np.repeat(np.arange(num_images), counts).astype(np.int32),
        names=tuple(names),
        class_names=CLASSES,
    )


# --------------------------------------------------------------------------- real images

def _small_image_message(what: str, h: int, w: int) -> str:
    return (f"{what} is {w}x{h} px (width x height), smaller than the largest expert "
            f"resolution {IMAGE_SIZE} on its shorter side; pass --allow_small_images to "
            f"upsample such images")


def _resize_images(images: np.ndarray | Sequence[np.ndarray], size: int = IMAGE_SIZE) -> np.ndarray:
    """Anti-aliased resize (no aspect preservation) of uint8 [H, W, 3] images to
    uint8 [size, size, 3]."""
    from bmoe_tf.backend import tf

    out = tf.image.resize(images, (size, size), antialias=True)
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def _first_line(err: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception (tfds' "not found" lists every dataset it
    knows on the lines after)."""
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else ""
    if len(first) > limit:
        first = first[:limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def check_ground_truth(sets: Mapping[str, "DetectionSet"], source: str) -> None:
    """Refuses splits without a single ground-truth box: their mAP is undefined
    (pycocotools reports -1, which would print as -100.00 for every expert).

    Args:
      sets: ``{split: DetectionSet}``.
      source: what to name in the message (e.g. the annotations.json path).
    Raises:
      ValueError: naming ``source`` and the splits without boxes.
    """
    empty = [split for split, ds in sets.items() if len(ds) and not len(ds.boxes)]
    if not empty:
        return
    total = sum(len(ds.boxes) for ds in sets.values())
    why = ("it has no (non-crowd) annotations at all" if not total else
           f"its {total} boxes all fall in the other splits")
    raise ValueError(f"{source}: the {', '.join(empty)} split{'s' if len(empty) > 1 else ''} "
                     f"{'have' if len(empty) > 1 else 'has'} no ground-truth boxes ({why}); "
                     "detection needs annotated boxes in every split (mAP is undefined "
                     "without them)")


def _tfds_builder_family(name: str) -> str:
    return name.split("/")[0].split(":")[0].lower()


def _load_tfds(name: str, split: str, *, data_dir: str | None, allow_small_images: bool,
               max_images: int | None, indices: Sequence[int] | None = None) -> DetectionSet:
    """``load_tfds`` on the examples ``indices`` of the split (dataset order), if given."""
    from bmoe_tf.backend import tf
    import tensorflow_datasets as tfds

    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir, download=False,
                             with_info=True, shuffle_files=False)
    except Exception as e:
        raise ValueError(
            f"cannot load the TensorFlow Datasets dataset {name!r} split {split!r} from "
            f"data_dir={data_dir!r} without downloading ({_first_line(e)}). Prepare it "
            f"first (e.g. `tfds build {name} --data_dir DIR`) and pass its data_dir.") from None
    try:
        class_names = tuple(info.features["objects"]["label"].names)
    except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"tfds dataset {name!r} has no objects/label class feature; "
                         f"only detection datasets (coco, voc) are supported") from e

    if indices is not None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        stop = int(indices.max()) + 1 if len(indices) else 0
        keep = np.zeros(stop, bool)
        keep[indices] = True
        keep_t = tf.constant(keep)
        ds = ds.take(stop).enumerate().filter(lambda i, ex: tf.gather(keep_t, i))
    else:
        ds = ds.enumerate()
    if max_images:
        ds = ds.take(int(max_images))

    def _prepare(i, ex):
        image = ex["image"]
        shape = tf.shape(image)[:2]
        resized = tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE), antialias=True)
        resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
        objects = {k: v for k, v in ex["objects"].items()
                   if k in ("bbox", "label", "is_crowd")}
        extra = {}
        for key in ("image/id", "image/filename"):
            if key in ex:
                extra[key] = ex[key]
        return i, shape, resized, objects, extra

    ds = ds.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4)

    images, boxes, labels, names = [], [], [], []
    crowd = degenerate = bad_label = 0
    for i, shape, image, objects, extra in tfds.as_numpy(ds):
        h, w = int(shape[0]), int(shape[1])
        if min(h, w) < IMAGE_SIZE and not allow_small_images:
            raise ValueError(_small_image_message(
                f"tfds {name} split {split!r} example {int(i)}", h, w))
        # Per-object fields can disagree in length (tfds mock data): cut to the shortest.
        n = min(len(v) for v in objects.values()) if objects else 0
        b = np.asarray(objects.get("bbox", np.zeros((0, 4))), np.float32).reshape(-1, 4)[:n]
        lab = np.asarray(objects.get("label", np.zeros(0)), np.int64).reshape(-1)[:n]
        ok = np.ones(n, bool)
        if "is_crowd" in objects:
            is_crowd = np.asarray(objects["is_crowd"]).reshape(-1)[:n].astype(bool)
            crowd += int(is_crowd.sum())
            ok &= ~is_crowd
        b = np.clip(b, 0.0, 1.0)
        degen = ok & ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
        degenerate += int(degen.sum())
        ok &= ~degen
        badl = ok & ((lab < 0) | (lab >= len(class_names)))
        bad_label += int(badl.sum())
        ok &= ~badl
        images.append(image)
        boxes.append(b[ok])
        labels.append(lab[ok].astype(np.int32))
        if "image/filename" in extra:
            raw = extra["image/filename"]
            names.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        elif "image/id" in extra:
            names.append(str(int(extra["image/id"])))
        else:
            names.append(f"{split}-{int(i):06d}")
    if degenerate or bad_label:
        print(f"tfds {name} split {split!r}: dropped {degenerate} degenerate boxes (zero area "
              f"after clipping to the image)"
              + (f" and {bad_label} boxes with labels outside 0..{len(class_names) - 1}"
                 if bad_label else "")
              + (f"; {crowd} crowd boxes skipped" if crowd else ""))
    return _from_lists(images, boxes, labels, names, class_names)


def load_tfds(name: str, split: str, *, data_dir: str | None = None,
              allow_small_images: bool = False, max_images: int | None = None) -> DetectionSet:
    """A prepared tfds detection dataset (``coco/2017``, ``voc/2007``) as a DetectionSet.

    Never downloads. Crowd boxes are dropped, per-object fields are cut to the
    shortest field, degenerate boxes are dropped (one printed line with the count),
    images are resized (anti-aliased, squashed) to 300x300. An image whose shorter
    side is below 300 px raises ``ValueError`` unless ``allow_small_images``.
    ``max_images``: the first that many examples (``None``/0: all).
    """
    return _load_tfds(name, split, data_dir=data_dir, allow_small_images=allow_small_images,
                      max_images=max_images)


def _split_count(name: str, split: str, data_dir: str | None) -> int:
    """Number of examples of a tfds split (from its metadata, else by counting)."""
    from bmoe_tf.backend import tf
    import tensorflow_datasets as tfds

    ds, info = tfds.load(name, split=split, data_dir=data_dir, download=False, with_info=True,
                         decoders={"image": tfds.decode.SkipDecoding()})
    card = int(ds.cardinality().numpy())
    if card >= 0:
        return card
    try:
        n = int(info.splits[split].num_examples)
        if n > 0:
            return n
    except (KeyError, TypeError, ValueError):
        pass
    return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1).numpy())


# --------------------------------------------------------------------------- folder

def _folder_error(ann: str, message: str) -> ValueError:
    return ValueError(f"{ann}: {message}")


def _require(ann: str, entry: object, what: str, keys: Sequence[str]) -> dict:
    if not isinstance(entry, dict):
        raise _folder_error(ann, f"{what} must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise _folder_error(ann, f"{what} is missing key(s) {missing} "
                                 f"(required: {list(keys)})")
    return entry


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_folder(path: str, *, allow_small_images: bool = False) -> DetectionSet:
    """Images of ``path`` with COCO-format boxes from ``path/annotations.json``.

    Every ``images`` entry is loaded (in file order) and resized to 300x300; boxes
    ``[x, y, w, h]`` (px) become normalized ``(ymin, xmin, ymax, xmax)``; category
    ids map to ``0..C-1`` in sorted id order. Crowd annotations are dropped.
    Invalid input raises ``ValueError`` naming the file and the entry.
    """
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"detection folder {path!r} does not exist or is not a directory")
    ann = os.path.join(path, "annotations.json")
    if not os.path.isfile(ann):
        raise ValueError(f"{ann}: annotations file not found; a detection folder needs "
                         f"annotations.json in COCO format (images, annotations, categories)")
    try:
        with open(ann, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise _folder_error(ann, f"not valid JSON: {e.msg} at line {e.lineno} column "
                                 f"{e.colno}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise _folder_error(ann, f"cannot be read: {e}") from e
    if not isinstance(doc, dict):
        raise _folder_error(ann, f"the top level must be a JSON object with keys images, "
                                 f"annotations and categories, got {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise _folder_error(ann, f"missing top-level key {key!r} (a COCO file needs "
                                     f"'images', 'annotations' and 'categories')")
        if not isinstance(doc[key], list):
            raise _folder_error(ann, f"top-level key {key!r} must be a list, got "
                                     f"{type(doc[key]).__name__}")

    cat_ids = []
    cat_names = {}
    for k, cat in enumerate(doc["categories"]):
        _require(ann, cat, f"categories[{k}]", ("id", "name"))
        if not _is_int(cat["id"]):
            raise _folder_error(ann, f"categories[{k}]: id must be an integer, got {cat['id']!r}")
        if cat["id"] in cat_names:
            raise _folder_error(ann, f"categories[{k}]: duplicate category id {cat['id']}")
        cat_names[cat["id"]] = str(cat["name"])
        cat_ids.append(cat["id"])
    if not cat_ids:
        raise _folder_error(ann, "'categories' is empty; at least one category is required")
    sorted_ids = sorted(cat_ids)
    cat_index = {cid: i for i, cid in enumerate(sorted_ids)}
    class_names = tuple(cat_names[cid] for cid in sorted_ids)

    entries = []
    by_id = {}
    for k, im in enumerate(doc["images"]):
        _require(ann, im, f"images[{k}]", ("id", "file_name"))
        if not _is_int(im["id"]):
            raise _folder_error(ann, f"images[{k}]: id must be an integer, got {im['id']!r}")
        if im["id"] in by_id:
            raise _folder_error(ann, f"images[{k}]: duplicate image id {im['id']}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise _folder_error(ann, f"images[{k}] (id={im['id']}): file_name must be a "
                                     f"non-empty string")
        for key in ("width", "height"):
            if key in im and not (_is_int(im[key]) and im[key] > 0):
                raise _folder_error(ann, f"images[{k}] (id={im['id']}, {im['file_name']}): "
                                         f"{key} must be a positive integer, got {im[key]!r}")
        by_id[im["id"]] = len(entries)
        entries.append(im)

    per_image: list[list[dict]] = [[] for _ in entries]
    for k, a in enumerate(doc["annotations"]):
        _require(ann, a, f"annotations[{k}]", ("id", "image_id", "category_id", "bbox"))
        aid = a["id"]
        if a["image_id"] not in by_id:
            raise _folder_error(ann, f"annotation id={aid}: image_id {a['image_id']!r} is not "
                                     f"the id of any images entry")
        file_name = entries[by_id[a["image_id"]]]["file_name"]
        if a["category_id"] not in cat_index:
            raise _folder_error(ann, f"annotation id={aid} (image {file_name}): unknown "
                                     f"category_id {a['category_id']!r}; known category ids: "
                                     f"{sorted_ids}")
        bbox = a["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in bbox)):
            raise _folder_error(ann, f"annotation id={aid} (image {file_name}): bbox must be "
                                     f"a list of 4 finite numbers [x, y, w, h] in pixels, "
                                     f"got {bbox!r}")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise _folder_error(ann, f"annotation id={aid} (image {file_name}): bbox {bbox} "
                                     f"has zero or negative area; w and h must be > 0")
        per_image[by_id[a["image_id"]]].append(a)

    images, boxes, labels, names = [], [], [], []
    for im, anns in zip(entries, per_image):
        file_name = im["file_name"]
        fpath = os.path.join(path, file_name)
        where = f"images entry id={im['id']}"
        if not os.path.isfile(fpath):
            raise _folder_error(ann, f"{where}: image file {file_name} not found in {path}")
        try:
            with Image.open(fpath) as pil:
                pil.load()
                raw = np.asarray(pil.convert("RGB"))
        except Exception as e:  # PIL.UnidentifiedImageError, truncated files, ...
            raise _folder_error(ann, f"{where}: image file {file_name} cannot be read as an "
                                     f"image ({type(e).__name__}: {e}); png or jpg expected") from e
        H, W = raw.shape[:2]
        if ("width" in im and im["width"] != W) or ("height" in im and im["height"] != H):
            raise _folder_error(ann, f"{where}: image file {file_name} is {W}x{H} px but the "
                                     f"entry says width={im.get('width')}, "
                                     f"height={im.get('height')}")
        if min(H, W) < IMAGE_SIZE and not allow_small_images:
            raise ValueError(_small_image_message(f"{fpath} ({where} of {ann})", H, W))
        b_img, l_img = [], []
        for a in anns:
            if a.get("iscrowd"):
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            tol = 0.5
            if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
                raise _folder_error(ann, f"annotation id={a['id']} (image {file_name}, {W}x{H} "
                                         f"px): bbox {a['bbox']} lies outside the image by "
                                         f"more than {tol} px; boxes [x, y, w, h] must lie "
                                         f"inside [0, {W}] x [0, {H}]")
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(W)), min(y + h, float(H))
            if x1 <= x0 or y1 <= y0:
                raise _folder_error(ann, f"annotation id={a['id']} (image {file_name}): bbox "
                                         f"{a['bbox']} has zero area inside the image")
            b_img.append((y0 / H, x0 / W, y1 / H, x1 / W))
            l_img.append(cat_index[a["category_id"]])
        images.append(_resize_images(raw[None])[0] if (H, W) != (IMAGE_SIZE, IMAGE_SIZE)
                      else raw.astype(np.uint8))
        boxes.append(np.asarray(b_img, np.float32).reshape(-1, 4))
        labels.append(np.asarray(l_img, np.int32))
        names.append(file_name)
    return _from_lists(images, boxes, labels, names, class_names)


# --------------------------------------------------------------------------- splits

def _cap(n: int) -> int | None:
    n = int(n)
    if n < 0:
        raise ValueError(f"split sizes must be >= 0, got {n}")
    return n or None


def _allocate(n: int, fractions=FOLDER_FRACTIONS) -> tuple[int, ...]:
    """Split ``n >= len(fractions)`` items by ``fractions``, at least one each (the first
    part takes the rest)."""
    counts = [max(1, int(round(n * f))) for f in fractions[1:]]
    while n - sum(counts) < 1:
        counts[int(np.argmax(counts))] -= 1
    return (n - sum(counts), *counts)


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of ``range(n)`` cut in two (the first half one longer)."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n - n // 2], perm[n - n // 2:]


def load_splits(spec: str, *, seed: int, sizes: Mapping[str, int],
                tfds_data_dir: str | None = None,
                allow_small_images: bool = False) -> dict[str, DetectionSet]:
    """``{"experts", "train", "validation", "test"}`` DetectionSets of the data source
    ``spec`` (:data:`SPLITS`).

    ``spec``: ``"generated"``, ``"tfds:NAME"`` (e.g. ``tfds:coco/2017``,
    ``tfds:voc/2007``) or ``"folder:PATH"``. ``sizes``: numbers of images per split
    for ``generated``; caps for tfds / folder (0 = all). See the module docstring
    for the split mapping.
    """
    missing = [k for k in SPLITS if k not in sizes]
    if missing:
        raise ValueError(f"load_splits: sizes needs keys {list(SPLITS)}, missing {missing}")
    seed = int(seed)
    spec = str(spec)
    if spec == "generated":
        return {split: generate_set(int(sizes[split]), seed,
                                    start_index=GENERATED_SPLIT_START[split])
                for split in SPLITS}

    if spec.startswith("tfds:"):
        name = spec[len("tfds:"):]
        if not name:
            raise ValueError("load_splits: 'tfds:' needs a dataset name, e.g. tfds:coco/2017")
        caps = {k: _cap(sizes[k]) for k in SPLITS}
        common = dict(data_dir=tfds_data_dir, allow_small_images=allow_small_images)
        # tfds train: a seeded permutation halved, the experts' split and the gates' (D75)
        out = {}
        halves = _halves(_split_count(name, "train", tfds_data_dir), seed)
        for split, idx in zip(("experts", "train"), halves):
            idx = idx[: caps[split]] if caps[split] else idx
            out[split] = _load_tfds(name, "train", max_images=None, indices=np.sort(idx),
                                    **common)
        family = _tfds_builder_family(name)
        use_test = family == "voc"
        if family not in ("voc", "coco"):
            import tensorflow_datasets as tfds
            try:
                builder = tfds.builder(name, data_dir=tfds_data_dir)
                use_test = "test" in builder.info.splits
            except Exception:
                use_test = False
        if use_test:
            out["validation"] = _load_tfds(name, "validation", max_images=caps["validation"],
                                           **common)
            out["test"] = _load_tfds(name, "test", max_images=caps["test"], **common)
        else:  # COCO: no labelled test split -> halve a seeded permutation of validation
            halves = _halves(_split_count(name, "validation", tfds_data_dir), seed)
            for split, idx in zip(("validation", "test"), halves):
                idx = idx[: caps[split]] if caps[split] else idx
                out[split] = _load_tfds(name, "validation", max_images=None,
                                        indices=np.sort(idx), **common)
        check_ground_truth(out, f"tfds dataset {name!r}")
        return out

    if spec.startswith("folder:"):
        folder = spec[len("folder:"):]
        full = load_folder(folder, allow_small_images=allow_small_images)
        if len(full) < len(SPLITS):
            raise ValueError(f"detection folder {folder!r} has {len(full)} image(s); at least "
                             f"{len(SPLITS)} are needed (one each for {', '.join(SPLITS)})")
        ends = np.cumsum(_allocate(len(full)))
        perm = np.random.default_rng(seed).permutation(len(full))
        parts = dict(zip(SPLITS, np.split(perm, ends[:-1])))
        out = {}
        for split, idx in parts.items():
            cap = _cap(sizes[split])
            out[split] = full.subset(np.sort(idx[:cap] if cap else idx))
        check_ground_truth(out, os.path.join(folder, "annotations.json"))
        return out

    raise ValueError(f"unknown detection data source {spec!r}; use 'generated', "
                     f"'tfds:NAME' (e.g. tfds:coco/2017, tfds:voc/2007) or 'folder:PATH'")


def gate_view(images, resolution):
    """``float32[M, r, r, 3]`` in [0, 1]: the 224x224 centre crop of ``uint8[M, 300, 300, 3]``
    images (Table III), anti-aliased down to ``r`` when ``r < 224``."""
    from bmoe_tf.backend import tf

    images = np.asarray(images)
    size = images.shape[1]
    top = (size - GATE_CROP) // 2
    crop = images[:, top:top + GATE_CROP, top:top + GATE_CROP]
    out = np.empty((len(images), resolution, resolution, 3), np.float32)
    for start in range(0, len(images), 256):  # bounded memory on large splits
        part = crop[start:start + 256].astype(np.float32) / 255.0
        if resolution != GATE_CROP:
            part = tf.image.resize(part, (resolution, resolution), antialias=True).numpy()
        out[start:start + 256] = np.clip(part, 0.0, 1.0)
    return out


def view_resolution(cfg):
    """Side of the gate's view (``--gate_resolution``, 0 = by gate kind); 0 for
    ``--gate=cascade``, which sees no image (:mod:`experiments.detection.cascade`)."""
    if cfg.gate == "cascade":
        return 0
    if cfg.task.gate_resolution:
        return int(cfg.task.gate_resolution)
    return GATE_CROP if cfg.gate == "paper" else COMPACT_VIEW
