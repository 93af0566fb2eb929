"""report.json, report.md (Table IV / VI layout) and the Fig. 6 / Fig. 7 figures."""
import os

import numpy as np

from experiments.stages import read_json, write_json

__all__ = ["PAPER_TABLE_IV", "write_report", "format_table"]

#: Table IV of the paper (DIV2K): PSNR at d_max, d_max/2, d_max/3 and rho.
PAPER_TABLE_IV = {
    "espcn": {"benchmark": [33.3, 30.4, 28.4, 30.7], "enforce": [None, 30.7, 28.8, 31.0],
              "soft": [None, 30.0, 28.1, 30.6], "random": [None, 29.8, 28.0, 30.5]},
    "fsrcnn": {"benchmark": [32.8, 29.8, 28.0, 30.3], "enforce": [None, 30.1, 28.3, 30.5],
               "soft": [None, 29.3, 27.6, 30.1], "random": [None, 29.2, 27.5, 30.0]},
}
_AT = ("d_max", "d_max/2", "d_max/3")
_ORDER = ("benchmark", "enforce", "soft", "random", "oracle")
_LABEL = {"benchmark": "Benchmark experts", "enforce": "Proposed b enforcement",
          "soft": "Soft regularization", "random": "Random selection",
          "oracle": "Oracle (upper bound)"}
_COLOURS = ("#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")


def _split_summary(split_result):
    return {"curves": split_result["curves"], "rho": split_result["rho"],
            "at": split_result["at"], "oracle_gain_share": split_result["oracle_gain_share"]}


def write_report(wd, cfg, table, points, results, sets, command, *, gate_macs, gate_params):
    """Writes report.json / report.md / figures; returns the report dict."""
    commands_path = wd.path("commands.json")
    commands = read_json(commands_path) if os.path.exists(commands_path) else []
    if not commands or commands[-1] != command:
        commands.append(command)
        write_json(commands_path, commands)
    test = results["test"]
    report = {
        "task": "super_resolution",
        "experts": [dict(name=r["name"], scale=r["scale"], data_cost=r["data_cost"],
                         psnr=r["psnr_test"], psnr_validation=r["psnr_validation"],
                         bicubic=r["bicubic_test"]) for r in table],
        "curves": test["curves"],
        "rho": test["rho"],
        "at": test["at"],
        "oracle_gain_share": test["oracle_gain_share"],
        "eval_images": _split_summary(results["eval"]) if "eval" in results else {},
        "bias": points,
        "gate": dict(kind=cfg["gate"], macs=int(gate_macs), params=int(gate_params)),
        "config": {k: v for k, v in cfg.items()},
        "paper": PAPER_TABLE_IV.get(cfg["experts"]),
        "commands": commands,
        "parts": {k: int(len(v.parts)) for k, v in sets.items()},
    }
    write_json(wd.path("report.json"), report)
    figures = {}
    try:
        figures["fig6"] = _figure_curves(wd, report)
        figures["fig7"] = _figure_assignments(wd, cfg, test, sets["test"], points)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    with open(wd.path("report.md"), "w") as f:
        f.write(_markdown(report, test, figures, wd))
    return report


def format_table(report):
    """Table IV layout: PSNR (dB) at d_max, d_max/2, d_max/3 and rho, per method."""
    paper = report.get("paper") or {}
    lines = [f"{'method':<24} {'d_max':>7} {'d_max/2':>8} {'d_max/3':>8} {'rho':>7}   "
             f"paper (d_max, /2, /3, rho)"]
    for method in _ORDER:
        if method not in report["curves"]:
            continue
        vals = [report["at"][a].get(method) for a in _AT] + [report["rho"].get(method)]
        cells = " ".join(f"{v:>{w}.2f}" if v is not None else f"{'-':>{w}}"
                         for v, w in zip(vals, (7, 8, 8, 7)))
        ref = paper.get(method)
        ref_text = ", ".join("-" if v is None else f"{v:.1f}" for v in ref) if ref else ""
        lines.append(f"{_LABEL[method]:<24} {cells}   {ref_text}")
    share = report.get("oracle_gain_share") or {}
    if share:
        lines.append("share of the oracle's rho gain over random: " + ", ".join(
            f"{m} {100 * v:.0f}%" for m, v in share.items()))
    return "\n".join(lines)


def _markdown(report, test, figures, wd):
    out = ["# Super-resolution: biased mixture of experts", ""]
    out.append("Commands: " + "; ".join(f"`{c}`" for c in report["commands"]))
    out += ["", "## Experts (test images, Y-PSNR in dB)", "",
            "| expert | scale | d_n (bytes) | PSNR test | PSNR validation | bicubic test |",
            "|---|---|---|---|---|---|"]
    for e in report["experts"]:
        out.append(f"| {e['name']} | x{e['scale']} | {e['data_cost']:.0f} | {e['psnr']:.2f} | "
                   f"{e['psnr_validation']:.2f} | {e['bicubic']:.2f} |")
    out += ["", "## Table IV layout (test images)", "", "```", format_table(report), "```", ""]
    gate = report["gate"]
    out.append(f"Gate: {gate['kind']}, {gate['params']:,} parameters, C_g = {gate['macs']:,} "
               f"multiply-accumulates per part.")
    for name, path in figures.items():
        if path:
            out += ["", f"![{name}]({os.path.relpath(path, wd.root)})"]
    out += ["", "## Table VI layout: each expert on its assigned parts vs on all parts", ""]
    for method, by_index in test.get("subsets", {}).items():
        for index, entry in sorted(by_index.items(), key=lambda kv: int(kv[0])):
            b = ", ".join(f"{v:.2f}" for v in entry["bias"])
            out += [f"**{method}**, target {entry['target']:.0f} bytes, b = [{b}]", "",
                    "| expert | share | PSNR assigned | PSNR all | delta |", "|---|---|---|---|---|"]
            for row in entry["table"]:
                out.append(f"| {row['expert']} | {row['share']:.2f} | {row['assigned']:.2f} | "
                           f"{row['all']:.2f} | {row['delta']:+.2f} |")
            out.append("")
    if report["eval_images"]:
        ev = dict(report, **report["eval_images"])
        out += ["## Extra held-out images (--eval_image_dir)", "", "```", format_table(ev), "```"]
    return "\n".join(out) + "\n"


def _figure_curves(wd, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, method in enumerate(_ORDER):
        curve = report["curves"].get(method)
        if not curve:
            continue
        xs, ys = zip(*sorted(curve))
        style = dict(ls=":", marker="s") if method == "benchmark" else dict(marker="o")
        ax.plot(np.array(xs) / 1000, ys, label=_LABEL[method], color=_COLOURS[i], **style)
    bic = report["curves"].get("bicubic")
    if bic:
        xs, ys = zip(*sorted(bic))
        ax.plot(np.array(xs) / 1000, ys, ls="--", marker="x", color="grey", label="Bicubic")
    for e in report["experts"]:
        ax.annotate(f"x{e['scale']}", (e["data_cost"] / 1000, e["psnr"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("mean data cost per 64x64 part (kB)")
    ax.set_ylabel("test Y-PSNR (dB)")
    ax.set_title("Fig. 6 layout: PSNR vs data cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = wd.path("reports", "fig6_psnr_vs_cost.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _figure_assignments(wd, cfg, test, part_set, points):
    """Fig. 7 layout: a test image with each part framed by its chosen expert."""
    subsets = test.get("subsets", {}).get("enforce") or test.get("subsets", {}).get("soft")
    if not subsets:
        return None
    d_max = max(p["target"] for p in points)
    index = min(subsets, key=lambda k: abs(subsets[k]["target"] - d_max / 2))
    picks = np.asarray(subsets[index]["picks"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    image_id = int(np.argmax([g[0] * g[1] for g in part_set.grids]))
    image = part_set.images_from_parts(part_set.parts)[image_id]
    choice = part_set.images_from_parts(picks)[image_id]
    fig, ax = plt.subplots(figsize=(7, 7 * image.shape[0] / image.shape[1]))
    ax.imshow(np.clip(image, 0, 1))
    size = part_set.parts.shape[1]
    for r in range(choice.shape[0]):
        for c in range(choice.shape[1]):
            ax.add_patch(Rectangle((c * size + 1, r * size + 1), size - 2, size - 2, fill=False,
                                   lw=1.5, ec=_COLOURS[int(choice[r, c]) % len(_COLOURS)]))
    names = [f"x{s}" for s in cfg["scales"]]
    ax.legend(handles=[Patch(ec=_COLOURS[i], fill=False, label=n) for i, n in enumerate(names)],
              loc="lower right", fontsize=8)
    b = ", ".join(f"{v:.2f}" for v in subsets[index]["bias"])
    ax.set_title(f"Fig. 7 layout: parts framed by the chosen expert (b = [{b}])", fontsize=9)
    ax.axis("off")
    path = wd.path("reports", "fig7_assignments.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
