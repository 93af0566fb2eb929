"""Every file name of an experiment's workdir, in one place.

    workdir/
      config.json  commands.json            the run's settings, every command run here
      data/split.json  data/<split>.npz      the splits (a task may add files)
      experts/<name>/                        the experts' SavedModels
      cache/<split>_<what>.npz               the expert caches
      experts.json  experts_eval.json        each expert's d_n and metric per split
      bias.json                              b per target
      gates/<method>/<target or shared>/     the gates
      evaluation.json  scene_shift.json      the curves; the test split in natural order
      report.json  report.md  reports/       the report and its figures
      stages/<stage>.json  superseded/       stage keys; artefacts replaced by new settings
      export_data.npz                        what gating_tflite.export reads
      system/                                the running system (python -m experiments.system)

:class:`Layout` is the :class:`experiments.stages.Workdir` the pipeline hands to every
stage and task hook; its methods name the files, so no module spells a file name of
another's.
"""
from experiments.stages import Workdir

__all__ = ["Layout"]


class Layout(Workdir):
    """The named files of one workdir (see the module docstring).

    ``Layout(root)`` makes the top-level folders (a run's workdir);
    ``Layout.reading(root)`` only names the files of an existing one.
    """

    @classmethod
    def reading(cls, root):
        """The layout of a finished workdir, read only (no folder is made)."""
        import os

        out = cls.__new__(cls)
        out.root = os.path.abspath(os.fspath(root))
        out.keys = {}
        return out

    # ---- the pipeline's files ----------------------------------------------------------
    def config(self):
        return self.path("config.json")

    def commands(self):
        return self.path("commands.json")

    def expert_table(self, split_set="main"):
        """``experts.json`` (validation, test) or ``experts_eval.json`` (``"eval"``)."""
        return self.path("experts_eval.json" if split_set == "eval" else "experts.json")

    def bias(self):
        return self.path("bias.json")

    def evaluation(self):
        return self.path("evaluation.json")

    def scene_shift(self):
        return self.path("scene_shift.json")

    def report_json(self):
        return self.path("report.json")

    def report_md(self):
        return self.path("report.md")

    def figure(self, name):
        """``reports/<name>``."""
        return self.path("reports", name)

    def gate_dir(self, method, label):
        """``gates/<method>/<label>`` (label: a target index or ``shared``)."""
        return self.path("gates", method, str(label))

    def export_data(self):
        """``export_data.npz`` (:data:`gating_tflite.calibration.EXPORT_FILE`)."""
        from gating_tflite.calibration import EXPORT_FILE

        return self.path(EXPORT_FILE)

    def system(self, *names):
        """``system/<names>``: the system's firmware/, router/, feed.npz, run-<N>/ and
        system_report.json/.md."""
        return self.path("system", *names)

    # ---- the task's files -----------------------------------------------------------------
    def split_index(self):
        """``data/split.json``: what the data stage made (its presence: the stage is done)."""
        return self.path("data", "split.json")

    def split_file(self, split):
        """``data/<split>.npz``."""
        return self.path("data", f"{split}.npz")

    def expert_dir(self, name):
        """``experts/<name>``: one expert's SavedModel."""
        return self.path("experts", name)

    def cache_file(self, split, what):
        """``cache/<split>_<what>.npz`` (e.g. ``test_outputs``, ``train_mse``)."""
        return self.path("cache", f"{split}_{what}.npz")
