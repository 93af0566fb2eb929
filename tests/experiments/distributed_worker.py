"""One process of tests/experiments/test_distribute.py: trains a tiny gate with experiments.gates.train_gate
under ``--strategy`` and writes its weights and per-step utilities.

    python tests/experiments/distributed_worker.py OUT_DIR multi_worker INDEX PORT0,PORT1
    python tests/experiments/distributed_worker.py OUT_DIR mirrored
    python tests/experiments/distributed_worker.py WORKDIR pipeline INDEX PORT0,PORT1

``pipeline``: the toy task of tests/experiments/test_pipeline_toy_task.py through
experiments.multi_worker.run with --strategy=multi_worker (a shared workdir); the report
(chief) or None is written to ``WORKDIR/../worker<INDEX>.json``.
"""
import json
import os
import sys


def pipeline_config(task):
    """The toy task's config of the two-worker pipeline test (both workers and the single
    process it is compared with): two soft w_bias candidates, 96 examples per split."""
    from experiments import config
    from tests.experiments.test_pipeline_toy_task import ToySettings

    return config.build_config(task, preset_name="smoke", preset=task.presets()["smoke"],
                               verbose=0, bias_weights=(1.0, 4.0),
                               task_settings=ToySettings(examples=96))


def pipeline_worker(workdir, index):
    import dataclasses

    from experiments import multi_worker
    from tests.experiments.test_pipeline_toy_task import ToyTask

    class Failing(ToyTask):  # BMOE_TEST_FAIL_DATA: the chief's data stage fails
        def prepare_data(self, cfg, wd):
            raise ValueError("the data stage failed (test)")

    task = Failing() if os.environ.get("BMOE_TEST_FAIL_DATA") else ToyTask()
    cfg = pipeline_config(task)
    if os.environ.get("BMOE_TEST_LEARNING_RATE"):  # a worker started with other flags
        cfg = dataclasses.replace(cfg, learning_rate=float(os.environ["BMOE_TEST_LEARNING_RATE"]))
    out = os.path.join(os.path.dirname(workdir), f"worker{index}.json")
    try:
        report = multi_worker.run(task, dataclasses.replace(cfg, strategy="multi_worker"),
                                  workdir, command="toy")
    except Exception as err:  # what each worker saw
        with open(out, "w") as f:
            json.dump({"error": f"{type(err).__name__}: {err}"}, f)
        sys.exit(2)
    with open(out, "w") as f:
        json.dump(report, f)


def main(out, mode, index=None, ports=None):
    if mode in ("multi_worker", "pipeline"):
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports.split(",")]},
            "task": {"type": "worker", "index": int(index)}})
    if mode == "pipeline":
        return pipeline_worker(out, index)
    import numpy as np

    from bmoe_tf.backend import keras, tf
    if mode == "mirrored":  # two logical CPU devices in this one process
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from bmoe_tf import Expert
    from bmoe_tf.cache import build_expert_cache
    from experiments import distribute
    from experiments.gates import train_gate
    from experiments.pipeline import TrainingSet

    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored"
                else distribute.make_strategy(mode))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, :2] * 2.0 + x[:, 2:4] - 0.5 * x[:, 4:6]).astype(np.float32)
    with strategy.scope():
        experts = []
        for i, k in enumerate((2, 4, 6)):
            keras.utils.set_random_seed(1 + i)
            model = keras.Sequential([keras.Input((k,)), keras.layers.Dense(2)])
            experts.append(Expert(model, preprocess=lambda t, k=k: t[:, :k], name=f"e{k}"))
    cache = build_expert_cache(experts, x, y, kind="mse", verbose=0)

    def build_gate():
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3)])

    steps = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append([float(logs[f"utility_e{k}"]) for k in (2, 4, 6)])

    original_fit = keras.Model.fit

    die_at = os.environ.get("BMOE_TEST_DIE_AT_EPOCH")  # a worker killed mid-training

    class Die(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == int(die_at):
                print(f"worker {index}: killed at the start of epoch {epoch}", flush=True)
                os._exit(3)

    def fit(self, *args, **kwargs):  # record every step's global utilities
        extra = [Steps()] + ([Die()] if die_at is not None else [])
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = fit
    gate, info = train_gate(os.path.join(out, "gate"), build_gate=build_gate, experts=experts,
                            bias=[0.75, 0.125, 0.125], method="enforce",
                            train=TrainingSet(x, cache), batch_size=8, epochs=2,
                            learning_rate=1e-2, seed=5, verbose=0, strategy=strategy)
    name = "mirrored" if mode == "mirrored" else f"worker{index}"
    np.savez(os.path.join(out, f"{name}.npz"), *gate.get_weights(), steps=np.array(steps),
             chief=np.array(distribute.is_chief(strategy)))


if __name__ == "__main__":
    main(*sys.argv[1:])
