"""The sensor's uplink: a TCP connection whose writes pass a token bucket, and the outbox
that holds frames while the link is slow or away (no TensorFlow).

Why a token bucket in the sensor and not Linux traffic control: ``tc`` in a network
namespace needs ``CAP_NET_ADMIN`` (root, or a user namespace the CI machine may not
allow) and shapes below the socket, where the sensor cannot count what it wrote; the
bucket runs anywhere, on loopback too, and the bytes it lets through are exactly the
bytes the sensor wrote (:attr:`Link.bytes_written`).
"""
from __future__ import annotations

import collections
import socket
import threading
import time

__all__ = ["TokenBucket", "Link", "LinkDown", "Outbox", "HttpAnswer"]

CHUNK = 1024


class LinkDown(ConnectionError):
    """The link is away (a scheduled outage, or the connection failed)."""


class TokenBucket:
    """``rate`` bytes per second into a bucket of ``burst`` bytes (full at start);
    :meth:`take` waits until ``n`` bytes may go. ``clock``/``sleep`` are injectable."""

    def __init__(self, rate, burst, *, clock=time.monotonic, sleep=time.sleep):
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 B, got {rate}, {burst}")
        self.rate, self.burst = float(rate), float(burst)
        self._clock, self._sleep = clock, sleep
        self.level, self._t = self.burst, clock()

    def _refill(self):
        now = self._clock()
        self.level = min(self.burst, self.level + (now - self._t) * self.rate)
        self._t = now

    def take(self, n):
        """Waits until ``n`` (<= burst) bytes are in the bucket and takes them; returns the
        seconds waited."""
        if n > self.burst:
            raise ValueError(f"{n} B at once is more than the bucket's {self.burst:g} B")
        waited = 0.0
        self._refill()
        while self.level < n - 1e-6:  # (a float refill may land a hair short)
            delay = max((n - self.level) / self.rate, 1e-6)
            self._sleep(delay)
            waited += delay
            self._refill()
        self.level = max(self.level - n, 0.0)
        return waited


class HttpAnswer(collections.namedtuple("HttpAnswer", "status body")):
    """An HTTP status and body."""


class Link:
    """One keep-alive HTTP/1.1 connection to ``host:port`` whose writes pass ``bucket``.

    Attributes: ``bytes_written`` (everything written on the socket, retries included),
    ``bytes_read``; ``outages``: ``[(start, end)]`` seconds after :meth:`start_clock`
    during which the link is away (:class:`LinkDown`, nothing written).
    """

    def __init__(self, host, port, bucket, *, timeout=30.0, outages=()):
        self.host, self.port, self.bucket, self.timeout = host, int(port), bucket, timeout
        self.outages = [tuple(map(float, o)) for o in outages]
        self.bytes_written = self.bytes_read = 0
        self._sock = None
        self._buf = b""
        self._t0 = time.monotonic()

    def start_clock(self):
        self._t0 = time.monotonic()

    def away(self):
        t = time.monotonic() - self._t0
        return any(a <= t < b for a, b in self.outages)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock, self._buf = None, b""

    def _connect(self):
        if self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as err:
                raise LinkDown(f"connect to {self.host}:{self.port}: {err}") from None
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, data):
        """Writes ``data`` (one request) paced by the bucket and reads the answer; raises
        :class:`LinkDown` when the link is away or the connection fails (the caller
        retries)."""
        if self.away():
            self.close()
            raise LinkDown("link away (scheduled outage)")
        self._connect()
        try:
            view = memoryview(data)
            step = max(1, int(min(CHUNK, self.bucket.burst)))
            for at in range(0, len(view), step):
                chunk = view[at:at + step]
                self.bucket.take(len(chunk))
                self._sock.sendall(chunk)
                self.bytes_written += len(chunk)
            return self._read_answer()
        except (OSError, LinkDown) as err:
            self.close()
            raise LinkDown(f"{type(err).__name__}: {err}") from None

    def _read_until(self, marker):
        while marker not in self._buf:
            more = self._sock.recv(65536)
            if not more:
                raise LinkDown("the server closed the connection")
            self.bytes_read += len(more)
            self._buf += more
        at = self._buf.index(marker) + len(marker)
        out, self._buf = self._buf[:at], self._buf[at:]
        return out

    def _read_answer(self):
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        length, close = 0, False
        for line in head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value.strip())
            elif key.strip().lower() == "connection" and "close" in value.lower():
                close = True
        while len(self._buf) < length:
            more = self._sock.recv(max(65536, length - len(self._buf)))
            if not more:
                raise LinkDown("the server closed the connection inside an answer")
            self.bytes_read += len(more)
            self._buf += more
        body, self._buf = self._buf[:length], self._buf[length:]
        if close:
            self.close()
        return HttpAnswer(status, body)


class Outbox:
    """Frames waiting for the link, at most ``capacity`` bytes of them (the sensor's buffer:
    its bucket); a frame that does not fit is dropped and counted. Thread-safe: the camera
    puts, the sender takes."""

    def __init__(self, capacity):
        self.capacity = int(capacity)
        self._items = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = []  # seq of each dropped frame
        self.dropped_bytes = 0
        self.peak_bytes = 0

    def put(self, seq, size, item):
        """Queues ``item`` (``size`` bytes); False (dropped) when it does not fit."""
        with self._cond:
            if self._bytes + size > self.capacity:
                self.dropped.append(seq)
                self.dropped_bytes += size
                return False
            self._items.append((seq, size, item))
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self._cond.notify()
            return True

    def peek(self):
        """The oldest frame ``(seq, size, item)``, waiting for one; None once closed and empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait(0.5)
            return self._items[0] if self._items else None

    def done(self):
        """Removes the oldest frame (answered, or refused for good)."""
        with self._cond:
            _, size, _ = self._items.popleft()
            self._bytes -= size

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
