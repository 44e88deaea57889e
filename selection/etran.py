"""ETran: energy-based transferability estimation.

Gholami, Akbari, Wang, Kamranian, Zhang. "ETran: Energy-Based Transferability Estimation", ICCV 2023
(arXiv 2308.02027); reference code github.com/mgholamikn/ETran (metrics.py, evaluate_metric.py, tw.py).

ETran scores an expert from its features on the labelled query with up to three terms: an energy score
(is the query in-distribution for the expert?), an LDA-based classification score and, for regression or
detection targets, an SVD-based regression score. A classification query has no regression target, so the
full score here is the energy term plus the classification term (the paper's classification setting).
All terms are "higher = better".

Energy term (label-free), :func:`etran_energy`. The features f(x) (N, D) are read as logits (T = 1):

    e_i = log sum_d exp(f_d(x_i))            (the negative free energy -E(x_i) of sample i)
    S_en = mean of the m smallest e_i,       m = max(1, floor(fraction * N)),  fraction = 0.005

The reference code (``Energy_Score(features, 0.5, 'bot')``) keeps the ``int(0.5 * 10) * N // 1000``
lowest energies, i.e. the 0.5 % least in-distribution samples, and averages them; we do the same
(with at least one sample, where the reference would average an empty set below N = 200).

Classification term, :func:`etran_classification`. The reference ``LDA`` class fits a shrunk LDA and
projects onto ``evecs`` from ``np.linalg.eigh(inv(S_w) @ S_b)``; it keeps **all** D eigenvectors, which
``eigh`` returns orthonormal, so its classifier weights ``means @ evecs @ evecs.T`` equal the class means
and the within-class scatter and shrinkage cancel. What it computes (and what gave the paper's
numbers) is therefore the Gaussian posterior with identity covariance::

    logit_ic = f(x_i) . mu_c - ||mu_c||^2 / 2 + log pi_c,     pi_c = N_c / N,  mu_c the class means,
    S_cls = 1/N sum_i softmax_c(logit_i)[y_i]                 (the mean probability of the true class)

We compute that closed form directly (following the reference's published behaviour, not the textbook
LDA the paper's text describes, because the reference is what the paper's numbers measure).

Full score: the paper sums the terms, T = S_en + S_cls (+ S_reg for detection): :func:`etran`.
The released code instead min-max normalises each term over the candidate models and weights them
0.15 / 0.85 (tw.py); that depends on the whole candidate set, so it is :func:`etran_relative`, for a
caller that has every expert's terms at once (the registry scores experts one at a time, so the "etran"
selector uses the per-expert sum).

Neither term is invariant to scaling the features (both read feature values as logits).
Cost: O(N D) for the energy term; O(N D K) for the classification term (K classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.transferability import _labels, _matrix

#: the reference code's fraction of lowest-energy samples averaged by the energy term (0.5 %)
ENERGY_FRACTION = 0.005
#: the reference code's weight of the min-max normalised energy term in the relative score (tw.py)
ENERGY_WEIGHT = 0.15


def _logsumexp_rows(f: np.ndarray) -> np.ndarray:
    top = f.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(f - top).sum(axis=1, keepdims=True))).reshape(-1)


def etran_energy(features: np.ndarray, *, fraction: float = ENERGY_FRACTION) -> float:
    """ETran's label-free energy term: the mean of the lowest ``fraction`` of per-sample logsumexp(features).

    features : (N, D) float. fraction : in (0, 1]; at least one sample is always kept. Higher = better.
    """
    f = _matrix(features, "features")
    if not 0.0 < fraction <= 1.0:
        raise TaskregError(f"fraction must be in (0, 1], got {fraction}")
    energy = _logsumexp_rows(f)
    m = max(1, int(np.floor(fraction * f.shape[0] + 1e-9)))
    return float(np.sort(energy)[:m].mean())


def etran_classification(features: np.ndarray, y: np.ndarray) -> float:
    """ETran's classification term as its reference code computes it (see the module docstring).

    The mean over samples of the identity-covariance Gaussian posterior of the true class. In [0, 1].
    features : (N, D) float; y : (N,) integer labels with at least 2 classes.
    """
    f = _matrix(features, "features")
    codes, k = _labels(y, f.shape[0])
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    sums = np.zeros((k, f.shape[1]))
    np.add.at(sums, codes, f)
    means = sums / counts[:, None]
    logits = f @ means.T - 0.5 * (means * means).sum(axis=1) + np.log(counts / f.shape[0])
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return float(probs[np.arange(f.shape[0]), codes].mean())


def etran(features: np.ndarray, y: np.ndarray, *, fraction: float = ENERGY_FRACTION) -> float:
    """ETran for classification, per expert: S_en + S_cls (the paper's sum). Higher = better.

    features : (N, D) float; y : (N,) integer labels with at least 2 classes.
    """
    return etran_energy(features, fraction=fraction) + etran_classification(features, y)


def etran_relative(energies: Sequence[float], classification: Sequence[float], *,
                   energy_weight: float = ENERGY_WEIGHT) -> np.ndarray:
    """The released code's combination over a candidate set: ``w minmax(S_en) + (1 - w) minmax(S_cls)``.

    energies, classification : (M,) the two terms of each of M candidate experts (same order).
    minmax(s) = (s - min s) / (max s - min s) over the M candidates; a term equal for every candidate
    contributes 0. Returns (M,) scores in [0, 1]; higher = better. The ranking depends on the set.
    """
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    c = np.asarray(classification, dtype=np.float64).reshape(-1)
    if e.shape != c.shape or e.size == 0:
        raise TaskregError(f"energies and classification must be two equal, non-empty lists, got {e.size} "
                           f"and {c.size}")
    if not (np.isfinite(e).all() and np.isfinite(c).all()):
        raise TaskregError("energies and classification must be finite")
    if not 0.0 <= energy_weight <= 1.0:
        raise TaskregError(f"energy_weight must be in [0, 1], got {energy_weight}")

    def minmax(s: np.ndarray) -> np.ndarray:
        span = float(s.max() - s.min())
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)

    return energy_weight * minmax(e) + (1.0 - energy_weight) * minmax(c)
