"""The SR task's own figure: Fig. 7 layout (a test image, each part framed by its expert)."""
import numpy as np

from experiments.report import COLOURS

__all__ = ["figure_assignments"]


def figure_assignments(wd, cfg, test, part_set, points):
    """Writes ``reports/fig7_assignments.png`` (None when no gate was evaluated)."""
    subsets = test.subsets.get("enforce") or test.subsets.get("soft")
    if not subsets:
        return None
    d_max = max(p["target"] for p in points)
    index = min(subsets, key=lambda k: abs(subsets[k].target - d_max / 2))
    picks = np.asarray(subsets[index].picks)
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
                                   lw=1.5, ec=COLOURS[int(choice[r, c]) % len(COLOURS)]))
    names = [f"x{s}" for s in cfg.task.scales]
    ax.legend(handles=[Patch(ec=COLOURS[i], fill=False, label=n) for i, n in enumerate(names)],
              loc="lower right", fontsize=8)
    b = ", ".join(f"{v:.2f}" for v in subsets[index].bias)
    ax.set_title(f"Fig. 7 layout: parts framed by the chosen expert (b = [{b}])", fontsize=9)
    ax.axis("off")
    path = wd.figure("fig7_assignments.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
