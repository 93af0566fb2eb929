"""experiments.system.link: the token bucket's pacing (a fake clock), the outbox's drops,
and a Link against a loopback HTTP server (bytes written counted exactly, outages)."""
import http.server
import threading

import pytest

from experiments.system.link import Link, LinkDown, Outbox, TokenBucket


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_token_bucket_paces_to_its_rate_after_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, 500.0, clock=clock, sleep=clock.sleep)
    assert bucket.take(500) == 0.0          # the full bucket goes at once
    waited = sum(bucket.take(100) for _ in range(20))  # then 2000 B at 1000 B/s
    assert waited == pytest.approx(2.0)
    assert clock.t == pytest.approx(2.0)
    with pytest.raises(ValueError, match="more than the bucket"):
        bucket.take(501)
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(0, 10)


def test_outbox_drops_what_does_not_fit_and_counts_it():
    box = Outbox(100)
    assert box.put(0, 60, "a") and not box.put(1, 50, "b") and box.put(2, 40, "c")
    assert box.dropped == [1] and box.dropped_bytes == 50 and box.peak_bytes == 100
    assert box.peek()[0] == 0
    box.done()
    assert box.put(3, 60, "d")
    box.close()
    assert [box.peek()[0], box.done(), box.peek()[0]] == [2, None, 3]
    box.done()
    assert box.peek() is None


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = b"got %d" % len(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_link_counts_every_byte_it_writes_and_keeps_the_connection(echo_server):
    link = Link("127.0.0.1", echo_server, TokenBucket(1e7, 4096))
    sent = 0
    for size in (10, 3000, 0):
        body = b"x" * size
        data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size + body
        answer = link.exchange(data)
        sent += len(data)
        assert answer.status == 200 and answer.body == b"got %d" % size
    assert link.bytes_written == sent
    link.close()


def test_link_away_during_an_outage_writes_nothing(echo_server):
    link = Link("127.0.0.1", echo_server, TokenBucket(1e6, 4096), outages=[(0.0, 60.0)])
    link.start_clock()
    with pytest.raises(LinkDown, match="outage"):
        link.exchange(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert link.bytes_written == 0


def test_link_to_a_closed_port_is_down():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LinkDown, match="connect"):
        Link("127.0.0.1", port, TokenBucket(1e6, 4096), timeout=2).exchange(b"x")
