"""SFDA and NCTI (issue 15) against direct computations of their formulas on small fixed inputs.

The direct versions below are written from the papers' / reference code's formulas with explicit loops, D x D
inverses and scipy's generalised eigenproblem, not with the modules' helpers (which work in whitened coordinates
from the smaller Gram matrix and never form a Fisher basis).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from taskreg.errors import TaskregError
from taskreg.selection.ncti import NCTITerms, ncti, ncti_pool, ncti_terms
from taskreg.selection.selectors import SelectorInput, get_selector, register_selector
from taskreg.selection.sfda import largest_eigenvalue_estimate, sfda

# 9 points in 2-D, 3 classes (hand-picked, overlapping a little)
X9 = np.array([[0.0, 0.1], [0.3, -0.2], [-0.1, 0.4],
               [1.0, 0.9], [0.6, 1.2], [1.3, 1.1],
               [0.2, 1.0], [-0.3, 1.4], [0.5, 0.6]])
Y9 = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])


def _stats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Priors, class means, S_W = sum_k pi_k Cov_k (population) and St (population), by loops."""
    n, d = x.shape
    classes = sorted(set(y.tolist()))
    priors = np.array([np.sum(y == c) / n for c in classes])
    means = np.array([x[y == c].mean(axis=0) for c in classes])
    sw = np.zeros((d, d))
    for k, c in enumerate(classes):
        for row in x[y == c]:
            v = (row - means[k])[:, None]
            sw += priors[k] * (v @ v.T) / np.sum(y == c)
    mu = x.mean(axis=0)
    st = sum(((row - mu)[:, None] @ (row - mu)[None, :]) for row in x) / n
    return priors, means, sw, st


def _shrink(a: np.ndarray, lam: float) -> np.ndarray:
    d = a.shape[0]
    return (1 - lam) * a + lam * np.trace(a) / d * np.eye(d)


def _fisher_posteriors(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """The reference's route: generalised eigenvectors of (St(lam) - Sw(lam), Sw(lam)), ALL of them, then the
    Bayes classifier with identity covariance in that space."""
    priors, means, sw, st = _stats(x, y)
    sw_l, st_l = _shrink(sw, lam), _shrink(st, lam)
    _, v = scipy.linalg.eigh(st_l - sw_l, sw_l)
    p = np.zeros((x.shape[0], len(priors)))
    for i, row in enumerate(x):
        logits = [(v.T @ row) @ (v.T @ means[k]) - 0.5 * np.sum((v.T @ means[k]) ** 2) + np.log(priors[k])
                  for k in range(len(priors))]
        e = np.exp(np.array(logits) - max(logits))
        p[i] = e / e.sum()
    # the same classifier with the shrunk within covariance inverted directly (V V^T = Sw(lam)^-1)
    inv = np.linalg.inv(sw_l)
    for i, row in enumerate(x):
        logits = np.array([row @ inv @ means[k] - 0.5 * means[k] @ inv @ means[k] + np.log(priors[k])
                           for k in range(len(priors))])
        e = np.exp(logits - logits.max())
        assert np.allclose(p[i], e / e.sum(), atol=1e-12)
    return p


def _power(a: np.ndarray) -> float:
    x = a.sum(axis=1)
    for _ in range(3):
        y = a @ x / np.linalg.norm(a @ x)
        x = a @ y / np.linalg.norm(a @ y)
    return float(x @ a @ y)


def _direct_sfda(x: np.ndarray, y: np.ndarray, lam: float | None = None) -> float:
    if lam is None:
        lam = max(np.exp(-5 * _power(_stats(x, y)[2])), 1e-10)
    p = _fisher_posteriors(x, y, lam)
    _, means, _, _ = _stats(x, y)
    k = means.shape[0]
    mixed = x.copy()
    for i in range(x.shape[0]):
        soft = np.exp(p[i]) / np.exp(p[i]).sum()  # softmax of the probabilities
        w = soft[y[i]]
        outer = (means.sum(axis=0) - means[y[i]]) / (k - 1)
        mixed[i] = w * x[i] + (1 - w) * outer
    p2 = _fisher_posteriors(mixed, y, lam)
    return float(np.mean([p2[i, y[i]] for i in range(x.shape[0])]))


# ----------------------------------------------------------------------------------------------------- SFDA
@pytest.mark.parametrize("lam", [None, 0.0, 0.3, 1.0])
def test_sfda_matches_the_direct_fisher_space_computation(lam: float | None) -> None:
    assert sfda(X9, Y9, shrinkage=lam) == pytest.approx(_direct_sfda(X9, Y9, lam), rel=1e-10)
    x3 = np.hstack([X9, (X9[:, :1] * X9[:, 1:]) - 0.2])  # 3-D, classes of different sizes
    y3 = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2])
    assert sfda(x3, y3, shrinkage=lam) == pytest.approx(_direct_sfda(x3, y3, lam), rel=1e-10)


def test_sfda_shrinkage_rule_is_the_reference_power_estimate() -> None:
    sw = _stats(X9, Y9)[2]
    sigma = largest_eigenvalue_estimate(sw)
    assert sigma == pytest.approx(_power(sw), rel=1e-12)
    assert sigma == pytest.approx(np.linalg.eigvalsh(sw).max(), rel=1e-3)  # 3 steps: close, not exact
    # lam = exp(-5 sigma) is well above the floor here, so the default differs from an explicit tiny lam
    assert sfda(X9, Y9) == pytest.approx(sfda(X9, Y9, shrinkage=float(np.exp(-5 * sigma))), rel=1e-12)
    assert sfda(X9, Y9) != pytest.approx(sfda(X9, Y9, shrinkage=1e-10), rel=1e-3)
    diag = np.diag([3.0, 1.0])  # row sums (3, 1) are not an eigenvector but the iteration converges to 3
    assert largest_eigenvalue_estimate(diag) == pytest.approx(3.0, rel=1e-5)


def test_sfda_n_below_d_uses_the_gram_route_and_agrees_with_the_direct_one() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 4)
    x = 0.05 * (rng.normal(size=(12, 15)) + rng.normal(size=(3, 15))[y])  # N = 12 < D = 15
    assert sfda(x, y) == pytest.approx(_direct_sfda(x, y), rel=1e-8)


def test_sfda_prefers_separated_classes_and_depends_on_scale_only_above_the_floor() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    centres = rng.normal(size=(3, 6))
    noise = rng.normal(size=(90, 6))
    scores = [sfda(0.1 * (noise + gap * centres[y]), y) for gap in (0.2, 1.0, 3.0)]
    assert scores[0] < scores[1] < scores[2] <= 1.0
    small = 0.1 * (noise + centres[y])  # sigma < 4.6: lam = exp(-5 sigma) depends on the scale
    assert sfda(2 * small, y) != pytest.approx(sfda(small, y), rel=1e-3)
    big = 10 * (noise + centres[y])  # lam at its floor at both scales: LDA is scale-invariant
    assert sfda(3 * big, y) == pytest.approx(sfda(big, y), rel=1e-9)


def test_sfda_saturates_when_the_within_scatter_is_singular() -> None:
    """N - K < D and lam at its floor: the classifier separates the training points, every expert ~ 1."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    assert sfda(10 * rng.normal(size=(40, 80)), y) > 0.99  # pure noise features


def test_sfda_bad_inputs_are_one_line_errors() -> None:
    cases = [
        (lambda: sfda(np.full((4, 2), np.nan), np.array([0, 0, 1, 1])), "NaN or infinite"),
        (lambda: sfda(np.ones((4, 2)), np.array([0, 1, 0])), "shape (4,)"),
        (lambda: sfda(np.ones((4, 2)), np.array([1, 1, 1, 1])), "at least 2 classes"),
        (lambda: sfda(np.ones((4, 2)), np.array([0.0, 1.0, 0.0, 1.0])), "integer class labels"),
        (lambda: sfda(np.ones(4), np.array([0, 1, 0, 1])), "(N, D) array"),
        (lambda: sfda(np.array([[0.0], [1.0]]), np.array([0, 1])), "within-class variation"),
        (lambda: sfda(X9, Y9, shrinkage=1.5), "shrinkage must be in [0, 1]"),
    ]
    for call, words in cases:
        with pytest.raises(TaskregError) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------- NCTI
def _direct_ncti_terms(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """NCTI's terms for D <= 64 and N - 1 >= D, where its PCA is a rotation of the centred features (LDA, the
    shrinkage target and nuclear norms do not see a rotation), so the PCA step reduces to the explained variance."""
    n, d = x.shape
    k = len(set(y.tolist()))
    c = x - x.mean(axis=0)
    variances = np.sort(np.linalg.eigvalsh(c.T @ c / (n - 1)))[::-1]
    lam = float(np.exp(-variances[:32].sum()))
    priors, means, sw, st = _stats(c, y)
    if lam > 1e-10:  # sklearn's eigen solver
        cov = _shrink(sw, lam)
        evals, v = scipy.linalg.eigh(_shrink(st, lam) - cov, cov)
        v = v[:, np.argsort(evals)[::-1]][:, : min(k - 1, d)]
    else:  # sklearn's svd solver (as of the reference): within covariance with N - K degrees of freedom
        lam = 0.0
        cov = sw * n / (n - k)
        between = sum(priors[j] * np.outer(means[j] - c.mean(0), means[j] - c.mean(0)) for j in range(k))
        evals, v = scipy.linalg.eigh(between, cov)
        order = np.argsort(evals)[::-1][: min(k - 1, d)]
        v = v[:, order[evals[order] > 1e-8 * evals.max()]]
    z = c @ v
    z = z - z.mean(axis=0)
    seli = np.linalg.svd(z, compute_uv=False).sum()
    inv = np.linalg.inv(cov)
    post = np.zeros((n, k))
    for i in range(n):
        logits = np.array([c[i] @ inv @ means[j] - 0.5 * means[j] @ inv @ means[j] + np.log(priors[j])
                           for j in range(k)])
        e = np.exp(logits - logits.max())
        post[i] = e / e.sum()
    ncc = np.mean([post[i, y[i]] for i in range(n)])
    vc = np.log(sum(np.linalg.svd(post[y == j], compute_uv=False).sum() for j in range(k)))
    return float(seli), float(ncc), float(vc), lam


@pytest.mark.parametrize("scale", [1.0, 10.0])  # shrinkage LDA (variance sum < 23.03), plain LDA (above)
def test_ncti_terms_match_the_direct_computation(scale: float) -> None:
    for x, y in ((X9, Y9), (np.hstack([X9, X9[:, :1] ** 2]), np.array([0, 0, 1, 1, 1, 1, 2, 2, 2]))):
        t = ncti_terms(scale * x, y)
        seli, ncc, vc, lam = _direct_ncti_terms(scale * x, y)
        assert (t.shrinkage > 0) == (scale == 1.0) and t.shrinkage == pytest.approx(lam, rel=1e-12)
        assert (t.seli, t.ncc, t.vc) == pytest.approx((seli, ncc, vc), rel=1e-9)


def test_ncti_shrinkage_path_matches_sklearn_lda() -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 12)
    x = 0.15 * (rng.normal(size=(48, 5)) + rng.normal(size=(4, 5))[y])
    t = ncti_terms(x, y)
    assert 1e-10 < t.shrinkage < 1
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=t.shrinkage)
    z = lda.fit_transform(x, y)
    post = lda.predict_proba(x)
    assert t.seli == pytest.approx(np.linalg.svd(z - z.mean(0), compute_uv=False).sum(), rel=1e-9)
    assert t.ncc == pytest.approx(post[np.arange(48), y].mean(), rel=1e-9)
    assert t.vc == pytest.approx(np.log(sum(np.linalg.svd(post[y == c], compute_uv=False).sum()
                                            for c in range(4))), rel=1e-9)


def test_ncti_reduces_to_the_top_64_principal_components() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(5), 30)
    x = rng.normal(size=(150, 90)) @ np.diag(np.linspace(2, 0.1, 90)) + rng.normal(size=(5, 90))[y]
    c = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    t, t64 = ncti_terms(x, y), ncti_terms(c @ vt[:64].T, y)  # 64 dims: its PCA is a rotation
    assert (t.seli, t.ncc, t.vc, t.shrinkage) == pytest.approx((t64.seli, t64.ncc, t64.vc, t64.shrinkage), rel=1e-8)
    t63 = ncti_terms(c @ vt[:63].T, y)  # one component fewer changes the terms: the cut is at 64
    assert t63.seli != pytest.approx(t.seli, rel=1e-6)


def test_ncti_pool_normalises_each_term_over_the_experts() -> None:
    terms = [NCTITerms(1.0, 0.5, 2.0, 0.0), NCTITerms(3.0, 0.7, 1.0, 0.0), NCTITerms(2.0, 0.9, 3.0, 0.0)]
    # seli' = 0, 1, .5; ncc' = 0, .5, 1; vc' = .5, 0, 1  ->  -0.5, 1.5, 0.5
    assert ncti_pool(terms) == pytest.approx([-0.5, 1.5, 0.5])
    same_ncc = [NCTITerms(1.0, 0.8, 2.0, 0.0), NCTITerms(3.0, 0.8, 1.0, 0.0)]  # a constant term adds 0
    assert ncti_pool(same_ncc) == pytest.approx([-1.0, 1.0])  # seli' = 0, 1; vc' = 1, 0
    assert ncti_pool(terms[:1]) == [0.0] and ncti_pool([]) == []


def test_ncti_ranks_separated_features_first_and_is_scale_invariant_without_shrinkage() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 25)
    centres, noise = rng.normal(size=(3, 8)), rng.normal(size=(75, 8))
    pool = [10 * (noise + gap * centres[y]) for gap in (0.3, 1.0, 3.0)]
    terms = [ncti_terms(f, y) for f in pool]
    assert all(t.shrinkage == 0.0 for t in terms)
    assert terms[0].ncc < terms[1].ncc < terms[2].ncc and terms[0].vc > terms[2].vc
    scores = ncti(pool, y)
    assert np.argmax(scores) == 2 and np.argmin(scores) == 0
    scaled = ncti_terms(7 * pool[1], y)
    assert (scaled.seli, scaled.ncc, scaled.vc) == pytest.approx((terms[1].seli, terms[1].ncc, terms[1].vc),
                                                                 rel=1e-9)
    small = ncti_terms(0.02 * pool[1], y)  # variance sum < 23: shrinkage, which depends on the scale
    assert small.shrinkage > 0 and small.ncc != pytest.approx(terms[1].ncc, rel=1e-4)


def test_ncti_bad_inputs_are_one_line_errors() -> None:
    cases = [
        (lambda: ncti_terms(np.full((6, 2), np.inf), np.array([0, 0, 0, 1, 1, 1])), "NaN or infinite"),
        (lambda: ncti_terms(X9[:2], np.array([0, 1])), "more samples than classes"),
        (lambda: ncti_terms(X9, np.zeros(9, dtype=int)), "at least 2 classes"),
        (lambda: ncti_terms(X9, Y9[:5]), "shape (9,)"),
        (lambda: ncti_terms(np.array([[0.0], [0.0], [1.0], [1.0]]), np.array([0, 0, 1, 1])),
         "within-class variation"),
        (lambda: ncti([X9, X9[:, :1] * np.nan], Y9), "NaN or infinite"),
    ]
    for call, words in cases:
        with pytest.raises(TaskregError) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------- the selectors
def test_the_selectors_score_like_the_functions_and_ncti_scores_the_pool() -> None:
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(3), 20)
    outputs = [rng.normal(size=(60, 7)) + gap * rng.normal(size=(3, 7))[y] for gap in (0.5, 2.0, 1.0)]
    s = get_selector("sfda")
    assert (s.cost, s.better, s.needs, s.pooled) == ("forward", "higher", ("features",), False)
    got = s.score(SelectorInput(n=3, outputs=outputs, y=y))
    assert list(got) == pytest.approx([sfda(f, y) for f in outputs])  # type: ignore[arg-type]
    n = get_selector("ncti")
    assert (n.cost, n.better, n.needs, n.pooled) == ("forward", "higher", ("features",), True)
    got = n.score(SelectorInput(n=3, outputs=outputs, y=y))
    assert list(got) == pytest.approx(ncti_pool([ncti_terms(f, y) for f in outputs]))  # type: ignore[arg-type]
    assert list(n.score(SelectorInput(n=1, outputs=outputs[:1], y=y))) == [0.0]  # type: ignore[arg-type]


def test_only_forward_methods_can_be_pooled() -> None:
    with pytest.raises(ValueError, match="only a 'forward' method can be pooled"):
        register_selector("pooled-index", needs=("task2vec",), cost="index", better="lower", description="-",
                          pooled=True)(lambda q: [0.0] * q.n)
