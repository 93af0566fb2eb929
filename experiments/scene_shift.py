"""The scene-shift stage's report view: the rows of :func:`bmoe_tf.scene_shift.scene_shift_rows`
(the library's one scene-shift evaluator, also the int8 export's) as a markdown table.

The evaluator and its settings live in :mod:`bmoe_tf.scene_shift`; this module re-exports
the names the pipeline's stage and report use.
"""
from bmoe_tf.scene_shift import (BATCH_SIZE, BUCKET_FRACTION, CROSSING, LABELS,  # noqa: F401
                                 METHODS, ONE_INPUT_PER_FRAME, WINDOW, scene_shift_rows,
                                 window_excess)

__all__ = ["scene_shift_rows", "scene_shift_markdown", "window_excess", "METHODS", "LABELS",
           "CROSSING", "BUCKET_FRACTION", "WINDOW", "BATCH_SIZE"]


def _pct(value, digits=1):
    return "-" if value is None else f"{value:+.{digits}f}%"


def scene_shift_markdown(rows, *, metric_name="metric", expert_names=None, unit="B"):
    """Markdown table of :func:`scene_shift_rows`: method | mean cost vs budget | worst
    W-window | bucket | frequencies | metric."""
    rows = list(rows)
    if not rows:
        return ""
    w = rows[0]["window"]
    budget = rows[0]["budget"]
    names = "" if not expert_names else " (" + " / ".join(expert_names) + ")"
    out = [f"| method | mean cost vs budget ({budget:,.0f} {unit}) | worst {w}-window | "
           f"bucket | frequencies{names} | {metric_name} |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r["skipped"]:
            out.append(f"| {r['method']} | skipped: {r['skipped']} | - | - | - | - |")
            continue
        bucket = "-"
        if r["bucket_bytes"] is not None:
            over = r["bucket_overrun_bytes"]
            bucket = (f"B = {r['bucket_bytes']:,.0f} {unit}, "
                      + ("never over" if over == 0 else f"**over by {over:,.0f} {unit}**"))
        freqs = " / ".join(f"{x:.3f}" for x in r["frequencies"])
        metric = "-" if r["metric"] is None else f"{r['metric']:.3f}"
        out.append(f"| {r['method']} | {_pct(r['mean_vs_budget_pct'], 2)} "
                   f"({r['mean_cost']:,.0f} {unit}) | {_pct(r['worst_window_vs_budget_pct'])} | "
                   f"{bucket} | {freqs} | {metric} |")
    return "\n".join(out)
