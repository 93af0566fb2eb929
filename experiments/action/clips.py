"""The clip set of the action task: motion-vector maps, RGB frames and labels.

One :class:`ClipSet` per split (``data/{split}.npz`` in a workdir). Shapes, for M
clips, F_t motion-vector maps per clip, F_s RGB frames of S x S pixels:

* ``mv``: ``float16[M, F_t, 24, 24, 2]`` -- the codec's motion vectors, area-averaged
  onto a 24x24 grid, in pixels per frame *of the decoded video*; channel 0 is the
  horizontal component (positive: content moves right), channel 1 the vertical one
  (positive: content moves down). Map t is the motion from frame t to frame t+1, so
  F_t maps need F_t + 1 decoded frames; an I-frame (no vectors) gives a zero map.
* ``rgb``: ``uint8[M, F_s, S, S, 3]`` -- the RGB frames the Spatial expert sees.
* ``labels``: ``int32[M]`` indices into ``class_names``.
* ``groups``: ``str[M]`` -- the unit of splitting (a source-video region, a UCF-101
  group ``gNN`` of a class): one group never spans two splits.
* ``clip_ids``: ``str[M]`` -- a file name or a generated clip's id.
* ``degradation``: ``str[M]`` -- ``""`` for a normal clip; otherwise what made its
  motion vectors unreliable (generated data only: ``"flat"``, ``"noise"``,
  ``"intra"``); real data is all ``""``.
* ``mv_bytes``: ``int64[M]`` -- compressed bytes of the clip's motion vectors (see
  :func:`experiments.action.video.compressed_mv_bytes`).
* ``rgb_bytes``: ``int64[M]`` -- JPEG bytes of the clip's F_s RGB frames (quality 90).
"""
import dataclasses
import os

import numpy as np

__all__ = ["ClipSet", "MV_GRID", "MODES", "BYTES_PER_VALUE", "GATE_MV_CLIP", "concatenate",
           "mode_costs", "gate_input", "natural_order"]

#: Side of the motion-vector maps (H_t = W_t = 24 in the paper).
MV_GRID = 24
#: The modes (experts), cheapest first.
MODES = ("temporal", "spatial", "fusion")
#: K: bytes per value, as the paper counts data.
BYTES_PER_VALUE = 4
#: The gate sees motion clipped to +-this many px per frame (99% of the generated set's
#: values are below 4.3): its int8 input then steps in 1/16 px, not 1/2 (D42).
GATE_MV_CLIP = 8.0
_ARRAYS = ("mv", "rgb", "labels", "groups", "clip_ids", "degradation", "mv_bytes", "rgb_bytes")


@dataclasses.dataclass
class ClipSet:
    """One split of clips (see the module docstring for the fields' shapes)."""

    mv: np.ndarray
    rgb: np.ndarray
    labels: np.ndarray
    class_names: tuple
    groups: np.ndarray
    clip_ids: np.ndarray
    degradation: np.ndarray
    mv_bytes: np.ndarray
    rgb_bytes: np.ndarray
    source: str = ""

    def __post_init__(self):
        self.mv = np.asarray(self.mv, np.float16)
        self.rgb = np.asarray(self.rgb, np.uint8)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        self.class_names = tuple(str(c) for c in self.class_names)
        m = len(self.labels)
        for name in ("groups", "clip_ids", "degradation"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=str).reshape(-1))
        for name in ("mv_bytes", "rgb_bytes"):
            setattr(self, name, np.asarray(getattr(self, name), np.int64).reshape(-1))
        if self.mv.ndim != 5 or self.mv.shape[2:] != (MV_GRID, MV_GRID, 2):
            raise ValueError(f"mv must be [M, F_t, {MV_GRID}, {MV_GRID}, 2], got {self.mv.shape}")
        if self.rgb.ndim != 5 or self.rgb.shape[-1] != 3 or self.rgb.shape[2] != self.rgb.shape[3]:
            raise ValueError(f"rgb must be [M, F_s, S, S, 3], got {self.rgb.shape}")
        for name in _ARRAYS:
            if len(getattr(self, name)) != m:
                raise ValueError(f"ClipSet: {name} has {len(getattr(self, name))} rows, "
                                 f"labels has {m}")
        if m and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got "
                             f"[{self.labels.min()}, {self.labels.max()}]")

    def __len__(self):
        return len(self.labels)

    @property
    def mv_frames(self):
        """F_t, motion-vector maps per clip."""
        return int(self.mv.shape[1])

    @property
    def rgb_frames(self):
        """F_s, RGB frames per clip."""
        return int(self.rgb.shape[1])

    @property
    def frame_size(self):
        """S, side of the RGB frames."""
        return int(self.rgb.shape[2])

    @property
    def unreliable(self):
        """``bool[M]``: clips whose motion vectors were degraded on purpose."""
        return self.degradation != ""

    def subset(self, index):
        """The clips at ``index`` (an int array or a boolean mask), in that order."""
        index = np.asarray(index)
        return dataclasses.replace(self, **{k: getattr(self, k)[index] for k in _ARRAYS})

    def save(self, path):
        """Writes one ``.npz`` atomically (a temporary file, then a rename)."""
        tmp = path + ".tmp.npz"
        np.savez(tmp, class_names=np.asarray(self.class_names, dtype=str),
                 source=np.asarray(self.source), **{k: getattr(self, k) for k in _ARRAYS})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """Reads :meth:`save`'s file; ValueError naming the file when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in _ARRAYS + ("class_names",) if k not in f]
                if missing:
                    raise ValueError(f"{path} is not a clip set: no {missing}")
                return cls(class_names=tuple(f["class_names"].tolist()),
                           source=str(f["source"]) if "source" in f else "",
                           **{k: f[k] for k in _ARRAYS})
        except (OSError, EOFError) as err:
            raise ValueError(f"{path} is not a readable clip set ({err})") from None


def concatenate(sets):
    """One :class:`ClipSet` of several with the same class list and shapes."""
    sets = list(sets)
    if not sets:
        raise ValueError("concatenate needs at least one clip set")
    names = {s.class_names for s in sets}
    if len(names) != 1:
        raise ValueError(f"clip sets with different class lists: {sorted(names)}")
    return dataclasses.replace(sets[0], **{k: np.concatenate([getattr(s, k) for s in sets])
                                           for k in _ARRAYS})


def mode_costs(mv_frames, rgb_frames, frame_size, modes=MODES, k=BYTES_PER_VALUE):
    """``float[N]``: d_n of each mode as the paper counts it (bytes per clip).

    Temporal ``F_t x 24 x 24 x 2 x K``, Spatial ``F_s x S x S x 3 x K``, Fusion the sum.
    """
    temporal = mv_frames * MV_GRID * MV_GRID * 2 * k
    spatial = rgb_frames * frame_size * frame_size * 3 * k
    cost = {"temporal": temporal, "spatial": spatial, "fusion": temporal + spatial}
    return np.array([cost[m] for m in modes], np.float64)


def gate_input(mv):
    """``float32[M, 24, 24, 2 F_t]``: the MV maps ``[M, F_t, 24, 24, 2]`` stacked on
    channels (map t's horizontal, vertical components at channels 2t, 2t+1), clipped
    to +-:data:`GATE_MV_CLIP` px per frame."""
    mv = np.clip(np.asarray(mv, np.float32), -GATE_MV_CLIP, GATE_MV_CLIP)
    m, f = mv.shape[:2]
    return np.ascontiguousarray(mv.transpose(0, 2, 3, 1, 4).reshape(m, MV_GRID, MV_GRID, 2 * f))


def natural_order(clips):
    """``int64[M]``: the clips of a :class:`ClipSet` in the order a camera would produce
    them, scene by scene: grouped by source video (``groups``: a generated set's source
    region, a UCF-101 group of one class), groups in the order they first appear in the
    stored set, and within a group by ``clip_ids`` (generated: creation order; UCF-101:
    ``..._gNN_cMM``, the clips of a group in time order). The set does not record where
    in its source a generated clip starts, so that order is the creation order."""
    groups = np.asarray(clips.groups)
    first = {}
    for i, g in enumerate(groups.tolist()):
        first.setdefault(g, i)
    rank = np.array([first[g] for g in groups.tolist()], np.int64)
    return np.lexsort((np.arange(len(groups)), np.asarray(clips.clip_ids), rank)).astype(np.int64)
