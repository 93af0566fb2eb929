"""The detection task's own settings (``--resolutions``, ``--expert_epochs``, ...) and
its presets: one :func:`experiments.settings.setting` line per flag."""
import dataclasses

from bmoe_tf.payload import image_codec_error
from experiments.config import ConfigError, Preset, Schedule, Targets
from experiments.detection.data import COMPACT_VIEW, GATE_CROP, view_resolution
from experiments.detection.report import GENERATED
from experiments.detection.ssd import interpolate_epochs
from experiments.settings import setting

__all__ = ["DetectionSettings", "PRESETS", "ABLATIONS"]

ABLATIONS = ("complexity", "experts")


def _check_resolutions(r):
    if len(r) < 2 or min(r) < 32 or max(r) > 300:
        return f"takes at least two resolutions in [32, 300] px, got {list(r)}"
    if list(r) != sorted(set(r)):
        return f"must be strictly increasing (cheapest expert first), got {list(r)}"
    return None


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """The detection task's own settings (flags of the same names).

    ``expert_epochs``: one per resolution (the 300 px expert gets the largest share).
    ``gate_resolution``: side of the gate's view (the 224 centre crop, resized); 0
    means 224 for the paper gate and :data:`COMPACT_VIEW` for the compact gate.
    """

    resolutions: tuple = setting((100, 150, 300), "Expert input resolutions R_n in px, "
                                 "cheapest first (at most 300). Default from --preset: "
                                 "100,150,300.", stage="experts", check=_check_resolutions)
    expert_epochs: tuple = setting((24, 20, 18), "SSD training epochs, one per resolution (or "
                                   "one for all). Default from --preset.", stage="experts")
    experts_images: int = setting(1200, "The experts' training images, a split of their own "
                                  "(generated: made; tfds/folder: a cap, 0 = all). Default "
                                  "from --preset.", stage="data")
    train_images: int = setting(1200, "The gates' training images, which no expert saw (as "
                                "--experts_images). Default from --preset.", stage="data")
    validation_images: int = setting(300, "Validation images (as --experts_images). Default "
                                     "from --preset.", stage="data")
    test_images: int = setting(300, "Test images (as --experts_images). Default from --preset.",
                               stage="data")
    gate_resolution: int = setting(0, "Side of the gate's view of the 224x224 centre crop; 0: "
                                   f"224 for --gate=paper, {COMPACT_VIEW} for --gate=compact.",
                                   stage="gates", key=lambda s, cfg: view_resolution(cfg),
                                   check=lambda v: None if v == 0 or 16 <= v <= GATE_CROP else
                                   f"must be 0 (auto) or in [16, {GATE_CROP}], got {v}")
    allow_small_images: bool = setting(False, "Upsample tfds/folder images whose shorter side "
                                       "is below 300 px instead of refusing them.", stage="data")
    codec: str = setting("jpeg:90:tables", "Payload codec of every expert's input (the "
                         "image at R_n px, uint8) for --data_cost=encoded: raw | png | jpeg:Q | "
                         "jpeg:Q:tables (JPEG without the header the server rebuilds).",
                         check=image_codec_error)
    ablation: tuple = setting((), f"Ablations after the main run: any of {','.join(ABLATIONS)} "
                              "(Table II, Fig. 5).", choices=ABLATIONS)

    def resolve(self, given, preset):
        """One ``--expert_epochs`` value: every expert; new ``--resolutions`` without
        ``--expert_epochs``: the preset's epochs interpolated in R."""
        if "expert_epochs" in given and len(self.expert_epochs) == 1:
            return dataclasses.replace(self, expert_epochs=self.expert_epochs
                                       * len(self.resolutions))
        if "expert_epochs" not in given and tuple(self.resolutions) != tuple(preset.resolutions):
            return dataclasses.replace(self, expert_epochs=interpolate_epochs(
                preset, self.resolutions))
        return self

    def check(self, cfg):
        r = list(self.resolutions)
        if len(self.expert_epochs) != len(r):
            raise ConfigError(f"--expert_epochs gives {len(self.expert_epochs)} values for "
                              f"{len(r)} resolutions {r}; give one per resolution or one for all")
        if min(self.expert_epochs) < 1:
            raise ConfigError(f"--expert_epochs must be >= 1, got {list(self.expert_epochs)}")
        generated = cfg.data == GENERATED
        for name in ("experts_images", "train_images", "validation_images", "test_images"):
            value = getattr(self, name)
            if value < (1 if generated else 0):
                raise ConfigError(f"--{name} must be >= {1 if generated else 0}"
                                  f"{'' if generated else ' (0: all)'}, got {value}")
        if cfg.gate == "cascade":
            if self.gate_resolution:
                raise ConfigError(f"--gate_resolution={self.gate_resolution} sets the image "
                                  "gates' view; --gate=cascade sees no image (it reads the "
                                  "cheapest expert's detections): drop one of them")
            if self.ablation:
                raise ConfigError(f"--ablation={','.join(self.ablation)} varies image gates "
                                  "and experts; it does not take --gate=cascade (use "
                                  "--gate=compact or paper)")
        if self.train_images and self.train_images < cfg.batch_size:
            raise ConfigError(f"--train_images {self.train_images} is smaller than --batch_size "
                              f"{cfg.batch_size}")


PRESETS = {
    "full": Preset(Schedule(targets=Targets(count=6, experts=True), batch_size=128,
                            learning_rate=1e-3, epochs=60, soft_epochs=30,
                            bias_weights=(0.1, 0.3, 1.0, 3.0)),
                   DetectionSettings(expert_epochs=(40, 40, 40), experts_images=3000,
                                     train_images=3000,
                                     validation_images=500, test_images=500)),
    # quick: the compact gate (the paper gate's 29 M-weight FC layer trains at ~20 s per
    # epoch on 1200 images on 2 cores; WORKSPACE.md, "Detection task").
    "quick": Preset(Schedule(targets=Targets(count=3, experts=True), batch_size=64,
                             learning_rate=3e-3, epochs=60, soft_epochs=30, gate="compact"),
                    DetectionSettings()),
    "smoke": Preset(Schedule(targets=Targets(count=3, experts=True), batch_size=16,
                             learning_rate=1e-3, epochs=1),
                    DetectionSettings(expert_epochs=(1, 1, 1), experts_images=24, train_images=48,
                                      validation_images=24, test_images=24)),
}
