"""Transferability baselines: score how well a pre-trained expert will transfer to a labelled query task
*without* training on it, from the expert's frozen features or its own head's predictions.

All scores are "higher = better". Each is written from the formulas in its paper:

* :func:`logme` — You, Liu, Wang, Long. "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021 (Algorithm 1 and Sect. 4.2).
* :func:`leep` — Nguyen, Hassner, Seeger, Archambeau. "LEEP: A New Measure to Evaluate Transferability of
  Learned Representations", ICML 2020 (Eq. 1-2).
* :func:`nce` — Tran, Nguyen, Hassner. "Transferability and Hardness of Supervised Classification Tasks",
  ICCV 2019 (Sect. 3, negative conditional entropy).
* :func:`hscore` — Bao, Li, Huang, Wang, Zheng. "An Information-Theoretic Approach to Transferability in
  Task Transfer Learning", ICIP 2019 (Definition 2).

Labels may be any integers; they are mapped to 0..K-1 internally. Every function validates its inputs
(shapes, NaN/inf, at least two classes) and raises :class:`~taskreg.errors.TaskregError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from taskreg.errors import TaskregError

_TINY = 1e-300  # floor inside logarithms of probabilities


# --------------------------------------------------------------------------------------------- checks
def _labels(y: np.ndarray, n: int, name: str = "y") -> tuple[np.ndarray, int]:
    """Validate (N,) integer labels; return codes 0..K-1 and K (>= 2)."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise TaskregError(f"{name} must have shape ({n},) to match the other input, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TaskregError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    classes, codes = np.unique(y, return_inverse=True)
    if name == "y" and classes.size < 2:
        raise TaskregError(f"{name} must contain at least 2 classes, got {classes.size}")
    return codes.reshape(-1), int(classes.size)


def _matrix(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise TaskregError(f"{name} must be a non-empty (N, D) array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise TaskregError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise TaskregError(f"{name} contains NaN or infinite values")
    return a


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, Z) logits (max-subtracted, so it never overflows) -> (N, Z) float64."""
    logits = _matrix(logits, "logits")
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- LogME
@dataclass(frozen=True)
class LogMEFit:
    """Evidence maximisation for one target column: the converged prior/noise precisions."""

    log_evidence_per_sample: float  # log p(y | F, alpha, beta) / N at the fixed point
    alpha: float  # prior precision of the weights
    beta: float  # noise precision
    iterations: int


def logme_fit(
    features: np.ndarray, target: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6
) -> LogMEFit:
    """Maximise the Bayesian linear-regression evidence of one real target (You et al. 2021, Alg. 1).

    Model: ``y = F w + eps``, ``w ~ N(0, alpha^-1 I_D)``, ``eps ~ N(0, beta^-1 I_N)``. Its log evidence is

        L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2pi
                         - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log det A,
        A = alpha I + beta F^T F,   m = beta A^-1 F^T y,

    maximised by the MacKay fixed point ``gamma = sum_i beta s_i / (alpha + beta s_i)``,
    ``alpha = gamma / ||m||^2``, ``beta = (N - gamma) / ||F m - y||^2`` where ``s_i`` are the eigenvalues
    of F^T F. With the thin SVD ``F = U diag(sigma) V^T`` (r = min(N, D) singular values, so
    ``s_i = sigma_i^2`` plus D - r zeros) and ``z = U^T y``, every term is a sum over r values, so each
    iteration costs O(r) after one O(N D r) decomposition (SVD of F if N <= D, else eigh of F^T F).

    Parameters
    ----------
    features : (N, D) float.
    target : (N,) float (a one-hot class indicator in :func:`logme`).
    max_iter, tol : stop when alpha and beta change by less than ``tol`` (relative) or after max_iter.
        With N > D the iteration converges in tens of steps. With N < D the evidence is flat and the
        fixed point crawls; after ``max_iter`` steps the per-sample evidence is within ~1e-3 of the
        maximum in our checks (the paper's reference implementation stops after 11 steps).
    """
    f = _matrix(features, "features")
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if t.shape[0] != f.shape[0]:
        raise TaskregError(f"target must have shape ({f.shape[0]},), got {np.shape(target)}")
    s, project = _spectrum(f)
    return _logme_fixed_point(s, project(t[:, None])[:, 0], float(t @ t), f.shape[0], f.shape[1], max_iter, tol)


def _spectrum(f: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Eigenvalues s (r,) of F^T F and a map t (N, K) -> U^T t (r, K), U the left singular vectors.

    N <= D: eigen-decomposition of the N x N Gram matrix F F^T, whose eigenvectors are U (the thin SVD
    computes V^T as well, which LogME never uses: 5-8x the time at N = 800, D = 1,280). N > D: of the D x D
    Gram matrix F^T F, with ``U^T t = diag(1/sigma) V^T F^T t``; directions with (numerically) zero
    eigenvalue get s = 0 and z = 0, which is what the SVD form gives for them after the fact
    (they fall into the part of t that F cannot fit).
    """
    n, d = f.shape
    if n <= d:
        s, u = np.linalg.eigh(f @ f.T)
        s = np.clip(s, 0.0, None)
        return s, lambda t: u.T @ t
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0.0, None)
    keep = s > 1e-12 * max(float(s.max()), 1e-300)
    s = np.where(keep, s, 0.0)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, s, 1.0)), 0.0)
    return s, lambda t: scale[:, None] * (v.T @ (f.T @ t))


def _logme_fixed_point(
    s: np.ndarray, z: np.ndarray, y_norm2: float, n: int, d: int, max_iter: int, tol: float
) -> LogMEFit:
    """The fixed-point iteration in the SVD basis (see :func:`logme_fit`); s = sigma^2, z = U^T y."""
    z2 = z * z
    outside = max(y_norm2 - float(z2.sum()), 0.0)  # ||y||^2 - ||U^T y||^2: the part F cannot fit
    alpha, beta = 1.0, 1.0
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        denom = alpha + beta * s
        gamma = float((beta * s / denom).sum())
        m2 = float((beta**2 * s * z2 / denom**2).sum())  # ||m||^2
        res2 = float((alpha**2 * z2 / denom**2).sum()) + outside  # ||F m - y||^2
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        # keep the precisions in a range where float64 is meaningful (perfect or useless features)
        new_alpha = float(np.clip(new_alpha, 1e-12, 1e12))
        new_beta = float(np.clip(new_beta, 1e-12, 1e12))
        converged = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    denom = alpha + beta * s
    m2 = float((beta**2 * s * z2 / denom**2).sum())
    res2 = float((alpha**2 * z2 / denom**2).sum()) + outside
    log_det_a = float(np.log(denom).sum()) + (d - s.size) * np.log(alpha)
    evidence = (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * np.log(2 * np.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * log_det_a
    )
    return LogMEFit(float(evidence) / n, alpha, beta, iterations)


def logme(features: np.ndarray, y: np.ndarray) -> float:
    """LogME score (You et al. 2021): mean over classes of the maximum log evidence per sample.

    For each class k the target is the one-hot column ``[y_i == k]``; its evidence is maximised over
    (alpha, beta) by :func:`logme_fit`; the score is the mean over the K classes of
    ``max log p(y_k | F) / N``. Higher = better. Features are used as given (no standardisation),
    like the paper. One decomposition of F is shared by all classes.

    features : (N, D) float; y : (N,) integer labels with at least 2 classes.
    """
    f = _matrix(features, "features")
    codes, k = _labels(y, f.shape[0])
    s, project = _spectrum(f)
    onehot = np.eye(k)[codes]  # (N, K)
    z = project(onehot)  # (r, K)
    scores = []
    for c in range(k):
        fit = _logme_fixed_point(s, z[:, c], float(onehot[:, c].sum()), f.shape[0], f.shape[1], 100, 1e-6)
        scores.append(fit.log_evidence_per_sample)
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------- LEEP / NCE
def leep(source_probs: np.ndarray, y: np.ndarray) -> float:
    """LEEP (Nguyen et al. 2020): log expected empirical prediction of the source head. Higher = better.

    With theta(x_i) the source model's softmax over its Z labels:

        P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z,   P(y | z) = P(y, z) / sum_y' P(y', z),
        LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z.

    A source label z that no sample puts mass on has P(z) = 0 and contributes nothing.
    LEEP <= 0; it is 0 when the source head determines the target label.

    source_probs : (N, Z) probabilities, rows summing to 1 (use :func:`softmax` on logits).
    y : (N,) integer target labels, at least 2 classes.
    """
    theta = _matrix(source_probs, "source_probs")
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise TaskregError("source_probs must be probabilities (rows >= 0 summing to 1); apply softmax()")
    codes, k = _labels(y, theta.shape[0])
    n = theta.shape[0]
    joint = np.zeros((k, theta.shape[1]))
    np.add.at(joint, codes, theta)
    joint /= n
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = (theta * conditional[codes]).sum(axis=1)  # sum_z P(y_i|z) theta_iz, > 0 for every i
    return float(np.log(np.maximum(expected, _TINY)).mean())


def nce(source_labels: np.ndarray, y: np.ndarray) -> float:
    """Negative conditional entropy -H(Y | Z) (Tran et al. 2019). Higher = better, always <= 0.

    Z are the source head's hard predictions (argmax of :func:`~taskreg.trainers.experts.expert_logits`)
    on the query images, Y the query labels; from the empirical joint P(y, z):

        -H(Y | Z) = sum_{y, z} P(y, z) log P(y, z) / P(z)      (0 log 0 = 0).

    source_labels : (N,) integer source predictions; y : (N,) integer target labels, >= 2 classes.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise TaskregError(f"y must be 1-D, got shape {y.shape}")
    z_codes, z_count = _labels(source_labels, y.shape[0], name="source_labels")
    codes, k = _labels(y, z_codes.shape[0])
    joint = np.zeros((k, z_count))
    np.add.at(joint, (codes, z_codes), 1.0)
    joint /= codes.shape[0]
    conditional = joint / joint.sum(axis=0, keepdims=True)  # every column is a seen z, so P(z) > 0
    nonzero = joint > 0
    return float((joint[nonzero] * np.log(conditional[nonzero])).sum())


# -------------------------------------------------------------------------------------------- H-score
def hscore(features: np.ndarray, y: np.ndarray, *, rcond: float = 1e-10) -> float:
    """H-score (Bao et al. 2019): ``tr(cov(f)^+ cov(E[f | y]))``. Higher = better.

    ``cov(f)`` is the (population, 1/N) feature covariance and ``cov(E[f | y]) = sum_y P(y)
    (mu_y - mu)(mu_y - mu)^T`` the between-class covariance of the class means. ``cov(f)^+`` is the
    **Moore-Penrose pseudo-inverse** (no shrinkage): eigenvalues below ``rcond * largest eigenvalue``
    are treated as zero, so constant or collinear features and D > N are handled. The score lies in
    [0, min(D, K - 1)] (it is the sum of squared canonical correlations between f and one-hot y).

    features : (N, D) float; y : (N,) integer labels with at least 2 classes.
    """
    f = _matrix(features, "features")
    codes, k = _labels(y, f.shape[0])
    f = f - f.mean(axis=0)
    n = f.shape[0]
    cov_f = f.T @ f / n
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums = np.zeros((k, f.shape[1]))
    np.add.at(sums, codes, f)
    means = sums / counts[:, None]  # every class has >= 1 sample; already centred by the global mean
    cov_g = (means * (counts / n)[:, None]).T @ means
    eigval, eigvec = np.linalg.eigh(cov_f)
    keep = eigval > rcond * max(float(eigval.max()), 0.0)
    if not keep.any():
        return 0.0  # all features constant: no information about y
    inv = (eigvec[:, keep] / eigval[keep]) @ eigvec[:, keep].T
    return float(np.trace(inv @ cov_g))
