"""TransRate: the mutual information between features and labels, measured by coding rates.

Huang, Huang, Rong, Yang, Wei. "Frustratingly Easy Transferability Estimation", ICML 2022 (PMLR 162,
pp. 9201-9225); reference code github.com/Long-Kai/TransRate and the snippet printed in the paper.

With Z the (N, D) features centred by their global mean, Z_c the rows of class c (N_c of them, not
re-centred), K the number of classes and eps the distortion (eps^2 in the paper's notation):

    R(Z, eps)  = 1/2 log det(I_D + Z^T Z / (N eps))                  (the coding rate)
    TrR        = R(Z, eps) - 1/K sum_c R(Z_c, eps)                   (R(Z_c) uses N_c for N)

Higher = better. This is the paper's printed code (eps = 1e-4, the unweighted mean over classes); the
paper's Eq. weights the class rates by N_c / N, and the official repository's experiments additionally
project the features and tune eps per target dataset — we follow the printed default, which needs no
per-dataset choice. log det(I_D + c Z^T Z) = sum_i log(1 + c s_i) over the eigenvalues s_i of the
smaller Gram matrix (Z^T Z or Z Z^T), so each rate costs O(min(N, D)^2 max(N, D)).
Not invariant to scaling the features (eps is absolute); invariant to permuting the labels.
"""

from __future__ import annotations

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.transferability import _labels, _matrix


def coding_rate(z: np.ndarray, eps: float) -> float:
    """1/2 log det(I_D + Z^T Z / (N eps)) for (N, D) rows Z, from the eigenvalues of the smaller Gram matrix."""
    n, d = z.shape
    gram = z.T @ z if d <= n else z @ z.T
    s = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    return 0.5 * float(np.log1p(s / (n * eps)).sum())


def transrate(features: np.ndarray, y: np.ndarray, *, eps: float = 1e-4) -> float:
    """TransRate (see the module docstring): R(Z) minus the mean class coding rate. Higher = better.

    features : (N, D) float; y : (N,) integer labels with at least 2 classes; eps > 0.
    """
    f = _matrix(features, "features")
    codes, k = _labels(y, f.shape[0])
    if not (np.isfinite(eps) and eps > 0):
        raise TaskregError(f"eps must be a positive number, got {eps}")
    z = f - f.mean(axis=0, keepdims=True)
    within = sum(coding_rate(z[codes == c], eps) for c in range(k)) / k
    return coding_rate(z, eps) - within
