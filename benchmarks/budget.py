"""The online budget controller's cost per input next to the gate's:
``python -m benchmarks.budget [--inputs=N]``.

Every figure is a ratio of two timings measured in this one run, on this machine:

1. the compact SR gate (64x64x3 parts, 3 experts; random weights, same architecture
   and ops as ``make firmware``'s) as an int8 model in LiteRT, one input per invoke;
2. the generated C router (``gating_tflite.router_c``, compiled here with ``cc -O2``):
   ``gate_router_choose`` per input (soft and hard mode) and
   ``gate_router_route_frame`` per input of 77-input frames (an SR photo);
3. the Python controller (``BudgetController.choose``, int8 path) per input.

The ratios say how much the controller adds to routing one input. On the Cortex-M7
the gate's int8 kernels and the router's integer loop run on the same core, so the
host ratio is the figure to read (the absolute times are this CPU's).
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from benchmarks.timing import median_seconds
from bmoe_tf.backend import keras
from bmoe_tf.gating import compact_gate, count_macs
from bmoe_tf.budget import BudgetController
from gating_tflite import convert, interpreters
from gating_tflite.router_c import write_router_files

COSTS = np.array([3072.0, 5292.0, 12288.0])
BIAS = np.array([0.5387, 0.4613, 0.0])

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "gate_router.h"
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}
int main(int argc, char **argv) {
  long m = atol(argv[1]), i, frame = 77, sink = 0;
  int8_t *q = malloc((size_t)m * GATE_ROUTER_NUM_EXPERTS);
  uint8_t *out = malloc((size_t)m); uint16_t order[77];
  gate_router_state s; double t0, t1, t2;
  srand(1);
  for (i = 0; i < m * GATE_ROUTER_NUM_EXPERTS; ++i) q[i] = (int8_t)(rand() % 256 - 128);
  gate_router_reset(&s);
  t0 = now();
  for (i = 0; i < m; ++i) sink += gate_router_choose(&s, q + i * GATE_ROUTER_NUM_EXPERTS);
  t1 = now();
  gate_router_reset(&s);
  for (i = 0; i + frame <= m; i += frame)
    sink += gate_router_route_frame(&s, q + i * GATE_ROUTER_NUM_EXPERTS, (int32_t)frame,
                                    out + i, order);
  t2 = now();
  printf("%.6e %.6e %ld\n", (t1 - t0) / m, (t2 - t1) / (m - m % frame), sink);
  return 0;
}
"""


def c_router_seconds(controller, inputs, workdir):
    """``(seconds per choose, seconds per input of route_frame)`` of the compiled router."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, None
    write_router_files(workdir, controller)
    with open(os.path.join(workdir, "bench.c"), "w") as f:
        f.write(DRIVER)
    exe = os.path.join(workdir, "bench")
    subprocess.run([cc, "-std=gnu99", "-O2", "-o", exe, os.path.join(workdir, "gate_router.c"),
                    os.path.join(workdir, "bench.c")], check=True)
    out = subprocess.run([exe, str(inputs)], check=True, capture_output=True, text=True).stdout
    choose, frame, _ = out.split()
    return float(choose), float(frame)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=200_000, help="router inputs timed")
    parser.add_argument("--gate_inputs", type=int, default=300, help="gate invokes timed")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    gate = compact_gate((64, 64, 3), 3)
    rng = np.random.default_rng(0)
    x = rng.random((args.gate_inputs, 64, 64, 3), np.float32)
    tflite = convert.convert_int8(gate, x[:100], output="logits")
    start = time.perf_counter()
    q = interpreters.run_litert(tflite, x)
    gate_s = (time.perf_counter() - start) / len(x)
    print(f"compact gate: {gate.count_params():,} parameters, {count_macs(gate):,} MACs; "
          f"int8 LiteRT {gate_s * 1e6:,.1f} us per input (incl. quantizing the input)")

    soft = BudgetController(BIAS, COSTS, step=0.19, logit_range=157.0, gap_scale=2.27,
                            int8_scale=1.2, offsets=[1.2, -1.2, 0.0])
    hard = BudgetController(BIAS, COSTS, step=0.19, logit_range=157.0, gap_scale=2.27,
                            int8_scale=1.2, offsets=[1.2, -1.2, 0.0], bucket_bytes=26214.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in (("soft", soft), ("hard", hard)):
            os.makedirs(os.path.join(tmp, name))
            choose, frame = c_router_seconds(c, args.inputs, os.path.join(tmp, name))
            if choose is None:
                print("no C compiler: the C router is not timed")
                break
            rows.append((f"C gate_router_choose ({name})", choose))
            if name == "soft":
                rows.append(("C gate_router_route_frame (77-input frames), per input", frame))
    logits = np.asarray(q, np.int64).reshape(len(x), 3)
    rows_py = np.tile(logits, (max(1, 3000 // len(logits)), 1))
    py = median_seconds(lambda: soft.route_sequence(rows_py), 3, 1) / len(rows_py)
    rows.append(("Python BudgetController.choose (int8)", py))
    print(f"{'per input':58s} {'seconds':>11s} {'/ gate':>9s}")
    print(f"{'gate (int8, LiteRT)':58s} {gate_s:11.3e} {1.0:9.2e}")
    for name, seconds in rows:
        print(f"{name:58s} {seconds:11.3e} {seconds / gate_s:9.2e}")


if __name__ == "__main__":
    main()
