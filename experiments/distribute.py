"""``--strategy``: which ``tf.distribute`` strategy trains the gates (issue 12).

* ``default`` -- the default strategy (one device);
* ``mirrored`` -- ``tf.distribute.MirroredStrategy`` over this machine's devices (GPUs,
  or the CPU);
* ``multi_worker`` -- ``tf.distribute.MultiWorkerMirroredStrategy``: every worker runs
  the same command with its own ``TF_CONFIG`` (the standard cluster spec, e.g.
  ``{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker",
  "index": 0}}``); worker 0 (or the ``chief``) writes the artefacts.

What is global and what is per replica: the batch (``--batch_size``) is the GLOBAL batch,
split in equal consecutive parts over the replicas in replica order (the pipeline
refuses a batch that the number of replicas does not divide); Algorithm 1's
capacities hold for the global batch (the gate values are all-gathered,
:class:`bmoe_tf.routing.BatchwiseBiasEnforcement`); the data order is
``epoch_order(seed, epoch)`` over the whole training set, the same on every worker;
gradients are summed over replicas (each replica's loss divided by their number), so a
gate trained by W workers equals the one trained in one process on W devices with the
same global batch.

Cluster start-up is bounded: a CLI worker runs as a small supervisor process and the
worker itself (:func:`supervise`); when the worker has not joined its cluster (every
worker of ``TF_CONFIG`` started) within ``BMOE_CLUSTER_TIMEOUT_S`` seconds (default
:data:`CLUSTER_TIMEOUT_S`), the supervisor stops it with one ``error:`` line naming the
other workers' addresses (exit 2). SIGINT and SIGTERM stop it at any time (exit 130),
also while TensorFlow waits for a peer, when it neither takes Python signals (the wait
holds the interpreter) nor SIGTERM (its preemption notifier catches it).
"""
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bmoe_tf.backend import tf
from bmoe_tf.cache import load_cache_shards

__all__ = ["STRATEGIES", "make_strategy", "supervise", "cluster_timeout", "CLUSTER_TIMEOUT_S",
           "CLUSTER_TIMEOUT_ENV", "is_chief", "check_tf_config", "writable_dir",
           "Team", "ClusterError", "shard_files", "complete_shards", "merged_shards",
           "remove_shards"]

STRATEGIES = ("default", "mirrored", "multi_worker")


def check_tf_config(text=None):
    """The parsed ``TF_CONFIG`` of a multi-worker run (``text``: default the environment's).

    Raises:
      ValueError: missing, not JSON, or without ``cluster`` / ``task`` (says what is).
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError("--strategy=multi_worker needs TF_CONFIG (the cluster spec and this "
                         "worker's task), e.g. {\"cluster\": {\"worker\": [\"host1:12345\", "
                         "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        config = json.loads(text)
    except ValueError as err:
        raise ValueError(f"TF_CONFIG is not JSON ({err})") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ValueError("TF_CONFIG must hold 'cluster' and 'task', got "
                         f"{sorted(config) if isinstance(config, dict) else type(config).__name__}")
    task = config["task"]
    kinds = config["cluster"]
    if not isinstance(kinds, dict) or set(kinds) - {"chief", "worker"} or not kinds:
        raise ValueError(f"TF_CONFIG's cluster may hold 'chief' and 'worker' jobs only "
                         f"(MultiWorkerMirroredStrategy), got "
                         f"{sorted(kinds) if isinstance(kinds, dict) else kinds!r}")
    if not isinstance(task, dict) or task.get("type") not in kinds:
        raise ValueError(f"TF_CONFIG task {task!r} is not one of the cluster's job types "
                         f"{sorted(kinds)}")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(kinds[task["type"]]):
        raise ValueError(f"TF_CONFIG task index {index!r} is outside the "
                         f"{len(kinds[task['type']])} {task['type']} addresses")
    return config


def make_strategy(name):
    """The ``tf.distribute.Strategy`` of ``--strategy=name`` (:data:`STRATEGIES`)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _cluster_started()
        return strategy
    raise ValueError(f"unknown --strategy={name!r}; allowed: {', '.join(STRATEGIES)}")


#: Seconds a worker waits for its cluster to start (every worker of TF_CONFIG up) before
#: it stops with a message; ``BMOE_CLUSTER_TIMEOUT_S`` overrides it.
CLUSTER_TIMEOUT_S = 600.0
CLUSTER_TIMEOUT_ENV = "BMOE_CLUSTER_TIMEOUT_S"
#: Set in the worker a supervisor runs: the fd it reports "cluster started" on.
STARTED_FD_ENV = _STARTED_FD_ENV = "BMOE_CLUSTER_STARTED_FD"
#: Seconds a stopped worker gets to exit by itself before it is killed.
STOP_GRACE_S = 10.0


def cluster_timeout(environ=None):
    """Seconds of :data:`CLUSTER_TIMEOUT_ENV` (default :data:`CLUSTER_TIMEOUT_S`).

    Raises:
      ValueError: not a positive number (the message names the variable).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(CLUSTER_TIMEOUT_ENV, "").strip()
    if not text:
        return CLUSTER_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{CLUSTER_TIMEOUT_ENV}={text!r}: the cluster start-up timeout must "
                         "be a positive number of seconds")
    return value


def _cluster_started():
    """Tells the supervisor (if any) that the cluster is up, and takes SIGTERM back from
    TensorFlow's preemption notifier (it would swallow it)."""
    fd = os.environ.pop(_STARTED_FD_ENV, None)
    if fd is not None:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _peers(config):
    """``"worker 1 (host:port), ..."``: the addresses of the other tasks of TF_CONFIG."""
    me = config["task"]
    out = []
    for job, addresses in config["cluster"].items():
        for i, address in enumerate(addresses):
            if job != me.get("type") or i != me.get("index", 0):
                out.append(f"{job} {i} ({address})")
    return ", ".join(out)


def supervise(argv, *, timeout=None, stderr=None):
    """Runs ``argv`` (this worker's own command) as a child process and waits for it:
    returns its exit status, or stops it when its cluster has not started within
    ``timeout`` seconds (:func:`cluster_timeout`; status 2, one ``error:`` line) or when
    this process gets SIGINT / SIGTERM (status 130, one ``interrupted:`` line; the child
    gets SIGINT, then SIGKILL after :data:`STOP_GRACE_S`). The child reports a started
    cluster through :func:`make_strategy`.
    """
    from experiments import exits as cli

    stderr = stderr or sys.stderr
    timeout = cluster_timeout() if timeout is None else float(timeout)
    config = check_tf_config()
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{_STARTED_FD_ENV: str(write_fd)})
    stop = []

    def on_signal(signum, frame):
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=(write_fd,))
        os.close(write_fd)
        started, deadline = False, time.monotonic() + timeout
        while True:
            code = child.poll()
            if code is not None:
                return code if code >= 0 else 128 - code
            if stop:
                _stop(child)
                if child.returncode != cli.EXIT_INTERRUPTED:  # else it said so itself
                    print(cli.INTERRUPTED_MESSAGE, file=stderr, flush=True)
                return cli.EXIT_INTERRUPTED
            if not started:
                import select

                ready, _, _ = select.select([read_fd], [], [], 0.2)
                if ready:
                    started = os.read(read_fd, 1) == b"1" or started
                    if not started:  # EOF: the child closed it without a word
                        started = True
                elif time.monotonic() > deadline:
                    _stop(child, grace=0)
                    print(f"error: the multi-worker cluster did not start within {timeout:g} s "
                          f"({CLUSTER_TIMEOUT_ENV}): {_peers(config)} never joined. Start "
                          "every worker of TF_CONFIG with the same command, or check the "
                          "addresses in TF_CONFIG", file=stderr, flush=True)
                    return cli.EXIT_USAGE
            else:
                time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(read_fd)


def _stop(child, grace=STOP_GRACE_S):
    """SIGINT (the child's own "interrupted" path), then SIGKILL after ``grace`` s."""
    if grace:
        try:  # a terminal's Ctrl-C reached the child too: let it finish first
            child.wait(timeout=1.0)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            child.send_signal(signal.SIGINT)
            child.wait(timeout=grace)
            return
        except (subprocess.TimeoutExpired, OSError):
            pass
    try:
        child.kill()
    except OSError:
        pass
    child.wait()


def is_chief(strategy=None):
    """True where artefacts are written: one process, or the chief / worker 0 of a cluster."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    jobs = resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in jobs


class writable_dir:
    """``with writable_dir(path, strategy) as d:`` -- ``path`` on the chief; elsewhere a
    temporary directory removed on exit (Keras' multi-worker saving pattern: every worker
    must run the save, whose collective reads need all of them; only one keeps it)."""

    def __init__(self, path, strategy=None):
        self.path = path
        self.chief = is_chief(strategy)
        self._tmp = None

    def __enter__(self):
        if self.chief:
            return self.path
        self._tmp = tempfile.mkdtemp(prefix="bmoe_worker_")
        return os.path.join(self._tmp, os.path.basename(os.path.normpath(self.path)))

    def __exit__(self, *exc):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return False


#: how long a failed worker waits to tell the others (seconds)
FAILURE_TIMEOUT_S = 60


class ClusterError(RuntimeError):
    """Another worker of a multi-worker run failed (its own output says why)."""


class Team:
    """The workers of one run: ``count`` processes, this one ``index``; the ``chief``
    (worker 0 or the ``chief`` task) writes the artefacts.

    :meth:`sync` is a barrier made of one ``tf.distribute`` collective (an all-reduce of
    each worker's "ok" flag over ``strategy``), so a worker waits there until every
    worker arrives, and learns whether any failed. With one worker it does nothing.
    """

    def __init__(self, strategy=None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        resolver = getattr(self.strategy, "cluster_resolver", None)
        spec = resolver.cluster_spec().as_dict() if resolver is not None and getattr(
            resolver, "cluster_spec", None) else {}
        jobs = {k: v for k, v in spec.items() if k in ("chief", "worker")}
        self.count = max(1, sum(len(v) for v in jobs.values()))
        if self.count == 1 or resolver.task_type is None:
            self.index = 0
        else:  # the chief first, then the workers in TF_CONFIG's order
            offset = len(jobs.get("chief", [])) if resolver.task_type == "worker" else 0
            self.index = offset + int(resolver.task_id or 0)

    def __repr__(self):
        return f"Team(count={self.count}, index={self.index}, chief={self.chief})"

    def sync(self, name, ok=True):
        """Waits for every worker at barrier ``name``; returns True when all were ok.

        A worker that failed (``ok=False``) waits at most :data:`FAILURE_TIMEOUT_S` for
        the others to take its message, then goes on to stop.

        Raises:
          ClusterError: another worker arrived failed (only when this one is ``ok``).
        """
        if self.count == 1:
            return ok
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=None if ok else FAILURE_TIMEOUT_S)
        flag = 0.0 if ok else 1.0

        def failures():
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(flag),
                                      options=options)

        try:
            total = float(self.strategy.experimental_local_results(
                self.strategy.run(failures))[0])
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError):
            if ok:
                raise
            return False
        if ok and total > 0:
            raise ClusterError(f"another worker failed before '{name}'; its output says why "
                               f"(this is worker {self.index} of {self.count})")
        return total == 0

    @contextlib.contextmanager
    def section(self, name):
        """``with team.section(name):`` -- the body, then :meth:`sync`; a body that raises
        tells the other workers (waiting at the same barrier) before re-raising. Not for
        collective work (gate training): a worker that dies there stops the others
        through the strategy's own health checks."""
        try:
            yield self
        except BaseException:
            if self.count > 1:
                try:
                    self.sync(name, ok=False)
                except Exception:  # the cluster may be gone already
                    pass
            raise
        self.sync(name)


_SHARD_FILE = re.compile(r"\.shard-(\d+)-of-(\d+)\.npz$")


def _stem(path):
    path = os.fspath(path)
    return path[:-4] if path.endswith(".npz") else path


def shard_files(path):
    """The shard files ``<stem>.shard-<i>-of-<S>.npz`` of ``path`` present now."""
    return sorted(name for name in glob.glob(glob.escape(_stem(path)) + ".shard-*-of-*.npz")
                  if _SHARD_FILE.search(name))


def complete_shards(path):
    """S when every shard file ``<stem>.shard-<i>-of-<S>.npz`` of ``path`` exists
    (:func:`bmoe_tf.cache.shard_path`), else None; the largest complete S wins (every
    complete set of the same stage key merges to the same cache)."""
    found = {}
    for name in shard_files(path):
        match = _SHARD_FILE.search(name)
        found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    complete = [s for s, held in found.items() if held == set(range(s))]
    return max(complete) if complete else None


def merged_shards(path):
    """The cache merged from a complete set of shard files of ``path`` (byte for byte
    the cache one process builds), or None when there is none.

    Raises:
      experiments.stages.ArtefactError: the shards are corrupt or do not merge (the
        message names them).
    """
    from experiments.stages import ArtefactError

    count = complete_shards(path)
    if count is None:
        return None
    try:
        return load_cache_shards(path, count)
    except (ValueError, OSError, EOFError, KeyError) as err:
        raise ArtefactError(
            f"the {count} cache shards of {path} do not merge ({err}); delete "
            f"{_stem(path)}.shard-*-of-{count}.npz and run again") from None


def remove_shards(path):
    """Deletes the shard files of ``path`` (after the merged file is written), and
    temporary files a stopped writer left."""
    for name in shard_files(path) + glob.glob(
            glob.escape(_stem(path)) + ".shard-*-of-*.npz.tmp.npz"):
        os.remove(name)
