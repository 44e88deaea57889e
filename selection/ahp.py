"""Ordinal normalisation of transfer results with the Analytic Hierarchy Process (Taskonomy Sec. 3.3).

For one target t, the candidate sources (first- or higher-order source sets, and ``self``) play a
tournament on a held-out test set: W[i, j] is the fraction of test images on which source i's
transfer to t was better than source j's. AHP turns W into one affinity per source:

1. clip W to [0.001, 0.999] (Laplace smoothing, so no ratio is 0 or infinite);
2. W' = W / W^T elementwise: how many times more often i wins than j (positive reciprocal matrix);
3. the affinity vector is the principal (Perron) eigenvector of W', scaled to sum to 1.

W' is strictly positive, so by Perron-Frobenius its largest-modulus eigenvalue is real, simple and
has a strictly positive eigenvector. W' is not symmetric, so we use the general eigen-solver
(``numpy.linalg.eig``) and pick the eigenvalue with the largest real part; :func:`ahp_power_iteration`
is an independent reference. If W' is *consistent* (w'_ij = v_i / v_j for some v), the result is
exactly v / sum(v).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.affinity_sets import TASKONOMY_SOURCE_ONLY, AffinitySet, Transfer

CLIP_LOW = 0.001
CLIP_HIGH = 0.999


def _check_win_matrix(W: np.ndarray, name: str = "W") -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise TaskregError(f"{name} must be a square (n, n) win-fraction matrix, got shape {W.shape}")
    if W.shape[0] == 0:
        raise TaskregError(f"{name} is empty: a tournament needs at least one source")
    if not np.all(np.isfinite(W)):
        raise TaskregError(f"{name} contains NaN or infinite values")
    if W.min() < 0.0 or W.max() > 1.0:
        raise TaskregError(f"{name} must hold fractions in [0, 1], got range [{W.min():.4g}, {W.max():.4g}]")
    return W


def ratio_matrix(W: np.ndarray) -> np.ndarray:
    """The tournament ratio matrix W' = clip(W) / clip(W)^T.

    W : (n, n) float, W[i, j] = fraction of images on which source i beats source j.
    Returns (n, n) float64, positive reciprocal (W'[i, j] * W'[j, i] = 1), diagonal exactly 1.
    """
    Wc = np.clip(_check_win_matrix(W), CLIP_LOW, CLIP_HIGH)
    R = Wc / Wc.T
    np.fill_diagonal(R, 1.0)
    return R


def _normalise_positive(v: np.ndarray) -> np.ndarray:
    v = np.real(v).astype(np.float64)
    v = v * np.sign(v.sum()) if v.sum() != 0 else np.abs(v)
    v = np.clip(v, 0.0, None)  # round-off can leave -1e-17 on a Perron vector; it is positive in theory
    total = v.sum()
    if not np.isfinite(total) or total <= 0:
        raise ArithmeticError("AHP eigenvector has no positive mass (should not happen for a positive matrix)")
    return v / total


def ahp_affinities(W: np.ndarray) -> np.ndarray:
    """AHP affinities of the n sources of one target.

    W : (n, n) float in [0, 1], W[i, j] = fraction of test images on which source i beat source j
        (the diagonal is ignored).
    Returns p : (n,) float64, strictly positive, sums to 1; p[i] is source i's affinity.
    """
    R = ratio_matrix(W)
    n = R.shape[0]
    if n == 1:
        return np.ones(1)
    eigvals, eigvecs = np.linalg.eig(R)
    k = int(np.argmax(eigvals.real))
    return _normalise_positive(eigvecs[:, k])


def ahp_power_iteration(W: np.ndarray, tol: float = 1e-12, max_iter: int = 10_000) -> np.ndarray:
    """Reference implementation of :func:`ahp_affinities` by power iteration on W'.

    W : (n, n) win fractions. Returns p : (n,) positive, sums to 1. Raises ArithmeticError if it has not
    converged (L1 change < ``tol``) after ``max_iter`` steps; for a positive matrix it always converges.
    """
    R = ratio_matrix(W)
    v = np.full(R.shape[0], 1.0 / R.shape[0])
    for _ in range(max_iter):
        nxt = R @ v
        nxt /= nxt.sum()
        if np.abs(nxt - v).sum() < tol:
            return nxt
        v = nxt
    raise ArithmeticError(f"power iteration did not converge in {max_iter} steps")


def winrate_matrix_from_losses(losses: np.ndarray) -> np.ndarray:
    """Pairwise tournament matrix from per-image losses (lower is better).

    losses : (n_sources, n_images) float, losses[i, k] = loss of source i's transfer on test image k.
    Returns W : (n_sources, n_sources) float64 with W[i, j] = (#images where loss_i < loss_j
    + 0.5 * #images where loss_i == loss_j) / n_images. Hence W + W^T = 1 and the diagonal is 0.5.
    """
    L = np.asarray(losses, dtype=np.float64)
    if L.ndim != 2:
        raise TaskregError(f"losses must have shape (n_sources, n_images), got {L.shape}")
    if L.shape[0] == 0 or L.shape[1] == 0:
        raise TaskregError(f"losses must have at least one source and one image, got shape {L.shape}")
    if not np.all(np.isfinite(L)):
        raise TaskregError("losses contain NaN or infinite values")
    n_img = L.shape[1]
    less = (L[:, None, :] < L[None, :, :]).sum(axis=2)
    equal = (L[:, None, :] == L[None, :, :]).sum(axis=2)
    return (less + 0.5 * equal) / n_img


def ahp_from_winrates(
    sources: Sequence[str], wins: Mapping[tuple[str, str], float]
) -> dict[str, float]:
    """AHP affinities for one target from a pairwise win table.

    sources : the n competing source names (e.g. "edge3d", "curvature edge3d", "self").
    wins : {(a, b): fraction of images on which a beat b}. If only one of (a, b) / (b, a) is given
        the other is taken as 1 - value (no ties); a pair with neither direction is an error.
    Returns {source: affinity}, positive, summing to 1.
    """
    names = list(sources)
    if len(set(names)) != len(names):
        raise TaskregError("sources contains duplicates")
    known = set(names)
    for a, b in wins:
        if a not in known or b not in known:
            raise TaskregError(f"win table pair ({a}, {b}) names a source not in the sources list")
    n = len(names)
    W = np.full((n, n), 0.5)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            if (a, b) in wins:
                W[i, j] = float(wins[(a, b)])
            elif (b, a) in wins:
                W[i, j] = 1.0 - float(wins[(b, a)])
            else:
                raise TaskregError(f"win table has no result for the pair ({a}, {b})")
    p = ahp_affinities(W)
    return {name: float(v) for name, v in zip(names, p, strict=True)}


@dataclass
class Tournament:
    """The pairwise tournament among the candidate sources of one target.

    options : n source sets (each a tuple of task names, or ``("self",)``).
    wins : (n, n) float, wins[i, j] = fraction of test images on which options[i] beat options[j].
    """

    target: str
    options: list[tuple[str, ...]]
    wins: np.ndarray


def ahp_affinity_set(
    tournaments: Sequence[Tournament], name: str, source_only: Sequence[str] = TASKONOMY_SOURCE_ONLY
) -> AffinitySet:
    """Normalise every target's tournament with AHP and collect the affinities into an AffinitySet."""
    transfers: list[Transfer] = []
    seen_targets: set[str] = set()
    for t in tournaments:
        if t.target in seen_targets:
            raise TaskregError(f"two tournaments for target '{t.target}'")
        seen_targets.add(t.target)
        W = _check_win_matrix(t.wins, name=f"wins of target '{t.target}'")
        if W.shape[0] != len(t.options):
            raise TaskregError(
                f"target '{t.target}': {len(t.options)} options but wins has shape {W.shape}"
            )
        keys = [tuple(sorted(o)) for o in t.options]
        if len(set(keys)) != len(keys):
            raise TaskregError(f"target '{t.target}': duplicate source sets among its options")
        p = ahp_affinities(W)
        transfers.extend(
            Transfer(sources=k, target=t.target, order=len(k), value=float(v))
            for k, v in zip(keys, p, strict=True)
        )
    return AffinitySet(name=name, transfers=transfers, source_only=tuple(source_only))
