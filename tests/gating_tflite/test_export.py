"""gating_tflite.export: the export steps, the typed report, gate loading, output checks."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest

from bmoe_tf.backend import keras
from bmoe_tf.gating import compact_gate, count_macs
from gating_tflite import convert, export, interpreters, model_file
from gating_tflite.calibration import ExportData
from gating_tflite.export import (CHECKS, ExportReport, HeldoutResult, TestResult, export_gate,
                                  load_gate_and_bias)
from gating_tflite.targets import Target, resolve_target
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import BIAS, NEAR_TIE_BIAS, SHAPE  # noqa: E402

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]

#: export_report.json's keys with test and held-out inputs, costs, a clock and --emit_c.
ALL_KEYS = {"model", "mode", "output", "activations", "flash_bytes", "arena_bytes", "macs", "parameters", "ops",
            "input", "output_tensor", "bias", "offsets", "offsets_float", "routing_clip",
            "int8_correction", "frequencies_calibration", "expert_names", "data",
            "latency_ms_estimate", "latency_assumption", "agreement", "frequencies_test",
            "metric", "frequencies", "frequencies_float", "frequency_error", "heldout_inputs",
            "data_cost", "target", "checks", "check_thresholds", "seconds", "firmware_files",
            "scene_shift", "router"}


def test_index_export_matches_the_float_gate(gate, data, exported, tflite_bytes):
    out, report, problems = exported
    assert isinstance(report, ExportReport)
    assert problems == [] and report.target["fits"] is True
    assert report.flash_bytes == len(tflite_bytes) and report.model == os.path.abspath(out)
    assert report.ops[-1] == "ARG_MAX" and "ADD" not in report.ops  # offsets folded
    model_file.check_fully_int8(tflite_bytes)
    (inp,), (outp,) = model_file.model_io(tflite_bytes)
    assert inp.dtype == "INT8" and inp.shape == (1,) + SHAPE and outp.dtype == "INT32"
    # fixed inputs: TFLM and LiteRT choose what the float gate chooses
    offsets = np.asarray(report.offsets_float, np.float32)
    reference = convert.float_decisions(gate, data.test, offsets)
    tflm = interpreters.run_tflm(tflite_bytes, data.test, report.arena_bytes).reshape(-1)
    litert = interpreters.run_litert(tflite_bytes, data.test).reshape(-1)
    assert np.mean(tflm == reference) >= 0.98
    assert np.mean(litert == tflm) >= 0.99
    assert report.agreement["tflm"] == pytest.approx(np.mean(tflm == reference))
    assert report.agreement["litert"] >= 0.98 and report.agreement["inputs"] == 300
    # the metric is computed from the int8 choices
    assert report.metric["int8"] == pytest.approx(np.mean(tflm == 2))
    assert report.frequencies_test == pytest.approx(np.bincount(tflm, minlength=3) / 300)
    assert report.macs == count_macs(gate) and report.parameters == gate.count_params()
    assert report.latency_ms_estimate == pytest.approx(report.macs / 480e3)  # 480 MHz, 1 MAC/cycle


def test_index_frequencies_on_heldout_inputs_are_near_b(exported, data):
    _, report, _ = exported
    freq = np.asarray(report.frequencies)
    assert freq.sum() == pytest.approx(1.0) and report.heldout_inputs == 3000
    assert np.max(np.abs(freq - BIAS)) <= 0.03
    assert report.frequency_error == pytest.approx(np.max(np.abs(freq - BIAS)))
    assert report.data_cost["budget"] == pytest.approx(BIAS @ data.data_costs)
    assert report.data_cost["heldout"] == pytest.approx(freq @ data.data_costs)
    assert report.data_cost["test"] == pytest.approx(
        np.asarray(report.frequencies_test) @ data.data_costs)
    assert report.checks["frequencies"] == (report.frequency_error <= 0.02)
    assert (report.warnings == []) == (report.frequency_error <= 0.02)


def test_report_json_is_the_typed_report(exported):
    out, report, _ = exported
    with open(os.path.join(os.path.dirname(out), "export_report.json")) as f:
        saved = json.load(f)
    assert set(saved) == ALL_KEYS and saved == json.loads(json.dumps(report.as_dict()))
    assert list(saved)[:4] == ["model", "mode", "output", "activations"]
    assert saved["activations"] == "int8"
    assert set(saved["agreement"]) == {"litert", "tflm", "litert_vs_tflm", "inputs",
                                       "heldout_tflm"}
    assert set(saved["target"]) == {"name", "flash_kib", "ram_kib", "fits"}
    assert set(saved["metric"]) == {"name", "float", "int8", "drop"}
    assert set(saved["data_cost"]) == {"budget", "heldout", "test"}
    assert saved["check_thresholds"] == CHECKS and saved["routing_clip"] > 0
    assert saved["macs"] > 0 and saved["bias"] == pytest.approx(BIAS.tolist())
    assert [os.path.basename(p) for p in saved["firmware_files"]] == [
        "gate_model.h", "gate_model.cc", "gate_ops.h"]
    # optional fields that were not measured are left out, not written as null
    bare = ExportReport(**{k: v for k, v in vars(report).items()
                           if k not in ExportReport.OPTIONAL})
    assert set(bare.as_dict()) == ALL_KEYS - set(ExportReport.OPTIONAL)
    assert bare.as_dict()["int8_correction"] == report.int8_correction  # required, may be None


def test_summary_lines(exported):
    _, report, _ = exported
    text = export.summary(report)
    assert text == export.summary(report.as_dict())
    assert f"flash        {report.flash_bytes:,} B" in text
    assert "target       stm32h743: flash 2048 KiB, RAM 1024 KiB, fits: True" in text
    assert "held-out inputs (max error" in text and "agreement    LiteRT" in text


def test_quality_checks_data_cost_and_latency_steps():
    test = TestResult({"litert": 0.995, "tflm": 0.985, "litert_vs_tflm": 0.99, "inputs": 200},
                      np.array([0.5, 0.5, 0.0]), np.zeros(200, int),
                      {"name": "psnr", "float": 28.0, "int8": 27.96, "drop": 0.04})
    held = HeldoutResult(np.array([0.52, 0.48, 0.0]), np.array([0.5, 0.5, 0.0]), 0.99, 0.025, 500)
    assert export.quality_checks(test, held) == {"agreement": False, "metric": True,
                                                 "frequencies": False}
    assert export.quality_checks(None, None) == {}
    b = np.array([0.5, 0.5, 0.0])
    cost = export.data_cost(b, [1000.0, 3000.0, 9000.0], test, held)
    assert cost == pytest.approx({"budget": 2000.0, "heldout": 1960.0, "test": 2000.0})
    assert export.data_cost(b, None, test, held) is None
    assert export.latency_estimate(285_083, resolve_target("stm32h743"))[0] == pytest.approx(
        285_083 / 480e3)
    assert export.latency_estimate(10, Target("custom", None, 64)) == (None, None)


def test_logits_output_routes_with_offsets(gate, data, tmp_path):
    frames = np.repeat(np.arange(10), 30)  # the 300 test inputs as 10 frames of 30
    report, _ = export_gate(gate, dataclasses.replace(data, test_frames=frames), BIAS,
                            out=str(tmp_path / "g.tflite"), output="logits", emit_c=True)
    assert report.ops[-1] != "ARG_MAX" and report.output_tensor["dtype"] == "INT8"
    # scene shift: the test inputs in order, every method; the router files for the int8 logits
    rows = report.scene_shift
    assert list(rows) == ["static", "controller", "controller_hard", "per_batch", "per_frame"]
    np.testing.assert_allclose(rows["static"]["frequencies"], report.frequencies_test)
    budget = BIAS @ data.data_costs
    for name in ("controller", "controller_hard", "per_batch", "per_frame"):
        assert abs(rows[name]["mean_over"]) < 0.05, name
        assert rows[name]["budget"] == pytest.approx(budget)
    assert rows["controller_hard"]["worst_window_excess"] <= rows["controller_hard"][
        "bucket_bytes"] + 1e-9
    assert rows["per_frame"]["frequencies"] == pytest.approx(BIAS, abs=1 / 300 + 1e-9)
    assert report.router["crossing"] == export.ROUTER_CROSSING
    names = [os.path.basename(p) for p in report.firmware_files]
    assert names[-2:] == ["gate_router.h", "gate_router.c"]
    assert "#define GATE_ROUTER_NUM_EXPERTS 3" in (tmp_path / "gate_router.h").read_text()
    assert report.agreement["tflm"] >= 0.98
    assert np.max(np.abs(np.asarray(report.frequencies) - BIAS)) <= 0.03
    assert report.routing_clip is None and report.int8_correction is None
    assert "latency_ms_estimate" not in report.as_dict()  # no target, no clock


def test_warnings_name_the_frequencies_b_and_the_remedy(exported):
    """The warning's text; a real logits gate that misses b: tests/gating_tflite/test_cli.py."""
    _, report, _ = exported
    missed = dataclasses.replace(report, output="logits", frequencies=[0.785, 0.007, 0.208],
                                 bias=[0.4, 0.4, 0.2], frequency_error=0.385, heldout_inputs=600)
    assert missed.warnings == [
        "--output=logits: the int8 gate's frequencies [0.785, 0.007, 0.208] on 600 held-out "
        "inputs miss b [0.4, 0.4, 0.2] by 38.5 points (more than 2); firmware that routes with "
        "argmax(int8 logits + static offsets) will not hold b. Route with gate_router.c "
        "(--emit_c: its online controller holds b on any input sequence) or use --output=index "
        "(offsets folded into the model and recalibrated on the int8 model)."]
    (index_warning,) = dataclasses.replace(missed, output="index").warnings
    assert index_warning.endswith("by 38.5 points (more than 2); the sensor will not hold b "
                                  "with static offsets (the int8-logits export's gate_router.c "
                                  "holds it online: --output=logits --emit_c).")
    (int16_warning,) = dataclasses.replace(missed, activations="int16").warnings
    assert "the int16 gate's frequencies" in int16_warning and "Route with gate_router.c" not in int16_warning
    assert int16_warning.endswith("the C gate_router.c takes int8 logits), or calibrate on more "
                                  "inputs (--calibration) when the float gate misses b too "
                                  "(frequencies_float in the report).")
    assert dataclasses.replace(missed, frequency_error=0.02).warnings == []  # at the limit: ok
    assert dataclasses.replace(missed, frequency_error=None).warnings == []  # not measured


def test_qat_export_agrees_with_the_float_gate(gate, data, tmp_path):
    small = ExportData(representative=data.representative, calibration=data.calibration[:1000],
                       test=data.test)  # no held-out inputs: agreement only
    report, _ = export_gate(gate, small, BIAS, out=str(tmp_path / "q.tflite"), mode="qat",
                            qat_epochs=1, recalibration_rounds=0)
    assert report.mode == "qat" and report.ops[-1] == "ARG_MAX"
    assert report.agreement["tflm"] >= 0.97 and report.frequencies is None
    assert report.int8_correction == [0.0, 0.0, 0.0]  # no recalibration round


def test_an_op_tflite_micro_lacks_is_refused(data, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(8, activation="gelu")(x)  # GELU: no TFLM kernel
    gelu_gate = keras.Model(inputs, keras.layers.Dense(3)(x))
    small = ExportData(representative=data.representative[:50], calibration=data.calibration[:300])
    with pytest.raises(interpreters.UnsupportedOpError, match="GELU"):
        export_gate(gelu_gate, small, BIAS, out=str(tmp_path / "gelu.tflite"))
    assert os.listdir(tmp_path) == []  # nothing written: the report is written in every case but 2


def test_export_rejects_bad_arguments(gate, data, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        export_gate(gate, data, BIAS, out=str(tmp_path / "x.tflite"), mode="fp16")
    with pytest.raises(ValueError, match="output"):
        export_gate(gate, data, BIAS, out=str(tmp_path / "x.tflite"), output="softmax")
    with pytest.raises(ValueError):
        export_gate(gate, data, [0.5, 0.6, 0.1], out=str(tmp_path / "x.tflite"))
    with pytest.raises(ValueError, match="is a directory"):
        export_gate(gate, data, BIAS, out=str(tmp_path))
    with pytest.raises(ValueError, match="smaller than the largest data cost"):
        export_gate(gate, data, BIAS, out=str(tmp_path / "x.tflite"), bucket_bytes=1.5)
    with pytest.raises(ValueError, match="needs the experts' data costs"):
        export_gate(gate, dataclasses.replace(data, data_costs=None), BIAS,
                    out=str(tmp_path / "x.tflite"), bucket_bytes=100.0)


def test_check_output_path(tmp_path):
    out = tmp_path / "new" / "deeper" / "gate.tflite"
    assert export.check_output_path(str(out)) == str(out.parent) and out.parent.is_dir()
    assert not out.exists()  # nothing written yet
    with pytest.raises(ValueError, match=f"--out={tmp_path} is a directory"):
        export.check_output_path(str(tmp_path))
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "gate.tflite", tmp_path / "file" / "sub" / "gate.tflite"):
        with pytest.raises(ValueError, match=f"{tmp_path / 'file'} is a file, not a directory"):
            export.check_output_path(str(out))
    (tmp_path / "fw" / "gate_ops.h").mkdir(parents=True)
    export.check_output_path(str(tmp_path / "fw" / "gate.tflite"))  # no --emit_c: fine
    with pytest.raises(ValueError, match="gate_ops.h is a directory"):
        export.check_output_path(str(tmp_path / "fw" / "gate.tflite"), emit_c=True)
    (tmp_path / "r" / "export_report.json").mkdir(parents=True)
    with pytest.raises(ValueError, match="export_report.json is a directory"):
        export.check_output_path(str(tmp_path / "r" / "gate.tflite"))
    with pytest.raises(ValueError, match="--out is required"):
        export.check_output_path("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_check_output_path_unwritable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="cannot write in"):
        export.check_output_path(str(locked / "gate.tflite"))


def test_gate_loading(saved_near_tie_gate, tmp_path):
    gate, b, source = load_gate_and_bias(saved_near_tie_gate)  # a gate dir holding gate/
    assert b.tolist() == NEAR_TIE_BIAS.tolist() and source.endswith("shared/gate.json")
    assert gate.output_shape == (None, 3)
    np.testing.assert_allclose(gate.layers[-1].get_weights()[1], [0.0, -0.001, 2.4])
    saved = os.path.join(saved_near_tie_gate, "gate")
    _, b, source = load_gate_and_bias(saved, bias=[1, 0, 0])  # the SavedModel itself
    assert b.tolist() == [1.0, 0.0, 0.0] and source == "--bias"
    with pytest.raises(ValueError, match="--bias"):
        load_gate_and_bias(saved, bias=[0.5, 0.5])  # 2 values for 3 experts
    (tmp_path / "gate.json").write_text("{not json")
    os.symlink(saved, tmp_path / "gate")
    with pytest.raises(ValueError, match="cannot read .*gate.json"):
        load_gate_and_bias(str(tmp_path))
    (tmp_path / "gate.json").write_text('{"epochs": 3}')
    with pytest.raises(ValueError, match="gate.json has no 'bias'; pass --bias"):
        load_gate_and_bias(str(tmp_path))
    os.remove(tmp_path / "gate.json")
    with pytest.raises(ValueError, match="no --bias given and no gate.json"):
        load_gate_and_bias(str(tmp_path))


def test_gate_loading_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        load_gate_and_bias(str(tmp_path / "missing"))
    (tmp_path / "gate.tflite").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="gate.tflite: a file, not a gate SavedModel"):
        load_gate_and_bias(str(tmp_path / "gate.tflite"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no saved_model.pb"):
        load_gate_and_bias(str(tmp_path / "empty"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "saved_model.pb").write_bytes(b"garbage, not a protobuf")
    with pytest.raises(ValueError, match="cannot load the gate SavedModel .*corrupt"):
        load_gate_and_bias(str(tmp_path / "corrupt"))


def test_the_compact_sr_gate_fits_a_cortex_m7(tmp_path):
    """The issue's budget for the compact SR gate: <= 256 KiB flash, 128 KiB arena, 5 M MACs."""
    keras.utils.set_random_seed(0)
    gate = compact_gate((64, 64, 3), 3)
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (64, 64, 64, 3)).astype(np.float32)
    sr = ExportData(representative=frames[:32], calibration=frames, test=frames[:8])
    report, problems = export_gate(gate, sr, [0.5, 0.5, 0.0], out=str(tmp_path / "c.tflite"),
                                   target=resolve_target(None, flash_kib=256, ram_kib=128))
    assert problems == [] and report.target["fits"]
    assert report.flash_bytes <= 256 * 1024 and report.arena_bytes <= 128 * 1024
    assert report.macs == count_macs(gate) <= 5_000_000
    assert "frequencies" not in report.as_dict()  # no held-out set given
    assert "flash" in export.summary(report) and "fits: True" in export.summary(report)


def test_a_gate_of_another_input_is_refused_before_any_work(gate, tmp_path):
    """A gate whose input is not the data's (e.g. an SR gate on action clips) is refused
    with both shapes named, before the output folder or any model is made."""
    clips = np.zeros((8, 24, 24, 16), np.float32)
    other = ExportData(representative=clips[:4], calibration=clips, task="action")
    with pytest.raises(ValueError, match=re.escape(
            f"the gate takes inputs {list(SHAPE)} but the action task's export data are "
            "[24, 24, 16] (a gate of another task?)")):
        export_gate(gate, other, BIAS, out=str(tmp_path / "fw" / "g.tflite"))
    assert not (tmp_path / "fw").exists()
    export.check_gate_input(gate, ExportData(representative=np.zeros((1,) + SHAPE),
                                             calibration=np.zeros((3,) + SHAPE)))  # no error


def test_an_encoded_workdirs_test_bytes_give_the_byte_router(gate, data, tmp_path):
    """ExportData.test_costs (an encoded run's payload bytes per test input): the scene
    shift counts each input's own bytes against b . data_costs, the controllers hold that
    budget in bytes, and gate_router.c is the byte router; the file round-trips them."""
    from gating_tflite.calibration import ExportData

    rng = np.random.default_rng(0)
    m = len(data.test)
    costs = np.ceil(np.outer(rng.uniform(0.3, 0.9, size=m), data.data_costs))  # a plain scene
    encoded = dataclasses.replace(data, test_costs=costs)
    report, _ = export_gate(gate, encoded, BIAS, out=str(tmp_path / "g.tflite"),
                            output="logits", emit_c=True)
    rows = report.scene_shift
    budget = BIAS @ data.data_costs
    static = rows["static"]
    assert static["budget"] == pytest.approx(budget) and static["mean"] < 0.95 * budget
    assert abs(rows["controller"]["mean_over"]) < 0.02
    assert rows["controller_hard"]["worst_window_excess"] <= rows["controller_hard"][
        "bucket_bytes"] + 1e-9
    assert report.router["budget"].startswith("bytes")
    header = (tmp_path / "gate_router.h").read_text()
    assert "#define GATE_ROUTER_BYTE_MODE 1" in header and "gate_router_choose_bytes" in header
    path = str(tmp_path / "export_data.npz")
    dataclasses.replace(encoded, test_metric=None).save(path)
    np.testing.assert_array_equal(ExportData.load(path).test_costs, costs)
