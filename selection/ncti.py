"""NCTI: how far an expert's features on the target are from neural collapse, a transferability score.

Wang, Luo, Zheng, Huang, Baktashmotlagh. "How Far Pre-trained Models Are from Neural Collapse on the Target
Dataset Informs their Transferability", ICCV 2023 (reference code: github.com/BUserName/NCTI, ``NCTI_Score`` in
metrics.py and the normalisation in evaluate_metric_group1_cpu.py).

Per expert, from its features X (N, D) and labels y (N,) in K >= 2 classes (:func:`ncti_terms`):

1. PCA to P = min(64, D, N - 1) dimensions (centred scores), and the sum s of the top min(32, P) explained
   variances (sample variances, 1/(N - 1)).
2. LDA in the PCA space. If exp(-s) > 1e-10: shrinkage LDA with lam = exp(-s): within covariance
   S_W(lam) = (1 - lam) S_W + lam (tr S_W / P) I (S_W = sum_k pi_k Cov_k, population covariances),
   between S_B = St(lam) - S_W(lam) (St the total covariance, shrunk the same way), Fisher directions V from
   S_B v = e S_W(lam) v with V^T S_W(lam) V = I. Otherwise (s >= 23.03, the usual case for CNN features)
   plain LDA: within covariance S_W N / (N - K), S_B = sum_k pi_k (mu_k - mu)(mu_k - mu)^T, directions
   normalised to that within covariance and cut to the rank of S_B. (These are sklearn's
   ``LinearDiscriminantAnalysis(solver="eigen", shrinkage=lam)`` and ``(solver="svd")``, which the reference
   uses.) Z = the centred projection of the PCA scores on the top min(K - 1, P) directions, (N, K - 1);
   p(k | x) the LDA posteriors (Gaussian classes with the shared within covariance, priors pi_k).
3. The three terms:
   * seli = ||Z||_*, the nuclear norm of Z (simplex-ETF structure of the class means: higher = better);
   * ncc  = 1/N sum_i p(y_i | x_i), the accuracy of the nearest-centre (LDA) classifier, soft (higher = better);
   * vc   = log sum_k ||P_k||_*, P_k (N_k, K) the posteriors of class k's samples (within-class variability:
     lower = better).

The score is only defined relative to the other candidate models: each term is min-max normalised over the
pool of experts being ranked, ``t' = (t - min) / (max - min)``, and (:func:`ncti_pool`)

    NCTI = seli' + ncc' - vc'        higher = better.

So an expert's NCTI depends on which other experts it is ranked with (adding one can reorder two others), and
a pool of one scores 0. The selector "ncti" therefore scores the whole pool in one call: it is registered with
``pooled=True`` and the registry hands it every expert's features at once.

Where this follows the reference code, or departs from it:

* the terms, the 64/32 PCA sizes, lam = exp(-s) with its 1e-10 switch to plain LDA, the equal-weight sum and
  the min-max pool normalisation are the reference's (the paper's text weighs and normalises the terms; the
  code is what produced its results);
* exact PCA (an eigen-decomposition of the N x N or D x D Gram matrix) instead of sklearn's randomized solver,
  which the reference's sklearn picks at this size: equal up to the solver's approximation;
* P = min(64, D, N - 1) where the reference needs N, D >= 64 (sklearn refuses fewer), N - 1 because centring
  removes one dimension;
* a term that is the same for every expert (including a pool of one) contributes 0, where the reference
  divides 0 by 0;
* plain LDA's within covariance has N - K degrees of freedom, as sklearn's svd solver had up to 1.8, with which
  the reference was published; sklearn 1.9 divides by N (its PR #33626), which multiplies seli by
  sqrt(N / (N - K)) and sharpens the posteriors a little. (Checked: with 1/N this module matches sklearn 1.9 to
  1e-12 on both paths; with N - K the eigen path still matches and seli differs by exactly that factor.)
* plain LDA drops within-class directions with variance below 1e-8 of the largest (a pseudo-inverse), where
  sklearn drops singular values below 1e-4 of the standardised data: the same unless features are degenerate.

Cost per expert: O(N D min(N, D) + min(N, D)^3) for the PCA, then O(N P^2 + P^3 + N K^2) (N = 600, D = 1280,
K = 10: about 0.1 s single-threaded). Invariant to rescaling the features once s >= 23.03 (plain LDA and nuclear
norms of whitened quantities); below that the shrinkage lam = exp(-s) depends on the scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.transferability import _labels, _matrix

PCA_DIMS = 64  # the reference's PCA size
SHRINK_DIMS = 32  # lam = exp(-sum of the top 32 explained variances)
MIN_SHRINKAGE = 1e-10  # at or below it the reference switches to plain (svd) LDA
_RANK_TOL = 1e-8  # eigenvalues below this fraction of the largest count as zero (plain LDA)


@dataclass(frozen=True)
class NCTITerms:
    """One expert's raw NCTI terms (see the module docstring) and the LDA shrinkage used (0: plain LDA)."""

    seli: float  # nuclear norm of the centred LDA projection: higher = better
    ncc: float  # mean LDA posterior of the true class: higher = better
    vc: float  # log of the summed per-class nuclear norms of the posteriors: lower = better
    shrinkage: float


def ncti_terms(features: np.ndarray, y: np.ndarray) -> NCTITerms:
    """The raw per-expert NCTI terms (PCA, LDA, then seli / ncc / vc). Shapes: features (N, D), y (N,) ints."""
    x = _matrix(features, "features")
    codes, k = _labels(y, x.shape[0])
    n = x.shape[0]
    if n <= k:
        raise TaskregError(f"NCTI needs more samples than classes (its LDA), got N = {n} for {k} classes")
    scores, variances = _pca(x, min(PCA_DIMS, x.shape[1], n - 1))
    s = float(variances[:SHRINK_DIMS].sum())
    lam = float(np.exp(-s))
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    priors = counts / n
    means = np.zeros((k, scores.shape[1]))
    np.add.at(means, codes, scores)
    means /= counts[:, None]
    within = scores - means[codes]
    scatter = within.T @ within  # N S_W
    if np.trace(scatter) <= 0.0:
        raise TaskregError("NCTI needs within-class variation: every class's features are a single point")
    centred_means = means - priors @ means
    if lam > MIN_SHRINKAGE:  # sklearn's eigen solver with shrinkage lam
        dims = scores.shape[1]
        sw = scatter / n
        sw = (1.0 - lam) * sw + lam * np.trace(sw) / dims * np.eye(dims)
        st = scores.T @ scores / n  # the PCA scores are centred
        st = (1.0 - lam) * st + lam * np.trace(st) / dims * np.eye(dims)
        whiten = _whitening(sw, tol=0.0)
        between = st - sw
        keep_zero = True
    else:  # sklearn's svd solver: no shrinkage, within covariance with N - K degrees of freedom
        lam = 0.0
        whiten = _whitening(scatter / (n - k), tol=_RANK_TOL)
        between = (centred_means * priors[:, None]).T @ centred_means
        keep_zero = False
    e, u = np.linalg.eigh(whiten.T @ between @ whiten)
    order = np.argsort(e)[::-1][: min(k - 1, whiten.shape[1])]
    if not keep_zero:
        order = order[e[order] > _RANK_TOL * max(float(e.max()), 0.0)]
    directions = whiten @ u[:, order]
    z = scores @ directions
    z -= z.mean(axis=0)
    seli = float(np.linalg.svd(z, compute_uv=False).sum()) if z.shape[1] else 0.0
    # LDA posteriors: Gaussian classes with the shared within covariance (identity in whitened coordinates)
    w, m = scores @ whiten, means @ whiten
    logits = w @ m.T - 0.5 * (m * m).sum(axis=1) + np.log(priors)
    logits -= logits.max(axis=1, keepdims=True)
    post = np.exp(logits)
    post /= post.sum(axis=1, keepdims=True)
    ncc = float(post[np.arange(n), codes].mean())
    nuclear = sum(float(np.linalg.svd(post[codes == c], compute_uv=False).sum()) for c in range(k))
    return NCTITerms(seli, ncc, float(np.log(nuclear)), lam)


def ncti_pool(terms: Sequence[NCTITerms]) -> list[float]:
    """NCTI of each expert in a pool from their raw terms: seli' + ncc' - vc', each term min-max normalised
    over the pool (a term equal for every expert contributes 0). Higher = better."""
    if not terms:
        return []

    def normalised(values: list[float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        spread = float(v.max() - v.min())
        return (v - v.min()) / spread if spread > 0 else np.zeros_like(v)

    total = (normalised([t.seli for t in terms]) + normalised([t.ncc for t in terms])
             - normalised([t.vc for t in terms]))
    return [float(v) for v in total]


def ncti(features: Sequence[np.ndarray], y: np.ndarray) -> list[float]:
    """NCTI scores of a pool of experts: ``features[j]`` (N, D_j) is expert j's features on the same query
    whose labels are y (N,). Returns one score per expert, higher = better (see :func:`ncti_pool`)."""
    return ncti_pool([ncti_terms(f, y) for f in features])


def _pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred PCA scores (N, dims) and the explained variances (dims,), descending, 1/(N - 1)."""
    n, d = x.shape
    c = x - x.mean(axis=0)
    if n <= d:
        g, u = np.linalg.eigh(c @ c.T)
        top = np.argsort(g)[::-1][:dims]
        g = np.clip(g[top], 0.0, None)
        return u[:, top] * np.sqrt(g), g / (n - 1)
    g, v = np.linalg.eigh(c.T @ c)
    top = np.argsort(g)[::-1][:dims]
    return c @ v[:, top], np.clip(g[top], 0.0, None) / (n - 1)


def _whitening(cov: np.ndarray, tol: float) -> np.ndarray:
    """W (P, r) with W^T cov W = I on the directions whose eigenvalue exceeds tol * the largest (a pseudo-inverse
    square root when tol > 0)."""
    e, q = np.linalg.eigh(cov)
    keep = e > tol * max(float(e.max()), 0.0)
    if not keep.any() or not np.all(e[keep] > 0.0):
        raise TaskregError("NCTI's within-class covariance is singular")
    return q[:, keep] / np.sqrt(e[keep])
