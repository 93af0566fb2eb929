"""Encode frames with libx264 and read the codec's motion vectors with PyAV.

:func:`encode_h264` turns ``uint8[F, H, W, 3]`` RGB frames into an H.264 (yuv420p) bitstream in
an MP4 container built in memory (``io.BytesIO``; no temporary file unless a path is asked for).
:func:`read_motion_vectors` decodes a file or such bytes with FFmpeg's ``+export_mvs`` and
rasterises each frame's ``MOTION_VECTORS`` side data into a ``float32[grid, grid, 2]`` map
(:func:`rasterise_motion_vectors`): map ``k`` is the content motion from decoded frame ``k - 1``
to frame ``k`` in pixels per frame of the decoded video, channel 0 horizontal (positive: content
moves right), channel 1 vertical (positive: content moves down). Frames without vectors (I-frames,
frame 0) give an exact zero map, and so do pixels in intra-coded blocks.

Sign convention. FFmpeg's ``motion_x / motion_scale`` is ``src - dst``: it points from the block
(``dst``, in the current frame) into the reference frame (``src``). For a past reference
(``source < 0``) the content moved from ``src`` to ``dst``, so its motion is
``-(motion_x / motion_scale)``; for a future reference (``source > 0``, B-frames) the content
moves on from ``dst`` to ``src``, so the forward motion is ``+(motion_x / motion_scale)``.
FFmpeg does not export how many frames away the reference is, so the distance is taken as one
frame. That is why :func:`encode_h264` uses ``bframes=0, ref=1, scenecut=0``: x264's defaults
(B-frames, several references) give vectors up to 4 frames back with no way to tell which;
with one past reference every P-frame's vectors point at the previous frame and the maps are
exact per-frame motion. Maps of other videos (B-frames, several references) are approximate.
"""
import dataclasses
import io
import os
import zlib

import av
import numpy as np
from PIL import Image

from experiments.action.clips import MV_GRID

__all__ = ["MV_GRID", "DecodedVideo", "compressed_mv_bytes", "encode_h264", "jpeg_bytes",
           "rgb_to_yuv420p",
           "rasterise_motion_vectors", "read_motion_vectors"]


def rgb_to_yuv420p(rgb):
    """``uint8[H * 3 / 2, W]`` planar YUV 4:2:0 (BT.601, limited range) of ``uint8[H, W, 3]``
    RGB, in numpy: the encoder never goes through swscale (with it, the same frames gave
    a different bitstream now and then, under load)."""
    x = np.asarray(rgb, np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape

    def half(c):
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = np.concatenate([np.rint(c).reshape(-1) for c in (y, half(u), half(v))])
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def encode_h264(frames, *, crf=23, keyint=250, fps=25, path=None) -> bytes:
    """``uint8[F, H, W, 3]`` RGB -> an H.264 (libx264, yuv420p) bitstream in an MP4 container.

    Built in memory and returned as bytes; also written to ``path`` when given. x264 runs with
    ``bframes=0, ref=1, scenecut=0, keyint=min-keyint=keyint`` (and one thread, so the
    bitstream does not depend on the machine's core count): frame 0 is an I-frame, every later
    frame a P-frame referencing the previous frame, except every ``keyint``-th frame, an I-frame.
    ValueError: not ``uint8[F, H, W, 3]``, ``F < 1``, or an odd height or width.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_h264 needs uint8[F, H, W, 3] frames, got {frames.dtype}"
                         f"{list(frames.shape)}")
    n, height, width = frames.shape[:3]
    if n < 1:
        raise ValueError("encode_h264 needs at least one frame")
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs an even height and width, got {height}x{width}: "
                         "crop to even sizes first")
    keyint = int(keyint)
    if keyint < 1:
        raise ValueError(f"keyint must be >= 1, got {keyint}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {
            "crf": str(crf),
            "threads": "1",
            "x264-params": (f"bframes=0:ref=1:scenecut=0:keyint={keyint}:min-keyint={keyint}"
                            ":threads=1:lookahead-threads=1:sliced-threads=0:sync-lookahead=0"),
        }
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


@dataclasses.dataclass
class DecodedVideo:
    """What :func:`read_motion_vectors` read from one video (``F`` decoded frames)."""

    #: ``float32[F, grid, grid, 2]``: map k = content motion from decoded frame k-1 to k (px per
    #: frame; ch0 horizontal, +right; ch1 vertical, +down); zero for frames without vectors.
    mv: np.ndarray
    #: ``str[F]``: ``"I"``, ``"P"``, ``"B"``, ... per decoded frame.
    pict_types: np.ndarray
    #: ``uint8[F, H, W, 3]`` RGB when ``keep_frames=True``, else ``None``.
    frames: np.ndarray | None
    #: ``int64[F]``: bytes of each frame's MOTION_VECTORS side data (0 if none).
    side_data_bytes: np.ndarray
    width: int
    height: int


def _open_error(name, err):
    return ValueError(f"{name}: PyAV cannot read it as a video ({err})")


def read_motion_vectors(source, *, max_frames=None, grid=MV_GRID, keep_frames=False):
    """Decodes the first video stream of ``source`` and rasterises its motion vectors.

    ``source``: a file path (str / PathLike) or bytes (an in-memory container). The decoder runs
    with ``flags2=+export_mvs``; at most ``max_frames`` frames are read (all when ``None``).
    Returns a :class:`DecodedVideo`. ValueError naming the file (or ``"<bytes>"``) when PyAV
    cannot open or decode it, or it has no video stream.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, handle = "<bytes>", io.BytesIO(bytes(source))
    else:
        name = handle = os.fspath(source)
    mvs, types, rgb, sizes = [], [], [], []
    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.video:
                raise ValueError(f"{name} has no video stream")
            stream = container.streams.video[0]
            stream.codec_context.options = {"flags2": "+export_mvs"}
            # one decoding thread: with FFmpeg's threaded decoding the exported vectors of
            # a few clips changed between two runs of the same bitstream under load
            stream.codec_context.thread_count = 1
            stream.codec_context.thread_type = "NONE"
            width, height = stream.codec_context.width, stream.codec_context.height
            for frame in container.decode(stream):
                if max_frames is not None and len(mvs) >= max_frames:
                    break
                width, height = frame.width, frame.height
                side = frame.side_data.get("MOTION_VECTORS")
                if side is None:
                    mvs.append(np.zeros((grid, grid, 2), np.float32))
                    sizes.append(0)
                else:
                    mvs.append(rasterise_motion_vectors(side.to_ndarray(), width, height, grid))
                    sizes.append(int(side.buffer_size))
                types.append(av.video.frame.PictureType(int(frame.pict_type)).name)
                if keep_frames:
                    rgb.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError) as err:
        raise _open_error(name, err) from None
    return DecodedVideo(
        mv=np.stack(mvs) if mvs else np.zeros((0, grid, grid, 2), np.float32),
        pict_types=np.asarray(types, dtype=str),
        frames=(np.stack(rgb) if rgb else np.zeros((0, height, width, 3), np.uint8))
        if keep_frames else None,
        side_data_bytes=np.asarray(sizes, np.int64),
        width=int(width), height=int(height))


def _cell_weights(size, grid, step=1):
    """``float64[grid, ceil(size / step)]``: share of grid cell i covered by the run of ``step``
    pixels j (clipped to the frame; each row sums to 1)."""
    edges = np.arange(grid + 1) * (size / grid)
    lo = np.arange(-(-size // step)) * step
    hi = np.minimum(lo + step, size)
    overlap = np.minimum(edges[1:, None], hi[None, :]) - np.maximum(edges[:-1, None], lo[None, :])
    return np.clip(overlap, 0, None) / (size / grid)


def rasterise_motion_vectors(vectors, width, height, grid=MV_GRID):
    """``float32[grid, grid, 2]``: one frame's motion vectors as an area-averaged
    content-motion map.

    ``vectors``: the structured array of ``frame.side_data["MOTION_VECTORS"].to_ndarray()``
    (fields ``source, w, h, dst_x, dst_y, motion_x, motion_y, motion_scale``, ...). Each block
    (``w x h`` pixels from ``dst - size // 2``, clipped to the frame) paints its content motion
    (``-motion / motion_scale`` for a past reference, ``+motion / motion_scale`` for a future
    one; one frame of distance assumed) onto its pixels; where blocks overlap (a bi-predicted
    block's two vectors) a pixel takes their mean. Pixels no block covers (intra-coded blocks)
    count as zero motion. The per-pixel map is then area-averaged onto ``grid x grid`` cells.
    The painting runs on tiles of the largest step that divides every block's corner and size
    (4 px for H.264), which gives the same map as painting single pixels.
    """
    width, height = int(width), int(height)
    v = np.asarray(vectors)
    if v.size == 0:
        return np.zeros((grid, grid, 2), np.float32)
    w = v["w"].astype(np.int64)
    h = v["h"].astype(np.int64)
    x0 = v["dst_x"].astype(np.int64) - w // 2
    y0 = v["dst_y"].astype(np.int64) - h // 2
    step = max(int(np.gcd.reduce(np.concatenate([w, h, x0, y0]))), 1)
    w, h, x0, y0 = w // step, h // step, x0 // step, y0 // step
    nx, ny = -(-width // step), -(-height // step)
    scale = np.maximum(v["motion_scale"].astype(np.float64), 1.0)
    sign = np.where(v["source"] > 0, 1.0, -1.0)
    motion = np.stack([sign * v["motion_x"] / scale, sign * v["motion_y"] / scale], axis=-1)
    # Every tile of every block: block index and offset within the block.
    area = w * h
    block = np.repeat(np.arange(len(v)), area)
    offset = np.arange(block.size) - np.repeat(np.cumsum(area) - area, area)
    tx = x0[block] + offset % w[block]
    ty = y0[block] + offset // w[block]
    inside = (tx >= 0) & (tx < nx) & (ty >= 0) & (ty < ny)
    block, tile = block[inside], ty[inside] * nx + tx[inside]
    hits = np.maximum(np.bincount(tile, minlength=nx * ny), 1)
    wy, wx = _cell_weights(height, grid, step), _cell_weights(width, grid, step)
    out = np.empty((grid, grid, 2), np.float32)
    for c in range(2):
        field = np.bincount(tile, weights=motion[block, c], minlength=nx * ny) / hits
        out[..., c] = wy @ field.reshape(ny, nx) @ wx.T
    return out


def compressed_mv_bytes(mv) -> int:
    """Bytes a sensor would send for motion-vector maps ``float[F, grid, grid, 2]``.

    The maps are quantised to int8 in steps of 0.25 px (clipped to [-128, 127]), then compressed
    with zlib at level 9; returns the compressed length.
    """
    from experiments.action.payloads import quantize_mv

    return len(zlib.compress(quantize_mv(mv).tobytes(), 9))


def jpeg_bytes(frames, quality=90) -> int:
    """Sum of the JPEG sizes (Pillow, ``quality``) of ``uint8[F, H, W, 3]`` frames."""
    total = 0
    for frame in np.asarray(frames, np.uint8):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=int(quality))
        total += buf.tell()
    return total
