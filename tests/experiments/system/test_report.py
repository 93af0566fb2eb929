"""experiments.system.report: the worst-window figures against brute force."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.system.report import _slots, window_bytes, worst_excess


def _brute_excess(x, t):
    best = 0.0
    for i in range(len(x)):
        for j in range(i + 1, len(x) + 1):
            best = max(best, float(np.sum(x[i:j]) - (j - i) * t))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=0, max_size=40), st.floats(1, 300))
def test_worst_excess_is_the_brute_force_maximum(values, target):
    x = np.asarray(values, np.float64)
    assert worst_excess(x, target) == np.float64(_brute_excess(x, target)) or \
        abs(worst_excess(x, target) - _brute_excess(x, target)) < 1e-6


def test_window_bytes_and_slots():
    x = np.array([5, 1, 9, 0, 3, 7], np.float64)
    assert window_bytes(x, 2) == 10 and window_bytes(x, 10) == 25
    assert list(_slots([4, 6, 2], [0, 2, 1])) == [4, 0, 0, 6, 0, 2]
