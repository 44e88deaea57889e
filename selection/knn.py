"""Leave-one-out k-nearest-neighbour accuracy on an expert's features (cosine similarity).

The simple baseline that recent benchmarks find competitive with the sophisticated transferability
scores (e.g. arXiv 2503.18528; k-NN on frozen features is also the standard probe of self-supervised
representations, Wu et al. "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
CVPR 2018). Higher = better.

With z_i = f(x_i) / ||f(x_i)|| (a zero feature vector stays zero: similarity 0 to everything),
s_ij = z_i . z_j, and for each sample i, leaving it out:

    N_k(i)  = the k samples j != i with the largest s_ij       (equal s_ij: the lower index j first)
    votes_c = #{j in N_k(i) : y_j = c}
    pred_i  = the class with the most votes; a tie goes to the tied class with the larger sum of s_ij
              over its neighbours, then to the smaller class label
    score   = 1/N sum_i [pred_i == y_i]

Exact and vectorised: the N x N similarity is computed in blocks of rows (``block`` rows at a time), so
memory is O(block N). Cost O(N^2 D) time. Invariant to scaling each feature vector (cosine), not to
scaling individual feature dimensions.
"""

from __future__ import annotations

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.transferability import _labels, _matrix


def knn_accuracy(features: np.ndarray, y: np.ndarray, *, k: int = 5, block: int = 2048) -> float:
    """Leave-one-out k-NN accuracy with cosine similarity (see the module docstring). In [0, 1].

    features : (N, D) float; y : (N,) integer labels with at least 2 classes; N must exceed k.
    k : neighbours (>= 1). block : rows of the similarity matrix computed at once (>= 1).
    """
    f = _matrix(features, "features")
    codes, n_classes = _labels(y, f.shape[0])
    n = f.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TaskregError(f"k must be a positive integer, got {k!r}")
    if n <= k:
        raise TaskregError(f"k-NN with k={k} needs more than {k} samples, got {n}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise TaskregError(f"block must be a positive integer, got {block!r}")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    z = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    onehot = np.eye(n_classes)[codes]  # (N, K)
    correct = 0
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = np.arange(start, stop)
        sim = z[start:stop] @ z.T  # (B, N)
        sim[np.arange(stop - start), rows] = -np.inf  # leave the sample itself out
        # the k-th largest similarity of each row, then every neighbour strictly above it and, among those
        # equal to it, the lowest indices until k are chosen: exactly k per row, ties to the lower index
        kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]  # (B, 1)
        above = sim > kth
        equal = sim == kth
        need = k - above.sum(axis=1, keepdims=True)
        chosen = above | (equal & (np.cumsum(equal, axis=1) <= need))
        votes = chosen.astype(np.float64) @ onehot  # (B, K)
        sims = np.where(chosen, sim, 0.0) @ onehot  # summed similarity of each class's neighbours
        tied = votes == votes.max(axis=1, keepdims=True)
        pred = np.where(tied, sims, -np.inf).argmax(axis=1)  # argmax keeps the first (smaller) label on ties
        correct += int((pred == codes[start:stop]).sum())
    return correct / n
