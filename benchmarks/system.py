"""What serving costs: the experts on Ray Serve against the same experts in this process,
on the same decoded payloads, in one run.

    python -m benchmarks.system --workdir=workdir/sr_system [--clients=1,4,16] [--passes=4]

The requests are the feed's frames (``experiments.system``'s ``feed.npz``: the test split in
its natural order), each part routed to a used expert drawn with the gate's b (seed 0), the
payloads encoded once. In-process: per frame, each expert's parts decoded and run as one
batch (what the replica does for one frame). Served: ``C`` client threads, each posting the
frames back to back over its own keep-alive connection (no link cap, no frame rate), the
server batching across them. Printed: inputs per second of each and their ratio
(served / in-process), and the latency per frame (p50 / p95). Nothing of this is a timed
unit test: the ratio is measured here, on this machine, in one run.
"""
import argparse
import secrets
import threading
import time

import numpy as np


def _frames(feed, meta, bias, seed=0):
    frames = feed["frames"]
    groups = np.split(np.arange(len(frames)), np.flatnonzero(np.diff(frames)) + 1)
    rng = np.random.default_rng(seed)
    b = np.asarray(bias, np.float64)
    return [(g, rng.choice(len(b), size=len(g), p=b / b.sum())) for g in groups]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    from bmoe_tf.backend import tf  # noqa: F401
    from experiments.system import server, wire
    from experiments.system.link import Link, TokenBucket
    from experiments.system.prepare import prepare
    from experiments.system.sensor import load_feed
    from experiments.system.workdir import check_servable, load_run

    check_servable(args.workdir)
    run = load_run(args.workdir)
    token = secrets.token_hex(16)
    prep = prepare(run, gate_dir=run.wd.gate_dir("enforce", "shared"), host="127.0.0.1:1",
                   token=token)
    feed, meta = load_feed(prep.feed)
    plan = _frames(feed, meta, prep.report["bias"]) * args.passes
    codecs = [e.codec for e in run.experts]
    payloads = [[codecs[n].encode(feed[f"sensor_{n}"][i]) for i, n in zip(g, c)]
                for g, c in plan]
    inputs = sum(len(g) for g, _ in plan)
    print(f"{len(plan)} frames, {inputs} inputs ({args.passes} passes of the test split)")

    def in_process():
        for (g, c), pay in zip(plan, payloads):
            for n in np.unique(c):
                rows = [p for p, k in zip(pay, c) if k == n]
                shape = feed[f"sensor_{n}"].shape[1:]
                dec = np.stack([codecs[n].decode(p, shape) for p in rows])
                run.experts[n].model(run.experts[n].received_inputs(dec), training=False).numpy()

    in_process()  # warm-up (traces)
    t = time.perf_counter()
    in_process()
    local = inputs / (time.perf_counter() - t)
    print(f"in-process: {local:.1f} inputs/s")

    port = server.start(args.workdir, len(run.experts), token)
    host = f"127.0.0.1:{port}"
    try:
        def client(k, out, latencies):
            link = Link("127.0.0.1", port, TokenBucket(1e12, 1 << 30))
            for seq, ((g, c), pay) in enumerate(zip(plan, payloads)):
                parts = tuple(wire.Part(int(n), p) for n, p in zip(c, pay))
                data = wire.encode_request(wire.Request(1000 * (k + 1), seq, parts), host, token)
                t0 = time.perf_counter()
                answer = link.exchange(data)
                latencies.append(time.perf_counter() - t0)
                assert answer.status == 200, answer
            link.close()
            out.append(True)

        client(99, [], [])  # warm-up: every replica traced, connections made
        print(f"{'clients':>7} {'served inputs/s':>15} {'ratio':>6} {'p50 ms':>7} {'p95 ms':>7}")
        for c in clients:
            done, lat = [], []
            threads = [threading.Thread(target=client, args=(k, done, lat)) for k in range(c)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rate = c * inputs / (time.perf_counter() - t)
            assert len(done) == c
            p50, p95 = np.percentile(lat, [50, 95]) * 1000
            print(f"{c:>7} {rate:>15.1f} {rate / local:>6.2f} {p50:>7.1f} {p95:>7.1f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
