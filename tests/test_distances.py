"""Tests of taskreg.embedders.distances (symmetric / asymmetric Task2Vec distances)."""

from __future__ import annotations

import numpy as np
import pytest

from taskreg.embedders.distances import (
    cosine_distance,
    d_asym,
    d_asym_many,
    d_sym,
    d_sym_many,
    pairwise_sym,
)
from taskreg.errors import TaskregError


def _rand(n: int, d: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(0.5, 1.0, size=(n, d))


def test_d_sym_symmetric_bounded_identity() -> None:
    a = _rand(20)
    for i in range(len(a)):
        assert d_sym(a[i], a[i]) == pytest.approx(0.0, abs=1e-12)
        for j in range(len(a)):
            dij = d_sym(a[i], a[j])
            assert 0.0 <= dij <= 1.0
            assert dij == pytest.approx(d_sym(a[j], a[i]), abs=1e-12)
    # scale invariance under a common factor, and disjoint supports are maximally far
    assert d_sym(3 * a[0], 3 * a[1]) == pytest.approx(d_sym(a[0], a[1]))
    assert d_sym(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_d_sym_matches_definition() -> None:
    a, b = _rand(2, seed=1)
    u, v = a / (a + b), b / (a + b)
    expected = 1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    assert d_sym(a, b) == pytest.approx(expected)


def test_zeros_are_guarded() -> None:
    z = np.zeros(5)
    x = np.array([1.0, 0.0, 2.0, 0.0, 3.0])
    assert d_sym(z, z) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(d_sym(x, z)) and 0.0 <= d_sym(x, z) <= 1.0
    assert d_sym(x, x) == pytest.approx(0.0, abs=1e-12)
    assert cosine_distance(z, x) == 1.0


def test_vectorised_versions_agree() -> None:
    a = _rand(6, seed=2)
    t0 = np.full(a.shape[1], 0.5)
    many = d_sym_many(a[0], a[1:])
    assert np.allclose(many, [d_sym(a[0], b) for b in a[1:]])
    asym = d_asym_many(a[0], a[1:], t0, alpha=0.3)
    assert np.allclose(asym, [d_asym(a[0], b, t0, 0.3) for b in a[1:]])
    assert np.allclose(asym, many - 0.3 * d_sym_many(t0, a[1:]))
    p = pairwise_sym(a)
    assert p.shape == (6, 6) and np.array_equal(p, p.T) and np.all(np.diag(p) == 0)
    assert p[2, 4] == pytest.approx(d_sym(a[2], a[4]))
    assert np.allclose(cosine_distance(a[0], a[1:]), [cosine_distance(a[0], b) for b in a[1:]])


def test_d_asym_favours_complex_sources() -> None:
    t0 = np.ones(4)
    query = np.array([2.0, 1.0, 1.0, 1.0])
    simple = np.array([1.5, 1.0, 1.0, 1.0])  # close to the query, close to the trivial embedding
    complex_ = np.array([4.0, 1.0, 1.0, 2.0])  # further from the query, far from the trivial embedding
    assert d_asym(query, simple, t0, alpha=0.0) < d_asym(query, complex_, t0, alpha=0.0)
    assert d_asym(query, simple, t0, alpha=1.0) > d_asym(query, complex_, t0, alpha=1.0)
    assert d_asym(query, query, t0, alpha=0.15) < 0.0  # an exact match minus its complexity


def test_validation_errors() -> None:
    with pytest.raises(TaskregError, match="length"):
        d_sym(np.ones(3), np.ones(4))
    with pytest.raises(TaskregError, match="NaN"):
        d_sym(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(TaskregError, match="negative"):
        d_sym(np.array([1.0, -1.0]), np.ones(2))
    with pytest.raises(TaskregError, match="shape"):
        d_sym_many(np.ones(3), np.ones((2, 4)))
    with pytest.raises(TaskregError, match="t0"):
        d_asym(np.ones(3), np.ones(3), np.ones(2))
