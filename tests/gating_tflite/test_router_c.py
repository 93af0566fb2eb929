"""gating_tflite.router_c: the generated C99 router, compiled with the system C compiler,
makes the Python controller's choices exactly (per input, hard mode, per frame)."""
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

from bmoe_tf.budget import BudgetController
from gating_tflite.router_c import ROUTER_FILES, write_router_files

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")

COSTS = np.array([3072.0, 5292.0, 12288.0])

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "gate_router.h"
/* stdin: int32 M, int8 logits[M*N], int32 F, int32 sizes[F]; stdout: uint8 choices[M] */
int main(void) {
  int32_t m, f, i, start = 0;
  int8_t *logits; uint8_t *out; uint16_t *order; int32_t *sizes;
  gate_router_state state;
  if (fread(&m, 4, 1, stdin) != 1) return 2;
  logits = malloc((size_t)m * GATE_ROUTER_NUM_EXPERTS + 1);
  out = malloc((size_t)m + 1); order = malloc(2 * (size_t)m + 2);
  if (fread(logits, 1, (size_t)m * GATE_ROUTER_NUM_EXPERTS, stdin)
      != (size_t)m * GATE_ROUTER_NUM_EXPERTS) return 2;
  if (fread(&f, 4, 1, stdin) != 1) return 2;
  sizes = malloc(4 * (size_t)f + 4);
  if (f && fread(sizes, 4, (size_t)f, stdin) != (size_t)f) return 2;
  gate_router_reset(&state);
  if (f == 0) {
    for (i = 0; i < m; ++i) out[i] = (uint8_t)gate_router_choose(&state,
                                                   logits + i * GATE_ROUTER_NUM_EXPERTS);
  } else {
    for (i = 0; i < f; ++i) {
      if (gate_router_route_frame(&state, logits + start * GATE_ROUTER_NUM_EXPERTS, sizes[i],
                                  out + start, order) != 0) return 3;
      start += sizes[i];
    }
  }
  fwrite(out, 1, (size_t)m, stdout);
  return 0;
}
"""


def _build(tmp_path, controller):
    write_router_files(str(tmp_path), controller, expert_names=("x4", "x3", "x2"))
    (tmp_path / "driver.c").write_text(DRIVER)
    exe = tmp_path / "router"
    subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-o", str(exe), str(tmp_path / "gate_router.c"), str(tmp_path / "driver.c")],
                   check=True, capture_output=True, text=True)
    return exe


def _run(exe, logits, frames=()):
    data = struct.pack("<i", len(logits)) + logits.astype(np.int8).tobytes()
    data += struct.pack("<i", len(frames)) + np.asarray(frames, "<i4").tobytes()
    out = subprocess.run([str(exe)], input=data, capture_output=True, check=True, timeout=60)
    return np.frombuffer(out.stdout, np.uint8).astype(np.int64)


def _sequence(seed, m=3000):
    """Adversarial int8 logits: noise, saturated rows, a block favouring one expert."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, size=(m, 3))
    q[rng.integers(0, m, 100)] = 127
    q[m // 3:m // 2, 1] = np.clip(q[m // 3:m // 2, 1] + 120, -128, 127)
    q[2 * m // 3:2 * m // 3 + 100] = rng.integers(-3, 3, size=(100, 3))
    return q


CASES = [
    dict(bias=[0.2, 0.5, 0.3], step=0.37, logit_range=12.0, gap_scale=None, int8_scale=0.093),
    dict(bias=[0.5387, 0.4613, 0.0], step=0.19, logit_range=157.2, gap_scale=2.27,
         int8_scale=1.21, offsets=[1.2, -1.2, 0.0]),
    dict(bias=[1 / 3, 1 / 3, 1 / 3], step=0.05, logit_range=8.0, gap_scale=0.5,
         int8_scale=0.05),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("bucket", [None, 2.5])
def test_c_router_chooses_like_the_python_controller(tmp_path, case, bucket):
    kw = dict(CASES[case])
    bias = kw.pop("bias")
    if bucket is not None:
        kw["bucket_bytes"] = bucket * COSTS[np.asarray(bias) > 0].max()
    python = BudgetController(bias, COSTS, **kw)
    exe = _build(tmp_path, python)
    q = _sequence(case)
    expected = python.route_sequence(q)
    np.testing.assert_array_equal(_run(exe, q), expected)
    assert len(set(expected.tolist())) > 1


@pytest.mark.parametrize("case", range(len(CASES)))
def test_c_per_frame_enforcement_matches_route_frame(tmp_path, case):
    kw = dict(CASES[case])
    bias = kw.pop("bias")
    python = BudgetController(bias, COSTS, **kw)
    exe = _build(tmp_path, python)
    q = _sequence(10 + case, m=1500)
    sizes = np.random.default_rng(case).integers(1, 120, size=40)
    sizes = sizes[np.cumsum(sizes) <= len(q)]
    q = q[:sizes.sum()]
    expected = np.concatenate([python.route_frame(q[s - n:s])
                               for s, n in zip(np.cumsum(sizes), sizes)])
    np.testing.assert_array_equal(_run(exe, q, sizes), expected)


def test_router_files_are_the_stated_ones_and_hard_mode_refuses_frames(tmp_path):
    c = BudgetController([0.5, 0.5, 0.0], COSTS, int8_scale=0.1, bucket_bytes=6000)
    exe = _build(tmp_path, c)
    assert sorted(os.listdir(tmp_path)) == sorted(list(ROUTER_FILES) + ["driver.c", "router"])
    data = struct.pack("<i", 2) + bytes(6) + struct.pack("<ii", 1, 2)
    assert subprocess.run([str(exe)], input=data, capture_output=True).returncode == 3
    text = (tmp_path / "gate_router.c").read_text()
    assert "float" not in text and "double" not in text and "malloc" not in text


BYTE_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "gate_router.h"
/* stdin: int32 M, int8 logits[M*N], uint32 costs[M*N];
   stdout: uint8 choices[M], then uint32 waits, uint64 bytes_sent */
int main(void) {
  int32_t m, i;
  int8_t *logits; uint32_t *costs; uint8_t *out;
  gate_router_state state;
  if (fread(&m, 4, 1, stdin) != 1) return 2;
  logits = malloc((size_t)m * GATE_ROUTER_NUM_EXPERTS + 1);
  costs = malloc(4 * (size_t)m * GATE_ROUTER_NUM_EXPERTS + 4);
  out = malloc((size_t)m + 1);
  if (fread(logits, 1, (size_t)m * GATE_ROUTER_NUM_EXPERTS, stdin)
      != (size_t)m * GATE_ROUTER_NUM_EXPERTS) return 2;
  if (fread(costs, 4, (size_t)m * GATE_ROUTER_NUM_EXPERTS, stdin)
      != (size_t)m * GATE_ROUTER_NUM_EXPERTS) return 2;
  gate_router_reset(&state);
  for (i = 0; i < m; ++i) {
    int a = gate_router_choose_bytes(&state, logits + i * GATE_ROUTER_NUM_EXPERTS,
                                     costs + i * GATE_ROUTER_NUM_EXPERTS);
    if (a < 0) return 3;
    out[i] = (uint8_t)a;
  }
  fwrite(out, 1, (size_t)m, stdout);
  fwrite(&state.waits, 4, 1, stdout);
  fwrite(&state.bytes_sent, 8, 1, stdout);
  return 0;
}
"""


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("bucket", [None, 1.5])
def test_c_byte_router_chooses_like_the_python_byte_controller(tmp_path, case, bucket):
    """Per-input payload sizes (a scene whose bytes swing 8x; spikes over the target):
    the same choices, waits and bytes as ByteController."""
    from bmoe_tf.byte_controller import ByteController

    kw = dict(CASES[case])
    bias = kw.pop("bias")
    q = _sequence(20 + case, m=2000)
    rng = np.random.default_rng(case)
    scale = np.exp(np.sin(np.arange(len(q)) / 150.0) * 1.0)[:, None]
    costs = np.ceil(COSTS / 30.0 * scale * rng.uniform(0.7, 1.3, size=q.shape))
    costs[rng.integers(0, len(q), 50)] *= 5
    if bucket is not None:
        kw["bucket_bytes"] = bucket * costs.max()
    python = ByteController(bias, COSTS / 30.0, **kw)
    write_router_files(str(tmp_path), python)
    (tmp_path / "driver.c").write_text(BYTE_DRIVER)
    exe = tmp_path / "router"
    subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o",
                    str(exe), str(tmp_path / "gate_router.c"), str(tmp_path / "driver.c")],
                   check=True, capture_output=True, text=True)
    data = (struct.pack("<i", len(q)) + q.astype(np.int8).tobytes()
            + costs.astype("<u4").tobytes())
    out = subprocess.run([str(exe)], input=data, capture_output=True, check=True,
                         timeout=60).stdout
    expected = python.route_sequence(q, costs)
    np.testing.assert_array_equal(np.frombuffer(out[:len(q)], np.uint8), expected)
    waits, sent = struct.unpack("<IQ", out[len(q):])
    assert (waits, sent) == (python.waits, python.bytes_sent)
    assert len(set(expected.tolist())) > 1
    if bucket is not None:
        assert python.waits > 0  # the spikes made it wait: the path is exercised
    text = (tmp_path / "gate_router.c").read_text()
    assert "float" not in text and "double" not in text and "malloc" not in text
