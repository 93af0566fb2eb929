"""The action task's report part (:class:`ActionReport`) and its tables: the paper's Table VI (with its MV-3DCNN / EMV-CNN rows), the
data costs as the paper counts them next to the compressed bytes, Table VII (each
mode's accuracy on its assigned clips vs on all), where the clips with unreliable
motion vectors go, and the per-class share of clips sent to Fusion (Fig. 10)."""
import numpy as np

from experiments.action.clips import BYTES_PER_VALUE, MODES, MV_GRID, mode_costs
from experiments.report import assigned_tables_markdown, method_rows_markdown, pick_routing
from experiments.task import Report

__all__ = ["ActionReport", "PAPER_TABLE_VI", "GENERATED", "paper_costs", "evaluation_tables",
           "assigned_accuracy", "unreliable_routing", "class_shares", "markdown_lines"]

#: ``--data``'s default: clips generated from bundled footage.
GENERATED = "generated"

#: Table VI of the paper (UCF-101, modes {Temporal, Spatial, Fusion}): top-1 accuracy (%)
#: at d_max, d_max/2, d_max/3 and rho. Every method is the Fusion expert at d_max.
PAPER_TABLE_VI = {
    "MV-3DCNN": {"benchmark": [88.0, 79.0, 77.9, 80.9], "enforce": [88.0, 82.0, 80.4, 83.5],
                 "soft": [88.0, 80.3, 78.0, 81.9], "random": [88.0, 78.8, 77.3, 81.3]},
    "EMV-CNN": {"benchmark": [85.6, 76.6, 75.5, 78.7], "enforce": [85.6, 80.2, 79.2, 81.3],
                "soft": [85.6, 77.2, 75.6, 79.7], "random": [85.6, 75.7, 74.9, 79.0]},
}


def paper_costs():
    """The paper's d_n for UCF-101 (bytes): from its formulas with its stated F_t = 150,
    H_s x W_s = 360 x 240, and the values its Table VI and text imply (WORKSPACE.md, D36)."""
    stated = mode_costs(150, 2, 1, k=BYTES_PER_VALUE)
    stated[1] = 2 * 360 * 240 * 3 * BYTES_PER_VALUE
    stated[2] = stated[0] + stated[1]
    implied = np.array([160 * 24 * 24 * 2 * 4, 2 * 320 * 240 * 3 * 4, 0], np.float64)
    implied[2] = implied[0] + implied[1]
    return {"stated": stated.tolist(), "implied": implied.tolist()}


class ActionReport(Report):
    """Table VI rows (mode, compressed bytes), accuracy on assigned clips, where the
    degraded clips go, Figs. 9 and 10."""

    curve_figure_name = "fig8_accuracy_vs_cost.png"
    curve_figure_title = "Fig. 8 layout"

    def expert_row(self, cfg, data, index, expert):
        mode = cfg.task.modes[index]
        test = data["test"]
        mv, rgb = float(test.mv_bytes.mean()), float(test.rgb_bytes.mean())
        compressed = {"temporal": mv, "spatial": rgb, "fusion": mv + rgb}[mode]
        return dict(mode=mode, label=mode.capitalize(), compressed_bytes=compressed)

    def paper_reference(self, cfg):
        if tuple(cfg.task.modes) != MODES:
            return None
        return PAPER_TABLE_VI["MV-3DCNN"]

    def evaluation_extras(self, cfg, data, results, views):
        return evaluation_tables(data["test"], views["test"].scores, cfg, results)

    def extras(self, cfg, data, report):
        s = cfg.task
        return {"paper_table_vi": PAPER_TABLE_VI, "paper_costs": paper_costs(),
                "generated_data": cfg.data == GENERATED, "modes": list(s.modes),
                "clip": dict(mv_frames=s.mv_frames, rgb_frames=s.rgb_frames,
                             frame_size=s.frame_size,
                             gate_input=[MV_GRID, MV_GRID, 2 * s.mv_frames]),
                "clips": {x: len(v) for x, v in data.items()},
                "class_names": list(data["test"].class_names)}

    def markdown(self, cfg, report):
        return markdown_lines(report)

    def figures(self, cfg, wd, data, report, results, views):
        from experiments.action.figures import action_figures

        return action_figures(data["test"], cfg, wd, report, results["test"])



def assigned_accuracy(correct, picks, names):
    """Rows ``{expert, share, assigned, all, delta}`` (accuracies in %) of one routing.

    Args:
      correct: ``float[M, N]`` 0/1 correctness of each expert on each clip.
      picks: ``int[M]`` the routing.
      names: N expert names.
    """
    picks = np.asarray(picks)
    rows = []
    for n, name in enumerate(names):
        mine = picks == n
        whole = 100.0 * float(correct[:, n].mean())
        assigned = 100.0 * float(correct[mine, n].mean()) if mine.any() else None
        rows.append(dict(expert=name, share=float(mine.mean()), assigned=assigned, all=whole,
                         delta=None if assigned is None else assigned - whole))
    return rows


def unreliable_routing(modes, unreliable, picks):
    """Where clips go, split by whether their MVs were degraded: ``{"unreliable": {mode:
    share}, "reliable": {mode: share}, "rgb_unreliable", "rgb_reliable"}`` (rgb: a mode
    that sends RGB frames, Spatial or Fusion), or None when no clip is degraded."""
    unreliable = np.asarray(unreliable, bool)
    if not unreliable.any() or unreliable.all():
        return None
    picks = np.asarray(picks)
    out = {}
    rgb = np.array([m != "temporal" for m in modes])
    for label, mask in (("unreliable", unreliable), ("reliable", ~unreliable)):
        out[label] = {m: float(np.mean(picks[mask] == n)) for n, m in enumerate(modes)}
        out[f"rgb_{label}"] = float(np.mean(rgb[picks[mask]]))
    out["clips_unreliable"] = int(unreliable.sum())
    out["clips_reliable"] = int((~unreliable).sum())
    return out


def class_shares(labels, class_names, picks, expert):
    """``[{class, clips, share}]``: the share of each class's clips routed to ``expert``."""
    labels, picks = np.asarray(labels), np.asarray(picks)
    return [dict(cls=name, clips=int((labels == c).sum()),
                 share=float(np.mean(picks[labels == c] == expert)) if (labels == c).any()
                 else None) for c, name in enumerate(class_names)]


def evaluation_tables(data, correct, cfg, results, split="test"):
    """report.json keys computed from the test routings (see the module docstring);
    ``data``: the split's ClipSet, ``correct``: ``float[M, N]`` its 0/1 scores."""
    modes = list(cfg.task.modes)
    names = modes
    tables, degraded = {}, {}
    for method, by_index in results[split].subsets.items():
        tables[method], degraded[method] = [], []
        for index, entry in sorted(by_index.items(), key=lambda kv: int(kv[0])):
            picks = np.asarray(entry.picks)
            head = dict(target=entry.target, bias=list(entry.bias))
            tables[method].append(dict(head, rows=assigned_accuracy(correct, picks, names)))
            routed = unreliable_routing(modes, data.unreliable, picks)
            if routed is not None:
                degraded[method].append(dict(head, **routed))
    out = {"assigned_accuracy": tables,
           "unreliable_routing": {k: v for k, v in degraded.items() if v}}
    chosen = pick_routing(results[split])
    if chosen is not None and "fusion" in modes:
        method, entry = chosen
        out["fusion_by_class"] = dict(
            method=method, target=entry.target, bias=list(entry.bias),
            rows=class_shares(data.labels, data.class_names, np.asarray(entry.picks),
                              modes.index("fusion")))
    # accuracy of each expert on the degraded vs the clean clips
    if data.unreliable.any() and not data.unreliable.all():
        out["expert_accuracy_by_mv"] = {
            m: dict(unreliable=100.0 * float(correct[data.unreliable, n].mean()),
                    reliable=100.0 * float(correct[~data.unreliable, n].mean()))
            for n, m in enumerate(modes)}
    return out


def _fmt(v, width=6, digits=1):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def markdown_lines(report):
    """report.md sections of the action task."""
    out = ["", "## Table VI layout (test split, top-1 accuracy %, next to the paper's "
           "UCF-101 rows)", ""]
    if report.get("generated_data"):
        out += ["The data is *generated* from bundled footage (camera-motion classes, "
                "experiments.action.footage): its accuracies show the routing effect; they are "
                "not comparable with the paper's UCF-101 numbers.", ""]
    out += method_rows_markdown(report, report.get("paper_table_vi"))
    clip = report.get("clip") or {}
    out += ["", "## Data costs per clip", "",
            f"F_t = {clip.get('mv_frames')} MV maps, F_s = {clip.get('rgb_frames')} RGB frames "
            f"of {clip.get('frame_size')} px; d_n as the paper counts it (K = 4 bytes per "
            "value) and the compressed bytes (MV maps: int8 at 1/4 px + zlib; RGB: JPEG q90; "
            "test-split means).", "",
            "| mode | d_n (B) | compressed (B) | test accuracy (%) |", "|---|---|---|---|"]
    for e in report["experts"]:
        out.append(f"| {e.get('label', e['name'])} | {e['data_cost']:,.0f} | "
                   f"{e.get('compressed_bytes', 0):,.0f} | {e['metric']:.1f} |")
    paper = report.get("paper_costs")
    if paper:
        stated = ", ".join(f"{v / 1000:,.1f}" for v in paper["stated"])
        implied = ", ".join(f"{v / 1000:,.1f}" for v in paper["implied"])
        out += ["", f"The paper's UCF-101 costs (Temporal, Spatial, Fusion; kB): {stated} from "
                f"its formulas as printed (F_t = 150, 360x240); {implied} as its Table VI and "
                "text imply (F_t = 160, 320x240; WORKSPACE.md, D36)."]
    by_mv = report.get("expert_accuracy_by_mv")
    if by_mv:
        out += ["", "## Experts on clips with degraded vs clean motion vectors (test, %)", "",
                "| mode | degraded MVs | clean MVs |", "|---|---|---|"]
        for mode, v in by_mv.items():
            out.append(f"| {mode} | {v['unreliable']:.1f} | {v['reliable']:.1f} |")
    routed = report.get("unreliable_routing") or {}
    if routed:
        out += ["", "## Where the clips with unreliable MVs go (test)", "",
                "| method | target (B) | b | RGB-sending share, degraded MVs | same, clean MVs | "
                "Fusion share, degraded | Fusion share, clean |", "|---|---|---|---|---|---|---|"]
        for method, entries in routed.items():
            for e in entries:
                b = ", ".join(f"{v:.2f}" for v in e["bias"])
                fu = e["unreliable"].get("fusion")
                fr = e["reliable"].get("fusion")
                out.append(f"| {method} | {e['target']:,.0f} | [{b}] | {e['rgb_unreliable']:.2f} "
                           f"| {e['rgb_reliable']:.2f} | {_fmt(fu, 4, 2)} | {_fmt(fr, 4, 2)} |")
    tables = report.get("assigned_accuracy") or {}
    if tables:
        out += ["", "## Table VII layout: each mode's accuracy (%) on its assigned clips vs all "
                "test clips", ""]
        out += assigned_tables_markdown(tables, column="mode")
    fusion = report.get("fusion_by_class")
    if fusion:
        b = ", ".join(f"{v:.2f}" for v in fusion["bias"])
        out += ["", f"## Fig. 10 layout: share of each class's clips sent to Fusion "
                f"({fusion['method']}, target {fusion['target']:,.0f} B, b = [{b}])", "",
                "| class | clips | Fusion share |", "|---|---|---|"]
        for row in fusion["rows"]:
            out.append(f"| {row['cls']} | {row['clips']} | {_fmt(row['share'], 4, 2)} |")
    return out
