"""Smoke run of `python -m experiments.super_resolution`: report schema and resuming (on
the session's shared smoke workdir, tests/conftest.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.smoke_runs import ROOT, SR_SMOKE_FLAGS, sr_run


@pytest.fixture
def smoke(sr_smoke):
    """The shared smoke workdir (conftest.py) and what the run printed."""
    return sr_smoke


def test_smoke_run_writes_the_report(smoke):
    workdir, stdout = smoke
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    assert report["task"] == "super_resolution"
    assert [e["scale"] for e in report["experts"]] == [4, 3, 2]
    for e in report["experts"]:
        assert set(e) >= {"name", "scale", "data_cost", "psnr"}
    assert [e["data_cost"] for e in report["experts"]] == [16 * 16 * 12, 21 * 21 * 12, 32 * 32 * 12]
    assert set(report["curves"]) >= {"enforce", "soft", "random", "benchmark", "oracle"}
    for method, curve in report["curves"].items():
        assert all(len(point) == 2 for point in curve), method
    assert set(report["rho"]) == {"enforce", "soft", "random", "benchmark", "oracle"}
    assert set(report["at"]) == {"d_max", "d_max/2", "d_max/3"}
    # at d_max every method is the x2 expert alone
    assert len(set(round(v, 6) for v in report["at"]["d_max"].values())) == 1
    # the oracle is an upper bound for every gate at every target
    for method in ("enforce", "soft", "random"):
        for (_, p), (_, q) in zip(report["curves"][method], report["curves"]["oracle"]):
            assert p <= q + 1e-6
    assert report["commands"] and "experiments.super_resolution" in report["commands"][0]
    extra = report["eval_images"]  # --eval_image_dir, reported separately
    assert set(extra) >= {"curves", "rho", "at"} and "enforce" in extra["rho"]
    assert report["parts"]["eval"] == 4  # 256x256 at half size: 2x2 parts
    for name in ("report.md", "reports/fig6_psnr_vs_cost.png", "reports/fig7_assignments.png",
                 "experts/espcn_x2/saved_model.pb", "cache/train_mse.npz",
                 "gates/enforce/shared/gate/saved_model.pb", "gates/enforce/shared/logs",
                 "gates/soft/1/candidates/w1/gate/saved_model.pb", "gates/soft/1/chosen.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "Proposed b enforcement" in stdout


def test_every_stage_resumes(smoke, sr_resumed, sr_extra_images, tmp_path, capsys):
    before, again = sr_resumed  # the smoke command run once more on its finished workdir
    assert " running" not in again  # every stage skipped
    assert again.count("skipped") >= 10
    # lose one gate and the evaluation (of a copy): only those are redone (in-process)
    workdir = str(tmp_path / "wd")
    shutil.copytree(smoke[0], workdir)
    shutil.rmtree(os.path.join(workdir, "gates", "enforce", "shared"))
    os.remove(os.path.join(workdir, "evaluation.json"))
    capsys.readouterr()
    sr_run(workdir, f"--eval_image_dir={sr_extra_images}")
    third = capsys.readouterr().out
    running = [line for line in third.splitlines() if line.endswith("running ...")]
    assert running == ["[gate enforce/shared] running ...", "[evaluation] running ..."]
    with open(os.path.join(workdir, "report.json")) as f:
        after = json.load(f)
    assert after["rho"]["random"] == before["rho"]["random"]
    assert after["rho"]["oracle"] == before["rho"]["oracle"]


@pytest.mark.slow
def test_quick_preset_meets_the_bar(tmp_path):
    """The demo's claim (about 3 minutes): `pytest -m slow tests/experiments/super_resolution/test_task.py`."""
    workdir = str(tmp_path / "quick")
    cmd = [sys.executable, "-m", "experiments.super_resolution", f"--workdir={workdir}",
           "--preset=quick", "--verbose=0",
           "--methods=enforce,random,benchmark,oracle"]  # the bar reads no soft gate
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    rho = report["rho"]
    assert rho["enforce"] > rho["random"]
    assert rho["enforce"] > rho["benchmark"]
    assert report["oracle_gain_share"]["enforce"] >= 0.4


def test_a_workdir_made_with_other_settings_is_refused(smoke):
    workdir, _ = smoke
    cmd = [sys.executable, "-m", "experiments.super_resolution", f"--workdir={workdir}",
           *SR_SMOKE_FLAGS, "--seed=7"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "seed: 0 -> 7" in proc.stdout + proc.stderr


def test_export_cli_on_the_smoke_gate(smoke, tmp_path, capsys):
    """The paper SR gate (3.3 M weights) is exported, checked, and refused by the budget
    (the export CLI in this process: tests/gating_tflite/tflite_fixtures.export_cli)."""
    from tests.gating_tflite.tflite_fixtures import export_cli

    workdir, _ = smoke
    out = tmp_path / "paper" / "gate.tflite"
    argv = [f"--gate={workdir}/gates/enforce/shared", f"--calibration={workdir}",
            f"--out={out}", "--target=stm32h743", "--emit_c"]
    # bad flags fail clearly before any work
    code, _, stderr = export_cli(capsys, *argv[:-2], "--target=esp32")
    assert code == 2 and "known targets" in "\n".join(stderr) and not out.parent.exists()
    code, stdout, stderr = export_cli(capsys, *argv)
    err = "\n".join(stderr)
    assert code == 1, err[-3000:]
    assert "does not fit the target" in err and "flash" in err
    with open(tmp_path / "paper" / "export_report.json") as f:
        report = json.load(f)
    assert report["flash_bytes"] > 2048 * 1024 and report["target"]["fits"] is False
    assert report["ops"][-1] == "ARG_MAX"
    assert report["agreement"]["inputs"] > 0 and 0 <= report["agreement"]["tflm"] <= 1
    assert len(report["frequencies"]) == 3 and report["metric"]["name"].startswith("test PSNR")
    assert os.path.exists(tmp_path / "paper" / "gate_model.cc")
    assert "flash" in stdout and "agreement" in stdout
    # the index head has no logits for gate_router.c; the scene shift is in the report
    assert not os.path.exists(tmp_path / "paper" / "gate_router.c")
    assert set(report["scene_shift"]) == {"static", "controller", "controller_hard",
                                          "per_batch", "per_frame"}
    assert report["router"]["logits"] == "float gate"
    # (a model that fits exits 0: tests/gating_tflite/test_cli.py, on a small gate)


def test_the_sr_oracle_maximises_the_mean_psnr_better_than_the_summed_error(smoke):
    """The MM oracle (D25) is at least the summed-error optimum, and at least every one
    of 300 random routings with the same capacities, on the test split."""
    import numpy as np

    from bmoe_tf import evaluation
    from experiments import config
    from experiments.layout import Layout
    from experiments.super_resolution import PRESETS, SuperResolutionTask

    workdir, _ = smoke
    task = SuperResolutionTask()
    cfg = config.build_config(task, preset_name="smoke", preset=PRESETS["smoke"], verbose=0)
    wd = Layout(workdir)
    test = task.split(cfg, wd, task.load_data(cfg, wd), "test")  # the caches are there
    rng = np.random.default_rng(0)
    for b in ([0.2, 0.5, 0.3], [0.6, 0.4, 0.0]):
        mm = test.oracle_assignment(b)
        sse = evaluation.oracle_assignment(test.scores, b)
        assert np.array_equal(np.bincount(mm, minlength=3), np.bincount(sse, minlength=3))
        best = test.metric(mm)
        assert best >= test.metric(sse) - 1e-12
        for _ in range(300):
            assert test.metric(rng.permutation(sse)) <= best + 1e-9


def test_the_cache_built_in_three_shards_is_the_single_process_cache(smoke,
                                                                     sharded_cache_matches):
    """What a 3-worker run (--strategy=multi_worker) writes: every split's cache, built
    in 3 shards and merged, equals the one-process cache byte for byte."""
    from experiments import config
    from experiments.super_resolution import PRESETS, SuperResolutionTask

    task = SuperResolutionTask()
    cfg = config.build_config(task, preset_name="smoke", preset=PRESETS["smoke"], verbose=0)
    made = sharded_cache_matches(task, cfg, smoke[0], 3)
    assert made == ["test_outputs.npz", "train_mse.npz", "validation_outputs.npz"]


def test_encoded_experts_see_decoded_payloads_and_the_bytes_are_theirs(smoke, tmp_path):
    """--data_cost=encoded on the smoke workdir's data and experts: the bytes cache of the
    test parts is each part's shared-table JPEG payload at the expert's scale, and the
    experts' outputs are made from the decoded payloads (not the float parts)."""
    import numpy as np

    from bmoe_tf import payload
    from bmoe_tf.backend import tf
    from experiments import config, pipeline
    from experiments.layout import Layout
    from experiments.super_resolution import PRESETS, SuperResolutionTask
    from experiments.super_resolution import models as sr_models

    workdir, _ = smoke
    task = SuperResolutionTask()
    cfg = config.build_config(task, preset_name="smoke", preset=PRESETS["smoke"], verbose=0,
                              data_cost="encoded")
    src = Layout(workdir)
    data = task.load_data(cfg, src)
    experts = task.build_experts(cfg, src, data)  # loaded (trained already), with codecs
    assert [e.codec for e in experts] == [payload.Jpeg(90, shared_tables=True)] * 3
    parts = data["test"].parts[:8]
    wd = Layout(str(tmp_path / "enc"))
    job = pipeline.bytes_cache_job(wd, "test", parts, experts)
    job.save(job.path, job.build(1, 0))
    costs = pipeline.load_bytes(wd, "test", 8, 3)
    for n, scale in enumerate((4, 3, 2)):  # P_n's low-resolution part, as uint8
        low = payload.to_uint8(experts[n].preprocess(tf.constant(parts)).numpy())
        assert low.shape[1] == sr_models.low_resolution_size(scale)
        assert costs[:, n].tolist() == payload.payload_sizes(experts[n].codec, low).tolist()
    assert (costs[:, 0] < costs[:, 2]).all() and costs.max() < 3 * 32 * 32
    seen = experts[2](tf.constant(parts)).numpy()
    plain = sr_models.load_expert(src.expert_dir("espcn_x2"), 2, "espcn")(tf.constant(parts))
    assert seen.shape == plain.shape and 0 < np.abs(seen - plain.numpy()).mean() < 0.05


def test_gate_mirror_adds_each_training_part_mirrored_with_its_scores(smoke):
    """--gate_mirror: the gates' training set is the parts then the same parts mirrored
    left-right, each mirror carrying its part's cache rows; the assumption behind it
    (ESPCN's error on a mirrored part is near its error on the part) is measured on the
    smoke experts: the per-part MSE of each expert on mirrored parts correlates > 0.99
    with the originals'."""
    import dataclasses

    import numpy as np

    from bmoe_tf.backend import tf
    from experiments import config
    from experiments.layout import Layout
    from experiments.super_resolution import PRESETS, SuperResolutionTask

    workdir, _ = smoke
    task = SuperResolutionTask()
    cfg = config.build_config(task, preset_name="smoke", preset=PRESETS["smoke"], verbose=0)
    wd = Layout(workdir)
    data = task.load_data(cfg, wd)
    plain = task.training_set(cfg, wd, data)
    mcfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, gate_mirror=True))
    mirrored = task.training_set(mcfg, wd, data)
    m = len(plain.gate_inputs)
    assert len(mirrored.gate_inputs) == 2 * m
    np.testing.assert_array_equal(mirrored.gate_inputs[:m], plain.gate_inputs)
    np.testing.assert_array_equal(mirrored.gate_inputs[m:], plain.gate_inputs[:, :, ::-1])
    for key in ("residual_gram", "residual_target", "target_energy"):
        np.testing.assert_array_equal(mirrored.cache[key][m:], plain.cache[key])
    assert mirrored.cache["kind"] == plain.cache["kind"]
    experts = task.build_experts(cfg, wd, data)
    parts = np.asarray(plain.gate_inputs[:64], np.float32)
    errors = []  # [view][expert] per-part MSE
    for x in (parts, parts[:, :, ::-1].copy()):
        errors.append(np.stack([((e(tf.constant(x)).numpy() - x) ** 2).mean(axis=(1, 2, 3))
                                for e in experts]))
    original, flipped = errors
    for n in range(len(experts)):
        assert np.corrcoef(original[n], flipped[n])[0, 1] > 0.99
    # what the gate learns is the gap between experts: it survives the mirror too
    gap = np.corrcoef(original[0] - original[-1], flipped[0] - flipped[-1])[0, 1]
    assert gap > 0.95, gap
