"""Figures of task spaces (distance heatmap with dendrogram, 2-D embedding map) and of selection methods (the
cost-accuracy frontier). PNG via matplotlib (Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskreg.errors import TaskregError
from taskreg.plotting import pyplot


def _group_colours(groups: Sequence[str]) -> dict[str, tuple]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(set(groups)) <= 10 else "tab20")
    return {g: cmap(i % cmap.N) for i, g in enumerate(sorted(set(groups)))}


def plot_distance_matrix(dist: np.ndarray, names: Sequence[str], path: Path | str, *,
                         groups: Sequence[str] | None = None, title: str = "") -> Path:
    """Heatmap of a symmetric distance matrix, rows ordered by an average-linkage dendrogram drawn on the left.

    dist : (N, N) symmetric, zero diagonal; names : N labels; groups : optional N group names (colour strip).
    """
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    d = np.asarray(dist, dtype=np.float64)
    n = len(names)
    if d.shape != (n, n) or n < 2:
        raise TaskregError(f"distance matrix must be (N, N) with N = len(names) >= 2, got {d.shape} and {n}")
    if not np.all(np.isfinite(d)):
        raise TaskregError("distance matrix contains NaN or inf")
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    link = linkage(squareform(np.clip(d, 0, None), checks=False), method="average")

    plt = pyplot()
    size = max(6.0, min(0.22 * n + 3, 24.0))
    fontsize = max(4, min(9, int(300 / max(n, 1))))
    # room under the heatmap for the rotated column labels (about 0.6 em per character)
    bottom = min(0.35, (max(len(str(x)) for x in names) * fontsize * 0.62 / 72 + 0.2) / size + 0.02)
    height = 0.9 - bottom
    # columns, left to right: dendrogram | group strip | heatmap | its row labels | legend and colour bar
    fig = plt.figure(figsize=(size + 4, size))
    ax_dendro = fig.add_axes((0.01, bottom, 0.12, height))
    tree = dendrogram(link, orientation="left", no_labels=True, ax=ax_dendro, color_threshold=0,
                      above_threshold_color="#555555")
    ax_dendro.axis("off")
    order = tree["leaves"][::-1]
    ax_strip = fig.add_axes((0.135, bottom, 0.012, height))
    ax = fig.add_axes((0.15, bottom, 0.55, height))
    im = ax.imshow(d[np.ix_(order, order)], cmap="viridis_r", aspect="auto", interpolation="nearest")
    ax.set_yticks(range(n), [names[i] for i in order], fontsize=fontsize)
    ax.yaxis.tick_right()
    ax.set_xticks(range(n), [names[i] for i in order], fontsize=fontsize, rotation=90)
    if groups is not None:
        colours = _group_colours(groups)
        strip = np.array([[colours[groups[i]] for i in order]]).transpose(1, 0, 2)
        ax_strip.imshow(strip, aspect="auto", interpolation="nearest")
        handles = [plt.Line2D([], [], marker="s", ls="", color=c, label=g) for g, c in colours.items()]
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.85, 0.9), fontsize=8, frameon=False,
                   title="domain")
    ax_strip.axis("off")
    cax = fig.add_axes((0.86, bottom, 0.015, 0.3))
    fig.colorbar(im, cax=cax, label="distance")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_embedding_map(points: np.ndarray, names: Sequence[str], groups: Sequence[str], path: Path | str, *,
                       title: str = "") -> Path:
    """Scatter plot of 2-D task coordinates (e.g. t-SNE of Task2Vec vectors) coloured by group.

    points : (N, 2); names, groups : N labels.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) != len(names) or len(names) != len(groups):
        raise TaskregError(f"points must be (N, 2) with N names and groups, got {pts.shape}")
    plt = pyplot()
    colours = _group_colours(groups)
    fig, ax = plt.subplots(figsize=(9, 7))
    for g, c in colours.items():
        idx = [i for i, gi in enumerate(groups) if gi == g]
        ax.scatter(pts[idx, 0], pts[idx, 1], color=c, label=g, s=40, edgecolor="white", linewidth=0.5)
    if len(names) <= 80:
        for (x, y), name in zip(pts, names, strict=True):
            ax.annotate(name, (x, y), fontsize=6, alpha=0.7, xytext=(3, 2), textcoords="offset points")
    ax.legend(fontsize=8, frameon=False, title="domain")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def embedding_map(vectors: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates of task vectors (N, D) -> (N, 2), on the normalised Fisher ``v / |v|``."""
    from sklearn.manifold import TSNE

    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    n = len(v)
    if n < 3:
        raise TaskregError(f"need at least 3 tasks for an embedding map, have {n}")
    perplexity = float(max(2.0, min(30.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine").fit_transform(v)


@dataclass(frozen=True)
class FrontierPoint:
    """One selection method on the cost-accuracy plane.

    seconds : its cost per query (0 for a method that computes nothing on the query).
    regret : mean chosen error / oracle mean error - 1 (a fraction; lower is better), with an optional interval.
    series : methods of one series (e.g. one two-stage pair over K) are joined by a line and share a colour.
    """

    method: str
    seconds: float
    regret: float
    low: float | None = None
    high: float | None = None
    series: str | None = None


def _method_colour(method: str) -> str:
    """Red for Task2Vec/Model2Vec, grey for the baselines, blue for the forward scores."""
    if method in ("asym", "sym", "model2vec", "domain"):
        return "tab:red"
    return "tab:grey" if method in ("generic", "prior", "random", "chance") else "tab:blue"


def plot_frontier(points: Sequence[FrontierPoint], path: Path | str, *, title: str) -> Path:
    """Cost (seconds per query, log axis) against accuracy (ratio of means vs the oracle, in %), one point per
    method, interval whiskers where given, each series joined in orange. A 0-second method is drawn at a third of
    the cheapest non-zero cost and labelled "(0 s)". Writes a PNG; returns its path."""
    if not points:
        raise TaskregError("plot_frontier needs at least one method")
    bad = [p.method for p in points if not (np.isfinite(p.seconds) and p.seconds >= 0 and np.isfinite(p.regret))]
    if bad:
        raise TaskregError(f"plot_frontier: non-finite or negative cost or accuracy for {', '.join(bad)}")
    positive = [p.seconds for p in points if p.seconds > 0]
    floor = min(positive) / 3 if positive else 1.0
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 6.5))
    for p in points:
        x = max(p.seconds, floor)
        colour = "tab:orange" if p.series else _method_colour(p.method)
        yerr = None
        if p.low is not None and p.high is not None:
            yerr = [[100 * max(p.regret - p.low, 0.0)], [100 * max(p.high - p.regret, 0.0)]]
        ax.errorbar([x], [100 * p.regret], yerr=yerr, fmt="o", color=colour, capsize=3, markersize=5, alpha=0.9)
        ax.annotate(p.method if p.seconds > 0 else f"{p.method} (0 s)", (x, 100 * p.regret),
                    textcoords="offset points", xytext=(4, 3), fontsize=7)
    for name in dict.fromkeys(p.series for p in points if p.series):
        line = sorted((p for p in points if p.series == name), key=lambda p: p.seconds)
        ax.plot([max(p.seconds, floor) for p in line], [100 * p.regret for p in line], "-", color="tab:orange",
                alpha=0.5, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per query (log; 0-second methods drawn at the left edge)")
    ax.set_ylabel("mean chosen error / oracle mean error - 1 [%] (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
