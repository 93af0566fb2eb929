"""gating_tflite.cli: the export command line, its terminal output and exit codes."""
import json
import os
import runpy
import sys

import numpy as np
import pytest
from absl.testing import flagsaver

from gating_tflite import cli, export
from gating_tflite.calibration import EXPORT_FILE, ExportData

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]
pytest.register_assert_rewrite("tests.gating_tflite.tflite_fixtures")
from tests.gating_tflite.tflite_fixtures import NEAR_TIE_BIAS, near_tie_data, near_tie_gate  # noqa: E402,E501
from tests.gating_tflite.tflite_fixtures import export_cli as run_cli  # noqa: E402


@pytest.fixture(scope="module")
def files(saved_near_tie_gate, tmp_path_factory):
    """``{gate, npz, npz_fit}``: the near-tie gate (b = 0.4, 0.4, 0.2 in its gate.json), its
    four input sets, and only the two that conversion needs (a budget check, no quality)."""
    root = tmp_path_factory.mktemp("cli")
    data = near_tie_data()
    np.savez(root / "cal.npz", representative=data.representative,
             calibration=data.calibration, heldout=data.heldout, test=data.test)
    np.savez(root / "fit.npz", representative=data.representative,
             calibration=data.calibration[:200])
    return {"gate": saved_near_tie_gate, "npz": str(root / "cal.npz"),
            "npz_fit": str(root / "fit.npz")}


@pytest.fixture
def near_tie_task(tmp_path):
    """``tmp_path`` as the workdir of a task ``near_tie``: its export_data.npz holds the
    near-tie gate's inputs (what the pipeline writes at the end of a run)."""
    data = near_tie_data()
    data.task = "near_tie"
    data.save(str(tmp_path / EXPORT_FILE))


def test_a_logits_gate_that_misses_b_warns_and_exits_0(files, near_tie_task, tmp_path, capsys):
    out = tmp_path / "fw" / "gate.tflite"
    code, stdout, stderr = run_cli(
        capsys, f"--gate={files['gate']}", f"--calibration={tmp_path}", "--task=near_tie",
        f"--out={out}", "--output=logits", "--target=stm32h743", "--emit_c")
    assert code == 0, stderr
    with open(tmp_path / "fw" / "export_report.json") as f:
        report = json.load(f)
    assert set(report) == export.ExportReport.__dataclass_fields__.keys() - {"metric",
                                                                              "data_cost"}
    assert report["bias"] == NEAR_TIE_BIAS.tolist() and report["output"] == "logits"
    # the float gate holds b; its int8 logits tie experts 0 and 1, so int8 routing cannot
    freq, float_freq = np.array(report["frequencies"]), np.array(report["frequencies_float"])
    assert np.max(np.abs(float_freq - NEAR_TIE_BIAS)) <= 0.05
    assert report["frequency_error"] == pytest.approx(np.max(np.abs(freq - NEAR_TIE_BIAS)))
    assert report["frequency_error"] > 0.1 and report["checks"]["frequencies"] is False
    assert report["data"] == {"source": "near-tie fixture"}  # from the workdir's file
    (warning,) = [line for line in stderr if line.startswith("WARNING:")]
    assert warning.startswith("WARNING: --output=logits: the int8 gate's frequencies "
                              f"{np.round(report['frequencies'], 3).tolist()} on 600 held-out "
                              "inputs miss b [0.4, 0.4, 0.2] by ")
    assert "gate_router.c" in warning and "use --output=index" in warning
    assert "checks       missed: ['agreement', 'frequencies']" in stdout and "fits: True" in stdout
    assert os.path.exists(tmp_path / "fw" / "gate_ops.h")


def test_int16_activations_hold_b_where_int8_logits_tie(near_tie_task, tmp_path, capsys):
    """A near-tie gate with gaps <= 0.02 between experts 0 and 1 (int8 steps ~0.014: they
    tie, as in the test above) exported with int16 logits (steps ~1e-4) holds b and the
    float gate's choices: 16x8 model, int16 input and logits, no C router."""
    gate_dir = tmp_path / "wide" / "shared"
    near_tie_gate(gap=0.02).save(str(gate_dir / "gate"), include_optimizer=False)
    with open(gate_dir / "gate.json", "w") as f:
        json.dump({"bias": NEAR_TIE_BIAS.tolist()}, f)
    out = tmp_path / "fw16" / "gate.tflite"
    code, stdout, stderr = run_cli(
        capsys, f"--gate={gate_dir}", f"--calibration={tmp_path}", "--task=near_tie",
        f"--out={out}", "--output=logits", "--activations=int16", "--target=stm32h743",
        "--emit_c")
    assert code == 0, stderr
    with open(tmp_path / "fw16" / "export_report.json") as f:
        report = json.load(f)
    assert report["activations"] == "int16"
    assert report["input"]["dtype"] == "INT16" and report["output_tensor"]["dtype"] == "INT16"
    # the calibration set is routed at b exactly; the held-out set as the float gate
    # routes it (which misses b there by 3.5 points: a sample of other brightness levels)
    np.testing.assert_allclose(report["frequencies_calibration"], NEAR_TIE_BIAS, atol=1e-9)
    np.testing.assert_allclose(report["frequencies"], report["frequencies_float"], atol=0.005)
    assert report["agreement"]["heldout_tflm"] >= 0.99 and report["agreement"]["tflm"] >= 0.99
    assert "(ptq, output=logits, int16 activations)" in stdout
    assert not os.path.exists(tmp_path / "fw16" / "gate_router.c")
    with open(tmp_path / "fw16" / "gate_model.h") as f:
        header = f.read()
    assert "// Input: int16 [1, 16, 16, 3]" in header and "-32768, 32767)." in header
    assert "// Output: int16 [1, kGateNumExperts] logits." in header


@pytest.mark.parametrize("flags, message", [
    (["--activations=int16"], "int16 activations export with --output=logits: the TFLite "
     "converter has no 16x8 ARG_MAX (got --output=index)"),
    (["--activations=int16", "--output=logits", "--mode=qat"],
     "--activations=int16 exports with --mode=ptq"),
    (["--activations=int4"], "--activations"),
])
def test_int16_flag_combinations_are_refused_before_any_work(files, tmp_path, capsys, flags,
                                                            message):
    code, _, stderr = run_cli(capsys, f"--gate={files['gate']}",
                              f"--calibration=npz:{tmp_path / 'missing.npz'}",
                              f"--out={tmp_path / 'g.tflite'}", *flags)
    assert code == 2 and stderr[-1].startswith("error: ") and message in stderr[-1]


def test_strict_exits_3_and_still_warns(files, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, f"--gate={files['gate']}",
                              f"--calibration=npz:{files['npz']}",
                              f"--out={tmp_path / 'g.tflite'}", "--output=logits", "--strict")
    assert code == 3
    assert stderr[-2].startswith("WARNING: --output=logits: the int8 gate's frequencies")
    assert stderr[-1] == "error: quality checks missed: ['agreement', 'frequencies']"
    assert os.path.exists(tmp_path / "export_report.json")  # written in every case but 2


def test_a_gate_that_does_not_fit_exits_1(files, tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, f"--gate={files['gate']}",
                                   f"--calibration=npz:{files['npz_fit']}",
                                   f"--out={tmp_path / 'g.tflite'}", "--ram_kib=1", "--bias=1,0,0",
                                   "--strict")
    assert code == 1
    assert stderr[-1].startswith("error: the gate does not fit the target: the TFLite Micro "
                                 "arena needs ")
    assert stderr[-1].endswith("more than the 1 KiB of custom")
    with open(tmp_path / "export_report.json") as f:
        report = json.load(f)
    assert report["target"] == {"name": "custom", "flash_kib": None, "ram_kib": 1.0, "fits": False}
    assert report["bias"] == [1.0, 0.0, 0.0] and report["checks"] == {}
    assert report["frequencies_calibration"] == [1.0, 0.0, 0.0]
    assert not any(line.startswith("WARNING") for line in stderr)
    assert "fits: False" in stdout


def _bad_inputs(files, tmp_path):
    """(flags, text the error line must hold) for inputs that must exit 2 before any work."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "no_model").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "saved_model.pb").write_bytes(b"not a protobuf")
    (tmp_path / "gate.tflite").write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 32)
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 broken")
    gate, cal = f"--gate={files['gate']}", f"--calibration=npz:{files['npz']}"
    out = f"--out={tmp_path / 'out' / 'g.tflite'}"
    return [
        ([gate, cal, f"--out={tmp_path}"], f"--out={tmp_path} is a directory"),
        ([gate, cal, f"--out={tmp_path / 'a_file' / 'g.tflite'}"], "a_file is a file"),
        ([f"--gate={tmp_path / 'no_model'}", cal, out], "no_model holds no saved_model.pb"),
        ([f"--gate={tmp_path / 'corrupt'}", cal, out], "cannot load the gate SavedModel"),
        ([f"--gate={tmp_path / 'gate.tflite'}", cal, out], "gate.tflite: a file, not a gate"),
        ([gate, f"--calibration=npz:{tmp_path / 'corrupt.npz'}", out],
         "corrupt.npz: cannot read it as .npz"),
        ([gate, f"--calibration={tmp_path}", "--task=no_such_task", out],
         f"--calibration={tmp_path}: no {EXPORT_FILE} (the experiment writes it"),
        ([gate, cal, out, "--target=esp32"], "known targets"),
        ([cal, out], "--gate is required"),
        ([gate, cal, out, "--bias=0.5,half"], "--bias must be numbers"),
        ([gate, cal, out, "--bias=0.5,0.5"], "--bias"),
        ([gate, cal, out, "--router_crossing=0"], "--router_crossing must be a positive"),
        ([gate, cal, out, "--bucket_bytes=-5"], "--bucket_bytes must be a positive"),
    ]


def test_bad_inputs_exit_2_with_one_error_line(files, tmp_path, capsys):
    for argv, text in _bad_inputs(files, tmp_path):
        code, stdout, stderr = run_cli(capsys, *argv)
        assert code == 2, (argv, stderr)
        assert len(stderr) == 1 and stderr[0].startswith("error: ") and text in stderr[0], (
            argv, stderr)
    assert not os.path.exists(tmp_path / "out" / "export_report.json")


def test_a_gate_of_another_task_is_refused_in_one_line_before_any_work(files, tmp_path,
                                                                       capsys):
    """An action workdir (24 x 24 x 16 motion maps) with the near-tie gate (another input):
    one error line naming both shapes and the task, exit 2, nothing written."""
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(40, 24, 24, 16)).astype(np.float32)
    ExportData(representative=clips[:10], calibration=clips, test=clips[:8],
               task="action").save(str(tmp_path / EXPORT_FILE))
    out = tmp_path / "fw" / "gate.tflite"
    code, stdout, stderr = run_cli(capsys, f"--gate={files['gate']}", "--task=action",
                                   f"--calibration={tmp_path}", f"--out={out}")
    assert code == 2 and stdout == ""
    shape = list(near_tie_data().calibration.shape[1:])
    assert stderr == [f"error: the gate takes inputs {shape} but the action task's export "
                      "data are [24, 24, 16] (a gate of another task?)"]
    assert not os.path.exists(out.parent / "export_report.json")


def test_help_lists_the_export_flags_and_exits_0(capsys):
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as stop:
        cli.parse_flags(["bmoe-export-gate", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and "Exit codes: 0 exported and fits" in text
    assert text.startswith("usage: python -m gating_tflite.export (or bmoe-export-gate) --gate=")
    for name in ("gate", "calibration", "task", "out", "mode", "output", "target", "flash_kib",
                 "ram_kib", "[no]emit_c", "bias", "[no]strict", "router_crossing",
                 "bucket_bytes", "qat_epochs"):
        assert f"--{name}" in text, name
    assert "--helpfull" not in text and "--verbosity" not in text  # only the export's own


def test_bad_flag_values_exit_2(capsys):
    for argv in (["--mode=fp16"], ["--output=softmax"], ["--qat_epochs=many"], ["--no_such=1"]):
        with flagsaver.flagsaver(), pytest.raises(SystemExit) as stop:
            cli.parse_flags(["bmoe-export-gate", *argv])
        assert stop.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: ") and argv[0].split("=")[0][2:] in line
    code, _, stderr = run_cli(capsys, "extra")
    assert code == 2
    assert stderr == ["error: unexpected arguments ['extra'] (flags are --name=value)"]


@pytest.mark.parametrize("module", ["gating_tflite.export", "gating_tflite"])
def test_module_entry_points_run_the_cli(module, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["x", "--gate=g", "--calibration=npz:c.npz",
                                      f"--out={tmp_path}"])
    monkeypatch.delitem(sys.modules, module, raising=False)  # runpy runs a fresh copy
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as stop:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out={tmp_path} is a directory; give the path of the .tflite to write "
        f"(e.g. {tmp_path / 'gate.tflite'})"]
