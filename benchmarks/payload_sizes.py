"""Payload bytes of the SR experts' inputs on the bundled photos, per codec.

    python -m benchmarks.payload_sizes

Every 64x64 part of the bundled photos (the SR task's data), downsampled as each expert's
P_n does (x4 / x3 / x2: 16 / 21 / 32 px), as uint8, through each codec of
:mod:`bmoe_tf.payload`: mean and p5-p95 bytes per part, and the round trip's RMS error in
grey levels (0 for the lossless codecs). The paper's d_n (float32) is printed beside them.

Then what a byte controller (:class:`bmoe_tf.byte_controller.ByteController`) costs the
sensor: it needs every expert's payload size of an input, so it encodes all three scales
where a frequency controller encodes the chosen one: the encode time of both per part
(b = 0.5 / 0.3 / 0.2) and their ratio, on this CPU.
"""
import time

import numpy as np

from bmoe_tf import payload
from bmoe_tf.backend import tf
from experiments.super_resolution import data as sr_data
from experiments.super_resolution import models as sr_models

CODECS = ("raw", "png", "jpeg:90", "jpeg:90:tables", "jpeg:75:tables")


def main():
    parts = sr_data.make_part_set(sr_data.load_images("bundled")).parts
    print(f"{len(parts)} parts of 64x64 from the bundled photos")
    print(f"{'scale':>5} {'side':>4} {'codec':>16} {'paper B':>8} {'mean B':>8} "
          f"{'p5-p95 B':>12} {'rms err':>7}")
    for scale in sr_models.SCALES:
        side = sr_models.low_resolution_size(scale)
        low = payload.to_uint8(sr_models.downsample(tf.constant(parts), scale).numpy())
        for spec in CODECS:
            decoded, sizes = payload.round_trip(spec, low)
            rms = float(np.sqrt(((decoded.astype(np.float64) - low) ** 2).mean()))
            p5, p95 = np.percentile(sizes, [5, 95])
            print(f"x{scale:<4} {side:>4} {spec:>16} {3 * side * side * 4:>8} "
                  f"{sizes.mean():>8.1f} {f'{p5:.0f}-{p95:.0f}':>12} {rms:>7.2f}")
    encode_cost(parts)


def encode_cost(parts, spec="jpeg:90:tables", bias=(0.5, 0.3, 0.2), repeats=3):
    """Per part: seconds to encode every scale's payload vs the expected seconds of the
    chosen scale alone; prints their ratio."""
    codec = payload.make_codec(spec)
    lows = [payload.to_uint8(sr_models.downsample(tf.constant(parts), s).numpy())
            for s in sr_models.SCALES]
    per_scale = []
    for low in lows:
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            for x in low:
                codec.encode(x)
            best = min(best, (time.perf_counter() - start) / len(low))
        per_scale.append(best)
    every, chosen = sum(per_scale), float(np.dot(bias, per_scale))
    print(f"\nencode time per part ({spec}; x4 / x3 / x2 "
          + " / ".join(f"{1e6 * t:.0f}" for t in per_scale) + " us): every scale "
          f"{1e6 * every:.0f} us, the chosen one at b = {list(bias)} {1e6 * chosen:.0f} us, "
          f"ratio {every / chosen:.2f}")


if __name__ == "__main__":
    main()
