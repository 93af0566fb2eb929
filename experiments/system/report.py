"""``system_report.json`` / ``.md``: per sensor the bytes (payload, on the wire, against the
budget and the worst window), the task metric of what the server answered, latency and
frames per second, retries and losses; and the checks against the offline pipeline
(the sensor's routing equals the Python controller's, the server's outputs equal the
experts run in this process on the same payloads, the served metric equals the
pipeline's metric of that routing)."""
from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["build_report", "write_report", "worst_excess", "window_bytes", "REPORT_NAME",
           "WINDOW"]

REPORT_NAME = "system_report"
#: The window of the report's "worst window" column (inputs).
WINDOW = 64
#: Served outputs equal the in-process experts' within this (float32; the replica batches
#: parts of several sensors, so its batches differ from the reference's).
OUTPUT_TOLERANCE = 1e-5


def _slots(charged, waits):
    """Bytes per input slot: each input's charged bytes after its idle slots."""
    out = []
    for c, w in zip(charged, waits):
        out += [0] * int(w) + [int(c)]
    return np.asarray(out, np.float64)


def worst_excess(slot_bytes, target):
    """``max over every window [i, j) of (bytes in it - (j - i) target)``: the smallest B
    with bytes <= W target + B for every window of W slots (0 when none exceeds)."""
    s = np.concatenate([[0.0], np.cumsum(np.asarray(slot_bytes, np.float64) - target)])
    lowest = np.minimum.accumulate(s)
    return float(max(0.0, np.max(s - lowest)))


def window_bytes(slot_bytes, window):
    """The most bytes any ``window`` consecutive slots carry."""
    x = np.asarray(slot_bytes, np.float64)
    if len(x) <= window:
        return float(x.sum())
    c = np.concatenate([[0.0], np.cumsum(x)])
    return float(np.max(c[window:] - c[:-window]))


def _percentiles(seconds):
    x = np.asarray(seconds, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{q}": float(np.percentile(x, q) * 1000) for q in (50, 95, 99)}


def _offline_outputs(run, feed, choice, index):
    """The experts run in this process on the payloads the sensor sent (re-encoded: the
    codecs are deterministic); ``[M, ...]`` in the stream's order."""
    outs = [None] * len(choice)
    for n, expert in enumerate(run.experts):
        rows = np.flatnonzero(choice == n)
        if not len(rows):
            continue
        held = feed[f"sensor_{n}"][index[rows]]
        decoded = np.stack([expert.codec.decode(expert.codec.encode(x), x.shape) for x in held])
        got = expert.model(expert.received_inputs(decoded), training=False).numpy()
        for r, o in zip(rows, got):
            outs[r] = o
    return np.stack(outs)


def build_report(run, prep, out_dir, *, sensors, fps, link_rate, link_bucket, mode,
                 server_stats, stream_seconds, server_seconds, replicas, faults, outages):
    """The report dict of a finished run (sensor files in ``out_dir``)."""
    with np.load(prep.feed) as f:
        feed = {k: f[k] for k in f.files if k != "meta"}
    used = np.asarray(prep.meta["used"], bool)
    order = feed["order"]
    rows, checks = [], {}
    reference_choice = None
    outputs_diff = None
    for s in range(sensors):
        with open(os.path.join(out_dir, f"sensor_{s}.json")) as f:
            info = json.load(f)
        with np.load(os.path.join(out_dir, f"sensor_{s}.npz")) as f:
            rec = {k: f[k] for k in f.files}
        m = len(rec["choice"])
        index = rec["index"]
        framing = prep.framing[index]
        # the offline controller on the same stream (its int8 logits, its payload sizes)
        ctl = prep.controller
        ctl.reset()
        offline = np.array([ctl.choose(rec["logits"][i].astype(np.int8),
                                       np.where(used, rec["costs"][i] + framing[i], 0))
                            for i in range(m)], np.int64)
        same_routing = bool(np.array_equal(offline, rec["choice"]))
        if reference_choice is None:
            reference_choice = rec["choice"]
        payload = rec["costs"][np.arange(m), rec["choice"]]
        slots = _slots(rec["charged"], rec["waits"])
        lat = rec["frame_answer"] - rec["frame_capture"]
        ok = rec["frame_status"] == 200
        row = {
            "sensor": s, "frames": info["frames"], "inputs": m,
            "payload_bytes": int(payload.sum()), "payload_per_input": float(payload.mean()),
            "wire_bytes": int(info["bytes_written"]),
            "wire_per_input": info["bytes_written"] / max(m, 1),
            "request_bytes": int(rec["frame_request_bytes"].sum()),
            "framing_per_input": float((rec["frame_request_bytes"].sum() - payload.sum())
                                       / max(m, 1)),
            "budget_per_input": prep.target,
            "worst_window_bytes": window_bytes(slots, WINDOW),
            "worst_window_budget": WINDOW * prep.target + (prep.bucket or 0.0),
            "worst_excess_bytes": worst_excess(slots, prep.target),
            "router_waits": int(rec["waits"].sum()),
            "frequencies": (np.bincount(rec["choice"], minlength=len(used)) / max(m, 1)).tolist(),
            "latency_ms": _percentiles(lat[ok]),
            "fps": float(ok.sum() / max(np.nanmax(rec["frame_answer"][ok]) -
                                        np.nanmin(rec["frame_capture"][ok]), 1e-9))
            if ok.any() else 0.0,
            "answered_frames": int(ok.sum()),
            "answered_inputs": int(np.isin(rec["frame_of"], np.flatnonzero(ok)).sum()),
            "retries": int(info["retries"]),
            "dropped_frames": len(info["dropped_frames"]), "dropped_bytes": info["dropped_bytes"],
            "unanswered_frames": len(info["unanswered"]), "errors": info["errors"][:5],
            "buffer_peak_bytes": info["buffer_peak_bytes"],
            "same_routing_as_offline_controller": same_routing,
        }
        # the metric of what the server answered (complete passes of the split only)
        total = len(order)
        if row["answered_frames"] == info["frames"] and m and m % total == 0:
            groups = np.split(np.arange(m), np.flatnonzero(np.diff(rec["frame_of"])) + 1)
            served = [None] * m
            for seq, g in enumerate(groups):
                for j, r in enumerate(g):
                    served[r] = rec[f"a{seq}_{j}"]
            served = np.stack(served)
            metrics, pipeline = [], []
            for p in range(m // total):
                part = slice(p * total, (p + 1) * total)
                stored = np.empty_like(served[part])
                stored[order[index[part]]] = served[part]
                metrics.append(run.task.serving.metric(run.cfg, run.data, "test", stored))
                assignment = np.empty(total, np.int64)
                assignment[order[index[part]]] = rec["choice"][part]
                pipeline.append(float(run.view("test").metric(assignment)))
            row["metric"] = float(np.mean(metrics))
            row["pipeline_metric"] = float(np.mean(pipeline))
            row["metric_max_abs_diff"] = float(np.max(np.abs(np.subtract(metrics, pipeline))))
            if s == 0:
                first = slice(0, total)
                offline_out = _offline_outputs(run, feed, rec["choice"][first], index[first])
                diff = float(np.max(np.abs(offline_out - served[first])))
                checks["outputs_equal_offline"] = diff <= OUTPUT_TOLERANCE
                outputs_diff = diff
        rows.append(row)
        checks.setdefault("same_routing_as_offline_controller", True)
        checks["same_routing_as_offline_controller"] &= same_routing
        checks.setdefault("same_routing_on_every_sensor", True)
        checks["same_routing_on_every_sensor"] &= bool(np.array_equal(rec["choice"],
                                                                      reference_choice))
    if prep.bucket is not None:
        checks["hard_window_bound_held"] = all(r["worst_excess_bytes"] <= prep.bucket
                                               for r in rows)
    metric_rows = [r for r in rows if "metric" in r]
    if metric_rows:
        checks["metric_equals_pipeline"] = all(r["metric_max_abs_diff"] <= 1e-4
                                               for r in metric_rows)
    checks["every_frame_answered_once"] = (
        all(r["answered_frames"] + r["dropped_frames"] == r["frames"] for r in rows)
        and all(int(server_stats.get("answered_per_sensor", {}).get(str(r["sensor"]), 0))
                == r["answered_frames"] for r in rows))
    total_frames = sum(r["answered_frames"] for r in rows)
    report = {
        "task": run.task.name, "workdir": run.wd.root, "metric_name": run.task.metric_name,
        "sensors": sensors, "fps": fps, "mode": mode, "replicas": replicas,
        "link_kbps": link_rate * 8 / 1000, "link_bucket_bytes": link_bucket,
        "budget_bytes_per_input": prep.target, "payload_target_bytes": prep.payload_target,
        "bucket_bytes": prep.bucket, "head_bytes": rows[0]["wire_per_input"] and None,
        "framing": "HTTP/1.1 head (fixed width) + 18 B frame header per frame, 5 B per part "
                   "(experiments/system/wire.py); TCP/IP headers not counted",
        "inputs_per_frame": prep.meta["inputs"] / prep.meta["frames"],
        "server_start_seconds": server_seconds, "stream_seconds": stream_seconds,
        "throughput_frames_per_s": total_frames / max(stream_seconds, 1e-9),
        "throughput_inputs_per_s": sum(r["answered_inputs"] for r in rows)
        / max(stream_seconds, 1e-9),
        "outputs_max_abs_diff": outputs_diff, "output_tolerance": OUTPUT_TOLERANCE,
        "server": server_stats, "faults": faults, "outages": outages, "checks": checks,
        "per_sensor": rows,
    }
    report.pop("head_bytes")
    report["summary"] = summary(report)
    return report


def _ms(v):
    return "-" if v is None else f"{v:.1f}"


def summary(report):
    lines = [f"system: {report['task']}, {report['sensors']} sensor(s) at {report['fps']:g} fps, "
             f"{report['mode']} mode, budget {report['budget_bytes_per_input']:.1f} B/input on "
             f"the wire, link {report['link_kbps']:.1f} kbit/s",
             "sensor  inputs  payload B/in  wire B/in  framing B/in  worst-64 B (limit)  "
             f"{report['metric_name']}  p50/p95/p99 ms  fps  retries  dropped"]
    for r in report["per_sensor"]:
        lat = r["latency_ms"]
        metric = "-" if "metric" not in r else f"{r['metric']:.3f}"
        lines.append(f"{r['sensor']:>6}  {r['inputs']:>6}  {r['payload_per_input']:>12.1f}  "
                     f"{r['wire_per_input']:>9.1f}  {r['framing_per_input']:>12.1f}  "
                     f"{r['worst_window_bytes']:>8.0f} ({r['worst_window_budget']:.0f})  "
                     f"{metric:>8}  {_ms(lat['p50'])}/{_ms(lat['p95'])}/{_ms(lat['p99'])}  "
                     f"{r['fps']:.2f}  {r['retries']}  {r['dropped_frames']}")
    lines.append(f"throughput {report['throughput_inputs_per_s']:.1f} inputs/s "
                 f"({report['throughput_frames_per_s']:.2f} frames/s) over "
                 f"{report['stream_seconds']:.1f} s; checks: " + ", ".join(
                     f"{k}={v}" for k, v in report["checks"].items()))
    return lines


def write_report(report, out_dir):
    """Writes ``system_report.json`` and ``.md``; returns their paths."""
    js = os.path.join(out_dir, REPORT_NAME + ".json")
    md = os.path.join(out_dir, REPORT_NAME + ".md")
    with open(js + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(js + ".tmp", js)
    lines = ["# System run", "", "```", *report["summary"], "```", "",
             f"Framing: {report['framing']}.", "",
             f"Server: {json.dumps(report['server'])}", ""]
    if report["faults"] or report["outages"]:
        lines += [f"Faults: {json.dumps(report['faults'])}; link outages (s): "
                  f"{report['outages']}", ""]
    with open(md + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(md + ".tmp", md)
    return js, md
