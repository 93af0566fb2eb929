"""Resumable experiment stages: data -> experts -> cache -> gates -> evaluation -> report.

Each stage writes its artefacts into the workdir and is skipped when they are
already there, so an interrupted run resumes where it stopped. Artefacts are
written to a temporary name and renamed, so a half-written file never looks done.
"""
import json
import os
import shutil
import time

from absl import logging

__all__ = ["Workdir", "write_json", "read_json", "atomic_dir"]


class Workdir:
    """The layout of one experiment's workdir (see WORKSPACE.md).

    ``data/`` splits and parts, ``experts/`` SavedModels, ``cache/`` expert caches,
    ``gates/<method>/<target index>/`` gates, ``reports/`` figures,
    ``report.json`` / ``report.md``.
    """

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))
        for sub in ("data", "experts", "cache", "gates", "reports"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def run(self, name, done, fn, load=None):
        """Runs ``fn()`` unless every path in ``done`` exists; logs what it did.

        Returns fn's result, or, when skipped, ``load()`` (None without one).
        """
        done = [done] if isinstance(done, str) else list(done)
        if done and all(os.path.exists(p) for p in done):
            logging.info("stage %s: done already (%s), skipped", name,
                         os.path.relpath(done[0], self.root))
            print(f"[{name}] skipped: already in {os.path.relpath(done[0], self.root)}")
            return None if load is None else load()
        print(f"[{name}] running ...", flush=True)
        start = time.time()
        result = fn()
        print(f"[{name}] done in {time.time() - start:.1f} s", flush=True)
        return result


def write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


class atomic_dir:
    """``with atomic_dir(path) as tmp:`` write into tmp; renamed to path on success."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.tmp = self.path + ".partial"

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self.tmp, self.path)
        return False
