"""The object detection task (paper Section IV-B): SSD experts at 100/150/300 px.

The task is declared in :mod:`experiments.detection.task` (its CLI: ``python -m
experiments.detection``); the other modules of this package are its data and model code.
The task's public names are re-exported here, imported on first use so that importing a
data module of this package does not import the task.
"""
import importlib

__all__ = ['DetectionTask', 'DetectionSettings', 'PRESETS', 'PAPER_TABLE_I', 'ABLATIONS', 'gate_view', 'interpolate_epochs', 'run']


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.task"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
