"""Core benchmarks: ``python -m benchmarks.core [--quick]``.

Every figure is a ratio of two timings measured in this one run, on this machine:

1. ``enforce_bias`` for M in {128, 4096, 65536}, N in {3, 8}: eager vs
   ``tf.function`` vs ``tf.function(jit_compile=True)`` (XLA).
2. One ``BiasedMixture`` train step on the expert cache vs a bare gate
   forward + backward + update on the same batch (target: at most 1.3x).
3. Routed inference (each input through its selected expert only) vs running
   every expert on every input; the expected ratio is
   ``sum_n b_n cost_n / sum_n cost_n`` with cost_n each expert's own time per input.
"""
import argparse

import numpy as np

from benchmarks.timing import median_seconds
from bmoe_tf import BiasedMixture, Expert
from bmoe_tf.backend import keras, tf
from bmoe_tf.cache import build_expert_cache, cache_dataset
from bmoe_tf.gating import paper_gate
from bmoe_tf.routing import enforce_bias


def _time(fn, repeats, warmup=2):
    return median_seconds(fn, repeats, warmup)


def bench_enforce(sizes, experts_counts, repeats):
    print("1. enforce_bias (median seconds per call; speed-up over eager)")
    print(f"{'M':>7} {'N':>3} {'eager':>10} {'tf.function':>12} {'XLA':>10} "
          f"{'fn/eager':>9} {'xla/eager':>9}")
    rng = np.random.default_rng(0)
    for n in experts_counts:
        bias = np.full(n, 1.0 / n)
        def enforce(g, b=bias):
            return enforce_bias(g, b)

        graph = tf.function(lambda g: enforce(g))
        xla = tf.function(lambda g: enforce(g), jit_compile=True)
        for m in sizes:
            gates = tf.nn.softmax(tf.constant(rng.normal(size=(m, n)), tf.float32))
            t_eager = _time(lambda: enforce_bias(gates, bias).numpy(), repeats)
            t_graph = _time(lambda: graph(gates).numpy(), repeats)
            t_xla = _time(lambda: xla(gates).numpy(), repeats)
            print(f"{m:>7} {n:>3} {t_eager:>10.5f} {t_graph:>12.5f} {t_xla:>10.5f} "
                  f"{t_eager / t_graph:>8.1f}x {t_eager / t_xla:>8.1f}x")


def _sr_experts(scales=(4, 3, 2), size=64, width=32):
    """ESPCN-like experts: P_n downsamples by S_n, the net upsamples back to `size`."""
    experts = []
    for s in scales:
        low = size // s
        model = keras.Sequential([
            keras.Input((low, low, 3)),
            keras.layers.Conv2D(width, 5, padding="same", activation="tanh"),
            keras.layers.Conv2D(width // 2, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(3 * s * s, 3, padding="same"),
            keras.layers.Lambda(lambda t, s=s: tf.nn.depth_to_space(t, s)),
            keras.layers.Resizing(size, size),
        ], name=f"espcn_x{s}")
        experts.append(Expert(model, preprocess=lambda x, low=low: tf.image.resize(
            x, (low, low), antialias=True), name=f"x{s}"))
    return experts


def bench_train_step(batch, repeats):
    print("\n2. one train step on the cache vs a bare gate forward+backward (SR paper gate)")
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(batch, 64, 64, 3)).astype(np.float32)
    experts = _sr_experts()
    cache = build_expert_cache(experts, x, x, kind="mse", verbose=0)
    mix = BiasedMixture(paper_gate("super_resolution"), experts, [0.5, 0.25, 0.25])
    mix.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    features, target = next(iter(cache_dataset(x, cache, batch_size=batch, shuffle=False)))
    step = mix.make_train_function()
    data = tf.data.Dataset.from_tensors((features, target)).repeat()
    iterator = iter(data)
    t_mix = _time(lambda: step(iterator), repeats)

    gate = paper_gate("super_resolution")
    opt = keras.optimizers.Adam(1e-4)
    gate_input = tf.constant(x)

    @tf.function
    def bare():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(gate(gate_input, training=True)))
        grads = tape.gradient(loss, gate.trainable_variables)
        opt.apply_gradients(zip(grads, gate.trainable_variables))
        return loss

    t_bare = _time(lambda: bare().numpy(), repeats)
    print(f"batch {batch}: mixture train step {t_mix * 1e3:.2f} ms, bare gate step "
          f"{t_bare * 1e3:.2f} ms, ratio {t_mix / t_bare:.2f}x (target <= 1.3x)")
    return t_mix / t_bare


def bench_routed_inference(batch, repeats):
    print("\n3. routed inference vs every expert on every input (64x64 SR parts)")
    rng = np.random.default_rng(2)
    x = tf.constant(rng.uniform(size=(batch, 64, 64, 3)).astype(np.float32))
    experts = _sr_experts(width=64)
    bias = np.array([0.6, 0.3, 0.1])
    gate = paper_gate("super_resolution")
    mix = BiasedMixture(gate, experts, bias, combine="straight_through")
    costs = []
    for e in experts:
        f = tf.function(lambda t, e=e: e(t))
        costs.append(_time(lambda f=f: f(x).numpy(), repeats))
    every = tf.function(lambda t: [e(t) for e in experts])
    t_every = _time(lambda: [o.numpy() for o in every(x)], repeats)
    gate_only = tf.function(lambda t: gate(t, training=False))
    t_gate = _time(lambda: gate_only(x).numpy(), repeats)
    routed = tf.function(lambda t: mix(t, training=False))
    t_routed = _time(lambda: routed(x).numpy(), repeats)
    expected = float(np.dot(bias, costs) / np.sum(costs))
    print("per-expert time for the batch: " + ", ".join(
        f"{e.name} {c * 1e3:.1f} ms" for e, c in zip(experts, costs)))
    print(f"b = {bias.tolist()}: routed {t_routed * 1e3:.1f} ms (gate {t_gate * 1e3:.1f} ms), "
          f"every expert {t_every * 1e3:.1f} ms")
    print(f"routed / every = {t_routed / t_every:.2f}; experts only "
          f"(routed - gate) / every = {(t_routed - t_gate) / t_every:.2f}; "
          f"expected sum b_n cost_n / sum cost_n = {expected:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 10
    print(f"TensorFlow {tf.__version__}, devices: "
          f"{[d.name for d in tf.config.list_logical_devices()]}")
    bench_enforce((128, 4096) if args.quick else (128, 4096, 65536), (3, 8), repeats)
    bench_train_step(32 if args.quick else 128, repeats)
    bench_routed_inference(64 if args.quick else 512, repeats)


if __name__ == "__main__":
    main()
