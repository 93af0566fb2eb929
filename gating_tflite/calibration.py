"""The inputs an export needs, read from files: a task workdir's ``export_data.npz`` or
one user ``.npz``.

An export uses four sets of gate inputs ``float[M, H, W, C]``:

* ``representative`` -- activation ranges for post-training quantization;
* ``calibration`` -- the routing offsets (:func:`bmoe_tf.routing.calibrate_offsets`)
  and the QAT fine-tuning inputs;
* ``heldout`` -- inputs from the calibration distribution that neither the offsets
  nor the quantization saw: the per-expert frequencies of the int8 gate are
  checked against b here;
* ``test`` -- the task's test inputs in their natural order: agreement with the float
  gate, the scene-shift evaluation and the task metric with int8 routing.

Sources (``--calibration``):

* a task workdir: the experiment pipeline writes :data:`EXPORT_FILE` there at the end
  of every run (``experiments.export_files``; the sets made with the same input
  pipeline the gate was trained with, and the task metric as a
  :class:`bmoe_tf.routed_metrics.RoutedMetric`: tables, no task code). This module
  owns the file's format (:meth:`ExportData.save` / :meth:`ExportData.load`) and
  imports nothing of the experiments;
* ``npz:PATH`` -- arrays ``representative``, ``calibration``, ``heldout``, ``test``
  (``heldout`` and ``test`` optional) and optionally ``data_costs`` ``[N]``: any
  user's gate, no task metric.
"""
import dataclasses
import json
import os
from typing import Callable

import numpy as np

from bmoe_tf.routed_metrics import RoutedMetric, metric_from_arrays

__all__ = ["ExportData", "load_export_data", "EXPORT_FILE", "FORMAT"]

#: The file a task workdir holds for the export (written by the pipeline).
EXPORT_FILE = "export_data.npz"
#: Version of :data:`EXPORT_FILE`'s layout (``meta["format"]``).
FORMAT = 1

_SETS = ("representative", "calibration", "heldout", "test")
_METRIC = "metric."  # prefix of the metric's arrays in the file


@dataclasses.dataclass
class ExportData:
    """Gate inputs for an export (see the module docstring); arrays ``float32[M, H, W, C]``.

    Attributes:
      test_metric: ``assignment int[M_test] -> float`` (e.g. the SR test PSNR in dB):
        a :class:`bmoe_tf.routed_metrics.RoutedMetric` (what :meth:`save` can write),
        any callable in memory, or None.
      metric_name: what ``test_metric`` returns, e.g. ``"test PSNR-Y (dB)"``.
      data_costs: ``float[N]`` bytes sent per input for each expert, or None.
      expert_names: N names, or empty.
      input_description: how the float input is scaled, e.g. ``"RGB in [0, 1]"``.
      notes: ``{set name: how it was made}``.
      test_frames: ``int[M_test]`` the frame of each test input, the test inputs in
        their natural order (frame by frame, scene by scene; a frame's inputs
        contiguous), or None: the scene-shift evaluation then treats each input as its
        own frame.
      task: the task whose workdir this came from (``--task`` is checked against it),
        or "".
      test_costs: ``float[M_test, N]`` each test input's payload bytes per expert, the
        test inputs' order (an encoded run, ``--data_cost=encoded``), or None. With it the
        scene shift counts each input's own bytes and ``gate_router.c`` is the byte router
        (:class:`bmoe_tf.byte_controller.ByteController`).
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
    task: str = ""
    test_costs: np.ndarray | None = None

    @property
    def input_shape(self):
        """``(H, W, C)`` of one gate input (of the calibration set)."""
        return tuple(int(v) for v in np.shape(self.calibration)[1:])

    def save(self, path):
        """Writes this as one ``.npz`` (:data:`EXPORT_FILE` in a workdir), atomically.

        Raises:
          ValueError: a ``test_metric`` that is not a :class:`RoutedMetric` (a callable
            cannot be written).
        """
        metric = self.test_metric
        if metric is not None and not isinstance(metric, RoutedMetric):
            raise ValueError(f"test_metric must be a bmoe_tf.routed_metrics.RoutedMetric to be "
                             f"saved, got {type(metric).__name__}")
        arrays = {k: np.asarray(getattr(self, k), np.float32) for k in _SETS
                  if getattr(self, k) is not None}
        if self.data_costs is not None:
            arrays["data_costs"] = np.asarray(self.data_costs, np.float64)
        if self.test_frames is not None:
            arrays["test_frames"] = np.asarray(self.test_frames, np.int64)
        if self.test_costs is not None:
            arrays["test_costs"] = np.asarray(self.test_costs, np.float64)
        if metric is not None:
            arrays.update({_METRIC + k: np.asarray(v) for k, v in metric.arrays().items()})
        meta = dict(format=FORMAT, task=self.task, metric_name=self.metric_name,
                    metric_kind=None if metric is None else metric.KIND,
                    expert_names=list(self.expert_names),
                    input_description=self.input_description, notes=self.notes)
        arrays["meta"] = np.array(json.dumps(meta))
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, **arrays)  # uncompressed: fast (float views compress little)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path, *, name=None):
        """Reads :meth:`save`'s file, or a user ``.npz`` of the arrays ``representative``,
        ``calibration`` (``heldout``, ``test``, ``data_costs`` optional; no ``meta``).

        Args:
          name: how messages name the file (default: its path).
        Raises:
          ValueError: a missing, unreadable or corrupt file, missing arrays, or a format
            this version does not read (the message names the file).
        """
        name = name or path
        if not os.path.isfile(path):
            raise ValueError(f"{name}: no such file")
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in ("representative", "calibration") if k not in f.files]
                if missing:
                    raise KeyError(f"{name} lacks the arrays {missing}; it has {f.files}")
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        except Exception as err:  # noqa: BLE001 -- BadZipFile, OSError, EOFError, pickled data...
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"{name}: cannot read it as .npz "
                             f"({type(err).__name__}{': ' + text if text else ''})") from err
        if meta and meta.get("format") != FORMAT:
            raise ValueError(f"{name}: export data format {meta.get('format')!r}, this "
                             f"gating_tflite reads {FORMAT}; run the experiment again")

        def get(key, dtype=np.float32):
            return arrays[key].astype(dtype) if key in arrays else None

        metric = None
        if meta.get("metric_kind"):
            metric = metric_from_arrays(meta["metric_kind"], {
                k[len(_METRIC):]: v for k, v in arrays.items() if k.startswith(_METRIC)})
        return cls(representative=get("representative"), calibration=get("calibration"),
                   heldout=get("heldout"), test=get("test"),
                   data_costs=get("data_costs", np.float64),
                   test_frames=get("test_frames", np.int64), test_metric=metric,
                   test_costs=get("test_costs", np.float64),
                   metric_name=meta.get("metric_name", ""),
                   expert_names=tuple(meta.get("expert_names", ())),
                   input_description=meta.get("input_description", "float input"),
                   notes=meta.get("notes", {}), task=meta.get("task", ""))


def load_export_data(spec, task="super_resolution"):
    """The :class:`ExportData` for ``--calibration=spec``.

    ``npz:PATH`` reads one user file (``task`` unused); anything else is a workdir of
    ``task`` holding :data:`EXPORT_FILE`, whose recorded task must be ``task``.

    Raises:
      ValueError: a missing workdir or file, a corrupt file, missing arrays, or a
        workdir of another task (the message names the flag or file).
    """
    if not spec:
        raise ValueError("--calibration is required: a task workdir or npz:PATH")
    if spec.startswith("npz:"):
        data = ExportData.load(spec[4:], name=f"--calibration={spec}")
        data.notes = {"source": spec}
        return data
    if not os.path.isdir(spec):
        raise ValueError(f"--calibration={spec!r} is not a directory (a {task} workdir) "
                         "and does not start with npz:")
    path = os.path.join(spec, EXPORT_FILE)
    if not os.path.exists(path):
        raise ValueError(f"--calibration={spec}: no {EXPORT_FILE} (the experiment writes it "
                         f"at the end of a run: run python -m experiments.{task} "
                         f"--workdir={spec} with the run's flags; finished stages are reused)")
    data = ExportData.load(path)
    if data.task != task:
        raise ValueError(f"--task={task} but {path} holds the export data of the "
                         f"{data.task or 'unnamed'} task; pass --task={data.task}")
    return data
