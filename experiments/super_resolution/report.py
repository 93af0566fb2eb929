"""The super-resolution task's report part (:class:`SRReport`): Table IV rows (each expert's
scale and bicubic baseline), the Fig. 6 layout with the bicubic line, Fig. 7."""
import numpy as np

from experiments.super_resolution import models as sr_models
from experiments.super_resolution.evaluate import assignment_psnr
from experiments.task import Report

__all__ = ["SRReport", "PAPER_TABLE_IV"]

#: Table IV of the paper (DIV2K): PSNR at d_max, d_max/2, d_max/3 and rho.
PAPER_TABLE_IV = {
    "espcn": {"benchmark": [33.3, 30.4, 28.4, 30.7], "enforce": [None, 30.7, 28.8, 31.0],
              "soft": [None, 30.0, 28.1, 30.6], "random": [None, 29.8, 28.0, 30.5]},
    "fsrcnn": {"benchmark": [32.8, 29.8, 28.0, 30.3], "enforce": [None, 30.1, 28.3, 30.5],
               "soft": [None, 29.3, 27.6, 30.1], "random": [None, 29.2, 27.5, 30.0]},
}


class SRReport(Report):
    """Table IV rows: each expert's scale and bicubic baseline; Fig. 6 with the bicubic
    line; Fig. 7 (the gate's assignments on test photos)."""

    curve_figure_name = "fig6_psnr_vs_cost.png"
    curve_figure_title = "Fig. 6 layout"

    def expert_row(self, cfg, data, index, expert):
        scale = int(cfg.task.scales[index])
        return dict(scale=scale, label=f"x{scale}")

    def expert_split_row(self, cfg, data, split, index, view):
        scale = int(cfg.task.scales[index])
        bicubic = sr_models.bicubic_upscale(data[split].parts, scale)
        return {f"psnr_{split}": view.metric(np.full(len(bicubic), index)),
                f"bicubic_{split}": assignment_psnr(data[split], bicubic[:, None],
                                                    np.zeros(len(bicubic), np.int64))}

    def expert_fields(self, row):
        return dict(psnr=row["metric"], bicubic=row.get("bicubic_test"))

    def curves(self, report):
        return {"bicubic": [[e["data_cost"], e["bicubic"]] for e in report["experts"]]}

    def curve_extras(self, report):
        xs = [e["data_cost"] / 1000 for e in report["experts"]]
        ys = [e["bicubic"] for e in report["experts"]]
        order = np.argsort(xs)
        return [{"xy": (np.array(xs)[order], np.array(ys)[order]),
                 "style": dict(ls="--", marker="x", color="grey", label="Bicubic")}]

    def paper_reference(self, cfg):
        return PAPER_TABLE_IV.get(cfg.task.experts)

    def extras(self, cfg, data, report):
        return {"eval_images": report["eval"], "parts": report["examples"]}

    def figures(self, cfg, wd, data, report, results, views):
        from experiments.super_resolution.figures import figure_assignments

        return {"fig7": figure_assignments(wd, cfg, results["test"], data["test"],
                                           report["bias"])}
