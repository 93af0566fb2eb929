"""report.json, report.md (the paper's Table IV / I / VI layout) and the curve figure,
for any task of :mod:`experiments.pipeline`."""
import os

import numpy as np

from bmoe_tf.gating import count_macs
from experiments.stages import read_json, write_json

__all__ = ["write_report", "format_table", "warnings", "rho_note", "pick_routing",
           "method_rows_markdown",
           "scene_shift_lines", "scene_shift_section",
           "assigned_tables_markdown", "METHOD_ORDER", "LABELS", "COLOURS"]

AT = ("d_max", "d_max/2", "d_max/3")
METHOD_ORDER = ("benchmark", "enforce", "enforce_bytes", "bytes", "soft", "random", "oracle")
LABELS = {"benchmark": "Benchmark experts", "enforce": "Proposed b enforcement",
          "enforce_bytes": "Enforce gate, byte budget",
          "bytes": "Byte-budget training",
          "soft": "Soft regularization", "random": "Random selection",
          "oracle": "Oracle (upper bound)"}
COLOURS = ("#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")
#: each curve's colour in the figures (the earlier curves keep theirs)
METHOD_COLOURS = dict(zip(("benchmark", "enforce", "enforce_bytes", "soft", "random", "oracle"),
                          COLOURS), bytes="#17becf")


def _add(report, extra, where):
    """Adds ``extra``'s keys to ``report``; a key the pipeline wrote may not be replaced."""
    clash = sorted(set(extra) & set(report))
    if clash:
        raise ValueError(f"{where} would replace the report's {clash}; a task's report "
                         "hooks may only add keys")
    report.update(extra)


def write_report(task, cfg, wd, data, table, points, results, splits, command, *, gate_model,
                 scene_shift=None, views=None):
    """Writes report.json / report.md / figures; returns the report dict.

    ``data``: the task's loaded data (passed to its report hooks); ``views``: the evaluated
    :class:`experiments.task.Split` views. ``scene_shift``: the scene-shift stage's result
    (``scene_shift.json``), reported under the key ``scene_shift`` and in report.md's
    section "Scene shift: the test split in its natural order"; None: neither."""
    hooks = task.report
    commands_path = wd.commands()
    commands = read_json(commands_path) if os.path.exists(commands_path) else []
    if not commands or commands[-1] != command:
        commands.append(command)
        write_json(commands_path, commands)
    test = results["test"]
    experts = []
    for r in table:  # experiments.results.ExpertRow
        row = dict(name=r.name, data_cost=r.data_cost, metric=r.metric("test"),
                   metric_validation=r.metric("validation"), **r.fields)
        _add(row, hooks.expert_fields(row), f"{task.name}'s report.expert_fields")
        experts.append(row)
    report = {
        "task": task.name,
        "metric": task.metric_name,
        "cost_unit": task.cost_unit,
        "experts": experts,
        **test.summary(),
        "oracle": task.oracle_description,
        "eval": results["eval"].summary() if "eval" in results else {},
        # the same curves on validation (where gate settings are compared); {} in a
        # workdir evaluated before validation was
        "validation": results["validation"].summary() if "validation" in results else {},
        "bias": [point.to_json() for point in points],
        "gate": dict(kind=cfg.gate, macs=int(count_macs(gate_model)),
                     params=int(gate_model.count_params())),
        "config": cfg.as_dict(),
        "paper": hooks.paper_reference(cfg),
        "commands": commands,
        "examples": {k: int(v) for k, v in splits.items()},
    }
    report["curves"] = dict(report["curves"])
    _add(report["curves"], hooks.curves(report), f"{task.name}'s report.curves")
    if scene_shift is not None:
        report["scene_shift"] = scene_shift
    _add(report, hooks.evaluation_extras(cfg, data, results, views or {}),
         f"{task.name}'s report.evaluation_extras")
    _add(report, hooks.extras(cfg, data, report), f"{task.name}'s report.extras")
    if cfg.encoded:
        report["bytes_saved"] = bytes_saved(report)
    write_json(wd.report_json(), report)
    figures = {"curves": _figure_curves(task, wd, report)}
    figures.update(hooks.figures(cfg, wd, data, report, results, views or {}))
    with open(wd.report_md(), "w") as f:
        f.write(_markdown(task, report, test, figures, wd))
        extra = hooks.markdown(cfg, report)
        if extra:
            f.write("\n".join(extra) + "\n")
    return report


def bytes_saved(report):
    """Bytes saved at equal quality (encoded runs): the best mixture point at the d_max/3
    target (enforce, enforce_bytes, bytes or soft; its realised mean bytes), the bytes the single
    experts' line (the benchmark hull, linear between experts) needs for the same metric,
    and the saving ``1 - mixture / experts``; ``experts_bytes`` None when no single expert
    reaches that metric (the mixture is above the line there)."""
    d_third = max(p["target"] for p in report.get("bias", [])) / 3 if report.get("bias") else None
    best = None
    for method in ("enforce", "enforce_bytes", "bytes", "soft"):
        for pt in report.get("points", {}).get(method, []):
            if d_third is not None and np.isclose(pt["target"], d_third):
                if best is None or pt["metric"] > best[1]["metric"]:
                    best = (method, pt)
    hull = sorted(report.get("curves", {}).get("benchmark", []))
    if best is None or len(hull) < 2:
        return None
    method, pt = best
    xs, ys = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    need = None
    if ys.min() <= pt["metric"] <= ys.max():
        k = int(np.searchsorted(np.maximum.accumulate(ys), pt["metric"]))
        k = min(max(k, 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        need = float(x0 if y1 == y0 else x0 + (pt["metric"] - y0) * (x1 - x0) / (y1 - y0))
    return dict(method=method, target=pt["target"], metric=pt["metric"], bytes=pt["cost"],
                experts_bytes=need,
                saving=None if need is None or need <= 0 else float(1 - pt["cost"] / need))


def format_table(report):
    """Table IV layout: the metric at d_max, d_max/2, d_max/3 and rho, per method."""
    paper = report.get("paper") or {}
    lines = [f"{'method':<24} {'d_max':>7} {'d_max/2':>8} {'d_max/3':>8} {'rho':>7}"
             + ("   paper (d_max, /2, /3, rho)" if paper else "")]
    for method in METHOD_ORDER:
        if method not in report["curves"]:
            continue
        vals = [report["at"][a].get(method) for a in AT] + [report["rho"].get(method)]
        cells = " ".join(f"{v:>{w}.2f}" if v is not None else f"{'-':>{w}}"
                         for v, w in zip(vals, (7, 8, 8, 7)))
        ref = paper.get(method)
        ref_text = ", ".join("-" if v is None else f"{v:.1f}" for v in ref) if ref else ""
        lines.append(f"{LABELS[method]:<24} {cells}   {ref_text}".rstrip())
    share = report.get("oracle_gain_share") or {}
    if share:
        lines.append("share of the oracle's rho gain over random: " + ", ".join(
            f"{m} {100 * v:.0f}%" for m, v in share.items()))
    return "\n".join(lines)


def pick_routing(results_test):
    """``(method, GateRouting)`` of the gate routing shown (``results_test``: the test
    split's :class:`experiments.results.SplitEvaluation`): enforce (else soft) at the target
    nearest a third of the largest target; None when no gate was evaluated."""
    subsets = results_test.subsets
    for method in ("enforce", "soft"):
        entries = subsets.get(method)
        if entries:
            targets = {k: v.target for k, v in entries.items()}
            goal = max(targets.values()) / 3
            key = min(targets, key=lambda k: abs(targets[k] - goal))
            return method, entries[key]
    return None


def _fmt(v, width=6, digits=1):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def method_rows_markdown(report, paper_tables):
    """Markdown rows ``| rows | method | d_max | d_max/2 | d_max/3 | rho |`` of this run and
    of the paper's ``{model: {method: [4 values]}}`` (Table I / IV / VI layouts)."""
    out = ["| rows | method | d_max | d_max/2 | d_max/3 | rho |", "|---|---|---|---|---|---|"]
    for method in METHOD_ORDER:
        if method in report["curves"]:
            vals = [report["at"][a].get(method) for a in AT] + [report["rho"].get(method)]
            out.append(f"| this run | {LABELS[method]} | " + " | ".join(map(_fmt, vals)) + " |")
    for model, rows in (paper_tables or {}).items():
        for method in METHOD_ORDER:
            if method in rows:
                out.append(f"| paper {model} | {LABELS[method]} | "
                           + " | ".join(map(_fmt, rows[method])) + " |")
    return out


def assigned_tables_markdown(tables, column="expert"):
    """Markdown of ``{method: [{target, bias, rows: [{expert, share, assigned, all,
    delta}]}]}``: each expert's metric on its assigned examples vs on all (Tables V-VII)."""
    out = []
    for method, entries in tables.items():
        for entry in entries:
            b = ", ".join(f"{v:.2f}" for v in entry["bias"])
            out += [f"**{method}**, target {entry['target']:,.0f} B, b = [{b}]", "",
                    f"| {column} | share | assigned | all | delta |", "|---|---|---|---|---|"]
            for row in entry["rows"]:
                delta = "-" if row["delta"] is None else f"{row['delta']:+.1f}"
                out.append(f"| {row['expert']} | {row['share']:.2f} | {_fmt(row['assigned'])}"
                           f" | {_fmt(row['all'])} | {delta} |")
            out.append("")
    return out


def rho_note(summary, name="test"):
    """Why rho is missing (``-``) for some curves of a split summary, or None.

    rho, the area under a metric-vs-cost curve, needs at least two points at distinct
    realised costs; on a small split two targets can land on the same realised cost
    (integer capacities per batch round to the same counts)."""
    curves, rho = summary.get("curves") or {}, summary.get("rho") or {}
    missing = [m for m in METHOD_ORDER if m in curves and m not in rho]
    if not missing:
        return None
    reasons = []
    for method in missing:
        xs = [pt[0] for pt in curves[method]]
        if len(xs) < 2:
            reasons.append(f"{method}: {len(xs)} point")
        else:
            distinct = len(set(np.round(xs, 9)))
            reasons.append(f"{method}: {len(xs)} points at {distinct} distinct realised "
                           f"cost{'s' if distinct != 1 else ''}")
    return (f"NOTE ({name}): rho is missing ('-') for {', '.join(missing)}: rho needs at "
            "least two curve points at distinct realised costs, and here two targets land "
            "on the same realised cost (a small split: the per-batch integer capacities "
            f"round to the same counts; {'; '.join(reasons)}). Use more data or fewer "
            "--targets.")


def warnings(report):
    """Lines that must not be missed: points over their target cost, points above the
    oracle (whose assignment maximises a proxy of the metric, see ``report["oracle"]``),
    and curves without rho (:func:`rho_note`)."""
    out = []
    for name, summary in (("test", report), ("eval", report.get("eval") or {})):
        note = rho_note(summary, name) if summary else None
        if note:
            out.append(note)
        over = [f"{method}@{pt['target']:.0f} ({pt['cost']:.0f})"
                for method, pts in (summary.get("points") or {}).items()
                for pt in pts if pt["over_target"]]
        if over:
            out.append(f"NOTE ({name}): realised mean cost over the target (integer capacities "
                       f"per batch round up): {', '.join(over)}")
        for ex in summary.get("oracle_exceeded") or []:
            out.append(f"WARNING ({name}): {ex['method']} at target {ex['target']:.0f} "
                       f"({ex['metric']:.3f} at cost {ex['cost']:.0f}) is above the oracle "
                       f"({ex['oracle']:.3f} at {ex['oracle_cost']:.0f}): the oracle is a "
                       f"{report['oracle']}")
    return out


def _markdown(task, report, test, figures, wd):
    out = [f"# {task.title}: biased mixture of experts", ""]
    out.append("Commands: " + "; ".join(f"`{c}`" for c in report["commands"]))
    metric = report["metric"]
    out += ["", f"## Experts ({metric})", "",
            "| expert | d_n | test | validation |", "|---|---|---|---|"]
    for e in report["experts"]:
        out.append(f"| {e['name']} | {e['data_cost']:.0f} | {e['metric']:.3f} | "
                   f"{e['metric_validation']:.3f} |")
    out += ["", f"## Table layout (test split; {metric}; costs in {report['cost_unit']})", "",
            "```", format_table(report), "```", ""]
    gate = report["gate"]
    out.append(f"Gate: {gate['kind']}, {gate['params']:,} parameters, C_g = {gate['macs']:,} "
               f"multiply-accumulates per {task.example_name}.")
    out += ["", f"Oracle: {report['oracle']}. Every curve point below is at its realised mean "
            "cost; a point over its target cost is flagged."]
    out += ["", "| method | target | realised cost | metric | over target |", "|---|---|---|---|---|"]
    for method, pts in report.get("points", {}).items():
        for pt in pts:
            out.append(f"| {method} | {pt['target']:.0f} | {pt['cost']:.0f} | {pt['metric']:.3f} "
                       f"| {'**yes**' if pt['over_target'] else 'no'} |")
    saved = report.get("bytes_saved")
    if saved:
        need = saved["experts_bytes"]
        pct = f"**{100 * saved['saving']:.1f}%**" if saved["saving"] is not None else "-"
        out += ["", "## Bytes saved at equal quality (encoded payloads)", "",
                f"| mixture at d_max/3 | {metric} | its bytes per {task.example_name} | the "
                "single experts' line for that metric | saved |", "|---|---|---|---|---|",
                f"| {LABELS[saved['method']]} | {saved['metric']:.3f} | {saved['bytes']:,.0f} B | "
                + (f"{need:,.0f} B" if need is not None else "no single expert reaches it")
                + f" | {pct} |", "",
                "For reference: the paper claims 55% for detection at mAP 70 in its own "
                "accounting (d_n = 3 R^2 x 4 B), and DDS (a frame-level system counting real "
                "codec bytes) up to 59% less bandwidth at the same accuracy."]
    notes = warnings(report)
    if notes:
        out += [""] + [f"- {line}" for line in notes]
    for name, path in figures.items():
        if path:
            out += ["", f"![{name}]({os.path.relpath(path, wd.root)})"]
    out += ["", "## Table VI layout: each expert on its assigned examples vs on all (scores)", ""]
    for method, by_index in test.subsets.items():
        for index, entry in sorted(by_index.items(), key=lambda kv: int(kv[0])):
            b = ", ".join(f"{v:.2f}" for v in entry.bias)
            out += [f"**{method}**, target {entry.target:.0f}, b = [{b}]", "",
                    "| expert | share | assigned | all | delta |", "|---|---|---|---|---|"]
            for row in entry.table:
                out.append(f"| {row['expert']} | {row['share']:.2f} | {row['assigned']:.4g} | "
                           f"{row['all']:.4g} | {row['delta']:+.4g} |")
            out.append("")
    if report["eval"]:
        ev = dict(report, **report["eval"])
        out += ["## Extra held-out data (--eval_data)", "", "```", format_table(ev), "```"]
    out += scene_shift_section(report, example_name=task.example_name)
    return "\n".join(out) + "\n"


def _scene_point_label(point, main):
    b = ", ".join(f"{v:.3f}" for v in point["bias"])
    return (f"target {point['target']:,.0f} B, b = [{b}]"
            + (" (the report's main b)" if point["index"] == main else ""))


def scene_shift_lines(report):
    """CLI lines of the scene-shift evaluation at the report's main b (one per method)."""
    ss = report.get("scene_shift")
    if not ss:
        return []
    point = next((p for p in ss["points"] if p["index"] == ss["main"]), None)
    if point is None:
        return []
    out = [f"scene shift (test split in natural order, {ss['gate_method']} gate, "
           f"{_scene_point_label(point, None)}; budget {point['rows'][0]['budget']:,.0f} B):"]
    for r in point["rows"]:
        if r["skipped"]:
            out.append(f"  {r['method']:<16} skipped: {r['skipped']}")
            continue
        bucket = ""
        if r["bucket_bytes"] is not None:
            bucket = (f", bucket {r['bucket_bytes']:,.0f} B "
                      + ("never over" if r["bucket_overrun_bytes"] == 0
                         else f"OVER by {r['bucket_overrun_bytes']:,.0f} B"))
        freqs = "/".join(f"{x:.3f}" for x in r["frequencies"])
        metric = "-" if r["metric"] is None else f"{r['metric']:.3f}"
        out.append(f"  {r['method']:<16} mean cost {r['mean_vs_budget_pct']:+7.2f}%, worst "
                   f"{r['window']}-window {r['worst_window_vs_budget_pct']:+6.1f}%{bucket}, "
                   f"frequencies {freqs}, {report['metric']} {metric}")
    return out


def scene_shift_section(report, *, example_name="input"):
    """report.md's section "Scene shift: the test split in its natural order"."""
    from experiments.scene_shift import scene_shift_markdown

    ss = report.get("scene_shift")
    if not ss:
        return []
    names = [e["name"] for e in report["experts"]]
    frames = ss.get("frame_count")
    out = ["", "## Scene shift: the test split in its natural order", "",
           f"The {ss['inputs']} test {example_name}s routed one at a time in their natural "
           f"order ({ss['natural_order']}; {frames} frames) by the {ss['gate_method']} gate, as "
           "a sensor would, against the shuffled batches the curves above use. static: "
           "argmax(logits + offsets), offsets calibrated on the validation split (the int8 "
           f"firmware today); controller: the budget controller from the same calibration "
           f"(crossing {ss['crossing']:g}), soft; controller_hard: with a leaky bucket of B = "
           f"max({ss['bucket_fraction']:g} x {ss['window']} d_t, largest d_n) bytes (never "
           "over: no window of any length sent more than its budget plus B); per_frame: "
           "Algorithm 1 over each frame's inputs, capacities carried across frames; "
           f"per_batch: Algorithm 1 over shuffled batches of {ss['batch_size']} (seed "
           f"{ss['seed']}). Costs against the budget d_t = b . d; worst window: the "
           f"{ss['window']} consecutive {example_name}s (in natural order) of the highest "
           "mean cost.", ""]
    if ss.get("controller") == "bytes":
        out += ["Encoded bytes: each input costs its own payload's bytes; the controllers hold "
                "the point's target in bytes (a price on bytes, bmoe_tf.byte_controller), the "
                "hard one's bucket at least the largest cheapest payload of the stream; waits: "
                "input slots the hard controller let pass to refill its bucket.", ""]
    slack = [r.get("window_slack_bytes") for p in ss["points"] for r in p["rows"]
             if r["method"] == "controller" and r.get("window_slack_bytes") is not None]
    if slack:
        out += [f"The soft controller's stated guarantee: no window sends more than its "
                f"budget plus {min(slack):,.0f} to {max(slack):,.0f} B (window_slack, by "
                "point); the rows are what it did.", ""]
    for point in ss["points"]:
        out += [f"**{_scene_point_label(point, ss['main'])}**", "",
                scene_shift_markdown(point["rows"], metric_name=report["metric"],
                                     expert_names=names), ""]
    return out


def _figure_curves(task, wd, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method in METHOD_ORDER:
        curve = report["curves"].get(method)
        if not curve:
            continue
        xs, ys = zip(*sorted(curve))
        style = dict(ls=":", marker="s") if method == "benchmark" else dict(marker="o")
        ax.plot(np.array(xs) / 1000, ys, label=LABELS[method], color=METHOD_COLOURS[method],
                **style)
    for method, pts in report.get("points", {}).items():
        over = [(p["cost"] / 1000, p["metric"]) for p in pts if p["over_target"]]
        if over:
            ax.scatter(*zip(*over), marker="x", color="black", zorder=5)
    for extra in task.report.curve_extras(report):
        ax.plot(*extra["xy"], **extra["style"])
    encoded = report["config"].get("data_cost") == "encoded"
    for e in report["experts"]:  # encoded: at the test split's mean bytes, as the curves
        x = e["bytes"]["test"]["mean"] if encoded and "test" in e.get("bytes", {}) \
            else e["data_cost"]
        ax.annotate(e.get("label", e["name"]), (x / 1000, e["metric"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel(f"mean encoded bytes per {task.example_name} (kB; the experts on the dotted "
                  "line)" if encoded else f"mean data cost per {task.example_name} (kB)")
    ax.set_ylabel(f"test {report['metric']}")
    ax.set_title(f"{task.report.curve_figure_title}: {report['metric']} vs data cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = wd.figure(task.report.curve_figure_name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
