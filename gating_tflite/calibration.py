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

* a task workdir written by an experiment CLI (``--task`` names the task in the
  project's registry, :mod:`experiments.tasks`; ``get_task(task).export_data(workdir)``
  turns the workdir into these sets with the same input pipeline the gate was
  trained with; the registry is imported only when a task is asked for);
* ``npz:PATH`` -- arrays ``representative``, ``calibration``, ``heldout``, ``test``
  (``heldout`` and ``test`` optional) and optionally ``data_costs`` ``[N]``: any
  user's gate, no task metric.
"""
import dataclasses
import os
from typing import Callable

import numpy as np

__all__ = ["ExportData", "load_export_data", "task_names"]


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
      test_frames: ``int[M_test]`` the frame of each test input, the test inputs in
        their natural order (frame by frame, scene by scene; a frame's inputs
        contiguous), or None: the scene-shift evaluation then treats each input as its
        own frame.
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
    test_frames: np.ndarray | None = None


def _load_npz(path):
    if not os.path.isfile(path):
        raise ValueError(f"--calibration=npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("representative", "calibration") if k not in f.files]
            if missing:
                raise KeyError(f"{path} lacks the arrays {missing}; it has {f.files}")
            arrays = {k: f[k] for k in ("representative", "calibration", "heldout", "test",
                                        "data_costs") if k in f.files}
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    except Exception as err:  # noqa: BLE001 -- BadZipFile, OSError, EOFError, pickled data...
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"--calibration=npz:{path}: cannot read it as .npz "
                         f"({type(err).__name__}{': ' + text if text else ''})") from err

    def get(key, dtype=np.float32):
        return arrays[key].astype(dtype) if key in arrays else None

    return ExportData(representative=get("representative"), calibration=get("calibration"),
                      heldout=get("heldout"), test=get("test"),
                      data_costs=get("data_costs", np.float64), notes={"source": f"npz:{path}"})


def task_names():
    """The names of the tasks in the project's registry (:func:`experiments.tasks.task_names`)."""
    from experiments import tasks

    return tasks.task_names()


def load_export_data(spec, task="super_resolution"):
    """The :class:`ExportData` for ``--calibration=spec``.

    ``npz:PATH`` reads one file; anything else is a workdir of ``task``, read by
    ``experiments.tasks.get_task(task).export_data(spec)`` (imported here, lazily).

    Raises:
      ValueError: an unknown task (listing the known ones), a task that cannot be
        loaded, a missing workdir or file, a corrupt file, missing arrays.
    """
    if not spec:
        raise ValueError("--calibration is required: a task workdir or npz:PATH")
    if spec.startswith("npz:"):
        return _load_npz(spec[4:])
    from experiments import tasks

    try:
        task_object = tasks.get_task(task)
    except ValueError as err:
        raise ValueError(f"{err} (or use --calibration=npz:PATH)") from None
    except Exception as err:  # noqa: BLE001 -- its module may fail to import
        raise ValueError(f"task {task!r} is registered in experiments.tasks but cannot be "
                         f"loaded: {type(err).__name__}: {err}") from err
    if not os.path.isdir(spec):
        raise ValueError(f"--calibration={spec!r} is not a directory (a {task} workdir) "
                         "and does not start with npz:")
    try:
        data = task_object.export_data(spec)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 -- a corrupt file in the workdir
        raise ValueError(f"task {task!r} cannot read the workdir {spec}: "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(data, ExportData):
        raise ValueError(f"task {task!r}: export_data({spec!r}) returned "
                         f"{type(data).__name__}, not an ExportData")
    return data
