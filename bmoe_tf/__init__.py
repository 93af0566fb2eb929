"""bmoe-tf: Biased Mixtures of Experts for TensorFlow 2 / tf-keras.

Where each part of the paper lives:

* Eq. 1, Eq. 3, Algorithm 1, streaming routing -- :mod:`bmoe_tf.routing` (capacities in
  :mod:`bmoe_tf.capacities`, static offsets in :mod:`bmoe_tf.offsets`, the online budget
  controller in :mod:`bmoe_tf.budget`; all re-exported there)
* routing a test sequence in its natural order (scene shift) -- :mod:`bmoe_tf.scene_shift`
* a task metric of a routing from stored tables (accuracy, per-image PSNR, COCO mAP) --
  :mod:`bmoe_tf.routed_metrics` (COCO mAP of routings: :mod:`bmoe_tf.coco_map`)
* Eq. 4, Eq. 5 (soft bias loss), the training losses -- :mod:`bmoe_tf.losses`
* Eqs. 6-10 (choosing b with a linear program) -- :mod:`bmoe_tf.bias`
* Eq. 11 (rho), random selection, oracle, Tables V-VII -- :mod:`bmoe_tf.evaluation`
* the gating model f(x; W_g), Tables III/V/VII -- :mod:`bmoe_tf.gating`
* MAC counts C_g of any Keras model -- :mod:`bmoe_tf.macs`
* experts E_n with P_n and d_n -- :mod:`bmoe_tf.experts`
* frozen TF1 graphs (Object Detection API exports) as experts -- :mod:`bmoe_tf.frozen_graph`
* Eq. 2 and training the gate -- :mod:`bmoe_tf.mixture`
* the resumable training loop of gates and experts -- :mod:`bmoe_tf.training`
* the expert cache (outputs, mse statistics, scores) -- :mod:`bmoe_tf.cache`
* encoded payloads (codecs, bytes per input) -- :mod:`bmoe_tf.payload`; budgets in bytes
  with per-input costs: the knapsack oracle and the byte-aware batch assignment --
  :mod:`bmoe_tf.byte_budget`, the online byte controller -- :mod:`bmoe_tf.byte_controller`
* shared argument checks -- :mod:`bmoe_tf.checks`
"""
# The top-level names load their modules (and so TensorFlow, through bmoe_tf.backend) on
# first use: a process that needs only the TensorFlow-free modules (bmoe_tf.payload,
# bmoe_tf.budget's controllers: a sensor) does not pay TensorFlow's import.
_LAZY = {"Expert": "bmoe_tf.experts", "BiasedMixture": "bmoe_tf.mixture",
         "FrozenGraph": "bmoe_tf.frozen_graph", "detection_outputs": "bmoe_tf.frozen_graph"}

__version__ = "0.1.0"
__all__ = ["Expert", "BiasedMixture", "FrozenGraph", "detection_outputs"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bmoe_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
