"""Task similarity tree (Taskonomy Sec. 5.3, Fig. 13).

Each source task is described by its transfer-out pattern: the vector of its first-order affinities
p(source -> target) over all targets (a column of the affinity matrix P). Tasks are then clustered
agglomeratively. Choices made here (all arguments of :func:`similarity_tree`):

* the diagonal entries p(t -> t) (a task's own encoder read out for itself) are zeroed by default:
  they are a spike specific to each column and would make every task look unlike every other;
* each target row is rescaled to sum to 1 over the first-order sources (``self`` is not a column),
  so targets whose supervised network takes most of the AHP mass are not ignored;
* distance = correlation distance (1 - Pearson r) between columns, linkage = average (UPGMA).
  Columns with zero variance get distance 1 to everything (no correlation) instead of NaN.

On the published tables this groups the 3D tasks, the 2D tasks, the low-dimensional geometric
tasks and the semantic tasks, as in the paper's Fig. 13.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import pdist

from taskreg.errors import TaskregError
from taskreg.plotting import pyplot
from taskreg.selection.affinity_sets import AffinitySet

_METRICS = ("correlation", "cosine", "euclidean")
_METHODS = ("average", "complete", "single", "weighted")


@dataclass
class Tree:
    """A hierarchical clustering of tasks.

    labels : the n clustered task names (leaf i of the linkage is labels[i]).
    linkage : (n - 1, 4) float64 scipy linkage matrix.
    features : (n, n_targets) float64 transfer-out vectors that were clustered.
    """

    labels: list[str]
    linkage: np.ndarray
    features: np.ndarray
    metric: str
    method: str

    def leaf_order(self) -> list[str]:
        """Task names in dendrogram order (similar tasks adjacent)."""
        return [self.labels[i] for i in leaves_list(self.linkage)]

    def clusters(self, k: int) -> dict[str, int]:
        """Cut the tree into ``k`` clusters: {task: cluster id in 1..k}."""
        if not 1 <= k <= len(self.labels):
            raise TaskregError(f"k must be between 1 and {len(self.labels)}, got {k}")
        ids = fcluster(self.linkage, t=k, criterion="maxclust")
        return {name: int(c) for name, c in zip(self.labels, ids, strict=True)}


def transfer_out_features(
    aff: AffinitySet, sources: Sequence[str] | None = None, exclude_diagonal: bool = True
) -> tuple[list[str], np.ndarray]:
    """Column features of P: returns (sources, X) with X : (n_sources, n_targets) float64.

    X[j, i] = first-order affinity sources[j] -> targets[i], diagonal zeroed if ``exclude_diagonal``,
    each target (column of X) rescaled to sum to 1 over the sources (left at 0 if it sums to 0).
    """
    if sources is not None:
        aff.check_tasks(sources, what="task")
    targets, srcs, rows = aff.first_order_matrix(sources=sources)
    M = np.asarray(rows, dtype=np.float64).reshape(len(targets), len(srcs))
    if exclude_diagonal:
        for i, t in enumerate(targets):
            if t in srcs:
                M[i, srcs.index(t)] = 0.0
    sums = M.sum(axis=1, keepdims=True)
    M = np.divide(M, sums, out=np.zeros_like(M), where=sums > 0)
    return srcs, M.T


def similarity_tree(
    aff: AffinitySet,
    *,
    sources: Sequence[str] | None = None,
    metric: str = "correlation",
    method: str = "average",
    exclude_diagonal: bool = True,
) -> Tree:
    """Agglomerative clustering of tasks by their transfer-out patterns (see module docstring)."""
    if metric not in _METRICS:
        raise TaskregError(f"metric must be one of {', '.join(_METRICS)}, got '{metric}'")
    if method not in _METHODS:
        raise TaskregError(f"method must be one of {', '.join(_METHODS)}, got '{method}'")
    labels, X = transfer_out_features(aff, sources, exclude_diagonal)
    if len(labels) < 2:
        raise TaskregError(f"need at least 2 tasks with first-order transfers to build a tree, got {len(labels)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        d = pdist(X, metric=metric)
    d = np.nan_to_num(d, nan=1.0, posinf=1.0)
    d = np.clip(d, 0.0, None)
    Z = linkage(d, method=method)
    return Tree(labels=labels, linkage=Z, features=X, metric=metric, method=method)


def plot_tree(tree: Tree, path: str, title: str | None = None) -> None:
    """Save the tree as a horizontal dendrogram PNG at ``path``."""
    from scipy.cluster.hierarchy import dendrogram

    plt = pyplot()

    n = len(tree.labels)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.32 * n + 1.0)))
    dendrogram(tree.linkage, labels=tree.labels, orientation="left", ax=ax, color_threshold=None,
               leaf_font_size=10)
    ax.set_xlabel(f"{tree.metric} distance ({tree.method} linkage)")
    ax.set_title(title or "Task similarity tree (transfer-out patterns)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
