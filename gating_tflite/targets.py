"""Microcontroller budgets: how much flash and RAM a gate may use on a named part.

A preset gives the part's on-chip flash and on-chip SRAM in KiB (1 KiB = 1024 B),
as its reference manual / datasheet states them for the largest variant:

=============  ===========  ==========  ==========================================
preset         flash (KiB)  RAM (KiB)   notes
=============  ===========  ==========  ==========================================
stm32h743      2048         1024        "up to 1 MB RAM": 192 KB TCM (64 ITCM +
                                        128 DTCM) + 864 KB user SRAM + 4 KB backup
stm32h750      128          1024        value line: same RAM, one 128 KiB sector
stm32f767      2048         512         incl. 128 KiB DTCM
stm32f746      1024         320         incl. 64 KiB DTCM
imxrt1060      None         1024        no on-chip flash: the model sits in external
                                        QSPI/HyperFlash (pass --flash_kib for its
                                        size); 512 KiB FlexRAM + 512 KiB OCRAM
imxrt1170      None         2048        no on-chip flash; 2 MiB on-chip RAM
=============  ===========  ==========  ==========================================

``None`` flash means "external, board-dependent": the flash check is skipped unless
a size is given. The RAM figure is the whole part; firmware, stacks and frame
buffers need some of it too, so a gate whose arena uses most of it is only a
start (the report says how much is left).
"""
import dataclasses

__all__ = ["TARGETS", "Target", "resolve_target"]

#: name -> (flash KiB or None, RAM KiB, maximum Cortex-M7 clock in MHz, description).
#: The clock is used for the latency estimate only.
TARGETS = {
    "stm32h743": (2048, 1024, 480, "STM32H743 (Cortex-M7, 480 MHz)"),
    "stm32h750": (128, 1024, 480, "STM32H750 value line (Cortex-M7, 480 MHz)"),
    "stm32f767": (2048, 512, 216, "STM32F767 (Cortex-M7, 216 MHz)"),
    "stm32f746": (1024, 320, 216, "STM32F746 (Cortex-M7, 216 MHz)"),
    "imxrt1060": (None, 1024, 600, "NXP i.MX RT1060 (Cortex-M7, 600 MHz, external flash)"),
    "imxrt1170": (None, 2048, 1000, "NXP i.MX RT1170 (Cortex-M7 at 1 GHz, external flash)"),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """A flash / RAM budget. ``flash_kib`` None: not checked (external flash)."""

    name: str
    flash_kib: float | None
    ram_kib: float | None
    clock_mhz: float | None = None

    def check(self, flash_bytes, arena_bytes):
        """Problems (list of str, empty when the model fits) for the given sizes."""
        problems = []
        if self.flash_kib is not None and flash_bytes > self.flash_kib * 1024:
            problems.append(f"the model needs {flash_bytes / 1024:.1f} KiB of flash, more than "
                            f"the {self.flash_kib:g} KiB of {self.name}")
        if self.ram_kib is not None and arena_bytes > self.ram_kib * 1024:
            problems.append(f"the TFLite Micro arena needs {arena_bytes / 1024:.1f} KiB of RAM, "
                            f"more than the {self.ram_kib:g} KiB of {self.name}")
        return problems

    def as_dict(self, flash_bytes, arena_bytes):
        return {"name": self.name, "flash_kib": self.flash_kib, "ram_kib": self.ram_kib,
                "fits": not self.check(flash_bytes, arena_bytes)}


def _budget(value, what):
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of KiB, got {value!r}") from None
    if not value > 0:
        raise ValueError(f"{what} must be > 0 KiB, got {value}")
    return value


def resolve_target(name=None, flash_kib=None, ram_kib=None):
    """The budget for a preset name, explicit sizes, or both (sizes override the preset).

    Args:
      name: a key of :data:`TARGETS` (case-insensitive), or None / "" for "custom".
      flash_kib, ram_kib: budgets in KiB; override the preset's.
    Returns:
      a :class:`Target`. With neither a name nor sizes: ``Target("none", None, None)``
      (nothing is checked).
    Raises:
      ValueError: an unknown preset (listing the known ones) or a non-positive size.
    """
    flash_kib = _budget(flash_kib, "flash_kib")
    ram_kib = _budget(ram_kib, "ram_kib")
    if name:
        key = str(name).lower()
        if key not in TARGETS:
            raise ValueError(f"unknown target {name!r}; known targets: {sorted(TARGETS)} "
                             "(or give --flash_kib / --ram_kib without --target)")
        preset_flash, preset_ram, clock, _ = TARGETS[key]
        return Target(key, preset_flash if flash_kib is None else flash_kib,
                      preset_ram if ram_kib is None else ram_kib, clock)
    if flash_kib is None and ram_kib is None:
        return Target("none", None, None)
    return Target("custom", flash_kib, ram_kib)
