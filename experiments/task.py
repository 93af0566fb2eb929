"""The interface a task declares for :mod:`experiments.pipeline` (see WORKSPACE.md,
"The Task interface").

A task is a small declaration. Required: who it is (class attributes), its settings
(a dataclass of :func:`experiments.settings.setting` fields) and presets, its data
(:meth:`Task.prepare_data` / :meth:`Task.load_data`), its experts (with P_n inside each
:class:`bmoe_tf.Expert` and d_n from :meth:`Task.data_costs`), the expert caches
(:meth:`Task.caches`, a list of :class:`CacheJob`), and per split the gate input, the score
matrix and the metric (:meth:`Task.split`, a :class:`Split`). The gate is
:meth:`Task.build_gate`. Every other hook is an optional part with a default, one class per
concern: :class:`Report` (report rows, extras, figures), :class:`NaturalOrder` (the test
split as a sensor sees it), :class:`EvalData` (an extra held-out set). The pipeline passes
what a hook needs as arguments (the loaded data, the experts); a task keeps no state
between hooks.

Shapes: ``M`` examples of a split, ``N`` experts. A routing (assignment) is ``int64[M]``;
a score matrix is ``float[M, N]``, higher is better.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["Task", "Split", "CacheJob", "TrainingSet", "Report", "NaturalOrder", "EvalData",
           "Serving", "SPLITS"]

#: The splits every task has.
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """What the gates train on.

    Attributes:
      gate_inputs: ``float32[M, ...]``, what the gate sees for each training example (the
        experts' raw input when the task has a :meth:`Task.gate_view`).
      cache: an expert cache (:mod:`bmoe_tf.cache`: ``"mse"``, ``"outputs"`` or
        ``"scores"``), one row per example.
      targets: ``[M, ...]`` targets for an ``"outputs"`` cache, else None.
      costs: ``float[M, N]`` each example's payload bytes per expert
        (``--data_cost=encoded``; what the ``bytes`` gates train on), else None.
    """

    gate_inputs: np.ndarray
    cache: dict
    targets: np.ndarray | None = None
    costs: np.ndarray | None = None

    def with_copies(self, inputs) -> "TrainingSet":
        """This set plus ``inputs`` (``float32[M, ...]``, one transformed copy of each
        training example, in order) that carry their originals' cache rows, targets and
        costs: an augmentation for transforms the experts' scores are (nearly) invariant
        to. Returns a ``TrainingSet`` of ``2 M`` examples."""
        m = len(self.gate_inputs)
        inputs = np.asarray(inputs, np.asarray(self.gate_inputs).dtype)
        if inputs.shape != np.shape(self.gate_inputs):
            raise ValueError(f"TrainingSet.with_copies: inputs of shape {inputs.shape}, the "
                             f"set's are {np.shape(self.gate_inputs)}")

        def twice(v):
            return np.concatenate([v, v]) if v is not None else None

        cache = {k: twice(v) if isinstance(v, np.ndarray) and v.ndim and len(v) == m else v
                 for k, v in self.cache.items()}
        return TrainingSet(np.concatenate([self.gate_inputs, inputs]), cache,
                           targets=twice(self.targets), costs=twice(self.costs))


@dataclasses.dataclass(frozen=True)
class Split:
    """One split as the evaluation sees it (made after the caches exist).

    Attributes:
      gate_inputs: ``float32[M, ...]``: what the gate sees for each example.
      scores: ``float[M, N]``: each expert's score on each example (higher is better).
      metric: ``int64[M] -> float``: the task's dataset-level metric of a routing (need not
        be a mean over examples; never re-runs an expert).
      oracle: ``float[N] b -> int64[M]``: the best routing under b's capacities; None: the
        exact capacity-constrained maximum of the summed ``scores``
        (:func:`bmoe_tf.evaluation.oracle_assignment`).
    """

    gate_inputs: np.ndarray
    scores: np.ndarray
    metric: Callable[[np.ndarray], float]
    oracle: Callable[[np.ndarray], np.ndarray] | None = None
    #: ``float[M, N]`` the bytes of each example's payload per expert
    #: (``--data_cost=encoded``); None: the paper's d_n for every example.
    costs: np.ndarray | None = None

    def __len__(self):
        return len(self.scores)

    def oracle_assignment(self, bias) -> np.ndarray:
        from bmoe_tf import evaluation

        if self.oracle is not None:
            return self.oracle(bias)
        return evaluation.oracle_assignment(self.scores, bias)


@dataclasses.dataclass(frozen=True)
class CacheJob:
    """One expert cache file the pipeline builds once (and in shards on several workers).

    Attributes:
      label: shown in the progress lines (e.g. ``"test detections"``).
      path: the workdir file (an ``.npz`` of :func:`bmoe_tf.cache.save_cache`).
      build: ``(num_shards, shard_index) -> cache dict``: runs the experts on shard
        ``shard_index`` of ``num_shards`` (``(1, 0)``: everything) and returns a cache of
        :mod:`bmoe_tf.cache` (a shard carries its batch layout:
        :func:`bmoe_tf.cache.as_cache_shard` or ``build_expert_cache(num_shards=...)``).
      shards: False: the job is cheap or derived from other caches, and only the chief
        runs it whole.
      save: ``(path, cache) -> None`` writes the whole cache (default
        :func:`bmoe_tf.cache.save_cache`; shards are always written with it).
    """

    label: str
    path: str
    build: Callable[[int, int], dict] | None
    shards: bool = True
    save: Callable[[str, dict], None] | None = None


class Report:
    """Optional report hooks (a task's ``report`` attribute); the defaults add nothing.

    Every hook adds keys or fields; none may replace what the pipeline wrote (a clash is an
    error).
    """

    #: File name and title of the metric-vs-cost figure (Fig. 6 / 4 / 8 layout).
    curve_figure_name = "curves.png"
    curve_figure_title = "Metric vs data cost"

    def expert_row(self, cfg, data, index, expert) -> dict:
        """Fields of one expert's row of ``experts.json`` (e.g. its scale)."""
        return {}

    def expert_split_row(self, cfg, data, split: str, index: int, view: Split) -> dict:
        """Per-split fields of one expert's row (e.g. bicubic PSNR on that split)."""
        return {}

    def expert_fields(self, row: dict) -> dict:
        """Extra fields of an expert in report.json, from its row there."""
        return {}

    def curves(self, report) -> dict:
        """Extra report.json ``curves`` (``{name: [[cost, metric], ...]}``)."""
        return {}

    def curve_extras(self, report) -> list:
        """Extra lines on the curve figure: ``[{"xy": (xs, ys), "style": {...}}]``."""
        return []

    def paper_reference(self, cfg):
        """``{method: [at d_max, d_max/2, d_max/3, rho]}`` from the paper, or None."""
        return None

    def evaluation_extras(self, cfg, data, results, splits) -> dict:
        """Extra report.json keys from the evaluation results (``{split: evaluate_split}``,
        each gate's picks under ``"subsets"``) and the evaluated :class:`Split` views."""
        return {}

    def extras(self, cfg, data, report) -> dict:
        """Extra report.json keys from the report (and the loaded data)."""
        return {}

    def markdown(self, cfg, report) -> list:
        """Extra report.md lines (task tables), appended after the generic sections."""
        return []

    def figures(self, cfg, wd, data, report, results, views) -> dict:
        """Extra figures ``{name: path}`` (``views``: the evaluated :class:`Split` views)."""
        return {}


class NaturalOrder:
    """The test split as a sensor sees it (the scene-shift stage); the default: the stored
    order, one input per frame."""

    description = "the stored order, one input per frame"

    def order(self, cfg, data) -> np.ndarray | None:
        """``int[M]`` indices of the stored test inputs in the order a sensor would see
        them (frame by frame, scene by scene), or None: the stored order is natural."""
        return None

    def frames(self, cfg, data) -> np.ndarray | None:
        """``int[M]``: the frame of each test input IN NATURAL ORDER (a frame's inputs
        contiguous), or None: one input per frame."""
        return None


class EvalData:
    """An extra held-out set (``--eval_data``), evaluated and reported separately."""

    def prepare(self, cfg, wd) -> None:
        """Writes the extra set (the split ``"eval"``) under ``data/``."""
        raise NotImplementedError

    def files(self, cfg, wd) -> list:
        """Files whose presence means the extra set is written."""
        return [wd.split_file("eval")]

    def cache_files(self, cfg, wd) -> list:
        """The expert cache files of the extra set (rebuilt when it changes)."""
        return []

    def define_flags(self, flag_values) -> None:
        """Defines flags of the extra set besides ``--eval_data`` (e.g. an alias)."""

    def from_flags(self, flag_values) -> str | None:
        """The extra set's source from such a flag, or None: ``--eval_data``'s."""
        return None


class Serving:
    """The task as a running system (``python -m experiments.system``): what a sensor holds
    of each test input, and the metric of what the server answered. A task without it
    (``Task.serving = None``) is refused by the system."""

    def inputs(self, cfg, data, split) -> np.ndarray:
        """``[M, ...]``: the experts' raw inputs of ``split`` in its stored order (what the
        sensor preprocesses and encodes for each expert)."""
        raise NotImplementedError

    def metric(self, cfg, data, split, outputs) -> float:
        """The task's metric of ``split`` from ``outputs`` ``[M, ...]``: each input's answer
        from the expert it was routed to, in the stored order."""
        raise NotImplementedError


class Task(abc.ABC):
    """A task for :func:`experiments.pipeline.run` (see the module docstring).

    Class attributes: ``name`` (registry name, e.g. ``"super_resolution"``), ``title``,
    ``metric_name`` (e.g. ``"Y-PSNR (dB)"``), ``cost_unit`` (e.g. ``"bytes per 64x64
    part"``), ``example_name`` (``"part"``, ``"image"``, ``"clip"``), ``default_data`` and
    ``data_help`` (``--data``), ``oracle_description``; ``Settings`` (the settings
    dataclass), ``PRESETS`` (``{"smoke"|"quick"|"full": config.Preset}``); the optional
    parts ``report``, ``natural_order``, ``eval_data`` (None: no ``--eval_data``),
    ``serving`` (None: no running system).
    """

    name = "task"
    title = "task"
    metric_name = "metric"
    cost_unit = "bytes per example"
    example_name = "example"
    #: ``--gate`` kinds :meth:`build_gate` builds (``experiments.config.GATE_KINDS``).
    gate_kinds = ("paper", "compact")
    default_data = "bundled"
    data_help = "bundled | folder:PATH | tfds:NAME"
    oracle_description = ("capacity-constrained assignment maximising the summed "
                          "per-example scores")
    Settings: type | None = None
    #: ``{"smoke"|"quick"|"full": config.Preset}``.
    PRESETS: Mapping[str, Any] = {}

    report = Report()
    natural_order = NaturalOrder()
    eval_data: EvalData | None = None
    serving: Serving | None = None

    # ---- required --------------------------------------------------------------------
    @abc.abstractmethod
    def data_costs(self, cfg) -> np.ndarray:
        """``float[N]``: d_n of each expert, known from the settings before anything runs."""

    @abc.abstractmethod
    def prepare_data(self, cfg, wd) -> None:
        """Writes the train / validation / test splits under ``data/`` (the data stage is
        done when :meth:`data_files` exist)."""

    @abc.abstractmethod
    def load_data(self, cfg, wd) -> Mapping[str, Any]:
        """``{split: data}`` for every split in :data:`SPLITS` (and ``"eval"`` with
        ``--eval_data``; a task may hold more, e.g. the experts' own split); ``len(data)``
        is the split's number of examples. Passed back to every later hook."""

    @abc.abstractmethod
    def build_experts(self, cfg, wd, data) -> list:
        """The N frozen :class:`bmoe_tf.Expert` (trained here or loaded), cheapest first."""

    @abc.abstractmethod
    def caches(self, cfg, wd, data, experts) -> list:
        """The :class:`CacheJob` list of the run (the experts run once per file)."""

    @abc.abstractmethod
    def training_set(self, cfg, wd, data) -> TrainingSet:
        """What the gates train on (the caches exist)."""

    @abc.abstractmethod
    def split(self, cfg, wd, data, name) -> Split:
        """The :class:`Split` view of split ``name`` (the caches exist)."""

    @abc.abstractmethod
    def build_gate(self, cfg, num_experts):
        """A new Keras gate ``[M, ...] -> logits [M, N]`` (``cfg.gate``: one of
        :attr:`gate_kinds`)."""

    # ---- optional, with defaults -------------------------------------------------------
    def presets(self) -> Mapping[str, Any]:
        """``{"smoke"|"quick"|"full": config.Preset}`` (default: ``PRESETS``)."""
        return self.PRESETS

    def data_files(self, cfg, wd) -> list:
        """Files whose presence means the data stage is done."""
        return [wd.split_index()]

    def check_data(self, cfg, data) -> None:
        """Checks the config against the loaded data (before any expensive stage)."""

    def codecs(self, cfg):
        """The payload codec of each expert (:mod:`bmoe_tf.payload`) for
        ``--data_cost=encoded``, or None: the task has none and the flag is refused. A task
        with codecs gives its :class:`Split` views their ``costs`` in encoded runs."""
        return None

    def gate_view(self, cfg):
        """``(raw input shape, P_g)`` when the gate sees only part of the experts' raw input
        x (P_g: raw ``[M, ...]`` -> gate inputs, see :class:`bmoe_tf.BiasedMixture`'s
        ``gate_preprocess``); None when the gate sees x itself."""
        return None

    def stage_settings(self, cfg) -> dict:
        """``{stage: {setting: value}}`` of the task's settings (from the ``Settings``
        fields' ``stage``; override only for keys no field gives)."""
        from experiments import settings

        return settings.stage_settings(cfg.task, cfg)

    def export_data(self, workdir):
        """:class:`gating_tflite.calibration.ExportData` of a finished workdir (written by
        the pipeline's last stage into ``export_data.npz``, which ``gating_tflite.export``
        reads); the default: none."""
        raise NotImplementedError(f"{self.name} has no int8 export data")

    def extra_stages(self, run, report) -> None:
        """Task stages after the report (detection: the ablations), run under the workdir
        lock with the finished :class:`experiments.pipeline.Run`; they may add keys to
        ``report`` (and rewrite report.json). The default: none."""
