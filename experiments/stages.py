"""Resumable experiment stages on a workdir: data -> experts -> cache -> bias -> gates ->
evaluation -> report.

* Each stage writes its artefacts into the workdir and is skipped when they are
  already there, so an interrupted run resumes where it stopped. Artefacts are
  written to a temporary name and renamed, so a half-written file never looks done.
* Each stage is keyed by the settings it depends on (:class:`StageKey`, a
  fingerprint written next to its artefacts, chained to the stages before it).
  A changed key of a *protected* stage (data, experts, caches: hours of work) is
  refused before anything runs (:class:`StageMismatch`); the artefacts of any
  other stage are moved to ``superseded/`` and rebuilt.
* A stage's key also records a content fingerprint of the artefacts of the stage it
  builds on (:func:`content_record`), taken when it is claimed: when those artefacts
  were rebuilt (deleted, corrupt) and now differ, the stage's artefacts are stale and
  moved to ``superseded/`` to be rebuilt too; a rebuild that gives the same content
  (a deterministic stage) keeps them.
* One run per workdir (:class:`WorkdirLock`).
* A corrupt or truncated artefact is reported in one line naming the file
  (:func:`load_artefact` raises :class:`ArtefactError`).
"""
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
import zipfile

from absl import logging

__all__ = ["Workdir", "write_json", "read_json", "atomic_dir", "WorkdirLock", "WorkdirBusy",
           "StageKey", "StageMismatch", "ArtefactError", "load_artefact", "fingerprint",
           "content_record", "file_digest"]


class ArtefactError(RuntimeError):
    """An artefact of the workdir cannot be read (corrupt or truncated)."""


class WorkdirBusy(RuntimeError):
    """Another live process runs on the same workdir."""


class StageMismatch(RuntimeError):
    """The settings of a protected stage differ from those its artefacts were made with."""


class Workdir:
    """The layout of one experiment's workdir (see WORKSPACE.md).

    ``data/`` splits and inputs, ``experts/`` SavedModels, ``cache/`` expert caches,
    ``gates/<method>/<target index or shared>/`` gates, ``reports/`` figures,
    ``report.json`` / ``report.md``; ``stages/`` holds one fingerprint per stage,
    ``superseded/`` artefacts replaced after a setting changed.
    """

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))
        #: name -> the :class:`StageKey` made on this workdir (a file inside another
        #: stage's artefact directory belongs to the stage that names it more closely)
        self.keys = {}
        for sub in ("data", "experts", "cache", "gates", "reports", "stages"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def rel(self, path):
        return os.path.relpath(path, self.root)

    def run(self, name, done, fn, load=None):
        """Runs ``fn()`` unless every path in ``done`` exists; prints what it did.

        Returns fn's result, or, when skipped, ``load()`` (None without one).
        """
        done = [done] if isinstance(done, str) else list(done)
        if done and all(os.path.exists(p) for p in done):
            logging.info("stage %s: done already (%s), skipped", name, self.rel(done[0]))
            print(f"[{name}] skipped: already in {self.rel(done[0])}", flush=True)
            return None if load is None else load()
        print(f"[{name}] running ...", flush=True)
        start = time.time()
        result = fn()
        print(f"[{name}] done in {time.time() - start:.1f} s", flush=True)
        return result


# ---- files --------------------------------------------------------------------------
def write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path):
    return load_artefact(path, _read_json)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def load_artefact(path, loader, *, rebuild=None):
    """``loader(path)``, with a corrupt or truncated file reported in one line.

    Args:
      path: the artefact (file or SavedModel directory).
      loader: ``path -> object``.
      rebuild: what to delete to rebuild it (default: ``path`` itself).
    Raises:
      ArtefactError: naming the file and how to recover.
      FileNotFoundError: ``path`` does not exist (not a corruption).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        return loader(path)
    except (ArtefactError, StageMismatch, KeyboardInterrupt):
        raise
    except Exception as err:  # zipfile, json, numpy, TensorFlow (a truncated SavedModel
        # raises IndexError, tf.errors.*, ...): any failure to read is a bad artefact
        target = rebuild or path
        text = str(err).strip()
        first = text.splitlines()[0][:160] if text else ""
        raise ArtefactError(
            f"{path} is corrupt or truncated ({type(err).__name__}"
            f"{': ' + first if first else ''}); delete {target} and run the same command "
            "again to rebuild it") from err


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


# ---- one run per workdir ---------------------------------------------------------------
class WorkdirLock:
    """``with WorkdirLock(root):`` -- one run per workdir.

    An exclusive ``flock`` on ``<root>/.lock``, which also records the holder's pid
    and command line. The kernel drops the lock when its process dies (even by
    SIGKILL), so a stale lock file from a dead process is simply taken over.

    Raises:
      WorkdirBusy: another live process holds the lock (the message names it).
    """

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))
        self.path = os.path.join(self.root, ".lock")
        self._file = None

    def __enter__(self):
        os.makedirs(self.root, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise WorkdirBusy(
                f"{self.root} is in use by another run ({holder}); wait for it to finish, "
                "stop it, or use another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        return False


# ---- stage fingerprints --------------------------------------------------------------
def fingerprint(obj):
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- content fingerprints of artefacts ---------------------------------------------------
#: Files that do not hold a stage's result and change on every (identical) rebuild:
#: TensorBoard logs, training back-ups, checkpoint state files (timestamps), SavedModel
#: graph protos (per-process function names; the variables hold the weights), temporaries.
_VOLATILE_DIRS = ("logs", "backup")
_VOLATILE_NAMES = ("checkpoint", "saved_model.pb", "fingerprint.pb", "keras_metadata.pb",
                   ".lock")
_VOLATILE_SUFFIXES = (".partial", ".tmp")
#: JSON keys that record timings, not results (e.g. an expert's ``history.json`` seconds).
_TIMING_KEY = re.compile(r"(^|_)(seconds|time|timestamp|elapsed|wall_s|date)$")


def _volatile(rel):
    parts = rel.split(os.sep)
    name = parts[-1]
    return (any(p in _VOLATILE_DIRS or p.endswith(_VOLATILE_SUFFIXES) for p in parts[:-1])
            or name in _VOLATILE_NAMES or name.startswith("events.out.tfevents")
            or name.endswith(_VOLATILE_SUFFIXES) or ".tmp." in name)


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if not (isinstance(k, str) and _TIMING_KEY.search(k))}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def file_digest(path):
    """16 hex digits of what ``path`` holds, the same for an identical rebuild.

    ``.npz``: each member's name, size and CRC-32 (its zip entries carry the time they
    were written); ``.json``: the parsed value without timing keys (``seconds``, ...);
    any other file: its bytes. An unreadable ``.npz``/``.json`` falls back to its bytes.
    """
    if path.endswith(".npz"):
        try:
            with zipfile.ZipFile(path) as z:
                return fingerprint(sorted((i.filename, i.file_size, i.CRC) for i in z.infolist()))
        except (zipfile.BadZipFile, OSError):
            pass
    if path.endswith(".json"):
        try:
            return fingerprint(_without_timings(_read_json(path)))
        except (ValueError, OSError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def content_record(wd, paths, *, exclude=(), previous=None):
    """The content of the artefacts ``paths`` (files or directories) as they are now:
    ``{"fingerprint": 16 hex digits, "files": {rel: [size, mtime_ns, digest]}}``, or None
    when none of them holds a file.

    Args:
      wd: the :class:`Workdir` (paths are recorded relative to its root).
      paths: absolute artefact paths.
      exclude: absolute paths (files or directories) left out: another stage's artefacts
        inside these directories, e.g. the ``--eval_data`` caches inside ``cache/``.
      previous: an earlier record; a file whose size and mtime are unchanged keeps its
        digest (nothing is read again).
    """
    exclude = [os.path.abspath(e) for e in exclude]
    old = (previous or {}).get("files", {})

    def excluded(p):
        return any(p == e or p.startswith(e.rstrip(os.sep) + os.sep) for e in exclude)

    found = []
    for top in paths:
        if os.path.isfile(top):
            found.append(top)
        elif os.path.isdir(top):
            for root, dirs, files in os.walk(top):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)]
    files = {}
    for p in sorted(set(found)):
        rel = wd.rel(p)
        if _volatile(rel) or excluded(p):
            continue
        st = os.stat(p)
        before = old.get(rel)
        if before and before[0] == st.st_size and before[1] == st.st_mtime_ns:
            digest = before[2]
        else:
            digest = file_digest(p)
        files[rel] = [st.st_size, st.st_mtime_ns, digest]
    if not files:
        return None
    return dict(fingerprint=fingerprint(sorted((k, v[2]) for k, v in files.items())),
                files=files)


class StageKey:
    """The settings one stage's artefacts depend on, chained to the stages before it.

    Args:
      wd: the :class:`Workdir`.
      name: the stage (``data``, ``experts``, ...); its key is ``stages/<name>.json``.
      settings: a JSON-able dict of the settings this stage reads itself.
      parent: the :class:`StageKey` it builds on (its fingerprint enters this one).
      artefacts: the workdir paths this stage writes (moved to ``superseded/`` when
        the stage is rebuilt with other settings).
      protected: refuse a changed key instead of rebuilding (data, experts, caches).
    """

    def __init__(self, wd, name, settings, *, parent=None, artefacts=(), protected=False):
        self.wd, self.name, self.settings = wd, name, dict(settings)
        self.parent, self.protected = parent, protected
        self.artefacts = [wd.path(a) for a in artefacts]
        chain = dict(settings=self.settings, parent=parent.fingerprint if parent else None)
        self.fingerprint = fingerprint(chain)
        self.path = wd.path("stages", f"{name}.json")
        keys = getattr(wd, "keys", None)
        if isinstance(keys, dict):
            keys[name] = self

    def stored(self):
        """The stored key dict, or None when the stage never started here."""
        if not os.path.exists(self.path):
            return None
        try:
            return read_json(self.path)
        except ArtefactError:
            made = ", ".join(self.wd.rel(p) for p in self.artefacts) or "its artefacts"
            raise StageMismatch(
                f"{self.path} (the key of the {self.name} stage) is corrupt: without it the "
                f"{self.name} artefacts cannot be matched to their settings. Move "
                f"{made} and {self.wd.rel(self.path)} out of {self.wd.root} and run the same "
                f"command again: the {self.name} stage is rebuilt and every other stage is "
                "kept (a later stage made from it is rebuilt only if the rebuilt artefacts "
                "differ). Or restore the key, or use a new --workdir") from None

    def has_artefacts(self):
        """True when any artefact exists (a directory counts when it is not empty)."""
        return any(os.path.isfile(p) or (os.path.isdir(p) and os.listdir(p))
                   for p in self.artefacts)

    def changes(self):
        """``[(setting, before, now)]`` of this stage and the stages it builds on."""
        stored = self.stored()
        if stored is None or stored.get("fingerprint") == self.fingerprint:
            return []
        before = stored.get("settings", {})
        out = [(k, before.get(k), self.settings.get(k))
               for k in sorted(set(before) | set(self.settings))
               if before.get(k) != self.settings.get(k)]
        if not out and self.parent is not None:
            out = self.parent.changes()
        return out or [("(settings of an earlier stage)", stored.get("parent"),
                        self.parent.fingerprint if self.parent else None)]

    def content(self, previous=None):
        """:func:`content_record` of this stage's artefacts now (None: there are none),
        less the artefacts of other stages inside its directories."""
        inner = [p for key in getattr(self.wd, "keys", {}).values() if key is not self
                 for p in key.artefacts
                 if any(p != a and p.startswith(a.rstrip(os.sep) + os.sep)
                        for a in self.artefacts)]
        return content_record(self.wd, self.artefacts, exclude=inner, previous=previous)

    def stale_inputs(self, stored=None):
        """``(recorded, now)`` content of the parent's artefacts when they differ from those
        this stage's artefacts were made from (the parent was rebuilt differently), else
        None. Unknown either way (no record, or the parent has no artefacts now): None."""
        stored = self.stored() if stored is None else stored
        if self.parent is None or not stored or not stored.get("inputs"):
            return None
        recorded = stored["inputs"]
        now = self.parent.content(previous=recorded)
        if now is None or now["fingerprint"] == recorded.get("fingerprint"):
            return None
        return recorded, now

    def is_current(self):
        stored = self.stored()
        return stored is not None and stored.get("fingerprint") == self.fingerprint

    def _supersede(self, dest):
        moved = []
        for p in self.artefacts:
            if os.path.exists(p):
                target = os.path.join(dest, self.wd.rel(p))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(p, target)
                moved.append(self.wd.rel(p))
        return moved

    def claim(self):
        """Makes this key the stage's key; artefacts made with another key are moved to
        ``superseded/<stage>-<old fingerprint>/`` (nothing is deleted), and so are
        artefacts made from a parent's artefacts that were rebuilt and differ now
        (``superseded/<stage>-<fingerprint>-inputs-<old parent content>/``).

        The key records the content of the parent's artefacts as they are now (call it
        after the parent stage ran), which the next claim compares."""
        stored = self.stored()
        inputs = stored.get("inputs") if stored else None
        if stored is not None and stored.get("fingerprint") == self.fingerprint:
            stale = self.stale_inputs(stored)
            if stale is not None:
                dest = self.wd.path("superseded", f"{self.name}-{self.fingerprint}-inputs-"
                                    f"{stale[0].get('fingerprint', 'unknown')}")
                moved = self._supersede(dest)
                if moved:
                    print(f"[{self.name}] the {self.parent.name} artefacts were rebuilt and "
                          f"differ from those it was made from: moved {', '.join(moved)} to "
                          f"{self.wd.rel(dest)}/ to rebuild them", flush=True)
                inputs = stale[1]
        if stored is not None and stored.get("fingerprint") != self.fingerprint:
            old = stored.get("fingerprint", "unknown")
            dest = self.wd.path("superseded", f"{self.name}-{old}")
            moved = self._supersede(dest)
            inputs = None
            if moved:
                print(f"[{self.name}] settings changed ("
                      + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in self.changes())
                      + f"): moved {', '.join(moved)} to {self.wd.rel(dest)}/", flush=True)
        elif stored is None and self.has_artefacts():
            raise StageMismatch(
                f"{self.wd.root} holds {self.name} artefacts without a stage key (made by an "
                "older bmoe-tf or copied in part); use a new --workdir")
        if self.parent is not None:  # what this stage's artefacts are made from, now
            now = self.parent.content(previous=inputs)
            inputs = now if now is not None else inputs
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        record = dict(stage=self.name, fingerprint=self.fingerprint,
                      parent=self.parent.fingerprint if self.parent else None,
                      settings=self.settings)
        if inputs is not None:
            record["inputs"] = inputs
        write_json(self.path, record)
        for d in ("data", "experts", "cache", "gates", "reports"):
            os.makedirs(self.wd.path(d), exist_ok=True)
