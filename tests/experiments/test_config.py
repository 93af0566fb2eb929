"""experiments.config: typed frozen presets, flag parsing, soft/enforce schedules."""
import dataclasses

import pytest

from experiments import config
from experiments.super_resolution import PRESETS, SRSettings, SuperResolutionTask


def _config(*argv):
    task = SuperResolutionTask()
    return config.from_argv(task, ["--workdir=x", *argv])


def test_presets_are_typed_frozen_values():
    for name in config.PRESET_NAMES:
        preset = PRESETS[name]
        assert isinstance(preset.schedule, config.Schedule)
        assert isinstance(preset.task, SRSettings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["quick"].schedule.epochs = 3
    cfg = _config("--preset=quick")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3


def test_quick_preset_schedule_and_explicit_flags_win():
    cfg = _config("--preset=quick")
    assert (cfg.epochs, cfg.soft_epochs, cfg.learning_rate, cfg.batch_size) == (200, 100, 1e-2, 128)
    assert cfg.task.expert_epochs == 8 and cfg.targets == config.Targets(count=4)
    # --epochs alone sets both methods' epochs; --soft_epochs sets the soft gates'
    assert (_config("--preset=quick", "--epochs=7").soft_epochs) == 7
    assert _config("--preset=quick", "--soft_epochs=5").epochs == 200
    cfg = _config("--preset=quick", "--epochs=7", "--soft_epochs=5")
    assert (cfg.epochs, cfg.soft_epochs) == (7, 5)
    smoke = _config("--preset=smoke", "--scales=3,2", "--expert_epochs=2")
    assert smoke.epochs == smoke.soft_epochs == 1
    assert smoke.task == SRSettings(scales=(3, 2), expert_epochs=2, image_scale=0.5,
                                    max_train_parts=96)


def test_the_config_records_every_setting_as_plain_json():
    d = _config("--preset=smoke", "--bias=0.2,0.5,0.3").as_dict()
    assert d["bias"] == [0.2, 0.5, 0.3] and d["scales"] == [4, 3, 2] and d["targets"] == ["3"]
    assert d["epochs"] == 1 and d["preset"] == "smoke" and d["task_name"] == "super_resolution"


def test_targets_grid_adds_half_and_third_of_d_max():
    t = config.parse_targets(["4"])
    assert t.resolve([3072, 5292, 12288]) == [3072, 4096, 6144, 9216, 12288]
    assert config.parse_targets(["9000", "5000"]).resolve([3072, 12288]) == [5000, 9000]
    with pytest.raises(config.ConfigError, match="at least 2 grid points"):
        config.parse_targets(["1"])
    with pytest.raises(config.ConfigError, match="outside"):
        config.parse_targets(["2000", "5000"]).resolve([3072, 12288])


def test_targets_with_the_experts_own_costs():
    t = config.parse_targets(["3", "experts"])
    assert t == config.Targets(count=3, experts=True) and t.as_flag() == ["3", "experts"]
    assert t.resolve([120000, 270000, 1080000]) == [120000, 270000, 360000, 540000, 600000,
                                                    1080000]
    assert config.parse_targets(["3"]).resolve([120000, 270000, 1080000]) == [
        120000, 360000, 540000, 600000, 1080000]
    assert config.parse_targets(["5000", "experts"]).resolve([3072, 12288]) == [3072, 5000,
                                                                              12288]
    with pytest.raises(config.ConfigError, match="grid points"):
        config.parse_targets(["experts"])


@pytest.mark.parametrize("argv, message", [
    (["--soft_epochs=0"], "--soft_epochs must be >= 1"),
    (["--epochs=0"], "--epochs must be >= 1"),
    (["--learning_rate=-1"], "--learning_rate must be a positive number"),
    (["--methods=enforce,enforce"], "lists a method twice"),
    (["--bias_weights=1,1"], "lists a weight twice"),
    (["--bias_weights=1,a"], "--bias_weights: 'a' is not a number"),
    (["--eval_image_dir=/a", "--eval_data=/b"], "name different folders"),
    (["--strategy=tpu"], "--strategy takes \\['default', 'mirrored', 'multi_worker'\\], got 'tpu'"),
    (["--strategy=multi_worker"], "multi_worker needs TF_CONFIG"),
    (["--gate_seed=-2"], "--gate_seed must be >= 0, got -2"),
])
def test_bad_values_name_their_flag(argv, message, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(config.ConfigError, match=message):
        _config("--preset=smoke", *argv)
