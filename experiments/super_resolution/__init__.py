"""The super-resolution task (paper Section IV-C): ESPCN/FSRCNN experts at x4/x3/x2 on 64x64 parts.

The task is declared in :mod:`experiments.super_resolution.task` (its CLI: ``python -m
experiments.super_resolution``); the other modules of this package are its data and model code.
The task's public names are re-exported here, imported on first use so that importing a
data module of this package does not import the task.
"""
import importlib

__all__ = ['SuperResolutionTask', 'SRSettings', 'PRESETS', 'PAPER_TABLE_IV', 'run', 'test_frames']


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.task"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
