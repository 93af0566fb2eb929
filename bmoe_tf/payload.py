"""The payload: what a sensor sends for an expert, as bytes on the link.

A :class:`Codec` turns an expert's input, as the sensor holds it (``uint8``, the
resized image, part or frames; ``int8`` motion vectors), into the bytes it transmits
(:meth:`Codec.encode`) and those bytes back into what the server's expert receives
(:meth:`Codec.decode`). The cost of routing input ``i`` to expert ``n`` is then the
length of its payload, ``c[i, n] = len(encode(P_n(x_i)))``, not the paper's fixed
``d_n = 3 R_n^2 K`` (:func:`payload_sizes`).

Built-ins (:func:`make_codec` names them ``raw``, ``png``, ``zlib``, ``jpeg:Q`` and
``jpeg:Q:tables``):

* :class:`Raw`: the array's bytes (the receiver knows shape and dtype); lossless.
* :class:`Png`: PNG (zlib level 9, Pillow's encoder); lossless, ``uint8`` images.
* :class:`Zlib`: the array's bytes through zlib (level 9); lossless, any integer dtype
  (the action task's ``int8`` motion vectors).
* :class:`Sections`: several sections of one input, each with its own codec (motion
  vectors and RGB frames of one clip), length-prefixed.
* :class:`Jpeg`: baseline JPEG at a quality in ``[1, 100]`` with Pillow's libjpeg(-turbo)
  and its standard tables (no per-image Huffman optimisation). With
  ``shared_tables=True`` the header (every byte up to and including the start-of-scan
  segment, and the end-of-image marker) is not sent: it depends only on the codec's
  settings and the input's shape, so the server builds the same header from those
  (:meth:`Jpeg.header`). Small inputs (the SR parts: 16-32 px) then do not pay ~600 B
  of tables each, and the bytes of a frame's parts add up to what the link carries.

Pillow, not ``tf.io``: the payload is made on a sensor one input at a time, outside a
graph, and Pillow's encoder is the libjpeg-turbo / zlib that a C sensor would link;
``tf.io.encode_jpeg`` wraps the same libjpeg but cannot leave the header out.
"""
from __future__ import annotations

import abc
import io
import zlib

import numpy as np

__all__ = ["Codec", "Raw", "Png", "Zlib", "Jpeg", "Sections", "make_codec", "codec_names", "image_codec_error",
           "payload_sizes", "round_trip", "to_uint8"]

_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"


def to_uint8(images) -> np.ndarray:
    """Float images in ``[0, 1]`` as the ``uint8`` a sensor holds (round to nearest, clip)."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


class Codec(abc.ABC):
    """Turns one input (an array, as the sensor holds it) into bytes and back.

    Subclasses set :attr:`name` and :attr:`lossless` and implement :meth:`encode` and
    :meth:`decode`; :meth:`get_config` is what a stage key records.
    """

    name = "codec"
    lossless = True

    @abc.abstractmethod
    def encode(self, array: np.ndarray) -> bytes:
        """The payload of one input (``uint8 [H, W]``, ``[H, W, C]``, or the codec's dtype)."""

    @abc.abstractmethod
    def decode(self, payload: bytes, shape=None) -> np.ndarray:
        """The array the server's expert receives from ``payload`` (``shape``: the input's
        shape, for codecs whose bytes do not carry it)."""

    def get_config(self) -> dict:
        return {"codec": self.name}

    def spec(self) -> str:
        """The :func:`make_codec` name of this codec."""
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}({self.spec()!r})"

    def __eq__(self, other):
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(self.spec())


def _check_shape(shape):
    if shape is None:
        raise ValueError("this codec's bytes do not carry the input's shape: pass shape=")
    return tuple(int(s) for s in shape)


class Raw(Codec):
    """The input's bytes as they are (the receiver knows its shape and dtype)."""

    name = "raw"

    def __init__(self, dtype=np.uint8):
        self.dtype = np.dtype(dtype)

    def encode(self, array):
        return np.ascontiguousarray(array, dtype=self.dtype).tobytes()

    def decode(self, payload, shape=None):
        out = np.frombuffer(payload, dtype=self.dtype)
        shape = _check_shape(shape)
        if out.size != int(np.prod(shape)):
            raise ValueError(f"a raw payload of {len(payload)} B does not hold {shape} "
                             f"{self.dtype} values")
        return out.reshape(shape)

    def get_config(self):
        return {"codec": self.name, "dtype": self.dtype.name}


class Zlib(Raw):
    """The input's bytes through zlib at ``level`` (lossless; the motion vectors)."""

    name = "zlib"

    def __init__(self, dtype=np.int8, level=9):
        super().__init__(dtype)
        if not (isinstance(level, (int, np.integer)) and 0 <= level <= 9):
            raise ValueError(f"zlib level must be an integer in [0, 9], got {level!r}")
        self.level = int(level)

    def encode(self, array):
        return zlib.compress(super().encode(array), self.level)

    def decode(self, payload, shape=None):
        try:
            raw = zlib.decompress(payload)
        except zlib.error as err:
            raise ValueError(f"a zlib payload of {len(payload)} B does not decode: {err}") from None
        return super().decode(raw, shape)

    def get_config(self):
        return {"codec": self.name, "dtype": self.dtype.name, "level": self.level}


def _image(array):
    from PIL import Image

    x = np.asarray(array)
    if x.dtype != np.uint8:
        raise ValueError(f"image codecs take uint8 inputs, got {x.dtype} (see to_uint8)")
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        return Image.fromarray(x, mode="L")
    if x.ndim == 3 and x.shape[-1] == 3:
        return Image.fromarray(x, mode="RGB")
    raise ValueError(f"image codecs take [H, W], [H, W, 1] or [H, W, 3] inputs, got {x.shape}")


def _read_image(payload, what, shape=None):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as im:
            out = np.asarray(im.convert(im.mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"a {what} payload of {len(payload)} B does not decode: {err}") from None
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if out.shape != shape:
            if out.shape + (1,) == shape:
                return out[..., None]
            raise ValueError(f"a {what} payload decodes to {out.shape}, expected {shape}")
    return out


class Png(Codec):
    """PNG at zlib level 9 (lossless; Pillow)."""

    name = "png"

    def encode(self, array):
        buf = io.BytesIO()
        _image(array).save(buf, format="PNG", compress_level=9)
        return buf.getvalue()

    def decode(self, payload, shape=None):
        return _read_image(payload, "PNG", shape)


class Jpeg(Codec):
    """Baseline JPEG at ``quality`` (Pillow's libjpeg, standard tables, 4:2:0 chroma for
    colour inputs); ``shared_tables``: the header is left out of the payload and rebuilt
    by the receiver from the settings and the input's shape (:meth:`header`)."""

    lossless = False

    def __init__(self, quality=90, *, shared_tables=False):
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
                or not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
        self.quality = int(quality)
        self.shared_tables = bool(shared_tables)
        self._headers = {}

    @property
    def name(self):
        return "jpeg"

    def spec(self):
        return f"jpeg:{self.quality}" + (":tables" if self.shared_tables else "")

    def get_config(self):
        return {"codec": "jpeg", "quality": self.quality, "shared_tables": self.shared_tables}

    def _file(self, array):
        buf = io.BytesIO()
        _image(array).save(buf, format="JPEG", quality=self.quality, optimize=False,
                           progressive=False)
        return buf.getvalue()

    @staticmethod
    def _split(data):
        """``(header, scan)``: the bytes up to the end of the start-of-scan segment, and the
        entropy-coded scan without the end-of-image marker."""
        at = data.find(_SOS)
        if at < 0 or not data.endswith(_EOI):
            raise ValueError("not a baseline JPEG file (no start of scan / end of image)")
        end = at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
        return data[:end], data[end:-2]

    def header(self, shape):
        """The header a payload of an input of ``shape`` leaves out (``shared_tables``):
        the same bytes for every input of that shape at these settings."""
        shape = _check_shape(shape)
        if shape not in self._headers:
            self._headers[shape] = self._split(self._file(np.zeros(shape, np.uint8)))[0]
        return self._headers[shape]

    def encode(self, array):
        data = self._file(array)
        if not self.shared_tables:
            return data
        head, scan = self._split(data)
        if head != self.header(np.shape(array)):  # the receiver could not rebuild it
            raise ValueError("the JPEG header of this input differs from the shared one")
        return scan

    def decode(self, payload, shape=None):
        if self.shared_tables:
            payload = self.header(shape) + bytes(payload) + _EOI
        return _read_image(payload, "JPEG", shape)


def _varint(n):
    """LEB128: 7 bits per byte, low bits first (1 B up to 127, 2 B up to 16383)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 56:
            raise ValueError("a sections payload is truncated (a length prefix runs past its "
                             "end)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


class Sections(Codec):
    """An input made of sections that travel together, each with its own codec (the action
    task: int8 motion vectors through zlib, uint8 RGB frames as JPEG, or both for Fusion).

    The sensor holds the input as one ``uint8`` buffer ``[L]``: the sections' bytes one after
    the other. Section k is ``(codec, dtype, shape, per_frame)``: its bytes viewed as
    ``dtype[shape]`` are encoded whole, or frame by frame along the first axis
    (``per_frame``, e.g. one JPEG per RGB frame). Each encoded chunk is prefixed by its
    length (LEB128, 1-2 B for chunks under 16 kB) so the receiver can split them; the
    prefixes are part of the payload and of its size.
    """

    name = "sections"

    def __init__(self, sections):
        self.sections = []
        for section in sections:
            codec, dtype, shape, per_frame = section
            dtype = np.dtype(dtype)
            shape = tuple(int(v) for v in shape)
            if not shape or min(shape) < 1:
                raise ValueError(f"a section needs a non-empty shape, got {shape}")
            self.sections.append((make_codec(codec, dtype=dtype), dtype, shape, bool(per_frame)))
        if not self.sections:
            raise ValueError("Sections needs at least one section")
        self.lossless = all(c.lossless for c, _, _, _ in self.sections)
        self.length = sum(int(np.prod(sh)) * dt.itemsize for _, dt, sh, _ in self.sections)

    def encode(self, array):
        buf = np.ascontiguousarray(array).reshape(-1)
        if buf.dtype != np.uint8 or buf.size != self.length:
            raise ValueError(f"a sections input is a uint8 buffer of {self.length} bytes, got "
                             f"{buf.dtype} [{buf.size}]")
        out, pos = bytearray(), 0
        for codec, dtype, shape, per_frame in self.sections:
            size = int(np.prod(shape)) * dtype.itemsize
            part = buf[pos:pos + size].view(dtype).reshape(shape)
            pos += size
            for chunk in (part if per_frame else [part]):
                data = codec.encode(chunk)
                out += _varint(len(data)) + data
        return bytes(out)

    def decode(self, payload, shape=None):
        pieces, pos = [], 0
        for codec, dtype, sec_shape, per_frame in self.sections:
            chunks = []
            for _ in range(sec_shape[0] if per_frame else 1):
                size, pos = _read_varint(payload, pos)
                if pos + size > len(payload):
                    raise ValueError(f"a sections payload of {len(payload)} B is truncated")
                chunks.append(codec.decode(payload[pos:pos + size],
                                           sec_shape[1:] if per_frame else sec_shape))
                pos += size
            part = np.stack(chunks) if per_frame else chunks[0]
            part = np.ascontiguousarray(part, dtype).reshape(sec_shape)
            pieces.append(part.reshape(-1).view(np.uint8))
        if pos != len(payload):
            raise ValueError(f"a sections payload has {len(payload) - pos} B after its last "
                             "section")
        out = np.concatenate(pieces)
        return out if shape is None else out.reshape(shape)

    def get_config(self):
        return {"codec": self.name, "sections": [
            dict(c.get_config(), dtype=dt.name, shape=list(sh), per_frame=pf)
            for c, dt, sh, pf in self.sections]}

    def spec(self):
        return "sections(" + ", ".join(f"{c.spec()}:{dt.name}{list(sh)}" + ("/frame" if pf else "")
                                       for c, dt, sh, pf in self.sections) + ")"


def codec_names() -> str:
    """The codec names :func:`make_codec` takes, for help texts and errors."""
    return "raw | png | zlib | jpeg:Q | jpeg:Q:tables (Q: JPEG quality in [1, 100])"


def make_codec(spec, *, dtype=np.uint8) -> Codec:
    """The codec named ``spec`` (:func:`codec_names`); ``dtype``: what ``raw`` / ``zlib``
    carry. Raises ValueError naming what is allowed."""
    if isinstance(spec, Codec):
        return spec
    text = str(spec).strip().lower()
    parts = text.split(":")
    if parts == ["raw"]:
        return Raw(dtype)
    if parts == ["png"]:
        return Png()
    if parts == ["zlib"]:
        return Zlib(dtype)
    if parts[0] == "jpeg" and len(parts) in (2, 3) and (len(parts) == 2 or parts[2] == "tables"):
        try:
            quality = int(parts[1])
        except ValueError:
            raise ValueError(f"codec {spec!r}: the JPEG quality {parts[1]!r} is not an "
                             "integer in [1, 100]") from None
        return Jpeg(quality, shared_tables=len(parts) == 3)
    raise ValueError(f"unknown codec {spec!r}; known: {codec_names()}")


def image_codec_error(spec):
    """None if ``spec`` names an image codec (raw, png, jpeg:Q, jpeg:Q:tables), else why not
    (a settings check: ``experiments.settings.setting(check=...)``)."""
    try:
        codec = make_codec(spec)
    except ValueError as err:
        return str(err)
    if codec.name not in ("raw", "png", "jpeg"):
        return f"takes an image codec (raw | png | jpeg:Q | jpeg:Q:tables), got {spec!r}"
    return None


def payload_sizes(codec, inputs) -> np.ndarray:
    """``int64[M]``: the bytes of each input's payload (``inputs``: ``[M, ...]``)."""
    codec = make_codec(codec)
    return np.array([len(codec.encode(x)) for x in inputs], np.int64)


def round_trip(codec, inputs):
    """``(decoded [M, ...], sizes int64[M])``: what the server receives for each input,
    and the bytes each payload took."""
    codec = make_codec(codec)
    out, sizes = [], []
    for x in inputs:
        payload = codec.encode(x)
        sizes.append(len(payload))
        out.append(codec.decode(payload, np.shape(x)))
    return np.stack(out) if out else np.zeros((0,) + np.shape(inputs)[1:], np.uint8), \
        np.array(sizes, np.int64)
