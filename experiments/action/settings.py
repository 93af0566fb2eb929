"""The action task's own settings (``--modes``, ``--mv_frames``, ...) and its presets:
one :func:`experiments.settings.setting` line per flag."""
import dataclasses

from bmoe_tf.payload import image_codec_error
from experiments.action.clips import MODES
from experiments.action.report import GENERATED
from experiments.config import ConfigError, Preset, Schedule, Targets
from experiments.settings import setting
from experiments.task import SPLITS

__all__ = ["ActionSettings", "PRESETS", "CLIP_SPLITS", "GATE_TARGETS"]

#: The clip splits: the experts train on ``experts``, the gates on ``train``.
CLIP_SPLITS = ("experts",) + SPLITS
#: What the gates may train on (``--gate_target``).
GATE_TARGETS = ("correct", "log_likelihood")


def _check_modes(modes):
    if set(modes) - set(MODES) or len(modes) < 2 or len(set(modes)) != len(modes):
        return f"takes two or three distinct modes of {list(MODES)}, got {list(modes)}"
    order = [MODES.index(m) for m in modes]
    if order != sorted(order):
        return f"must be listed cheapest first ({','.join(MODES)} order), got {','.join(modes)}"
    return None


def _clips(split, what):
    return setting({"experts": 1200, "train": 900, "validation": 300, "test": 600}[split],
                   f"Number of {what} (generated: made; folder/tfds: a cap, 0 = all). Default "
                   "from --preset.", stage="data")


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

    mv_frames: int = setting(16, "F_t: motion-vector maps per clip (the gate's input is "
                             "24x24x2F_t). Default from --preset.", stage="data", low=1, high=160)
    rgb_frames: int = setting(2, "F_s: RGB frames the Spatial expert sees (spread from the "
                              "clip's first to its last frame).", stage="data", low=1, high=8)
    frame_size: int = setting(96, "S: side of the RGB frames (and of the generated clips), "
                              "even.", stage="data",
                              check=lambda v: None if v % 2 == 0 and 32 <= v <= 256 else
                              f"must be even and in [32, 256], got {v}")
    modes: tuple = setting(MODES, f"Experts, cheapest first: two or three of {','.join(MODES)}. "
                           "Default: all three.", stage="cache", check=_check_modes)
    expert_epochs: tuple = setting((30, 20), "Training epochs of the temporal and spatial "
                                   "streams (one value: both). Default from --preset.",
                                   stage="experts")
    experts_clips: int = _clips("experts", "the experts' training clips")
    train_clips: int = _clips("train", "the gates' training clips")
    validation_clips: int = _clips("validation", "validation clips")
    test_clips: int = _clips("test", "test clips")
    unreliable_share: float = setting(0.25, "Generated data: share of clips whose motion "
                                      "vectors are degraded (flat, noise, intra).", stage="data",
                                      low=0.0, high=1.0)
    codec: str = setting("jpeg:90:tables", "Payload codec of each RGB frame (uint8) for "
                         "--data_cost=encoded: raw | png | jpeg:Q | jpeg:Q:tables (the motion "
                         "vectors travel as int8 quarter-pel through zlib; WORKSPACE.md).",
                         check=image_codec_error)
    gate_target: str = setting("correct", "What the gates train on: each expert's 0/1 "
                               "correctness on a clip, or its log-probability of the true "
                               "class. Default from --preset: correct.", stage="gates",
                               choices=GATE_TARGETS)

    def resolve(self, given, preset):
        """One ``--expert_epochs`` value: both streams."""
        if "expert_epochs" in given and len(self.expert_epochs) == 1:
            return dataclasses.replace(self, expert_epochs=self.expert_epochs * 2)
        return self

    def check(self, cfg):
        if len(self.expert_epochs) != 2 or min(self.expert_epochs) < 1:
            raise ConfigError(f"--expert_epochs takes one or two values >= 1 (temporal, "
                              f"spatial), got {list(self.expert_epochs)}")
        generated = cfg.data == GENERATED
        for split in CLIP_SPLITS:
            value = getattr(self, f"{split}_clips")
            low = 2 if generated else 0
            if value < low:
                raise ConfigError(f"--{split}_clips must be >= {low}"
                                  f"{'' if generated else ' (0: all)'}, got {value}")
        if generated and self.train_clips < cfg.batch_size:
            raise ConfigError(f"--train_clips {self.train_clips} is smaller than --batch_size "
                              f"{cfg.batch_size}")


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
