"""The command line of the int8 gate export: flags, terminal output, exit codes.

Entry points (all run :func:`run`): ``python -m gating_tflite.export``,
``python -m gating_tflite`` and the console script ``bmoe-export-gate``
(``gating_tflite.export:run``, which is :func:`run`). The flags are defined here and only
here; ``--help`` lists them and exits 0.

Exit codes:

* 0 -- exported; it fits the target (quality checks may have been missed without
  ``--strict``; a ``WARNING:`` line on stderr says so for the frequencies);
* 1 -- exported, but the model does not fit the target's flash or RAM;
* 2 -- bad flags or inputs (a missing or corrupt gate / calibration file, an
  ``--out`` that cannot be written, an unknown task or target) or a model TFLite
  Micro cannot run; one ``error: ...`` line on stderr, no report;
* 3 -- ``--strict`` and a quality check was missed.
"""
import sys

from absl import app, flags

from gating_tflite import convert, quantization_aware
from gating_tflite.calibration import EXPORT_FILE, load_export_data
from gating_tflite.gate_export import (check_gate_input, check_output_path, export_gate,
                                       load_gate_and_bias, log, summary)
from gating_tflite.targets import TARGETS, resolve_target

__all__ = ["EXIT_OK", "EXIT_DOES_NOT_FIT", "EXIT_BAD_INPUT", "EXIT_CHECKS_MISSED", "main",
           "parse_flags", "run"]

EXIT_OK, EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT, EXIT_CHECKS_MISSED = 0, 1, 2, 3


FLAGS = flags.FLAGS
flags.DEFINE_string("gate", None, "Gate SavedModel (or a gate directory holding gate/).")
flags.DEFINE_string("calibration", None, "A task workdir (see --task) or npz:PATH.")
flags.DEFINE_string("task", "super_resolution", "Task of the --calibration workdir: checked "
                    f"against the task its {EXPORT_FILE} records (super_resolution, detection, "
                    "action; unused with npz:).")
flags.DEFINE_string("out", None, "Path of the .tflite to write; export_report.json goes next to it.")
flags.DEFINE_enum("mode", "ptq", list(convert.MODES), "Post-training or quantization-aware.")
flags.DEFINE_enum("output", "index", list(convert.OUTPUTS),
                  "index: int32 expert index (offsets folded, ARG_MAX); logits: int8 logits.")
flags.DEFINE_enum("activations", "int8", list(convert.ACTIVATIONS),
                  "int8: a fully int8 model; int16: TFLite's 16x8 scheme (int16 activations "
                  "and logits, int8 weights: finer logits, twice the arena; --output=logits, "
                  "--mode=ptq, a float gate; no gate_router.c).")
flags.DEFINE_string("target", None, f"Microcontroller preset: {', '.join(sorted(TARGETS))}.")
flags.DEFINE_float("flash_kib", None, "Flash budget in KiB (overrides the preset).")
flags.DEFINE_float("ram_kib", None, "RAM budget in KiB for the arena (overrides the preset).")
flags.DEFINE_bool("emit_c", False, "Write gate_model.h/.cc and gate_ops.h next to --out.")
flags.DEFINE_list("bias", None, "b, e.g. 0.5,0.5,0 (default: the gate's gate.json).")
flags.DEFINE_integer("qat_epochs", convert.QAT_EPOCHS, "QAT fine-tuning epochs (--mode=qat).")
flags.DEFINE_float("qat_learning_rate", convert.QAT_LEARNING_RATE,
                  "QAT fine-tuning learning rate.")
flags.DEFINE_bool("strict", False, "Also exit non-zero when a quality check is missed.")
flags.DEFINE_float("router_crossing", 16.0, "Online controller: its offsets cross the whole "
                   "score range in this many inputs (smaller: faster on a new scene, rougher).")
flags.DEFINE_float("bucket_bytes", None, "Hard budget: a leaky bucket of this many bytes "
                   "(>= the largest used data cost) in the emitted gate_router.c and the "
                   "report's controller_hard row (default there: 10% of 64 inputs' budget, at "
                   "least the dearest used expert in whole bytes).")


def _fail(message, code=EXIT_BAD_INPUT):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _error_text(err):
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


#: The arguments that ask for the usage (absl's own would list no flag of this module).
HELP_ARGUMENTS = ("-h", "-help", "--help", "-?", "--helpshort", "--helpfull")


def usage():
    """The ``--help`` text: what the command does and this module's flags."""
    head = ("usage: python -m gating_tflite.export (or bmoe-export-gate) --gate=DIR "
            "--calibration=WORKDIR|npz:PATH --out=FILE.tflite [flags]\n\n"
            "Exports a trained gate as a fully int8 TFLite Micro model and checks it on the "
            "task's data.\nExit codes: 0 exported and fits, 1 does not fit the target, 2 bad "
            "flags or inputs, 3 --strict and a quality check missed.\n\nflags:\n")
    return head + FLAGS.module_help(sys.modules[__name__])


def parse_flags(argv):
    """absl's flag parsing, but ``--help`` prints :func:`usage` and exits 0, and a bad flag
    exits 2 with one ``error:`` line (not 1)."""
    if any(arg.split("=", 1)[0] in HELP_ARGUMENTS for arg in argv[1:]):
        print(usage(), flush=True)
        sys.exit(EXIT_OK)
    try:
        return FLAGS(argv)
    except flags.Error as err:
        _fail(f"{err} (--help lists the flags)")


def _check_flags():
    """Everything that can be checked before loading anything: ``(target, bias)``."""
    for name in ("gate", "calibration", "out"):
        if not getattr(FLAGS, name):
            raise ValueError(f"--{name} is required")
    target = resolve_target(FLAGS.target, FLAGS.flash_kib, FLAGS.ram_kib)
    try:
        bias = None if FLAGS.bias is None else [float(v) for v in FLAGS.bias]
    except ValueError:
        raise ValueError(f"--bias must be numbers, e.g. 0.5,0.5,0; got {FLAGS.bias}") from None
    if not FLAGS.task:
        raise ValueError("--task must name the task of the --calibration workdir")
    convert.check_activations(FLAGS.activations, output=FLAGS.output)
    if FLAGS.activations == "int16" and FLAGS.mode != "ptq":
        raise ValueError("--activations=int16 exports with --mode=ptq (QAT fine-tunes with "
                         f"int8 fake-quant ops; got --mode={FLAGS.mode})")
    if not FLAGS.router_crossing > 0:
        raise ValueError(f"--router_crossing must be a positive number of inputs, got "
                         f"{FLAGS.router_crossing}")
    if FLAGS.bucket_bytes is not None and not FLAGS.bucket_bytes > 0:
        raise ValueError(f"--bucket_bytes must be a positive number of bytes, got "
                         f"{FLAGS.bucket_bytes}")
    check_output_path(FLAGS.out, emit_c=FLAGS.emit_c)
    return target, bias


def main(argv):
    """Exports ``--gate``; exits with the codes in the module docstring."""
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    try:
        target, bias = _check_flags()
        data = load_export_data(FLAGS.calibration, FLAGS.task)
        gate, b, source = load_gate_and_bias(FLAGS.gate, bias)
        check_gate_input(gate, data)
        log(f"gate {FLAGS.gate}: {quantization_aware.gate_parameters(gate):,} parameters"
            f"{' (quantization-aware)' if quantization_aware.is_quantization_aware(gate) else ''}, "
            f"b from {source}")
        report, problems = export_gate(gate, data, b, out=FLAGS.out, mode=FLAGS.mode,
                                       output=FLAGS.output, target=target, emit_c=FLAGS.emit_c,
                                       qat_epochs=FLAGS.qat_epochs,
                                       qat_learning_rate=FLAGS.qat_learning_rate,
                                       crossing=FLAGS.router_crossing,
                                       bucket_bytes=FLAGS.bucket_bytes,
                                       activations=FLAGS.activations)
    except (ValueError, OSError) as err:  # includes UnsupportedOpError and bad flags
        _fail(_error_text(err))
    print(summary(report), flush=True)
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    if problems:
        _fail("the gate does not fit the target: " + "; ".join(problems), EXIT_DOES_NOT_FIT)
    if FLAGS.strict and report.missed_checks:
        _fail(f"quality checks missed: {report.missed_checks}", EXIT_CHECKS_MISSED)


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
