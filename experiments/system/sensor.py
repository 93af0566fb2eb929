"""One sensor: plays the test split in its natural order as a camera would, routes every
input with the int8 gate in TFLite Micro and the compiled ``gate_router.c``, encodes the
chosen payloads and sends each frame over a capped link (no TensorFlow in this process).

    python -m experiments.system.sensor CONFIG.json

``CONFIG.json`` (written by the system CLI, :func:`sensor_config`): the feed, the firmware
folder, the server's address and token, the frame rate, the link's rate and bucket. The
sensor writes ``sensor_<id>.npz`` (per input: logits, costs, choice, wire bytes; per
frame: capture, answer and latency; the answers) and ``sensor_<id>.json`` (its counters).

:class:`FrameRouter` is the stream logic (gate, costs, router, request) without sockets:
the unit tests drive it directly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time

import numpy as np

from experiments.system import wire
from experiments.system.link import Link, LinkDown, Outbox, TokenBucket

__all__ = ["FrameRouter", "SensorConfig", "run_sensor", "load_feed", "FEED_FILE"]

FEED_FILE = "feed.npz"
#: HTTP statuses the sensor retries (same sequence number): the expert failed or the
#: server is (re)starting.
RETRY = (500, 502, 503, 504)


@dataclasses.dataclass
class SensorConfig:
    sensor: int
    feed: str
    firmware: str             # the export's folder (gate.tflite)
    router: str               # the compiled router (libgate_router.so)
    host: str
    port: int
    token: str
    fps: float
    link_rate: float          # bytes per second
    link_bucket: float        # bytes: the link's token bucket and the sensor's buffer
    out_dir: str
    frames: int = 0           # 0: every frame of the feed, ``passes`` times
    passes: int = 1           # the test split played this many times in a row
    deadline_s: float = 300.0
    outages: tuple = ()       # ((start, end) seconds after the first frame)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(**json.load(f))


def load_feed(path):
    """``(arrays, meta)`` of a feed file (``experiments.system.feed.make_feed``)."""
    import pickle

    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k not in ("meta", "codecs")}
        meta = json.loads(str(f["meta"]))
        meta["codec_objects"] = pickle.loads(f["codecs"].tobytes())  # our own file
    return arrays, meta


class FrameRouter:
    """Routes the inputs of each frame and builds its request.

    Args:
      gate: ``x -> int8[N]`` (a :class:`gating_tflite.interpreters.TFLMGate`'s ``outputs``).
      router: a :class:`gating_tflite.router_lib.CRouter`.
      codecs: N :class:`bmoe_tf.payload.Codec`; used: ``bool[N]`` (b_n > 0).
      head: the HTTP head's bytes (:func:`wire.head_bytes`).
    """

    def __init__(self, gate, router, codecs, used, head):
        self.gate, self.router, self.codecs = gate, router, codecs
        self.used = np.asarray(used, bool)
        self.head = int(head)

    def route(self, gate_inputs, sensor_inputs):
        """One frame: ``gate_inputs[k, ...]`` and, per expert, ``sensor_inputs[n][k, ...]``.
        Returns ``(parts, rows)``: the wire parts and per input ``(logits, costs, choice,
        charged, waits)`` (costs: payload bytes per expert; charged: payload + framing of
        the chosen; waits: the router's idle slots before it)."""
        k = len(gate_inputs)
        framing = wire.framing_costs(k, self.head)
        parts, rows = [], []
        for j in range(k):
            logits = np.asarray(self.gate(gate_inputs[j])).reshape(-1)
            payloads = [self.codecs[n].encode(sensor_inputs[n][j]) if self.used[n] else b""
                        for n in range(len(self.codecs))]
            costs = np.array([len(p) for p in payloads], np.int64)
            waits = self.router.waits
            choice = self.router.choose_bytes(logits, np.where(self.used, costs + framing[j], 0))
            if choice < 0:
                raise ValueError(f"input {j} of the frame: the router refused it (its cheapest "
                                 "payload is larger than the bucket)")
            rows.append((logits, costs, choice, int(costs[choice] + framing[j]),
                         self.router.waits - waits))
            parts.append(wire.Part(choice, payloads[choice]))
        return parts, rows


def _firmware(cfg, meta):
    from gating_tflite.interpreters import TFLMGate
    from gating_tflite.router_lib import CRouter

    with open(os.path.join(cfg.firmware, "gate.tflite"), "rb") as f:
        model = f.read()
    gate = TFLMGate(model, meta["arena_bytes"])
    router = CRouter(cfg.router, len(meta["codecs"]))
    codecs = meta["codec_objects"]
    return FrameRouter(gate.outputs, router, codecs, meta["used"],
                       wire.head_bytes(f"{cfg.host}:{cfg.port}", cfg.token))


def run_sensor(cfg: SensorConfig):
    """Plays the feed (see the module docstring); returns the counters written."""
    arrays, meta = load_feed(cfg.feed)
    frames = arrays["frames"]
    bounds = np.flatnonzero(np.diff(frames)) + 1
    groups = np.split(np.arange(len(frames)), bounds) * int(cfg.passes)
    if cfg.frames:
        groups = groups[:cfg.frames]
    n = len(meta["codecs"])
    router = _firmware(cfg, meta)
    link = Link(cfg.host, cfg.port, TokenBucket(cfg.link_rate, cfg.link_bucket),
                outages=cfg.outages, timeout=min(60.0, cfg.deadline_s))
    outbox = Outbox(cfg.link_bucket)
    m = int(sum(len(g) for g in groups))
    rec = {"logits": np.zeros((m, n), np.int16), "costs": np.zeros((m, n), np.int64),
           "choice": np.zeros(m, np.int64), "charged": np.zeros(m, np.int64),
           "waits": np.zeros(m, np.int64), "index": np.concatenate(groups) if groups else
           np.zeros(0, np.int64),
           "frame_of": np.repeat(np.arange(len(groups)), [len(g) for g in groups])}
    f_count = len(groups)
    frame_rec = {"capture": np.full(f_count, np.nan), "answer": np.full(f_count, np.nan),
                 "request_bytes": np.zeros(f_count, np.int64),
                 "attempts": np.zeros(f_count, np.int64), "status": np.zeros(f_count, np.int64)}
    answers = [None] * f_count
    counters = {"retries": 0, "errors": [], "duplicates_seen": 0}
    start = time.monotonic() + 0.05
    deadline = start + cfg.deadline_s

    def send_loop():
        while True:
            item = outbox.peek()
            if item is None:
                return
            seq, size, data = item
            backoff = 0.02
            while True:
                frame_rec["attempts"][seq] += 1
                try:
                    answer = link.exchange(data)
                except LinkDown:
                    answer = None
                if answer is not None and answer.status not in RETRY:
                    break
                if time.monotonic() > deadline:
                    answer = None
                    break
                counters["retries"] += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
            frame_rec["answer"][seq] = time.monotonic() - start
            if answer is None:
                frame_rec["status"][seq] = -1
                counters["errors"].append((int(seq), "no answer before the deadline"))
            else:
                frame_rec["status"][seq] = answer.status
                if answer.status == 200:
                    _, got_seq, outs = wire.parse_answer(answer.body)
                    if got_seq != seq:
                        counters["errors"].append((int(seq), f"answer for seq {got_seq}"))
                    answers[seq] = outs
                else:
                    counters["errors"].append((int(seq), answer.body[:200].decode(
                        "utf-8", "replace")))
            outbox.done()

    sender = threading.Thread(target=send_loop, name=f"sensor{cfg.sensor}-send", daemon=True)
    sender.start()
    link.start_clock()
    host = f"{cfg.host}:{cfg.port}"
    row = 0
    for seq, idx in enumerate(groups):
        capture = start + seq / cfg.fps
        delay = capture - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame_rec["capture"][seq] = max(capture, time.monotonic()) - start
        parts, rows = router.route(arrays["gate_inputs"][idx],
                                   [arrays[f"sensor_{k}"][idx] for k in range(n)])
        for logits, costs, choice, charged, waits in rows:
            rec["logits"][row], rec["costs"][row] = logits, costs
            rec["choice"][row], rec["charged"][row], rec["waits"][row] = choice, charged, waits
            row += 1
        data = wire.encode_request(wire.Request(cfg.sensor, seq, tuple(parts)), host, cfg.token)
        frame_rec["request_bytes"][seq] = len(data)
        outbox.put(seq, len(data), data)
    outbox.close()
    sender.join(max(1.0, deadline - time.monotonic()) + 5)
    link.close()
    dropped = set(outbox.dropped)
    out = {"sensor": cfg.sensor, "frames": f_count, "inputs": m,
           "bytes_written": link.bytes_written, "bytes_read": link.bytes_read,
           "retries": counters["retries"], "errors": counters["errors"],
           "dropped_frames": sorted(int(s) for s in dropped),
           "dropped_bytes": outbox.dropped_bytes, "buffer_peak_bytes": outbox.peak_bytes,
           "head_bytes": router.head, "seconds": time.monotonic() - start,
           "unanswered": [s for s in range(f_count) if answers[s] is None and s not in dropped]}
    flat = {}
    for seq, outs in enumerate(answers):
        for j, o in enumerate(outs or ()):
            flat[f"a{seq}_{j}"] = o
    np.savez(os.path.join(cfg.out_dir, f"sensor_{cfg.sensor}.npz"), **rec,
             **{f"frame_{k}": v for k, v in frame_rec.items()}, **flat)
    with open(os.path.join(cfg.out_dir, f"sensor_{cfg.sensor}.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv):
    if len(argv) != 2:
        print("usage: python -m experiments.system.sensor CONFIG.json", file=sys.stderr)
        return 2
    run_sensor(SensorConfig.load(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
