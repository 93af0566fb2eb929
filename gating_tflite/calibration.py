"""The inputs an export needs, from a task's workdir or from one ``.npz`` file.

An export uses four sets of gate inputs ``float[M, H, W, C]``:

* ``representative`` -- activation ranges for post-training quantization;
* ``calibration`` -- the routing offsets (:func:`bmoe_tf.routing.calibrate_offsets`)
  and the QAT fine-tuning inputs;
* ``heldout`` -- inputs from the calibration distribution that neither the offsets
  nor the quantization saw: the per-expert frequencies of the int8 gate are
  checked against b here;
* ``test`` -- the task's test inputs: agreement with the float gate and the task
  metric with int8 routing.

Sources (``--calibration``):

* a task workdir written by an experiment CLI (``--task`` names the task; its
  experiment package turns the workdir into these sets with the same input
  pipeline it trained the gate with);
* ``npz:PATH`` -- arrays ``representative``, ``calibration``, ``heldout``, ``test``
  (``heldout`` and ``test`` optional) and optionally ``data_costs`` ``[N]``: any
  user's gate, no task metric.
"""
import dataclasses
import importlib
import os
from typing import Callable

import numpy as np

__all__ = ["ExportData", "TASKS", "load_export_data"]

#: task name -> "module:function" taking a workdir and returning :class:`ExportData`.
TASKS = {"super_resolution": "experiments.sr.export_data:export_data"}


@dataclasses.dataclass
class ExportData:
    """Gate inputs for an export (see the module docstring); arrays ``float32[M, H, W, C]``.

    Attributes:
      test_metric: ``assignment int[M_test] -> float`` (e.g. the SR test PSNR in dB),
        or None.
      metric_name: what ``test_metric`` returns, e.g. ``"test PSNR-Y (dB)"``.
      data_costs: ``float[N]`` bytes sent per input for each expert, or None.
      expert_names: N names, or empty.
      input_description: how the float input is scaled, e.g. ``"RGB in [0, 1]"``.
      notes: ``{set name: how it was made}``.
    """

    representative: np.ndarray
    calibration: np.ndarray
    heldout: np.ndarray | None = None
    test: np.ndarray | None = None
    test_metric: Callable | None = None
    metric_name: str = ""
    data_costs: np.ndarray | None = None
    expert_names: tuple = ()
    input_description: str = "float input"
    notes: dict = dataclasses.field(default_factory=dict)


def _load_npz(path):
    if not os.path.isfile(path):
        raise ValueError(f"--calibration=npz:{path}: no such file")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("representative", "calibration") if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}; it has {f.files}")
        get = lambda k: f[k].astype(np.float32) if k in f.files else None  # noqa: E731
        return ExportData(representative=get("representative"), calibration=get("calibration"),
                          heldout=get("heldout"), test=get("test"),
                          data_costs=None if "data_costs" not in f.files
                          else f["data_costs"].astype(np.float64),
                          notes={"source": f"npz:{path}"})


def load_export_data(spec, task="super_resolution"):
    """The :class:`ExportData` for ``--calibration=spec``.

    Raises:
      ValueError: an unknown task, a missing workdir or file, missing arrays.
    """
    if not spec:
        raise ValueError("--calibration is required: a task workdir or npz:PATH")
    if spec.startswith("npz:"):
        return _load_npz(spec[4:])
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)} (or use npz:PATH)")
    if not os.path.isdir(spec):
        raise ValueError(f"--calibration={spec!r} is not a directory (a {task} workdir) "
                         "and does not start with npz:")
    module, function = TASKS[task].split(":")
    return getattr(importlib.import_module(module), function)(spec)
