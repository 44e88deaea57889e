"""Issue 15 scores ETran, leave-one-out k-NN, TransRate and GBC against direct, hand-checkable computations
of their papers' formulas (plain loops, explicit determinants), plus properties that can fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskreg.selection.etran import etran, etran_classification, etran_energy, etran_relative
from taskreg.selection.gbc import gbc
from taskreg.selection.knn import knn_accuracy
from taskreg.selection.transrate import transrate


def _blobs(separation: float, seed: int = 0, n_per: int = 20, d: int = 3, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """k Gaussian classes in d dims whose means lie ``separation`` apart along the first k axes."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    means = np.zeros((k, d))
    means[np.arange(k), np.arange(k) % d] = separation
    return means[y] + rng.standard_normal((k * n_per, d)), y


# ---------------------------------------------------------------------------------------------- ETran
def test_etran_energy_is_the_mean_of_the_lowest_logsumexp_values() -> None:
    f = np.array([[0.0, math.log(3)], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [5.0, -1.0], [-3.0, -3.0]])
    lse = [math.log(sum(math.exp(v) for v in row)) for row in f]  # log 4, 1 + log 2, ..., -3 + log 2
    assert lse[0] == pytest.approx(math.log(4))
    # N = 6: floor(0.005 * 6) = 0 samples in the reference; we keep at least one, the lowest
    assert etran_energy(f) == pytest.approx(-3 + math.log(2))
    assert etran_energy(f, fraction=0.5) == pytest.approx(sum(sorted(lse)[:3]) / 3)
    assert etran_energy(f, fraction=1.0) == pytest.approx(sum(lse) / 6)
    big = np.random.default_rng(0).standard_normal((1000, 4))  # 0.5 % of 1,000 = the 5 lowest
    lse_big = np.sort(np.log(np.exp(big).sum(axis=1)))
    assert etran_energy(big) == pytest.approx(lse_big[:5].mean())
    # not invariant: the features are read as logits; adding c adds c, larger (ReLU) activations score higher
    assert etran_energy(f + 1.5) == pytest.approx(etran_energy(f) + 1.5)
    assert etran_energy(2 * (np.abs(f) + 0.5)) > etran_energy(np.abs(f) + 0.5)
    assert etran_energy(np.full((3, 2), 1000.0)) == pytest.approx(1000 + math.log(2))  # no overflow


def test_etran_classification_hand_computed_1d() -> None:
    f = np.array([[-1.0], [1.0], [3.0], [5.0]])  # class means 0 and 4, priors 1/2
    y = np.array([0, 0, 1, 1])

    def sigmoid(t: float) -> float:
        return 1 / (1 + math.exp(-t))

    # p(true class | x) = softmax(-|x - mu_c|^2 / 2): x = -1 -> sigma(12), x = 1 -> sigma(4), symmetric
    assert etran_classification(f, y) == pytest.approx((sigmoid(12) + sigmoid(4)) / 2)


def test_etran_classification_is_the_identity_covariance_posterior_and_what_the_reference_lda_computes() -> None:
    rng = np.random.default_rng(1)
    f = rng.standard_normal((12, 3)) * [1.0, 0.3, 2.0]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    n = len(y)
    # the Gaussian posterior with identity covariance, as squared distances, with plain loops
    means = [f[y == c].mean(axis=0) for c in range(3)]
    total = 0.0
    for i in range(n):
        logits = [-0.5 * sum((f[i, d] - means[c][d]) ** 2 for d in range(3)) + math.log((y == c).sum() / n)
                  for c in range(3)]
        top = max(logits)
        total += math.exp(logits[y[i]] - top) / sum(math.exp(v - top) for v in logits)
    assert etran_classification(f, y) == pytest.approx(total / n)
    # the reference's LDA: shrunk pooled within-class covariance, eigh(inv(Sw) @ Sb) (its lower triangle),
    # ALL D eigenvectors, weights means @ U @ U^T, intercept -diag(means W^T)/2 + log prior -> the same number
    priors = np.bincount(y) / n
    sw = sum(priors[c] * np.cov(f[y == c].T, bias=True) for c in range(3))
    shrink = max(math.exp(-5 * np.linalg.eigvalsh(sw).max()), 1e-10)
    shrunk = (1 - shrink) * sw + shrink * np.trace(sw) / 3 * np.eye(3)
    st = (1 - shrink) * np.cov(f.T, bias=True) + shrink * np.trace(np.cov(f.T, bias=True)) / 3 * np.eye(3)
    _, u = np.linalg.eigh(np.linalg.inv(shrunk) @ (st - shrunk))
    weights = np.array(means) @ u @ u.T
    logits = f @ weights.T - 0.5 * np.diag(np.array(means) @ weights.T) + np.log(priors)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert etran_classification(f, y) == pytest.approx(probs[np.arange(n), y].mean())


def test_etran_full_score_and_its_relative_form() -> None:
    f, y = _blobs(4.0)
    assert etran(f, y) == pytest.approx(etran_energy(f) + etran_classification(f, y))
    assert etran(f, y, fraction=0.5) == pytest.approx(etran_energy(f, fraction=0.5) + etran_classification(f, y))
    # better-separated classes score higher (same energy scale: the class structure decides)
    assert etran_classification(*_blobs(6.0)) > etran_classification(*_blobs(2.0)) > etran_classification(*_blobs(0.0))
    # the released code's combination over a candidate set: 0.15 minmax(energy) + 0.85 minmax(classification)
    np.testing.assert_allclose(etran_relative([1.0, 2.0, 3.0], [0.5, 0.5, 0.9]), [0.0, 0.075, 1.0])
    np.testing.assert_allclose(etran_relative([7.0, 7.0], [0.2, 0.6]), [0.0, 0.85])  # a constant term adds 0
    np.testing.assert_allclose(etran_relative([3.0], [0.4]), [0.0])
    np.testing.assert_allclose(etran_relative([1.0, 3.0], [0.9, 0.1], energy_weight=0.5), [0.5, 0.5])


# ---------------------------------------------------------------------------------------------- k-NN
def _knn_loops(f: np.ndarray, y: np.ndarray, k: int) -> float:
    """Leave-one-out k-NN written out: cosine, neighbours by (-similarity, index), votes, then tie rules."""
    n = len(y)
    unit = [row / np.linalg.norm(row) if np.linalg.norm(row) > 0 else row * 0 for row in f]
    correct = 0
    for i in range(n):
        sims = sorted((-float(unit[i] @ unit[j]), j) for j in range(n) if j != i)
        neighbours = [(-s, j) for s, j in sims[:k]]
        votes: dict[int, int] = {}
        total: dict[int, float] = {}
        for s, j in neighbours:
            votes[int(y[j])] = votes.get(int(y[j]), 0) + 1
            total[int(y[j])] = total.get(int(y[j]), 0.0) + s
        best = max(votes.values())
        tied = [c for c in votes if votes[c] == best]
        pred = sorted(tied, key=lambda c: (-total[c], c))[0]
        correct += pred == y[i]
    return correct / n


def test_knn_hand_computed_k1() -> None:
    # angles 0, 5.7, 90, 73.3 and 42 degrees; the last (class 0) is nearest to the 73.3-degree class-1 point
    f = np.array([[1.0, 0.0], [2.0, 0.2], [0.0, 1.0], [0.3, 1.0], [1.0, 0.9]])
    y = np.array([0, 0, 1, 1, 0])
    assert knn_accuracy(f, y, k=1) == pytest.approx(4 / 5)
    assert knn_accuracy(f, y, k=1) == _knn_loops(f, y, 1)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_knn_matches_loops_with_tied_similarities_and_votes(k: int) -> None:
    rng = np.random.default_rng(k)
    f = rng.integers(-2, 3, size=(30, 2)).astype(float)  # few distinct directions: many exact ties
    f[3] = 0.0  # a zero vector: similarity 0 to everything
    y = rng.integers(0, 3, size=30)
    expected = _knn_loops(f, y, k)
    assert knn_accuracy(f, y, k=k) == pytest.approx(expected)
    for block in (1, 7, 30):  # blocks of rows change nothing
        assert knn_accuracy(f, y, k=k, block=block) == pytest.approx(expected)


def test_knn_properties() -> None:
    f, y = _blobs(5.0, n_per=30)
    f = f + 1.0  # cosine needs the classes in different directions, not only at different distances
    base = knn_accuracy(f, y)
    scales = np.random.default_rng(3).uniform(0.1, 10, size=(len(y), 1))
    assert knn_accuracy(f * scales, y) == base  # invariant to scaling each sample's feature vector
    assert knn_accuracy(f[::-1], y[::-1]) == pytest.approx(base, abs=1 / len(y))  # order only breaks exact ties
    assert knn_accuracy(*_blobs(6.0, n_per=30)) > knn_accuracy(*_blobs(0.0, n_per=30))
    assert knn_accuracy(f, np.random.default_rng(4).permutation(y)) < base


# ------------------------------------------------------------------------------------------- TransRate
def _transrate_direct(f: np.ndarray, y: np.ndarray, eps: float) -> float:
    """The paper's printed code as explicit D x D log-determinants."""
    z = f - f.mean(axis=0)

    def rate(a: np.ndarray) -> float:
        n, d = a.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + a.T @ a / (n * eps))[1]

    classes = sorted(set(y.tolist()))
    return rate(z) - sum(rate(z[y == c]) for c in classes) / len(classes)


def test_transrate_hand_computed() -> None:
    f = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = np.array([0, 0, 1, 1])
    # Z^T Z = 2 I over 4 samples; each class: Z_c^T Z_c = diag(2, 0) over 2 samples
    for eps in (1.0, 1e-4):
        expected = math.log(1 + 1 / (2 * eps)) - 0.5 * math.log(1 + 1 / eps)
        assert transrate(f, y, eps=eps) == pytest.approx(expected)
    assert transrate(f, y) == pytest.approx(math.log(5001) - 0.5 * math.log(10001))


@pytest.mark.parametrize("n,d", [(12, 3), (9, 20)])  # N > D (D x D Gram) and N < D (N x N Gram)
def test_transrate_matches_direct_determinants(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    f = rng.standard_normal((n, d)) + 2.0
    y = np.arange(n) % 3
    for eps in (1e-4, 0.5):
        assert transrate(f, y, eps=eps) == pytest.approx(_transrate_direct(f, y, eps), rel=1e-9)


def test_transrate_properties() -> None:
    f, y = _blobs(5.0)
    base = transrate(f, y)
    assert transrate(f, (y + 1) % 3) == pytest.approx(base)  # label names do not matter
    assert transrate(f + 7.0, y) == pytest.approx(base)  # centred: translation invariant
    assert transrate(10 * f, y) != pytest.approx(base)  # eps is absolute: not scale invariant
    assert base > transrate(f, np.random.default_rng(5).permutation(y))  # labels that fit the features score higher
    assert transrate(*_blobs(6.0)) > transrate(*_blobs(1.0))


# ----------------------------------------------------------------------------------------------- GBC
def _gbc_loops(f: np.ndarray, y: np.ndarray, gaussian: str) -> float:
    """The reference's per-class statistics and pairwise Bhattacharyya coefficients, with plain loops."""
    classes = sorted(set(y.tolist()))
    stats = {}
    for c in classes:
        rows = f[y == c]
        mean = rows.mean(axis=0)
        var = np.maximum(((rows - mean) ** 2).mean(axis=0), 1e-4)
        stats[c] = (mean, np.array([var.mean()]) if gaussian == "spherical" else var)
    total = 0.0
    for a in classes:
        for b in classes:
            if a == b:
                continue
            (m1, v1), (m2, v2) = stats[a], stats[b]
            avg = (v1 + v2) / 2
            first = sum((m1[d] - m2[d]) ** 2 / (avg[0] if gaussian == "spherical" else avg[d])
                        for d in range(len(m1))) / 8
            second = sum(math.log(v) for v in avg) - 0.5 * sum(math.log(v) for v in v1) \
                - 0.5 * sum(math.log(v) for v in v2)
            total += math.exp(-(first + 0.5 * second))
    return -total


def test_gbc_hand_computed() -> None:
    f = np.array([[0.0, 0.0], [2.0, 2.0], [0.0, 3.0], [4.0, 5.0]])  # means (1, 1), (2, 4); variances (1, 1), (4, 1)
    y = np.array([0, 0, 1, 1])
    # diagonal: D_B = (1/2.5 + 9/1)/8 + (log 2.5 - log 4 / 2) / 2
    d_diag = (1 / 2.5 + 9) / 8 + 0.5 * (math.log(2.5) - 0.5 * math.log(4))
    assert gbc(f, y, gaussian="diagonal", pca_dim=None) == pytest.approx(-2 * math.exp(-d_diag))
    # spherical: s = 1 and 2.5, average 1.75; D_B = 10/1.75/8 + (log 1.75 - log 2.5 / 2) / 2 (the log term once)
    d_sph = 10 / 1.75 / 8 + 0.5 * (math.log(1.75) - 0.5 * math.log(2.5))
    assert gbc(f, y, pca_dim=None) == pytest.approx(-2 * math.exp(-d_sph))


@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
def test_gbc_matches_loops_and_pca_is_the_principal_projection(gaussian: str) -> None:
    rng = np.random.default_rng(7)
    f = rng.standard_normal((15, 5)) * [3.0, 2.0, 1.0, 0.5, 0.1]
    f[:, 4] = 1.5  # a constant dimension: the variance floor
    y = np.arange(15) % 3
    y[0] = 2  # unequal class sizes
    assert gbc(f, y, gaussian=gaussian, pca_dim=None) == pytest.approx(_gbc_loops(f, y, gaussian))  # type: ignore[arg-type]
    # PCA to 2 dims: project on the top eigenvectors of the covariance, computed independently with eigh
    centred = f - f.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    projected = centred @ vectors[:, ::-1][:, :2]
    assert gbc(f, y, gaussian=gaussian, pca_dim=2) == pytest.approx(_gbc_loops(projected, y, gaussian))  # type: ignore[arg-type]
    # the default PCA to 64 keeps all 5 dims (rotated): the spherical score is rotation-invariant
    if gaussian == "spherical":
        assert gbc(f, y) == pytest.approx(_gbc_loops(f, y, gaussian))


def test_gbc_properties() -> None:
    f, y = _blobs(4.0, d=6)
    rotation, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((6, 6)))
    for gaussian in ("spherical", "diagonal"):  # with PCA both are invariant to rotating and moving the features
        assert gbc(f @ rotation + 3.0, y, gaussian=gaussian) == pytest.approx(gbc(f, y, gaussian=gaussian))  # type: ignore[arg-type]
    assert gbc(*_blobs(6.0)) > gbc(*_blobs(2.0)) > gbc(*_blobs(0.0))
    assert gbc(*_blobs(0.0)) < 0 and gbc(*_blobs(40.0)) == pytest.approx(0.0, abs=1e-12)
    assert gbc(f, y) > gbc(f, np.random.default_rng(9).permutation(y))


def test_gbc_pca_with_fewer_samples_than_dimensions() -> None:
    rng = np.random.default_rng(10)
    f = rng.standard_normal((7, 12)) * np.linspace(3, 0.1, 12)
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    centred = f - f.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)  # projection on the top 3 directions: U S
    for gaussian in ("spherical", "diagonal"):
        assert gbc(f, y, gaussian=gaussian, pca_dim=3) == pytest.approx(  # type: ignore[arg-type]
            _gbc_loops(u[:, :3] * s[:3], y, gaussian))
    assert gbc(f, y) == pytest.approx(_gbc_loops(u * s, y, "spherical"))  # 64 > N: all 7 directions (one is ~0)
