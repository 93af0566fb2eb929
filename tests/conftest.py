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
