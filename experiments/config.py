"""Typed, frozen experiment configuration, presets and the shared CLI flags.

Every task CLI (``python -m experiments.<task>``) defines the shared flags here once
(:func:`define_shared_flags`) and its own flags beside them; :func:`from_flags`
turns the parsed flags into a :class:`Config` (preset defaults filled in, every
value parsed and checked). Stage functions take the ``Config``, never ``FLAGS``.

A task's presets are :class:`Preset` values: the shared schedule
(:class:`Schedule`) plus the task's own frozen settings dataclass.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from experiments import settings as settings_lib
from experiments.settings import ConfigError, parse_numbers

__all__ = ["Schedule", "Preset", "Config", "Targets", "ConfigError", "PRESET_NAMES",
           "EVAL_METHODS", "GATE_KINDS", "define_shared_flags", "from_flags", "parse_targets",
           "parse_numbers", "SHARED_FLAGS", "define_task_flags", "from_argv"]

PRESET_NAMES = ("smoke", "quick", "full")
#: Curves that need no trained gate.
EVAL_METHODS = ("random", "benchmark", "oracle")
#: Curves with a trained gate.
#: trained gates: Algorithm 1, Eq. 5, and (``--data_cost=encoded``) the byte-aware
#: assignment in training (one gate per target in bytes)
GATE_METHODS = ("enforce", "soft", "bytes")
#: ``--data_cost``: the paper's d_n = 3 R^2 K per expert, or each input's encoded payload.
DATA_COSTS = ("paper", "encoded")
#: ``--gate``: every task takes paper and compact; a task lists the kinds it takes in
#: ``Task.gate_kinds`` (detection adds ``cascade``, experiments.detection.cascade).
GATE_KINDS = ("paper", "compact", "cascade")
#: Test-time batches are a seeded permutation of a split (a shuffled loader).
DEFAULT_EVAL_BATCH_SEED = 1234


@dataclasses.dataclass(frozen=True)
class Targets:
    """Data-cost targets: ``count`` grid points over ``[d_min, d_max]`` (plus d_max/2 and
    d_max/3), or explicit ``costs`` in the task's cost unit; ``experts`` also adds every
    expert's own d_n (``--targets=3,experts``), where the LP's b is usually one expert,
    so every curve passes through the single experts on the upper hull."""

    count: int | None = None
    costs: tuple[float, ...] = ()
    experts: bool = False

    def resolve(self, data_costs, *, what="the experts' data costs d_n") -> list[float]:
        """Sorted target costs for experts with ``data_costs`` ``[N]`` (``what``: what they
        are, for the error message).

        Raises:
          ConfigError: an explicit cost outside ``[d_min, d_max]``.
        """
        d_min, d_max = float(min(data_costs)), float(max(data_costs))
        extra = {float(d) for d in data_costs} if self.experts else set()
        if self.count is not None:
            step = (d_max - d_min) / (self.count - 1)
            grid = {d_min + i * step for i in range(self.count - 1)} | {d_max}
            grid |= {t for t in (d_max / 2, d_max / 3) if d_min <= t <= d_max}
            return sorted(grid | extra)
        for t in self.costs:
            if not d_min <= t <= d_max:
                raise ConfigError(f"--targets: {t:g} is outside [{d_min:g}, {d_max:g}], the "
                                  f"range of {what}")
        return sorted(set(self.costs) | extra)

    def as_flag(self) -> list[str]:
        out = [str(self.count)] if self.count is not None else [f"{c:g}" for c in self.costs]
        return out + (["experts"] if self.experts else [])


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The shared, task-independent part of a preset: targets and the gate schedule."""

    targets: Targets
    batch_size: int
    learning_rate: float
    epochs: int
    training_loss: str = "relative"
    bias_weights: tuple[float, ...] = (1.0,)
    #: Epochs of each soft gate (one per target and w_bias: the expensive part);
    #: None: the same as ``epochs``.
    soft_epochs: int | None = None
    #: The gating model (``--gate``): "paper" (the paper's table) or "compact".
    gate: str = "paper"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named preset: the shared schedule and the task's own settings (a frozen dataclass)."""

    schedule: Schedule
    task: Any


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on. ``task`` holds the task's own frozen settings."""

    task_name: str
    preset: str
    methods: tuple[str, ...]
    targets: Targets
    bias: tuple[float, ...] | None
    batch_size: int
    learning_rate: float
    epochs: int
    soft_epochs: int
    gate: str
    training_loss: str
    combine: str
    bias_weights: tuple[float, ...]
    seed: int
    verbose: int
    data: str
    tfds_data_dir: str | None
    eval_data: str | None
    eval_batch_seed: int
    strategy: str
    task: Any
    #: "paper" (d_n per expert) or "encoded" (the bytes of each input's payload).
    data_cost: str = "paper"
    #: Fine-tune every trained gate with int8 fake-quant ops (experiments.gates; D76).
    quantization_aware: bool = False
    #: Round every trained gate's kernels to TFLite's int8 grid (experiments.gates; D78).
    int8_weights: bool = False
    #: Seed of the gates' initial weights and data order (None: ``seed``). Changing it
    #: retrains the gates only: the seed noise of a gate setting on the same experts.
    gate_seed: int | None = None
    #: Enforce gates trained per gate, the best on validation kept (experiments.pipeline; D79).
    gate_restarts: int = 1

    @property
    def gates_seed(self) -> int:
        """The seed the gates train with: ``gate_seed``, else ``seed``."""
        return self.seed if self.gate_seed is None else self.gate_seed

    @property
    def encoded(self) -> bool:
        return self.data_cost == "encoded"

    @property
    def gate_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m in GATE_METHODS)

    def as_dict(self) -> dict:
        """Plain JSON-able dict (recorded in ``config.json`` and the report)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("task", "targets")}
        out["targets"] = self.targets.as_flag()
        out["methods"] = list(self.methods)
        out["bias"] = None if self.bias is None else list(self.bias)
        out["bias_weights"] = list(self.bias_weights)
        out.update(_plain(dataclasses.asdict(self.task)) if self.task is not None else {})
        return out


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---- parsing ------------------------------------------------------------------------
def parse_targets(values: Sequence[str]) -> Targets:
    """One integer below 100 = a number of grid points; otherwise explicit costs; the
    word ``experts`` beside either adds every expert's d_n."""
    values = [str(v).strip() for v in values]
    experts = "experts" in values
    values = [v for v in values if v != "experts"]
    if not values or not all(values):
        raise ConfigError("--targets needs a number of grid points (2-99) or data costs "
                          "(optionally with 'experts')")
    if len(values) == 1 and values[0].isdigit() and int(values[0]) < 100:
        count = int(values[0])
        if count < 2:
            raise ConfigError("--targets as a count needs at least 2 grid points")
        return Targets(count=count, experts=experts)
    costs = parse_numbers(values, "targets")
    if len(set(costs)) != len(costs):
        raise ConfigError(f"--targets: duplicate costs in {','.join(values)}")
    if min(costs) <= 0:
        raise ConfigError(f"--targets: data costs must be positive, got {','.join(values)}")
    return Targets(costs=tuple(sorted(costs)), experts=experts)


# ---- flags --------------------------------------------------------------------------
#: The shared flags and their help (defined once, by define_shared_flags).
SHARED_FLAGS = ("workdir", "preset", "methods", "targets", "bias", "batch_size", "learning_rate",
                "epochs", "soft_epochs", "gate",
                "training_loss", "combine", "bias_weights", "seed", "verbose",
                "data", "tfds_data_dir", "eval_data", "eval_batch_seed", "strategy", "data_cost",
                "quantization_aware", "int8_weights", "gate_seed", "gate_restarts")

#: ``--strategy`` values the pipeline runs (:mod:`experiments.distribute`).
PIPELINE_STRATEGIES = ("default", "mirrored", "multi_worker")


def define_shared_flags(flag_values=None, *, data_help="bundled | folder:PATH | tfds:NAME",
                        data_default="bundled"):
    """Defines the shared flags on ``flag_values`` (absl's global FLAGS by default).

    Every flag of a preset value defaults to None: None means "from --preset".
    Calling it twice is harmless.
    """
    from absl import flags

    from bmoe_tf.mixture import COMBINES, TRAINING_LOSSES

    fv = flag_values if flag_values is not None else flags.FLAGS
    if "preset" in fv:
        return
    d = dict(flag_values=fv)
    flags.DEFINE_string("workdir", None, "Directory for every artefact (created if missing).", **d)
    flags.DEFINE_enum("preset", "full", list(PRESET_NAMES), "Size of the run.", **d)
    flags.DEFINE_list("methods", ["enforce", "soft", "random", "benchmark", "oracle"],
                      "Curves: enforce, soft (trained gates), random, benchmark, oracle; "
                      "bytes (--data_cost=encoded: a gate per target trained with each "
                      "batch's payload bytes within the target, routed the same way).", **d)
    flags.DEFINE_list("targets", None, "Data-cost targets: one integer = number of grid points "
                      "over [d_min, d_max] (d_max/2 and d_max/3 are always added), or explicit "
                      "costs; add 'experts' for every expert's own d_n too (e.g. 3,experts). "
                      "Default from --preset.", **d)
    flags.DEFINE_list("bias", None, "An explicit bias vector b (instead of the LP), "
                      "e.g. 0.5,0.3,0.2.", **d)
    flags.DEFINE_integer("batch_size", None, "Gate training and test-time routing batch size "
                         "(paper: 128). Default from --preset.", **d)
    flags.DEFINE_float("learning_rate", None, "Gate learning rate. Default from --preset.", **d)
    flags.DEFINE_integer("epochs", None, "Gate training epochs (the enforce gates; the soft "
                         "gates too unless --soft_epochs). Default from --preset.", **d)
    flags.DEFINE_integer("soft_epochs", None, "Training epochs of each soft gate (one per "
                         "target and w_bias). Default from --preset, else --epochs.", **d)
    flags.DEFINE_enum("gate", None, list(GATE_KINDS),
                      "Gating model: the paper's table, the compact (Cortex-M7) gate, or "
                      "(detection only) cascade: a linear router on the cheapest expert's "
                      "detections. Default from --preset.", **d)
    flags.DEFINE_enum("training_loss", None, list(TRAINING_LOSSES),
                      "Gate training loss (bmoe_tf.mixture.TRAINING_LOSSES): 'selected' is the "
                      "paper's Eq. 2 loss; 'relative' regresses the logits onto the experts' "
                      "relative losses (WORKSPACE.md). Default from --preset.", **d)
    flags.DEFINE_enum("combine", "gate", list(COMBINES),
                      "Eq. 2 as printed (gate) or straight-through scaling of the selected "
                      "output.", **d)
    flags.DEFINE_list("bias_weights", None, "w_bias grid for the soft method, chosen on "
                      "validation. Default from --preset.", **d)
    flags.DEFINE_integer("seed", 0, "Seed for splits, subsets, training and random "
                         "selection.", **d)
    flags.DEFINE_integer("verbose", 1, "Progress (0 silent, 1 one line per epoch, 2 Keras "
                         "progress bars too).", **d)
    flags.DEFINE_string("data", data_default, data_help + " (never downloads).", **d)
    flags.DEFINE_string("tfds_data_dir", None, "data_dir of prepared TFDS datasets.", **d)
    flags.DEFINE_string("eval_data", None, "Extra held-out data (a folder, in the task's own "
                        "format), evaluated and reported separately.", **d)
    flags.DEFINE_enum("data_cost", "paper", list(DATA_COSTS),
                      "What an input costs: 'paper' the paper's d_n = 3 x R_n^2 x 4 bytes per "
                      "expert (float32 of its input, the same for every input); 'encoded' the "
                      "bytes of each input's payload through the expert's codec (the task's "
                      "--codec), for the LP, the targets, the oracle and every curve.", **d)
    flags.DEFINE_integer("eval_batch_seed", DEFAULT_EVAL_BATCH_SEED,
                         "Seed of the shuffled test-time batches (batch routing).", **d)
    flags.DEFINE_string("strategy", "default", "tf.distribute strategy: default (one device) | "
                        "mirrored (every GPU of this machine, or its CPU) | multi_worker "
                        "(MultiWorkerMirroredStrategy: every host runs the same command with "
                        "its own TF_CONFIG and a shared --workdir; the expert cache is built "
                        "in shards, one per worker, and the gates trained across them; worker "
                        "0 writes the artefacts). --batch_size is the global batch, Algorithm 1 "
                        "holds over it.",
                        **d)
    flags.DEFINE_bool("quantization_aware", False, "Fine-tune every trained gate with int8 "
                      "fake-quant ops (tfmot QAT, a quarter of its epochs at a tenth of its "
                      "learning rate): the gate evaluated is the one the int8 export converts "
                      "unchanged (python -m gating_tflite.export --output=logits).", **d)
    flags.DEFINE_bool("int8_weights", False, "Round every trained gate's kernels to TFLite's "
                      "per-channel int8 grid before it is saved: the gate evaluated is the one "
                      "whose int16-activation export (python -m gating_tflite.export "
                      "--output=logits --activations=int16) keeps its choices for any b "
                      "(WORKSPACE D78). Not with --quantization_aware.", **d)
    flags.DEFINE_integer("gate_seed", None, "Seed of the gates' initial weights and data "
                         "order (default: --seed). Changing it retrains the gates alone, on "
                         "the same data, experts and caches: how large a gate setting's seed "
                         "noise is (WORKSPACE D79).", **d)
    flags.DEFINE_integer("gate_restarts", 1, "Train each enforce gate this many times "
                         "(restart k from seed + k x 1000003) and keep the one whose routing "
                         "scores best on the validation split (never the test split); "
                         "chosen.json in the gate's directory records every restart's score. "
                         "Costs that many times the enforce gate's training (WORKSPACE D79).",
                         **d)


def define_task_flags(task, flag_values=None) -> None:
    """Defines the shared flags and ``task``'s own (its ``Settings`` fields, its extra
    held-out set's) on ``flag_values`` (absl's global FLAGS by default)."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    define_shared_flags(fv, data_help=task.data_help, data_default=task.default_data)
    settings_lib.define_flags(task.Settings, fv)
    if task.eval_data is not None:
        task.eval_data.define_flags(fv)


def from_argv(task, argv) -> Config:
    """The :class:`Config` of a command line ``argv`` (without the program name) for
    ``task``, on fresh flags (tests, notebooks).

    Raises:
      ConfigError: a flag value that is not allowed (the message names the flag).
    """
    from absl import flags

    fv = flags.FlagValues()
    define_task_flags(task, fv)
    fv(["prog", *argv])
    return from_flags(task, fv)


def from_flags(task, flag_values=None) -> Config:
    """The :class:`Config` of the parsed flags for ``task`` (an ``experiments.pipeline.Task``).

    Raises:
      ConfigError: a flag value that is not allowed (the message names the flag).
    """
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    presets = task.presets()
    preset = presets[fv.preset]
    s = preset.schedule
    values = {name: getattr(fv, name) for name in SHARED_FLAGS}
    return build_config(task, preset_name=fv.preset, preset=preset,
                        targets=(parse_targets(values["targets"]) if values["targets"] is not None
                                 else s.targets),
                        batch_size=_or(values["batch_size"], s.batch_size),
                        learning_rate=_or(values["learning_rate"], s.learning_rate),
                        epochs=_or(values["epochs"], s.epochs),
                        soft_epochs=_or(values["soft_epochs"],
                                        s.soft_epochs if values["epochs"] is None
                                        or s.soft_epochs is None else None),
                        training_loss=_or(values["training_loss"], s.training_loss),
                        bias_weights=(parse_numbers(values["bias_weights"], "bias_weights")
                                      if values["bias_weights"] is not None else s.bias_weights),
                        methods=tuple(m.strip() for m in values["methods"]),
                        bias=parse_numbers(values["bias"], "bias"),
                        gate=_or(values["gate"], s.gate), combine=values["combine"],
                        seed=values["seed"],
                        verbose=values["verbose"], data=values["data"],
                        tfds_data_dir=values["tfds_data_dir"],
                        eval_data=((task.eval_data.from_flags(fv) if task.eval_data else None)
                                   or values["eval_data"]),
                        eval_batch_seed=values["eval_batch_seed"],
                        strategy=values["strategy"], data_cost=values["data_cost"],
                        quantization_aware=bool(values["quantization_aware"]),
                        int8_weights=bool(values["int8_weights"]),
                        gate_seed=values["gate_seed"],
                        gate_restarts=values["gate_restarts"],
                        task_settings=settings_lib.from_flags(task.Settings, fv, preset.task))


def _or(value, default):
    return default if value is None else value


def build_config(task, *, preset_name, preset, task_settings=None, **overrides) -> Config:
    """A checked :class:`Config` from a preset and explicit values (tests, notebooks)."""
    s = preset.schedule
    fields = dict(targets=s.targets, batch_size=s.batch_size, learning_rate=s.learning_rate,
                  epochs=s.epochs, training_loss=s.training_loss, bias_weights=s.bias_weights,
                  methods=("enforce", "soft", "random", "benchmark", "oracle"), bias=None,
                  gate=s.gate, combine="gate", seed=0, verbose=1,
                  data=getattr(task, "default_data", "bundled"),
                  tfds_data_dir=None, eval_data=None, eval_batch_seed=DEFAULT_EVAL_BATCH_SEED,
                  strategy="default", data_cost="paper", quantization_aware=False,
                  int8_weights=False)
    fields.update(overrides)
    if fields.get("soft_epochs") is None:
        fields["soft_epochs"] = s.soft_epochs if "epochs" not in overrides else None
    if fields["soft_epochs"] is None:
        fields["soft_epochs"] = fields["epochs"]
    cfg = Config(task_name=task.name, preset=preset_name,
                 task=task_settings if task_settings is not None else preset.task, **fields)
    check(cfg, task)
    return cfg


def check(cfg: Config, task) -> None:
    """Checks a config on what is known without data (numbers, names, d_n from shapes)."""
    from bmoe_tf.bias import validate_bias
    from bmoe_tf.mixture import COMBINES, TRAINING_LOSSES

    allowed = set(GATE_METHODS) | set(EVAL_METHODS)
    bad = [m for m in cfg.methods if m not in allowed]
    if bad or not cfg.methods:
        raise ConfigError(f"--methods takes {sorted(allowed)}, got {list(cfg.methods)}")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"--methods lists a method twice: {list(cfg.methods)}")
    kinds = tuple(getattr(task, "gate_kinds", GATE_KINDS[:2]))
    if cfg.gate not in kinds:
        raise ConfigError(f"--gate takes {list(kinds)} for the {task.name} task, got "
                          f"{cfg.gate!r}")
    if cfg.training_loss not in TRAINING_LOSSES:
        raise ConfigError(f"--training_loss takes {list(TRAINING_LOSSES)}, got "
                          f"{cfg.training_loss!r}")
    if cfg.combine not in COMBINES:
        raise ConfigError(f"--combine takes {list(COMBINES)}, got {cfg.combine!r}")
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.soft_epochs < 1:
        raise ConfigError(f"--soft_epochs must be >= 1, got {cfg.soft_epochs}")
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):
        raise ConfigError(f"--learning_rate must be a positive number, got {cfg.learning_rate}")
    if cfg.strategy not in PIPELINE_STRATEGIES:
        raise ConfigError(f"--strategy takes {list(PIPELINE_STRATEGIES)}, got {cfg.strategy!r}")
    if cfg.quantization_aware and cfg.strategy != "default":
        raise ConfigError(f"--quantization_aware trains in one process: it takes "
                          f"--strategy=default, got {cfg.strategy!r}")
    if cfg.quantization_aware and cfg.int8_weights:
        raise ConfigError("--int8_weights and --quantization_aware exclude each other: a QAT "
                          "gate's kernels are on the int8 grid already")
    if cfg.strategy == "multi_worker":
        from experiments.distribute import check_tf_config
        try:
            check_tf_config()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.gate_restarts < 1:
        raise ConfigError(f"--gate_restarts must be >= 1, got {cfg.gate_restarts}")
    for name in ("seed", "eval_batch_seed", "gate_seed"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    default_data = getattr(task, "default_data", "bundled")
    if cfg.data != default_data and not cfg.data.startswith(("folder:", "tfds:")):
        raise ConfigError(f"--data takes {default_data}, folder:PATH or tfds:NAME, got "
                          f"{cfg.data!r}")
    if cfg.data.startswith("folder:"):
        import os

        if not os.path.isdir(cfg.data[len("folder:"):]):
            raise ConfigError(f"--data={cfg.data}: {cfg.data[len('folder:'):]!r} is not a "
                              "directory")
    if cfg.verbose not in (0, 1, 2):
        raise ConfigError(f"--verbose takes 0, 1 or 2, got {cfg.verbose}")
    if not cfg.bias_weights or min(cfg.bias_weights) < 0:
        raise ConfigError(f"--bias_weights needs at least one weight >= 0, got "
                          f"{list(cfg.bias_weights)}")
    if len(set(cfg.bias_weights)) != len(cfg.bias_weights):
        raise ConfigError(f"--bias_weights lists a weight twice: {list(cfg.bias_weights)}")
    if cfg.eval_data and task.eval_data is None:
        raise ConfigError(f"--eval_data is not supported by the {task.name} task; evaluate "
                          "other data with --data=folder:PATH")
    if cfg.data_cost not in DATA_COSTS:
        raise ConfigError(f"--data_cost takes {list(DATA_COSTS)}, got {cfg.data_cost!r}")
    if "bytes" in cfg.methods and not cfg.encoded:
        raise ConfigError("--methods=bytes trains on each input's payload bytes: it needs "
                          "--data_cost=encoded")
    if cfg.encoded and task.codecs(cfg) is None:
        raise ConfigError(f"--data_cost=encoded: the {task.name} task declares no payload "
                          "codecs yet; --data_cost takes paper for it")
    settings_lib.check_settings(cfg.task, cfg)
    costs = task.data_costs(cfg)
    n = len(costs)
    if cfg.batch_size < n:
        raise ConfigError(f"--batch_size {cfg.batch_size} is smaller than the {n} experts; "
                          "batches need at least one example per expert")
    if cfg.bias is not None:
        try:
            validate_bias(cfg.bias, n, name="--bias")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not cfg.encoded:  # encoded bytes are known once the payloads are: checked at the LP
        cfg.targets.resolve(costs)
