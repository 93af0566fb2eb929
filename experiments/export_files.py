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
from gating_tflite.calibration import EXPORT_FILE

__all__ = ["write_export_files", "EXPORT_FILE"]


def write_export_files(task, wd):
    """Writes ``wd``'s :data:`EXPORT_FILE` for ``task``; returns its path, or None when the
    task has no export data.

    Args:
      task: the run's :class:`experiments.pipeline.Task` (its data loaded, its report
        written).
      wd: the run's :class:`experiments.stages.Workdir`.
    """
    try:
        data = task.export_data(wd.root)
    except NotImplementedError:
        return None
    data.task = data.task or task.name
    return data.save(wd.path(EXPORT_FILE))
