"""Export a trained gate as a fully int8 TFLite Micro model and check it on the task's data.

Usage::

    python -m gating_tflite.export \\
        --gate=workdir/super_resolution/gates/enforce/shared/gate \\
        --calibration=workdir/super_resolution --out=export/gate.tflite \\
        --mode=ptq --output=index --target=stm32h743 --emit_c

Writes ``--out`` (the ``.tflite``), ``export_report.json`` next to it (and with
``--emit_c`` the firmware files ``gate_model.h/.cc``, ``gate_ops.h``), prints a
summary, and exits non-zero when the model does not fit the target's flash or RAM,
or uses an op TFLite Micro lacks (``--strict`` also fails on missed quality checks).

Steps: offsets for b on the calibration set (:func:`bmoe_tf.routing.calibrate_offsets`)
-> (QAT fine-tuning) -> int8 conversion -> op and integer checks -> smallest TFLM
arena -> float vs LiteRT vs TFLM choices on the test inputs -> int8 frequencies on
held-out inputs vs b -> task metric with int8 routing -> budget check.
"""
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

from bmoe_tf.backend import keras
from bmoe_tf.bias import validate_bias
from bmoe_tf.gating import count_macs
from bmoe_tf.routing import calibrate_offsets
from gating_tflite import c_array, convert, interpreters, model_file
from gating_tflite.calibration import TASKS, load_export_data
from gating_tflite.targets import TARGETS, resolve_target

__all__ = ["export_gate", "load_gate_and_bias", "CHECKS", "ExportError"]

#: Targets of the quality checks (the issue's acceptance figures).
CHECKS = {"min_agreement": 0.99, "max_frequency_error": 0.02, "max_metric_drop": 0.05}

#: Latency estimate: CMSIS-NN int8 kernels at about one MAC per cycle on a Cortex-M7
#: (dual 16-bit SMLAD = 2 MAC/cycle peak, halved for loads, requantization and
#: depthwise layers). An assumption, not a measurement.
MACS_PER_CYCLE = 1.0


class ExportError(ValueError):
    """The exported gate is not usable on the target (budget or op support)."""


def _log(message):
    print(f"[export] {message}", flush=True)


def load_gate_and_bias(gate_path, bias=None):
    """``(keras gate, float[N] b, where b came from)``.

    ``gate_path`` is a gate SavedModel or a directory holding ``gate/`` (a task's
    gate directory); b is ``bias`` if given, else the ``gate.json`` next to the
    SavedModel (written by the experiments).
    """
    if not gate_path or not os.path.isdir(gate_path):
        raise ValueError(f"--gate={gate_path!r} is not a directory (a gate SavedModel)")
    if os.path.isdir(os.path.join(gate_path, "gate")) and not os.path.exists(
            os.path.join(gate_path, "saved_model.pb")):
        gate_path = os.path.join(gate_path, "gate")
    if not os.path.exists(os.path.join(gate_path, "saved_model.pb")):
        raise ValueError(f"{gate_path} holds no saved_model.pb")
    gate = keras.models.load_model(gate_path, compile=False)
    n = int(gate.output_shape[-1])
    if bias is not None:
        return gate, validate_bias(bias, n, name="--bias"), "--bias"
    info_path = os.path.join(os.path.dirname(os.path.normpath(gate_path)), "gate.json")
    if not os.path.exists(info_path):
        raise ValueError(f"no --bias given and no gate.json next to {gate_path}; pass --bias")
    with open(info_path) as f:
        b = json.load(f).get("bias")
    if b is None:
        raise ValueError(f"{info_path} has no 'bias'; pass --bias")
    return gate, validate_bias(b, n, name=f"bias of {info_path}"), info_path


def _frequency_error(freq, b):
    return float(np.max(np.abs(freq - b)))


def _calibrate_int8(model, data, b, offsets, output, rounds):
    """The int8 model and its offsets, calibrated on the int8 model's own logits.

    Int8 logits move the decision boundaries a little, and ARG_MAX breaks the ties
    of the coarse int8 outputs towards the lower index, so offsets calibrated on the
    float logits miss b on the int8 model by a few points. For ``logits`` output the
    offsets are simply recalibrated on the dequantized int8 logits of the
    calibration set. For ``index`` output (offsets folded in) the int8 shifted
    logits of the calibration set are recalibrated, the correction is added to the
    last bias and the model is converted again, up to ``rounds`` times, keeping the
    round whose calibration frequencies are closest to b.

    Returns ``(tflite bytes, offsets float[N], calibration frequencies float[N],
    correction)``: for ``logits`` the offsets recalibrated on the int8 logits and
    None; for ``index`` the float offsets and the correction added to the routing
    scores' bias (``float[N]``, in routing-score units; zeros when none was needed).
    """
    n = len(b)
    logits_model = convert.convert_int8(model, data.representative, output="logits")
    (_,), (out_info,) = model_file.model_io(logits_model)
    int8_logits = out_info.dequantize(interpreters.run_litert(logits_model, data.calibration))
    if output == "logits":
        offsets = calibrate_offsets(int8_logits, b)
        freq = _frequencies(np.argmax(int8_logits + offsets, axis=-1), n)
        return logits_model, offsets, freq, None
    used = b > 0
    best = None
    total = np.zeros(n, np.float32)
    base = model.get_weights()  # every round shifts from these (QAT ranges move with the bias)
    for round_ in range(rounds + 1):
        freq = _frequencies(np.argmax(int8_logits, axis=-1), n)
        error = _frequency_error(freq, b)
        if best is None or error < best[0]:
            best = (error, round_, np.array(total))
        if error <= 0.25 / 100 or round_ == rounds:
            break
        delta = np.where(used, calibrate_offsets(int8_logits, b), 0.0).astype(np.float32)
        total += delta
        model.set_weights(base)
        convert.shift_last_bias(model, total)
        _log(f"int8 calibration frequencies {np.round(freq, 3).tolist()} (error {error:.3f}); "
             "offsets recalibrated on the int8 logits")
        logits_model = convert.convert_int8(model, data.representative, output="logits")
        (_,), (out_info,) = model_file.model_io(logits_model)
        int8_logits = out_info.dequantize(interpreters.run_litert(logits_model, data.calibration))
    error, round_, chosen = best
    model.set_weights(base)
    convert.shift_last_bias(model, chosen)
    tflite = convert.convert_int8(model, data.representative, output="index")
    freq = _frequencies(interpreters.run_litert(tflite, data.calibration).reshape(-1), n)
    return tflite, offsets, freq, chosen


def _decisions(outputs, output, output_info, offsets):
    if output == "index":
        return np.asarray(outputs, np.int64).reshape(-1)
    return np.argmax(output_info.dequantize(outputs) + offsets, axis=-1)


def _frequencies(decisions, n):
    return (np.bincount(decisions, minlength=n) / max(len(decisions), 1)).astype(float)


def export_gate(gate, data, bias, *, out, mode="ptq", output="index", target=None,
                emit_c=False, qat_epochs=3, qat_learning_rate=1e-5, seed=0,
                recalibration_rounds=3):
    """Converts, checks and writes one gate; returns ``(report, problems)``.

    Args:
      gate: float Keras gate ``[M, H, W, C] -> [M, N]`` logits.
      data: :class:`gating_tflite.calibration.ExportData`.
      bias: ``float[N]`` b.
      out: path of the ``.tflite`` to write (``export_report.json`` goes next to it).
      mode: ``"ptq"`` or ``"qat"``; output: ``"index"`` or ``"logits"``.
      target: :class:`gating_tflite.targets.Target` (None: nothing checked).
      emit_c: also write the firmware files next to ``out``.
    Returns:
      the report dict (also written as JSON) and a list of budget problems (str).
    Raises:
      ExportError / interpreters.UnsupportedOpError: an op TFLite Micro lacks, or a
        model that is not fully integer.
      ValueError: bad arguments.
    """
    if mode not in convert.MODES:
        raise ValueError(f"mode must be one of {convert.MODES}, got {mode!r}")
    if output not in convert.OUTPUTS:
        raise ValueError(f"output must be one of {convert.OUTPUTS}, got {output!r}")
    target = target or resolve_target()
    n = int(gate.output_shape[-1])
    b = validate_bias(bias, n)
    if data.data_costs is not None and len(data.data_costs) != n:
        raise ValueError(f"{len(data.data_costs)} data costs for a gate with {n} experts")
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()

    _log(f"offsets for b = {np.round(b, 4).tolist()} on {len(data.calibration)} "
         "calibration inputs")
    logits = gate.predict(data.calibration, batch_size=256, verbose=0)
    offsets = calibrate_offsets(logits, b)
    model, clip = gate, None
    if output == "index":
        clip = convert.routing_clip(logits, offsets, b > 0)
        model = convert.fold_offsets(gate, offsets, used=b > 0, clip=clip)
    if mode == "qat":
        _log(f"quantization-aware fine-tuning, {qat_epochs} epochs on "
             f"{len(data.calibration)} calibration inputs")
        model = convert.qat_finetune(model, data.calibration, epochs=qat_epochs,
                                     learning_rate=qat_learning_rate, seed=seed)
    _log(f"int8 conversion ({mode}, output={output})")
    float_offsets = offsets
    tflite, offsets, calibration_freq, correction = _calibrate_int8(model, data, b, offsets, output,
                                                        rounds=recalibration_rounds)
    with open(out, "wb") as f:
        f.write(tflite)
    ops = model_file.model_ops(tflite)
    model_file.check_fully_int8(tflite)
    (input_info,), (output_info,) = model_file.model_io(tflite)
    _log(f"{len(tflite)} bytes, ops {ops}; checking TFLite Micro support")
    interpreters.check_tflm_support(tflite)
    sample = data.test[:1] if data.test is not None else data.calibration[:1]
    arena = interpreters.smallest_arena(tflite, sample)
    _log(f"smallest TFLite Micro arena: {arena} bytes")

    report = {
        "model": os.path.abspath(out), "mode": mode, "output": output,
        "flash_bytes": len(tflite), "arena_bytes": arena, "macs": count_macs(gate),
        "parameters": int(gate.count_params()), "ops": ops,
        "input": input_info.as_dict(), "output_tensor": output_info.as_dict(),
        "bias": b.tolist(), "offsets": np.asarray(offsets).tolist(),
        "offsets_float": float_offsets.tolist(),
        "routing_clip": clip if output == "index" else None,
        "int8_correction": None if correction is None else correction.tolist(),
        "frequencies_calibration": calibration_freq.tolist(),
        "expert_names": list(data.expert_names), "data": data.notes,
    }
    if target.clock_mhz:
        report["latency_ms_estimate"] = report["macs"] / (MACS_PER_CYCLE * target.clock_mhz * 1e3)
        report["latency_assumption"] = (f"{MACS_PER_CYCLE:g} MAC/cycle (CMSIS-NN int8) at "
                                        f"{target.clock_mhz:g} MHz")

    checks = {}
    if data.test is not None:
        _log(f"float vs LiteRT vs TFLite Micro on {len(data.test)} test inputs")
        float_test = convert.float_decisions(gate, data.test, float_offsets)
        litert = _decisions(interpreters.run_litert(tflite, data.test), output, output_info,
                            offsets)
        tflm = _decisions(interpreters.run_tflm(tflite, data.test, arena), output, output_info,
                          offsets)
        report["agreement"] = {"litert": float(np.mean(litert == float_test)),
                               "tflm": float(np.mean(tflm == float_test)),
                               "litert_vs_tflm": float(np.mean(litert == tflm)),
                               "inputs": int(len(data.test))}
        checks["agreement"] = min(report["agreement"]["litert"],
                                  report["agreement"]["tflm"]) >= CHECKS["min_agreement"]
        report["frequencies_test"] = _frequencies(tflm, n).tolist()
        if data.test_metric is not None:
            metric_float = float(data.test_metric(float_test))
            metric_int8 = float(data.test_metric(tflm))
            report["metric"] = {"name": data.metric_name, "float": metric_float,
                                "int8": metric_int8, "drop": metric_float - metric_int8}
            checks["metric"] = metric_float - metric_int8 <= CHECKS["max_metric_drop"]
    if data.heldout is not None and len(data.heldout):
        _log(f"int8 frequencies on {len(data.heldout)} held-out inputs (TFLite Micro)")
        held = _decisions(interpreters.run_tflm(tflite, data.heldout, arena), output,
                          output_info, offsets)
        freq = _frequencies(held, n)
        report["frequencies"] = freq.tolist()
        float_held = convert.float_decisions(gate, data.heldout, float_offsets)
        report["frequencies_float"] = _frequencies(float_held, n).tolist()
        report.setdefault("agreement", {})["heldout_tflm"] = float(np.mean(held == float_held))
        report["frequency_error"] = float(np.max(np.abs(freq - b)))
        report["heldout_inputs"] = int(len(data.heldout))
        checks["frequencies"] = report["frequency_error"] <= CHECKS["max_frequency_error"]
        if data.data_costs is not None:
            report["data_cost"] = {"budget": float(b @ data.data_costs),
                                   "heldout": float(freq @ data.data_costs)}
            if "frequencies_test" in report:
                report["data_cost"]["test"] = float(
                    np.asarray(report["frequencies_test"]) @ data.data_costs)

    problems = target.check(len(tflite), arena)
    report["target"] = target.as_dict(len(tflite), arena)
    report["checks"] = checks
    report["check_thresholds"] = CHECKS
    report["seconds"] = time.time() - t0
    if emit_c:
        report["firmware_files"] = c_array.write_firmware_files(
            out_dir, tflite, ops=ops, input_info=input_info, output_info=output_info,
            output=output, arena_bytes=arena, num_experts=n, expert_names=data.expert_names,
            offsets=offsets, input_description=data.input_description)
    with open(os.path.join(out_dir, "export_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report, problems


def summary(report):
    """The terminal summary of a report (one line per fact)."""
    lines = [f"model        {report['model']} ({report['mode']}, output={report['output']})",
             f"flash        {report['flash_bytes']:,} B ({report['flash_bytes'] / 1024:.1f} KiB)",
             f"arena        {report['arena_bytes']:,} B ({report['arena_bytes'] / 1024:.1f} KiB)",
             f"MACs         {report['macs']:,} per input",
             f"ops          {', '.join(report['ops'])}"]
    if "latency_ms_estimate" in report:
        lines.append(f"latency      ~{report['latency_ms_estimate']:.2f} ms "
                     f"(assumes {report['latency_assumption']})")
    a = report.get("agreement", {})
    if "inputs" in a:
        lines.append(f"agreement    LiteRT {a['litert']:.2%}, TFLM {a['tflm']:.2%} with the float "
                     f"gate on {a['inputs']} test inputs")
    if "heldout_tflm" in a:
        lines.append(f"             TFLM {a['heldout_tflm']:.2%} on the held-out inputs")
    if "frequencies" in report:
        lines.append(f"frequencies  int8 {np.round(report['frequencies'], 3).tolist()} vs b "
                     f"{np.round(report['bias'], 3).tolist()} on {report['heldout_inputs']} "
                     f"held-out inputs (max error {report['frequency_error']:.3f})")
    if "frequencies_test" in report:
        lines.append(f"             test inputs: {np.round(report['frequencies_test'], 3).tolist()}")
    if "data_cost" in report:
        lines.append("data cost    " + ", ".join(f"{k} {v:,.0f} B"
                                                 for k, v in report["data_cost"].items()))
    if "metric" in report:
        m = report["metric"]
        lines.append(f"metric       {m['name']}: float {m['float']:.3f}, int8 {m['int8']:.3f} "
                     f"(drop {m['drop']:+.3f})")
    t = report["target"]
    lines.append(f"target       {t['name']}: flash {t['flash_kib']} KiB, RAM {t['ram_kib']} KiB, "
                 f"fits: {t['fits']}")
    failed = [k for k, ok in report["checks"].items() if not ok]
    lines.append("checks       " + (f"missed: {failed}" if failed else "all met"))
    return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_string("gate", None, "Gate SavedModel (or a gate directory holding gate/).")
flags.DEFINE_string("calibration", None, "A task workdir (see --task) or npz:PATH.")
flags.DEFINE_enum("task", "super_resolution", sorted(TASKS), "Task of the --calibration workdir.")
flags.DEFINE_string("out", None, "Path of the .tflite to write; export_report.json goes next to it.")
flags.DEFINE_enum("mode", "ptq", list(convert.MODES), "Post-training or quantization-aware.")
flags.DEFINE_enum("output", "index", list(convert.OUTPUTS),
                  "index: int32 expert index (offsets folded, ARG_MAX); logits: int8 logits.")
flags.DEFINE_string("target", None, f"Microcontroller preset: {', '.join(sorted(TARGETS))}.")
flags.DEFINE_float("flash_kib", None, "Flash budget in KiB (overrides the preset).")
flags.DEFINE_float("ram_kib", None, "RAM budget in KiB for the arena (overrides the preset).")
flags.DEFINE_bool("emit_c", False, "Write gate_model.h/.cc and gate_ops.h next to --out.")
flags.DEFINE_list("bias", None, "b, e.g. 0.5,0.5,0 (default: the gate's gate.json).")
flags.DEFINE_integer("qat_epochs", 3, "QAT fine-tuning epochs (--mode=qat).")
flags.DEFINE_float("qat_learning_rate", 1e-5, "QAT fine-tuning learning rate.")
flags.DEFINE_bool("strict", False, "Also exit non-zero when a quality check is missed.")


def main(argv):
    del argv
    for name in ("gate", "calibration", "out"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    try:
        target = resolve_target(FLAGS.target, FLAGS.flash_kib, FLAGS.ram_kib)
        bias = None if FLAGS.bias is None else [float(v) for v in FLAGS.bias]
        gate, b, source = load_gate_and_bias(FLAGS.gate, bias)
        _log(f"gate {FLAGS.gate}: {gate.count_params():,} parameters, b from {source}")
        data = load_export_data(FLAGS.calibration, FLAGS.task)
        report, problems = export_gate(gate, data, b, out=FLAGS.out, mode=FLAGS.mode,
                                       output=FLAGS.output, target=target, emit_c=FLAGS.emit_c,
                                       qat_epochs=FLAGS.qat_epochs,
                                       qat_learning_rate=FLAGS.qat_learning_rate)
    except ValueError as err:  # includes UnsupportedOpError and bad flags
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(summary(report), flush=True)
    if problems:
        print("error: the gate does not fit the target: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)
    missed = [k for k, ok in report["checks"].items() if not ok]
    if FLAGS.strict and missed:
        print(f"error: quality checks missed: {missed}", file=sys.stderr)
        sys.exit(3)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
