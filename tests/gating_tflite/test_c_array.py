"""gating_tflite.c_array: the firmware files (C array, op resolver, I/O header)."""
import os

import pytest

from gating_tflite import c_array

pytest_plugins = ["tests.gating_tflite.tflite_fixtures"]


def test_c_array_round_trip(exported, tflite_bytes):
    out, report, _ = exported
    directory = os.path.dirname(out)
    assert report.firmware_files == [os.path.join(directory, n) for n in c_array.FIRMWARE_FILES]
    with open(os.path.join(directory, "gate_model.cc")) as f:
        assert c_array.parse_c_array(f.read()) == tflite_bytes
    with open(os.path.join(directory, "gate_ops.h")) as f:
        ops_h = f.read()
    assert f"MicroMutableOpResolver<{len(report.ops)}>" in ops_h
    assert ops_h.count("resolver.Add") == len(report.ops)
    assert "AddArgMax()" in ops_h and "AddFullyConnected()" in ops_h
    with open(os.path.join(directory, "gate_model.h")) as f:
        header = f.read()
    assert f"kGateInputZeroPoint = {report.input['zero_point']};" in header
    value = float(header.split("kGateInputScale = ")[1].split("f;")[0])
    assert value == pytest.approx(report.input["scale"], rel=1e-7)
    assert "kGateArenaSize" in header and "kGateInputChannels = 3" in header


def test_c_array_source_round_trips_any_bytes():
    data = bytes(range(256)) * 3
    text = c_array.c_array_source(data)
    assert "alignas(16)" in text and f"g_gate_model_len = {len(data)}" in text
    assert c_array.parse_c_array(text) == data


def test_parse_c_array_rejects_a_wrong_length():
    text = c_array.c_array_source(b"\x01\x02\x03").replace("_len = 3", "_len = 4")
    with pytest.raises(ValueError, match="does not match"):
        c_array.parse_c_array(text)
    with pytest.raises(ValueError, match="no 'g_gate_model"):
        c_array.parse_c_array("int x;")


def test_resolver_method_names():
    assert c_array.ops_header(["CONV_2D", "ARG_MAX", "BATCH_MATMUL"]).count("resolver.Add") == 3
    assert "AddBatchMatmul()" in c_array.ops_header(["BATCH_MATMUL"])  # CamelCase fallback
    assert "MicroMutableOpResolver<2>" in c_array.ops_header(["CONV_2D", "MEAN"])
