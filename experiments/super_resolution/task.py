"""Biased mixtures of super-resolution experts (paper Section IV-C), end to end.

    python -m experiments.super_resolution --workdir=workdir/sr --preset=quick

A :class:`experiments.pipeline.Task`: 64x64 parts of photos, ESPCN/FSRCNN experts at
x4/x3/x2 (P_n: anti-aliased downsample, d_n: float32 bytes of P_n(x)), the MSE
cache the gates train on, minus the per-part Y squared error as the score matrix,
and the mean per-image Y-PSNR of the stitched images as the metric. The pipeline
does the rest (stages, resuming, curves, report). See WORKSPACE.md.
"""
import dataclasses
import os

import numpy as np

from bmoe_tf import evaluation as bmoe_eval
from bmoe_tf.backend import keras, tf
from bmoe_tf.cache import build_expert_cache, load_cache, save_cache, shard_path
from bmoe_tf.gating import compact_gate, paper_gate
from experiments import distribute, pipeline
from experiments.config import ConfigError, Preset, Schedule, Targets, parse_numbers
from experiments.super_resolution import data as sr_data
from experiments.super_resolution import models as sr_models
from experiments.super_resolution.data import test_frames
from experiments.super_resolution.evaluate import assignment_psnr, part_scores
from experiments.stages import load_artefact, write_json

__all__ = ["SuperResolutionTask", "SRSettings", "PRESETS", "PAPER_TABLE_IV", "run",
           "test_frames"]

PART = sr_data.PART_SIZE

#: Table IV of the paper (DIV2K): PSNR at d_max, d_max/2, d_max/3 and rho.
PAPER_TABLE_IV = {
    "espcn": {"benchmark": [33.3, 30.4, 28.4, 30.7], "enforce": [None, 30.7, 28.8, 31.0],
              "soft": [None, 30.0, 28.1, 30.6], "random": [None, 29.8, 28.0, 30.5]},
    "fsrcnn": {"benchmark": [32.8, 29.8, 28.0, 30.3], "enforce": [None, 30.1, 28.3, 30.5],
               "soft": [None, 29.3, 27.6, 30.1], "random": [None, 29.2, 27.5, 30.0]},
}


@dataclasses.dataclass(frozen=True)
class SRSettings:
    """The SR task's own settings (flags of the same names)."""

    experts: str = "espcn"
    scales: tuple = (4, 3, 2)
    expert_epochs: int = 8
    image_scale: float = 1.0
    max_train_parts: int = 0


#: Presets; an explicit flag always wins. WORKSPACE.md ("Presets") says why.
PRESETS = {
    "full": Preset(Schedule(targets=Targets(count=6), batch_size=128, learning_rate=1e-2,
                            epochs=200, soft_epochs=100, bias_weights=(0.1, 0.3, 1.0, 3.0)),
                   SRSettings(expert_epochs=60)),
    "quick": Preset(Schedule(targets=Targets(count=4), batch_size=128, learning_rate=1e-2,
                             epochs=200, soft_epochs=100),
                    SRSettings(expert_epochs=8)),
    "smoke": Preset(Schedule(targets=Targets(count=3), batch_size=16, learning_rate=1e-3,
                             epochs=1),
                    SRSettings(expert_epochs=1, image_scale=0.5, max_train_parts=96)),
}


def _resize(images, scale):
    if scale == 1.0:
        return images
    out = []
    for name, img in images:
        h, w = int(img.shape[0] * scale), int(img.shape[1] * scale)
        out.append((name, tf.image.resize(img, (h, w), antialias=True).numpy().clip(0, 1)))
    return out


class SuperResolutionTask(pipeline.Task):
    """Section IV-C on 64x64 parts (see the module docstring)."""

    name = "super_resolution"
    title = "Super-resolution"
    metric_name = "Y-PSNR (dB)"
    cost_unit = "bytes per 64x64 part"
    example_name = "part"
    curve_figure_name = "fig6_psnr_vs_cost.png"
    curve_figure_title = "Fig. 6 layout"
    oracle_description = (
        "capacity-constrained assignment maximising the mean per-image Y-PSNR: the exact "
        "optimum of the summed per-part squared error, improved by majorize-minimize "
        "steps on the per-image log-MSE (a near-optimum of the metric, not a certified "
        "bound)")

    def __init__(self):
        self.sets = {}
        self.outputs = {}
        self._scores = {}
        self._train = None
        self._scales = ()

    # ---- configuration ---------------------------------------------------------------
    def presets(self):
        return PRESETS

    def define_flags(self, fv):
        from absl import flags

        d = dict(flag_values=fv)
        flags.DEFINE_enum("experts", "espcn", sr_models.FAMILIES, "Expert family.", **d)
        flags.DEFINE_list("scales", ["4", "3", "2"], "Upscale factors of the experts, "
                          "cheapest first.", **d)
        flags.DEFINE_integer("expert_epochs", None, "Expert training epochs. Default from "
                             "--preset.", **d)
        flags.DEFINE_string("eval_image_dir", None, "Extra held-out images evaluated "
                            "separately (the same as --eval_data).", **d)
        flags.DEFINE_float("image_scale", None, "Resize factor applied to every image before "
                           "cutting parts (smoke runs use small images). Default from "
                           "--preset.", **d)
        flags.DEFINE_integer("max_train_parts", None, "Cap on training parts (random "
                             "subset; 0: all). Default from --preset.", **d)

    def settings_from_flags(self, fv, default):
        scales = parse_numbers(fv.scales, "scales", int)
        changes = dict(experts=fv.experts, scales=scales)
        for name in ("expert_epochs", "image_scale", "max_train_parts"):
            if getattr(fv, name) is not None:
                changes[name] = getattr(fv, name)
        return dataclasses.replace(default, **changes)

    def eval_data_from_flags(self, fv):
        if fv.eval_image_dir and fv.eval_data and fv.eval_image_dir != fv.eval_data:
            raise ConfigError("--eval_image_dir and --eval_data name different folders; "
                              "give one")
        return fv.eval_image_dir

    def check_settings(self, cfg):
        s = cfg.task
        bad = sorted(set(s.scales) - set(sr_models.SCALES))
        if bad or len(s.scales) < 2:
            raise ConfigError(f"--scales takes at least two of {sr_models.SCALES}, got "
                              f"{list(s.scales)}")
        if len(set(s.scales)) != len(s.scales):
            raise ConfigError(f"--scales lists a scale twice: {list(s.scales)}; each expert "
                              "needs its own scale")
        if s.experts not in sr_models.FAMILIES:
            raise ConfigError(f"--experts takes {sr_models.FAMILIES}, got {s.experts!r}")
        if s.expert_epochs < 1:
            raise ConfigError(f"--expert_epochs must be >= 1, got {s.expert_epochs}")
        if not 0 < s.image_scale <= 4:
            raise ConfigError(f"--image_scale must be in (0, 4], got {s.image_scale}")
        if s.max_train_parts < 0:
            raise ConfigError(f"--max_train_parts must be >= 0 (0: all), got "
                              f"{s.max_train_parts}")
        if s.max_train_parts and s.max_train_parts < cfg.batch_size:
            raise ConfigError(f"--max_train_parts {s.max_train_parts} is smaller than "
                              f"--batch_size {cfg.batch_size}")
        if cfg.eval_data and not os.path.isdir(cfg.eval_data):
            raise ConfigError(f"--eval_image_dir/--eval_data: {cfg.eval_data!r} is not a "
                              "directory")

    def data_costs(self, cfg):
        return np.array([3 * sr_models.low_resolution_size(s) ** 2 * 4 for s in cfg.task.scales],
                        np.float64)

    def stage_settings(self, cfg):
        s = cfg.task
        return {"data": dict(image_scale=s.image_scale),
                "experts": dict(experts=s.experts, scales=list(s.scales),
                                expert_epochs=s.expert_epochs, max_train_parts=s.max_train_parts),
                "cache": {},
                "eval_data": dict(image_scale=s.image_scale)}

    # ---- data --------------------------------------------------------------------------
    def prepare_data(self, cfg, wd):
        images = _resize(sr_data.load_images(cfg.data, tfds_data_dir=cfg.tfds_data_dir),
                         cfg.task.image_scale)
        images = [(n, im) for n, im in images if min(im.shape[:2]) >= PART]
        if len(images) < 3:
            raise ConfigError(f"--data={cfg.data}: {len(images)} images of at least {PART}x{PART} "
                              "px after --image_scale; the splits need at least 3")
        split = sr_data.split_images([n for n, _ in images], seed=cfg.seed)
        by_name = dict(images)
        for name in pipeline.SPLITS:
            sr_data.make_part_set([(n, by_name[n]) for n in split[name]]).save(
                wd.path("data", f"{name}.npz"))
        write_json(wd.path("data", "split.json"), split)

    def prepare_eval_data(self, cfg, wd):
        extra = _resize(sr_data.load_images(f"folder:{cfg.eval_data}"), cfg.task.image_scale)
        extra = [(n, im) for n, im in extra if min(im.shape[:2]) >= PART]
        if not extra:
            raise ConfigError(f"--eval_image_dir={cfg.eval_data}: no image of at least "
                              f"{PART}x{PART} px")
        sr_data.make_part_set(extra).save(wd.path("data", "eval.npz"))

    def load_data(self, cfg, wd):
        names = list(pipeline.SPLITS) + (["eval"] if cfg.eval_data else [])
        self.sets = {s: load_artefact(wd.path("data", f"{s}.npz"), sr_data.PartSet.load,
                                      rebuild=wd.path("data")) for s in names}
        return {s: len(v) for s, v in self.sets.items()}

    def _training_parts(self, cfg):
        parts = self.sets["train"].parts
        cap = cfg.task.max_train_parts
        if cap and len(parts) > cap:
            pick = np.random.default_rng(cfg.seed).choice(len(parts), cap, replace=False)
            return parts[np.sort(pick)]
        return parts

    def check_data(self, cfg):
        train = len(self._training_parts(cfg))
        if train < cfg.batch_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the {train} "
                              "training parts; use a smaller batch or more images")

    # ---- experts and caches ------------------------------------------------------------
    def build_experts(self, cfg, wd):
        s = cfg.task
        self._scales = tuple(s.scales)
        train = self._training_parts(cfg)
        experts = []
        for scale in s.scales:
            name = f"{s.experts}_x{scale}"
            path = wd.path("experts", name)

            def build(scale=scale, path=path):
                keras.utils.set_random_seed(cfg.seed + scale)
                model = sr_models.build_expert_model(s.experts, scale)
                sr_models.train_expert(model, scale, train, self.sets["validation"].parts,
                                       epochs=s.expert_epochs, checkpoint_dir=path + ".ckpt",
                                       verbose=cfg.verbose, seed=cfg.seed)
                sr_models.export_expert(model, path)

            wd.run(f"expert {name}", path, build)
            experts.append(load_artefact(path, lambda p, scale=scale: sr_models.load_expert(
                p, scale, s.experts).resolve((PART, PART, 3))))
        return experts

    def cache_files(self, cfg, wd, split):
        return [wd.path("cache", f"{split}_outputs.npz")]

    def _cache_jobs(self, cfg, wd, splits):
        """``[(label, path, inputs, targets, kind)]``: the expert caches of a run."""
        train = self._training_parts(cfg)
        jobs = [("train", wd.path("cache", "train_mse.npz"), train, train, "mse")]
        for split in [s for s in ("validation", "test", "eval") if s in splits]:
            jobs.append((split, wd.path("cache", f"{split}_outputs.npz"),
                         self.sets[split].parts, None, "outputs"))
        return jobs

    def build_cache_shard(self, cfg, wd, experts, splits, num_shards, shard_index):
        for label, path, inputs, targets, kind in self._cache_jobs(cfg, wd, splits):
            if os.path.exists(path):
                continue
            shard = shard_path(path, shard_index, num_shards)
            wd.run(f"cache {label} shard {shard_index + 1}/{num_shards}", shard,
                   lambda shard=shard, inputs=inputs, targets=targets, kind=kind: save_cache(
                       shard, build_expert_cache(experts, inputs, targets, kind=kind,
                                                 verbose=cfg.verbose, num_shards=num_shards,
                                                 shard_index=shard_index)))

    def build_caches(self, cfg, wd, experts, splits):
        for label, path, inputs, targets, kind in self._cache_jobs(cfg, wd, splits):
            def build(path=path, inputs=inputs, targets=targets, kind=kind):
                merged = distribute.merged_shards(path)  # a multi-worker run's shards
                save_cache(path, merged if merged is not None else build_expert_cache(
                    experts, inputs, targets, kind=kind, verbose=cfg.verbose))
                distribute.remove_shards(path)

            wd.run(f"cache {label}", path, build)
            if label == "train":
                self._train = pipeline.TrainingSet(inputs, load_artefact(path, load_cache))
                continue
            self.outputs[label] = load_artefact(path, load_cache)["outputs"]
            if len(self.outputs[label]) != len(inputs):
                raise pipeline.ArtefactError(
                    f"{path} holds {len(self.outputs[label])} parts, {label} has {len(inputs)}; "
                    f"delete it and run again")

    def training_set(self, cfg):
        return self._train

    def gate_inputs(self, split):
        return self.sets[split].parts

    def scores(self, split):
        if split not in self._scores:
            self._scores[split] = part_scores(self.sets[split], self.outputs[split])[0]
        return self._scores[split]

    def metric(self, split, assignment):
        return assignment_psnr(self.sets[split], self.outputs[split],
                               np.asarray(assignment, np.int64))

    def oracle_assignment(self, split, bias, *, steps=20):
        """Majorize-minimize on the mean per-image PSNR from the summed-SE optimum.

        PSNR_i = c - 10 log10(SSE_i); log is concave, so ``sum_i SSE_i / SSE_i^(t)``
        majorizes ``sum_i log SSE_i`` at the routing t: the capacity-constrained
        optimum of the weighted per-part errors never lowers the metric. Steps stop
        when the metric stops rising.
        """
        scores = self.scores(split)
        image = self.sets[split].image_index
        a = bmoe_eval.oracle_assignment(scores, bias)
        best = self.metric(split, a)
        for _ in range(steps):
            sse = np.bincount(image, weights=-scores[np.arange(len(a)), a],
                              minlength=len(self.sets[split].names))
            weights = 1.0 / np.maximum(sse[image], 1e-12)
            candidate = bmoe_eval.oracle_assignment(scores * weights[:, None], bias)
            value = self.metric(split, candidate)
            if value <= best + 1e-9:
                break
            a, best = candidate, value
        return a

    # ---- natural order of the test split ----------------------------------------------
    test_order_description = ("the test photos one after another as stored in data/test.npz, "
                              "each photo's 64x64 parts in raster order; a frame is one photo")

    def test_order(self, cfg, wd):
        """None: ``data/test.npz`` stores the photos one after another and each photo's
        parts in raster (row-major grid) order (:func:`experiments.super_resolution.data.cut_parts`)."""
        return None

    def test_frames(self, cfg, wd):
        """``int[M]``: the photo of each test part (``PartSet.image_index``, contiguous)."""
        return test_frames(self.sets["test"])

    def build_gate(self, cfg, num_experts):
        if cfg.gate == "compact":
            return compact_gate((PART, PART, 3), num_experts)
        return paper_gate("super_resolution", num_experts=num_experts)

    # ---- report ------------------------------------------------------------------------
    def expert_row(self, cfg, index, expert):
        scale = int(cfg.task.scales[index])
        return dict(scale=scale, label=f"x{scale}")

    def expert_split_extras(self, split, index):
        scale = int(self._scales[index])
        bicubic = sr_models.bicubic_upscale(self.sets[split].parts, scale)
        return {f"psnr_{split}": self.metric(split, np.full(len(bicubic), index)),
                f"bicubic_{split}": assignment_psnr(self.sets[split], bicubic[:, None],
                                                    np.zeros(len(bicubic), np.int64))}

    def paper_reference(self, cfg):
        return PAPER_TABLE_IV.get(cfg.task.experts)

    def report_extras(self, cfg, report):
        experts = [dict(e, psnr=e["metric"], psnr_validation=e["metric_validation"],
                        bicubic=e.get("bicubic_test")) for e in report["experts"]]
        curves = dict(report["curves"], bicubic=[[e["data_cost"], e["bicubic"]] for e in experts])
        return {"experts": experts, "curves": curves, "eval_images": report["eval"],
                "parts": report["examples"]}

    def curve_extras(self, report):
        xs = [e["data_cost"] / 1000 for e in report["experts"]]
        ys = [e["bicubic"] for e in report["experts"]]
        order = np.argsort(xs)
        return [{"xy": (np.array(xs)[order], np.array(ys)[order]),
                 "style": dict(ls="--", marker="x", color="grey", label="Bicubic")}]

    def figures(self, cfg, wd, report, results):
        from experiments.super_resolution.figures import figure_assignments

        return {"fig7": figure_assignments(wd, cfg, results["test"], self.sets["test"],
                                           report["bias"])}

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        from experiments.super_resolution.export_data import export_data

        return export_data(workdir)


def run():
    """Console script ``bmoe-super-resolution``."""
    from experiments.cli import cli

    cli(SuperResolutionTask)

