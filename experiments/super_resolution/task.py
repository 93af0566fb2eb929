"""Biased mixtures of super-resolution experts (paper Section IV-C), end to end.

    python -m experiments.super_resolution --workdir=workdir/sr --preset=quick

A :class:`experiments.task.Task`: 64x64 parts of photos, ESPCN/FSRCNN experts at
x4/x3/x2 (P_n: anti-aliased downsample, d_n: float32 bytes of P_n(x)), the MSE
cache the gates train on, minus the per-part Y squared error as the score matrix,
and the mean per-image Y-PSNR of the stitched images as the metric. The pipeline
does the rest (stages, resuming, curves, report). See WORKSPACE.md.
"""
import os

import numpy as np

from bmoe_tf import evaluation as bmoe_eval
from bmoe_tf.backend import keras, tf
from bmoe_tf.cache import build_expert_cache, load_cache
from bmoe_tf.gating import compact_gate, paper_gate
from experiments.config import ConfigError
from experiments.pipeline import bytes_cache_job, load_bytes
from experiments.stages import ArtefactError, load_artefact, write_json
from experiments.super_resolution import data as sr_data
from experiments.super_resolution import models as sr_models
from experiments.super_resolution.data import test_frames
from experiments.super_resolution.evaluate import assignment_psnr, part_scores
from experiments.super_resolution.metrics import mean_psnr_y
from experiments.super_resolution.report import PAPER_TABLE_IV, SRReport
from experiments.super_resolution.settings import PRESETS, SRSettings
from experiments.task import (SPLITS, CacheJob, EvalData, NaturalOrder, Serving, Split, Task,
                             TrainingSet)

__all__ = ["SuperResolutionTask", "SRSettings", "PRESETS", "PAPER_TABLE_IV", "run",
           "test_frames", "psnr_oracle"]

PART = sr_data.PART_SIZE

def _resize(images, scale):
    if scale == 1.0:
        return images
    out = []
    for name, img in images:
        h, w = int(img.shape[0] * scale), int(img.shape[1] * scale)
        out.append((name, tf.image.resize(img, (h, w), antialias=True).numpy().clip(0, 1)))
    return out


class SRNaturalOrder(NaturalOrder):
    """The test photos one after another, each photo's parts in raster order."""

    description = ("the test photos one after another as stored in data/test.npz, each "
                   "photo's 64x64 parts in raster order; a frame is one photo")

    def frames(self, cfg, data):
        """``int[M]``: the photo of each test part (``PartSet.image_index``, contiguous);
        the stored order is natural (:func:`experiments.super_resolution.data.cut_parts`)."""
        return test_frames(data["test"])


class SREvalImages(EvalData):
    """``--eval_image_dir`` / ``--eval_data``: a folder of extra held-out images."""

    def prepare(self, cfg, wd):
        extra = _resize(sr_data.load_images(f"folder:{cfg.eval_data}"), cfg.task.image_scale)
        extra = [(n, im) for n, im in extra if min(im.shape[:2]) >= PART]
        if not extra:
            raise ConfigError(f"--eval_image_dir={cfg.eval_data}: no image of at least "
                              f"{PART}x{PART} px")
        sr_data.make_part_set(extra).save(wd.split_file("eval"))

    def cache_files(self, cfg, wd):
        return [_outputs_file(wd, "eval")] + ([wd.cache_file("eval", "bytes")] if cfg.encoded
                                              else [])

    def define_flags(self, fv):
        from absl import flags

        flags.DEFINE_string("eval_image_dir", None, "Extra held-out images evaluated "
                            "separately (the same as --eval_data).", flag_values=fv)

    def from_flags(self, fv):
        if fv.eval_image_dir and fv.eval_data and fv.eval_image_dir != fv.eval_data:
            raise ConfigError("--eval_image_dir and --eval_data name different folders; "
                              "give one")
        return fv.eval_image_dir


class SRServing(Serving):
    """The sensor holds the 64x64 parts; the metric is the stitched photos' mean Y-PSNR."""

    def inputs(self, cfg, data, split):
        return data[split].parts

    def metric(self, cfg, data, split, outputs):
        part_set = data[split]
        truth = part_set.images_from_parts(part_set.parts)
        return float(mean_psnr_y(part_set.images_from_parts(np.asarray(outputs)), truth))


def _outputs_file(wd, split):
    return wd.cache_file(split, "outputs")


def _training_parts(cfg, data):
    """``float32[P, 64, 64, 3]``: the training parts the experts and gates see (a seeded
    subset of ``--max_train_parts``)."""
    parts = data["train"].parts
    cap = cfg.task.max_train_parts
    if cap and len(parts) > cap:
        pick = np.random.default_rng(cfg.seed).choice(len(parts), cap, replace=False)
        return parts[np.sort(pick)]
    return parts


class SuperResolutionTask(Task):
    """Section IV-C on 64x64 parts (see the module docstring)."""

    name = "super_resolution"
    title = "Super-resolution"
    metric_name = "Y-PSNR (dB)"
    cost_unit = "bytes per 64x64 part"
    example_name = "part"
    oracle_description = (
        "capacity-constrained assignment maximising the mean per-image Y-PSNR: the exact "
        "optimum of the summed per-part squared error, improved by majorize-minimize "
        "steps on the per-image log-MSE (a near-optimum of the metric, not a certified "
        "bound)")
    Settings = SRSettings
    PRESETS = PRESETS
    report = SRReport()
    natural_order = SRNaturalOrder()
    eval_data = SREvalImages()
    serving = SRServing()

    def codecs(self, cfg):
        from bmoe_tf.payload import make_codec

        return [make_codec(cfg.task.codec) for _ in cfg.task.scales]

    def data_costs(self, cfg):
        return np.array([3 * sr_models.low_resolution_size(s) ** 2 * 4 for s in cfg.task.scales],
                        np.float64)

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
        for name in SPLITS:
            sr_data.make_part_set([(n, by_name[n]) for n in split[name]]).save(
                wd.split_file(name))
        write_json(wd.split_index(), split)

    def load_data(self, cfg, wd):
        names = list(SPLITS) + (["eval"] if cfg.eval_data else [])
        return {s: load_artefact(wd.split_file(s), sr_data.PartSet.load,
                                 rebuild=wd.path("data")) for s in names}

    def check_data(self, cfg, data):
        train = len(_training_parts(cfg, data))
        if train < cfg.batch_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the {train} "
                              "training parts; use a smaller batch or more images")

    # ---- experts and caches ------------------------------------------------------------
    def build_experts(self, cfg, wd, data):
        s = cfg.task
        train = _training_parts(cfg, data)
        experts = []
        for scale in s.scales:
            name = f"{s.experts}_x{scale}"
            path = wd.expert_dir(name)

            def build(scale=scale, path=path):
                keras.utils.set_random_seed(cfg.seed + scale)
                model = sr_models.build_expert_model(s.experts, scale)
                sr_models.train_expert(model, scale, train, data["validation"].parts,
                                       epochs=s.expert_epochs, checkpoint_dir=path + ".ckpt",
                                       verbose=cfg.verbose, seed=cfg.seed)
                sr_models.export_expert(model, path)

            wd.run(f"expert {name}", path, build)
            experts.append(load_artefact(path, lambda p, scale=scale: sr_models.load_expert(
                p, scale, s.experts).resolve((PART, PART, 3))))
        if cfg.encoded:  # the experts see the decoded payloads (trained on the parts as before)
            for e, codec in zip(experts, self.codecs(cfg)):
                e.codec = codec
        return experts

    def caches(self, cfg, wd, data, experts):
        def job(label, path, inputs, targets, kind):
            return CacheJob(label, path, lambda num_shards, shard_index: build_expert_cache(
                experts, inputs, targets, kind=kind, verbose=cfg.verbose,
                num_shards=num_shards, shard_index=shard_index))

        train = _training_parts(cfg, data)
        jobs = [job("train", wd.cache_file("train", "mse"), train, train, "mse")]
        for split in [s for s in ("validation", "test", "eval") if s in data]:
            jobs.append(job(split, _outputs_file(wd, split), data[split].parts, None, "outputs"))
            if cfg.encoded:
                jobs.append(bytes_cache_job(wd, split, data[split].parts, experts))
        if cfg.encoded:  # what the gates of --methods=bytes train on
            jobs.append(bytes_cache_job(wd, "train", train, experts))
        return jobs

    def training_set(self, cfg, wd, data):
        parts = _training_parts(cfg, data)
        costs = (load_bytes(wd, "train", len(parts), len(cfg.task.scales)) if cfg.encoded
                 else None)
        train = TrainingSet(parts, load_artefact(wd.cache_file("train", "mse"), load_cache),
                            costs=costs)
        if cfg.task.gate_mirror:  # parts [P, H, W, 3]: columns reversed
            train = train.with_copies(np.asarray(parts)[:, :, ::-1])
        return train

    def split(self, cfg, wd, data, name):
        part_set = data[name]
        path = _outputs_file(wd, name)
        outputs = load_artefact(path, load_cache)["outputs"]
        if len(outputs) != len(part_set):
            raise ArtefactError(f"{path} holds {len(outputs)} parts, {name} has "
                                f"{len(part_set)}; delete it and run again")
        scores = part_scores(part_set, outputs)[0]

        def metric(assignment):
            return assignment_psnr(part_set, outputs, np.asarray(assignment, np.int64))

        costs = load_bytes(wd, name, len(part_set), len(cfg.task.scales)) if cfg.encoded else None
        return Split(gate_inputs=part_set.parts, scores=scores, metric=metric,
                     oracle=lambda b: psnr_oracle(scores, part_set, metric, b), costs=costs)

    def build_gate(self, cfg, num_experts):
        if cfg.gate == "compact":
            return compact_gate((PART, PART, 3), num_experts)
        return paper_gate("super_resolution", num_experts=num_experts)

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        from experiments.super_resolution.export_data import export_data

        return export_data(workdir)


def psnr_oracle(scores, part_set, metric, bias, *, steps=20):
    """Majorize-minimize on the mean per-image PSNR from the summed-SE optimum.

    PSNR_i = c - 10 log10(SSE_i); log is concave, so ``sum_i SSE_i / SSE_i^(t)``
    majorizes ``sum_i log SSE_i`` at the routing t: the capacity-constrained
    optimum of the weighted per-part errors never lowers the metric. Steps stop
    when the metric stops rising.

    Args:
      scores: ``float[P, N]`` minus each part's Y squared error per expert.
      part_set: the split's :class:`PartSet` (``image_index``: the photo of each part).
      metric: ``int64[P] -> float`` the mean per-image Y-PSNR of a routing.
      bias: ``float[N]`` b.
    Returns:
      ``int64[P]``: the routing.
    """
    image = part_set.image_index
    a = bmoe_eval.oracle_assignment(scores, bias)
    best = metric(a)
    for _ in range(steps):
        sse = np.bincount(image, weights=-scores[np.arange(len(a)), a],
                          minlength=len(part_set.names))
        weights = 1.0 / np.maximum(sse[image], 1e-12)
        candidate = bmoe_eval.oracle_assignment(scores * weights[:, None], bias)
        value = metric(candidate)
        if value <= best + 1e-9:
            break
        a, best = candidate, value
    return a


def run():
    """Console script ``bmoe-super-resolution``."""
    from experiments.cli import cli

    cli(SuperResolutionTask)

