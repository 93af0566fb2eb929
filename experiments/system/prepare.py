"""What the sensors need, made once per workdir under ``<workdir>/system/`` (skipped when
done): the int8 gate exported for TFLite Micro with int8 logits (``firmware/``), the
router for the link's budget compiled from the emitted ``gate_router.c`` (``router/``),
and the feed (``feed.npz``): the test split in its natural order as the camera delivers
it (the gate's input, what the sensor holds for each expert, the frames).

The feed's payload sizes are checked against the pipeline's ``cache/test_bytes.npz``, so
the bytes the sensors count are the bytes the pipeline evaluated.
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np

from experiments.system import wire
from experiments.system.sensor import FEED_FILE
from experiments.system.workdir import SystemRunError

#: The feed file's layout (a feed of another is made again).
FEED_FORMAT = 2

__all__ = ["export_firmware", "build_router", "make_feed", "Prepared", "prepare",
           "system_dir"]


def system_dir(workdir):
    from experiments.layout import Layout

    return Layout.reading(workdir).system()


def fingerprint(paths):
    """sha256 of the files ``paths`` (a missing file counts as empty): what a system
    artefact was made from, so a retrained gate or a rebuilt cache is not served stale."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.basename(path).encode())
        if os.path.exists(path):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _gate_files(gate_dir):
    inner = os.path.join(gate_dir, "gate")
    model = inner if os.path.isdir(inner) else gate_dir
    return [os.path.join(model, "saved_model.pb"),
            os.path.join(model, "variables", "variables.index"),
            os.path.join(model, "variables", "variables.data-00000-of-00001"),
            os.path.join(os.path.dirname(os.path.normpath(model)), "gate.json")]


def export_firmware(workdir, task_name, gate_dir, out_dir):
    """``gating_tflite``'s export of ``gate_dir`` (int8 logits, the C files) into
    ``out_dir``; the export report (dict). Skipped when ``out_dir`` holds one of that gate."""
    report_path = os.path.join(out_dir, "export_report.json")
    done = os.path.join(out_dir, "gate_source.json")
    from experiments.layout import Layout

    source = {"gate": os.path.abspath(gate_dir), "fingerprint": fingerprint(
        _gate_files(gate_dir) + [Layout.reading(workdir).export_data()])}
    if os.path.exists(report_path) and os.path.exists(done):
        with open(done) as f:
            if json.load(f) == source:
                with open(report_path) as g:
                    print(f"[system firmware] skipped: already in {out_dir}", flush=True)
                    return json.load(g)
    from gating_tflite.calibration import load_export_data
    from gating_tflite.gate_export import check_gate_input, export_gate, load_gate_and_bias

    print(f"[system firmware] exporting {gate_dir} (int8, TFLite Micro, logits) ...", flush=True)
    gate, bias, _ = load_gate_and_bias(gate_dir)
    data = load_export_data(workdir, task_name)
    check_gate_input(gate, data)
    report, _ = export_gate(gate, data, bias, out=os.path.join(out_dir, "gate.tflite"),
                            output="logits", emit_c=True)
    with open(done, "w") as f:
        json.dump(source, f)
    return report.as_dict()


def build_router(report, data_costs, target_bytes, bucket_bytes, out_dir, expert_names=()):
    """The byte controller of the export for ``target_bytes`` on the wire per input and a
    bucket of ``bucket_bytes`` (hard mode; None: soft), its ``gate_router.h/.c`` written
    into ``out_dir`` and compiled there: ``(controller, CRouter)``."""
    from gating_tflite.router_lib import CRouter, byte_controller_from_report

    controller = byte_controller_from_report(report, data_costs, target_bytes=target_bytes,
                                             bucket_bytes=bucket_bytes)
    router = CRouter.build(out_dir, controller, expert_names=expert_names)
    return controller, router


def make_feed(run, export_data, report, path):
    """Writes the feed (module docstring) to ``path``; returns its meta dict."""
    task, cfg, data = run.task, run.cfg, run.data
    from experiments import pipeline

    raw = task.serving.inputs(cfg, data, "test")
    order, frames = pipeline.natural_order(run, len(raw))
    order = np.arange(len(raw)) if order is None else order
    frames = np.arange(len(raw)) if frames is None else frames
    raw = raw[order]
    arrays = {"gate_inputs": np.asarray(export_data.test, np.float32),
              "frames": np.asarray(frames, np.int64), "order": np.asarray(order, np.int64)}
    if len(arrays["gate_inputs"]) != len(raw):
        raise SystemRunError(f"export_data.npz holds {len(arrays['gate_inputs'])} test inputs, "
                             f"the test split {len(raw)}: run the task's CLI again")
    used = np.asarray(report["bias"]) > 0
    sizes = np.zeros((len(raw), len(run.experts)), np.int64)
    for n, expert in enumerate(run.experts):
        held = np.concatenate([expert.sensor_inputs(raw[i:i + 256])
                               for i in range(0, len(raw), 256)])
        arrays[f"sensor_{n}"] = held
        sizes[:, n] = [len(expert.codec.encode(x)) for x in held]
    expected = np.asarray(export_data.test_costs)
    if expected.shape != sizes.shape or not np.array_equal(expected, sizes):
        raise SystemRunError("the sensor's payloads do not have the sizes of the pipeline's "
                             "cache/test_bytes.npz (a changed codec?): run the task's CLI again")
    meta = {"format": FEED_FORMAT, "task": task.name, "source": _feed_source(run.wd.root),
            "codecs": [e.codec.spec() for e in run.experts],
            "expert_names": [e.name for e in run.experts], "used": used.tolist(),
            "arena_bytes": int(report["arena_bytes"]), "inputs": int(len(raw)),
            "frames": int(len(np.unique(frames)))}
    arrays["meta"] = np.array(json.dumps(meta))
    # the codec objects themselves (a spec string does not name every codec: Sections)
    arrays["codecs"] = np.frombuffer(pickle.dumps([e.codec for e in run.experts]), np.uint8)
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
    return meta


def _feed_source(workdir):
    from experiments.layout import Layout

    wd = Layout.reading(workdir)
    return fingerprint([wd.export_data(), wd.cache_file("test", "bytes"), wd.config()])


class Prepared:
    """What :func:`prepare` made: ``report`` (the export's), ``export_data``, ``feed``
    (path), ``meta``, ``controller`` and ``router_dir``; ``target`` and ``bucket`` (bytes on
    the wire per input, the hard bucket), ``framing`` (``int[M]`` framing per input)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def prepare(run, *, gate_dir, budget_bytes=None, bucket_bytes=None, mode="hard", host, token):
    """Firmware, feed and router of ``run``'s workdir for this link (see the module
    docstring). ``budget_bytes`` None: the export's payload target plus the mean framing
    per input; ``bucket_bytes`` None: 64 inputs' budget, at least twice the largest
    frame's request at the dearest used experts."""
    from gating_tflite.calibration import load_export_data

    root = run.wd.system()
    os.makedirs(root, exist_ok=True)
    report = export_firmware(run.wd.root, run.task.name, gate_dir, run.wd.system("firmware"))
    export_data = load_export_data(run.wd.root, run.task.name)
    feed = run.wd.system(FEED_FILE)
    meta = None
    if os.path.exists(feed):
        from experiments.system.sensor import load_feed

        _, meta = load_feed(feed)
        same = (meta.get("format"), meta.get("source"), meta.get("arena_bytes")) == (
            FEED_FORMAT, _feed_source(run.wd.root), int(report["arena_bytes"]))
        if same:
            print(f"[system feed] skipped: already in {feed}", flush=True)
        else:
            meta = None
    if meta is None:
        print("[system feed] encoding the test split for every expert ...", flush=True)
        meta = make_feed(run, export_data, report, feed)
    with np.load(feed) as f:
        frames = f["frames"]
    bounds = np.flatnonzero(np.diff(frames)) + 1
    head = wire.head_bytes(host, token)
    framing = np.concatenate([wire.framing_costs(len(g), head)
                              for g in np.split(np.arange(len(frames)), bounds)])
    costs = np.asarray(export_data.data_costs, np.float64)
    b = np.asarray(report["bias"], np.float64)
    payload_target = float(b @ costs)
    target = float(budget_bytes) if budget_bytes else payload_target + float(framing.mean())
    used = b > 0
    per_input = np.asarray(export_data.test_costs)[:, used].max(1) + framing
    largest_frame = max(float(np.bincount(np.searchsorted(np.unique(frames), frames),
                                          weights=per_input).max()), 1.0)
    if mode == "hard":
        bucket = float(bucket_bytes) if bucket_bytes else max(64 * target, 2 * largest_frame)
        if bucket < per_input.max():
            raise SystemRunError(f"--bucket_bytes={bucket:g} is smaller than the dearest input "
                                 f"({per_input.max():g} B with its framing): it could never go")
    else:
        bucket = None
    router_dir = run.wd.system("router")
    controller, _ = build_router(report, costs, target, bucket, router_dir,
                                 expert_names=meta["expert_names"])
    return Prepared(report=report, export_data=export_data, feed=feed, meta=meta,
                    controller=controller, router_dir=router_dir, target=target,
                    bucket=bucket, framing=framing, payload_target=payload_target,
                    largest_frame=largest_frame)
