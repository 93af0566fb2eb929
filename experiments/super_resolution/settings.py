"""The super-resolution task's own settings (``--experts``, ``--scales``, ...) and its
presets: one :func:`experiments.settings.setting` line per flag."""
import dataclasses
import os

from bmoe_tf.payload import image_codec_error
from experiments.config import ConfigError, Preset, Schedule, Targets
from experiments.settings import setting
from experiments.super_resolution import models as sr_models

__all__ = ["SRSettings", "PRESETS"]


def _check_scales(scales):
    if len(scales) < 2 or set(scales) - set(sr_models.SCALES):
        return f"takes at least two of {sr_models.SCALES}, got {list(scales)}"
    if len(set(scales)) != len(scales):
        return f"lists a scale twice: {list(scales)}; each expert needs its own scale"
    return None


@dataclasses.dataclass(frozen=True)
class SRSettings:
    """The SR task's own settings (flags of the same names)."""

    experts: str = setting("espcn", "Expert family.", stage="experts",
                           choices=sr_models.FAMILIES)
    scales: tuple = setting((4, 3, 2), "Upscale factors of the experts, cheapest first.",
                            stage="experts", check=_check_scales)
    expert_epochs: int = setting(8, "Expert training epochs. Default from --preset.",
                                 stage="experts", low=1)
    image_scale: float = setting(1.0, "Resize factor applied to every image before cutting "
                                 "parts (smoke runs use small images). Default from --preset.",
                                 stage=("data", "eval_data"),
                                 check=lambda v: None if 0 < v <= 4 else f"must be in (0, 4], got {v}")
    codec: str = setting("jpeg:90:tables", "Payload codec of every expert's input (its "
                         "low-resolution part as uint8) for --data_cost=encoded: "
                         "raw | png | jpeg:Q | jpeg:Q:tables (JPEG without the header the "
                         "server rebuilds; WORKSPACE.md).", check=image_codec_error)
    max_train_parts: int = setting(0, "Cap on training parts (random subset; 0: all). Default "
                                   "from --preset.", stage="experts", low=0)
    gate_mirror: bool = setting(False, "Also train the gates on every training part mirrored "
                                "left-right, with the part's own expert scores (exact for a "
                                "mirror-equivariant expert, near it for ESPCN): measured to "
                                "stop the compact gate's collapsed seeds (WORKSPACE D80).",
                                stage="gates")

    def check(self, cfg):
        if self.max_train_parts and self.max_train_parts < cfg.batch_size:
            raise ConfigError(f"--max_train_parts {self.max_train_parts} is smaller than "
                              f"--batch_size {cfg.batch_size}")
        if cfg.eval_data and not os.path.isdir(cfg.eval_data):
            raise ConfigError(f"--eval_image_dir/--eval_data: {cfg.eval_data!r} is not a "
                              "directory")


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
