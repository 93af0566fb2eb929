"""Running an int8 gate in LiteRT (``ai-edge-litert``) and in TFLite Micro (``tflite-micro``).

Both take float inputs ``[M, H, W, C]``, quantize them with the model's input scale
and zero point (what the sensor does), and invoke the batch-1 model once per input:
``outputs[M, ...]`` in the model's output type (int8 logits or int32 expert index).

TFLite Micro allocates every tensor in one caller-provided arena;
:func:`smallest_arena` finds the smallest arena that still allocates and runs, which
is the RAM figure a firmware engineer reserves.

TFLite Micro's Python wrapper can crash the process (SIGSEGV) while it constructs
an interpreter whose arena is too small for some sizes (measured: a MEAN +
FULLY_CONNECTED gate crashes at 64 and 1024 B and fails cleanly at 768 B), so every
allocation with an arena that may be too small is tried in a forked child first
(:func:`_probes_isolated`); a crash there counts as "does not fit".
"""
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile

import numpy as np

from gating_tflite.model_file import model_io, model_ops

__all__ = ["TFLMError", "UnsupportedOpError", "run_litert", "run_tflm", "smallest_arena",
           "check_tflm_support", "quantized_inputs", "TFLMGate"]

_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")


class TFLMError(ValueError):
    """TFLite Micro refused the model; ``log`` holds what it printed."""

    def __init__(self, message, log=""):
        super().__init__(message + (f"\nTFLite Micro said:\n{log.strip()}" if log.strip() else ""))
        self.log = log


class UnsupportedOpError(TFLMError):
    """The model uses an op that TFLite Micro has no (int8) kernel for."""


@contextlib.contextmanager
def _captured_stderr():
    """Captures what C++ code writes to file descriptor 2 (TFLM's MicroPrintf)."""
    log = {"text": ""}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            log["text"] = sink.read().decode(errors="replace")


def quantized_inputs(model_bytes, inputs):
    """float ``[M, ...]`` -> the model input's int8 ``[M, ...]`` (shape-checked)."""
    (info,), _ = model_io(model_bytes)
    inputs = np.asarray(inputs)
    if inputs.ndim != len(info.shape) or tuple(inputs.shape[1:]) != tuple(info.shape[1:]):
        raise ValueError(f"inputs of shape {inputs.shape} do not match the model input "
                         f"[M, {', '.join(str(d) for d in info.shape[1:])}]")
    if inputs.dtype == info.numpy_dtype:
        return inputs
    return info.quantize(inputs)


def run_litert(model_bytes, inputs):
    """Invokes the model in LiteRT once per input; returns ``[M, *output_shape[1:]]``."""
    from ai_edge_litert.interpreter import Interpreter

    q = quantized_inputs(model_bytes, inputs)
    interpreter = Interpreter(model_content=bytes(model_bytes))
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    for row in q:
        interpreter.set_tensor(input_index, row[None])
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(output_index)[0]))
    return np.stack(outputs) if outputs else np.zeros((0,))


def _tflm_interpreter(model_bytes, arena_size):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=int(arena_size))


def _tflm_failure(model_bytes, log, what):
    missing = _MISSING_OP.findall(log)
    if missing:
        raise UnsupportedOpError(
            f"TFLite Micro has no kernel for op(s) {sorted(set(missing))} used by this gate "
            f"(ops: {model_ops(model_bytes)}); rebuild the gate without them", log)
    raise TFLMError(f"TFLite Micro could not {what} the model", log)


def run_tflm(model_bytes, inputs, arena_size):
    """Invokes the model in TFLite Micro once per input; returns ``[M, *output_shape[1:]]``.

    Raises:
      UnsupportedOpError / TFLMError (both ValueErrors) when TFLM refuses the model,
      with what TFLM printed.
    """
    q = quantized_inputs(model_bytes, inputs)
    known = _KNOWN_GOOD.get(_known_good_key(model_bytes))
    if len(q) and (known is None or arena_size < known):
        probe = _OneProbe(int(arena_size))  # a too-small arena can crash TFLM: try it in a child
        _probes_isolated(model_bytes, q[:1], probe)
        if not probe.result[0]:
            _tflm_failure(model_bytes, probe.result[1], f"run (arena {arena_size} B) with")
    with _captured_stderr() as log:
        try:
            interpreter = _tflm_interpreter(model_bytes, arena_size)
            outputs = []
            for row in q:
                interpreter.set_input(row[None], 0)
                interpreter.invoke()
                outputs.append(np.array(interpreter.get_output(0)[0]))
        except RuntimeError:
            failed = True
        else:
            failed = False
    if failed:
        _tflm_failure(model_bytes, log["text"], f"run (arena {arena_size} B) with")
    return np.stack(outputs) if outputs else np.zeros((0,))


def _runs(model_bytes, sample, arena_size):
    with _captured_stderr() as log:
        try:
            interpreter = _tflm_interpreter(model_bytes, arena_size)
            interpreter.set_input(sample, 0)
            interpreter.invoke()
            return True, log
        except RuntimeError:
            return False, log


def _probes_isolated(model_bytes, sample, search):
    """Runs the probes ``search`` asks for in forked child processes.

    ``search.next_size()`` gives the next arena size to try (None: done) and
    ``search.record(size, ok, log_text)`` takes each result. A child runs probes
    until the search is done, streaming each result to this process, which replays
    them on its own ``search``; a child that dies (TFLM crashing on a too-small
    arena) records a failure for the size it was trying and a new child goes on.
    So a search costs one fork plus one per crash. Without ``os.fork`` (not POSIX)
    the probes run in this process.
    """
    if not hasattr(os, "fork"):
        while (size := search.next_size()) is not None:
            ok, log = _runs(model_bytes, sample, size)
            search.record(size, ok, log["text"])
        return
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401 -- import before forking

    while search.next_size() is not None:
        read_fd, write_fd = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: probe and report until done (or crashed); never returns
            try:
                import faulthandler

                faulthandler.disable()  # a crash here is expected; the parent reports it
                os.close(read_fd)
                with os.fdopen(write_fd, "w") as pipe:
                    while (size := search.next_size()) is not None:
                        pipe.write(json.dumps({"try": size}) + "\n")
                        pipe.flush()
                        ok, log = _runs(model_bytes, sample, size)
                        pipe.write(json.dumps({"size": size, "ok": ok, "log": log["text"]}) + "\n")
                        pipe.flush()
                        search.record(size, ok, log["text"])
            finally:
                os._exit(0)
        os.close(write_fd)
        trying = None
        with os.fdopen(read_fd, "r") as pipe:
            lines = pipe.read().splitlines()
        _, status = os.waitpid(pid, 0)
        for line in lines:
            message = json.loads(line)
            if "try" in message:
                trying = message["try"]
            else:
                trying = None
                search.record(message["size"], message["ok"], message["log"])
        if trying is not None:
            how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.WEXITSTATUS(status)}")
            search.record(trying, False, f"(TFLite Micro crashed allocating {trying} B: {how})")


class _ArenaSearch:
    """Doubling from 16 KiB to a working size, then bisection from 0 (see smallest_arena)."""

    def __init__(self, model_bytes, granularity, max_arena):
        self.model_bytes, self.granularity, self.max_arena = model_bytes, granularity, max_arena
        self.low, self.high, self.found = 0, 16 * 1024, False

    def next_size(self):
        if not self.found:
            return self.high
        mid = (self.low + self.high) // 2 // self.granularity * self.granularity
        if self.high - self.low <= self.granularity or mid <= self.low:
            return None
        return mid

    def record(self, size, ok, log):
        if not self.found:
            if ok:
                self.found = True
            elif _MISSING_OP.search(log) or self.high >= self.max_arena:
                _tflm_failure(self.model_bytes, log, f"allocate (arena {self.high} B) or run")
            else:
                self.high = min(2 * self.high, self.max_arena)
        elif ok:
            self.high = size
        else:
            self.low = size


class _OneProbe:
    def __init__(self, size):
        self.size, self.result = size, None

    def next_size(self):
        return self.size if self.result is None else None

    def record(self, size, ok, log):
        self.result = (ok, log)


#: sha256 of a model -> the smallest arena known to allocate and run it (allocation
#: is monotone in the arena size, so larger arenas need no crash-isolated probe).
_KNOWN_GOOD = {}


def _known_good_key(model_bytes):
    return hashlib.sha256(bytes(model_bytes)).hexdigest()


def check_tflm_support(model_bytes, max_arena=64 << 20):
    """Raises UnsupportedOpError if TFLM lacks a kernel the model needs (else returns None).

    Allocation and one invoke on a zero input with a generous arena: that is where
    TFLM resolves every op and checks each kernel's input types.
    """
    (info,), _ = model_io(model_bytes)
    sample = np.zeros((1,) + tuple(info.shape[1:]), info.numpy_dtype)
    ok, log = _runs(model_bytes, sample, max_arena)
    if not ok:
        _tflm_failure(model_bytes, log["text"], f"allocate (arena {max_arena} B) or run")


def smallest_arena(model_bytes, sample=None, *, granularity=16, max_arena=64 << 20):
    """The smallest TFLM arena (bytes, a multiple of ``granularity``) that allocates and runs.

    Args:
      model_bytes: the int8 ``.tflite``.
      sample: one input ``[1, ...]`` (int8 or float); zeros when None.
      granularity: resolution of the search in bytes.
      max_arena: give up above this size.
    Returns:
      ``int`` bytes; a bisection between a failing and a working size (TFLM's
      allocation is monotone in the arena size).
    """
    (info,), _ = model_io(model_bytes)
    if sample is None:
        sample = np.zeros((1,) + tuple(info.shape[1:]), info.numpy_dtype)
    sample = quantized_inputs(model_bytes, np.asarray(sample)[:1])
    search = _ArenaSearch(model_bytes, granularity, max_arena)
    _probes_isolated(model_bytes, sample, search)
    _KNOWN_GOOD[_known_good_key(model_bytes)] = int(search.high)
    return int(search.high)


class TFLMGate:
    """One TFLite Micro interpreter of an int8 gate, invoked one input at a time, as the
    sensor's firmware does (:func:`run_tflm` checks the arena first, in a child process).

    ``gate.outputs(x)``: float ``[H, W, C]`` (the gate's float input) -> the output tensor's
    raw values (``int8[N]`` logits of a ``--output=logits`` gate).
    """

    def __init__(self, model_bytes, arena_size):
        self._bytes = bytes(model_bytes)
        (self.input_info,), (self.output_info,) = model_io(self._bytes)
        run_tflm(self._bytes, np.zeros((1, *self.input_info.shape[1:]), np.float32), arena_size)
        self._interpreter = _tflm_interpreter(self._bytes, arena_size)

    def outputs(self, x):
        q = quantized_inputs(self._bytes, np.asarray(x)[None])
        self._interpreter.set_input(q, 0)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_output(0)[0])
