"""gating_tflite.targets: microcontroller presets and the flash / RAM budget check."""
import pytest

from gating_tflite.targets import TARGETS, Target, resolve_target

#: The compact SR gate's figures (README: 16,264 B flash, 23,296 B arena).
FLASH, ARENA = 16_264, 23_296


def test_target_presets():
    assert resolve_target("STM32H743") == Target("stm32h743", 2048, 1024, 480)
    assert resolve_target("stm32f767").ram_kib == 512
    assert resolve_target("imxrt1060").flash_kib is None  # external flash: not checked
    assert resolve_target("imxrt1060", flash_kib=8192).flash_kib == 8192
    assert resolve_target(None, ram_kib=64) == Target("custom", None, 64)
    assert resolve_target().check(10**9, 10**9) == []
    assert all(k == k.lower() for k in TARGETS)
    with pytest.raises(ValueError, match="known targets"):
        resolve_target("esp32")
    with pytest.raises(ValueError, match="> 0"):
        resolve_target("stm32h743", flash_kib=0)
    with pytest.raises(ValueError, match="number of KiB"):
        resolve_target(None, ram_kib="lots")


def test_budget_check_fails_as_it_should():
    tight = Target("tiny", flash_kib=FLASH / 1024 - 1, ram_kib=ARENA / 1024 - 1)
    problems = tight.check(FLASH, ARENA)
    assert problems == [
        "the model needs 15.9 KiB of flash, more than the 14.8828 KiB of tiny",
        "the TFLite Micro arena needs 22.8 KiB of RAM, more than the 21.75 KiB of tiny"]
    assert tight.as_dict(FLASH, ARENA) == {"name": "tiny", "flash_kib": FLASH / 1024 - 1,
                                           "ram_kib": ARENA / 1024 - 1, "fits": False}
    roomy = Target("roomy", FLASH / 1024, ARENA / 1024)
    assert roomy.check(FLASH, ARENA) == []  # exactly the budget fits
    assert resolve_target("stm32h743").as_dict(FLASH, ARENA)["fits"] is True
    # the paper gate (3,299,544 B) does not fit a 2 MiB part
    assert "flash" in resolve_target("stm32h743").check(3_299_544, 74_704)[0]
