"""The action CLI end to end (smoke preset, generated data), resumed; the data-cost
formulas; flags and folders refused before work; the report helpers; the quick-preset
bar (slow)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import config
from experiments.action import GATE_MV_CLIP, ActionTask, gate_input, mode_costs, paper_costs

CLI = [sys.executable, "-m", "experiments.action"]


def _run(args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=env)


# ---- data costs ------------------------------------------------------------------------
def test_mode_costs_follow_the_paper_formulas():
    # Temporal F_t x 24 x 24 x 2 x K, Spatial F_s x S x S x 3 x K, Fusion the sum (K = 4)
    d = mode_costs(16, 2, 96)
    assert d.tolist() == [16 * 24 * 24 * 2 * 4, 2 * 96 * 96 * 3 * 4,
                          16 * 24 * 24 * 2 * 4 + 2 * 96 * 96 * 3 * 4]
    assert d.tolist() == [73728.0, 221184.0, 294912.0]
    assert mode_costs(16, 2, 96, ("temporal", "fusion")).tolist() == [73728.0, 294912.0]


def test_paper_costs_implied_by_table_vi():
    p = paper_costs()
    assert p["stated"] == [691200.0, 2073600.0, 2764800.0]
    t, s, f = p["implied"]
    # the paper: d_max/3 = 860 kB, d_max/2 = 1290 kB; b = [0.8, 0.1, 0.1] costs 1032 kB and
    # the spatial expert 811 kB more
    assert round(f / 3 / 1000) == 860 and round(f / 2 / 1000) == 1290
    assert round((0.8 * t + 0.1 * s + 0.1 * f) / 1000) == 1032
    assert round((s - 0.8 * t - 0.1 * s - 0.1 * f) / 1000) == 811


def test_gate_input_stacks_maps_on_channels():
    mv = np.random.default_rng(0).normal(size=(2, 3, 24, 24, 2)).astype(np.float32)
    mv[0, 0, 0, 0] = [50.0, -50.0]
    x = gate_input(mv)
    assert x[0, 0, 0, 0] == GATE_MV_CLIP and x[0, 0, 0, 1] == -GATE_MV_CLIP
    mv = np.clip(mv, -GATE_MV_CLIP, GATE_MV_CLIP)
    assert x.shape == (2, 24, 24, 6)
    for t in range(3):
        np.testing.assert_array_equal(x[:, :, :, 2 * t], mv[:, t, :, :, 0])
        np.testing.assert_array_equal(x[:, :, :, 2 * t + 1], mv[:, t, :, :, 1])


def test_mirror_negates_horizontal_motion():
    from experiments.action.export_data import mirror

    x = np.random.default_rng(0).normal(size=(2, 24, 24, 4)).astype(np.float32)
    y = mirror(x)
    np.testing.assert_array_equal(y[:, :, ::-1, 0::2], -x[..., 0::2])
    np.testing.assert_array_equal(y[:, :, ::-1, 1::2], x[..., 1::2])
    np.testing.assert_array_equal(mirror(y), x)


def test_gate_view_in_tf_equals_gate_input():
    """The mixture's P_g (packed clips -> gate input, in TF) is gate_input of the MV maps."""
    from experiments.action.experts import pack

    cfg = _config()
    rng = np.random.default_rng(1)
    mv = (rng.normal(size=(3, 8, 24, 24, 2)) * 6).astype(np.float16)
    rgb = rng.integers(0, 256, size=(3, 2, 64, 64, 3)).astype(np.uint8)
    shape, view = ActionTask().gate_view(cfg)
    packed = pack(mv, rgb)
    assert packed.shape[1:] == shape
    np.testing.assert_array_equal(np.asarray(view(packed)), gate_input(mv))


# ---- report helpers --------------------------------------------------------------------
def test_assigned_accuracy_and_unreliable_routing():
    from experiments.action.report import assigned_accuracy, class_shares, unreliable_routing

    correct = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 0]], float)
    picks = np.array([0, 2, 2, 1])
    rows = assigned_accuracy(correct, picks, ["temporal", "spatial", "fusion"])
    assert [r["share"] for r in rows] == [0.25, 0.25, 0.5]
    assert [r["assigned"] for r in rows] == [100.0, 100.0, 100.0]
    assert [r["all"] for r in rows] == [50.0, 50.0, 75.0]
    routed = unreliable_routing(["temporal", "spatial", "fusion"],
                                np.array([False, True, True, False]), picks)
    assert routed["unreliable"] == {"temporal": 0.0, "spatial": 0.0, "fusion": 1.0}
    assert routed["reliable"] == {"temporal": 0.5, "spatial": 0.5, "fusion": 0.0}
    assert routed["rgb_unreliable"] == 1.0 and routed["rgb_reliable"] == 0.5
    assert unreliable_routing(["temporal", "fusion"], np.zeros(4, bool), picks) is None
    shares = class_shares([0, 1, 1, 0], ["a", "b"], picks, 2)
    assert [(r["cls"], r["clips"], r["share"]) for r in shares] == [("a", 2, 0.0),
                                                                    ("b", 2, 1.0)]


def test_tsne_embedding_keeps_separated_clusters_apart():
    from experiments.action.figures import embed

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(3, 10))[labels] * 8 + rng.normal(size=(60, 10))
    y = embed(x, seed=0)
    assert y.shape == (60, 2)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() == 1.0
    np.testing.assert_array_equal(y, embed(x, seed=0))
    with pytest.raises(ValueError, match="M >= 5"):
        embed(x[:4])


# ---- the CLI ---------------------------------------------------------------------------
def test_smoke_report_keys_and_costs(act_smoke):
    wd, first, _ = act_smoke
    report = json.loads((wd / "report.json").read_text())
    for key in ("task", "experts", "curves", "rho", "at", "oracle_gain_share"):
        assert key in report
    assert report["task"] == "action"
    assert [e["data_cost"] for e in report["experts"]] == mode_costs(8, 2, 64).tolist()
    assert [e["mode"] for e in report["experts"]] == ["temporal", "spatial", "fusion"]
    assert all(e["compressed_bytes"] > 0 for e in report["experts"])
    assert report["generated_data"] is True
    assert report["clip"]["gate_input"] == [24, 24, 16]
    for method in ("enforce", "soft", "random", "benchmark", "oracle"):
        assert method in report["curves"]
    for e in report["experts"]:
        assert 0.0 <= e["metric"] <= 100.0
    assert report["assigned_accuracy"]["enforce"]
    for name in ("fig8_accuracy_vs_cost.png", "fig9_tsne.png", "fig10_fusion_by_class.png"):
        assert (wd / "reports" / name).exists(), name
    md = (wd / "report.md").read_text()
    assert "Table VI layout" in md and "paper MV-3DCNN" in md and "paper EMV-CNN" in md
    assert "Table VII layout" in md and "generated" in md
    # the oracle maximises the number of correct clips: no routing beats it at its b
    for method, pts in report["points"].items():
        for pt, orc in zip(pts, report["points"]["oracle"]):
            assert pt["metric"] <= orc["metric"] + 1e-9, method


def test_smoke_resume_skips_and_gives_same_numbers(act_smoke):
    wd, first, second = act_smoke
    for stage in ("data", "expert temporal", "expert fusion", "cache test probabilities",
                  "evaluation"):
        assert any(line.startswith(f"[{stage}") and "skipped" in line
                   for line in second.stdout.splitlines()), stage
    report = json.loads((wd / "report.json").read_text())
    evaluation = json.loads((wd / "evaluation.json").read_text())
    assert report["rho"] == evaluation["test"]["rho"]


def _config(*argv, data=None):
    task = ActionTask()
    return config.from_argv(task, ["--workdir=x", "--preset=smoke", *argv]
                            + ([f"--data={data}"] if data else []))


@pytest.mark.parametrize("argv, message", [
    (["--modes=temporal"], "--modes takes two or three distinct modes"),
    (["--modes=fusion,temporal"], "--modes must be listed cheapest first"),
    (["--modes=temporal,optical_flow"], "--modes takes two or three"),
    (["--mv_frames=0"], "--mv_frames must be in [1, 160]"),
    (["--frame_size=63"], "--frame_size must be even"),
    (["--expert_epochs=1,2,3"], "--expert_epochs takes one or two values"),
    (["--unreliable_share=1.5"], "--unreliable_share must be in [0, 1]"),
    (["--train_clips=8"], "--train_clips 8 is smaller than --batch_size 16"),
])
def test_bad_flags_are_refused(argv, message):
    with pytest.raises(config.ConfigError) as err:
        _config(*argv)
    assert message in str(err.value)


def test_modes_and_epochs_from_flags():
    cfg = _config("--modes=temporal,fusion", "--expert_epochs=3",
                  "--gate_target=log_likelihood")
    assert cfg.task.gate_target == "log_likelihood"
    assert _config().task.gate_target == "correct"
    assert cfg.task.modes == ("temporal", "fusion")
    assert cfg.task.expert_epochs == (3, 3)
    assert ActionTask().data_costs(cfg).tolist() == mode_costs(8, 2, 64,
                                                               ("temporal", "fusion")).tolist()


def test_a_folder_without_classes_is_refused_and_nothing_kept(tmp_path):
    """What the CLI runs, in this process: the error it prints as its one line names the
    folder (tests/experiments/test_cli.py checks that line on the command line)."""
    from experiments import pipeline
    from experiments.cli import USER_ERRORS

    data = tmp_path / "videos"
    data.mkdir()
    (data / "loose.avi").write_bytes(b"not a video")
    wd = tmp_path / "wd"
    cfg = config.from_argv(ActionTask(), ["--preset=smoke", f"--workdir={wd}",
                                          f"--data=folder:{data}", "--verbose=0"])
    with pytest.raises(USER_ERRORS) as err:
        pipeline.run(ActionTask(), cfg, str(wd))
    assert str(data) in str(err.value)
    assert not (wd / "data" / "split.json").exists()


@pytest.mark.slow
def test_quick_preset_meets_the_bar(tmp_path):
    """The issue's bar on the bundled default: enforce above random and the benchmark."""
    wd = tmp_path / "quick"
    out = _run(["--preset=quick", f"--workdir={wd}", "--verbose=0"], timeout=2400)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    rho = report["rho"]
    assert rho["enforce"] > rho["random"] and rho["enforce"] > rho["benchmark"]
    # clips with degraded vectors go to Fusion more often, on average over the budgets
    for method in ("enforce", "soft"):
        routed = report["unreliable_routing"][method]
        assert np.mean([e["unreliable"]["fusion"] for e in routed]) > np.mean(
            [e["reliable"]["fusion"] for e in routed]), method


def test_export_data_and_int8_gate_of_the_smoke_workdir(act_smoke, tmp_path):
    """The action task's export data (what the pipeline writes to export_data.npz, which
    gating_tflite reads); the compact int8 gate runs in TFLite Micro and fits 256 KiB
    flash / 256 KiB arena."""
    from experiments.action.export_data import mirror
    from experiments.tasks import get_task

    wd, _, _ = act_smoke
    data = get_task("action").export_data(str(wd))
    report = json.loads((wd / "report.json").read_text())
    assert data.representative.shape[1:] == (24, 24, 16)
    assert len(data.test) == report["examples"]["test"]
    np.testing.assert_array_equal(data.heldout, mirror(data.calibration))
    assert np.abs(data.test).max() <= GATE_MV_CLIP
    assert np.isclose(data.test_metric(np.full(len(data.test), 2)), report["experts"][2]["metric"])
    from gating_tflite.calibration import load_export_data

    stored = load_export_data(str(wd), task="action")
    np.testing.assert_array_equal(stored.test, data.test)
    for n in range(3):
        assert stored.test_metric(np.full(len(data.test), n)) == data.test_metric(
            np.full(len(data.test), n))
    with pytest.raises(ValueError, match="not a finished action workdir"):
        get_task("action").export_data(str(tmp_path))
    out = tmp_path / "fw" / "gate.tflite"
    cmd = [sys.executable, "-m", "gating_tflite.export", "--task=action",
           f"--gate={wd}/gates/enforce/shared", f"--calibration={wd}", f"--out={out}",
           "--target=stm32h743", "--flash_kib=256", "--ram_kib=256"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    export = json.loads((tmp_path / "fw" / "export_report.json").read_text())
    assert export["target"]["fits"] is True
    assert export["flash_bytes"] < 256 * 1024 and export["arena_bytes"] < 256 * 1024
    assert export["metric"]["name"].startswith("test top-1 accuracy")


def test_the_cache_built_in_two_shards_is_the_single_process_cache(act_smoke,
                                                                   sharded_cache_matches):
    """What a 2-worker run writes: each worker's share of the experts' probabilities,
    merged, and the scores made from them, equal the one-process cache byte for byte."""
    from experiments.action import ActionTask

    task = ActionTask()
    cfg = config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                              verbose=0)
    made = sharded_cache_matches(task, cfg, act_smoke[0], 2)
    assert len(made) == 6 and "train_probabilities.npz" in made


def test_encoded_experts_see_decoded_payloads_and_fusion_pays_both(act_smoke, tmp_path):
    """--data_cost=encoded on the smoke workdir's clips and experts: the bytes cache holds
    each clip's payload per mode (Fusion = Temporal + Spatial exactly; Temporal = the
    int8 zlib stream the data records plus its length prefix), and the Spatial expert
    classifies the decoded JPEG frames."""
    import numpy as np

    from bmoe_tf.backend import tf
    from experiments import config, pipeline
    from experiments.action import ActionTask
    from experiments.action.experts import pack
    from experiments.layout import Layout

    workdir, _, _ = act_smoke
    task = ActionTask()
    cfg = config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                              verbose=0, data_cost="encoded")
    src = Layout(workdir)
    data = task.load_data(cfg, src)
    experts = task.build_experts(cfg, src, data)
    assert [e.codec for e in experts] == task.codecs(cfg)
    clips = data["test"]
    wd = Layout(str(tmp_path / "enc"))
    job = pipeline.bytes_cache_job(wd, "test", pack(clips.mv, clips.rgb), experts, batch_size=8)
    job.save(job.path, job.build(1, 0))
    costs = pipeline.load_bytes(wd, "test", len(clips), 3)
    np.testing.assert_array_equal(costs[:, 2], costs[:, 0] + costs[:, 1])
    prefix = np.where(clips.mv_bytes < 128, 1, 2)
    np.testing.assert_array_equal(costs[:, 0], clips.mv_bytes + prefix)
    assert (costs[:, 1] < clips.rgb.shape[1] * clips.rgb[0, 0].size).all()  # JPEG < raw
    x = tf.constant(pack(clips.mv[:8], clips.rgb[:8]))
    plain = task.build_experts(config.build_config(
        task, preset_name="smoke", preset=task.presets()["smoke"], verbose=0), src, data)
    seen, raw = experts[1](x).numpy(), plain[1](x).numpy()
    assert seen.shape == raw.shape and 0 < np.abs(seen - raw).mean() < 0.2
    np.testing.assert_allclose(experts[0](x).numpy(), plain[0](x).numpy(), atol=1e-5)
