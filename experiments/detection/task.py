"""Biased mixtures of single-shot detectors (paper Section IV-B), end to end.

    python -m experiments.detection --workdir=workdir/detection --preset=quick

A :class:`experiments.pipeline.Task`: 300x300 images, N SSD experts at R_n px
(P_n: anti-aliased resize of the 300x300 image to R_n x R_n; d_n = 3 R_n^2 K bytes,
K = 4: 120 / 270 / 1080 kB), each trained here on images at its own resolution,
exported as a SavedModel and loaded only through :class:`bmoe_tf.Expert`. The
gate sees the 224x224 centre crop (Table III), optionally downsampled for the
compact (Cortex-M7) gate. The cache holds every expert's detections on every
split (``[M, N, K, 6]``) and a per-image, per-expert score (the gates' training
signal and the oracle's objective, see :mod:`experiments.detection.coco_metric`); the
metric of a routing is COCO mAP@[.5:.95] (in %) of the union of each image's
detections from its chosen expert, from pycocotools' own per-image evaluation.

Data: ``--data=generated`` (default) is a seeded, *generated* detection set made
at run time from scikit-image's bundled textures and photos
(:mod:`experiments.detection.data`): it shows that a gate can learn which images need
resolution; it is not COCO, and its mAP values are not comparable with the
paper's. ``tfds:coco/2017``, ``tfds:voc/2007`` (prepared by the user, with
``--tfds_data_dir``) and ``folder:PATH`` (images + COCO ``annotations.json``) are
the paths for real data. Nothing is downloaded.

``--ablation=complexity,experts`` adds the paper's Table II (rho for gate
complexity x batch size, N = 3 and N = 2) and Fig. 5 (rho vs N for several
(R_min, R_max)) after the main run (:mod:`experiments.detection.ablation`).
"""
import dataclasses
import os

import numpy as np

from bmoe_tf.cache import (as_cache_shard, load_cache, save_cache, score_cache, shard_path,
                           shard_rows)
from bmoe_tf.gating import compact_gate, paper_gate
from experiments import distribute, pipeline
from experiments.config import ConfigError, Preset, Schedule, Targets, parse_numbers
from experiments.detection.data import GATE_CROP, gate_view  # noqa: F401 (re-exported)
from experiments.detection.ssd import interpolate_epochs
from experiments.stages import ArtefactError, load_artefact, write_json

__all__ = ["DetectionTask", "DetectionSettings", "PRESETS", "PAPER_TABLE_I", "ABLATIONS",
           "gate_view", "interpolate_epochs", "run"]

#: Table I of the paper (COCO, {R_n} = {100, 150, 300}): mAP (%) at d_max, d_max/2,
#: d_max/3 and rho. The printed table is garbled (see WORKSPACE.md, D26): at d_max
#: every method is the 300 px expert (80.0 / 75.7); the ResNet50 benchmark row is the
#: orphan "65.1 61.3 66.1" row, the duplicated enforce row is dropped.
PAPER_TABLE_I = {
    "vgg16": {"benchmark": [80.0, 70.0, 66.7, 70.9], "enforce": [80.0, 72.5, 70.9, 73.1],
              "soft": [80.0, 67.1, 65.0, 68.9], "random": [80.0, 66.3, 63.4, 68.2]},
    "resnet50": {"benchmark": [75.7, 65.1, 61.3, 66.1], "enforce": [75.7, 67.8, 65.9, 68.3],
                 "soft": [75.7, 62.2, 59.9, 64.2], "random": [75.7, 61.9, 57.4, 63.3]},
}
ABLATIONS = ("complexity", "experts")
#: Images per SSD call when caching detections; also the unit a multi-worker run shards
#: the cache by (the same batches on one or many workers: the same bytes).
EXPERT_BATCH = 16
#: Default view of the compact gate: the centre crop downsampled so that its int8
#: input (96 x 96 x 3 = 27 KiB) leaves room in a 256 KiB arena.
COMPACT_VIEW = 96


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """The detection task's own settings (flags of the same names).

    ``expert_epochs``: one per resolution (the 300 px expert gets the largest share).
    ``gate_resolution``: side of the gate's view (the 224 centre crop, resized); 0
    means 224 for the paper gate and :data:`COMPACT_VIEW` for the compact gate.
    """

    resolutions: tuple = (100, 150, 300)
    expert_epochs: tuple = (24, 20, 18)
    train_images: int = 1200
    validation_images: int = 300
    test_images: int = 300
    gate_resolution: int = 0
    allow_small_images: bool = False
    ablation: tuple = ()


PRESETS = {
    "full": Preset(Schedule(targets=Targets(count=6, experts=True), batch_size=128,
                            learning_rate=1e-3, epochs=60, soft_epochs=30,
                            bias_weights=(0.1, 0.3, 1.0, 3.0)),
                   DetectionSettings(expert_epochs=(40, 40, 40), train_images=3000,
                                     validation_images=500, test_images=500)),
    # quick: the compact gate (the paper gate's 29 M-weight FC layer trains at ~20 s per
    # epoch on 1200 images on 2 cores; WORKSPACE.md, "Detection task").
    "quick": Preset(Schedule(targets=Targets(count=3, experts=True), batch_size=64,
                             learning_rate=3e-3, epochs=60, soft_epochs=30, gate="compact"),
                    DetectionSettings()),
    "smoke": Preset(Schedule(targets=Targets(count=3, experts=True), batch_size=16,
                             learning_rate=1e-3, epochs=1),
                    DetectionSettings(expert_epochs=(1, 1, 1), train_images=48,
                                      validation_images=24, test_images=24)),
}


class DetectionTask(pipeline.Task):
    """Section IV-B on 300x300 images (see the module docstring)."""

    name = "detection"
    title = "Single-shot detection"
    metric_name = "mAP@[.5:.95] (%)"
    cost_unit = "bytes per image"
    example_name = "image"
    default_data = "generated"
    data_help = ("generated (a seeded generated set, made at run time) | folder:PATH (images "
                 "+ COCO annotations.json) | tfds:coco/2017 | tfds:voc/2007")
    curve_figure_name = "fig4_map_vs_cost.png"
    curve_figure_title = "Fig. 4 layout"
    oracle_description = ("capacity-constrained assignment maximising the summed per-image "
                          "scores (see experiments.detection.coco_metric.per_image_scores; a proxy "
                          "of the dataset mAP, not a bound on it)")

    def __init__(self):
        self.sets = {}
        self.detections = {}
        self._scores = {}
        self._views = {}
        self._evaluators = {}
        self._train = None
        self._view = GATE_CROP

    # ---- configuration ---------------------------------------------------------------
    def presets(self):
        return PRESETS

    def define_flags(self, fv):
        from absl import flags

        d = dict(flag_values=fv)
        flags.DEFINE_list("resolutions", None, "Expert input resolutions R_n in px, cheapest "
                          "first (at most 300). Default from --preset: 100,150,300.", **d)
        flags.DEFINE_list("expert_epochs", None, "SSD training epochs, one per resolution (or "
                          "one for all). Default from --preset.", **d)
        flags.DEFINE_integer("train_images", None, "Training images (generated: made; "
                             "tfds/folder: a cap, 0 = all). Default from --preset.", **d)
        flags.DEFINE_integer("validation_images", None, "Validation images (as "
                             "--train_images). Default from --preset.", **d)
        flags.DEFINE_integer("test_images", None, "Test images (as --train_images). Default "
                             "from --preset.", **d)
        flags.DEFINE_integer("gate_resolution", None, "Side of the gate's view of the 224x224 "
                             f"centre crop; 0: 224 for --gate=paper, {COMPACT_VIEW} for "
                             "--gate=compact.", **d)
        flags.DEFINE_bool("allow_small_images", False, "Upsample tfds/folder images whose "
                          "shorter side is below 300 px instead of refusing them.", **d)
        flags.DEFINE_list("ablation", [], f"Ablations after the main run: any of "
                          f"{','.join(ABLATIONS)} (Table II, Fig. 5).", **d)

    def settings_from_flags(self, fv, default):
        changes = {}
        if fv.resolutions is not None:
            changes["resolutions"] = parse_numbers(fv.resolutions, "resolutions", int)
        resolutions = changes.get("resolutions", default.resolutions)
        if fv.expert_epochs is not None:
            epochs = parse_numbers(fv.expert_epochs, "expert_epochs", int)
            if len(epochs) == 1:
                epochs = epochs * len(resolutions)
            changes["expert_epochs"] = epochs
        elif tuple(resolutions) != tuple(default.resolutions):
            changes["expert_epochs"] = interpolate_epochs(default, resolutions)
        for name in ("train_images", "validation_images", "test_images", "gate_resolution"):
            if getattr(fv, name) is not None:
                changes[name] = getattr(fv, name)
        changes["allow_small_images"] = bool(fv.allow_small_images)
        changes["ablation"] = tuple(a.strip() for a in fv.ablation if a.strip())
        return dataclasses.replace(default, **changes)

    def check_settings(self, cfg):
        s = cfg.task
        r = list(s.resolutions)
        if len(r) < 2 or min(r) < 32 or max(r) > 300:
            raise ConfigError(f"--resolutions takes at least two resolutions in [32, 300] px, "
                              f"got {r}")
        if r != sorted(set(r)):
            raise ConfigError(f"--resolutions must be strictly increasing (cheapest expert "
                              f"first), got {r}")
        if len(s.expert_epochs) != len(r):
            raise ConfigError(f"--expert_epochs gives {len(s.expert_epochs)} values for "
                              f"{len(r)} resolutions {r}; give one per resolution or one for all")
        if min(s.expert_epochs) < 1:
            raise ConfigError(f"--expert_epochs must be >= 1, got {list(s.expert_epochs)}")
        generated = cfg.data == self.default_data
        for name in ("train_images", "validation_images", "test_images"):
            value = getattr(s, name)
            if value < (1 if generated else 0):
                raise ConfigError(f"--{name} must be >= {1 if generated else 0}"
                                  f"{'' if generated else ' (0: all)'}, got {value}")
        if s.train_images and s.train_images < cfg.batch_size:
            raise ConfigError(f"--train_images {s.train_images} is smaller than --batch_size "
                              f"{cfg.batch_size}")
        if s.gate_resolution and not 16 <= s.gate_resolution <= GATE_CROP:
            raise ConfigError(f"--gate_resolution must be 0 (auto) or in [16, {GATE_CROP}], "
                              f"got {s.gate_resolution}")
        bad = [a for a in s.ablation if a not in ABLATIONS]
        if bad:
            raise ConfigError(f"--ablation takes any of {list(ABLATIONS)}, got {bad}")
        if cfg.eval_data:
            raise ConfigError("--eval_data is not supported by the detection task yet; "
                              "evaluate other images with --data=folder:PATH")

    def view_resolution(self, cfg):
        """Side of the gate's view (``--gate_resolution``, 0 = by gate kind)."""
        if cfg.task.gate_resolution:
            return int(cfg.task.gate_resolution)
        return GATE_CROP if cfg.gate == "paper" else COMPACT_VIEW

    def data_costs(self, cfg):
        return np.array([3 * r * r * 4 for r in cfg.task.resolutions], np.float64)

    def stage_settings(self, cfg):
        s = cfg.task
        return {"data": dict(train_images=s.train_images, validation_images=s.validation_images,
                             test_images=s.test_images,
                             allow_small_images=s.allow_small_images),
                "experts": dict(resolutions=list(s.resolutions),
                                expert_epochs=list(s.expert_epochs)),
                "cache": {},
                "gates": dict(gate_resolution=self.view_resolution(cfg)),
                "eval_data": {}}

    # ---- data --------------------------------------------------------------------------
    def prepare_data(self, cfg, wd):
        from experiments.detection import data as det_data

        s = cfg.task
        sizes = dict(train=s.train_images, validation=s.validation_images, test=s.test_images)
        sets = det_data.load_splits(cfg.data, seed=cfg.seed, sizes=sizes,
                                    tfds_data_dir=cfg.tfds_data_dir,
                                    allow_small_images=s.allow_small_images)
        for name in pipeline.SPLITS:
            if len(sets[name]) == 0:
                raise ConfigError(f"--data={cfg.data}: the {name} split has no image")
            sets[name].save(wd.path("data", f"{name}.npz"))
        write_json(wd.path("data", "split.json"), dict(
            source=cfg.data, generated=cfg.data == self.default_data,
            class_names=list(sets["train"].class_names),
            **{name: dict(images=len(sets[name]), boxes=int(len(sets[name].boxes)))
               for name in pipeline.SPLITS}))

    def load_data(self, cfg, wd):
        from experiments.detection import data as det_data

        self._view = self.view_resolution(cfg)
        self.sets = {s: load_artefact(wd.path("data", f"{s}.npz"), det_data.DetectionSet.load,
                                      rebuild=wd.path("data")) for s in pipeline.SPLITS}
        classes = {tuple(v.class_names) for v in self.sets.values()}
        if len(classes) != 1:
            raise ArtefactError(f"{wd.path('data')}: the splits have different class lists; "
                                f"delete {wd.path('data')} and run again")
        return {s: len(v) for s, v in self.sets.items()}

    # ---- experts and caches ------------------------------------------------------------
    def build_experts(self, cfg, wd):
        from bmoe_tf.backend import keras
        from experiments.detection import ssd

        s = cfg.task
        num_classes = len(self.sets["train"].class_names)
        experts = []
        for resolution, epochs in zip(s.resolutions, s.expert_epochs):
            name = f"ssd{resolution}"
            path = wd.path("experts", name)

            def build(resolution=resolution, epochs=epochs, path=path):
                keras.utils.set_random_seed(cfg.seed + resolution)
                model = ssd.build_ssd(resolution, num_classes)
                ssd.train_ssd(model, resolution, self.sets["train"], self.sets["validation"],
                              epochs=epochs, seed=cfg.seed + resolution,
                              checkpoint_dir=path + ".ckpt", verbose=cfg.verbose,
                              validation_freq=epochs)  # validation loss once, at the end
                ssd.export_ssd(model, resolution, path)

            wd.run(f"expert {name} ({epochs} epochs)", path, build)
            experts.append(load_artefact(
                path, lambda p, r=resolution, n=name: ssd.load_expert(p, r, name=n)))
        return experts

    def cache_files(self, cfg, wd, split):
        return [wd.path("cache", f"{split}_detections.npz"),
                wd.path("cache", f"{split}_scores.npz")]

    def _detections(self, experts, split, rows):
        """``float32[len(rows), N, K, 6]``: every expert's detections on those images
        (``rows=None``: the whole split, without a copy)."""
        from experiments.detection import ssd

        images = self.sets[split].images
        images = images if rows is None else images[rows]
        return np.stack([ssd.detect(e, images, batch_size=EXPERT_BATCH) for e in experts],
                        axis=1).astype(np.float32)

    def build_cache_shard(self, cfg, wd, experts, splits, num_shards, shard_index):
        for split in [s for s in pipeline.SPLITS if s in splits]:
            det_path = self.cache_files(cfg, wd, split)[0]
            if os.path.exists(det_path):
                continue
            m = len(self.sets[split])
            shard = shard_path(det_path, shard_index, num_shards)

            def run_shard(split=split, m=m, shard=shard):
                rows = shard_rows(m, EXPERT_BATCH, num_shards, shard_index)[0]
                cache = {"kind": np.array("outputs")}
                if len(rows):
                    cache["outputs"] = self._detections(experts, split, rows)
                save_cache(shard, as_cache_shard(cache, num_examples=m, batch_size=EXPERT_BATCH,
                                                 num_shards=num_shards,
                                                 shard_index=shard_index))

            wd.run(f"cache {split} detections shard {shard_index + 1}/{num_shards}", shard,
                   run_shard)

    def build_caches(self, cfg, wd, experts, splits):
        for split in [s for s in pipeline.SPLITS if s in splits]:
            data = self.sets[split]
            det_path, score_path = self.cache_files(cfg, wd, split)

            def detect(data=data, det_path=det_path, split=split):
                merged = distribute.merged_shards(det_path)  # a multi-worker run's shards
                out = (merged["outputs"] if merged is not None
                       else self._detections(experts, split, None))
                np.savez(det_path + ".tmp.npz", detections=out)
                os.replace(det_path + ".tmp.npz", det_path)
                distribute.remove_shards(det_path)

            wd.run(f"cache {split} detections", det_path, detect)
            detections = load_artefact(det_path, _load_detections)
            if detections.shape[:2] != (len(data), len(experts)):
                raise ArtefactError(f"{det_path} holds detections {detections.shape[:2]}, "
                                    f"{split} has {len(data)} images and {len(experts)} "
                                    "experts; delete it and run again")
            self.detections[split] = detections

            def scores(split=split, score_path=score_path):  # per-image AP (coco_metric)
                save_cache(score_path, score_cache(self.evaluator(split).per_image_scores()))

            wd.run(f"cache {split} scores", score_path, scores)
            self._scores[split] = load_artefact(score_path, load_cache)["scores"]
        self._train = pipeline.TrainingSet(self.gate_inputs("train"),
                                           score_cache(self._scores["train"]))

    def training_set(self, cfg):
        return self._train

    def gate_inputs(self, split):
        if split not in self._views:
            self._views[split] = gate_view(self.sets[split].images, self._view)
        return self._views[split]

    def scores(self, split):
        return self._scores[split]

    def evaluator(self, split):
        """The split's :class:`experiments.detection.coco_metric.RoutingEvaluator` (built once)."""
        from experiments.detection.coco_metric import RoutingEvaluator

        if split not in self._evaluators:
            data = self.sets[split]
            self._evaluators[split] = RoutingEvaluator(
                data.boxes, data.labels, data.image_index, len(data), len(data.class_names),
                self.detections[split])
        return self._evaluators[split]

    def metric(self, split, assignment):
        return 100.0 * self.evaluator(split).map(np.asarray(assignment, np.int64))

    # ---- natural order of the test split ----------------------------------------------
    test_order_description = ("the test images in their stored order (data/test.npz: the "
                              "generator's, the folder's or tfds' order), one image per frame")

    def test_order(self, cfg, wd):
        """None: a sensor sees the test images in their stored (file) order."""
        return None

    def test_frames(self, cfg, wd):
        """None: one image is one frame (the per-frame routing is skipped)."""
        return None

    def build_gate(self, cfg, num_experts):
        r = self.view_resolution(cfg)
        if cfg.gate == "compact":
            return compact_gate((r, r, 3), num_experts)
        return paper_gate("detection", num_experts=num_experts, input_shape=(r, r, 3))

    # ---- report ------------------------------------------------------------------------
    def expert_row(self, cfg, index, expert):
        r = int(cfg.task.resolutions[index])
        return dict(resolution=r, label=f"{r} px")

    def expert_split_extras(self, split, index):
        result = self.evaluator(split).evaluate(np.full(len(self.sets[split]), index))
        return {f"ap50_{split}": 100.0 * result["ap50"]}

    def paper_reference(self, cfg):
        return PAPER_TABLE_I["vgg16"]

    def evaluation_extras(self, cfg, results):
        from experiments.detection.report import assigned_map_tables

        return {"assigned_map": assigned_map_tables(self, results)}

    def report_extras(self, cfg, report):
        return {"paper_table_i": PAPER_TABLE_I,
                "generated_data": cfg.data == self.default_data,
                "gate_view": self.view_resolution(cfg)}

    def markdown_extras(self, cfg, report):
        from experiments.detection.report import markdown_lines

        return markdown_lines(report)

    def figures(self, cfg, wd, report, results):
        from experiments.detection.figures import figure_examples

        return {"examples": figure_examples(wd, self, report, results["test"])}

    def extra_stages(self, cfg, wd, experts, report):
        if cfg.task.ablation:
            from experiments.detection.ablation import run_ablations

            from experiments.detection.report import ablation_lines

            report.update(run_ablations(self, cfg, wd, experts, report))
            write_json(wd.path("report.json"), report)
            with open(wd.path("report.md"), "a") as f:
                f.write("\n".join(ablation_lines(report)) + "\n")

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        from experiments.detection.export_data import export_data

        return export_data(workdir)


def _load_detections(path):
    with np.load(path) as f:
        if "detections" not in f:
            raise ValueError(f"{path} has no 'detections' array")
        out = f["detections"]
    if out.ndim != 4 or out.shape[-1] != 6:
        raise ValueError(f"{path}: detections of shape {out.shape}, expected [M, N, K, 6]")
    return out


def run():
    """Console script ``bmoe-detection``."""
    from experiments.cli import cli

    cli(DetectionTask)

