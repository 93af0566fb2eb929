"""A second, tiny task through experiments.pipeline, in-process: a metric that is not a
mean over examples (an F1-like ratio of totals), a "scores" cache, raw-array experts.
Nothing in the pipeline knows about it: the interface is enough."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from bmoe_tf import Expert
from bmoe_tf.backend import keras
from bmoe_tf.cache import build_expert_cache, score_cache
from experiments import config, pipeline
from experiments.settings import setting
from experiments.layout import Layout
from experiments.stages import write_json
from experiments.task import SPLITS, CacheJob, Split, Task, TrainingSet


@dataclasses.dataclass(frozen=True)
class ToySettings:
    examples: int = setting(240, "Examples per split.", stage="data", low=16)


class ToyTask(Task):
    """Inputs x [M, 4]; expert n sees the first 1, 2 or 4 features (d_n = 4, 8, 16 bytes);
    per example and expert a hit h[M, N] in {0, 1} and false alarms f[M, N] in {0, 1, 2};
    metric = F1 = 2 TP / (2 TP + FP + FN) over the whole split: a ratio of totals (like
    mAP), not a mean of per-example values. Scores (oracle, training) = h - f / 2."""

    name = "toy"
    title = "Toy"
    metric_name = "F1-like"
    cost_unit = "bytes"
    Settings = ToySettings
    #: the experts' outputs are cached (unused by the metric: they exercise the sharded
    #: cache of a multi-worker run) in batches of this size
    CACHE_BATCH = 32

    def presets(self):
        schedule = config.Schedule(targets=config.Targets(count=3), batch_size=16,
                                   learning_rate=1e-2, epochs=2)
        return {name: config.Preset(schedule, ToySettings()) for name in config.PRESET_NAMES}

    def data_costs(self, cfg):
        return np.array([4.0, 8.0, 16.0])

    def prepare_data(self, cfg, wd):
        rng = np.random.default_rng(cfg.seed)
        for split in SPLITS:
            x = rng.normal(size=(cfg.task.examples, 4)).astype(np.float32)
            difficulty = np.abs(x[:, 3])  # hard examples need more features
            hits = (difficulty[:, None] < np.array([0.3, 0.8, 5.0])[None]).astype(np.float32)
            false = rng.integers(0, 3, size=(len(x), 3)) * (np.abs(x[:, 2:3]) > 0.5)
            np.savez(wd.path("data", f"{split}.npz"), x=x, hits=hits,
                     false=false.astype(np.float32))
        write_json(wd.path("data", "split.json"), {"ok": True})

    def load_data(self, cfg, wd):
        def load(split):
            with np.load(wd.path("data", f"{split}.npz")) as f:
                return dict(x=f["x"], hits=f["hits"], false=f["false"])

        return {split: ToySplit(load(split)) for split in SPLITS}

    def build_experts(self, cfg, wd, data):
        experts = []
        for k in (1, 2, 4):
            keras.utils.set_random_seed(cfg.seed + k)  # the same experts on every worker
            model = keras.Sequential([keras.Input((k,)), keras.layers.Dense(1)])
            experts.append(Expert(model, preprocess=lambda t, k=k: t[:, :k], name=f"k{k}",
                                  input_shape=(4,)))
        return experts

    def caches(self, cfg, wd, data, experts):
        def job(split):
            def build(num_shards, shard_index):
                return build_expert_cache(experts, data[split]["x"], kind="outputs",
                                          batch_size=self.CACHE_BATCH, verbose=0,
                                          num_shards=num_shards, shard_index=shard_index)
            return CacheJob(f"{split} outputs", wd.path("cache", f"{split}_outputs.npz"), build)

        return [job(split) for split in SPLITS]

    def training_set(self, cfg, wd, data):
        d = data["train"]
        return TrainingSet(d["x"], score_cache(d["hits"] - d["false"] / 2))

    def split(self, cfg, wd, data, name):
        d = data[name]
        return Split(gate_inputs=d["x"], scores=d["hits"] - d["false"] / 2,
                     metric=lambda a: f1(d, np.asarray(a)))

    def build_gate(self, cfg, num_experts):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(num_experts)])


class ToySplit(dict):
    """One split's arrays; ``len`` is its number of examples."""

    def __len__(self):
        return len(self["x"])


def f1(data, assignment):
    rows = np.arange(len(assignment))
    tp = data["hits"][rows, assignment].sum()
    fp = data["false"][rows, assignment].sum()
    fn = len(assignment) - tp
    return float(2 * tp / (2 * tp + fp + fn))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    task = ToyTask()
    cfg = config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                              verbose=0, bias_weights=(1.0,))
    workdir = str(tmp_path_factory.mktemp("toy") / "wd")
    report = pipeline.run(task, cfg, workdir, command="toy")
    task.data = task.load_data(cfg, Layout(workdir))  # what the tests compare with
    return task, cfg, workdir, report


def test_a_task_with_a_non_mean_metric_runs_through_the_pipeline(toy_run):
    task, cfg, workdir, report = toy_run
    assert report["task"] == "toy" and report["metric"] == "F1-like"
    assert set(report["curves"]) == {"enforce", "soft", "random", "benchmark", "oracle"}
    assert set(report["rho"]) == {"enforce", "soft", "random", "benchmark", "oracle"}
    # a paper-cost run (the default): no byte accounting, a cache key without data_cost
    # (workdirs made before --data_cost stay valid; encoded runs: test_pipeline_encoded.py)
    with open(os.path.join(workdir, "stages", "cache.json")) as f:
        assert "data_cost" not in json.load(f)["settings"]
    assert "bytes_saved" not in report and "oracle_bounds" not in report
    # every curve point is the task's own metric of the routing the pipeline chose
    for method in ("enforce", "soft"):
        for index, entry in report_subsets(workdir, method).items():
            picks = np.asarray(entry["picks"])
            point = report["points"][method][int(index)]
            assert point["metric"] == pytest.approx(f1(task.data["test"], picks))
            assert point["cost"] == pytest.approx(np.array([4.0, 8.0, 16.0])[picks].mean())
            # not a mean of per-example values: F1 of the halves does not average to it
            half = len(picks) // 2
            parts = [f1({k: v[s] for k, v in task.data["test"].items()}, picks[s])
                     for s in (slice(0, half), slice(half, None))]
            assert point["metric"] != pytest.approx(np.mean(parts), abs=1e-9)
    # the oracle maximises summed scores, a proxy of F1: any point above it is listed
    above = [(m, p["target"]) for m, pts in report["points"].items() if m != "oracle"
             for p, q in zip(pts, report["points"]["oracle"]) if p["metric"] > q["metric"] + 1e-9]
    assert above == [(e["method"], e["target"]) for e in report["oracle_exceeded"]]
    for name in ("report.md", "reports/curves.png", "gates/enforce/shared/gate/saved_model.pb"):
        assert os.path.exists(os.path.join(workdir, name)), name


def test_the_validation_split_gets_the_same_curves_from_its_own_data(toy_run):
    """report["validation"]: every method's curve on validation, each point the task's
    metric of the routing on the validation examples (where gate settings are compared)."""
    task, cfg, workdir, report = toy_run
    with open(os.path.join(workdir, "evaluation.json")) as f:
        evaluation = json.load(f)
    assert set(evaluation) == {"validation", "test"}
    val = report["validation"]
    assert val["rho"] == evaluation["validation"]["rho"] and val["rho"] != report["rho"]
    assert set(val["rho"]) == set(report["rho"])
    for method in ("enforce", "soft"):
        for index, entry in evaluation["validation"]["subsets"][method].items():
            picks = np.asarray(entry["picks"])
            assert len(picks) == len(task.data["validation"])
            point = val["points"][method][int(index)]
            assert point["metric"] == pytest.approx(f1(task.data["validation"], picks))
    # each benchmark point is one expert's own validation metric
    experts = {e["data_cost"]: e["metric_validation"] for e in report["experts"]}
    for cost, metric in val["curves"]["benchmark"]:
        if cost in experts:
            assert metric == pytest.approx(experts[cost])


def test_the_toy_task_resumes_with_every_stage_skipped(toy_run, capsys):
    task, cfg, workdir, report = toy_run
    again = pipeline.run(ToyTask(), cfg, workdir, command="toy")
    assert "running ..." not in capsys.readouterr().out
    assert {k: v for k, v in again.items() if k != "commands"} == \
        {k: v for k, v in report.items() if k != "commands"}


def report_subsets(workdir, method):
    import json

    with open(os.path.join(workdir, "evaluation.json")) as f:
        return json.load(f)["test"]["subsets"][method]


@pytest.mark.slow  # alone: TF aborts a second MirroredStrategy training of other
# batch shapes in one process (collective instance shape mismatch; WORKSPACE D53)
def test_the_mirrored_strategy_runs_the_pipeline(toy_run, tmp_path):
    """--strategy=mirrored (MirroredStrategy; in the tests two logical CPUs, conftest.py)
    runs every stage, trains gates whose batches met b over the global batch, and the
    same gates as the default strategy (the same epoch orders; the relative loss's scale
    and the soft loss's utility over the global batch: WORKSPACE D53)."""
    import dataclasses
    import json

    task, cfg, _, report = toy_run
    mirrored = pipeline.run(ToyTask(), dataclasses.replace(cfg, strategy="mirrored"),
                            str(tmp_path / "wd"), command="toy")
    assert set(mirrored["rho"]) == set(report["rho"])
    assert mirrored["rho"]["random"] == report["rho"]["random"]  # no gate involved
    for method in ("enforce", "soft"):  # the same gates: the same routings and numbers
        assert mirrored["rho"][method] == pytest.approx(report["rho"][method], abs=1e-9)
    from experiments.gates import load_gate

    one = load_gate(os.path.join(toy_run[2], "gates", "enforce", "shared"))[0]
    two = load_gate(str(tmp_path / "wd" / "gates" / "enforce" / "shared"))[0]
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with open(tmp_path / "wd" / "gates" / "enforce" / "shared" / "gate.json") as f:
        info = json.load(f)
    history, b = info["history"], np.asarray(info["bias"])
    utilities = np.array([history[f"utility_{n}"] for n in ("k1", "k2", "k4")]).T
    from bmoe_tf.routing import expert_capacities

    # every global batch got exactly Algorithm 1's capacities, so every epoch's mean too
    np.testing.assert_allclose(utilities, np.tile(
        expert_capacities(cfg.batch_size, b) / cfg.batch_size, (len(utilities), 1)), atol=1e-6)


def test_a_global_batch_the_replicas_do_not_split_is_refused(tmp_path):
    """Two logical CPUs (conftest.py) cannot split a batch of 15 in equal parts: refused
    before any stage runs."""
    task = ToyTask()
    cfg = config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                              verbose=0, batch_size=15, strategy="mirrored")
    with pytest.raises(config.ConfigError, match="--batch_size 15 does not split into 2 "
                                                 "equal replica parts"):
        pipeline.run(task, cfg, str(tmp_path / "wd"), command="toy")
    assert not os.path.exists(tmp_path / "wd")


def test_quantization_aware_gates_are_the_evaluated_ones_and_resume(toy_run, tmp_path):
    """--quantization_aware: each gate.json records the fine-tuning, gate/ is a QAT model
    (float_gate/ kept beside it), the data / experts / caches are reused, a second run
    skips everything; refused with a distributed strategy."""
    from gating_tflite import quantization_aware as qa

    task, cfg, workdir, _ = toy_run
    qcfg = dataclasses.replace(cfg, quantization_aware=True, methods=("enforce", "random"))
    wd = str(tmp_path / "wd")
    shutil.copytree(workdir, wd)
    report = pipeline.run(task, qcfg, wd, command="toy --quantization_aware")
    gate_dir = os.path.join(wd, "gates", "enforce", "shared")
    gate = qa.load_gate_model(os.path.join(gate_dir, "gate"))
    assert qa.is_quantization_aware(gate)
    assert not qa.is_quantization_aware(qa.load_gate_model(os.path.join(gate_dir, "float_gate")))
    with open(os.path.join(gate_dir, "gate.json")) as f:
        info = json.load(f)["history"]["quantization_aware"]
    assert info["epochs"] == 1 and info["learning_rate"] == pytest.approx(cfg.learning_rate / 10)
    again = pipeline.run(task, qcfg, wd, command="toy --quantization_aware")
    assert again["rho"] == report["rho"]
    with pytest.raises(config.ConfigError, match="--quantization_aware"):
        config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                            quantization_aware=True, strategy="mirrored")


def test_int8_weights_gates_are_on_the_grid_and_evaluated(toy_run, tmp_path):
    """--int8_weights: the saved gate's kernels lie on TFLite's int8 grid (gate.json says
    so; the evaluation loads that gate), the data / experts / caches are reused, a second
    run skips everything; refused with --quantization_aware."""
    from gating_tflite import int8_weights, quantization_aware as qa

    task, cfg, workdir, float_report = toy_run
    icfg = dataclasses.replace(cfg, int8_weights=True, methods=("enforce", "random"))
    wd = str(tmp_path / "wd")
    shutil.copytree(workdir, wd)
    report = pipeline.run(task, icfg, wd, command="toy --int8_weights")
    gate_dir = os.path.join(wd, "gates", "enforce", "shared")
    gate = qa.load_gate_model(os.path.join(gate_dir, "gate"))
    assert int8_weights.int8_grid_error(gate) < 1e-3
    float_gate = qa.load_gate_model(os.path.join(workdir, "gates", "enforce", "shared", "gate"))
    assert int8_weights.int8_grid_error(float_gate) > 0.1  # the float run's gate is not
    with open(os.path.join(gate_dir, "gate.json")) as f:
        assert json.load(f)["int8_weights"] is True
    assert report["rho"]["random"] == float_report["rho"]["random"]
    again = pipeline.run(task, icfg, wd, command="toy --int8_weights")
    assert again["rho"] == report["rho"]
    with pytest.raises(config.ConfigError, match="--int8_weights and --quantization_aware"):
        config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                            quantization_aware=True, int8_weights=True)


def test_gate_seed_retrains_only_the_gates(toy_run, tmp_path, capsys):
    """--gate_seed: data / experts / caches / b are reused (their stage keys unchanged), the
    gates train from other initial weights and data order; --gate_seed equal to --seed is
    the run itself (nothing reruns); a negative value is refused."""
    from gating_tflite import quantization_aware as qa

    task, cfg, workdir, report = toy_run
    wd = str(tmp_path / "wd")
    shutil.copytree(workdir, wd)
    capsys.readouterr()
    same = pipeline.run(task, dataclasses.replace(cfg, gate_seed=cfg.seed), wd, command="toy")
    assert "running ..." not in capsys.readouterr().out and same["rho"] == report["rho"]
    other = dataclasses.replace(cfg, gate_seed=cfg.seed + 7, methods=("enforce", "random"))
    seeded = pipeline.run(task, other, wd, command="toy --gate_seed")
    for stage in ("data", "experts", "cache", "bias"):
        with open(os.path.join(wd, "stages", f"{stage}.json")) as a, \
                open(os.path.join(workdir, "stages", f"{stage}.json")) as b:
            assert json.load(a)["fingerprint"] == json.load(b)["fingerprint"], stage
    with open(os.path.join(wd, "stages", "gates.json")) as f:
        assert json.load(f)["settings"]["seed"] == cfg.seed + 7
    kernels = [qa.load_gate_model(os.path.join(d, "gates", "enforce", "shared", "gate"))
               .trainable_weights[0].numpy() for d in (workdir, wd)]
    assert not np.allclose(kernels[0], kernels[1])
    assert seeded["rho"]["random"] == report["rho"]["random"]
    with pytest.raises(config.ConfigError, match="--gate_seed must be >= 0, got -1"):
        config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                            gate_seed=-1)


def test_gate_restarts_keep_the_best_on_validation_and_resume(toy_run, tmp_path, capsys):
    """--gate_restarts=3: three enforce gates (restart 0 is the single training's gate),
    the one with the best mean validation metric over its b is copied into the gate's
    directory (the evaluation routes that one), chosen.json records every score, and a
    second run trains nothing."""
    from experiments import gates as gates_lib
    from gating_tflite import quantization_aware as qa

    task, cfg, workdir, report = toy_run
    rcfg = dataclasses.replace(cfg, gate_restarts=3, methods=("enforce", "random"))
    wd = str(tmp_path / "wd")
    shutil.copytree(workdir, wd)
    result = pipeline.run(task, rcfg, wd, command="toy --gate_restarts=3")
    directory = os.path.join(wd, "gates", "enforce", "shared")
    with open(os.path.join(directory, "chosen.json")) as f:
        chosen = json.load(f)
    seeds = [r["seed"] for r in chosen["restarts"]]
    assert seeds == [gates_lib.restart_seed(cfg.seed, k) for k in range(3)]
    assert seeds[0] == cfg.seed and len(set(seeds)) == 3
    scores = [r["validation_metric"] for r in chosen["restarts"]]
    assert chosen["restart"] == int(np.argmax(scores))
    # each score is the mean validation metric of that restart's routing over the gated b
    split = task.split(cfg, None, task.data, "validation")
    points = [p for p in pipeline.read_bias(pipeline.Layout(wd)) if max(p.bias) < 1 - 1e-9]
    kernels = []
    for k in range(3):
        gate = qa.load_gate_model(os.path.join(directory, "candidates", f"r{k}", "gate"))
        kernels.append(gate.trainable_weights[0].numpy())
        logits = gate.predict(split.gate_inputs, verbose=0)
        want = np.mean([split.metric(pipeline.gate_assignment(logits, p.bias, cfg.batch_size,
                                                              seed=cfg.eval_batch_seed))
                        for p in points])
        assert scores[k] == pytest.approx(want)
    kept = qa.load_gate_model(os.path.join(directory, "gate")).trainable_weights[0].numpy()
    np.testing.assert_array_equal(kept, kernels[chosen["restart"]])
    single = qa.load_gate_model(os.path.join(workdir, "gates", "enforce", "shared", "gate"))
    np.testing.assert_allclose(kernels[0], single.trainable_weights[0].numpy(), atol=1e-6)
    capsys.readouterr()
    again = pipeline.run(task, rcfg, wd, command="toy --gate_restarts=3")
    out = capsys.readouterr().out
    assert "running ..." not in out and "chosen in" in out
    assert again["rho"] == result["rho"]
    with pytest.raises(config.ConfigError, match="--gate_restarts must be >= 1, got 0"):
        config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                            gate_restarts=0)
