"""Typed results the pipeline passes between its stages (and writes as JSON).

* :class:`ExpertRow` -- one expert's d_n and metric per split (``experts.json``).
* :class:`BiasPoint` -- a data-cost target and the b chosen for it (``bias.json``).
* :class:`CurvePoint` -- one point of a method's curve at its realised mean cost.
* :class:`GateRouting` -- a trained gate's routing of a split at one target.
* :class:`SplitEvaluation` -- every curve of one split (``evaluation.json``).

Each has ``to_json()`` (the JSON the workdir holds, unchanged keys) and ``from_json``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["ExpertRow", "BiasPoint", "CurvePoint", "GateRouting", "SplitEvaluation"]


@dataclasses.dataclass(frozen=True)
class ExpertRow:
    """One expert of the table.

    Attributes:
      name: the expert's name.
      data_cost: d_n in the task's cost unit.
      metrics: ``{split: metric}`` when the whole split goes to this expert.
      fields: the task's fields (e.g. ``scale``, ``label``, per-split extras), in order.
    """

    name: str
    data_cost: float
    metrics: Mapping[str, float]
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def metric(self, split: str) -> float:
        return self.metrics[split]

    def to_json(self) -> dict:
        return dict(name=self.name, data_cost=self.data_cost, **self.fields,
                    **{f"metric_{s}": v for s, v in self.metrics.items()})

    @classmethod
    def from_json(cls, row: Mapping) -> "ExpertRow":
        metrics = {k[len("metric_"):]: v for k, v in row.items() if k.startswith("metric_")}
        fields = {k: v for k, v in row.items()
                  if not k.startswith("metric_") and k not in ("name", "data_cost")}
        return cls(name=row["name"], data_cost=float(row["data_cost"]), metrics=metrics,
                   fields=fields)

    def merged(self, other: "ExpertRow") -> "ExpertRow":
        """This row with ``other``'s metrics and fields that it lacks (the extra set)."""
        return dataclasses.replace(
            self, metrics={**self.metrics, **{k: v for k, v in other.metrics.items()
                                              if k not in self.metrics}},
            fields={**self.fields, **{k: v for k, v in other.fields.items()
                                      if k not in self.fields}})


@dataclasses.dataclass(frozen=True)
class BiasPoint:
    """A data-cost target and its b (``float[N]``, sums to 1)."""

    target: float
    bias: tuple

    def to_json(self) -> dict:
        return dict(target=self.target, bias=list(self.bias))

    @classmethod
    def from_json(cls, point: Mapping) -> "BiasPoint":
        return cls(target=float(point["target"]), bias=tuple(point["bias"]))


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One routing's point: its target, realised mean cost, metric, and whether the cost is
    over the target."""

    target: float
    cost: float
    metric: float
    over_target: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, point: Mapping) -> "CurvePoint":
        return cls(**{f.name: point[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class GateRouting:
    """A gate's routing of a split at one target: its b, the expert of each example
    (``picks``, ``int[M]``) and each expert's performance on the examples it got
    (:func:`bmoe_tf.evaluation.assigned_subset_performance`)."""

    target: float
    bias: tuple
    picks: tuple
    table: list

    def to_json(self) -> dict:
        return dict(target=self.target, bias=list(self.bias), picks=list(self.picks),
                    table=self.table)

    @classmethod
    def from_json(cls, entry: Mapping) -> "GateRouting":
        return cls(target=float(entry["target"]), bias=tuple(entry["bias"]),
                   picks=tuple(entry["picks"]), table=list(entry["table"]))


@dataclasses.dataclass(frozen=True)
class SplitEvaluation:
    """Every curve of one split.

    Attributes:
      curves: ``{method: [[cost, metric], ...]}`` (benchmark: the experts' upper hull).
      points: ``{method: [CurvePoint]}`` one per target.
      rho: ``{method: rho}`` (Eq. 11), where the curve has distinct costs.
      at: ``{"d_max" | "d_max/2" | "d_max/3": {method: metric}}``.
      oracle_gain_share: ``{method: share of the oracle's rho gain over random}``.
      subsets: ``{gate method: {target index: GateRouting}}``.
      oracle_exceeded: points above the oracle at the same target (dicts).
      oracle_bounds: encoded runs: per target, the byte-budget oracle's summed score, the
        Lagrangian bound on it and their gap (:func:`bmoe_tf.byte_budget.budget_oracle`);
        empty (and not written) in paper runs.
    """

    curves: Mapping[str, list]
    points: Mapping[str, list]
    rho: Mapping[str, float]
    at: Mapping[str, Mapping[str, float]]
    oracle_gain_share: Mapping[str, float]
    subsets: Mapping[str, Mapping[str, GateRouting]]
    oracle_exceeded: list
    oracle_bounds: list = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        out = dict(curves=self.curves,
                   points={m: [p.to_json() for p in pts] for m, pts in self.points.items()},
                   rho=self.rho, at=self.at, oracle_gain_share=self.oracle_gain_share,
                   subsets={m: {k: r.to_json() for k, r in by.items()}
                            for m, by in self.subsets.items()},
                   oracle_exceeded=self.oracle_exceeded)
        if self.oracle_bounds:
            out["oracle_bounds"] = self.oracle_bounds
        return out

    def summary(self) -> dict:
        """The report.json keys of this split (everything but the gates' picks)."""
        out = self.to_json()
        out.pop("subsets")
        return out

    @classmethod
    def from_json(cls, result: Mapping) -> "SplitEvaluation":
        return cls(curves=result["curves"],
                   points={m: [CurvePoint.from_json(p) for p in pts]
                           for m, pts in result["points"].items()},
                   rho=result["rho"], at=result["at"],
                   oracle_gain_share=result["oracle_gain_share"],
                   subsets={m: {k: GateRouting.from_json(r) for k, r in by.items()}
                            for m, by in (result.get("subsets") or {}).items()},
                   oracle_exceeded=result["oracle_exceeded"],
                   oracle_bounds=result.get("oracle_bounds") or [])
