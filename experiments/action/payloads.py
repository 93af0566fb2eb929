"""What a sensor sends for each action mode (``--data_cost=encoded``).

A clip's payload is a :class:`bmoe_tf.payload.Sections` codec over the sensor's buffer:

* motion vectors: the ``[F_t, 24, 24, 2]`` maps quantised to int8 in steps of
  :data:`MV_STEP` px (clipped to [-128, 127]; the codec's vectors are quarter-pel, so
  this loses nothing below 32 px) and compressed with zlib (level 9), as
  :func:`experiments.action.video.compressed_mv_bytes` counts them;
* RGB: each of the ``F_s`` frames (``uint8 [S, S, 3]``) through the image codec of the
  ``--codec`` setting (default ``jpeg:90:tables``: the header the server rebuilds is not
  sent);
* Temporal sends the first, Spatial the second, Fusion both (one payload).

Each expert sees what the server decodes: the int8 vectors times :data:`MV_STEP`, the
decoded frames / 255.
"""
import numpy as np

from bmoe_tf.payload import Sections, Zlib, make_codec, to_uint8
from experiments.action.clips import MV_GRID

__all__ = ["MV_STEP", "mode_codec", "to_payload", "from_payload", "quantize_mv"]

#: Motion vectors travel as int8 multiples of this (px).
MV_STEP = 0.25


def quantize_mv(mv):
    """``int8``: motion vectors (px) in steps of :data:`MV_STEP`, clipped to int8."""
    return np.clip(np.rint(np.asarray(mv, np.float64) / MV_STEP), -128, 127).astype(np.int8)


def _shapes(mv_frames, rgb_frames, frame_size):
    return (int(mv_frames), MV_GRID, MV_GRID, 2), (int(rgb_frames), int(frame_size),
                                                   int(frame_size), 3)


def mode_codec(mode, image_codec, *, mv_frames, rgb_frames, frame_size):
    """The :class:`bmoe_tf.payload.Sections` codec of one mode's payload."""
    mv_shape, rgb_shape = _shapes(mv_frames, rgb_frames, frame_size)
    mv = (Zlib(np.int8), np.int8, mv_shape, False)
    rgb = (make_codec(image_codec), np.uint8, rgb_shape, True)
    return Sections({"temporal": [mv], "spatial": [rgb], "fusion": [mv, rgb]}[mode])


def to_payload(mode, *, mv_frames, rgb_frames, frame_size):
    """``P_n(x) [B, ...] -> uint8 [B, L_n]``: the sensor's buffer of a mode (its
    preprocessed input: Temporal the maps, Spatial the frames in [0, 1], Fusion the packed
    clip)."""
    mv_shape, rgb_shape = _shapes(mv_frames, rgb_frames, frame_size)
    n_mv = int(np.prod(mv_shape))

    def mv_bytes(mv):
        return quantize_mv(mv).reshape(len(mv), -1).view(np.uint8)

    def rgb_bytes(rgb):
        return to_uint8(rgb).reshape(len(rgb), -1)

    def convert(y):
        y = np.asarray(y)
        if mode == "temporal":
            return mv_bytes(y)
        if mode == "spatial":
            return rgb_bytes(y)
        return np.concatenate([mv_bytes(y[:, :n_mv]), rgb_bytes(y[:, n_mv:])], axis=1)

    return convert


def from_payload(mode, *, mv_frames, rgb_frames, frame_size):
    """``uint8 [B, L_n] -> float32``: the model's input from the decoded buffer (the
    inverse of :func:`to_payload`, up to the codecs' loss)."""
    mv_shape, rgb_shape = _shapes(mv_frames, rgb_frames, frame_size)
    n_mv = int(np.prod(mv_shape))

    def mv_values(buf):
        return np.ascontiguousarray(buf).view(np.int8).astype(np.float32) * np.float32(MV_STEP)

    def rgb_values(buf):
        return np.asarray(buf, np.float32) / np.float32(255.0)

    def convert(decoded):
        d = np.asarray(decoded, np.uint8).reshape(len(decoded), -1)
        if mode == "temporal":
            return mv_values(d).reshape((-1,) + mv_shape)
        if mode == "spatial":
            return rgb_values(d).reshape((-1,) + rgb_shape)
        return np.concatenate([mv_values(d[:, :n_mv]), rgb_values(d[:, n_mv:])], axis=1)

    return convert
