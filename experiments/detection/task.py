"""Biased mixtures of single-shot detectors (paper Section IV-B), end to end.

    python -m experiments.detection --workdir=workdir/detection --preset=quick

A :class:`experiments.task.Task`: 300x300 images, N SSD experts at R_n px
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
from typing import Any

import numpy as np

from bmoe_tf.cache import load_cache, score_cache
from bmoe_tf.gating import compact_gate, paper_gate
from experiments.config import ConfigError
from experiments.detection.data import IMAGE_SIZE, gate_view, view_resolution
from experiments.detection.report import GENERATED, PAPER_TABLE_I, DetectionReport
from experiments.detection.settings import ABLATIONS, PRESETS, DetectionSettings
from experiments.detection.ssd import interpolate_epochs  # noqa: F401 (re-exported)
from experiments.stages import ArtefactError, load_artefact, write_json
from experiments.task import SPLITS, CacheJob, NaturalOrder, Serving, Split, Task, TrainingSet

__all__ = ["DetectionTask", "DetectionSettings", "DetectionSplit", "PRESETS", "PAPER_TABLE_I",
           "ABLATIONS", "gate_view", "view_resolution", "interpolate_epochs", "run"]

#: Images per SSD call when caching detections; also the unit a multi-worker run shards
#: the cache by (the same batches on one or many workers: the same bytes).
EXPERT_BATCH = 16


@dataclasses.dataclass(frozen=True)
class DetectionSplit(Split):
    """A detection split's view, with what the report and the ablations read.

    Attributes (besides :class:`experiments.task.Split`'s):
      data: the split's :class:`experiments.detection.data.DetectionSet`.
      detections: ``float32[M, N, K, 6]`` every expert's cached detections.
      evaluator: its :class:`experiments.detection.coco_metric.RoutingEvaluator`.
    """

    data: Any = None
    detections: np.ndarray | None = None
    evaluator: Any = None


class DetectionNaturalOrder(NaturalOrder):
    description = ("the test images in their stored order (data/test.npz: the generator's, "
                   "the folder's or tfds' order), one image per frame")


def _files(wd, split):
    """The detections and per-image scores cache files of ``split``."""
    return (wd.cache_file(split, "detections"),
            wd.cache_file(split, "scores"))


class DetectionServing(Serving):
    """The sensor holds the images; the metric is COCO mAP of the served detections."""

    def inputs(self, cfg, data, split):
        return data[split].images

    def metric(self, cfg, data, split, outputs):
        detections = np.asarray(outputs, np.float32)[:, None]  # one "expert": the served
        return 100.0 * _evaluator(data[split], detections).map(
            np.zeros(len(detections), np.int64))


class DetectionTask(Task):
    """Section IV-B on 300x300 images (see the module docstring)."""

    name = "detection"
    title = "Single-shot detection"
    metric_name = "mAP@[.5:.95] (%)"
    cost_unit = "bytes per image"
    example_name = "image"
    default_data = GENERATED
    data_help = ("generated (a seeded generated set, made at run time) | folder:PATH (images "
                 "+ COCO annotations.json) | tfds:coco/2017 | tfds:voc/2007")
    oracle_description = ("capacity-constrained assignment maximising the summed per-image "
                          "scores (see experiments.detection.coco_metric.per_image_scores; a proxy "
                          "of the dataset mAP, not a bound on it)")
    gate_kinds = ("paper", "compact", "cascade")
    Settings = DetectionSettings
    PRESETS = PRESETS
    report = DetectionReport()
    natural_order = DetectionNaturalOrder()
    serving = DetectionServing()

    def view_resolution(self, cfg):
        """Side of the gate's view (:func:`view_resolution`)."""
        return view_resolution(cfg)

    def codecs(self, cfg):
        from bmoe_tf.payload import make_codec

        return [make_codec(cfg.task.codec) for _ in cfg.task.resolutions]

    def data_costs(self, cfg):
        return np.array([3 * r * r * 4 for r in cfg.task.resolutions], np.float64)

    # ---- data --------------------------------------------------------------------------
    def prepare_data(self, cfg, wd):
        from experiments.detection import data as det_data

        s = cfg.task
        sizes = {name: getattr(s, f"{name}_images") for name in det_data.SPLITS}
        sets = det_data.load_splits(cfg.data, seed=cfg.seed, sizes=sizes,
                                    tfds_data_dir=cfg.tfds_data_dir,
                                    allow_small_images=s.allow_small_images)
        for name in det_data.SPLITS:
            if len(sets[name]) == 0:
                raise ConfigError(f"--data={cfg.data}: the {name} split has no image")
        for name in det_data.SPLITS:
            sets[name].save(wd.split_file(name))
        write_json(wd.split_index(), dict(
            source=cfg.data, generated=cfg.data == self.default_data,
            class_names=list(sets["train"].class_names),
            **{name: dict(images=len(sets[name]), boxes=int(len(sets[name].boxes)))
               for name in det_data.SPLITS}))

    def load_data(self, cfg, wd):
        """``{split: DetectionSet}`` of the experts' split and the pipeline's three."""
        from experiments.detection import data as det_data

        sets = {s: load_artefact(wd.split_file(s), det_data.DetectionSet.load,
                                 rebuild=wd.path("data")) for s in det_data.SPLITS}
        classes = {tuple(v.class_names) for v in sets.values()}
        if len(classes) != 1:
            raise ArtefactError(f"{wd.path('data')}: the splits have different class lists; "
                                f"delete {wd.path('data')} and run again")
        return sets

    # ---- experts and caches ------------------------------------------------------------
    def build_experts(self, cfg, wd, data):
        from bmoe_tf.backend import keras
        from experiments.detection import ssd

        s = cfg.task
        num_classes = len(data["experts"].class_names)
        experts = []
        for resolution, epochs in zip(s.resolutions, s.expert_epochs):
            name = f"ssd{resolution}"
            path = wd.expert_dir(name)

            def build(resolution=resolution, epochs=epochs, path=path):
                keras.utils.set_random_seed(cfg.seed + resolution)
                model = ssd.build_ssd(resolution, num_classes)
                ssd.train_ssd(model, resolution, data["experts"], data["validation"],
                              epochs=epochs, seed=cfg.seed + resolution,
                              checkpoint_dir=path + ".ckpt", verbose=cfg.verbose,
                              validation_freq=epochs)  # validation loss once, at the end
                ssd.export_ssd(model, resolution, path)

            wd.run(f"expert {name} ({epochs} epochs)", path, build)
            experts.append(load_artefact(
                path, lambda p, r=resolution, n=name: ssd.load_expert(p, r, name=n)))
        if cfg.encoded:  # the experts see the decoded payloads (trained as before)
            for e, codec in zip(experts, self.codecs(cfg)):
                e.codec = codec
        return experts

    def caches(self, cfg, wd, data, experts):
        from experiments.detection import ssd
        from experiments.pipeline import bytes_cache_job, rows_cache_job

        jobs = []
        for split in SPLITS:
            det_path, score_path = _files(wd, split)
            images = data[split].images

            def detections(rows, images=images):
                chosen = images if rows is None else images[rows]
                return np.stack([ssd.detect(e, chosen, batch_size=EXPERT_BATCH)
                                 for e in experts], axis=1).astype(np.float32)

            jobs.append(rows_cache_job(f"{split} detections", det_path, len(images),
                                       EXPERT_BATCH, detections, save=_save_detections))

            def scores(num_shards, shard_index, split=split):  # per-image AP (coco_metric)
                evaluator = _evaluator(data[split], _detections(wd, split, data, len(experts)))
                return score_cache(evaluator.per_image_scores())

            jobs.append(CacheJob(f"{split} scores", score_path, scores, shards=False))
            if cfg.encoded:  # train: what the gates of --methods=bytes train on
                jobs.append(bytes_cache_job(wd, split, images, experts, batch_size=EXPERT_BATCH))
        return jobs

    def training_set(self, cfg, wd, data):
        scores = load_artefact(_files(wd, "train")[1], load_cache)["scores"]
        costs = None
        if cfg.encoded:
            from experiments.pipeline import load_bytes

            costs = load_bytes(wd, "train", len(data["train"]), len(cfg.task.resolutions))
        return TrainingSet(self._gate_inputs(cfg, wd, data, "train"), score_cache(scores),
                           costs=costs)

    def split(self, cfg, wd, data, name):
        num_experts = len(cfg.task.resolutions)
        detections = _detections(wd, name, data, num_experts)
        evaluator = _evaluator(data[name], detections)
        costs = None
        if cfg.encoded and name != "train":
            from experiments.pipeline import load_bytes

            costs = load_bytes(wd, name, len(data[name]), num_experts)
        return DetectionSplit(
            costs=costs,
            gate_inputs=self._gate_inputs(cfg, wd, data, name, detections),
            scores=load_artefact(_files(wd, name)[1], load_cache)["scores"],
            metric=lambda a: 100.0 * evaluator.map(np.asarray(a, np.int64)),
            data=data[name], detections=detections, evaluator=evaluator)

    def _gate_inputs(self, cfg, wd, data, split, detections=None):
        """What the gates see of ``split``: the view of the 224 crop (paper, compact) or
        the cheapest expert's cached detections' features (cascade)."""
        if cfg.gate == "cascade":
            from experiments.detection.cascade import gate_inputs

            if detections is None:
                detections = _detections(wd, split, data, len(cfg.task.resolutions))
            return gate_inputs(detections)
        return gate_view(data[split].images, view_resolution(cfg))

    def gate_view(self, cfg):
        """None (the gate sees the image), except ``--gate=cascade``, whose P_g would run
        the cheapest expert: refused on raw images (the pipeline feeds cached features)."""
        if cfg.gate != "cascade":
            return None
        from experiments.detection.cascade import RAW_INPUT_ERROR

        def refuse(images):
            raise ValueError(RAW_INPUT_ERROR)

        return (IMAGE_SIZE, IMAGE_SIZE, 3), refuse

    def build_gate(self, cfg, num_experts):
        if cfg.gate == "cascade":
            from experiments.detection.cascade import cascade_gate

            return cascade_gate(num_experts)
        r = view_resolution(cfg)
        if cfg.gate == "compact":
            return compact_gate((r, r, 3), num_experts)
        return paper_gate("detection", num_experts=num_experts, input_shape=(r, r, 3))

    # ---- after the report: the ablations --------------------------------------------------
    def extra_stages(self, run, report):
        cfg, wd = run.cfg, run.wd
        if cfg.task.ablation:
            from experiments.detection.ablation import run_ablations
            from experiments.detection.report import ablation_lines

            report.update(run_ablations(self, run, report))
            write_json(wd.report_json(), report)
            with open(wd.report_md(), "a") as f:
                f.write("\n".join(ablation_lines(report)) + "\n")

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        from experiments.detection.export_data import export_data

        return export_data(workdir)


def _evaluator(data, detections):
    from bmoe_tf.coco_map import RoutingEvaluator

    return RoutingEvaluator(data.boxes, data.labels, data.image_index, len(data),
                            len(data.class_names), detections)


def _save_detections(path, cache):
    np.savez(path + ".tmp.npz", detections=cache["outputs"])
    os.replace(path + ".tmp.npz", path)


def _detections(wd, split, data, num_experts):
    """``float32[M, N, K, 6]``: the cached detections of ``split``, checked."""
    path = _files(wd, split)[0]
    detections = load_artefact(path, _load_detections)
    if detections.shape[:2] != (len(data[split]), num_experts):
        raise ArtefactError(f"{path} holds detections {detections.shape[:2]}, {split} has "
                            f"{len(data[split])} images and {num_experts} experts; delete it "
                            "and run again")
    return detections


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

