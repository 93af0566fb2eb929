"""Action figures: Fig. 9 layout (t-SNE of the temporal expert's last hidden layer,
coloured by class and by chosen mode) and Fig. 10 layout (per-class share of clips
sent to Fusion)."""
import numpy as np

from experiments.report import COLOURS, pick_routing

__all__ = ["action_figures", "embed", "figure_tsne", "figure_fusion_by_class", "TSNE_POINTS"]

#: Test clips embedded in the t-SNE figure (the paper shows 1024).
TSNE_POINTS = 1024


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embed(features, *, seed=0):
    """``float[M, 2]``: scikit-learn's t-SNE of standardised ``features [M, D]`` (M >= 5).

    Perplexity ``min(30, (M - 1) / 3)``, PCA initialisation, ``random_state=seed``.
    Only the Fig. 9 drawing uses it (no number of the report).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 5:
        raise ValueError(f"t-SNE needs [M, D] features with M >= 5, got shape {x.shape}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3.0), init="pca",
                random_state=int(seed)).fit_transform(x)


def figure_tsne(path, features, labels, class_names, picks, modes, title, *, seed=0):
    """Two t-SNE panels (:func:`embed`) of ``features [M, D]``: colours = class (a),
    chosen mode (b)."""
    plt = _plt()
    y = embed(features, seed=seed)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    cmap = plt.get_cmap("tab20")
    for c, name in enumerate(class_names):
        mine = labels == c
        if mine.any():
            axes[0].scatter(y[mine, 0], y[mine, 1], s=7, color=cmap(c % 20), label=name)
    axes[0].set_title("(a) classes")
    axes[0].legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    for n, mode in enumerate(modes):
        mine = picks == n
        if mine.any():
            axes[1].scatter(y[mine, 0], y[mine, 1], s=7, color=COLOURS[n % len(COLOURS)],
                            label=f"{n}: {mode} ({mine.mean():.0%})")
    axes[1].set_title("(b) chosen mode")
    axes[1].legend(fontsize=8, markerscale=2)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_fusion_by_class(path, fusion, unreliable=None):
    """Bar chart of the share of each class's test clips routed to Fusion."""
    plt = _plt()
    rows = [r for r in fusion["rows"] if r["share"] is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.2))
    ax.bar(range(len(rows)), [r["share"] for r in rows], color=COLOURS[2])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["cls"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of the class's clips sent to Fusion")
    b = ", ".join(f"{v:.2f}" for v in fusion["bias"])
    title = (f"Fig. 10 layout: {fusion['method']}, target {fusion['target'] / 1000:.0f} kB, "
             f"b = [{b}]")
    if unreliable is not None:
        title += (f"\nFusion share: degraded MVs {unreliable['unreliable'].get('fusion', 0):.2f}, "
                  f"clean MVs {unreliable['reliable'].get('fusion', 0):.2f}")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def action_figures(data, cfg, wd, report, results_test):
    """``{"fig9_tsne": path, "fig10_fusion_by_class": path}`` (None where there is no gate
    routing to show)."""
    from experiments.action.experts import temporal_features

    out = {}
    chosen = pick_routing(results_test)
    if chosen is None:
        return out
    method, entry = chosen
    picks = np.asarray(entry.picks)
    keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(data))[:TSNE_POINTS])
    if len(keep) >= 10:
        features = temporal_features(wd.expert_dir("temporal"), data.mv[keep])
        b = ", ".join(f"{v:.2f}" for v in entry.bias)
        out["fig9_tsne"] = figure_tsne(
            wd.figure("fig9_tsne.png"), features, data.labels[keep], data.class_names,
            picks[keep], list(cfg.task.modes),
            f"Fig. 9 layout: t-SNE of the temporal expert's last hidden layer, {len(keep)} test "
            f"clips; {method} gate, b = [{b}]", seed=cfg.seed)
    fusion = report.get("fusion_by_class")
    if fusion:
        routed = None
        for e in (report.get("unreliable_routing") or {}).get(fusion["method"], []):
            if np.isclose(e["target"], fusion["target"]):
                routed = e
        out["fig10_fusion_by_class"] = figure_fusion_by_class(
            wd.figure("fig10_fusion_by_class.png"), fusion, routed)
    return out
