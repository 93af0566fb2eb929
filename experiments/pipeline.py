"""One experiment pipeline for every task: data -> experts -> cache -> bias -> gates ->
evaluation -> scene shift -> report.

A task (super-resolution, detection, action classification) implements
:class:`Task`; :func:`run` does the rest the same way for all of them: it checks
the config, keys every stage by the settings it depends on, chooses b with the LP,
trains the gates (enforce, soft), evaluates every curve (enforce, soft, random,
benchmark, oracle) with the task's own dataset-level metric, routes the test split in
its natural order as a sensor would (the scene-shift stage, :mod:`experiments.scene_shift`:
static offsets, budget controller, per frame, shuffled batches), and writes
``report.json`` / ``report.md`` and the figures.

Shapes: ``M`` examples of a split, ``N`` experts. A routing (assignment) is
``int64[M]``; a score matrix is ``float[M, N]``, higher is better.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import sys

import numpy as np

from bmoe_tf import evaluation as bmoe_eval
from bmoe_tf.bias import select_bias, upper_hull, validate_bias
from bmoe_tf.routing import route_in_batches
from experiments import config as config_lib
from experiments import distribute
from experiments import export_files
from experiments import gates as gates_lib
from experiments import report as report_lib
from experiments.stages import (ArtefactError, StageKey, StageMismatch, Workdir, WorkdirBusy,
                                WorkdirLock, read_json, write_json)

__all__ = ["Task", "TrainingSet", "run", "gate_assignment", "evaluate_split",
           "scene_shift_point", "RANDOM_SEEDS", "SPLITS"]

SPLITS = ("train", "validation", "test")
#: Random selection is averaged over these seeds.
RANDOM_SEEDS = (0, 1, 2)
#: Training losses that never look at b: the enforce method trains one gate for all targets.
B_INDEPENDENT_LOSSES = ("expected", "relative")


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """What the gates train on.

    Attributes:
      gate_inputs: ``float32[M, ...]``, what the gate sees for each training example.
      cache: an expert cache (:mod:`bmoe_tf.cache`: ``"mse"``, ``"outputs"`` or
        ``"scores"``), one row per example.
      targets: ``[M, ...]`` targets for an ``"outputs"`` cache, else None.
    """

    gate_inputs: np.ndarray
    cache: dict
    targets: np.ndarray | None = None


class Task(abc.ABC):
    """The interface a task implements (see WORKSPACE.md, "The pipeline").

    A task instance is stateful: :meth:`load_data` and :meth:`build_caches` keep
    what :meth:`gate_inputs`, :meth:`scores` and :meth:`metric` read.

    Class attributes: ``name`` (registry name, e.g. ``"super_resolution"``),
    ``title``, ``metric_name`` (e.g. ``"Y-PSNR (dB)"``), ``cost_unit`` (e.g.
    ``"bytes per 64x64 part"``), ``example_name`` (``"part"``, ``"image"``, ``"clip"``).
    """

    name = "task"
    title = "task"
    #: ``--data``'s default (the data the task ships or makes) and its help text.
    default_data = "bundled"
    data_help = "bundled | folder:PATH | tfds:NAME"
    metric_name = "metric"
    cost_unit = "bytes per example"
    example_name = "example"

    # ---- configuration ---------------------------------------------------------------
    @abc.abstractmethod
    def presets(self) -> dict:
        """``{"smoke"|"quick"|"full": config.Preset}``."""

    def define_flags(self, flag_values) -> None:
        """Defines the task's own absl flags (the shared ones exist already)."""

    def settings_from_flags(self, flag_values, default):
        """The task's frozen settings: ``default`` (the preset's) with explicit flags applied."""
        return default

    def eval_data_from_flags(self, flag_values) -> str | None:
        """A task-specific alias of ``--eval_data`` (e.g. SR's ``--eval_image_dir``)."""
        return None

    def check_settings(self, cfg) -> None:
        """Raises ``config.ConfigError`` naming the flag for a bad task setting."""

    @abc.abstractmethod
    def data_costs(self, cfg) -> np.ndarray:
        """``float[N]``: d_n of each expert, known from shapes before anything runs."""

    @abc.abstractmethod
    def stage_settings(self, cfg) -> dict:
        """``{"data": {...}, "experts": {...}, "cache": {...}, "eval_data": {...}}``: the
        task settings each protected stage depends on (JSON-able); an optional
        ``"gates": {...}`` holds task settings that only retrain the gates (e.g. the
        view the gate sees)."""

    # ---- stages ------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare_data(self, cfg, wd) -> None:
        """Writes the train / validation / test splits under ``wd.path("data")``."""

    def prepare_eval_data(self, cfg, wd) -> None:
        """Writes the extra held-out set (``cfg.eval_data``) under ``data/``."""
        raise NotImplementedError(f"{self.name} has no --eval_data support")

    def data_files(self, cfg, wd) -> list:
        """Files whose presence means the data stage is done."""
        return [wd.path("data", "split.json")]

    def eval_files(self, cfg, wd) -> list:
        return [wd.path("data", "eval.npz")]

    @abc.abstractmethod
    def load_data(self, cfg, wd) -> dict:
        """Loads the splits (and ``"eval"`` when present); returns ``{split: M}``."""

    def check_data(self, cfg) -> None:
        """Checks the config against the loaded data (before any expensive stage)."""

    @abc.abstractmethod
    def build_experts(self, cfg, wd) -> list:
        """The N frozen :class:`bmoe_tf.Expert` (trained here or loaded), cheapest first."""

    @abc.abstractmethod
    def build_caches(self, cfg, wd, experts, splits) -> None:
        """Runs the experts once over ``splits`` and keeps what training, scores and the
        metric need (written under ``cache/``, skipped when there)."""

    def cache_files(self, cfg, wd, split) -> list:
        """Files of the caches of ``split`` (the eval stage rebuilds them)."""
        return []

    def build_cache_shard(self, cfg, wd, experts, splits, num_shards, shard_index) -> None:
        """Multi-worker runs: runs the experts on shard ``shard_index`` of ``num_shards``
        of every split whose cache is not built yet (``tf.data``-style sharding by batch
        index: :func:`bmoe_tf.cache.shard_rows`) and writes the shard files
        (:func:`bmoe_tf.cache.shard_path`); :meth:`build_caches` then merges a complete
        set (:func:`experiments.distribute.merged_shards`) into the files one process
        writes, byte for byte. The default does nothing: the chief's
        :meth:`build_caches` runs every expert itself."""

    @abc.abstractmethod
    def training_set(self, cfg) -> TrainingSet:
        """What the gates train on."""

    @abc.abstractmethod
    def gate_inputs(self, split) -> np.ndarray:
        """``float32[M, ...]``: what the gate sees for each example of ``split``."""

    @abc.abstractmethod
    def scores(self, split) -> np.ndarray:
        """``float[M, N]``: each expert's score on each example (higher is better)."""

    @abc.abstractmethod
    def metric(self, split, assignment) -> float:
        """The task's dataset-level metric of a routing ``int[M]`` of ``split``
        (need not be a mean over examples; never re-runs an expert)."""

    def oracle_assignment(self, split, bias) -> np.ndarray:
        """The best routing of ``split`` under b's capacities: by default the exact
        capacity-constrained maximum of the summed :meth:`scores` (a proxy for the
        metric when the metric is not that sum)."""
        return bmoe_eval.oracle_assignment(self.scores(split), bias)

    oracle_description = ("capacity-constrained assignment maximising the summed "
                          "per-example scores")

    # ---- natural order of the test split (the scene-shift evaluation) -----------------
    #: What the natural order of the test split is (report.md's scene-shift section).
    test_order_description = "the stored order, one input per frame"

    def test_order(self, cfg, wd) -> np.ndarray | None:
        """The test split's natural order: ``int[M]`` indices of the stored test inputs
        (``gate_inputs("test")``, ``scores``, ``metric``) in the order a sensor would see
        them (frame by frame, scene by scene), or None: the stored order is natural.
        Called after :meth:`load_data` and the gates (the scene-shift stage)."""
        return None

    def test_frames(self, cfg, wd) -> np.ndarray | None:
        """``int[M]``: the frame of each test input IN NATURAL ORDER (a frame's inputs
        contiguous; SR: the photo of each part), or None: one input per frame."""
        return None

    def gate_view(self, cfg):
        """``(raw input shape, P_g)`` when the gate sees only part of the experts' raw input
        x (P_g: raw ``[M, ...]`` -> gate inputs, see :class:`bmoe_tf.BiasedMixture`'s
        ``gate_preprocess``); None when the gate sees x itself."""
        return None

    @abc.abstractmethod
    def build_gate(self, cfg, num_experts):
        """A new Keras gate ``[M, ...] -> logits [M, N]`` (``cfg.gate``: paper or compact)."""

    # ---- report ------------------------------------------------------------------------
    def expert_row(self, cfg, index, expert) -> dict:
        """Task-specific fields of one expert's row (e.g. its scale)."""
        return {}

    def expert_split_extras(self, split, index) -> dict:
        """Task-specific per-split fields of one expert's row (e.g. bicubic PSNR)."""
        return {}

    #: File name and title of the metric-vs-cost figure (Fig. 6 / 4 / 8 layout).
    curve_figure_name = "curves.png"
    curve_figure_title = "Metric vs data cost"

    def curve_extras(self, report) -> list:
        """Extra lines on the curve figure: ``[{"xy": (xs, ys), "style": {...}}]``."""
        return []

    def paper_reference(self, cfg):
        """``{method: [at d_max, d_max/2, d_max/3, rho]}`` from the paper, or None."""
        return None

    def report_extras(self, cfg, report) -> dict:
        """Extra report.json keys."""
        return {}

    def evaluation_extras(self, cfg, results) -> dict:
        """Extra report.json keys computed from the evaluation results
        (``{split: evaluate_split(...)}``, with each gate's picks under ``"subsets"``)."""
        return {}

    def figures(self, cfg, wd, report, evaluation) -> dict:
        """Extra figures ``{name: path}``."""
        return {}

    def extra_stages(self, cfg, wd, experts, report) -> None:
        """Task stages after the report (e.g. ablations), run under the workdir lock; they
        may add keys to ``report`` (and rewrite report.json)."""

    def markdown_extras(self, cfg, report) -> list:
        """Extra report.md lines (task tables), appended after the generic sections."""
        return []

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        """:class:`gating_tflite.calibration.ExportData` of a finished workdir."""
        raise NotImplementedError(f"{self.name} has no int8 export data")


# ---- evaluation helpers ---------------------------------------------------------------
def gate_assignment(logits, bias, batch_size, *, seed=config_lib.DEFAULT_EVAL_BATCH_SEED):
    """Batch routing (Algorithm 1) of precomputed logits ``[M, N]`` over shuffled batches."""
    order = np.random.default_rng(seed).permutation(len(logits))
    picks = np.empty(len(logits), np.int64)
    picks[order] = route_in_batches(np.asarray(logits)[order], bias, batch_size)
    return picks


def _point(target, costs, assignment, metric):
    cost = float(np.asarray(costs)[assignment].mean())
    return dict(target=float(target), cost=cost, metric=float(metric),
                over_target=bool(cost > target * (1 + 1e-9)))


def evaluate_split(task, cfg, split, table, points, gates):
    """Every curve of one split: ``{"curves", "points", "rho", "at", "oracle_gain_share",
    "subsets", "oracle_exceeded"}`` (see WORKSPACE.md, "The pipeline")."""
    d = np.array([r["data_cost"] for r in table])
    p = np.array([r[f"metric_{split}"] for r in table])
    names = [r["name"] for r in table]
    scores = task.scores(split)
    m = len(scores)
    detail = {meth: [] for meth in cfg.methods if meth != "benchmark"}
    subsets, logits_of = {}, {}
    for index, point in enumerate(points):
        b = np.asarray(point["bias"])
        target = point["target"]
        if "random" in detail:
            picks = [bmoe_eval.random_selection(m, b, seed=s, batch_size=cfg.batch_size)
                     for s in RANDOM_SEEDS]
            detail["random"].append(dict(
                target=float(target), cost=float(np.mean([d[a].mean() for a in picks])),
                metric=float(np.mean([task.metric(split, a) for a in picks])), over_target=False))
            detail["random"][-1]["over_target"] = bool(
                detail["random"][-1]["cost"] > target * (1 + 1e-9))
        if "oracle" in detail:
            a = task.oracle_assignment(split, b)
            detail["oracle"].append(_point(target, d, a, task.metric(split, a)))
        for method in cfg.gate_methods:
            if np.isclose(max(b), 1.0):  # one expert: no gate
                n = int(np.argmax(b))
                a = np.full(m, n, np.int64)
                detail[method].append(_point(target, d, a, p[n]))
                continue
            gate = gates[method][index]
            if id(gate) not in logits_of:  # a shared gate runs once
                logits_of[id(gate)] = gate.predict(task.gate_inputs(split), batch_size=256,
                                                   verbose=0)
            a = gate_assignment(logits_of[id(gate)], b, cfg.batch_size, seed=cfg.eval_batch_seed)
            detail[method].append(_point(target, d, a, task.metric(split, a)))
            subsets.setdefault(method, {})[str(index)] = dict(
                target=float(target), bias=list(point["bias"]), picks=a.tolist(),
                table=bmoe_eval.assigned_subset_performance(scores, a, expert_names=names))
    curves = {meth: [[pt["cost"], pt["metric"]] for pt in pts] for meth, pts in detail.items()}
    hull_d, hull_p = upper_hull(d, p)
    if "benchmark" in cfg.methods:
        curves["benchmark"] = [[float(x), float(y)] for x, y in zip(hull_d, hull_p)]
    rho = {}
    for meth, curve in curves.items():
        xs = [pt[0] for pt in curve]
        if len(curve) >= 2 and len(set(np.round(xs, 9))) == len(xs):
            rho[meth] = bmoe_eval.rho(xs, [pt[1] for pt in curve])
    d_max = float(d.max())
    at = {}
    for label, t in (("d_max", d_max), ("d_max/2", d_max / 2), ("d_max/3", d_max / 3)):
        at[label] = {}
        for meth in curves:
            if meth == "benchmark":
                at[label][meth] = float(np.interp(t, hull_d, hull_p))
                continue
            match = [pt for pt in detail[meth] if np.isclose(pt["target"], t)]
            if match:
                at[label][meth] = match[0]["metric"]
    share = {}
    if "oracle" in rho and "random" in rho and rho["oracle"] > rho["random"]:
        for meth in ("enforce", "soft", "benchmark"):
            if meth in rho:
                share[meth] = bmoe_eval.oracle_gain_share(rho[meth], rho["random"], rho["oracle"])
    exceeded = []
    if "oracle" in detail:
        for meth in [x for x in detail if x != "oracle"]:
            for pt, orc in zip(detail[meth], detail["oracle"]):
                if pt["metric"] > orc["metric"] + 1e-9:
                    exceeded.append(dict(method=meth, target=pt["target"], metric=pt["metric"],
                                         cost=pt["cost"], oracle=orc["metric"],
                                         oracle_cost=orc["cost"]))
    return dict(curves=curves, points=detail, rho=rho, at=at, oracle_gain_share=share,
                subsets=subsets, oracle_exceeded=exceeded)


def scene_shift_point(points, gates, methods):
    """``(method, index)`` of the gate the scene-shift evaluation routes: enforce (else
    soft) at the gated target nearest a third of the largest target (the report's main b,
    as :func:`experiments.report.pick_routing`); None without a gate."""
    for method in ("enforce", "soft"):
        if method not in methods or not gates.get(method):
            continue
        indices = sorted(gates[method])
        goal = max(p["target"] for p in points) / 3
        return method, min(indices, key=lambda i: abs(points[i]["target"] - goal))
    return None


def _natural_order(task, cfg, wd, m):
    order = task.test_order(cfg, wd)
    if order is not None:
        order = np.asarray(order, np.int64).reshape(-1)
        if len(order) != m or not np.array_equal(np.sort(order), np.arange(m)):
            raise ValueError(f"{task.name}.test_order must be a permutation of the {m} test "
                             "inputs")
    frames = task.test_frames(cfg, wd)
    if frames is not None:
        frames = np.asarray(frames, np.int64).reshape(-1)
    return order, frames


def _stage_scene_shift(task, cfg, wd, parent, points, gates):
    """The scene-shift evaluation (:mod:`experiments.scene_shift`) of every gated target
    of the chosen method, test split in natural order: ``scene_shift.json``, keyed by its
    settings, the natural order and the gates (skipped when done); None without a gate."""
    from experiments import scene_shift as ss
    from experiments.stages import fingerprint

    chosen = scene_shift_point(points, gates, cfg.gate_methods)
    if chosen is None:
        return None
    method, main = chosen
    m = len(task.gate_inputs("test"))
    order, frames = _natural_order(task, cfg, wd, m)
    settings = dict(gate_method=method, methods=list(ss.METHODS), window=ss.WINDOW,
                    batch_size=ss.BATCH_SIZE, crossing=ss.CROSSING,
                    bucket_fraction=ss.BUCKET_FRACTION, seed=cfg.eval_batch_seed,
                    calibration="validation",
                    order=None if order is None else fingerprint(order.tolist()),
                    frames=None if frames is None else fingerprint(frames.tolist()))
    key = StageKey(wd, "scene_shift", settings, parent=parent, artefacts=["scene_shift.json"])
    key.claim()
    path = wd.path("scene_shift.json")
    d = np.asarray(task.data_costs(cfg), np.float64)

    def compute():
        stored = np.arange(m) if order is None else order
        logits_of, out = {}, []
        for index in sorted(gates[method]):
            gate = gates[method][index]
            if id(gate) not in logits_of:  # a shared gate runs once
                logits_of[id(gate)] = (
                    gate.predict(task.gate_inputs("test"), batch_size=256, verbose=0)[stored],
                    gate.predict(task.gate_inputs("validation"), batch_size=256, verbose=0))
            test_logits, val_logits = logits_of[id(gate)]

            def metric(natural, stored=stored):
                a = np.empty(m, np.int64)
                a[stored] = natural
                return task.metric("test", a)

            b = points[index]["bias"]
            rows = ss.scene_shift_rows(test_logits, frames, val_logits, b, d, metric,
                                       seed=cfg.eval_batch_seed)
            out.append(dict(index=int(index), target=float(points[index]["target"]),
                            bias=list(b), rows=rows))
        write_json(path, dict(settings, main=int(main), inputs=m,
                              frame_count=m if frames is None else int(len(np.unique(frames))),
                              natural_order=task.test_order_description, points=out))

    wd.run("scene shift", path, compute)
    return read_json(path)


# ---- the run ---------------------------------------------------------------------------
def _keys(task, cfg, wd):
    """The chained stage keys of a run (see :class:`experiments.stages.StageKey`)."""
    s = task.stage_settings(cfg)
    data = StageKey(wd, "data", dict(task=task.name, data=cfg.data, seed=cfg.seed, **s["data"]),
                    artefacts=[wd.rel(p) for p in task.data_files(cfg, wd)], protected=True)
    experts = StageKey(wd, "experts", dict(seed=cfg.seed, **s["experts"]), parent=data,
                       artefacts=["experts"], protected=True)
    cache = StageKey(wd, "cache", dict(s.get("cache", {})), parent=experts,
                     artefacts=["cache", "experts.json"], protected=True)
    bias = StageKey(wd, "bias", dict(targets=cfg.targets.as_flag(),
                                     bias=None if cfg.bias is None else list(cfg.bias)),
                    parent=cache, artefacts=["bias.json"])
    gates = StageKey(wd, "gates", dict(batch_size=cfg.batch_size, epochs=cfg.epochs,
                                       soft_epochs=cfg.soft_epochs,
                                       learning_rate=cfg.learning_rate, gate=cfg.gate,
                                       training_loss=cfg.training_loss, combine=cfg.combine,
                                       bias_weights=list(cfg.bias_weights), seed=cfg.seed,
                                       eval_batch_seed=cfg.eval_batch_seed,
                                       **s.get("gates", {})),
                     parent=bias, artefacts=["gates"])
    eval_data = StageKey(wd, "eval_data", dict(eval_data=cfg.eval_data, **s.get("eval_data", {})),
                         parent=experts,
                         artefacts=[wd.rel(p) for p in task.eval_files(cfg, wd)]
                         + [wd.rel(p) for p in task.cache_files(cfg, wd, "eval")]
                         + [wd.rel(p) for p in task.cache_files(cfg, wd, "eval")
                            for p in distribute.shard_files(p)]
                         + ["experts_eval.json"])
    evaluation = StageKey(wd, "evaluation", dict(methods=list(cfg.methods),
                                                 eval_batch_seed=cfg.eval_batch_seed,
                                                 eval=eval_data.fingerprint),
                          parent=gates, artefacts=["evaluation.json"])
    return dict(data=data, experts=experts, cache=cache, bias=bias, gates=gates,
                eval_data=eval_data, evaluation=evaluation)


_ORDER = ("data", "experts", "cache", "bias", "gates", "evaluation")


def _refuse_protected_changes(keys, wd):
    for name in ("data", "experts", "cache"):
        key = keys[name]  # a stage that never produced anything can be redone freely
        if key.stored() is not None and not key.is_current() and key.has_artefacts():
            changed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in key.changes())
            later = ", ".join(_ORDER[_ORDER.index(name):])
            raise StageMismatch(
                f"{wd.root} was made with other settings ({changed}); that would invalidate "
                f"its {later} stages. Use another --workdir, or the same flags as before "
                f"(remove {wd.root} to start afresh).")


def _stage_bias(task, cfg, wd, table):
    path = wd.path("bias.json")

    def choose():
        d = np.array([r["data_cost"] for r in table])
        p = np.array([r["metric_validation"] for r in table])
        if cfg.bias is not None:
            b = validate_bias(cfg.bias, len(d), name="--bias")
            points = [dict(target=float(b @ d), bias=b.tolist())]
        else:
            points = [dict(target=float(t), bias=select_bias(d, p, target_cost=t).tolist())
                      for t in cfg.targets.resolve(d)]
        write_json(path, points)

    wd.run("bias", path, choose)
    return read_json(path)


def _expert_rows(task, cfg, wd, experts, splits, names, path):
    def measure():
        rows = []
        for n, e in enumerate(experts):
            row = dict(name=e.name, data_cost=float(e.data_cost), **task.expert_row(cfg, n, e))
            for split in names:
                row[f"metric_{split}"] = float(task.metric(split, np.full(splits[split], n)))
                row.update(task.expert_split_extras(split, n))
            rows.append(row)
        write_json(path, rows)

    wd.run(f"expert table{' eval' if names == ['eval'] else ''}", path, measure)
    return read_json(path)


def _expert_table(task, cfg, wd, experts, splits):
    """Each expert's d_n and metric per split: ``experts.json`` (validation, test; a
    cache-stage artefact) and ``experts_eval.json`` (the extra held-out set, an
    eval_data-stage artefact, rebuilt when ``--eval_data`` changes)."""
    rows = _expert_rows(task, cfg, wd, experts, splits,
                        [s for s in ("validation", "test") if s in splits],
                        wd.path("experts.json"))
    if "eval" in splits:
        extra = _expert_rows(task, cfg, wd, experts, splits, ["eval"],
                             wd.path("experts_eval.json"))
        rows = [dict(r, **{k: v for k, v in e.items() if k not in r})
                for r, e in zip(rows, extra)]
    return rows


def _stage_gates(task, cfg, wd, experts, points, splits, team):
    """Trains every (method, target) gate; returns ``{method: {index: gate}}``.

    Every worker of ``team`` (:class:`experiments.distribute.Team`) runs this in the same
    order (each gate's training is collective); only the chief writes gates and picks
    the soft gates' w_bias (the others return ``{}``).
    """
    train = task.training_set(cfg)
    n = len(experts)
    gates, loaded = {}, {}
    common = dict(build_gate=lambda: task.build_gate(cfg, n), experts=experts, train=train,
                  batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, combine=cfg.combine,
                  training_loss=cfg.training_loss, seed=cfg.seed, verbose=cfg.verbose,
                  strategy=team.strategy)
    view = task.gate_view(cfg)
    if view is not None:
        common.update(input_shape=view[0], gate_preprocess=view[1])
    val_inputs = task.gate_inputs("validation")
    for method in cfg.gate_methods:
        gates[method] = {}
        for index, point in enumerate(points):
            if np.isclose(max(point["bias"]), 1.0):
                continue  # a single expert: nothing to learn
            if method == "enforce":
                label = "shared" if cfg.training_loss in B_INDEPENDENT_LOSSES else str(index)
                directory = wd.path("gates", "enforce", label)
                if directory not in loaded:
                    loaded[directory] = wd.run(
                        f"gate enforce/{label}", gates_lib.gate_files(directory),
                        lambda d=directory, b=point["bias"], label=label: gates_lib.train_gate(
                            d, bias=b, method="enforce", name=f"enforce/{label}",
                            epochs=cfg.epochs, **common),
                        load=lambda d=directory: gates_lib.load_gate(d))[0]
                gates[method][index] = loaded[directory]
                continue
            directory = wd.path("gates", "soft", str(index))
            chosen = os.path.join(directory, "chosen.json")
            if os.path.exists(chosen):  # the w_bias choice is made: load only the winner
                weight = read_json(chosen)["bias_weight"]
                print(f"[gate soft/{index}] skipped: w_bias={weight:g} chosen in "
                      f"{wd.rel(chosen)}", flush=True)
                gates[method][index] = gates_lib.load_gate(
                    os.path.join(directory, "candidates", f"w{weight:g}"))[0]
                continue
            best = None
            for weight in cfg.bias_weights:
                cand = os.path.join(directory, "candidates", f"w{weight:g}")
                name = f"soft/{index} w_bias={weight:g}"
                gate, _ = wd.run(f"gate {name}", gates_lib.gate_files(cand),
                                 lambda c=cand, w=weight, b=point["bias"], name=name:
                                 gates_lib.train_gate(c, bias=b, method="soft", bias_weight=w,
                                                      name=name, epochs=cfg.soft_epochs,
                                                      **common),
                                 load=lambda c=cand: gates_lib.load_gate(c))
                if not team.chief:
                    continue  # the chief chooses
                logits = gate.predict(val_inputs, batch_size=256, verbose=0)
                picks = gate_assignment(logits, point["bias"], cfg.batch_size,
                                        seed=cfg.eval_batch_seed)
                score = task.metric("validation", picks)
                if best is None or score > best[0]:
                    best = (score, weight, gate)
            if team.chief:
                write_json(chosen, dict(bias_weight=best[1], validation_metric=best[0]))
                gates[method][index] = best[2]
    return gates if team.chief else {}


def _same_as_chief(team, keys, names):
    """A worker other than the chief: the chief claimed these stages with the same settings
    (a worker started with other flags would train other gates, or hang)."""
    for name in names:
        if not keys[name].is_current():
            changed = "; ".join(f"{k}: chief {a!r}, this worker {b!r}"
                                for k, a, b in keys[name].changes()) or "no key from the chief"
            raise config_lib.ConfigError(
                f"worker {team.index} was started with other settings than worker 0 for the "
                f"{name} stage ({changed}); start every worker with the same flags")


def run(task, cfg, workdir, *, command=None):
    """Runs every stage of ``task`` for ``cfg`` in ``workdir``; returns the report dict.

    With ``cfg.strategy == "multi_worker"`` every worker of the cluster (``TF_CONFIG``)
    runs this with the same config and a shared ``workdir``: the chief (worker 0)
    holds the workdir lock and runs the data, experts, bias, evaluation, scene-shift
    and report stages; every worker runs the experts on its shard of every split
    (:meth:`Task.build_cache_shard`; the chief merges the shards into the files one
    process writes) and takes part in training every gate; the other workers return
    None after the gates. Workers wait for each other at ``tf.distribute`` collective
    barriers (:class:`experiments.distribute.Team`).

    Raises:
      WorkdirBusy: another run holds the workdir.
      StageMismatch: a data/expert/cache setting differs from the workdir's.
      ArtefactError: a corrupt artefact (the message names it).
      config.ConfigError: a setting that the data rules out (e.g. a batch larger than
        the training set).
      distribute.ClusterError: another worker of a multi-worker run failed.
    """
    import contextlib

    from bmoe_tf.backend import tf

    # a multi-worker strategy must exist before the first op runs
    strategy = distribute.make_strategy(cfg.strategy)
    team = distribute.Team(strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise config_lib.ConfigError(
            f"--batch_size {cfg.batch_size} does not split into {replicas} equal replica "
            f"parts (--strategy={cfg.strategy}); use a multiple of {replicas}")
    tf.config.experimental.enable_op_determinism()
    command = command or " ".join([f"python -m experiments.{task.name}"] + sys.argv[1:])
    with contextlib.ExitStack() as stack:
        with team.section("workdir lock"):  # a busy workdir stops every worker
            if team.chief:
                stack.enter_context(WorkdirLock(workdir))
        wd = Workdir(workdir)
        keys = _keys(task, cfg, wd)
        with team.section("data"):
            if team.chief:
                _refuse_protected_changes(keys, wd)
                write_json(wd.path("config.json"), cfg.as_dict())
                workers = f" workers={team.count}" if team.count > 1 else ""
                print(f"bmoe-tf {task.name}: preset={cfg.preset} workdir={wd.root}{workers}",
                      flush=True)
                keys["data"].claim()
                wd.run("data", task.data_files(cfg, wd), lambda: task.prepare_data(cfg, wd))
                if cfg.eval_data:
                    keys["eval_data"].claim()
                    wd.run("eval data", task.eval_files(cfg, wd),
                           lambda: task.prepare_eval_data(cfg, wd))
                elif keys["eval_data"].stored() is not None:
                    keys["eval_data"].claim()  # --eval_data dropped: its set is superseded
            else:
                print(f"bmoe-tf {task.name}: worker {team.index} of {team.count}, "
                      f"workdir={wd.root}; worker 0 writes the artefacts", flush=True)
        with team.section("experts"):
            splits = task.load_data(cfg, wd)
            if team.chief:
                print(f"{task.example_name}s: " + ", ".join(f"{k} {v}" for k, v in
                                                            splits.items()), flush=True)
            if splits["train"] < cfg.batch_size:
                raise config_lib.ConfigError(
                    f"--batch_size {cfg.batch_size} is larger than the {splits['train']} "
                    f"training {task.example_name}s; use a smaller batch or more data")
            task.check_data(cfg)
            if team.chief:
                keys["experts"].claim()
                experts = task.build_experts(cfg, wd)
                keys["cache"].claim()  # before any shard file is written
        with team.section("cache shards"):
            if not team.chief:
                _same_as_chief(team, keys, ("data", "experts", "cache"))
                experts = task.build_experts(cfg, wd)  # done by the chief: loaded
            if team.count > 1:
                task.build_cache_shard(cfg, wd, experts, splits, team.count, team.index)
        with team.section("bias"):
            if team.chief:  # merges the shards, then the table and b
                task.build_caches(cfg, wd, experts, splits)
                table = _expert_table(task, cfg, wd, experts, splits)
                keys["bias"].claim()
                points = _stage_bias(task, cfg, wd, table)
                keys["gates"].claim()
        with team.section("caches loaded"):
            if not team.chief:
                _same_as_chief(team, keys, ("bias", "gates"))
                task.build_caches(cfg, wd, experts, splits)  # built by the chief: loaded
                points = read_json(wd.path("bias.json"))
        # every worker trains every gate (collective: a worker that dies here stops the
        # others through the strategy's health checks); the others stop after it
        gates = _stage_gates(task, cfg, wd, experts, points, splits, team)
        if not team.chief:
            print(f"worker {team.index}: gates trained; worker 0 writes the evaluation and "
                  f"the report", flush=True)
            return None
        keys["evaluation"].claim()
        path = wd.path("evaluation.json")
        eval_splits = [s for s in ("test", "eval") if s in splits]

        def evaluate():
            write_json(path, {s: evaluate_split(task, cfg, s, table, points, gates)
                              for s in eval_splits})

        wd.run("evaluation", path, evaluate)
        results = read_json(path)
        scene_shift = _stage_scene_shift(task, cfg, wd, keys["gates"], points, gates)
        gate_model = task.build_gate(cfg, len(experts))
        report = report_lib.write_report(task, cfg, wd, table, points, results, splits, command,
                                         gate_model=gate_model, scene_shift=scene_shift)
        task.extra_stages(cfg, wd, experts, report)
        export_files.write_export_files(task, wd)
    print(report_lib.format_table(report), flush=True)
    for line in report_lib.scene_shift_lines(report):
        print(line, flush=True)
    for line in report_lib.warnings(report):
        print(line, flush=True)
    print(f"\nreport: {wd.path('report.md')}\nfigures: {wd.path('reports')}", flush=True)
    return report
