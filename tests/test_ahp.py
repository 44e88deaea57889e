from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

from taskreg.errors import TaskregError
from taskreg.selection.ahp import (
    Tournament,
    ahp_affinities,
    ahp_affinity_set,
    ahp_from_winrates,
    ahp_power_iteration,
    ratio_matrix,
    winrate_matrix_from_losses,
)


def _consistent_wins(v: np.ndarray) -> np.ndarray:
    """W[i, j] = v_i / (v_i + v_j), so W / W^T = v_i / v_j exactly (a consistent AHP matrix)."""
    return v[:, None] / (v[:, None] + v[None, :])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consistent_matrix_recovers_ratios(seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.uniform(1.0, 5.0, size=6)  # keeps W inside the clip range [0.001, 0.999]
    p = ahp_affinities(_consistent_wins(v))
    np.testing.assert_allclose(p, v / v.sum(), rtol=1e-10)
    np.testing.assert_allclose(p[:, None] / p[None, :], v[:, None] / v[None, :], rtol=1e-9)


def test_all_ties_give_uniform() -> None:
    np.testing.assert_allclose(ahp_affinities(np.full((5, 5), 0.5)), np.full(5, 0.2), rtol=1e-12)


def test_single_source() -> None:
    np.testing.assert_allclose(ahp_affinities(np.array([[0.0]])), [1.0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nonsymmetric_input_matches_power_iteration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 7
    W = rng.uniform(0.0, 1.0, size=(n, n))  # W + W^T != 1: ties / inconsistent results
    p = ahp_affinities(W)
    assert np.all(p > 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p, ahp_power_iteration(W), rtol=1e-8)
    # p is an eigenvector of W' with its largest eigenvalue (lambda_max >= n for a reciprocal matrix)
    R = ratio_matrix(W)
    lam = (R @ p) / p
    np.testing.assert_allclose(lam, lam[0], rtol=1e-8)
    assert lam[0] >= n - 1e-9


def test_clipping_of_zero_and_one() -> None:
    W = np.array([[0.5, 1.0, 1.0], [0.0, 0.5, 0.7], [0.0, 0.3, 0.5]])
    p = ahp_affinities(W)
    assert np.all(np.isfinite(p)) and np.all(p > 0)
    assert p.sum() == pytest.approx(1.0)
    assert np.argmax(p) == 0
    np.testing.assert_allclose(p, ahp_affinities(np.clip(W, 0.001, 0.999)), rtol=1e-12)
    R = ratio_matrix(W)
    assert R[0, 1] == pytest.approx(999.0) and R[1, 0] == pytest.approx(1 / 999.0)
    np.testing.assert_allclose(R * R.T, np.ones((3, 3)))


def test_winrate_matrix_from_losses_matches_loop() -> None:
    rng = np.random.default_rng(0)
    losses = rng.integers(0, 4, size=(5, 40)).astype(float)  # many ties
    W = winrate_matrix_from_losses(losses)
    ref = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            ref[i, j] = np.mean([1.0 if a < b else 0.5 if a == b else 0.0
                                 for a, b in zip(losses[i], losses[j], strict=True)])
    np.testing.assert_allclose(W, ref)
    np.testing.assert_allclose(W + W.T, np.ones((5, 5)))
    np.testing.assert_allclose(np.diag(W), 0.5)


def test_ahp_ranks_real_classifiers_by_per_image_loss() -> None:
    """Four classifiers on sklearn digits: the per-image cross-entropy tournament ranks them."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
    models = [
        LinearDiscriminantAnalysis(),
        KNeighborsClassifier(n_neighbors=5),
        GaussianNB(),
        DecisionTreeClassifier(max_depth=3, random_state=0),
    ]
    losses = []
    for m in models:
        prob = m.fit(Xtr, ytr).predict_proba(Xte)
        losses.append(-np.log(np.clip(prob[np.arange(len(yte)), yte], 1e-12, 1.0)))
    L = np.stack(losses)
    W = winrate_matrix_from_losses(L)
    p = ahp_affinities(W)
    assert p.sum() == pytest.approx(1.0)
    wins = W.sum(axis=1)  # total pairwise win mass per model (Borda-like)
    assert np.argmax(p) == np.argmax(wins)
    assert np.argmin(p) == np.argmin(wins)
    assert np.argmin(p) == 3  # the depth-3 tree is the worst of the four


def test_ahp_from_winrates_completes_missing_direction() -> None:
    names = ["edge3d", "curvature edge3d", "self"]
    wins = {("self", "edge3d"): 0.9, ("self", "curvature edge3d"): 0.8, ("curvature edge3d", "edge3d"): 0.6}
    p = ahp_from_winrates(names, wins)
    assert set(p) == set(names)
    assert sum(p.values()) == pytest.approx(1.0)
    assert p["self"] > p["curvature edge3d"] > p["edge3d"]
    W = np.array([[0.5, 0.4, 0.1], [0.6, 0.5, 0.2], [0.9, 0.8, 0.5]])
    np.testing.assert_allclose([p[n] for n in names], ahp_affinities(W))
    with pytest.raises(TaskregError, match="no result for the pair"):
        ahp_from_winrates(names, {("self", "edge3d"): 0.9})
    with pytest.raises(TaskregError, match="not in the sources"):
        ahp_from_winrates(["a", "b"], {("a", "c"): 0.9})


def test_ahp_affinity_set() -> None:
    v = np.array([4.0, 2.0, 1.0])
    tours = [
        Tournament(target="a", options=[("self",), ("b",), ("c", "b")], wins=_consistent_wins(v)),
        Tournament(target="b", options=[("self",), ("a",)], wins=np.array([[0.5, 0.8], [0.2, 0.5]])),
    ]
    aff = ahp_affinity_set(tours, name="mine", source_only=("c",))
    assert aff.targets == ["a", "b"]
    assert aff.value(["b", "c"], "a") == pytest.approx(1 / 7)
    assert aff.value(["self"], "a") == pytest.approx(4 / 7)
    assert sum(tr.value for tr in aff.options_for("b")) == pytest.approx(1.0)
    with pytest.raises(TaskregError, match="2 options but wins has shape"):
        ahp_affinity_set([Tournament("a", [("b",), ("c",)], np.full((3, 3), 0.5))], name="x")


@pytest.mark.parametrize(
    "W, needle",
    [
        (np.full((2, 3), 0.5), "square"),
        (np.zeros((0, 0)), "empty"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
        (np.array([[0.5, 1.5], [0.5, 0.5]]), "fractions in"),
    ],
)
def test_bad_win_matrices(W: np.ndarray, needle: str) -> None:
    with pytest.raises(TaskregError, match=needle):
        ahp_affinities(W)


def test_bad_losses() -> None:
    with pytest.raises(TaskregError, match="NaN"):
        winrate_matrix_from_losses(np.array([[1.0, np.nan]]))
    with pytest.raises(TaskregError, match="shape"):
        winrate_matrix_from_losses(np.ones(3))
