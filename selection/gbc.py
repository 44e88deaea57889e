"""GBC: the Gaussian Bhattacharyya coefficient of the target classes in an expert's feature space.

Pándy, Agostinelli, Uijlings, Ferrari, Mensink. "Transferability Estimation using Bhattacharyya Class
Separability", CVPR 2022 (arXiv 2111.12780); reference code google-research/stable_transfer
(transferability/gbc.py, config_transferability_*.py, features_targets_utils.py).

Steps, with the reference's defaults:

1. PCA of the (N, D) features to p = 64 dimensions (centred, exact; p = min(64, N, D) when there
   are fewer samples or dimensions — the reference would refuse those).
2. Per class c: the mean mu_c and the population (1/N_c) variance v_c of each dimension, floored at
   1e-4 (a constant dimension). Spherical Gaussians (the paper's default) use the scalar
   s_c = mean_d v_c,d for every dimension; diagonal ones the vector v_c.
3. Bhattacharyya distance between classes i, j with s = (s_i + s_j) / 2:

       D_B = 1/8 sum_d (mu_i,d - mu_j,d)^2 / s_d + 1/2 ( sum log s - 1/2 sum log s_i - 1/2 sum log s_j )

   where the sums run over the dimensions for diagonal Gaussians and over the single scalar for
   spherical ones: the reference takes the log-determinant term of a spherical Gaussian once, not D
   times as the exact formula for s I_D would (we follow the reference, whose numbers the paper reports).
4. GBC = - sum_i sum_{j != i} exp(-D_B(i, j))     (ordered pairs; <= 0, higher = better separated).

Not invariant to scaling the features (the variance floor is absolute). Cost: O(N D min(N, D)) for the
PCA plus O(K^2 p) for the K classes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.transferability import _labels, _matrix

VARIANCE_FLOOR = 1e-4
PCA_DIM = 64


def pca_reduce(f: np.ndarray, dim: int) -> np.ndarray:
    """The centred (N, D) features projected on their top ``min(dim, N, D)`` principal directions.

    From the eigenvectors of the smaller Gram matrix (the projection on direction v_i is u_i sigma_i), which
    is the thin SVD's answer up to each direction's sign (GBC does not depend on the signs)."""
    centred = f - f.mean(axis=0, keepdims=True)
    p = min(dim, *f.shape)
    if f.shape[0] <= f.shape[1]:
        s, u = np.linalg.eigh(centred @ centred.T)
        top = np.argsort(s)[::-1][:p]
        return u[:, top] * np.sqrt(np.clip(s[top], 0.0, None))
    s, v = np.linalg.eigh(centred.T @ centred)
    return centred @ v[:, np.argsort(s)[::-1][:p]]


def gbc(features: np.ndarray, y: np.ndarray, *, gaussian: Literal["spherical", "diagonal"] = "spherical",
        pca_dim: int | None = PCA_DIM) -> float:
    """GBC (see the module docstring). Higher = better; 0 means no class overlaps another at all.

    features : (N, D) float; y : (N,) integer labels with at least 2 classes.
    gaussian : "spherical" (the paper's default) or "diagonal". pca_dim : PCA dimension, None = no PCA.
    """
    f = _matrix(features, "features")
    codes, k = _labels(y, f.shape[0])
    if gaussian not in ("spherical", "diagonal"):
        raise TaskregError(f"gaussian must be 'spherical' or 'diagonal', got {gaussian!r}")
    if pca_dim is not None:
        if isinstance(pca_dim, bool) or not isinstance(pca_dim, (int, np.integer)) or pca_dim < 1:
            raise TaskregError(f"pca_dim must be a positive integer or None, got {pca_dim!r}")
        f = pca_reduce(f, int(pca_dim))
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums = np.zeros((k, f.shape[1]))
    np.add.at(sums, codes, f)
    means = sums / counts[:, None]
    sq = np.zeros((k, f.shape[1]))
    np.add.at(sq, codes, (f - means[codes]) ** 2)
    var = np.maximum(sq / counts[:, None], VARIANCE_FLOOR)  # (K, p)
    if gaussian == "spherical":
        var = var.mean(axis=1, keepdims=True)  # (K, 1): one scalar per class
    avg = (var[:, None, :] + var[None, :, :]) / 2  # (K, K, p) or (K, K, 1)
    diff2 = (means[:, None, :] - means[None, :, :]) ** 2  # (K, K, p)
    first = (diff2 / avg).sum(axis=2) / 8
    logs = np.log(var).sum(axis=1)
    second = np.log(avg).sum(axis=2) - 0.5 * logs[:, None] - 0.5 * logs[None, :]
    coefficient = np.exp(-(first + 0.5 * second))
    np.fill_diagonal(coefficient, 0.0)
    return -float(coefficient.sum())
