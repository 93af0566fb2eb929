"""One experiment pipeline for every task: data -> experts -> cache -> bias -> gates ->
evaluation -> scene shift -> report.

A task (super-resolution, detection, action classification) declares an
:class:`experiments.task.Task`; :func:`run` does the rest the same way for all of them: it
keys every stage by the settings it depends on, chooses b with the LP, trains the gates
(enforce, soft; in bytes with ``--methods=bytes``), evaluates every curve (enforce, soft,
random, benchmark, oracle; encoded runs also enforce_bytes and bytes) with the
task's own dataset-level metric, routes the test split in its natural order as a sensor
would (the scene-shift stage: static offsets, budget controller, per frame, shuffled
batches), and writes ``report.json`` / ``report.md`` and the figures. Each stage is a
function here; :func:`run` wires them for one process, :mod:`experiments.multi_worker`
for a cluster.

Shapes: ``M`` examples of a split, ``N`` experts. A routing (assignment) is
``int64[M]``; a score matrix is ``float[M, N]``, higher is better.
"""
from __future__ import annotations

import os
import shlex
import sys

import numpy as np

from bmoe_tf import evaluation as bmoe_eval
from bmoe_tf.bias import select_bias, upper_hull, validate_bias
from bmoe_tf.cache import as_cache_shard, save_cache, shard_path, shard_rows
from bmoe_tf.routing import route_in_batches
from experiments import config as config_lib
from experiments import distribute
from experiments import export_files
from experiments import gates as gates_lib
from experiments import report as report_lib
from experiments.layout import Layout
from experiments.results import (BiasPoint, CurvePoint, ExpertRow, GateRouting,
                                 SplitEvaluation)
from experiments.stages import StageKey, StageMismatch, WorkdirLock, read_json, write_json
from experiments.task import SPLITS, CacheJob, Split, Task, TrainingSet

__all__ = ["Task", "TrainingSet", "Split", "CacheJob", "run", "gate_assignment", "stage_curves",
           "curve_keys", "byte_assignment", "bytes_cache_job", "load_bytes",
           "evaluate_split", "scene_shift_point", "rows_cache_job", "RANDOM_SEEDS", "SPLITS",
           "Run"]

#: Random selection is averaged over these seeds.
RANDOM_SEEDS = (0, 1, 2)
#: Training losses that never look at b: the enforce method trains one gate for all targets.
B_INDEPENDENT_LOSSES = ("expected", "relative")


# ---- what one run holds ----------------------------------------------------------------
class Run:
    """The state of one run of a task, passed to each stage: the task's declaration, the
    config, the workdir and what the stages made so far (the loaded data, the experts, the
    :class:`experiments.task.Split` views). The task itself keeps no state."""

    def __init__(self, task, cfg, wd):
        self.task, self.cfg, self.wd = task, cfg, wd
        self.data = None
        self.experts = None
        self._views = {}

    @property
    def sizes(self) -> dict:
        """``{split: M}`` of the splits the pipeline evaluates (SPLITS, then ``eval``)."""
        return {s: len(self.data[s]) for s in SPLITS + ("eval",) if s in self.data}

    def view(self, split) -> Split:
        """The task's :class:`Split` view of ``split`` (made once, after the caches)."""
        if split not in self._views:
            self._views[split] = self.task.split(self.cfg, self.wd, self.data, split)
        return self._views[split]


# ---- evaluation helpers ---------------------------------------------------------------
#: The splits the evaluation stage writes curves for (those the run has).
EVALUATED_SPLITS = ("validation", "test", "eval")


def gate_assignment(logits, bias, batch_size, *, seed=config_lib.DEFAULT_EVAL_BATCH_SEED):
    """Batch routing (Algorithm 1) of precomputed logits ``[M, N]`` over shuffled batches."""
    order = np.random.default_rng(seed).permutation(len(logits))
    picks = np.empty(len(logits), np.int64)
    picks[order] = route_in_batches(np.asarray(logits)[order], bias, batch_size)
    return picks


def byte_assignment(logits, costs, target, batch_size, *,
                    seed=config_lib.DEFAULT_EVAL_BATCH_SEED):
    """The byte-aware routing (:func:`bmoe_tf.byte_budget.byte_aware_assignment`) of
    precomputed logits ``[M, N]`` over the same shuffled batches as :func:`gate_assignment`:
    each batch's bytes within ``len(batch) x target``."""
    from bmoe_tf.byte_budget import byte_aware_assignment

    order = np.random.default_rng(seed).permutation(len(logits))
    picks = np.empty(len(logits), np.int64)
    picks[order] = byte_aware_assignment(np.asarray(logits)[order], np.asarray(costs)[order],
                                         target, batch_size).assignment
    return picks


def _point(target, cost, metric):
    cost = float(cost)
    return CurvePoint(target=float(target), cost=cost, metric=float(metric),
                      over_target=bool(cost > target * (1 + 1e-9)))


def evaluate_split(cfg, view, split, table, points, gates) -> SplitEvaluation:
    """Every curve of one split (``view``: its :class:`experiments.task.Split`; ``table``:
    the :class:`ExpertRow` list; ``points``: the :class:`BiasPoint` list), see WORKSPACE.md,
    "The pipeline"."""
    d = np.array([r.data_cost for r in table])
    p = np.array([r.metric(split) for r in table])
    names = [r.name for r in table]
    scores = view.scores
    m = len(scores)
    costs = view.costs
    d_hull = d  # the benchmark experts' points: their d_n (encoded: mean bytes on this split)
    if costs is not None:  # encoded: each input's own bytes (the targets stay the table's)
        costs = np.asarray(costs, np.float64)
        d_hull = costs.mean(axis=0)

    def spent(a):
        """Mean bytes per input of the routing ``a``."""
        a = np.asarray(a, np.int64)
        return d[a].mean() if costs is None else costs[np.arange(m), a].mean()

    detail = {meth: [] for meth in cfg.methods if meth != "benchmark"}
    if costs is not None and "enforce" in detail:
        detail["enforce_bytes"] = []
    oracle_bounds = []
    subsets, logits_of = {}, {}
    for index, point in enumerate(points):
        b = np.asarray(point.bias)
        target = point.target
        if "random" in detail:
            picks = [bmoe_eval.random_selection(m, b, seed=s, batch_size=cfg.batch_size)
                     for s in RANDOM_SEEDS]
            detail["random"].append(_point(target, np.mean([spent(a) for a in picks]),
                                           np.mean([view.metric(a) for a in picks])))
        if "oracle" in detail:
            if costs is None:
                a = view.oracle_assignment(b)
            else:  # the best routing within the target's bytes (a knapsack, with its bound)
                from bmoe_tf.byte_budget import budget_oracle

                best = budget_oracle(scores, costs, m * max(target, costs.min(1).mean()))
                a = best.assignment
                oracle_bounds.append(dict(target=float(target), value=best.value,
                                          bound=best.bound, gap=best.gap))
            detail["oracle"].append(_point(target, spent(a), view.metric(a)))
        for method in cfg.gate_methods:
            if np.isclose(max(b), 1.0):  # one expert: no gate
                n = int(np.argmax(b))
                a = np.full(m, n, np.int64)
                detail[method].append(_point(target, spent(a), p[n]))
                if method == "enforce" and "enforce_bytes" in detail:
                    detail["enforce_bytes"].append(_point(target, spent(a), p[n]))
                continue
            gate = gates[method][index]
            if id(gate) not in logits_of:  # a shared gate runs once
                logits_of[id(gate)] = gate.predict(view.gate_inputs, batch_size=256, verbose=0)
            if method == "bytes":  # routed as it was trained: each batch within its bytes
                a = byte_assignment(logits_of[id(gate)], costs, target, cfg.batch_size,
                                    seed=cfg.eval_batch_seed)
            else:
                a = gate_assignment(logits_of[id(gate)], b, cfg.batch_size,
                                    seed=cfg.eval_batch_seed)
            detail[method].append(_point(target, spent(a), view.metric(a)))
            if method == "enforce" and "enforce_bytes" in detail:
                nb = byte_assignment(logits_of[id(gate)], costs, target, cfg.batch_size,
                                     seed=cfg.eval_batch_seed)
                detail["enforce_bytes"].append(_point(target, spent(nb), view.metric(nb)))
            subsets.setdefault(method, {})[str(index)] = GateRouting(
                target=float(target), bias=tuple(point.bias), picks=tuple(a.tolist()),
                table=bmoe_eval.assigned_subset_performance(scores, a, expert_names=names))
    curves = {meth: [[pt.cost, pt.metric] for pt in pts] for meth, pts in detail.items()}
    hull_d, hull_p = upper_hull(d_hull, p)
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
            match = [pt for pt in detail[meth] if np.isclose(pt.target, t)]
            if match:
                at[label][meth] = match[0].metric
    share = {}
    if "oracle" in rho and "random" in rho and rho["oracle"] > rho["random"]:
        for meth in ("enforce", "enforce_bytes", "bytes", "soft", "benchmark"):
            if meth in rho:
                share[meth] = bmoe_eval.oracle_gain_share(rho[meth], rho["random"], rho["oracle"])
    exceeded = []
    if "oracle" in detail:
        for meth in [x for x in detail if x != "oracle"]:
            for pt, orc in zip(detail[meth], detail["oracle"]):
                if pt.metric > orc.metric + 1e-9:
                    exceeded.append(dict(method=meth, target=pt.target, metric=pt.metric,
                                         cost=pt.cost, oracle=orc.metric,
                                         oracle_cost=orc.cost))
    return SplitEvaluation(curves=curves, points=detail, rho=rho, at=at,
                           oracle_gain_share=share, subsets=subsets, oracle_exceeded=exceeded,
                           oracle_bounds=oracle_bounds)


def scene_shift_point(points, gates, methods):
    """``(method, index)`` of the gate the scene-shift evaluation routes: enforce (else
    soft) at the gated target nearest a third of the largest target (the report's main b,
    as :func:`experiments.report.pick_routing`); None without a gate."""
    for method in ("enforce", "soft"):
        if method not in methods or not gates.get(method):
            continue
        indices = sorted(gates[method])
        goal = max(p.target for p in points) / 3
        return method, min(indices, key=lambda i: abs(points[i].target - goal))
    return None


# ---- stage keys ------------------------------------------------------------------------
def stage_keys(task, cfg, wd):
    """The chained stage keys of a run (see :class:`experiments.stages.StageKey`)."""
    s = task.stage_settings(cfg)
    data = StageKey(wd, "data", dict(task=task.name, data=cfg.data, seed=cfg.seed, **s["data"]),
                    artefacts=[wd.rel(p) for p in task.data_files(cfg, wd)], protected=True)
    experts = StageKey(wd, "experts", dict(seed=cfg.seed, **s["experts"]), parent=data,
                       artefacts=["experts"], protected=True)
    cache_settings = dict(s.get("cache", {}))
    if cfg.encoded:  # a paper run's key is unchanged (its workdirs stay valid)
        cache_settings.update(data_cost="encoded",
                              codecs=[c.get_config() for c in task.codecs(cfg)])
    cache = StageKey(wd, "cache", cache_settings, parent=experts,
                     artefacts=["cache", wd.rel(wd.expert_table())], protected=True)
    eval_files = task.eval_data.files(cfg, wd) if task.eval_data is not None else []
    eval_caches = [job.path for job in _eval_cache_jobs(task, cfg, wd)]
    eval_data = StageKey(wd, "eval_data", dict(eval_data=cfg.eval_data, **s.get("eval_data", {})),
                         parent=experts,
                         artefacts=[wd.rel(p) for p in eval_files]
                         + [wd.rel(p) for p in eval_caches]
                         + [wd.rel(p) for p in eval_caches for p in distribute.shard_files(p)]
                         + [wd.rel(wd.expert_table("eval"))])
    curves = curve_keys(wd, cfg, cache, gate_settings=s.get("gates", {}),
                        eval_fingerprint=eval_data.fingerprint)
    return dict(data=data, experts=experts, cache=cache, bias=curves["bias"],
                gates=curves["gates"], eval_data=eval_data, evaluation=curves["evaluation"])


def curve_keys(wd, cfg, parent, *, gate_settings=None, eval_fingerprint=None):
    """The keys of the stages after the caches (bias, gates, evaluation), chained to
    ``parent``: the main run's cache key, or an ablation point's own key
    (``eval_fingerprint``: the key of the extra held-out set, when there is one)."""
    bias = StageKey(wd, "bias", dict(targets=cfg.targets.as_flag(),
                                     bias=None if cfg.bias is None else list(cfg.bias)),
                    parent=parent, artefacts=[wd.rel(wd.bias())])
    gates = StageKey(wd, "gates", dict(batch_size=cfg.batch_size, epochs=cfg.epochs,
                                       soft_epochs=cfg.soft_epochs,
                                       learning_rate=cfg.learning_rate, gate=cfg.gate,
                                       training_loss=cfg.training_loss, combine=cfg.combine,
                                       bias_weights=list(cfg.bias_weights), seed=cfg.gates_seed,
                                       eval_batch_seed=cfg.eval_batch_seed,
                                       **({"quantization_aware": True}
                                          if cfg.quantization_aware else {}),
                                       **({"int8_weights": True} if cfg.int8_weights else {}),
                                       **({"gate_restarts": cfg.gate_restarts}
                                          if cfg.gate_restarts > 1 else {}),
                                       **(gate_settings or {})),
                     parent=bias, artefacts=["gates"])
    evaluation = StageKey(wd, "evaluation", dict(methods=list(cfg.methods),
                                                 splits=list(EVALUATED_SPLITS),
                                                 eval_batch_seed=cfg.eval_batch_seed,
                                                 eval=eval_fingerprint),
                          parent=gates, artefacts=[wd.rel(wd.evaluation())])
    return dict(bias=bias, gates=gates, evaluation=evaluation)


def _eval_cache_jobs(task, cfg, wd):
    """The cache files of the extra held-out split (moved away when --eval_data changes)."""
    if task.eval_data is None:
        return []
    return [CacheJob("eval", p, None) for p in task.eval_data.cache_files(cfg, wd)]


_ORDER = ("data", "experts", "cache", "bias", "gates", "evaluation")


def refuse_protected_changes(keys, wd):
    """A changed data / experts / cache setting of a workdir that holds their artefacts is
    refused before anything runs (:class:`experiments.stages.StageMismatch`)."""
    for name in ("data", "experts", "cache"):
        key = keys[name]  # a stage that never produced anything can be redone freely
        if key.stored() is not None and not key.is_current() and key.has_artefacts():
            changed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in key.changes())
            later = ", ".join(_ORDER[_ORDER.index(name):])
            raise StageMismatch(
                f"{wd.root} was made with other settings ({changed}); that would invalidate "
                f"its {later} stages. Use another --workdir, or the same flags as before "
                f"(remove {wd.root} to start afresh).")


# ---- stages ------------------------------------------------------------------------------
def stage_data(run, keys, *, banner=""):
    """Writes the splits (and the extra held-out set) unless they are there."""
    task, cfg, wd = run.task, run.cfg, run.wd
    refuse_protected_changes(keys, wd)
    write_json(wd.config(), cfg.as_dict())
    print(f"bmoe-tf {task.name}: preset={cfg.preset} workdir={wd.root}{banner}", flush=True)
    keys["data"].claim()
    wd.run("data", task.data_files(cfg, wd), lambda: task.prepare_data(cfg, wd))
    if cfg.eval_data:
        keys["eval_data"].claim()
        wd.run("eval data", task.eval_data.files(cfg, wd),
               lambda: task.eval_data.prepare(cfg, wd))
    elif keys["eval_data"].stored() is not None:
        keys["eval_data"].claim()  # --eval_data dropped: its set is superseded


def load_data(run, *, announce=True):
    """Loads the splits into ``run.data`` and checks the config against them."""
    task, cfg = run.task, run.cfg
    run.data = task.load_data(cfg, run.wd)
    sizes = run.sizes
    if announce:
        print(f"{task.example_name}s: " + ", ".join(f"{k} {v}" for k, v in sizes.items()),
              flush=True)
    if sizes["train"] < cfg.batch_size:
        raise config_lib.ConfigError(
            f"--batch_size {cfg.batch_size} is larger than the {sizes['train']} "
            f"training {task.example_name}s; use a smaller batch or more data")
    task.check_data(cfg, run.data)


def build_experts(run, keys=None):
    """Trains (or loads) the experts into ``run.experts``; with ``keys``, the extra
    held-out set's key then records the experts it is evaluated with."""
    run.experts = run.task.build_experts(run.cfg, run.wd, run.data)
    if keys is not None and run.cfg.eval_data:
        keys["eval_data"].claim()


def _cache_jobs(run):
    return run.task.caches(run.cfg, run.wd, run.data, run.experts)


def build_cache_shards(run, num_shards, shard_index):
    """One worker's shard of every cache not built yet (the batches ``k`` with
    ``k mod num_shards == shard_index``, :func:`bmoe_tf.cache.shard_path`)."""
    for job in _cache_jobs(run):
        if not job.shards or os.path.exists(job.path):
            continue
        shard = shard_path(job.path, shard_index, num_shards)
        run.wd.run(f"cache {job.label} shard {shard_index + 1}/{num_shards}", shard,
                   lambda job=job, shard=shard: save_cache(shard, job.build(num_shards,
                                                                            shard_index)))


def build_caches(run):
    """Every cache file of the run: merged from a complete set of shards when a
    multi-worker run left one (byte for byte the file one process writes), else built."""
    for job in _cache_jobs(run):
        def build(job=job):
            merged = distribute.merged_shards(job.path) if job.shards else None
            cache = merged if merged is not None else job.build(1, 0)
            (job.save or save_cache)(job.path, cache)
            distribute.remove_shards(job.path)

        run.wd.run(f"cache {job.label}", job.path, build)


def rows_cache_job(label, path, num_examples, batch_size, outputs, *, save=None):
    """A :class:`CacheJob` of per-example expert outputs computed in batches of rows.

    ``outputs(rows)`` returns ``[len(rows), ...]`` for an ``int64`` array of rows, or for
    every example when ``rows`` is None; a shard holds the batches ``k`` with
    ``k mod S = i`` of ``batch_size`` rows (:func:`bmoe_tf.cache.shard_rows`).
    """
    def build(num_shards, shard_index):
        if num_shards == 1:
            return {"kind": np.array("outputs"), "outputs": outputs(None)}
        rows = shard_rows(num_examples, batch_size, num_shards, shard_index)[0]
        cache = {"kind": np.array("outputs")}
        if len(rows):
            cache["outputs"] = outputs(rows)
        return as_cache_shard(cache, num_examples=num_examples, batch_size=batch_size,
                              num_shards=num_shards, shard_index=shard_index)

    return CacheJob(label, path, build, save=save)


def bytes_cache_job(wd, split, inputs, experts, *, batch_size=256):
    """A :class:`CacheJob` of each input's payload bytes per expert (``--data_cost=encoded``):
    ``cache/<split>_bytes.npz``, ``int64[M, N]`` from :meth:`bmoe_tf.Expert.payload_sizes`
    (each expert with its codec), read back by :func:`load_bytes`."""
    def build(num_shards, shard_index):
        out = [np.stack([e.payload_sizes(inputs[i:i + batch_size]) for e in experts], axis=1)
               for i in range(0, len(inputs), batch_size)]
        return {"bytes": np.concatenate(out) if out else np.zeros((0, len(experts)), np.int64)}

    def save(path, cache):
        np.savez(path + ".tmp.npz", bytes=cache["bytes"])
        os.replace(path + ".tmp.npz", path)

    return CacheJob(f"{split} bytes", wd.cache_file(split, "bytes"), build, shards=False,
                    save=save)


def load_bytes(wd, split, num_examples, num_experts) -> np.ndarray:
    """``float64[M, N]``: the payload bytes of ``split`` (:func:`bytes_cache_job`), checked."""
    from experiments.stages import ArtefactError, load_artefact

    path = wd.cache_file(split, "bytes")

    def read(p):
        with np.load(p) as f:
            return np.asarray(f["bytes"], np.float64)

    out = load_artefact(path, read)
    if out.shape != (num_examples, num_experts):
        raise ArtefactError(f"{path} holds bytes {out.shape}, {split} has {num_examples} "
                            f"examples and {num_experts} experts; delete it and run again")
    return out


def _expert_rows(run, names, path):
    task, cfg = run.task, run.cfg

    def measure():
        rows = []
        paper = np.asarray(task.data_costs(cfg), np.float64)
        for n, e in enumerate(run.experts):
            metrics, fields = {}, dict(task.report.expert_row(cfg, run.data, n, e))
            cost = float(e.data_cost)
            for split in names:
                view = run.view(split)
                metrics[split] = float(view.metric(np.full(len(view), n, np.int64)))
                fields.update(task.report.expert_split_row(cfg, run.data, split, n, view))
                if view.costs is not None:  # encoded: the payloads' bytes on this split
                    c = np.asarray(view.costs, np.float64)[:, n]
                    fields.setdefault("bytes", {})[split] = dict(
                        mean=float(c.mean()), p5=float(np.percentile(c, 5)),
                        p95=float(np.percentile(c, 95)))
            if "bytes" in fields:  # d_n of the LP and the targets: the mean on validation
                cost = fields["bytes"].get("validation", next(iter(fields["bytes"].values())))[
                    "mean"]
                fields["paper_data_cost"] = float(paper[n])
            rows.append(ExpertRow(e.name, cost, metrics, fields).to_json())
        write_json(path, rows)

    run.wd.run(f"expert table{' eval' if names == ['eval'] else ''}", path, measure)
    return [ExpertRow.from_json(r) for r in read_json(path)]


def expert_table(run) -> list:
    """Each expert's d_n and metric per split (:class:`ExpertRow`): ``experts.json``
    (validation, test; a cache-stage artefact) and ``experts_eval.json`` (the extra held-out
    set, an eval_data-stage artefact, rebuilt when ``--eval_data`` changes)."""
    sizes = run.sizes
    rows = _expert_rows(run, [s for s in ("validation", "test") if s in sizes],
                        run.wd.expert_table())
    if "eval" in sizes:
        extra = _expert_rows(run, ["eval"], run.wd.expert_table("eval"))
        rows = [r.merged(e) for r, e in zip(rows, extra)]
    return rows


def stage_bias(run, table) -> list:
    """b per target (:class:`BiasPoint`) from the LP on the validation metric (or
    ``--bias``): ``bias.json``."""
    cfg, path = run.cfg, run.wd.bias()

    def choose():
        d = np.array([r.data_cost for r in table])
        p = np.array([r.metric("validation") for r in table])
        if cfg.bias is not None:
            b = validate_bias(cfg.bias, len(d), name="--bias")
            points = [BiasPoint(float(b @ d), tuple(b.tolist()))]
        else:
            points = [BiasPoint(float(t), tuple(select_bias(d, p, target_cost=t).tolist()))
                      for t in cfg.targets.resolve(d, what=(
                          "the experts' mean encoded bytes on the validation split "
                          "(--data_cost=encoded)" if cfg.encoded else
                          "the experts' data costs d_n"))]
        write_json(path, [point.to_json() for point in points])

    run.wd.run("bias", path, choose)
    return read_bias(run.wd)


def read_bias(wd) -> list:
    """The :class:`BiasPoint` list of ``bias.json``."""
    return [BiasPoint.from_json(p) for p in read_json(wd.bias())]


def stage_gates(run, points, *, strategy=None, chief=True):
    """Trains every (method, target) gate; returns ``{method: {index: gate}}``.

    On a cluster every worker runs this in the same order (each gate's training is
    collective, ``strategy``); only the chief (``chief``) writes gates and picks the soft
    gates' w_bias (the others return ``{}``).
    """
    task, cfg, wd = run.task, run.cfg, run.wd
    train = task.training_set(cfg, wd, run.data)
    n = len(run.experts)
    gates, loaded = {}, {}
    common = dict(build_gate=lambda: task.build_gate(cfg, n), experts=run.experts, train=train,
                  batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, combine=cfg.combine,
                  training_loss=cfg.training_loss, seed=cfg.gates_seed, verbose=cfg.verbose,
                  strategy=strategy, quantization_aware=cfg.quantization_aware,
                  int8_weights=cfg.int8_weights)
    view = task.gate_view(cfg)
    if view is not None:
        common.update(input_shape=view[0], gate_preprocess=view[1])
    for method in cfg.gate_methods:
        gates[method] = {}
        for index, point in enumerate(points):
            if np.isclose(max(point.bias), 1.0):
                continue  # a single expert: nothing to learn
            if method == "enforce":
                label = "shared" if cfg.training_loss in B_INDEPENDENT_LOSSES else str(index)
                directory = wd.gate_dir("enforce", label)
                if directory not in loaded:
                    served = [i for i, p in enumerate(points)
                              if not np.isclose(max(p.bias), 1.0)
                              and (label == "shared" or i == index)]
                    loaded[directory] = _enforce_gate(run, directory, label, point.bias,
                                                      [points[i].bias for i in served],
                                                      common, chief)
                gates[method][index] = loaded[directory]
                continue
            if method == "bytes":  # one per target: its bytes are the training budget
                if train.costs is None:
                    raise ValueError(f"{task.name}: --methods=bytes needs the training "
                                     "set's payload bytes (TrainingSet.costs)")
                directory = wd.gate_dir("bytes", index)
                gates[method][index] = wd.run(
                    f"gate bytes/{index}", gates_lib.gate_files(directory),
                    lambda d=directory, b=list(point.bias), t=point.target, i=index:
                    gates_lib.train_gate(d, bias=b, method="enforce_bytes", byte_target=t,
                                         name=f"bytes/{i}", epochs=cfg.epochs, **common),
                    load=lambda d=directory: gates_lib.load_gate(d))[0]
                continue
            directory = wd.gate_dir("soft", index)
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
                                 lambda c=cand, w=weight, b=list(point.bias), name=name:
                                 gates_lib.train_gate(c, bias=b, method="soft", bias_weight=w,
                                                      name=name, epochs=cfg.soft_epochs,
                                                      **common),
                                 load=lambda c=cand: gates_lib.load_gate(c))
                if not chief:
                    continue  # the chief chooses
                score = _validation_metric(run, gate, [point.bias])
                if best is None or score > best[0]:
                    best = (score, weight, gate)
            if chief:
                write_json(chosen, dict(bias_weight=best[1], validation_metric=best[0]))
                gates[method][index] = best[2]
    return gates if chief else {}


def _validation_metric(run, gate, biases):
    """The mean of the task's validation metric of ``gate``'s routing (Algorithm 1 over the
    evaluation's shuffled batches) at each b of ``biases``: what a choice among gates
    (soft's w_bias, enforce's restarts) maximises."""
    cfg, validation = run.cfg, run.view("validation")
    logits = gate.predict(validation.gate_inputs, batch_size=256, verbose=0)
    return float(np.mean([validation.metric(gate_assignment(
        logits, b, cfg.batch_size, seed=cfg.eval_batch_seed)) for b in biases]))


def _enforce_gate(run, directory, label, bias, served, common, chief):
    """The enforce gate of ``directory``: one training, or with ``--gate_restarts=K`` the
    restart (of K, :func:`experiments.gates.restart_seed`) whose routing scores best on
    the validation split (the mean of the task's metric over the b it serves,
    ``served``; the first on ties), copied into ``directory`` (``chosen.json`` records
    every restart's score). The test split never takes part in the choice."""
    cfg, wd = run.cfg, run.wd
    name = f"enforce/{label}"

    def train(d, seed):
        return gates_lib.train_gate(d, bias=list(bias), method="enforce", name=name,
                                    epochs=cfg.epochs, **dict(common, seed=seed))

    if cfg.gate_restarts == 1:
        return wd.run(f"gate {name}", gates_lib.gate_files(directory),
                      lambda: train(directory, cfg.gates_seed),
                      load=lambda: gates_lib.load_gate(directory))[0]
    chosen = os.path.join(directory, "chosen.json")
    if os.path.exists(chosen) and gates_lib.gate_done(directory):
        pick = read_json(chosen)
        print(f"[gate {name}] skipped: restart {pick['restart']} of {len(pick['restarts'])} "
              f"chosen in {wd.rel(chosen)}", flush=True)
        return gates_lib.load_gate(directory)[0]
    restarts, best = [], None
    for k in range(cfg.gate_restarts):
        cand = os.path.join(directory, "candidates", f"r{k}")
        seed = gates_lib.restart_seed(cfg.gates_seed, k)
        gate, _ = wd.run(f"gate {name} restart {k} (seed {seed})",
                         gates_lib.gate_files(cand), lambda c=cand, s=seed: train(c, s),
                         load=lambda c=cand: gates_lib.load_gate(c))
        if not chief:
            continue  # the chief chooses
        score = _validation_metric(run, gate, served)
        restarts.append(dict(restart=k, seed=seed, validation_metric=score))
        if best is None or score > best[0]:
            best = (score, k, cand, gate)
    if not chief:
        return gate
    gates_lib.adopt_gate(best[2], directory)
    write_json(chosen, dict(restart=best[1], criterion="mean validation metric over the "
                            f"{len(served)} b this gate routes", restarts=restarts))
    print(f"[gate {name}] restart {best[1]} of {cfg.gate_restarts} chosen (validation "
          + ", ".join(f"{r['validation_metric']:.3f}" for r in restarts) + ")", flush=True)
    return best[3]


def stage_evaluation(run, keys, table, points, gates) -> dict:
    """Every curve of the validation and test splits (and the extra held-out set):
    ``evaluation.json``; returns ``{split: SplitEvaluation}``. Validation is where gate
    settings are compared (issue 22); the report's headline numbers are the test split's."""
    keys["evaluation"].claim()
    path = run.wd.evaluation()
    names = [s for s in EVALUATED_SPLITS if s in run.sizes]

    def evaluate():
        write_json(path, {s: evaluate_split(run.cfg, run.view(s), s, table, points,
                                            gates).to_json() for s in names})

    run.wd.run("evaluation", path, evaluate)
    return {s: SplitEvaluation.from_json(r) for s, r in read_json(path).items()}


def stage_curves(run, keys, *, strategy=None):
    """The stages after the caches, in one process: the expert table, b
    (:func:`stage_bias`), the gates, the evaluation; returns ``(table, points, gates,
    results)``. ``keys`` holds at least ``bias``, ``gates`` and ``evaluation``
    (:func:`curve_keys`). The main run and every ablation point run through it."""
    table = expert_table(run)
    keys["bias"].claim()
    points = stage_bias(run, table)
    keys["gates"].claim()
    gates = stage_gates(run, points, strategy=strategy)
    results = stage_evaluation(run, keys, table, points, gates)
    return table, points, gates, results


def natural_order(run, m):
    task, cfg = run.task, run.cfg
    order = task.natural_order.order(cfg, run.data)
    if order is not None:
        order = np.asarray(order, np.int64).reshape(-1)
        if len(order) != m or not np.array_equal(np.sort(order), np.arange(m)):
            raise ValueError(f"{task.name}: the natural order must be a permutation of the "
                             f"{m} test inputs")
    frames = task.natural_order.frames(cfg, run.data)
    if frames is not None:
        frames = np.asarray(frames, np.int64).reshape(-1)
    return order, frames


def stage_scene_shift(run, parent, points, gates):
    """The scene-shift evaluation (:mod:`experiments.scene_shift`) of every gated target
    of the chosen method, test split in natural order: ``scene_shift.json``, keyed by its
    settings, the natural order and the gates (skipped when done); None without a gate."""
    from experiments import scene_shift as ss
    from experiments.stages import fingerprint

    task, cfg, wd = run.task, run.cfg, run.wd
    chosen = scene_shift_point(points, gates, cfg.gate_methods)
    if chosen is None:
        return None
    method, main = chosen
    test, validation = run.view("test"), run.view("validation")
    m = len(test.gate_inputs)
    order, frames = natural_order(run, m)
    settings = dict(gate_method=method, methods=list(ss.METHODS), window=ss.WINDOW,
                    batch_size=ss.BATCH_SIZE, crossing=ss.CROSSING,
                    bucket_fraction=ss.BUCKET_FRACTION, seed=cfg.eval_batch_seed,
                    calibration="validation",
                    order=None if order is None else fingerprint(order.tolist()),
                    frames=None if frames is None else fingerprint(frames.tolist()))
    d = np.asarray(task.data_costs(cfg), np.float64)
    costs = None
    if test.costs is not None:  # encoded: a budget in bytes, each input's own (ByteController)
        d = np.asarray(validation.costs, np.float64).mean(axis=0)  # b . d = the point's target
        costs = np.asarray(test.costs, np.float64)[np.arange(m) if order is None else order]
        settings["controller"] = "bytes"
    key = StageKey(wd, "scene_shift", settings, parent=parent, artefacts=[wd.rel(wd.scene_shift())])
    key.claim()
    path = wd.scene_shift()

    def compute():
        stored = np.arange(m) if order is None else order
        logits_of, out = {}, []
        for index in sorted(gates[method]):
            gate = gates[method][index]
            if id(gate) not in logits_of:  # a shared gate runs once
                logits_of[id(gate)] = (
                    gate.predict(test.gate_inputs, batch_size=256, verbose=0)[stored],
                    gate.predict(validation.gate_inputs, batch_size=256, verbose=0))
            test_logits, val_logits = logits_of[id(gate)]

            def metric(natural, stored=stored):
                a = np.empty(m, np.int64)
                a[stored] = natural
                return test.metric(a)

            b = list(points[index].bias)
            rows = ss.scene_shift_rows(test_logits, frames, val_logits, b, d, metric,
                                       seed=cfg.eval_batch_seed, costs=costs)
            out.append(dict(index=int(index), target=float(points[index].target),
                            bias=b, rows=rows))
        write_json(path, dict(settings, main=int(main), inputs=m,
                              frame_count=m if frames is None else int(len(np.unique(frames))),
                              natural_order=task.natural_order.description, points=out))

    wd.run("scene shift", path, compute)
    return read_json(path)


def stage_report(run, keys, table, points, gates, results, command):
    """report.json / report.md / figures, the task's extra stages, and the console summary."""
    task, cfg, wd = run.task, run.cfg, run.wd
    scene_shift = stage_scene_shift(run, keys["gates"], points, gates)
    gate_model = task.build_gate(cfg, len(run.experts))
    report = report_lib.write_report(task, cfg, wd, run.data, table, points, results,
                                     run.sizes, command, gate_model=gate_model,
                                     scene_shift=scene_shift,
                                     views={s: run.view(s) for s in results})
    task.extra_stages(run, report)
    export_files.write_export_files(task, wd)
    print(report_lib.format_table(report), flush=True)
    for line in report_lib.scene_shift_lines(report):
        print(line, flush=True)
    for line in report_lib.warnings(report):
        print(line, flush=True)
    print(f"\nreport: {wd.report_md()}\nfigures: {wd.path('reports')}", flush=True)
    return report


def default_command(task):
    """The command line recorded in ``commands.json`` (shell-quoted: a path with spaces
    stays one argument)."""
    return shlex.join(["python", "-m", f"experiments.{task.name}"] + sys.argv[1:])


# ---- the run ---------------------------------------------------------------------------
def _prepare(task, cfg):
    """What every run does before the first op: the strategy, op determinism."""
    from bmoe_tf.backend import tf

    strategy = distribute.make_strategy(cfg.strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise config_lib.ConfigError(
            f"--batch_size {cfg.batch_size} does not split into {replicas} equal replica "
            f"parts (--strategy={cfg.strategy}); use a multiple of {replicas}")
    tf.config.experimental.enable_op_determinism()
    return strategy


def run(task, cfg, workdir, *, command=None):
    """Runs every stage of ``task`` for ``cfg`` in ``workdir``; returns the report dict.

    A cluster (``cfg.strategy == "multi_worker"``) runs :func:`experiments.multi_worker.run`
    instead (the CLI picks it).

    Raises:
      WorkdirBusy: another run holds the workdir.
      StageMismatch: a data/expert/cache setting differs from the workdir's.
      ArtefactError: a corrupt artefact (the message names it).
      config.ConfigError: a setting that the data rules out (e.g. a batch larger than
        the training set).
      distribute.ClusterError: another worker of a multi-worker run failed.
    """
    if cfg.strategy == "multi_worker":
        raise config_lib.ConfigError("--strategy=multi_worker runs through "
                                     "experiments.multi_worker.run (every worker of the cluster)")
    strategy = _prepare(task, cfg)
    command = command or default_command(task)
    with WorkdirLock(workdir):
        wd = Layout(workdir)
        r = Run(task, cfg, wd)
        keys = stage_keys(task, cfg, wd)
        stage_data(r, keys)
        load_data(r)
        keys["experts"].claim()
        build_experts(r, keys)
        keys["cache"].claim()
        build_caches(r)
        table, points, gates, results = stage_curves(r, keys, strategy=strategy)
        return stage_report(r, keys, table, points, gates, results, command)
