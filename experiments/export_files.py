"""The pipeline's last stage: the file the int8 export reads from a finished workdir.

``gating_tflite`` reads a workdir and imports nothing of the experiments, so the
pipeline writes, at the end of every run, what an export needs into the workdir:
:data:`gating_tflite.calibration.EXPORT_FILE` (``export_data.npz``; its format is
``gating_tflite.calibration.ExportData``'s, the reader's). A task makes its
:class:`~gating_tflite.calibration.ExportData` with ``task.export_data(workdir)`` (its
``export_data.py``: the calibration, held-out and test sets with the gate's own input
pipeline, and the test metric as a :class:`bmoe_tf.routed_metrics.RoutedMetric` table);
a task without one (the base ``Task``) gets no file.

The file is rewritten on every run (a few seconds, no expert runs), so it always
matches the workdir's data, experts and caches; it prints nothing.
"""
import os

import numpy as np

from gating_tflite.calibration import EXPORT_FILE

__all__ = ["write_export_files", "encoded_test_costs", "EXPORT_FILE"]


def encoded_test_costs(wd, order=None):
    """``float64[M_test, N]``: an encoded run's test payload bytes per expert
    (``cache/test_bytes.npz``) in the export's test order (``order``: the indices of the
    stored test inputs in that order; None: stored order), or None in a paper run."""
    import json

    path = wd.cache_file("test", "bytes")
    if not os.path.exists(path) or not os.path.exists(wd.report_json()):
        return None
    with open(wd.report_json()) as f:  # a paper run in a workdir an encoded run left bytes in
        if json.load(f).get("config", {}).get("data_cost") != "encoded":
            return None
    with np.load(path) as f:
        costs = np.asarray(f["bytes"], np.float64)
    return costs if order is None else costs[np.asarray(order, np.int64)]


def write_export_files(task, wd):
    """Writes ``wd``'s :data:`EXPORT_FILE` for ``task``; returns its path, or None when the
    task has no export data (for this run's gate: detection's cascade gate), removing a
    file an earlier run of other settings left.

    Args:
      task: the run's :class:`experiments.pipeline.Task` (its data loaded, its report
        written).
      wd: the run's :class:`experiments.stages.Workdir`.
    """
    try:
        data = task.export_data(wd.root)
    except NotImplementedError:
        if os.path.exists(wd.path(EXPORT_FILE)):
            os.remove(wd.path(EXPORT_FILE))
        return None
    data.task = data.task or task.name
    return data.save(wd.path(EXPORT_FILE))
