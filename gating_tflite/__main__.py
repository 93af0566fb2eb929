"""``python -m gating_tflite``: the int8 gate export (:mod:`gating_tflite.cli`)."""
from gating_tflite.cli import run

if __name__ == "__main__":
    run()
