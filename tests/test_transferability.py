"""Transferability baselines against hand-computed values and independent direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from taskreg.errors import TaskregError
from taskreg.selection.transferability import hscore, leep, logme, logme_fit, nce, softmax

LN2 = np.log(2.0)


# ---------------------------------------------------------------------------------------------- LogME
def _direct_log_evidence(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log p(t | F, alpha, beta) with explicit D x D inverse and determinant (no SVD)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.inv(a) @ f.T @ t
    _, logdet = np.linalg.slogdet(a)
    return (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((f @ m - t) ** 2)
        - alpha / 2 * m @ m
        - logdet / 2
    )


def _marginal_log_likelihood(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """The same evidence written as the Gaussian density t ~ N(0, F F^T / alpha + I / beta)."""
    n = f.shape[0]
    cov = f @ f.T / alpha + np.eye(n) / beta
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (n * np.log(2 * np.pi) + logdet + t @ np.linalg.solve(cov, t))


# N > D (eigh of F^T F), N > D with a duplicated column (singular F^T F), N < D (SVD of F)
@pytest.mark.parametrize("n,d,duplicate", [(40, 6, False), (40, 6, True), (8, 15, False)])
def test_logme_fixed_point_matches_direct_evidence(n: int, d: int, duplicate: bool) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    if duplicate:
        f[:, -1] = f[:, -2]
    t = (f[:, 0] + f[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
    fit = logme_fit(f, t)
    direct = _direct_log_evidence(f, t, fit.alpha, fit.beta)
    assert fit.log_evidence_per_sample == pytest.approx(direct / n, rel=1e-9, abs=1e-9)
    assert direct == pytest.approx(_marginal_log_likelihood(f, t, fit.alpha, fit.beta), rel=1e-9)
    if n > d:  # well posed: the fixed point converges to a maximum; moving alpha or beta lowers it
        assert fit.iterations < 100
        for da, db in [(1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9)]:
            assert _direct_log_evidence(f, t, fit.alpha * da, fit.beta * db) < direct


def test_logme_is_mean_over_one_hot_classes_and_prefers_informative_features() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    informative = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    noise = rng.normal(size=(60, 3))
    per_class = [logme_fit(informative, (y == c).astype(float)) for c in range(3)]
    expected = np.mean([fit.log_evidence_per_sample for fit in per_class])
    assert logme(informative, y) == pytest.approx(expected, rel=1e-12)
    assert logme(informative, y) > logme(noise, y)
    # labels are only names: relabelling does not change the score
    assert logme(informative, y * 7 + 2) == pytest.approx(logme(informative, y))


def test_logme_runs_on_digits_and_ranks_pixels_over_noise() -> None:
    digits = load_digits()
    x, y = digits.data[:500] / 16.0, digits.target[:500]
    noise = np.random.default_rng(0).uniform(size=x.shape)
    assert np.isfinite(logme(x, y))
    assert logme(x, y) > logme(noise, y)


# ----------------------------------------------------------------------------------------- LEEP / NCE
def test_leep_and_nce_hand_computed_hard_predictions() -> None:
    # source head puts samples 0,1 in z=0 and 2,3 in z=1; targets y = 0,1,1,1
    # P(y|z=0) = (1/2, 1/2), P(y|z=1) = (0, 1)  ->  LEEP = (ln 1/2 + ln 1/2 + 0 + 0) / 4 = -ln2 / 2
    # H(Y|Z) = P(z=0) H(1/2,1/2) + P(z=1) * 0 = ln2 / 2  ->  NCE = -ln2 / 2
    theta = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = np.array([0, 1, 1, 1])
    assert leep(theta, y) == pytest.approx(-LN2 / 2)
    assert nce(np.array([0, 0, 1, 1]), y) == pytest.approx(-LN2 / 2)


def test_leep_soft_predictions_against_explicit_loops() -> None:
    theta = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [0.05, 0.05, 0.9]]
    )
    y = np.array([0, 1, 1, 0, 2])
    n, zs = theta.shape
    joint = {(c, z): sum(theta[i, z] for i in range(n) if y[i] == c) / n for c in range(3) for z in range(zs)}
    pz = {z: sum(joint[(c, z)] for c in range(3)) for z in range(zs)}
    expected = 0.0
    for i in range(n):
        expected += np.log(sum(joint[(y[i], z)] / pz[z] * theta[i, z] for z in range(zs))) / n
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)
    # a head that determines the target gives the maximum, 0
    assert leep(np.eye(3)[y], y) == pytest.approx(0.0, abs=1e-12)
    assert leep(theta, y) < 0


def test_nce_hand_computed_three_way() -> None:
    # z = 0,0,0,1,1,2 ; y = 0,0,1,1,1,0
    # z=0: P=1/2, y split (2/3, 1/3): H = -(2/3 ln 2/3 + 1/3 ln 1/3); z=1: pure; z=2: pure
    z = np.array([0, 0, 0, 1, 1, 2])
    y = np.array([0, 0, 1, 1, 1, 0])
    h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    assert nce(z, y) == pytest.approx(-0.5 * h)
    assert nce(y, y) == pytest.approx(0.0)


def test_softmax_is_stable() -> None:
    p = softmax(np.array([[1000.0, 1000.0], [0.0, -1000.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [1.0, 0.0]], atol=1e-12)


# -------------------------------------------------------------------------------------------- H-score
def test_hscore_hand_computed_1d() -> None:
    # f = 0,2,4,6, y = 0,0,1,1: var f = 5, class means -2,+2 around 3 -> between-class var 4 -> 4/5
    assert hscore(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])) == pytest.approx(0.8)


def test_hscore_pseudo_inverse_ignores_constant_and_duplicated_features() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    f = rng.normal(size=(30, 4)) + y[:, None]
    centred = f - f.mean(0)
    cov_f = centred.T @ centred / 30
    means = np.stack([centred[y == c].mean(0) for c in range(3)])
    expected = np.trace(np.linalg.inv(cov_f) @ (means.T @ means / 3))  # balanced classes: P(y) = 1/3
    assert hscore(f, y) == pytest.approx(expected, rel=1e-9)
    padded = np.hstack([f, np.ones((30, 1)), f[:, :1]])  # constant column and an exact duplicate
    assert hscore(padded, y) == pytest.approx(expected, rel=1e-6)
    assert 0 < hscore(f, y) <= 2  # at most K - 1


# --------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call",
    [
        lambda: logme(np.ones((5, 2)), np.array([0, 1, 0, 1])),  # length mismatch
        lambda: logme(np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([0, 1])),
        lambda: logme(np.ones((4, 2)), np.zeros(4, dtype=int)),  # one class
        lambda: hscore(np.ones((4, 2)), np.array([0.0, 1.0, 0.0, 1.0])),  # float labels
        lambda: hscore(np.ones(4), np.array([0, 1, 0, 1])),  # 1-D features
        lambda: leep(np.array([[0.5, 0.6], [0.5, 0.5]]), np.array([0, 1])),  # rows do not sum to 1
        lambda: leep(np.array([[0.5, 0.5], [np.inf, 0.5]]), np.array([0, 1])),
        lambda: nce(np.array([0, 1, 1]), np.array([0, 1])),
    ],
)
def test_bad_inputs_raise_taskreg_error(call) -> None:
    with pytest.raises(TaskregError):
        call()
