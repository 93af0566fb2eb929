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

from smoke_runs import sr_cli  # noqa: E402


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
def sr_finished(tmp_path_factory):
    """``(workdir, stdout)`` of one smoke run of ``python -m experiments.super_resolution``
    (:data:`SR_SMOKE_FLAGS`, no evaluation images): about 30 s, shared. Read it; a test
    that changes it works on a copy."""
    workdir = str(tmp_path_factory.mktemp("sr_finished") / "wd")
    return workdir, sr_cli(workdir).stdout


@pytest.fixture(scope="session")
def sr_extra_images(tmp_path_factory):
    """A folder with one 256x256 crop of coffee (``--eval_image_dir`` of ``sr_smoke``)."""
    from skimage import data, io

    extra = tmp_path_factory.mktemp("sr_extra") / "extra_images"
    extra.mkdir()
    io.imsave(str(extra / "coffee_crop.png"), data.coffee()[:256, :256])
    return str(extra)


@pytest.fixture(scope="session")
def sr_smoke(sr_finished, sr_extra_images, tmp_path_factory):
    """``(workdir, stdout)``: a copy of ``sr_finished`` run again with ``--eval_image_dir``
    (the coffee crop, ``sr_extra_images``): evaluation images added to a finished workdir,
    ``stdout`` that run's; shared."""
    import shutil

    workdir = str(tmp_path_factory.mktemp("sr") / "wd")
    shutil.copytree(sr_finished[0], workdir)
    return workdir, sr_cli(workdir, f"--eval_image_dir={sr_extra_images}").stdout


@pytest.fixture(scope="session")
def sr_resumed(sr_smoke, sr_extra_images):
    """``(report_before, stdout)``: ``sr_smoke``'s report.json, then what the same command
    printed when run once more on the finished workdir (every stage skipped); shared."""
    import json

    with open(os.path.join(sr_smoke[0], "report.json")) as f:
        before = json.load(f)
    return before, sr_cli(sr_smoke[0], f"--eval_image_dir={sr_extra_images}").stdout


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
    call per worker index, as a multi-worker run does), merges them
    (:meth:`Task.build_caches`) and asserts every cache file equals the workdir's,
    array by array, byte for byte. Returns the compared file names."""
    import os

    from experiments.stages import Workdir

    def check(task, cfg, workdir, num_shards):
        src = Workdir(workdir)
        copy = tmp_path / f"shards{num_shards}"
        copy.mkdir()
        for sub in ("data", "experts"):
            os.symlink(src.path(sub), copy / sub)
        wd = Workdir(str(copy))
        splits = task.load_data(cfg, wd)
        experts = task.build_experts(cfg, wd)  # there already: loaded
        for index in range(num_shards):
            task.build_cache_shard(cfg, wd, experts, splits, num_shards, index)
        shards = [p for p in os.listdir(wd.path("cache")) if ".shard-" in p]
        assert len(shards) % num_shards == 0 and shards
        task.build_caches(cfg, wd, experts, splits)
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
