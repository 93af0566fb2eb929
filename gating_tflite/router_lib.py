"""The emitted ``gate_router.c`` as a host library: compiled with the system C compiler and
called through ``ctypes``, so a process on the host (the system's sensors) routes with the
firmware's own code, not a re-implementation.

    controller = byte_controller_from_report(report, data_costs, target_bytes=160.0)
    router = CRouter.build(out_dir, controller)      # writes gate_router.h/.c, compiles
    choice = router.choose_bytes(int8_logits, costs)  # gate_router_choose_bytes

:func:`byte_controller_from_report` rebuilds the :class:`bmoe_tf.byte_controller.ByteController`
an export generated its router from (``export_report.json``'s ``router`` block), with a
target and a bucket of the caller's: the same scores and offsets, a budget in the bytes the
caller counts (a link's, framing included). The Python controller is the offline
reference the router must equal, choice for choice.
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np

from gating_tflite.router_c import write_router_files

__all__ = ["CRouter", "byte_controller_from_report", "compiler", "RouterBuildError"]

_SHIM = r"""
#include <stddef.h>
#include "gate_router.h"
size_t bmoe_router_state_size(void) { return sizeof(gate_router_state); }
uint32_t bmoe_router_waits(const gate_router_state *s) {
#if GATE_ROUTER_BYTE_MODE
  return s->waits;
#else
  (void)s; return 0;
#endif
}
"""


class RouterBuildError(ValueError):
    """No C compiler, or the router sources did not compile (the compiler's message)."""


def compiler():
    """The system C compiler (``cc``, ``gcc`` or ``clang``), or None."""
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def byte_controller_from_report(report, data_costs, *, target_bytes, bucket_bytes=None):
    """The int8 byte controller of an export (``report``: ``export_report.json`` as a dict,
    exported with ``--output=logits`` from an encoded workdir) for a budget of
    ``target_bytes`` per input and, in hard mode, a bucket of ``bucket_bytes``.

    Args:
      report: the export report (its ``router``, ``bias``, ``output``).
      data_costs: ``float[N]`` mean payload bytes per expert (the export data's).
    Raises:
      ValueError: a report without an int8 byte router (``--output=index``, or a paper-cost
        workdir), or a bad target/bucket.
    """
    from bmoe_tf.byte_controller import ByteController

    router = report.get("router") or {}
    if report.get("output") != "logits" or router.get("int8_scale") is None:
        raise ValueError("the gate was exported with --output=index: the sensor's router needs "
                         "the int8 logits (export it with --output=logits)")
    if not str(router.get("budget", "")).startswith("bytes"):
        raise ValueError("the export's router holds frequencies, not bytes: export a gate of a "
                         "--data_cost=encoded workdir")
    return ByteController(
        report["bias"], data_costs, target_bytes=float(target_bytes), bucket_bytes=bucket_bytes,
        step=router["step"], logit_range=router["logit_range"], gap_scale=router["gap_scale"],
        offsets=router["initial_offsets"], int8_scale=router["int8_scale"])


class CRouter:
    """``gate_router_choose_bytes`` of a compiled ``gate_router.c`` (one state per object).

    Attributes: ``num_experts``; ``steps``, ``bytes_sent``, ``waits`` as the C state counts.
    """

    def __init__(self, library, num_experts):
        self._lib = ctypes.CDLL(os.fspath(library))
        self._lib.bmoe_router_state_size.restype = ctypes.c_size_t
        self._lib.bmoe_router_waits.restype = ctypes.c_uint32
        self._lib.gate_router_choose_bytes.restype = ctypes.c_int
        self._lib.gate_router_choose_bytes.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                       ctypes.c_void_p]
        self._state = ctypes.create_string_buffer(self._lib.bmoe_router_state_size())
        self.num_experts = int(num_experts)
        self.reset()

    @classmethod
    def build(cls, out_dir, controller, *, expert_names=()):
        """Writes ``gate_router.h/.c`` of ``controller`` (a byte controller) into
        ``out_dir``, compiles them into ``libgate_router.so`` there and loads it."""
        cc = compiler()
        if cc is None:
            raise RouterBuildError("no C compiler (cc, gcc or clang) on this machine: the "
                                   "sensor runs the emitted gate_router.c")
        os.makedirs(out_dir, exist_ok=True)
        write_router_files(out_dir, controller, expert_names=expert_names)
        shim = os.path.join(out_dir, "router_shim.c")
        with open(shim, "w") as f:
            f.write(_SHIM)
        lib = os.path.join(out_dir, "libgate_router.so")
        tmp = lib + f".{os.getpid()}.tmp"
        cmd = [cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
               "-o", tmp, os.path.join(out_dir, "gate_router.c"), shim]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RouterBuildError(f"gate_router.c did not compile: {done.stderr.strip()[:2000]}")
        os.replace(tmp, lib)
        return cls(lib, len(controller.bias))

    def reset(self):
        self._lib.gate_router_reset(self._state)
        self.steps = 0
        self.bytes_sent = 0

    @property
    def waits(self):
        return int(self._lib.bmoe_router_waits(self._state))

    def choose_bytes(self, logits, costs):
        """One input: ``int8[N]`` logits (the model's output tensor) and ``[N]`` bytes of its
        payload per expert; returns the expert, or -1 (nothing chosen: a payload over the
        router's limit or, in hard mode, larger than the bucket)."""
        z = np.ascontiguousarray(np.asarray(logits).reshape(-1), np.int8)
        c = np.ascontiguousarray(np.ceil(np.asarray(costs, np.float64)).reshape(-1), np.uint32)
        if z.size != self.num_experts or c.size != self.num_experts:
            raise ValueError(f"logits and costs must hold {self.num_experts} values, got "
                             f"{z.size} and {c.size}")
        chosen = int(self._lib.gate_router_choose_bytes(self._state, z.ctypes.data,
                                                        c.ctypes.data))
        if chosen >= 0:
            self.steps += 1
            self.bytes_sent += int(c[chosen])
        return chosen
