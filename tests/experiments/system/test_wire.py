"""experiments.system.wire: requests and answers round-trip; malformed bodies are refused
with a message naming the part; the framing charged to a frame's inputs is its framing."""
import numpy as np
import pytest

from experiments.system import wire


def _request():
    return wire.Request(7, 2 ** 40 + 3, (wire.Part(0, b"abc"), wire.Part(2, b""),
                                         wire.Part(1, bytes(range(256)) * 3)))


def test_request_round_trip_and_fixed_framing():
    req = _request()
    data = wire.encode_request(req, "127.0.0.1:8000", "t" * 32)
    head = wire.head_bytes("127.0.0.1:8000", "t" * 32)
    body = data[head:]
    assert data[:head].endswith(b"\r\n\r\n") and b"Content-Length: %010d" % len(body) in data
    assert wire.parse_body(body) == req
    payload = sum(len(p.payload) for p in req.parts)
    framing = len(data) - payload
    assert framing == head + wire.FRAME_BYTES + 3 * wire.PART_BYTES
    assert wire.framing_costs(3, head).sum() == framing
    assert list(wire.framing_costs(3, head)) == [head + 18 + 5, 5, 5]
    assert len(wire.framing_costs(0, head)) == 0


@pytest.mark.parametrize("cut, message", [(5, "shorter than"), (-1, "announced"),
                                          (20, "ends inside its header")])
def test_truncated_bodies_are_refused(cut, message):
    body = wire.encode_request(_request(), "h", "t")[wire.head_bytes("h", "t"):]
    with pytest.raises(wire.WireError, match=message):
        wire.parse_body(body[:cut])


def test_bad_magic_and_trailing_bytes_are_refused():
    body = wire.encode_request(_request(), "h", "t")[wire.head_bytes("h", "t"):]
    with pytest.raises(wire.WireError, match="not a BMoE frame"):
        wire.parse_body(b"XXXX" + body[4:])
    with pytest.raises(wire.WireError, match="after the last"):
        wire.parse_body(body + b"!")
    with pytest.raises(ValueError, match="u8"):
        wire.encode_request(wire.Request(0, 0, (wire.Part(300, b""),)), "h", "t")


def test_answer_round_trip_keeps_arrays_exactly():
    outs = [np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32),
            np.arange(6, dtype=np.int64).reshape(2, 3)]
    sensor, seq, got = wire.parse_answer(wire.encode_answer(3, 9, outs))
    assert (sensor, seq) == (3, 9)
    for a, b in zip(outs, got):
        assert a.dtype == b.dtype and np.array_equal(a, b)
