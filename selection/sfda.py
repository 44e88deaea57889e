"""SFDA: Self-challenging Fisher Discriminant Analysis, a transferability score from an expert's features.

Shao, Zhao, Ge, Zhang, Yang, Wang, Shan, Luo. "Not All Models Are Equal: Predicting Model Transferability in a
Self-challenging Fisher Space", ECCV 2022 (reference code: github.com/TencentARC/SFDA, ``metrics.SFDA_Score``).

With features X (N, D), labels y (N,) in K >= 2 classes, class priors pi_k = N_k / N and class means mu_k:

1. Regularised Fisher space. Within-class scatter S_W = sum_k pi_k Cov_k (population covariances, 1/N_k), and

       S_W(lam) = (1 - lam) S_W + lam (tr S_W / D) I,     lam = max(exp(-5 sigma), 1e-10),

   sigma the largest eigenvalue of S_W (three power-iteration steps from the row sums of S_W, as the reference
   does). The Fisher directions V solve S_B v = e S_W(lam) v with V^T S_W(lam) V = I, where the reference takes
   S_B = St(lam) - S_W(lam), St(lam) the total covariance shrunk the same way.
2. Bayes classifier in the Fisher space (projected means V^T mu_k, identity covariance there):

       log p(k | x) = (V^T x).(V^T mu_k) - |V^T mu_k|^2 / 2 + log pi_k  - log Z(x).

3. Self-challenge (ConfMix). Soften the posteriors once more, q_i = softmax_k(p(k | x_i)) (a softmax of the
   probabilities themselves), and pull each sample towards the mean of the *other* classes' means,

       x_i' = q_i x_i + (1 - q_i) mubar_{y_i},   q_i = q_i[y_i],   mubar_k = (sum_j mu_j - mu_k) / (K - 1).

   So the mixing weight lambda_i of the reference is the softened probability of the true class: a sample the
   classifier is unsure about moves further towards the confusing classes.
4. Refit steps 1-2 on X' with the SAME lam (the reference passes the first fit's shrinkage on) and score

       SFDA = 1/N sum_i p'(y_i | x_i')        in (0, 1], higher = better.

Where this follows the reference code rather than the paper's text (the reference's published behaviour):

* the score is the mean posterior of the true class, without the paper's logarithm (the reference drops it
  "in case of instability");
* the shrinkage target is (tr S_W / D) I (sklearn's), the constant in exp(-5 sigma) is 5, the floor is 1e-10
  and sigma is the reference's 3-step power-iteration estimate, not the exact eigenvalue;
* the classifier uses ALL D Fisher directions (the reference's ``coef_ = means V V^T``), not only the top K - 1.
  Then V V^T = S_W(lam)^-1 whatever S_B is, so the classifier is linear discriminant analysis with the shrunk
  covariance; this module computes it in whitened coordinates (one eigen-decomposition of the N x N or D x D
  scatter, whichever is smaller) instead of a D x D generalised eigenproblem: the same posteriors, 5-10x faster.

Cost: O(N D min(N, D) + min(N, D)^3) for each of the two fits (N = 600, D = 1280: about 0.5 s single-threaded).
Not invariant to the scale of the features: lam depends on sigma. Once lam is at its floor (sigma >= 4.6) a
rescaling changes nothing but rounding, as LDA is scale-invariant. With N - K < D the within-class scatter is
singular and, at the floor, the classifier separates the training points almost perfectly, so SFDA saturates
near 1 for every expert (the paper's targets had N >> D).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.transferability import _labels, _matrix

A_CONSTANT = 5.0  # lam = exp(-A sigma) (the reference's constant)
MIN_SHRINKAGE = 1e-10  # the reference's floor on lam
POWER_STEPS = 3  # the reference's power-iteration steps for sigma


def largest_eigenvalue_estimate(a: np.ndarray, steps: int = POWER_STEPS) -> float:
    """The reference's estimate of the largest eigenvalue of a symmetric PSD matrix ``a`` (D, D).

    Start from the row sums ``x = a 1``; repeat ``steps`` times ``y = a x / |a x|``, ``x = a y / |a y|``; return
    ``x^T a y``. Exact when ``a 1`` is an eigenvector. A start at zero (row sums cancelling) restarts from e_1.
    """
    return _power_estimate(lambda v: a @ v, a.shape[0], steps)


def _power_estimate(apply: Callable[[np.ndarray], np.ndarray], d: int, steps: int) -> float:
    x = apply(np.ones(d))
    if not np.any(x):
        x = np.zeros(d)
        x[0] = 1.0
    y = x
    for _ in range(steps):
        t = apply(x)
        norm = float(np.linalg.norm(t))
        if norm == 0.0:
            return 0.0
        y = t / norm
        t = apply(y)
        x = t / float(np.linalg.norm(t))
    return float(x @ apply(y))


def sfda(features: np.ndarray, y: np.ndarray, *, shrinkage: float | None = None) -> float:
    """SFDA score (Shao et al. 2022, as the reference code computes it; see the module docstring).

    features : (N, D) float; y : (N,) integer labels with at least 2 classes.
    shrinkage : lam in [0, 1]; None (default) picks it from the features, ``max(exp(-5 sigma), 1e-10)``.
    Returns the mean posterior of the true class after the self-challenge, in (0, 1]; higher = better.
    """
    x = _matrix(features, "features")
    codes, k = _labels(y, x.shape[0])
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise TaskregError(f"shrinkage must be in [0, 1], got {shrinkage}")
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    log_priors = np.log(counts / x.shape[0])
    probs, lam = _fit_posteriors(x, codes, k, counts, log_priors, shrinkage)
    soft = np.exp(probs - probs.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    weight = soft[np.arange(x.shape[0]), codes][:, None]  # the softened probability of the true class
    means = _class_means(x, codes, k, counts)
    outer = (means.sum(axis=0) - means) / (k - 1)  # row k: the mean of the other classes' means
    mixed = weight * x + (1.0 - weight) * outer[codes]
    probs, _ = _fit_posteriors(mixed, codes, k, counts, log_priors, lam)
    return float(probs[np.arange(x.shape[0]), codes].mean())


def _class_means(x: np.ndarray, codes: np.ndarray, k: int, counts: np.ndarray) -> np.ndarray:
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, codes, x)
    return sums / counts[:, None]


def _fit_posteriors(x: np.ndarray, codes: np.ndarray, k: int, counts: np.ndarray, log_priors: np.ndarray,
                    shrinkage: float | None) -> tuple[np.ndarray, float]:
    """Posteriors p(k | x_i) (N, K) of the Bayes classifier in the regularised Fisher space, and the lam used."""
    n, d = x.shape
    means = _class_means(x, codes, k, counts)
    within = x - means[codes]  # rows centred on their class mean: S_W = within^T within / N
    trace = float((within * within).sum()) / n  # tr S_W
    if trace <= 0.0:
        raise TaskregError("SFDA needs within-class variation: every class's features are a single point")
    # S_W = basis diag(s) basis^T on its range (basis (D, r) orthonormal), from the smaller of the two Gram matrices
    if n < d:
        g, u = np.linalg.eigh(within @ within.T)
        keep = g > 1e-12 * g.max()
        basis = within.T @ (u[:, keep] / np.sqrt(g[keep]))
        s = g[keep] / n
    else:
        s, basis = np.linalg.eigh(within.T @ within / n)
        s = np.clip(s, 0.0, None)
    if shrinkage is None:
        sigma = _power_estimate(lambda v: basis @ (s * (basis.T @ v)), d, POWER_STEPS)  # S_W v, S_W not formed
        shrinkage = max(float(np.exp(-A_CONSTANT * sigma)), MIN_SHRINKAGE)
    floor = shrinkage * trace / d  # the eigenvalue of S_W(lam) off the range of S_W
    shrunk = (1.0 - shrinkage) * s + floor
    if not np.all(shrunk > 0.0):
        raise TaskregError("SFDA's within-class scatter is singular (shrinkage 0 with rank-deficient features)")

    def whiten(a: np.ndarray) -> np.ndarray:  # a (M, D) -> coordinates where S_W(lam) is the identity
        on_range = a @ basis
        parts = [on_range / np.sqrt(shrunk)]
        if basis.shape[1] < d:
            parts.append((a - on_range @ basis.T) / np.sqrt(floor))
        return np.hstack(parts)

    z, m = whiten(x), whiten(means)
    logits = z @ m.T - 0.5 * (m * m).sum(axis=1) + log_priors
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), shrinkage

