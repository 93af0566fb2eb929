"""A task's own settings, declared once: one frozen dataclass whose fields give the flags,
their parsing and help, the checks, and the stage keys.

    @dataclasses.dataclass(frozen=True)
    class ToySettings:
        examples: int = setting(240, "Examples per split.", stage="data", low=16)

Each field made with :func:`setting` becomes the flag ``--<field>`` (absl; its type is the
default's: int, float, bool, str -- an enum when ``choices`` are given -- or a tuple, a
comma-separated list of ``item``). The flag defaults to None, which means "the preset's
value" (:class:`experiments.config.Preset` holds one settings value per preset). The
field's ``stage`` names the stage keys (``data``, ``experts``, ``cache``, ``gates``,
``eval_data``) whose artefacts depend on it: changing it rebuilds (or, for a protected
stage, refuses) those artefacts (:class:`experiments.stages.StageKey`).

A settings class may define ``resolve(self, given, preset)`` (``given``: the names of the
flags set on the command line, ``preset``: the preset's settings) for what one flag
implies for another (e.g. one ``--expert_epochs`` value for every expert), and
``check(self, cfg)`` for checks that involve several fields or the shared config; the
per-field checks (``low``, ``high``, ``choices``, ``check``) run first.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

__all__ = ["setting", "define_flags", "from_flags", "check_settings", "stage_settings",
           "parse_numbers", "ConfigError", "STAGES"]

#: Stage keys a task setting can enter (see experiments.pipeline).
STAGES = ("data", "experts", "cache", "gates", "eval_data")
_KEY = "bmoe_setting"


class ConfigError(ValueError):
    """A flag value that is not allowed; the message names the flag."""


def parse_numbers(values: Sequence[str] | None, flag: str, kind=float) -> tuple | None:
    """``("0.5", "0.3")`` -> ``(0.5, 0.3)``; an unparsable or non-finite value names the flag."""
    if values is None:
        return None
    out = []
    for v in values:
        try:
            x = kind(str(v).strip())
        except ValueError:
            raise ConfigError(f"--{flag}: {v!r} is not a{'n integer' if kind is int else ' number'}"
                              f" (got {','.join(map(str, values))})") from None
        if kind is float and not math.isfinite(x):
            raise ConfigError(f"--{flag}: {v!r} is not a finite number")
        out.append(x)
    return tuple(out)



@dataclasses.dataclass(frozen=True)
class _Meta:
    help: str
    stages: tuple
    item: type | None
    choices: tuple | None
    low: float | None
    high: float | None
    check: Callable | None
    key: Callable | None
    flag: bool


def setting(default, help: str, *, stage: str | Sequence[str] = (), item: type | None = None,
            choices: Sequence | None = None, low: float | None = None,
            high: float | None = None, check: Callable[[Any], str | None] | None = None,
            key: Callable | None = None, flag: bool = True):
    """A field of a task's settings dataclass (see the module docstring).

    Args:
      default: the value when neither the preset nor a flag gives one (a tuple for a list).
      help: the flag's help text.
      stage: stage key(s) the value enters.
      item: element type of a tuple setting (int, float or str; default: the first
        default element's type, str for an empty tuple).
      choices: the allowed values (of each element, for a tuple).
      low, high: inclusive bounds (of each element, for a tuple).
      check: ``value -> message or None``: the message says what is allowed and what was
        given (e.g. ``"must be even, got 3"``); the error says ``--<field> <message>``.
      key: ``(settings, cfg) -> JSON value`` entered into the stage key instead of the
        value itself (e.g. a derived value).
      flag: False: no flag (set by presets or code only).
    """
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"setting stage {bad} is not one of {STAGES}")
    if isinstance(default, tuple) and item is None:
        item = type(default[0]) if default else str
    meta = _Meta(help=help, stages=stages, item=item,
                 choices=None if choices is None else tuple(choices), low=low, high=high,
                 check=check, key=key, flag=flag)
    return dataclasses.field(default=default, metadata={_KEY: meta})


def _fields(settings_type):
    if settings_type is None:
        return []
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(settings_type)
            if _KEY in f.metadata]


def define_flags(settings_type, flag_values) -> None:
    """Defines ``--<field>`` for every flag field of ``settings_type`` on ``flag_values``."""
    from absl import flags

    for f, meta in _fields(settings_type):
        if not meta.flag or f.name in flag_values:
            continue
        d = dict(flag_values=flag_values)
        text = meta.help
        default = f.default
        if isinstance(default, bool):
            flags.DEFINE_bool(f.name, None, text, **d)
        elif isinstance(default, tuple):
            flags.DEFINE_list(f.name, None, text, **d)
        elif meta.choices is not None and isinstance(default, str):
            flags.DEFINE_enum(f.name, None, list(meta.choices), text, **d)
        elif isinstance(default, int):
            flags.DEFINE_integer(f.name, None, text, **d)
        elif isinstance(default, float):
            flags.DEFINE_float(f.name, None, text, **d)
        else:
            flags.DEFINE_string(f.name, None, text, **d)


def _parse_list(values, name, item):
    values = [str(v).strip() for v in values if str(v).strip()]
    if item in (int, float):
        return parse_numbers(values, name, item)
    return tuple(values)


def from_flags(settings_type, flag_values, preset):
    """The settings of the parsed flags: ``preset`` (the preset's settings) with every
    flag given on the command line applied, then ``resolve`` (when defined)."""
    if settings_type is None:
        return preset
    changes = {}
    for f, meta in _fields(settings_type):
        if not meta.flag:
            continue
        value = getattr(flag_values, f.name)
        if value is None:
            continue
        if isinstance(f.default, tuple):
            value = _parse_list(value, f.name, meta.item)
        changes[f.name] = value
    out = dataclasses.replace(preset, **changes)
    resolve = getattr(out, "resolve", None)
    return resolve(set(changes), preset) if resolve is not None else out


def _show(value):
    return list(value) if isinstance(value, tuple) else value


def check_settings(settings, cfg) -> None:
    """Per-field checks, then the class's ``check(cfg)``.

    Raises:
      experiments.config.ConfigError: naming the flag and what is allowed.
    """
    if settings is None:
        return
    for f, meta in _fields(type(settings)):
        value = getattr(settings, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if meta.choices is not None:
            bad = [v for v in values if v not in meta.choices]
            if bad:
                what = "any of " if isinstance(value, tuple) else ""
                raise ConfigError(f"--{f.name} takes {what}{list(meta.choices)}, got "
                                  f"{_show(value)!r}")
        for low, high in [(meta.low, meta.high)]:
            if low is None and high is None:
                continue
            if any((low is not None and v < low) or (high is not None and v > high)
                   for v in values):
                if high is None:
                    allowed = f">= {low:g}"
                elif low is None:
                    allowed = f"<= {high:g}"
                else:
                    allowed = f"in [{low:g}, {high:g}]"
                raise ConfigError(f"--{f.name} must be {allowed}, got {_show(value)}")
        if meta.check is not None:
            message = meta.check(value)
            if message:
                raise ConfigError(f"--{f.name} {message}")
    check = getattr(settings, "check", None)
    if check is not None:
        check(cfg)


def stage_settings(settings, cfg) -> dict:
    """``{stage: {field: JSON value}}`` for every stage in :data:`STAGES`."""
    out = {stage: {} for stage in STAGES}
    if settings is None:
        return out
    for f, meta in _fields(type(settings)):
        value = meta.key(settings, cfg) if meta.key is not None else getattr(settings, f.name)
        for stage in meta.stages:
            out[stage][f.name] = _show(value)
    return out
