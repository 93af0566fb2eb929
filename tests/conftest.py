"""Test session set-up.

Two logical CPU devices must be configured before TensorFlow initialises its
runtime, so this happens here, before any test module runs an op. Tests that do
not use a distribution strategy are unaffected (ops still run on /cpu:0).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bmoe_tf.backend import tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def toy_problem():
    """``(x [64, 6], y [64, 2], experts)``: three frozen Dense experts on 2 / 4 / 6 features."""
    from bmoe_tf import Expert
    from bmoe_tf.backend import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x[:, :2] * 2.0 + x[:, 2:4] - 0.5 * x[:, 4:6]).astype(np.float32)
    experts = []
    for i, k in enumerate((2, 4, 6)):
        keras.utils.set_random_seed(1 + i)
        model = keras.Sequential([keras.Input((k,)), keras.layers.Dense(2)], name=f"dense{k}")
        experts.append(Expert(model, preprocess=lambda t, k=k: t[:, :k], name=f"e{k}"))
    return x, y, experts


@pytest.fixture
def toy_gate():
    """``build(seed) -> keras.Model``: a tiny gate [M, 6] -> logits [M, 3]."""
    from bmoe_tf.backend import keras

    def build(seed=7):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3)])

    return build
