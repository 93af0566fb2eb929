"""Test session set-up.

Two logical CPU devices must be configured before TensorFlow initialises its
runtime, so this happens here, before any test module runs an op. Tests that do
not use a distribution strategy are unaffected (ops still run on /cpu:0).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bmoe_tf.backend import tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.smoke_runs import kill_running, run_cli, sr_cli  # noqa: E402


@pytest.fixture
def toy_problem():
    """``(x [64, 6], y [64, 2], experts)``: three frozen Dense experts on 2 / 4 / 6 features."""
    from bmoe_tf import Expert
    from bmoe_tf.backend import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x[:, :2] * 2.0 + x[:, 2:4] - 0.5 * x[:, 4:6]).astype(np.float32)
    experts = []
    for i, k in enumerate((2, 4, 6)):
        keras.utils.set_random_seed(1 + i)
        model = keras.Sequential([keras.Input((k,)), keras.layers.Dense(2)], name=f"dense{k}")
        experts.append(Expert(model, preprocess=lambda t, k=k: t[:, :k], name=f"e{k}"))
    return x, y, experts


@pytest.fixture
def toy_gate():
    """``build(seed) -> keras.Model``: a tiny gate [M, 6] -> logits [M, 3]."""
    from bmoe_tf.backend import keras

    def build(seed=7):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3)])

    return build


# ---- the session's smoke workdirs: one per task, made once, shared ----------------------
# Their CLI runs (subprocesses) start in the background when the session starts, one
# after another, while the tests that do not need them run in this process (which
# leaves a core free most of the time); those that do run after them, in their own
# order (``pytest_collection_modifyitems``). Each fixture waits for its run.

#: fixture -> (the chain its run belongs to, its place in the chain)
SMOKE_FIXTURES = {"act_smoke": ("act", 0), "det_smoke": ("det", 0), "sr_finished": ("sr", 0),
                  "sr_smoke": ("sr", 1), "sr_resumed": ("sr", 2)}


def _task_cli(module, workdir):
    """``python -m experiments.<module> --preset=smoke --workdir=WORKDIR --verbose=0``,
    run twice (the second resumes: every stage skipped): ``(workdir, first, second)``."""
    import sys

    args = [sys.executable, "-m", f"experiments.{module}", "--preset=smoke",
            f"--workdir={workdir}", "--verbose=0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = []
    for _ in range(2):
        out = run_cli(args, timeout=600, env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        runs.append(out)
    return workdir, runs[0], runs[1]


def _sr_chain(root, depth):
    """The SR smoke runs up to ``depth`` (0: sr_finished, 1: sr_smoke, 2: sr_resumed), one
    value each, yielded as they finish."""
    import json
    import shutil

    from skimage import data, io

    finished = str(root / "finished" / "wd")
    yield finished, sr_cli(finished).stdout
    if depth < 1:
        return
    extra = root / "extra_images"
    extra.mkdir()
    io.imsave(str(extra / "coffee_crop.png"), data.coffee()[:256, :256])
    workdir = str(root / "smoke" / "wd")
    shutil.copytree(finished, workdir)
    yield workdir, sr_cli(workdir, f"--eval_image_dir={extra}").stdout
    if depth < 2:
        return
    with open(os.path.join(workdir, "report.json")) as f:
        before = json.load(f)
    yield before, sr_cli(workdir, f"--eval_image_dir={extra}").stdout


def _encode(value):
    """A smoke value as JSON (paths, CompletedProcess, JSON values; tuples of those)."""
    import pathlib
    import subprocess

    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, pathlib.Path):
        return {"path": str(value)}
    if isinstance(value, subprocess.CompletedProcess):
        return {"proc": [list(map(str, value.args)), value.returncode, value.stdout,
                         value.stderr]}
    return {"json": value}


def _decode(obj):
    import pathlib
    import subprocess

    if "tuple" in obj:
        return tuple(_decode(v) for v in obj["tuple"])
    if "path" in obj:
        return pathlib.Path(obj["path"])
    if "proc" in obj:
        return subprocess.CompletedProcess(*obj["proc"])
    return obj["json"]


def shared_tmp(tmp_path_factory):
    """The session's temporary root that every pytest-xdist worker of the session shares
    (without xdist: the session's own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


class SmokeRuns:
    """The smoke runs of one session: started in one background thread, in the order
    the tests need them; :meth:`result` waits for one (and starts it if it was not).

    Under pytest-xdist (``make test`` runs two workers) every worker's thread asks for the
    same chains in the same order; a chain is built once, by the worker that takes its
    file lock first, in the temporary root the workers share (:func:`shared_tmp`), and the
    others read its values (``values.json``) when it is done."""

    def __init__(self, tmp_path_factory):
        import concurrent.futures

        self._root = shared_tmp(tmp_path_factory)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smoke")
        self._futures = {}

    def start(self, names):
        """Queues the chains (one per task) that give ``names`` (fixture names)."""
        import concurrent.futures

        depth = {}
        for name in names:
            chain, place = SMOKE_FIXTURES[name]
            depth[chain] = max(depth.get(chain, -1), place)
        for chain in sorted(depth, key=lambda c: min(i for i, n in enumerate(names)
                                                   if SMOKE_FIXTURES[n][0] == c)):
            fixtures = [n for n, (c, p) in SMOKE_FIXTURES.items()
                        if c == chain and p <= depth[chain] and n not in self._futures]
            if not fixtures:
                continue
            futures = {SMOKE_FIXTURES[n][1]: concurrent.futures.Future() for n in fixtures}
            self._futures.update({n: futures[SMOKE_FIXTURES[n][1]] for n in fixtures})
            self._pool.submit(self._run, chain, self._root, depth[chain], futures)

    def _run(self, chain, shared, depth, futures):
        """Runs one chain, or reads the values another worker's run of it left, or (its
        lock taken by another worker) queues itself again behind the other chains;
        ``futures``: place in the chain -> the Future of its value."""
        import fcntl
        import json
        import time

        root = shared / f"smoke-{chain}-{depth}"
        done = shared / f"smoke-{chain}-{depth}.json"
        try:
            with open(shared / f"smoke-{chain}-{depth}.lock", "w") as lock:
                try:  # released when the file closes
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another worker builds it: build another first
                    time.sleep(0.5)
                    self._pool.submit(self._run, chain, shared, depth, futures)
                    return
                if done.exists():
                    values = [_decode(v) for v in json.loads(done.read_text())]
                else:
                    root.mkdir(exist_ok=True)
                    if chain == "sr":
                        made = _sr_chain(root, depth)
                    else:
                        module = {"act": "action", "det": "detection"}[chain]
                        made = iter([_task_cli(module, root / "smoke")])
                    values = []
                    for place, value in enumerate(made):
                        values.append(value)
                        if place in futures:
                            futures[place].set_result(value)
                    done.write_text(json.dumps([_encode(v) for v in values]))
            for place, value in enumerate(values):
                if place in futures and not futures[place].done():
                    futures[place].set_result(value)
        except BaseException as err:  # the fixtures that wait re-raise it
            for future in futures.values():
                if not future.done():
                    future.set_exception(err)

    def result(self, name):
        import concurrent.futures

        if name not in self._futures:
            self.start([name])
        while True:  # in short waits: Ctrl-C stops the session
            try:
                return self._futures[name].result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                pass

    def close(self):
        """Stops what still runs (a session stopped early) and the thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        kill_running()
        self._pool.shutdown(wait=True)


def _smoke_fixtures(item):
    return [n for n in getattr(item, "fixturenames", ()) if n in SMOKE_FIXTURES]


#: modules whose tests start several TensorFlow processes that wait on each other (or a
#: local Ray each): they run one after the other (one pytest-xdist group per module), first
#: (their waits overlap the rest)
ONE_AT_A_TIME = ("test_distribute.py", "test_system.py")


def _group(item):
    """The pytest-xdist group of a test (``--dist loadgroup``: a group runs on one worker,
    in order), or None: :data:`ONE_AT_A_TIME` modules; the tests that use a smoke chain's
    workdirs (they may lock them in place, so one worker runs them all)."""
    if item.path.name in ONE_AT_A_TIME:
        return item.path.stem
    chains = sorted({SMOKE_FIXTURES[n][0] for n in _smoke_fixtures(item)})
    return "smoke-" + "-".join(chains) if chains else None


def _order(item):
    if "quick_preset" in item.name:  # the longest (slow set): first, one per worker
        return -1
    if item.path.name in ONE_AT_A_TIME:
        return 0
    return 2 if _smoke_fixtures(item) else 1


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """:data:`ONE_AT_A_TIME` first, then the tests that need no smoke workdir (they run
    beside the background smoke runs), then the tests that need one; each in its order.
    Under pytest-xdist (``make test``: two workers, ``--dist loadgroup``) each
    :func:`_group` runs on one worker."""
    items[:] = sorted(items, key=_order)  # stable
    for item in items:
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def smoke_runs(request, tmp_path_factory):
    """The session's :class:`SmokeRuns`, started for the smoke fixtures the collected
    tests use, in the order the tests use them."""
    runs = SmokeRuns(tmp_path_factory)
    names = []
    for item in request.session.items:
        names += [n for n in _smoke_fixtures(item) if n not in names]
    runs.start(names)
    yield runs
    runs.close()


@pytest.fixture(scope="session")
def sr_finished(smoke_runs):
    """``(workdir, stdout)`` of one smoke run of ``python -m experiments.super_resolution``
    (:data:`smoke_runs.SR_SMOKE_FLAGS`, no evaluation images): about 30 s, shared. Read it;
    a test that changes it works on a copy."""
    return smoke_runs.result("sr_finished")


@pytest.fixture(scope="session")
def sr_extra_images(sr_smoke):
    """The folder with one 256x256 crop of coffee that ``sr_smoke`` was given
    (``--eval_image_dir``)."""
    return os.path.join(os.path.dirname(os.path.dirname(sr_smoke[0])), "extra_images")


@pytest.fixture(scope="session")
def sr_smoke(smoke_runs):
    """``(workdir, stdout)``: a copy of ``sr_finished`` run again with ``--eval_image_dir``
    (one 256x256 crop of coffee, ``sr_extra_images``): evaluation images added to a
    finished workdir; ``stdout`` that run's. Shared: read it, or work on a copy."""
    return smoke_runs.result("sr_smoke")


@pytest.fixture(scope="session")
def sr_resumed(smoke_runs):
    """``(report_before, stdout)``: ``sr_smoke``'s report.json, then what the same command
    printed when run once more on the finished workdir (every stage skipped); shared."""
    return smoke_runs.result("sr_resumed")


@pytest.fixture(scope="session")
def det_smoke(smoke_runs):
    """``(workdir, first, second)``: ``python -m experiments.detection --preset=smoke`` run
    twice in one workdir (the second resumes: every stage skipped); about 70 s, shared."""
    return smoke_runs.result("det_smoke")


@pytest.fixture(scope="session")
def act_smoke(smoke_runs):
    """``(workdir, first, second)``: ``python -m experiments.action --preset=smoke`` run
    twice in one workdir (the second resumes: every stage skipped); shared."""
    return smoke_runs.result("act_smoke")


@pytest.fixture
def sharded_cache_matches(tmp_path):
    """``check(task, cfg, workdir, num_shards)``: builds the caches of a finished workdir's
    data and experts again in ``num_shards`` shards (:meth:`Task.build_cache_shard`, one
    call per worker index, as a multi-worker run does: :func:`pipeline.build_cache_shards`),
    merges them (:func:`pipeline.build_caches`) and asserts every cache file equals the workdir's,
    array by array, byte for byte. Returns the compared file names."""
    import os

    from experiments import pipeline
    from experiments.layout import Layout

    def check(task, cfg, workdir, num_shards):
        src = Layout(workdir)
        copy = tmp_path / f"shards{num_shards}"
        copy.mkdir()
        for sub in ("data", "experts"):
            os.symlink(src.path(sub), copy / sub)
        wd = Layout(str(copy))
        run = pipeline.Run(task, cfg, wd)
        pipeline.load_data(run, announce=False)
        pipeline.build_experts(run)  # there already: loaded
        for index in range(num_shards):
            pipeline.build_cache_shards(run, num_shards, index)
        shards = [p for p in os.listdir(wd.path("cache")) if ".shard-" in p]
        assert len(shards) % num_shards == 0 and shards
        pipeline.build_caches(run)
        made = sorted(os.listdir(wd.path("cache")))
        assert not [p for p in made if ".shard-" in p]  # merged and removed
        for name in made:
            with np.load(wd.path("cache", name)) as a, np.load(src.path("cache", name)) as b:
                assert sorted(a.files) == sorted(b.files), name
                for key in a.files:
                    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
                    assert a[key].tobytes() == b[key].tobytes(), f"{name}: {key}"
        return made

    return check
