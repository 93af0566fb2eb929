"""One run of the system: the server up, N sensor processes streaming at once, the checks
against the offline pipeline, ``system/system_report.json`` and ``.md``, everything it
started stopped (:func:`run_system`)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request

import numpy as np

from experiments.system import server as server_lib
from experiments.system import wire
from experiments.system.prepare import prepare
from experiments.system.report import build_report, write_report
from experiments.system.sensor import SensorConfig
from experiments.system.workdir import SystemRunError, check_servable, load_run

__all__ = ["run_system", "check_arguments", "kill_one_replica", "MAX_SENSORS"]

MAX_SENSORS = 64
#: The default link: this many times the budget's rate at the frame rate (a link run at
#: exactly the budget's mean rate queues without bound on a bursty stream).
LINK_HEADROOM = 1.5
HOST = "127.0.0.1"


def check_arguments(*, sensors, fps, frames, link_kbps, budget_bytes, bucket_bytes, mode,
                    replicas, timeout_s, outages, passes=1):
    """Refuses bad arguments before anything starts (one ``SystemRunError`` naming the flag)."""
    def positive(name, value, allow_none=False):
        if value is None and allow_none:
            return
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise SystemRunError(f"--{name}={value}: must be a positive number")

    if not (isinstance(sensors, int) and 1 <= sensors <= MAX_SENSORS):
        raise SystemRunError(f"--sensors={sensors}: must be an integer in [1, {MAX_SENSORS}]")
    positive("fps", fps)
    positive("link_kbps", link_kbps, True)
    positive("budget_bytes", budget_bytes, True)
    positive("bucket_bytes", bucket_bytes, True)
    positive("timeout_s", timeout_s)
    if not (isinstance(frames, int) and frames >= 0):
        raise SystemRunError(f"--frames={frames}: must be an integer >= 0 (0: every frame)")
    if not (isinstance(passes, int) and passes >= 1):
        raise SystemRunError(f"--passes={passes}: must be an integer >= 1")
    if not (isinstance(replicas, int) and replicas >= 1):
        raise SystemRunError(f"--replicas={replicas}: must be an integer >= 1")
    if mode not in ("hard", "soft"):
        raise SystemRunError(f"--mode={mode}: must be hard or soft")
    if mode == "soft" and bucket_bytes is not None:
        raise SystemRunError("--bucket_bytes is the hard mode's bucket: drop it or use --mode=hard")
    for start, end in outages:
        if not 0 <= start < end:
            raise SystemRunError(f"--link_down={start}:{end}: needs 0 <= START < END seconds")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stats(port):
    """The ingress's counters (``GET /bmoe/stats``)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}{wire.PATH}/stats", timeout=30) as r:
        return json.loads(r.read())


def kill_one_replica(expert_index):
    """Kills one replica of expert ``expert_index`` (Ray Serve starts another); returns its
    actor name."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if "SERVE_REPLICA" in name and f"#expert{expert_index}#" in name:
            ray.kill(ray.get_actor(name, namespace=actor["namespace"]), no_restart=True)
            return f"killed {name}"
    raise RuntimeError(f"no live replica of expert{expert_index}")


def run_system(workdir, *, sensors=1, fps=4.0, frames=0, passes=1, link_kbps=None, budget_bytes=None,
               bucket_bytes=None, mode="hard", gate=None, address=None, replicas=1,
               timeout_s=600.0, outages=(), faults=(), port=0, token=None, verbose=True):
    """Runs the system on a finished encoded workdir; returns the report (a dict).

    ``faults``: ``[(seconds after the sensors start, callable)]`` run during the stream
    (the tests kill a replica this way). See the README, "The system".
    """
    check_arguments(sensors=sensors, fps=fps, frames=frames, link_kbps=link_kbps,
                    budget_bytes=budget_bytes, bucket_bytes=bucket_bytes, mode=mode,
                    replicas=replicas, timeout_s=timeout_s, outages=outages, passes=passes)
    workdir = os.path.abspath(workdir)
    check_servable(workdir)
    from experiments.layout import Layout

    wd = Layout.reading(workdir)
    gate = gate or wd.gate_dir("enforce", "shared")
    if not os.path.isdir(gate):
        raise SystemRunError(f"--gate={gate}: no such gate directory (the run's enforce gate is "
                             "gates/enforce/shared)")
    t0 = time.time()
    run = load_run(workdir)
    token = token or secrets.token_hex(16)
    port = port or _free_port()
    prep = prepare(run, gate_dir=gate, budget_bytes=budget_bytes, bucket_bytes=bucket_bytes,
                   mode=mode, host=f"{HOST}:{port}", token=token)
    m, f_count = prep.meta["inputs"], prep.meta["frames"]
    frames_per_sensor = min(frames, f_count * passes) if frames else f_count * passes
    inputs_per_s = fps * m / f_count
    link_rate = (link_kbps * 1000 / 8) if link_kbps else LINK_HEADROOM * prep.target * inputs_per_s
    link_bucket = prep.bucket if prep.bucket is not None else max(64 * prep.target,
                                                                  2 * prep.largest_frame)
    out_dir = wd.system(f"run-{sensors}")
    os.makedirs(out_dir, exist_ok=True)
    procs = []
    started = False
    try:
        t_server = time.time()
        if verbose:
            print(f"[system] starting Ray Serve: {len(run.experts)} experts x {replicas} "
                  f"replica(s) on {HOST}:{port} ...", flush=True)
        server_lib.start(workdir, len(run.experts), token, port=port, address=address,
                         replicas=replicas)
        started = True
        server_seconds = time.time() - t_server
        if verbose:
            print(f"[system] server up in {server_seconds:.1f} s; {sensors} sensor(s), "
                  f"{frames_per_sensor} frames each at {fps:g} fps, link "
                  f"{link_rate * 8 / 1000:.1f} kbit/s, budget {prep.target:.1f} B on the wire "
                  f"per input ({mode} mode)", flush=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        for s in range(sensors):
            cfg = SensorConfig(sensor=s, feed=prep.feed, firmware=wd.system(
                "firmware"), router=os.path.join(
                prep.router_dir, "libgate_router.so"), host=HOST, port=port, token=token,
                fps=float(fps), link_rate=float(link_rate), link_bucket=float(link_bucket),
                out_dir=out_dir, frames=frames_per_sensor, passes=passes, deadline_s=float(timeout_s),
                outages=tuple(outages))
            path = os.path.join(out_dir, f"sensor_{s}.config.json")
            cfg.save(path)
            procs.append(subprocess.Popen([sys.executable, "-m", "experiments.system.sensor",
                                           path], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        t_stream = time.time()
        pending = sorted(faults, key=lambda f: f[0])
        fault_log = []
        while any(p.poll() is None for p in procs):
            now = time.time() - t_stream
            while pending and pending[0][0] <= now:
                at, fn = pending.pop(0)
                fault_log.append({"at_s": round(now, 2), "what": str(fn())})
                if verbose:
                    print(f"[system] fault at {now:.1f} s: {fault_log[-1]['what']}", flush=True)
            if now > timeout_s + 60:
                raise SystemRunError(f"the sensors did not finish within --timeout_s={timeout_s:g}")
            time.sleep(0.1)
        stream_seconds = time.time() - t_stream
        for s, p in enumerate(procs):
            if p.returncode != 0:
                raise SystemRunError(f"sensor {s} failed (exit {p.returncode}): "
                                     f"{p.stdout.read()[-2000:]}")
        server_stats = stats(port)
        server_stats["replicas_at_end"] = server_lib.wait_running(len(run.experts), replicas)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if started:
            server_lib.stop()
    report = build_report(run, prep, out_dir, sensors=sensors, fps=fps, link_rate=link_rate,
                          link_bucket=link_bucket, mode=mode, server_stats=server_stats,
                          stream_seconds=stream_seconds, server_seconds=server_seconds,
                          replicas=replicas, faults=fault_log, outages=list(outages))
    report["seconds"] = time.time() - t0
    paths = write_report(report, wd.system())
    if verbose:
        print("\n".join(report["summary"]), flush=True)
        print(f"report: {paths[1]}", flush=True)
    return report
