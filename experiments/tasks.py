"""The registry of experiment tasks: name -> :class:`experiments.pipeline.Task`.

``get_task(name)`` imports the task's module lazily, so that a command imports only the
task it needs, and no task module is imported at start-up. (``gating_tflite`` does not
use this registry: it reads the ``export_data.npz`` the pipeline writes into a workdir.)
"""
import importlib

__all__ = ["TASKS", "get_task", "task_names"]

#: task name -> "module:attribute" of its Task class.
TASKS = {
    "super_resolution": "experiments.super_resolution.task:SuperResolutionTask",
    "detection": "experiments.detection.task:DetectionTask",
    "action": "experiments.action.task:ActionTask",
}


def task_names():
    return sorted(TASKS)


def get_task(name):
    """A new instance of the task registered as ``name``.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {task_names()}")
    module, attribute = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attribute)()
