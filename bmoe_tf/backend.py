"""The one place bmoe-tf imports TensorFlow.

Keras 3 breaks ``tensorflow_model_optimization`` and ``hub.KerasLayer``, so the
package runs on tf-keras (the Keras 2 API). TensorFlow reads
``TF_USE_LEGACY_KERAS`` when it is first imported, so this module sets it before
importing TensorFlow; every other module does ``from bmoe_tf.backend import tf,
keras``. ``keras`` is ``tf_keras`` itself, so even a process that imported
TensorFlow earlier (without the variable) still gets Keras 2 objects from us.
"""
import os
import sys
import warnings

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    warnings.warn(
        "TensorFlow was imported before bmoe_tf without TF_USE_LEGACY_KERAS=1; "
        "bmoe_tf uses tf_keras directly, but tf.keras in this process is Keras 3. "
        "Import bmoe_tf first (or set TF_USE_LEGACY_KERAS=1) to make them agree.",
        stacklevel=2,
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
