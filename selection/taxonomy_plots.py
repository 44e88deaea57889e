"""Figures of the Taskonomy decision layer (PNG files, matplotlib Agg backend).

* :func:`plot_affinity_matrices` - first-order matrix before and after AHP side by side (paper Fig. 7).
* :func:`plot_policy` - a computed taxonomy as a layered hyper-graph (paper Fig. 8): trained tasks on
  top, one small junction node per higher-order transfer in the middle, transferred targets below.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from taskreg.errors import TaskregError
from taskreg.plotting import pyplot
from taskreg.selection.bip import Policy

SUPERVISED_COLOUR = "#3b75af"
SOURCE_ONLY_COLOUR = "#b8b8b8"
TRANSFER_COLOUR = "#ef8636"


def plot_affinity_matrices(
    raw_matrix: np.ndarray,
    ahp_matrix: np.ndarray,
    sources: Sequence[str],
    targets: Sequence[str],
    path: str,
    raw_label: str = "win rate (before AHP)",
    ahp_label: str = "AHP affinity p (log scale)",
) -> None:
    """Two heatmaps side by side: a first-order matrix before and after AHP normalisation.

    raw_matrix, ahp_matrix : (n_targets, n_sources) float, entry [i, j] = transfer sources[j] -> targets[i]
        (NaN = no such transfer, drawn blank). Brighter = transfers better in both panels.
    """
    raw = np.asarray(raw_matrix, dtype=np.float64)
    ahp = np.asarray(ahp_matrix, dtype=np.float64)
    shape = (len(targets), len(sources))
    for name, m in (("raw_matrix", raw), ("ahp_matrix", ahp)):
        if m.shape != shape:
            raise TaskregError(f"{name} must have shape (n_targets, n_sources) = {shape}, got {m.shape}")
    plt = pyplot()
    from matplotlib.colors import LogNorm

    positive = ahp[np.isfinite(ahp) & (ahp > 0)]
    vmin = max(float(positive.min()), 1e-6) if positive.size else 1e-6
    vmax = max(float(positive.max()), vmin * 10) if positive.size else 1.0
    ahp_plot = np.where(np.isfinite(ahp) & (ahp > 0), ahp, np.nan)

    w = max(12.0, 0.3 * len(sources) * 2 + 5)
    h = max(5.0, 0.3 * len(targets) + 3.5)
    fig, axes = plt.subplots(1, 2, figsize=(w, h))
    panels = (
        (axes[0], raw, dict(vmin=np.nanmin(raw) if np.isfinite(raw).any() else 0.0), raw_label),
        (axes[1], ahp_plot, dict(norm=LogNorm(vmin=vmin, vmax=vmax)), ahp_label),
    )
    for ax, m, kw, label in panels:
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", aspect="auto", interpolation="nearest", **kw)
        ax.set_xticks(range(len(sources)))
        ax.set_xticklabels(sources, rotation=90, fontsize=8)
        ax.set_yticks(range(len(targets)))
        ax.set_yticklabels(targets, fontsize=8)
        ax.set_xlabel("source task")
        ax.set_ylabel("target task")
        ax.set_title(label)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("First-order task affinities before (left) and after (right) AHP normalisation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spread(names: Sequence[str], width: float) -> dict[str, float]:
    n = len(names)
    if n == 0:
        return {}
    if n == 1:
        return {names[0]: width / 2}
    step = width / n
    return {name: step * (k + 0.5) for k, name in enumerate(names)}


def _layout(top: list[str], bottom: list[str], edges: list[tuple[tuple[str, ...], str]], width: float,
            sweeps: int = 4) -> tuple[dict[str, float], dict[str, float]]:
    """x positions for the two rows, ordered by barycentre sweeps to reduce edge crossings."""
    top_x = _spread(sorted(top), width)
    bottom_x = _spread(sorted(bottom), width)
    for _ in range(sweeps):
        bary = {t: float(np.mean([top_x[s] for s in srcs])) for srcs, t in edges}
        bottom_x = _spread(sorted(bottom, key=lambda t: (bary.get(t, width), t)), width)
        fed: dict[str, list[float]] = {}
        for srcs, t in edges:
            for s in srcs:
                fed.setdefault(s, []).append(bottom_x[t])
        top_x = _spread(sorted(top, key=lambda s: (float(np.mean(fed[s])) if s in fed else width, s)), width)
    return top_x, bottom_x


def plot_policy(policy: Policy, path: str, title: str | None = None) -> None:
    """Draw ``policy`` as a taxonomy and save it as a PNG at ``path``.

    Blue nodes: tasks labelled and trained (``supervised``); grey: source-only tasks the policy reads;
    orange: targets solved by a transfer. A first-order transfer is an arrow from its source to the
    target; a higher-order transfer joins its sources in a small black junction node, which has one
    arrow to the target. Targets solved by their own network carry a bold outline.
    """
    plt = pyplot()
    top = list(policy.supervised) + list(policy.source_only_used)
    bottom = [tr.target for tr in policy.transfers]
    edges = [(tuple(s for s in tr.sources if s in top), tr.target) for tr in policy.transfers]
    edges = [(srcs, t) for srcs, t in edges if srcs]  # drop 'pixels' transfers (no task to draw from)
    n_cols = max(len(top), len(bottom), 1)
    width = float(n_cols)
    top_x, bottom_x = _layout(top, bottom, edges, width)

    fig_w = max(8.0, 0.9 * n_cols + 2)
    fig, ax = plt.subplots(figsize=(fig_w, 7.0))
    y_top, y_mid, y_bot = 2.0, 1.0, 0.0
    cmap = plt.get_cmap("tab20")
    arrow = dict(arrowstyle="-|>", lw=1.2, shrinkA=0, shrinkB=9, mutation_scale=12)
    for k, (srcs, t) in enumerate(sorted(edges, key=lambda e: bottom_x[e[1]])):
        colour = cmap(k % 20)
        tx = bottom_x[t]
        if len(srcs) == 1:
            ax.annotate("", xy=(tx, y_bot), xytext=(top_x[srcs[0]], y_top),
                        arrowprops=dict(color=colour, **arrow), zorder=1)
            continue
        jx = 0.5 * (float(np.mean([top_x[s] for s in srcs])) + tx)
        for s in srcs:
            ax.plot([top_x[s], jx], [y_top, y_mid], color=colour, lw=1.2, zorder=1)
        ax.annotate("", xy=(tx, y_bot), xytext=(jx, y_mid), arrowprops=dict(color=colour, **arrow), zorder=1)
        ax.scatter([jx], [y_mid], s=28, color="black", zorder=3)

    self_solved = set(policy.solved_by_self)
    so = set(policy.source_only_used)
    for name, x in top_x.items():
        colour = SOURCE_ONLY_COLOUR if name in so else SUPERVISED_COLOUR
        ax.scatter([x], [y_top], s=260, color=colour, zorder=4,
                   edgecolors="black", linewidths=2.2 if name in self_solved else 0.6)
        ax.text(x, y_top + 0.12, name, rotation=40, ha="left", va="bottom", fontsize=9)
    for name, x in bottom_x.items():
        ax.scatter([x], [y_bot], s=260, color=TRANSFER_COLOUR, zorder=4, edgecolors="black", linewidths=0.6)
        ax.text(x, y_bot - 0.12, name, rotation=40, ha="right", va="top", fontsize=9)

    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], marker="o", ls="", ms=10, mfc=SUPERVISED_COLOUR, mec="black", mew=2.2,
               label="supervised, solved by own network"),
        Line2D([], [], marker="o", ls="", ms=10, mfc=SUPERVISED_COLOUR, mec="black", mew=0.6,
               label="supervised, used as a source only"),
        Line2D([], [], marker="o", ls="", ms=10, mfc=SOURCE_ONLY_COLOUR, mec="black", label="source-only task"),
        Line2D([], [], marker="o", ls="", ms=10, mfc=TRANSFER_COLOUR, mec="black", label="solved by transfer"),
        Line2D([], [], marker="o", ls="", ms=5, mfc="black", mec="black", label="higher-order junction"),
    ]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=9, frameon=False)
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(-1.3, 3.3)
    ax.axis("off")
    ax.set_title(title or (
        f"{policy.affinity}: budget {policy.budget:g}, max order {policy.max_order}, "
        f"{len(policy.supervised)} supervised, objective {policy.objective:.3f}"
    ))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
