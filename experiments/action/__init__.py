"""The action classification task (paper Section IV-D): experts on codec motion vectors, RGB, or both.

The task is declared in :mod:`experiments.action.task` (its CLI: ``python -m
experiments.action``); the other modules of this package are its data and model code.
The task's public names are re-exported here, imported on first use so that importing a
data module of this package does not import the task.
"""
import importlib

__all__ = ['ActionTask', 'ActionSettings', 'PRESETS', 'PAPER_TABLE_VI', 'MODES', 'CLIP_SPLITS', 'GATE_MV_CLIP', 'GATE_TARGETS', 'mode_costs', 'gate_input', 'paper_costs', 'natural_order', 'run']


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.task"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
