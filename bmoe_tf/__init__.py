"""bmoe-tf: Biased Mixtures of Experts for TensorFlow 2 / tf-keras."""
from bmoe_tf import backend  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

__version__ = "0.1.0"
