"""Timing helper shared by the benchmark scripts."""
import statistics
import time

__all__ = ["median_seconds"]


def median_seconds(fn, repeats, warmup=1):
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
