"""--data_cost=encoded through experiments.pipeline, on the toy task with a payload per
input (in-process): the expert table in bytes, b from the LP on the mean bytes, every
curve point at the realised mean bytes of its routing, the byte-budget oracle with its
bound, the byte-aware curve within its target on every batch, the gates trained in bytes
(``--methods=bytes``)."""
import dataclasses
import json
import os

import numpy as np
import pytest

from bmoe_tf.payload import Raw
from experiments import config, pipeline
from experiments.task import Split
from tests.experiments.test_pipeline_toy_task import ToyTask, f1

#: one worker builds the module's runs (pytest-xdist, make test)
pytestmark = pytest.mark.xdist_group("pipeline_encoded")


def toy_bytes(x, d=(4.0, 8.0, 16.0)):
    """Whole bytes of each toy input's payload per expert: ``ceil(4 d_n (1 + |x_0|))`` (a
    content-dependent size, as a codec gives; whole bytes, as a link carries)."""
    return np.ceil(4.0 * np.outer(1.0 + np.abs(np.asarray(x)[:, 0]), d))


class EncodedToyTask(ToyTask):
    """The toy task whose experts' payloads cost each input its own bytes
    (:func:`toy_bytes`)."""

    def codecs(self, cfg):
        return [Raw() for _ in range(3)]

    def training_set(self, cfg, wd, data):
        train = super().training_set(cfg, wd, data)
        if not cfg.encoded:
            return train
        return dataclasses.replace(train, costs=toy_bytes(data["train"]["x"],
                                                          self.data_costs(cfg)))

    def split(self, cfg, wd, data, name):
        d = data[name]
        costs = None
        if cfg.encoded:
            costs = toy_bytes(d["x"], self.data_costs(cfg))
        return Split(gate_inputs=d["x"], scores=d["hits"] - d["false"] / 2,
                     metric=lambda a: f1(d, np.asarray(a)), costs=costs)


def _cfg(task, methods=("enforce", "random", "benchmark", "oracle"), **kw):
    """The toy smoke config without the soft gates (the byte accounting is the same for
    every gate method)."""
    return config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                               verbose=0, methods=methods, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoded")
    task = EncodedToyTask()
    wd = str(root / "encoded")
    cfg = _cfg(task, data_cost="encoded",
               methods=("enforce", "bytes", "random", "benchmark", "oracle"))
    return task, {"encoded": (wd, pipeline.run(task, cfg, wd, command="toy"))}


def _json(wd, name):
    with open(os.path.join(wd, name)) as f:
        return json.load(f)


def test_an_encoded_runs_cache_key_records_the_codecs(runs):
    """(A paper run's key has no data_cost: tests/experiments/test_pipeline_toy_task.py.)"""
    _, out = runs
    wd, report = out["encoded"]
    assert _json(wd, "stages/cache.json")["settings"]["data_cost"] == "encoded"
    assert _json(wd, "stages/cache.json")["settings"]["codecs"] == [
        {"codec": "raw", "dtype": "uint8"}] * 3
    assert report["experts"][0]["paper_data_cost"] == 4.0
    assert set(report["bytes_saved"]) >= {"method", "bytes", "experts_bytes", "saving"}


def test_the_expert_table_and_b_are_in_encoded_bytes(runs):
    task, out = runs
    wd = out["encoded"][0]
    rows = _json(wd, "experts.json")
    with np.load(os.path.join(wd, "data", "validation.npz")) as f:
        costs = toy_bytes(f["x"])
    for n, (row, d) in enumerate(zip(rows, (4.0, 8.0, 16.0))):
        assert row["paper_data_cost"] == d
        assert row["data_cost"] == pytest.approx(costs[:, n].mean())
        v = row["bytes"]["validation"]
        assert v["p5"] < v["mean"] < v["p95"]
        assert v["p5"] == pytest.approx(np.percentile(costs[:, n], 5))
    means = np.array([r["data_cost"] for r in rows])
    for point in _json(wd, "bias.json"):
        b = np.array(point["bias"])
        assert b @ means == pytest.approx(point["target"], rel=1e-6)
        assert means.min() - 1e-9 <= point["target"] <= means.max() + 1e-9


def test_every_curve_point_is_at_its_routings_mean_bytes(runs):
    task, out = runs
    wd = out["encoded"][0]
    with np.load(os.path.join(wd, "data", "test.npz")) as f:
        x = f["x"]
    costs = toy_bytes(x)
    test = _json(wd, "evaluation.json")["test"]
    for method in ("enforce",):
        for index, routing in test["subsets"][method].items():
            picks = np.array(routing["picks"])
            realised = costs[np.arange(len(picks)), picks].mean()
            point = [p for p in test["points"][method] if p["target"] == routing["target"]][0]
            assert point["cost"] == pytest.approx(realised)
    # the byte-budget oracle: a bound above its value at every target
    bounds = test["oracle_bounds"]
    assert len(bounds) == len(test["points"]["oracle"])
    assert all(b["bound"] >= b["value"] - 1e-9 and b["gap"] >= 0 for b in bounds)
    for p in test["points"]["oracle"]:  # within its target wherever the target is affordable
        if p["target"] >= costs.min(axis=1).mean():
            assert p["cost"] <= p["target"] * (1 + 1e-9)


def test_the_byte_aware_curve_keeps_every_batch_within_its_target(runs):
    task, out = runs
    wd, report = out["encoded"]
    assert "enforce_bytes" in report["curves"]
    test = _json(wd, "evaluation.json")["test"]
    cheapest = None
    with np.load(os.path.join(wd, "data", "test.npz")) as f:
        cheapest = (4.0 * (1.0 + np.abs(f["x"][:, 0]))).mean()
    means = [r["data_cost"] for r in _json(wd, "experts.json")]
    checked = 0
    for p in test["points"]["enforce_bytes"]:
        single = np.isclose(p["target"], min(means)) or np.isclose(p["target"], max(means))
        if not single and p["target"] >= cheapest * 1.3:  # batches of 16: room to spare
            assert p["cost"] <= p["target"] * (1 + 1e-9), p
            checked += 1
    assert checked >= 2


def test_the_bytes_gates_train_and_route_each_batch_within_their_targets(runs):
    """--methods=bytes: one gate per gated target, trained with every training batch's
    payload bytes within the target (gate.json's per-epoch data_cost: bytes), routed the
    same way on the test split; its curve has a rho."""
    task, out = runs
    wd, report = out["encoded"]
    assert "bytes" in report["curves"] and "bytes" in report["rho"]
    with np.load(os.path.join(wd, "data", "train.npz")) as f:
        cheapest_train = toy_bytes(f["x"])[:, 0].mean()
    with np.load(os.path.join(wd, "data", "test.npz")) as f:
        cheapest = toy_bytes(f["x"])[:, 0].mean()
    points = _json(wd, "bias.json")
    trained = budgeted = 0
    for index, point in enumerate(points):
        directory = os.path.join(wd, "gates", "bytes", str(index))
        if np.isclose(max(point["bias"]), 1.0):
            assert not os.path.exists(directory)  # one expert: no gate
            continue
        info = _json(directory, "gate.json")
        assert info["method"] == "enforce_bytes"
        assert info["byte_target"] == pytest.approx(point["target"])
        if point["target"] >= 1.3 * cheapest_train:
            assert max(info["history"]["data_cost"]) <= point["target"] * (1 + 1e-6)
            budgeted += 1
        trained += 1
    assert trained >= 1 and budgeted >= 1
    test = _json(wd, "evaluation.json")["test"]
    checked = 0
    for p in test["points"]["bytes"]:
        if p["target"] >= 1.3 * cheapest:
            assert p["cost"] <= p["target"] * (1 + 1e-9), p
            checked += 1
    assert checked >= 2
    with pytest.raises(config.ConfigError, match="--methods=bytes .* --data_cost=encoded"):
        _cfg(task, methods=("enforce", "bytes"))


def test_encoded_is_refused_for_a_task_without_codecs():
    with pytest.raises(config.ConfigError, match="--data_cost=encoded: the toy task declares no"):
        _cfg(ToyTask(), data_cost="encoded")
    with pytest.raises(config.ConfigError, match="--data_cost takes"):
        _cfg(ToyTask(), data_cost="bytes")
    assert dataclasses.replace(_cfg(ToyTask()), data_cost="encoded").encoded


def test_a_target_outside_the_encoded_range_is_named_and_the_caches_are_kept(runs, tmp_path):
    import shutil

    task, out = runs
    wd = str(tmp_path / "copy")
    shutil.copytree(out["encoded"][0], wd)
    cfg = _cfg(task, data_cost="encoded", targets=config.Targets(costs=(1e6,)))
    with pytest.raises(config.ConfigError, match=r"--targets: 1e\+06 is outside \[.*\], the "
                       r"range of the experts' mean encoded bytes on the validation split"):
        pipeline.run(task, cfg, wd, command="toy")
    assert sorted(os.listdir(os.path.join(wd, "cache"))) == sorted(
        os.listdir(os.path.join(out["encoded"][0], "cache")))


def test_the_scene_shift_stage_holds_each_target_in_bytes(runs):
    """In an encoded run the scene-shift controllers are byte controllers: each point's
    budget is its target (the validation means' b . d), every row counts each input's own
    bytes, the soft controller spends its target within 1% on the toy test split where the
    stream can (the test inputs are another sample than the validation inputs the targets
    come from), the hard one is never over its bucket."""
    _, by = runs
    wd, report = by["encoded"]
    ss = report.get("scene_shift")
    assert ss and ss["controller"] == "bytes"
    targets = {i: p["target"] for i, p in enumerate(report["bias"])}
    for point in ss["points"]:
        rows = {r["method"]: r for r in point["rows"]}
        assert rows["controller"]["budget"] == pytest.approx(point["target"], rel=1e-9)
        assert point["target"] == pytest.approx(targets[point["index"]])
        assert rows["controller_hard"]["bucket_overrun_bytes"] == 0.0
        assert rows["controller"]["window_slack_bytes"] is None
        soft = rows["controller"]
        if soft["reachable_cost"] >= 1.01 * soft["budget"]:  # the stream can spend it
            assert abs(soft["mean_vs_budget_pct"]) < 1.0, point
        else:
            assert soft["mean_cost"] <= soft["reachable_cost"] + 1e-9
            assert soft["mean_vs_budget_pct"] < 1.0
