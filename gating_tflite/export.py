"""Export a trained gate as a fully int8 TFLite Micro model and check it on the task's data.

Usage::

    python -m gating_tflite.export \\
        --gate=workdir/super_resolution/gates/enforce/shared/gate \\
        --calibration=workdir/super_resolution --out=export/gate.tflite \\
        --mode=ptq --output=index --target=stm32h743 --emit_c

(also ``python -m gating_tflite`` and the console script ``bmoe-export-gate``). This
module is the export's entry point and public API: the command line (flags, output, exit
codes) is :mod:`gating_tflite.cli` and :func:`run` is its; the steps
(:func:`export_gate` and one function per step) are :mod:`gating_tflite.gate_export`,
whose public names are re-exported here; the inputs are read by
:mod:`gating_tflite.calibration`.
"""
from gating_tflite.cli import run
from gating_tflite.gate_export import (  # noqa: F401 (the public API)
    export_gate, load_gate_and_bias, summary, log, CHECKS, REPORT_NAME, ExportError,
    ExportReport, Int8Gate, ModelFacts, TestResult, HeldoutResult, check_output_path,
    routing_offsets, routing_model, quantize, calibrate_int8, inspect_model,
    check_test_inputs, check_heldout, quality_checks, data_cost, latency_estimate,
    write_outputs, scene_shift, SceneShift, ROUTER_CROSSING, SCENE_WINDOW,
    default_bucket_bytes, check_gate_input)

__all__ = ["run"] + [
    "export_gate", "load_gate_and_bias", "summary", "log", "CHECKS", "REPORT_NAME",
    "ExportError", "ExportReport", "Int8Gate", "ModelFacts", "TestResult", "HeldoutResult",
    "check_output_path", "routing_offsets", "routing_model", "quantize", "calibrate_int8",
    "inspect_model", "check_test_inputs", "check_heldout", "quality_checks", "data_cost",
    "latency_estimate", "write_outputs", "scene_shift", "SceneShift", "ROUTER_CROSSING",
    "SCENE_WINDOW", "default_bucket_bytes", "check_gate_input",
]

if __name__ == "__main__":
    run()
