"""Detection figures: test images framed by the expert the gate chose."""
import numpy as np

from experiments.report import COLOURS, pick_routing

__all__ = ["figure_examples", "pick_routing"]

#: Detections drawn on the example figure: score at least this.
DRAW_SCORE = 0.3


def figure_examples(wd, data, detections, report, results_test, *, per_expert=4, seed=0):
    """``reports/examples.png``: up to ``per_expert`` test images per expert, framed in the
    colour of the expert the gate chose, with the ground truth (white) and that
    expert's detections (score >= 0.3, in its colour). Returns the path or None."""
    chosen = pick_routing(results_test)
    if chosen is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    method, entry = chosen
    picks = np.asarray(entry.picks)
    names = [e["name"] for e in report["experts"]]
    rng = np.random.default_rng(seed)
    shown = []
    for n in range(len(names)):
        idx = np.flatnonzero(picks == n)
        shown += [(int(i), n) for i in rng.permutation(idx)[:per_expert]]
    if not shown:
        return None
    cols = min(per_expert, 4)
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    size = data.images.shape[1]
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, n) in zip(axes.ravel(), shown):
        colour = COLOURS[n % len(COLOURS)]
        ax.imshow(data.images[i])
        boxes, _ = data.boxes_of(i)
        for y0, x0, y1, x1 in boxes * size:
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                           ec="white", lw=1.0))
        for y0, x0, y1, x1, score, _cls in detections[i, n]:
            if score >= DRAW_SCORE:
                ax.add_patch(patches.Rectangle((x0 * size, y0 * size), (x1 - x0) * size,
                                               (y1 - y0) * size, fill=False, ec=colour, lw=1.2,
                                               ls="--"))
        for side in ("left", "right", "top", "bottom"):
            ax.spines[side].set_visible(True)
            ax.spines[side].set_color(colour)
            ax.spines[side].set_linewidth(4)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{data.names[i]} -> {names[n]}", fontsize=7, color=colour)
    b = ", ".join(f"{v:.2f}" for v in entry.bias)
    fig.suptitle(f"{method} gate at {entry.target / 1000:.0f} kB, b = [{b}]: frame = chosen "
                 f"expert; white = ground truth; dashed = its detections (score >= {DRAW_SCORE})",
                 fontsize=8)
    fig.tight_layout()
    path = wd.figure("examples.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
