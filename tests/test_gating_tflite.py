"""int8 export of a gate: TFLite Micro / LiteRT choices, frequencies, C files, budgets, ops."""
import json
import os

import numpy as np
import pytest

from bmoe_tf.backend import keras
from bmoe_tf.gating import compact_gate
from bmoe_tf.routing import calibrate_offsets
from gating_tflite import c_array, convert, interpreters, model_file
from gating_tflite.calibration import ExportData, load_export_data
from gating_tflite.export import export_gate, load_gate_and_bias
from gating_tflite.targets import TARGETS, Target, resolve_target

SHAPE = (16, 16, 3)
BIAS = np.array([0.5, 0.3, 0.2])


def _inputs(m, seed):
    """Frames whose brightness sets the best expert: smooth noise around a level."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.1, 0.9, size=(m, 1, 1, 1))
    return np.clip(level + 0.05 * rng.standard_normal((m,) + SHAPE), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def gate():
    """A tiny trained gate: brightness thirds -> experts 0, 1, 2 (well-separated logits)."""
    keras.utils.set_random_seed(0)
    model = compact_gate(SHAPE, 3, filters=(8,), hidden_units=8)
    x = _inputs(1500, 1)
    y = np.digitize(x.mean(axis=(1, 2, 3)), [0.37, 0.63])
    model.compile(keras.optimizers.Adam(3e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    assert np.mean(np.argmax(model.predict(x, verbose=0), 1) == y) > 0.9  # it learned
    return model


@pytest.fixture(scope="module")
def data():
    return ExportData(representative=_inputs(200, 2), calibration=_inputs(3000, 3),
                      heldout=_inputs(3000, 4), test=_inputs(300, 5),
                      test_metric=lambda a: float(np.mean(np.asarray(a) == 2)),
                      metric_name="share of expert 2",
                      data_costs=np.array([1.0, 2.0, 4.0]), expert_names=("a", "b", "c"))


@pytest.fixture(scope="module")
def exported(gate, data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "gate.tflite")
    report, problems = export_gate(gate, data, BIAS, out=out, output="index",
                                   target=resolve_target("stm32h743"), emit_c=True)
    return out, report, problems


def test_index_export_matches_the_float_gate(gate, data, exported):
    out, report, problems = exported
    assert problems == [] and report["target"]["fits"] is True
    with open(out, "rb") as f:
        tflite = f.read()
    assert report["flash_bytes"] == len(tflite)
    assert report["ops"][-1] == "ARG_MAX" and "ADD" not in report["ops"]  # offsets folded
    model_file.check_fully_int8(tflite)
    (inp,), (outp,) = model_file.model_io(tflite)
    assert inp.dtype == "INT8" and inp.shape == (1,) + SHAPE and outp.dtype == "INT32"
    # fixed inputs: TFLM and LiteRT choose what the float gate chooses
    offsets = np.asarray(report["offsets_float"], np.float32)
    reference = convert.float_decisions(gate, data.test, offsets)
    tflm = interpreters.run_tflm(tflite, data.test, report["arena_bytes"]).reshape(-1)
    litert = interpreters.run_litert(tflite, data.test).reshape(-1)
    assert np.mean(tflm == reference) >= 0.98
    assert np.mean(litert == tflm) >= 0.99
    assert report["agreement"]["tflm"] == pytest.approx(np.mean(tflm == reference))
    assert report["agreement"]["litert"] >= 0.98
    # the metric is computed from the int8 choices
    assert report["metric"]["int8"] == pytest.approx(np.mean(tflm == 2))


def test_index_frequencies_on_heldout_inputs_are_near_b(exported, data):
    _, report, _ = exported
    freq = np.asarray(report["frequencies"])
    assert freq.sum() == pytest.approx(1.0)
    assert np.max(np.abs(freq - BIAS)) <= 0.03
    assert report["frequency_error"] == pytest.approx(np.max(np.abs(freq - BIAS)))
    assert report["data_cost"]["budget"] == pytest.approx(BIAS @ data.data_costs)
    assert report["data_cost"]["heldout"] == pytest.approx(freq @ data.data_costs)


def test_smallest_arena_is_tight(exported):
    out, report, _ = exported
    with open(out, "rb") as f:
        tflite = f.read()
    arena = report["arena_bytes"]
    frame = np.zeros((1,) + SHAPE, np.float32)
    interpreters.run_tflm(tflite, frame, arena)  # runs
    with pytest.raises(interpreters.TFLMError, match="arena"):
        interpreters.run_tflm(tflite, frame, arena - 64)


def test_report_json_has_the_documented_keys(exported):
    out, report, _ = exported
    with open(os.path.join(os.path.dirname(out), "export_report.json")) as f:
        saved = json.load(f)
    for key in ("flash_bytes", "arena_bytes", "macs", "ops", "agreement", "frequencies",
                "bias", "target"):
        assert key in saved, key
    assert set(saved["agreement"]) >= {"litert", "tflm"}
    assert set(saved["target"]) == {"name", "flash_kib", "ram_kib", "fits"}
    assert saved["macs"] > 0 and saved["bias"] == pytest.approx(BIAS.tolist())


def test_c_array_round_trip(exported):
    out, report, _ = exported
    directory = os.path.dirname(out)
    with open(out, "rb") as f:
        tflite = f.read()
    with open(os.path.join(directory, "gate_model.cc")) as f:
        assert c_array.parse_c_array(f.read()) == tflite
    with open(os.path.join(directory, "gate_ops.h")) as f:
        ops_h = f.read()
    assert f"MicroMutableOpResolver<{len(report['ops'])}>" in ops_h
    assert ops_h.count("resolver.Add") == len(report["ops"])
    assert "AddArgMax()" in ops_h and "AddFullyConnected()" in ops_h
    with open(os.path.join(directory, "gate_model.h")) as f:
        header = f.read()
    scale = report["input"]["scale"]
    assert f"kGateInputZeroPoint = {report['input']['zero_point']};" in header
    value = float(header.split("kGateInputScale = ")[1].split("f;")[0])
    assert value == pytest.approx(scale, rel=1e-7)
    assert "kGateArenaSize" in header and "kGateInputChannels = 3" in header


def test_parse_c_array_rejects_a_wrong_length():
    text = c_array.c_array_source(b"\x01\x02\x03").replace("_len = 3", "_len = 4")
    with pytest.raises(ValueError, match="does not match"):
        c_array.parse_c_array(text)


def test_logits_output_routes_with_offsets(gate, data, tmp_path):
    report, _ = export_gate(gate, data, BIAS, out=str(tmp_path / "g.tflite"), output="logits")
    assert report["ops"][-1] != "ARG_MAX" and report["output_tensor"]["dtype"] == "INT8"
    assert report["agreement"]["tflm"] >= 0.98
    assert np.max(np.abs(np.asarray(report["frequencies"]) - BIAS)) <= 0.03


def test_qat_export_agrees_with_the_float_gate(gate, data, tmp_path):
    report, _ = export_gate(gate, data, BIAS, out=str(tmp_path / "q.tflite"), mode="qat",
                            qat_epochs=1)
    assert report["mode"] == "qat" and report["ops"][-1] == "ARG_MAX"
    assert report["agreement"]["tflm"] >= 0.97


def test_budget_check_fails_as_it_should(gate, data, exported):
    _, report, _ = exported
    tight = Target("tiny", flash_kib=report["flash_bytes"] / 1024 - 1,
                   ram_kib=report["arena_bytes"] / 1024 - 1)
    problems = tight.check(report["flash_bytes"], report["arena_bytes"])
    assert len(problems) == 2 and "flash" in problems[0] and "arena" in problems[1]
    assert not tight.as_dict(report["flash_bytes"], report["arena_bytes"])["fits"]
    roomy = Target("roomy", report["flash_bytes"] / 1024, report["arena_bytes"] / 1024)
    assert roomy.check(report["flash_bytes"], report["arena_bytes"]) == []


def test_target_presets():
    assert resolve_target("STM32H743") == Target("stm32h743", 2048, 1024, 480)
    assert resolve_target("stm32f767").ram_kib == 512
    assert resolve_target("imxrt1060").flash_kib is None  # external flash: not checked
    assert resolve_target("imxrt1060", flash_kib=8192).flash_kib == 8192
    assert resolve_target(None, ram_kib=64) == Target("custom", None, 64)
    assert resolve_target().check(10**9, 10**9) == []
    assert all(k == k.lower() for k in TARGETS)
    with pytest.raises(ValueError, match="known targets"):
        resolve_target("esp32")
    with pytest.raises(ValueError, match="> 0"):
        resolve_target("stm32h743", flash_kib=0)


def test_an_op_tflite_micro_lacks_is_refused(data, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(8, activation="gelu")(x)  # GELU: no TFLM kernel
    gelu_gate = keras.Model(inputs, keras.layers.Dense(3)(x))
    with pytest.raises(interpreters.UnsupportedOpError, match="GELU"):
        export_gate(gelu_gate, data, BIAS, out=str(tmp_path / "gelu.tflite"))


def test_a_float_model_is_not_fully_int8():
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    from bmoe_tf.backend import tf
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(ValueError, match="not int8"):
        model_file.check_fully_int8(tflite)
    with pytest.raises(ValueError, match="TFL3"):
        model_file.model_ops(b"not a model at all")


def test_fold_offsets_shifts_logits_and_keeps_the_gate(gate, data):
    offsets = np.array([1.0, -2.0, 0.5], np.float32)
    folded = convert.fold_offsets(gate, offsets)
    x = data.test[:16]
    np.testing.assert_allclose(folded.predict(x, verbose=0),
                               gate.predict(x, verbose=0) + offsets, rtol=1e-5, atol=1e-5)
    assert len(folded.layers) == len(gate.layers)  # folded into the bias, no extra layer
    with pytest.raises(ValueError, match="one per expert"):
        convert.fold_offsets(gate, [1.0, 2.0])


def test_export_rejects_bad_arguments(gate, data, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        export_gate(gate, data, BIAS, out=str(tmp_path / "x.tflite"), mode="fp16")
    with pytest.raises(ValueError, match="output"):
        export_gate(gate, data, BIAS, out=str(tmp_path / "x.tflite"), output="softmax")
    with pytest.raises(ValueError):
        export_gate(gate, data, [0.5, 0.6, 0.1], out=str(tmp_path / "x.tflite"))


def test_npz_calibration_and_gate_loading(gate, data, tmp_path):
    path = tmp_path / "cal.npz"
    np.savez(path, representative=data.representative, calibration=data.calibration)
    loaded = load_export_data(f"npz:{path}")
    assert loaded.heldout is None and loaded.calibration.shape == data.calibration.shape
    with pytest.raises(ValueError, match="lacks"):
        np.savez(tmp_path / "bad.npz", calibration=data.calibration)
        load_export_data(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(ValueError, match="unknown task"):
        load_export_data(str(tmp_path), task="detection")
    saved = tmp_path / "g" / "gate"
    gate.save(str(saved), include_optimizer=False)
    with pytest.raises(ValueError, match="gate.json"):
        load_gate_and_bias(str(saved))
    with open(tmp_path / "g" / "gate.json", "w") as f:
        json.dump({"bias": [0.2, 0.3, 0.5]}, f)
    _, b, source = load_gate_and_bias(str(tmp_path / "g"))
    assert b.tolist() == [0.2, 0.3, 0.5] and source.endswith("gate.json")
    _, b, _ = load_gate_and_bias(str(saved), bias=[1, 0, 0])
    assert b.tolist() == [1.0, 0.0, 0.0]


def test_offsets_reproduce_b_on_the_calibration_set(gate, data):
    logits = gate.predict(data.calibration, verbose=0)
    offsets = calibrate_offsets(logits, BIAS)
    freq = np.bincount(np.argmax(logits + offsets, 1), minlength=3) / len(logits)
    np.testing.assert_allclose(freq, BIAS, atol=1e-3)


@pytest.mark.parametrize("clip", [1e-3, 0.5, 50.0])
def test_pairwise_routing_head_keeps_the_argmax_for_any_clip(clip):
    """s_a - s_b >= 2 clip((z_a - z_b)/C) > 0: the float head routes exactly as argmax(z)."""
    keras.utils.set_random_seed(1)
    gate = compact_gate(SHAPE, 4, filters=(8,), hidden_units=8)
    gate.layers[-1].set_weights([w * 40 for w in gate.layers[-1].get_weights()])  # wide logits
    x = _inputs(400, 9)
    offsets = np.array([0.5, -1.0, 2.0, -0.2], np.float32)
    used = np.array([True, True, False, True])
    z = gate.predict(x, verbose=0) + offsets
    z[:, ~used] = -np.inf
    head = convert.fold_offsets(gate, offsets, used=used, clip=clip)
    scores = head.predict(x, verbose=0)
    assert [layer.name for layer in head.layers[-2:]] == ["routing_pairs", "routing"]
    assert head.layers[-2].units == 3  # K(K-1)/2 pairs of the 3 used experts
    np.testing.assert_array_equal(np.argmax(scores, 1), np.argmax(z, 1))
    assert np.all(scores[:, 2] == -3.0)  # the unused expert is never chosen


def test_routing_clip_is_the_median_top_two_gap():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, -9.0], [1.0, 0.0, 4.0]])
    assert convert.routing_clip(logits, np.zeros(3), [True, True, True]) == pytest.approx(2.0)
    assert convert.routing_clip(logits, np.zeros(3), [True, True, False]) == pytest.approx(1.0)


def test_the_compact_sr_gate_fits_a_cortex_m7(tmp_path):
    """The issue's budget for the compact SR gate: <= 256 KiB flash, 128 KiB arena, 5 M MACs."""
    from bmoe_tf.gating import count_macs
    keras.utils.set_random_seed(0)
    gate = compact_gate((64, 64, 3), 3)
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (64, 64, 64, 3)).astype(np.float32)
    sr = ExportData(representative=frames[:32], calibration=frames, test=frames[:8])
    report, problems = export_gate(gate, sr, [0.5, 0.5, 0.0], out=str(tmp_path / "c.tflite"),
                                   target=resolve_target(None, flash_kib=256, ram_kib=128))
    assert problems == [] and report["target"]["fits"]
    assert report["flash_bytes"] <= 256 * 1024 and report["arena_bytes"] <= 128 * 1024
    assert report["macs"] == count_macs(gate) <= 5_000_000
    assert "frequencies" not in report  # no held-out set given
    from gating_tflite.export import summary
    assert "flash" in summary(report) and "fits: True" in summary(report)
