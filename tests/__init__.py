"""The tests, in packages that mirror the code's (tests/bmoe_tf, tests/gating_tflite,
tests/experiments/<task>); helpers and fixtures shared by all of them live here."""
import os

#: The repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
