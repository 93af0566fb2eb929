"""Export a trained gate as a fully int8 TFLite Micro model and check it on the task's data.

The steps of the export; the command line is :mod:`gating_tflite.cli`, run by
:mod:`gating_tflite.export` (which re-exports this module's public names)::

    python -m gating_tflite.export \\
        --gate=workdir/super_resolution/gates/enforce/shared/gate \\
        --calibration=workdir/super_resolution --out=export/gate.tflite \\
        --mode=ptq --output=index --target=stm32h743 --emit_c

Writes ``--out`` (the ``.tflite``), ``export_report.json`` next to it (and with
``--emit_c`` the firmware files ``gate_model.h/.cc``, ``gate_ops.h``), prints a
summary, and exits non-zero when the model does not fit the target's flash or RAM,
or uses an op TFLite Micro lacks (``--strict`` also fails on missed quality checks).

:func:`export_gate` runs these steps, one function each:

1. :func:`check_output_path` -- ``--out`` can be written (before any work);
2. :func:`routing_offsets` -- offsets for b on the calibration set
   (:func:`bmoe_tf.routing.calibrate_offsets`);
3. :func:`routing_model` -- the offsets folded into the gate (``output="index"``);
4. :func:`quantize` -- (QAT fine-tuning) -> int8 conversion, offsets recalibrated on
   the int8 model (:func:`calibrate_int8`);
5. :func:`inspect_model` -- ops, fully-integer and TFLite Micro checks, smallest arena;
6. :func:`check_test_inputs` -- float vs LiteRT vs TFLM choices, task metric;
7. :func:`check_heldout` -- int8 frequencies on held-out inputs vs b;
8. :func:`scene_shift` -- the test inputs in their natural order (frame by frame):
   static offsets vs the online controller (soft, hard) vs per-frame enforcement on
   the int8 logits (:func:`bmoe_tf.scene_shift.route_natural_order`, the evaluator the
   pipeline's scene-shift stage uses too);
9. :func:`quality_checks`, :func:`data_cost`, :func:`latency_estimate`, the budget;
10. :func:`write_outputs` -- ``.tflite``, firmware files (with ``--output=logits`` also
    the router ``gate_router.h/.c``, :mod:`gating_tflite.router_c`), ``export_report.json``.

The result is an :class:`ExportReport`; ``report.as_dict()`` is the JSON.
"""
import copy
import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from bmoe_tf.backend import keras
from bmoe_tf.bias import validate_bias
from bmoe_tf.budget import DEFAULT_CROSSING, BudgetController, sequence_cost
from bmoe_tf.byte_controller import ByteController
from bmoe_tf.routing import calibrate_offsets
from bmoe_tf.scene_shift import default_bucket_bytes, route_natural_order
from gating_tflite import (c_array, convert, int8_weights, interpreters, model_file,
                           quantization_aware, router_c)
from gating_tflite.model_file import TensorInfo
from gating_tflite.targets import resolve_target

__all__ = ["export_gate", "load_gate_and_bias", "summary", "log", "CHECKS", "REPORT_NAME",
           "ExportError", "ExportReport", "Int8Gate", "ModelFacts", "TestResult",
           "HeldoutResult", "check_output_path", "routing_offsets", "routing_model", "quantize",
           "calibrate_int8", "inspect_model", "check_test_inputs", "check_heldout",
           "quality_checks", "data_cost", "latency_estimate", "write_outputs", "scene_shift",
           "SceneShift", "ROUTER_CROSSING", "SCENE_WINDOW", "default_bucket_bytes",
           "check_gate_input"]

#: Targets of the quality checks (the issue's acceptance figures).
CHECKS = {"min_agreement": 0.99, "max_frequency_error": 0.02, "max_metric_drop": 0.05}

#: int16 logits keep the float offsets while these route the calibration set's int16
#: logits within this of b (a frequency); beyond it the offsets are recalibrated (D77).
INT16_OFFSET_TOLERANCE = 0.005

#: Latency estimate: CMSIS-NN int8 kernels at about one MAC per cycle on a Cortex-M7
#: (dual 16-bit SMLAD = 2 MAC/cycle peak, halved for loads, requantization and
#: depthwise layers). An assumption, not a measurement.
MACS_PER_CYCLE = 1.0

#: The report's file name, next to ``--out``.
REPORT_NAME = "export_report.json"

#: The online controller's speed: its offsets cross the whole score range in this many
#: inputs (``BudgetController.from_calibration(crossing=...)``; WORKSPACE D45).
ROUTER_CROSSING = DEFAULT_CROSSING

#: W of the scene-shift evaluation's windows (the issue's bar: 64 SR parts).
SCENE_WINDOW = 64


class ExportError(ValueError):
    """The exported gate is not usable on the target (budget or op support)."""


def log(message):
    """One ``[export] ...`` progress line on stdout."""
    print(f"[export] {message}", flush=True)


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(kw_only=True)
class ExportReport:
    """What an export measured; :meth:`as_dict` is ``export_report.json``.

    Every field holds JSON values (lists, dicts, numbers, strings). The fields in
    :attr:`OPTIONAL` are left out of the JSON when None (not measured: no test or
    held-out inputs, no clock, no firmware files).
    """

    model: str                        # absolute path of the .tflite
    mode: str                         # "ptq" | "qat"
    output: str                       # "index" | "logits"
    activations: str = "int8"         # "int8" | "int16" (16x8: int16 activations, int8 weights)
    flash_bytes: int                  # size of the .tflite
    arena_bytes: int                  # smallest TFLite Micro arena
    macs: int                         # per input, of the float gate
    parameters: int
    ops: list                         # builtin op names, in graph order
    input: dict                       # TensorInfo.as_dict() of the int8 input
    output_tensor: dict               # TensorInfo.as_dict() of the output
    bias: list                        # b
    offsets: list                     # the offsets the firmware uses (logits: int8-calibrated)
    offsets_float: list               # offsets calibrated on the float logits
    routing_clip: float | None        # C of the index head (index output), else None
    int8_correction: list | None      # bias correction of the index head, else None
    frequencies_calibration: list     # int8 frequencies on the calibration set
    expert_names: list
    data: dict                        # ExportData.notes
    latency_ms_estimate: float | None = None
    latency_assumption: str | None = None
    agreement: dict | None = None     # litert, tflm, litert_vs_tflm, inputs, heldout_tflm
    frequencies_test: list | None = None
    metric: dict | None = None        # name, float, int8, drop
    frequencies: list | None = None   # int8 (TFLM) frequencies on the held-out inputs
    frequencies_float: list | None = None
    frequency_error: float | None = None  # max |frequencies - b|
    heldout_inputs: int | None = None
    data_cost: dict | None = None     # budget, heldout, test
    target: dict                      # Target.as_dict()
    checks: dict                      # check name -> met (bool)
    check_thresholds: dict            # CHECKS
    seconds: float
    firmware_files: list | None = None
    scene_shift: dict | None = None   # method -> sequence_cost(...) + metric (test, in order)
    router: dict | None = None        # the online controller's parameters

    OPTIONAL = ("latency_ms_estimate", "latency_assumption", "agreement", "frequencies_test",
                "metric", "frequencies", "frequencies_float", "frequency_error",
                "heldout_inputs", "data_cost", "firmware_files", "scene_shift", "router")

    def as_dict(self):
        """The JSON report: every field, optional ones only when measured (a deep copy)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)}

    @property
    def missed_checks(self):
        """Names of the quality checks that were missed."""
        return [name for name, ok in self.checks.items() if not ok]

    @property
    def warnings(self):
        """Lines the user must not miss (printed as ``WARNING: ...`` by the CLI)."""
        limit = self.check_thresholds["max_frequency_error"]
        if self.frequency_error is None or self.frequency_error <= limit:
            return []
        text = (f"the {self.activations} gate's frequencies "
                f"{np.round(self.frequencies, 3).tolist()} on "
                f"{self.heldout_inputs} held-out inputs miss b {np.round(self.bias, 3).tolist()} "
                f"by {100 * self.frequency_error:.1f} points (more than {100 * limit:g})")
        if self.output == "logits" and self.activations == "int16":
            return [f"--output=logits: {text}; firmware that routes with argmax(int16 logits "
                    "+ static offsets) will not hold b. Hold it online with a float "
                    "controller on the logits (bmoe_tf.budget.BudgetController; the C "
                    "gate_router.c takes int8 logits), or calibrate on more inputs "
                    "(--calibration) when the float gate misses b too (frequencies_float "
                    "in the report)."]
        if self.output == "logits":
            return [f"--output=logits: {text}; firmware that routes with argmax("
                    f"{self.activations} logits + "
                    "static offsets) will not hold b. Route with gate_router.c (--emit_c: "
                    "its online controller holds b on any input sequence) or use "
                    "--output=index (offsets folded into the model and recalibrated on the "
                    "int8 model)."]
        return [f"{text}; the sensor will not hold b with static offsets (the int8-logits "
                "export's gate_router.c holds it online: --output=logits --emit_c)."]


@dataclasses.dataclass
class Int8Gate:
    """The result of :func:`quantize`.

    ``offsets``: for ``logits`` output the offsets recalibrated on the int8 logits
    (the firmware's), for ``index`` the float offsets; ``correction``: the bias
    correction of the index head (``float[N]``) or None (logits).
    """

    tflite: bytes
    offsets: np.ndarray
    calibration_frequencies: np.ndarray
    correction: np.ndarray | None
    calibration_logits: np.ndarray | None = None  # dequantized int8 (logits output)


@dataclasses.dataclass
class SceneShift:
    """The result of :func:`scene_shift`: ``rows`` (method -> JSON dict), ``router`` (the
    controller's parameters, JSON) and the int8 ``controller`` the router files are
    generated from (soft, or hard with ``bucket_bytes``)."""

    rows: dict
    router: dict
    controller: BudgetController  # a ByteController with per-input test costs


@dataclasses.dataclass
class ModelFacts:
    """What :func:`inspect_model` read from and measured on the ``.tflite``."""

    ops: list
    input_info: TensorInfo
    output_info: TensorInfo
    arena_bytes: int


@dataclasses.dataclass
class TestResult:
    """The int8 gate on the test inputs (:func:`check_test_inputs`)."""

    __test__ = False  # not a pytest test class

    agreement: dict          # litert, tflm, litert_vs_tflm, inputs
    frequencies: np.ndarray  # TFLM frequencies
    decisions: np.ndarray    # TFLM choices, int[M]
    metric: dict | None      # name, float, int8, drop


@dataclasses.dataclass
class HeldoutResult:
    """The int8 gate on the held-out inputs (:func:`check_heldout`)."""

    frequencies: np.ndarray        # TFLM frequencies
    frequencies_float: np.ndarray  # float gate's frequencies (float offsets)
    agreement: float               # TFLM vs float choices
    error: float                   # max |frequencies - b|
    inputs: int


# --------------------------------------------------------------------------- inputs


def load_gate_and_bias(gate_path, bias=None):
    """``(keras gate, float[N] b, where b came from)``.

    ``gate_path`` is a gate SavedModel or a directory holding ``gate/`` (a task's
    gate directory); b is ``bias`` if given, else the ``gate.json`` next to the
    SavedModel (written by the experiments).

    Raises:
      ValueError: a missing, unreadable or corrupt SavedModel or gate.json (the
        message names the file), or a bad b.
    """
    if not gate_path:
        raise ValueError("--gate is required: a gate SavedModel directory")
    if os.path.isfile(gate_path):
        raise ValueError(f"--gate={gate_path}: a file, not a gate SavedModel directory")
    if not os.path.isdir(gate_path):
        raise ValueError(f"--gate={gate_path}: no such directory (a gate SavedModel)")
    if os.path.isdir(os.path.join(gate_path, "gate")) and not os.path.exists(
            os.path.join(gate_path, "saved_model.pb")):
        gate_path = os.path.join(gate_path, "gate")
    if not os.path.exists(os.path.join(gate_path, "saved_model.pb")):
        raise ValueError(f"--gate: {gate_path} holds no saved_model.pb (not a SavedModel)")
    try:
        gate = quantization_aware.load_gate_model(gate_path)
        n = int(gate.output_shape[-1])
    except Exception as err:  # noqa: BLE001 -- TF raises many types for a bad SavedModel
        raise ValueError(f"cannot load the gate SavedModel {gate_path}: "
                         f"{type(err).__name__}: {_first_line(err)}") from err
    if bias is not None:
        return gate, validate_bias(bias, n, name="--bias"), "--bias"
    info_path = os.path.join(os.path.dirname(os.path.normpath(gate_path)), "gate.json")
    if not os.path.exists(info_path):
        raise ValueError(f"no --bias given and no gate.json next to {gate_path}; pass --bias")
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {info_path}: {_first_line(err)}") from err
    b = info.get("bias") if isinstance(info, dict) else None
    if b is None:
        raise ValueError(f"{info_path} has no 'bias'; pass --bias")
    return gate, validate_bias(b, n, name=f"bias of {info_path}"), info_path


# --------------------------------------------------------------------------- steps


def check_output_path(out, *, emit_c=False):
    """Makes the directory of ``out`` and checks every file the export writes can be written.

    Returns the absolute directory. Raises ValueError (naming the path) when ``out``
    is a directory, its directory cannot be made or written, or a file the export
    writes there is a directory.
    """
    if not out:
        raise ValueError("--out is required: the path of the .tflite to write")
    path = os.path.abspath(out)
    if os.path.isdir(path):
        raise ValueError(f"--out={out} is a directory; give the path of the .tflite to write "
                         f"(e.g. {os.path.join(out, 'gate.tflite')})")
    out_dir = os.path.dirname(path)
    existing = out_dir
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--out={out}: {existing} is a file, not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out={out}: cannot make the directory {out_dir} "
                         f"({err.strerror or err})") from err
    names = [REPORT_NAME] + (list(c_array.FIRMWARE_FILES) + list(router_c.ROUTER_FILES)
                             if emit_c else [])
    for other in [path] + [os.path.join(out_dir, name) for name in names]:
        if os.path.isdir(other):
            raise ValueError(f"--out={out}: {other} is a directory; the export writes a file there")
        if os.path.exists(other) and not os.access(other, os.W_OK):
            raise ValueError(f"--out={out}: {other} is not writable")
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise ValueError(f"--out={out}: cannot write in {out_dir} ({err.strerror or err})") from err
    return out_dir


def routing_offsets(gate, calibration, b):
    """``(float logits [M, N], offsets float[N])``: offsets for b on the calibration inputs."""
    log(f"offsets for b = {np.round(b, 4).tolist()} on {len(calibration)} calibration inputs")
    logits = gate.predict(calibration, batch_size=256, verbose=0)
    return logits, calibrate_offsets(logits, b)


def routing_model(gate, logits, offsets, b, output):
    """``(model to convert, routing clip C or None)``: for ``index`` output the gate with
    the offsets folded into a pairwise routing head (:func:`convert.fold_offsets`)."""
    if output != "index":
        return gate, None
    clip = convert.routing_clip(logits, offsets, b > 0)
    return convert.fold_offsets(gate, offsets, used=b > 0, clip=clip), clip


def _frequency_error(freq, b):
    return float(np.max(np.abs(np.asarray(freq) - b)))


def _frequencies(decisions, n):
    return (np.bincount(decisions, minlength=n) / max(len(decisions), 1)).astype(float)


def _decisions(outputs, output, output_info, offsets):
    if output == "index":
        return np.asarray(outputs, np.int64).reshape(-1)
    return np.argmax(output_info.dequantize(outputs) + offsets, axis=-1)


def _int8_logits(model, data, activations="int8"):
    """``(tflite bytes, dequantized int8 (int16) logits of the calibration set)``."""
    logits_model = convert.convert_int8(model, data.representative, output="logits",
                                        activations=activations)
    (_,), (out_info,) = model_file.model_io(logits_model)
    logits = out_info.dequantize(interpreters.run_litert(logits_model, data.calibration))
    return logits_model, logits


def calibrate_int8(model, data, b, offsets, output, rounds, activations="int8"):
    """The int8 model and its offsets, calibrated on the int8 model's own logits.

    Int8 logits move the decision boundaries a little, and ARG_MAX breaks the ties
    of the coarse int8 outputs towards the lower index, so offsets calibrated on the
    float logits miss b on the int8 model by a few points. For ``logits`` output the
    offsets are simply recalibrated on the dequantized int8 logits of the
    calibration set. For ``index`` output (offsets folded in) the int8 shifted
    logits of the calibration set are recalibrated, the correction is added to the
    last bias and the model is converted again, up to ``rounds`` times, keeping the
    round whose calibration frequencies are closest to b (``rounds=0``: the index
    model is converted once, no correction).

    The first int8 model is checked against TFLite Micro before any recalibration,
    so a gate with an op TFLite Micro lacks fails fast. ``activations="int16"`` (logits
    output only): the 16x8 model with the float offsets.

    Returns an :class:`Int8Gate`.
    """
    n = len(b)
    if output == "index" and rounds == 0:  # nothing to recalibrate: one conversion
        tflite = convert.convert_int8(model, data.representative, output="index")
        interpreters.check_tflm_support(tflite)
        freq = _frequencies(interpreters.run_litert(tflite, data.calibration).reshape(-1), n)
        return Int8Gate(tflite, offsets, freq, np.zeros(n, np.float32))
    logits_model, int8_logits = _int8_logits(model, data, activations)
    interpreters.check_tflm_support(logits_model)
    if output == "logits" and quantization_aware.is_quantization_aware(model):
        # The float logits are already the fake-quant (int8-step) ones: the float
        # offsets route the int8 logits the same way; offsets calibrated again on the
        # int8 logits would sit elsewhere among their many ties (D76).
        freq = _frequencies(np.argmax(int8_logits + offsets, axis=-1), n)
        return Int8Gate(logits_model, np.asarray(offsets, np.float32), freq, None, int8_logits)
    if output == "logits" and activations == "int16":
        # int16 logits are the float ones to a few 1e-4: the float offsets route them the
        # same way unless the model shifted a boundary (their calibration frequencies then
        # miss b). Offsets calibrated again without need would sit elsewhere in the gaps
        # between the calibration logits and move held-out choices (D77).
        freq = _frequencies(np.argmax(int8_logits + offsets, axis=-1), n)
        if _frequency_error(freq, b) <= INT16_OFFSET_TOLERANCE:
            return Int8Gate(logits_model, np.asarray(offsets, np.float32), freq, None,
                            int8_logits)
    if output == "logits":
        offsets = calibrate_offsets(int8_logits, b)
        freq = _frequencies(np.argmax(int8_logits + offsets, axis=-1), n)
        return Int8Gate(logits_model, offsets, freq, None, int8_logits)
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
        log(f"int8 calibration frequencies {np.round(freq, 3).tolist()} (error {error:.3f}); "
             "offsets recalibrated on the int8 logits")
        logits_model, int8_logits = _int8_logits(model, data)
    _, _, chosen = best
    model.set_weights(base)
    convert.shift_last_bias(model, chosen)
    tflite = convert.convert_int8(model, data.representative, output="index")
    freq = _frequencies(interpreters.run_litert(tflite, data.calibration).reshape(-1), n)
    return Int8Gate(tflite, offsets, freq, chosen)


def quantize(model, data, b, offsets, *, mode, output, qat_epochs=convert.QAT_EPOCHS,
             qat_learning_rate=convert.QAT_LEARNING_RATE,
             seed=0, rounds=3, activations="int8"):
    """(QAT fine-tuning on the calibration inputs, then) int8 conversion: an :class:`Int8Gate`."""
    if mode == "qat":
        log(f"quantization-aware fine-tuning, {qat_epochs} epochs on "
             f"{len(data.calibration)} calibration inputs")
        model = convert.qat_finetune(model, data.calibration, epochs=qat_epochs,
                                     learning_rate=qat_learning_rate, seed=seed)
    log(f"{'int8' if activations == 'int8' else '16x8 (int16 activations, int8 weights)'} "
        f"conversion ({mode}, output={output})")
    return calibrate_int8(model, data, b, offsets, output, rounds=rounds,
                          activations=activations)


def inspect_model(tflite, sample, activations="int8"):
    """Ops, integer-only and TFLite Micro checks, smallest arena: a :class:`ModelFacts`.

    Raises:
      ValueError: a float tensor; interpreters.UnsupportedOpError: an op TFLM lacks.
    """
    ops = model_file.model_ops(tflite)
    model_file.check_fully_int8(tflite, activations)
    (input_info,), (output_info,) = model_file.model_io(tflite)
    log(f"{len(tflite)} bytes, ops {ops}; checking TFLite Micro support")
    interpreters.check_tflm_support(tflite)
    arena = interpreters.smallest_arena(tflite, sample)
    log(f"smallest TFLite Micro arena: {arena} bytes")
    return ModelFacts(ops, input_info, output_info, arena)


def check_test_inputs(gate, tflite, facts, data, *, output, offsets, float_offsets):
    """Float vs LiteRT vs TFLM choices on ``data.test`` and the task metric: a
    :class:`TestResult` (None without test inputs)."""
    if data.test is None:
        return None
    n = int(gate.output_shape[-1])
    log(f"float vs LiteRT vs TFLite Micro on {len(data.test)} test inputs")
    float_test = convert.float_decisions(gate, data.test, float_offsets)
    litert = _decisions(interpreters.run_litert(tflite, data.test), output, facts.output_info,
                        offsets)
    tflm = _decisions(interpreters.run_tflm(tflite, data.test, facts.arena_bytes), output,
                      facts.output_info, offsets)
    agreement = {"litert": float(np.mean(litert == float_test)),
                 "tflm": float(np.mean(tflm == float_test)),
                 "litert_vs_tflm": float(np.mean(litert == tflm)),
                 "inputs": int(len(data.test))}
    metric = None
    if data.test_metric is not None:
        metric_float = float(data.test_metric(float_test))
        metric_int8 = float(data.test_metric(tflm))
        metric = {"name": data.metric_name, "float": metric_float, "int8": metric_int8,
                  "drop": metric_float - metric_int8}
    return TestResult(agreement, _frequencies(tflm, n), tflm, metric)


def check_heldout(gate, tflite, facts, data, b, *, output, offsets, float_offsets):
    """Int8 (TFLM) frequencies on ``data.heldout`` vs b: a :class:`HeldoutResult` (None
    without held-out inputs)."""
    if data.heldout is None or not len(data.heldout):
        return None
    n = len(b)
    log(f"integer-model frequencies on {len(data.heldout)} held-out inputs (TFLite Micro)")
    held = _decisions(interpreters.run_tflm(tflite, data.heldout, facts.arena_bytes), output,
                      facts.output_info, offsets)
    freq = _frequencies(held, n)
    float_held = convert.float_decisions(gate, data.heldout, float_offsets)
    return HeldoutResult(freq, _frequencies(float_held, n), float(np.mean(held == float_held)),
                         _frequency_error(freq, b), int(len(data.heldout)))


def _test_costs(data, n):
    """``float[M_test, N]`` per-input payload bytes of an encoded workdir, or None."""
    if data.test_costs is None:
        return None
    c = np.asarray(data.test_costs, np.float64)
    if data.test is None or c.shape != (len(data.test), n) or data.data_costs is None:
        raise ValueError(f"test_costs must be [{0 if data.test is None else len(data.test)}, "
                         f"{n}] with data_costs beside them, got {c.shape}")
    return c


def scene_shift(gate, tflite, data, b, test, *, output, calibration_logits,
                crossing=ROUTER_CROSSING, bucket_bytes=None, window=SCENE_WINDOW,
                batch_size=128, seed=0):
    """The test inputs routed in their natural order (``data.test_frames``: frame by
    frame): a :class:`SceneShift` (None without test inputs).

    Methods: ``static`` (the exported model's own choices, TFLite Micro: the offsets
    calibrated once), ``controller`` (:class:`BudgetController` started at the
    calibration set's static offsets, soft), ``controller_hard`` (the same with a leaky
    bucket of ``bucket_bytes``, default :func:`bmoe_tf.scene_shift.default_bucket_bytes`),
    ``per_frame`` (:func:`bmoe_tf.budget.route_frames`, only with ``data.test_frames``) and the
    reference ``per_batch`` (Algorithm 1 over batches of ``batch_size`` of the test
    inputs shuffled with ``seed``: the bar's "per-batch enforcement").

    For ``output="logits"`` the controllers run on the exported model's int8 logits
    (``calibration_logits``: its dequantized calibration logits; an int8 controller, as
    ``gate_router.c`` runs); for ``"index"`` (no logits on the sensor) on the float
    gate's logits (``calibration_logits``: float). The routings are
    :func:`bmoe_tf.scene_shift.route_natural_order`'s; each row:
    :func:`bmoe_tf.budget.sequence_cost` and the metric.
    """
    if data.test is None or not len(data.test):
        return None
    n = len(b)
    costs = data.data_costs
    if costs is None:
        if bucket_bytes is not None:
            raise ValueError("--bucket_bytes needs the experts' data costs; the calibration "
                             "data has none")
        costs = np.ones(n)
    costs = np.asarray(costs, np.float64)
    frames = None if data.test_frames is None else np.asarray(data.test_frames).reshape(-1)
    if frames is not None and len(frames) != len(data.test):
        raise ValueError(f"test_frames has {len(frames)} entries for {len(data.test)} test "
                         "inputs")
    per_input = _test_costs(data, n)
    int8_scale = None
    if output == "logits":
        (_,), (info,) = model_file.model_io(tflite)
        test_logits = np.asarray(interpreters.run_litert(tflite, data.test)).reshape(-1, n)
        batch_logits = info.dequantize(test_logits)
        if info.dtype == "INT8":  # the integer controller gate_router.c runs
            int8_scale = info.scale
        else:  # int16 logits: the float controller on them (no C router for int16 yet)
            test_logits = batch_logits
    else:
        test_logits = batch_logits = gate.predict(data.test, batch_size=256, verbose=0)
    log(f"scene shift: {len(data.test)} test inputs in their natural order "
        f"({'one input per frame' if frames is None else f'{len(np.unique(frames))} frames'}"
        f", {_logits_kind(tflite) if output == 'logits' else 'float'} logits)")
    routing = route_natural_order(
        test_logits, frames, calibration_logits, b, costs, window=window,
        batch_size=batch_size, seed=seed, crossing=crossing, bucket_bytes=bucket_bytes,
        static=test.decisions, batch_logits=batch_logits, int8_scale=int8_scale,
        costs=per_input)
    rows = {}
    for name in ("static", "controller", "controller_hard", "per_batch", "per_frame"):
        if name not in routing.choices:
            continue
        assignment = routing.choices[name]
        row = sequence_cost(assignment, costs, b, window=window, costs=per_input)
        if data.test_metric is not None:
            row["metric"] = float(data.test_metric(np.asarray(assignment, np.int64)))
        rows[name] = row
    rows["controller_hard"]["bucket_bytes"] = routing.bucket_bytes
    soft, hard = routing.soft, routing.hard
    router = {"crossing": float(crossing), "step": soft.step, "logit_range": soft.logit_range,
              "gap_scale": soft.gap_scale, "int8_scale": int8_scale,
              "initial_offsets": [float(v) for v in np.where(soft.used, soft.offsets, 0.0)],
              "bias_q": soft.bias_q.tolist(), "bucket_bytes": bucket_bytes,
              "logits": f"{_logits_kind(tflite)} (the exported model)" if output == "logits"
              else "float gate",
              "metric_name": data.metric_name,
              "budget": "bytes (each input's payload)" if per_input is not None else
              "frequencies b"}
    controller = soft if bucket_bytes is None else hard
    controller.reset()
    return SceneShift(rows, router, controller)


def _logits_kind(tflite):
    (_,), (info,) = model_file.model_io(tflite)
    return "int8" if info.dtype == "INT8" else "int16"


def quality_checks(test, heldout, thresholds=None):
    """``{check: met}`` for the measured results (agreement, metric, frequencies)."""
    thresholds = CHECKS if thresholds is None else thresholds
    checks = {}
    if test is not None:
        checks["agreement"] = (min(test.agreement["litert"], test.agreement["tflm"])
                               >= thresholds["min_agreement"])
        if test.metric is not None:
            checks["metric"] = test.metric["drop"] <= thresholds["max_metric_drop"]
    if heldout is not None:
        checks["frequencies"] = heldout.error <= thresholds["max_frequency_error"]
    return checks


def data_cost(b, data_costs, test, heldout):
    """``{budget, heldout[, test]}`` bytes per input (None without costs or held-out inputs)."""
    if data_costs is None or heldout is None:
        return None
    costs = np.asarray(data_costs, np.float64)
    cost = {"budget": float(b @ costs), "heldout": float(heldout.frequencies @ costs)}
    if test is not None:
        cost["test"] = float(test.frequencies @ costs)
    return cost


def latency_estimate(macs, target):
    """``(milliseconds, assumption)`` at the target's clock, or ``(None, None)``."""
    if not target.clock_mhz:
        return None, None
    return (macs / (MACS_PER_CYCLE * target.clock_mhz * 1e3),
            f"{MACS_PER_CYCLE:g} MAC/cycle (CMSIS-NN int8) at {target.clock_mhz:g} MHz")


def write_outputs(report, out_dir, tflite, *, firmware=None, router=None):
    """Writes the ``.tflite`` (``report.model``), the firmware files (``firmware``: the
    keyword arguments of :func:`c_array.write_firmware_files`, or None), the router
    files (``router``: keyword arguments of :func:`router_c.write_router_files`, or
    None) and the JSON report; returns the report's path."""
    with open(report.model, "wb") as f:
        f.write(tflite)
    if firmware is not None:
        report.firmware_files = c_array.write_firmware_files(out_dir, tflite, **firmware)
    if router is not None:
        report.firmware_files = (report.firmware_files or []) + router_c.write_router_files(
            out_dir, **router)
    path = os.path.join(out_dir, REPORT_NAME)
    with open(path, "w") as f:
        json.dump(report.as_dict(), f, indent=2)
    return path


# --------------------------------------------------------------------------- export


def check_gate_input(gate, data):
    """Refuses a gate whose input is not one of ``data``'s inputs (e.g. a super-resolution
    gate with an action workdir), before any work.

    Raises:
      ValueError: naming both shapes and the task of the data.
    """
    shape = gate.input_shape
    want = tuple(shape[1:]) if isinstance(shape, tuple) else None
    have = data.input_shape
    if want is None or len(want) != len(have) or any(
            w is not None and int(w) != h for w, h in zip(want, have)):
        source = (f"the {data.task} task's export data" if data.task
                  else "the calibration inputs")
        raise ValueError(f"the gate takes inputs {list(want or shape)} but {source} are "
                         f"{list(have)} (a gate of another task?)")


def _log_weight_grid(gate):
    """One line on whether an int16-activation export keeps the gate's weights exactly
    (kernels on the int8 grid: ``--int8_weights``) or rounds them (WORKSPACE D78)."""
    try:
        steps = int8_weights.int8_grid_error(gate)
    except ValueError:  # layers the grid does not cover: the converter decides
        return
    if steps <= 1e-3:
        log("the gate's kernels are on TFLite's int8 grid (--int8_weights): only the int16 "
            "activations round")
    else:
        log(f"the gate's kernels are off TFLite's int8 grid (up to {steps:.2f} steps): their "
            "rounding moves its logits more than the int16 activations do; a gate trained "
            "with --int8_weights has none (WORKSPACE D78)")


def _check_arguments(gate, data, bias, mode, output, bucket_bytes=None, activations="int8"):
    if mode not in convert.MODES:
        raise ValueError(f"mode must be one of {convert.MODES}, got {mode!r}")
    if output not in convert.OUTPUTS:
        raise ValueError(f"output must be one of {convert.OUTPUTS}, got {output!r}")
    convert.check_activations(activations, output=output,
                              quantization_aware=quantization_aware.is_quantization_aware(gate))
    if activations == "int16" and mode != "ptq":
        raise ValueError("--mode=qat fine-tunes with int8 fake-quant ops; int16 activations "
                         f"export with --mode=ptq (got --mode={mode})")
    check_gate_input(gate, data)
    if quantization_aware.is_quantization_aware(gate):
        if output != "logits":
            raise ValueError("a quantization-aware gate (--quantization_aware) exports with "
                             "--output=logits: its int8 logits are its own, and the router "
                             f"adds the offsets (got --output={output})")
        if mode != "ptq":
            raise ValueError("the gate is already quantization-aware: --mode=ptq converts it "
                             f"unchanged (got --mode={mode})")
    n = int(gate.output_shape[-1])
    b = validate_bias(bias, n)
    if data.data_costs is not None and len(data.data_costs) != n:
        raise ValueError(f"{len(data.data_costs)} data costs for a gate with {n} experts")
    if bucket_bytes is not None:
        if data.data_costs is None:
            raise ValueError("--bucket_bytes needs the experts' data costs; the calibration "
                             "data has none (add data_costs to the .npz)")
        largest = float(np.ceil(np.asarray(data.data_costs)[b > 0]).max())
        if not bucket_bytes >= largest:
            raise ValueError(f"--bucket_bytes={bucket_bytes:g} is smaller than the largest "
                             f"data cost of a used expert ({largest:g} bytes)")
    return b


def export_gate(gate, data, bias, *, out, mode="ptq", output="index", target=None,
                emit_c=False, qat_epochs=convert.QAT_EPOCHS,
                qat_learning_rate=convert.QAT_LEARNING_RATE, seed=0,
                recalibration_rounds=3, crossing=ROUTER_CROSSING, bucket_bytes=None,
                activations="int8"):
    """Converts, checks and writes one gate; returns ``(report, problems)``.

    Args:
      gate: float Keras gate ``[M, H, W, C] -> [M, N]`` logits.
      data: :class:`gating_tflite.calibration.ExportData`.
      bias: ``float[N]`` b.
      out: path of the ``.tflite`` to write (``export_report.json`` goes next to it).
      mode: ``"ptq"`` or ``"qat"``; output: ``"index"`` or ``"logits"``.
      target: :class:`gating_tflite.targets.Target` (None: nothing checked).
      emit_c: also write the firmware files next to ``out`` (and, for ``logits``
        output, the router ``gate_router.h/.c``).
      crossing, bucket_bytes: the online controller (:func:`scene_shift`); a
        ``bucket_bytes`` makes the emitted router a hard-mode one.
      activations: ``"int8"`` or ``"int16"`` (16x8, ``output="logits"``, ``mode="ptq"``,
        a float gate; no ``gate_router.c``: the C router takes int8 logits).
    Returns:
      the :class:`ExportReport` (also written as JSON) and a list of budget problems
      (str; empty when the model fits the target).
    Raises:
      ExportError / interpreters.UnsupportedOpError: an op TFLite Micro lacks, or a
        model that is not fully integer.
      ValueError: bad arguments, or an ``out`` that cannot be written.
    """
    b = _check_arguments(gate, data, bias, mode, output, bucket_bytes, activations)
    target = target or resolve_target()
    out_dir = check_output_path(out, emit_c=emit_c)
    t0 = time.time()
    if activations == "int16":
        _log_weight_grid(gate)

    logits, float_offsets = routing_offsets(gate, data.calibration, b)
    model, clip = routing_model(gate, logits, float_offsets, b, output)
    int8 = quantize(model, data, b, float_offsets, mode=mode, output=output,
                    qat_epochs=qat_epochs, qat_learning_rate=qat_learning_rate, seed=seed,
                    rounds=recalibration_rounds, activations=activations)
    tflite, offsets = int8.tflite, int8.offsets
    sample = data.test[:1] if data.test is not None else data.calibration[:1]
    facts = inspect_model(tflite, sample, activations)
    kwargs = dict(output=output, offsets=offsets, float_offsets=float_offsets)
    test = check_test_inputs(gate, tflite, facts, data, **kwargs)
    heldout = check_heldout(gate, tflite, facts, data, b, **kwargs)
    agreement = None if test is None else dict(test.agreement)
    if heldout is not None:
        agreement = agreement or {}
        agreement["heldout_tflm"] = heldout.agreement
    shift = None if test is None else scene_shift(
        gate, tflite, data, b, test, output=output, crossing=crossing, bucket_bytes=bucket_bytes,
        calibration_logits=int8.calibration_logits if output == "logits" else logits)
    macs = quantization_aware.gate_macs(gate)
    latency_ms, latency_assumption = latency_estimate(macs, target)
    if latency_assumption and activations == "int16":
        latency_assumption += " (int8 kernels; the int16 ones are slower: not measured)"
    report = ExportReport(
        model=os.path.abspath(out), mode=mode, output=output, activations=activations,
        flash_bytes=len(tflite),
        arena_bytes=facts.arena_bytes, macs=macs, parameters=quantization_aware.gate_parameters(gate),
        ops=facts.ops, input=facts.input_info.as_dict(),
        output_tensor=facts.output_info.as_dict(), bias=b.tolist(),
        offsets=np.asarray(offsets).tolist(), offsets_float=float_offsets.tolist(),
        routing_clip=clip,
        int8_correction=None if int8.correction is None else int8.correction.tolist(),
        frequencies_calibration=int8.calibration_frequencies.tolist(),
        expert_names=list(data.expert_names), data=data.notes,
        latency_ms_estimate=latency_ms, latency_assumption=latency_assumption,
        agreement=agreement,
        frequencies_test=None if test is None else test.frequencies.tolist(),
        metric=None if test is None else test.metric,
        frequencies=None if heldout is None else heldout.frequencies.tolist(),
        frequencies_float=None if heldout is None else heldout.frequencies_float.tolist(),
        frequency_error=None if heldout is None else heldout.error,
        heldout_inputs=None if heldout is None else heldout.inputs,
        data_cost=data_cost(b, data.data_costs, test, heldout),
        target=target.as_dict(len(tflite), facts.arena_bytes),
        checks=quality_checks(test, heldout), check_thresholds=dict(CHECKS),
        scene_shift=None if shift is None else shift.rows,
        router=None if shift is None else shift.router,
        seconds=time.time() - t0)
    firmware = None
    if emit_c:
        firmware = dict(ops=facts.ops, input_info=facts.input_info,
                        output_info=facts.output_info, output=output,
                        arena_bytes=facts.arena_bytes, num_experts=len(b),
                        expert_names=data.expert_names, offsets=offsets,
                        input_description=data.input_description)
    router = None
    if emit_c and output == "logits" and activations == "int16":
        log("gate_router.h/.c not written: the C router works on int8 logits; route the "
            "int16 logits with kGateOffsets (gate_model.h) or export with --activations=int8")
    elif emit_c and output == "logits":
        costs = np.ones(len(b)) if data.data_costs is None else data.data_costs
        make = BudgetController if _test_costs(data, len(b)) is None else ByteController
        controller = make.from_calibration(
            int8.calibration_logits, b, costs, crossing=crossing, bucket_bytes=bucket_bytes,
            int8_scale=facts.output_info.scale)
        router = dict(controller=controller, expert_names=data.expert_names)
    elif emit_c:
        log("gate_router.h/.c not written: the router works on int8 logits (--output=logits)")
    write_outputs(report, out_dir, tflite, firmware=firmware, router=router)
    return report, target.check(len(tflite), facts.arena_bytes)


def summary(report):
    """The terminal summary of a report (an :class:`ExportReport` or its dict; one line
    per fact)."""
    if isinstance(report, ExportReport):
        report = report.as_dict()
    quantized = report.get("activations", "int8")
    kind = "" if quantized == "int8" else f", {quantized} activations"
    lines = [f"model        {report['model']} ({report['mode']}, output={report['output']}{kind})",
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
        lines.append(f"frequencies  {quantized} {np.round(report['frequencies'], 3).tolist()} vs b "
                     f"{np.round(report['bias'], 3).tolist()} on {report['heldout_inputs']} "
                     f"held-out inputs (max error {report['frequency_error']:.3f})")
    if "frequencies_test" in report:
        lines.append(f"             test inputs: {np.round(report['frequencies_test'], 3).tolist()}")
    if "data_cost" in report:
        lines.append("data cost    " + ", ".join(f"{k} {v:,.0f} B"
                                                 for k, v in report["data_cost"].items()))
    if "metric" in report:
        m = report["metric"]
        lines.append(f"metric       {m['name']}: float {m['float']:.3f}, {quantized} {m['int8']:.3f} "
                     f"(drop {m['drop']:+.3f})")
    for i, (name, row) in enumerate(report.get("scene_shift", {}).items()):
        metric = f", metric {row['metric']:.3f}" if "metric" in row else ""
        lines.append(("scene shift  " if i == 0 else "             ")
                     + f"{name}: cost {100 * row['mean_over']:+.1f}% vs budget, worst "
                     f"{row['window']}-window {100 * row['worst_window_over']:+.1f}%, "
                     f"frequencies {np.round(row['frequencies'], 3).tolist()}{metric}")
    t = report["target"]
    lines.append(f"target       {t['name']}: flash {t['flash_kib']} KiB, RAM {t['ram_kib']} KiB, "
                 f"fits: {t['fits']}")
    failed = [k for k, ok in report["checks"].items() if not ok]
    lines.append("checks       " + (f"missed: {failed}" if failed else "all met"))
    return "\n".join(lines)
