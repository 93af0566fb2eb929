"""The detection ablations (paper Table II and Fig. 5), run after the main report.

``complexity`` (Table II): rho of the enforce curve for three gate complexities C_g
x batch sizes M, with N = 3 (every expert of the run) and N = 2 (the cheapest and
the dearest). The batch size is the training batch *and* the test-time routing
batch of Algorithm 1 (the paper's point: b is enforced per batch).

``experts`` (Fig. 5): rho of the enforce curve vs N for several (R_min, R_max),
the intermediate resolutions evenly spaced (rounded to whole pixels). Experts the
main run does not have are trained once (``ablations/experts/``) and their
detections cached once (``ablations/cache/``); every point reuses them.

Every point runs the pipeline's own stages after the caches
(:func:`experiments.pipeline.stage_curves`: expert table, b from the LP on validation mAP,
the enforce gate, the test evaluation) for the main run's config restricted to its experts
and its gate, in its own layout ``ablations/<settings fingerprint>/<point>/`` (each stage
keyed and skipped when done, as in the main run); the quick and smoke presets use fewer
points (see :data:`GRIDS`).
"""
import dataclasses
import os

import numpy as np

from bmoe_tf.cache import score_cache
from bmoe_tf.gating import build_gate, compact_gate
from experiments import pipeline
from experiments.layout import Layout
from experiments.stages import StageKey, fingerprint, load_artefact, read_json, write_json
from experiments.task import Split, Task, TrainingSet

__all__ = ["run_ablations", "GRIDS", "RANGES", "complexity_gates", "spaced_resolutions"]

#: (R_min, R_max) of Fig. 5.
RANGES = ((100, 300), (150, 300), (100, 200))
#: Points per preset: batch sizes M (Table II), expert counts N (Fig. 5).
GRIDS = {"full": dict(batch_sizes=(16, 32, 64), counts=(2, 3, 4, 5)),
         "quick": dict(batch_sizes=(16, 64), counts=(2, 3)),
         "smoke": dict(batch_sizes=(16,), counts=(2,))}


def spaced_resolutions(r_min, r_max, n):
    """``n`` resolutions evenly spaced over ``[r_min, r_max]``, rounded to whole px."""
    return tuple(int(round(r)) for r in np.linspace(r_min, r_max, n))


def complexity_gates(kind, view, num_experts):
    """Three gates of rising complexity ``[(label, build())]`` for Table II: the paper
    gate (Table III) with a 512 / 768 / 1280-unit hidden layer (C_g about 17 M, 24 M and
    39 M MACs at 224 px, around the paper's 23 M / 26 M / 39 M), or the compact gate
    with (8, 16, 16) / (16, 32, 32) / (32, 64, 64) filters."""
    shape = (view, view, 3)
    if kind == "compact":
        return [(f"compact{f}", lambda f=f: compact_gate(shape, num_experts, filters=f))
                for f in ((8, 16, 16), (16, 32, 32), (32, 64, 64))]
    return [(f"paper_h{h}", lambda h=h: build_gate(
        shape, num_experts, filters=64, kernel_size=3, strides=2, padding="valid",
        pool_size=7, pool_strides=5, hidden_units=(h,))) for h in (512, 768, 1280)]


class _ExpertPool:
    """Detections and per-image scores of every resolution (the main run's experts and
    the extra ones), by split."""

    def __init__(self, run):
        self.run, self.cfg, self.wd = run, run.cfg, run.wd
        self.detections = {}  # resolution -> {split: [M, K, 6]}
        self.scores = {}      # resolution -> {split: [M]}
        main = list(self.cfg.task.resolutions)
        for n, r in enumerate(main):
            self.detections[r] = {s: run.view(s).detections[:, n] for s in pipeline.SPLITS}
            self.scores[r] = {s: run.view(s).scores[:, n] for s in pipeline.SPLITS}

    def need(self, resolution):
        """Trains (once) and caches (once) the expert at ``resolution``."""
        if resolution in self.detections:
            return
        from bmoe_tf.backend import keras
        from bmoe_tf import coco_map as coco_metric
        from experiments.detection import ssd

        data, cfg, wd = self.run.data, self.cfg, self.wd
        name = f"ssd{resolution}"
        path = wd.path("ablations", "experts", name)
        epochs = ssd.interpolate_epochs(cfg.task, [resolution])[0]
        num_classes = len(data["experts"].class_names)

        def build():
            keras.utils.set_random_seed(cfg.seed + resolution)
            model = ssd.build_ssd(resolution, num_classes)
            ssd.train_ssd(model, resolution, data["experts"], data["validation"],
                          epochs=epochs, seed=cfg.seed + resolution,
                          checkpoint_dir=path + ".ckpt", verbose=cfg.verbose)
            ssd.export_ssd(model, resolution, path)

        wd.run(f"ablation expert {name} ({epochs} epochs)", path, build)
        expert = load_artefact(path, lambda p: ssd.load_expert(p, resolution, name=name))
        self.detections[resolution], self.scores[resolution] = {}, {}
        for split in pipeline.SPLITS:
            out = wd.path("ablations", "cache", f"{split}_{name}.npz")

            def detect(data=data[split], out=out):
                det = ssd.detect(expert, data.images)
                score = coco_metric.per_image_scores(
                    data.boxes, data.labels, data.image_index, len(data), det[:, None],
                    num_classes=len(data.class_names))[:, 0]
                os.makedirs(os.path.dirname(out), exist_ok=True)
                np.savez(out + ".tmp.npz", detections=det, scores=score)
                os.replace(out + ".tmp.npz", out)

            wd.run(f"ablation cache {split} {name}", out, detect)
            with np.load(out) as f:
                self.detections[resolution][split] = f["detections"]
                self.scores[resolution][split] = f["scores"]


class _SubsetTask(Task):
    """The detection task restricted to the experts at ``resolutions``, over the main
    run's data and the pool's caches, with the point's gate: what the pipeline's stages
    after the caches (:func:`experiments.pipeline.stage_curves`) read."""

    def __init__(self, task, run, pool, resolutions, build_gate):
        from bmoe_tf.coco_map import RoutingEvaluator

        for attr in ("name", "title", "metric_name", "cost_unit", "example_name"):
            setattr(self, attr, getattr(task, attr))
        self.resolutions, self._build_gate = tuple(resolutions), build_gate
        self._views = {}
        for split in pipeline.SPLITS:
            scores = np.stack([pool.scores[r][split] for r in resolutions], axis=1)
            metric = None
            if split != "train":
                data = run.data[split]
                evaluator = RoutingEvaluator(
                    data.boxes, data.labels, data.image_index, len(data), len(data.class_names),
                    np.stack([pool.detections[r][split] for r in resolutions], axis=1))
                metric = (lambda e: lambda a: 100.0 * e.map(np.asarray(a, np.int64)))(evaluator)
            self._views[split] = Split(gate_inputs=run.view(split).gate_inputs, scores=scores,
                                       metric=metric)

    def data_costs(self, cfg):
        return np.array([3 * r * r * 4 for r in self.resolutions], np.float64)

    def experts(self, cfg):
        """Stand-in experts: a gate trained on a scores cache needs only their count and
        data costs (no expert runs)."""
        from bmoe_tf import Expert
        from bmoe_tf.backend import keras

        return [Expert(keras.layers.Lambda(lambda x: x), data_cost=c, name=f"ssd{r}")
                for c, r in zip(self.data_costs(cfg), self.resolutions)]

    def split(self, cfg, wd, data, name):
        return self._views[name]

    def training_set(self, cfg, wd, data):
        train = self._views["train"]
        return TrainingSet(train.gate_inputs, score_cache(train.scores))

    def build_gate(self, cfg, num_experts):
        return self._build_gate()

    def prepare_data(self, cfg, wd):  # the main run's stages made everything before
        raise NotImplementedError

    load_data = build_experts = caches = prepare_data


def _rho_point(task, run, pool, resolutions, build, batch_size, directory):
    """One ablation point: the main run's config (enforce only, batch ``batch_size``) on
    the experts at ``resolutions`` with the gate ``build()``, through the pipeline's own
    stages in ``directory`` (expert table, b from the LP, the enforce gate, the test
    evaluation; each skipped when done). Returns ``{"rho", "points", "experts"}``."""
    sub_task = _SubsetTask(task, run, pool, resolutions, build)
    cfg = dataclasses.replace(run.cfg, methods=("enforce",), batch_size=batch_size, bias=None,
                              verbose=0)
    wd = Layout(directory)
    sub = pipeline.Run(sub_task, cfg, wd)
    sub.data, sub.experts = run.data, sub_task.experts(cfg)
    point = StageKey(wd, "experts", dict(resolutions=list(resolutions)))
    keys = pipeline.curve_keys(wd, cfg, point)
    point.claim()
    table, _, _, results = pipeline.stage_curves(sub, keys)
    test = results["test"]
    return dict(rho=test.rho.get("enforce"),
                points=[pt.to_json() for pt in test.points["enforce"]],
                experts=[row.to_json() for row in table])


def run_ablations(task, run, report):
    """Runs ``cfg.task.ablation`` after the main run ``run``
    (:class:`experiments.pipeline.Run`); returns ``{"ablation": {...}}`` for report.json."""
    cfg, wd = run.cfg, run.wd
    grid = GRIDS[cfg.preset]
    view = task.view_resolution(cfg)
    settings = dict(gate=cfg.gate, view=view, epochs=cfg.epochs,
                    learning_rate=cfg.learning_rate, training_loss=cfg.training_loss,
                    combine=cfg.combine, seed=cfg.seed, targets=cfg.targets.as_flag(),
                    eval_batch_seed=cfg.eval_batch_seed, grid=grid)
    root = wd.path("ablations", fingerprint(settings))
    os.makedirs(root, exist_ok=True)
    write_json(os.path.join(root, "settings.json"), settings)
    pool = _ExpertPool(run)
    out = {}
    resolutions = list(cfg.task.resolutions)
    if "complexity" in cfg.task.ablation:
        path = os.path.join(root, "complexity.json")

        def complexity():
            from bmoe_tf.gating import count_macs

            sets = {len(resolutions): resolutions, 2: [resolutions[0], resolutions[-1]]}
            rows = []
            for label, build in complexity_gates(cfg.gate, view, len(resolutions)):
                for m in grid["batch_sizes"]:
                    row = dict(gate=label, batch_size=m,
                               macs=int(count_macs(build())), rho={})
                    for n, res in sets.items():
                        build_n = dict(complexity_gates(cfg.gate, view, n))[label]
                        name = f"complexity/{label}/M{m}/N{n}"
                        print(f"[ablation {name}]", flush=True)
                        row["rho"][str(n)] = _rho_point(
                            task, run, pool, res, build_n, m, os.path.join(root, name))["rho"]
                    rows.append(row)
            write_json(path, dict(experts={str(n): list(r) for n, r in sets.items()},
                                  rows=rows))

        wd.run("ablation complexity (Table II)", path, complexity)
        out["complexity"] = read_json(path)
        out["complexity"]["figure"] = None
    if "experts" in cfg.task.ablation:
        path = os.path.join(root, "experts.json")

        def experts_ablation():
            rows = []
            for r_min, r_max in RANGES:
                for n in grid["counts"]:
                    res = spaced_resolutions(r_min, r_max, n)
                    for r in res:
                        pool.need(r)
                    name = f"experts/{r_min}-{r_max}/N{n}"
                    print(f"[ablation {name}] resolutions {list(res)}", flush=True)
                    point = _rho_point(task, run, pool, res, lambda n=n: task.build_gate(cfg, n),
                                       cfg.batch_size, os.path.join(root, name))
                    rows.append(dict(range=[r_min, r_max], n=n, resolutions=list(res),
                                     rho=point["rho"], experts=point["experts"]))
            write_json(path, dict(rows=rows))

        wd.run("ablation experts (Fig. 5)", path, experts_ablation)
        out["experts"] = read_json(path)
        out["experts"]["figure"] = _figure_fig5(wd, out["experts"]["rows"])
    return {"ablation": out}


def _figure_fig5(wd, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.report import COLOURS

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, rng in enumerate(sorted({tuple(r["range"]) for r in rows})):
        pts = sorted((r["n"], r["rho"]) for r in rows
                     if tuple(r["range"]) == rng and r["rho"] is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", color=COLOURS[i % len(COLOURS)],
                    label=f"(R_min, R_max) = {rng}")
    ax.set_xlabel("number of experts N")
    ax.set_ylabel("rho (enforce), test mAP %")
    ax.set_title("Fig. 5 layout")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = wd.path("reports", "fig5_rho_vs_experts.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.path.relpath(path, wd.root)
