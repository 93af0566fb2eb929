"""What a sensor writes on the socket and what the server answers (no TensorFlow).

One request per frame, an HTTP/1.1 POST carrying all the frame's parts:

    POST /bmoe HTTP/1.1\\r\\n
    Host: <host>\\r\\n
    X-BMoE-Token: <token>\\r\\n
    Content-Length: <10 digits, zero-padded>\\r\\n\\r\\n
    body: b"BMS1" | sensor u32 | seq u64 | parts u16 | per part: expert u8, length u32, payload

Every field has a fixed width (the Content-Length too), so the framing of a frame of k
parts is ``head_bytes + FRAME_BYTES + k * PART_BYTES`` whatever the payloads: the sensor
charges it to the frame's inputs (:func:`framing_costs`) and its router holds the budget
in bytes on the wire. TCP/IP headers are below what the sensor's socket counts and are
not included.

The answer (HTTP 200) carries each part's expert output as an ``.npy`` array:
``b"BMA1" | sensor u32 | seq u64 | parts u16 | per part: length u32, npy bytes``. Errors
are HTTP 4xx with a one-line text body (bad token 401, unknown expert 422, a payload that
does not decode 400, an oversize request 413); 503: the expert failed (the sensor retries,
with the same sequence number).
"""
from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np

__all__ = ["Part", "Request", "encode_request", "request_head", "head_bytes", "parse_body",
           "encode_answer", "parse_answer", "framing_costs", "WireError", "FRAME_BYTES",
           "PART_BYTES", "PATH", "TOKEN_HEADER", "MAX_REQUEST_BYTES"]

PATH = "/bmoe"
TOKEN_HEADER = "X-BMoE-Token"
_MAGIC, _ANSWER = b"BMS1", b"BMA1"
_FRAME = struct.Struct("<4sIQH")
_PART = struct.Struct("<BI")
FRAME_BYTES = _FRAME.size
PART_BYTES = _PART.size
#: The largest request body the server reads (larger: 413).
MAX_REQUEST_BYTES = 4 << 20


class WireError(ValueError):
    """A body or answer that does not follow the format (the message says where)."""


@dataclasses.dataclass(frozen=True)
class Part:
    expert: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class Request:
    sensor: int
    seq: int
    parts: tuple


def request_head(host, token, body_length):
    """The HTTP head of a request (``bytes``; fixed length for a host and token)."""
    if not 0 <= body_length < 10 ** 10:
        raise ValueError(f"body of {body_length} B does not fit the 10-digit Content-Length")
    return (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n{TOKEN_HEADER}: {token}\r\n"
            f"Content-Length: {body_length:010d}\r\n\r\n").encode("ascii")


def head_bytes(host, token):
    """Bytes of the HTTP head of every request to ``host`` with ``token``."""
    return len(request_head(host, token, 0))


def encode_request(request: Request, host, token) -> bytes:
    """The bytes a sensor writes for one frame (head and body)."""
    body = [_FRAME.pack(_MAGIC, request.sensor, request.seq, len(request.parts))]
    for part in request.parts:
        if not 0 <= part.expert < 256:
            raise ValueError(f"expert index {part.expert} does not fit the wire's u8")
        body += [_PART.pack(part.expert, len(part.payload)), bytes(part.payload)]
    body = b"".join(body)
    return request_head(host, token, len(body)) + body


def parse_body(body: bytes) -> Request:
    """The :class:`Request` of a body; :class:`WireError` where it is malformed."""
    if len(body) < FRAME_BYTES:
        raise WireError(f"a body of {len(body)} B is shorter than the {FRAME_BYTES} B frame header")
    magic, sensor, seq, count = _FRAME.unpack_from(body)
    if magic != _MAGIC:
        raise WireError(f"not a BMoE frame (magic {magic!r})")
    at, parts = FRAME_BYTES, []
    for i in range(count):
        if at + PART_BYTES > len(body):
            raise WireError(f"part {i} of {count}: the body ends inside its header")
        expert, length = _PART.unpack_from(body, at)
        at += PART_BYTES
        if at + length > len(body):
            raise WireError(f"part {i} of {count}: {length} B of payload announced, "
                            f"{len(body) - at} B left")
        parts.append(Part(expert, body[at:at + length]))
        at += length
    if at != len(body):
        raise WireError(f"{len(body) - at} B after the last of {count} parts")
    return Request(sensor, seq, tuple(parts))


def framing_costs(num_parts, head):
    """``int[k]``: the framing bytes charged to each of a frame's ``num_parts`` inputs (the
    first carries the HTTP head and the frame header, every one its part header); they sum
    to the frame's framing."""
    out = np.full(num_parts, PART_BYTES, np.int64)
    if num_parts:
        out[0] += head + FRAME_BYTES
    return out


def encode_answer(sensor, seq, outputs) -> bytes:
    """The body of an answer: ``outputs`` one array per part."""
    chunks = [_FRAME.pack(_ANSWER, sensor, seq, len(outputs))]
    for out in outputs:
        buf = io.BytesIO()
        np.save(buf, np.asarray(out), allow_pickle=False)
        data = buf.getvalue()
        chunks += [struct.pack("<I", len(data)), data]
    return b"".join(chunks)


def parse_answer(body):
    """``(sensor, seq, [array per part])`` of an answer body."""
    if len(body) < FRAME_BYTES:
        raise WireError(f"an answer of {len(body)} B is shorter than its header")
    magic, sensor, seq, count = _FRAME.unpack_from(body)
    if magic != _ANSWER:
        raise WireError(f"not a BMoE answer (magic {magic!r})")
    at, outs = FRAME_BYTES, []
    for _ in range(count):
        (length,) = struct.unpack_from("<I", body, at)
        at += 4
        outs.append(np.load(io.BytesIO(body[at:at + length]), allow_pickle=False))
        at += length
    return sensor, seq, outs
