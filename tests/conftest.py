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


@pytest.fixture(scope="session")
def sr_smoke(tmp_path_factory):
    """``(workdir, stdout)`` of one smoke run of ``python -m experiments.super_resolution``
    with ``--eval_image_dir`` (one 256x256 crop of coffee): about 30 s, shared."""
    import os
    import subprocess
    import sys

    from skimage import data, io

    root = tmp_path_factory.mktemp("sr")
    extra = root / "extra_images"
    extra.mkdir()
    io.imsave(str(extra / "coffee_crop.png"), data.coffee()[:256, :256])
    workdir = str(root / "wd")
    cmd = [sys.executable, "-m", "experiments.super_resolution", f"--workdir={workdir}",
           "--preset=smoke", "--verbose=0", f"--eval_image_dir={extra}"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc.stdout


@pytest.fixture(scope="session")
def det_smoke(tmp_path_factory):
    """``(workdir, first, second)``: ``python -m experiments.detection --preset=smoke`` run
    twice in one workdir (the second resumes: every stage skipped); about 70 s, shared."""
    import subprocess
    import sys

    wd = tmp_path_factory.mktemp("det") / "smoke"
    args = [sys.executable, "-m", "experiments.detection", "--preset=smoke",
            f"--workdir={wd}", "--verbose=0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = []
    for _ in range(2):
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(out)
    return wd, runs[0], runs[1]


@pytest.fixture(scope="session")
def act_smoke(tmp_path_factory):
    """``(workdir, first, second)``: ``python -m experiments.action --preset=smoke`` run
    twice in one workdir (the second resumes: every stage skipped); shared."""
    import subprocess
    import sys

    wd = tmp_path_factory.mktemp("act") / "smoke"
    args = [sys.executable, "-m", "experiments.action", "--preset=smoke",
            f"--workdir={wd}", "--verbose=0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = []
    for _ in range(2):
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        runs.append(out)
    return wd, runs[0], runs[1]


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
