"""The experts stage of the action task: train the two streams, fit the late fusion,
export all three, load the chosen modes through :class:`bmoe_tf.Expert`.

Every expert is a workdir artefact (``experts/{temporal,spatial,fusion}``), built
once and skipped when present; a stream's training resumes from its checkpoint.

* Temporal and Spatial train on the ``experts`` split (validation loss on the
  ``validation`` split, once at the end).
* Fusion's late-fusion weights are fitted on the gates' ``train`` split, which the
  streams never saw (WORKSPACE.md, D38): the fused scores are those of clips the
  streams did not memorise.
"""
import numpy as np

from experiments.stages import load_artefact

__all__ = ["build_mode_experts", "stream_inputs"]


def stream_inputs(kind, clips):
    """The modality tensor a stream trains on: MV maps ``float32[M, F_t, 24, 24, 2]`` or
    RGB frames ``float32[M, F_s, S, S, 3]`` in [0, 1]."""
    if kind == "temporal":
        return np.asarray(clips.mv, np.float32)
    return np.asarray(clips.rgb, np.float32) / 255.0


def build_mode_experts(data, cfg, wd):
    """Trains / loads the experts; returns the :class:`bmoe_tf.Expert` of ``cfg.task.modes``
    (``data``: the task's ``{split: ClipSet}``)."""
    from bmoe_tf.backend import keras
    from experiments.action import experts as act_experts
    from experiments.action.clips import MODES, mode_costs

    s = cfg.task
    shapes = dict(mv_frames=s.mv_frames, rgb_frames=s.rgb_frames, frame_size=s.frame_size)
    train, val, gate_train = data["experts"], data["validation"], data["train"]
    num_classes = len(train.class_names)
    costs = dict(zip(MODES, mode_costs(s.mv_frames, s.rgb_frames, s.frame_size)))
    models = {}

    for i, kind in enumerate(("temporal", "spatial")):
        path = wd.expert_dir(kind)

        def build(kind=kind, path=path, epochs=s.expert_epochs[i], i=i):
            keras.utils.set_random_seed(cfg.seed + 101 * (i + 1))
            if kind == "temporal":
                model = act_experts.build_temporal(s.mv_frames, num_classes)
            else:
                model = act_experts.build_spatial(s.rgb_frames, s.frame_size, num_classes)
            act_experts.train_classifier(
                model, stream_inputs(kind, train), train.labels, stream_inputs(kind, val),
                val.labels, epochs=epochs, seed=cfg.seed + 101 * (i + 1),
                checkpoint_dir=path + ".ckpt", verbose=cfg.verbose)
            act_experts.export_expert(model, path, kind, **shapes)
            models[kind] = model

        wd.run(f"expert {kind} ({s.expert_epochs[i]} epochs)", path, build)

    fusion_path = wd.expert_dir("fusion")

    def build_fusion():
        streams = {k: models.get(k) or act_experts.load_stream_model(wd.expert_dir(k))
                   for k in ("temporal", "spatial")}
        logits = {k: act_experts.stream_logits(streams[k], stream_inputs(k, gate_train))
                  for k in streams}
        weights = act_experts.fit_fusion(logits["temporal"], logits["spatial"],
                                         gate_train.labels)
        model = act_experts.build_fusion(streams["temporal"], streams["spatial"], weights,
                                         **shapes)
        act_experts.export_expert(model, fusion_path, "fusion", **shapes)

    wd.run("expert fusion (late fusion fitted on the train split)", fusion_path, build_fusion)
    return [load_artefact(wd.expert_dir(m),
                          lambda p, m=m: act_experts.load_expert(p, name=m, data_cost=costs[m],
                                                                 **shapes))
            for m in s.modes]
