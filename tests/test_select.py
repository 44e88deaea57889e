"""Ranking logic: rerank by Task2Vec distances, score ranking, baselines, and verify-top-K."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from taskreg.errors import TaskregError
from taskreg.selection.select import (
    Ranked,
    generic_expert,
    random_ranking,
    rank_by_scores,
    rerank,
    verify_topk,
)
from taskreg.trainers.experts import LinearProbeProtocol


def _dsym(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's symmetric distance, written out: cosine distance of a/(a+b) and b/(a+b)."""
    u, v = a / (a + b), b / (a + b)
    return 1.0 - float(u @ v) / float(np.linalg.norm(u) * np.linalg.norm(v))


QUERY = np.array([1.0, 2.0, 3.0, 4.0])
CANDIDATES = np.array(
    [
        [4.0, 3.0, 2.0, 1.0],  # reversed profile: far
        [1.0, 2.0, 3.0, 4.0],  # the query itself: distance 0
        [1.1, 2.0, 2.8, 4.3],  # a small perturbation: close
        [1.0, 2.5, 3.0, 3.0],  # a larger perturbation
    ]
)


def test_rerank_sym_orders_by_the_papers_distance() -> None:
    ranked = rerank(QUERY, CANDIDATES, "sym")
    expected = sorted(range(4), key=lambda i: _dsym(QUERY, CANDIDATES[i]))
    assert [r.index for r in ranked] == expected
    assert ranked[0] == Ranked(1, pytest.approx(0.0, abs=1e-9))
    assert ranked[-1].index == 0
    for r in ranked:
        assert r.score == pytest.approx(_dsym(QUERY, CANDIDATES[r.index]), abs=1e-9)
    assert [r.score for r in ranked] == sorted(r.score for r in ranked)


def test_rerank_asym_prefers_more_complex_experts() -> None:
    # the "simple" expert is closer to the query in d_sym, the "complex" one (same profile, stronger
    # contrast, so much farther from the trivial embedding t0) wins once the complexity term counts
    t0 = np.ones(4)
    query = np.array([1.0, 4.0, 1.0, 4.0])
    candidates = np.array([[1.0, 3.0, 1.0, 3.0], [1.0, 8.0, 1.0, 8.0]])  # simple, complex
    sym = [r.index for r in rerank(query, candidates, "sym")]
    assert sym == [0, 1]
    asym = rerank(query, candidates, "asym", t0=t0, alpha=0.5)
    assert [r.index for r in asym] == [1, 0]
    # without the complexity term (alpha = 0) asym reduces to sym
    assert [r.index for r in rerank(query, candidates, "asym", t0=t0, alpha=0.0)] == sym
    for r in asym:
        c = candidates[r.index]
        assert r.score == pytest.approx(_dsym(query, c) - 0.5 * _dsym(c, t0), abs=1e-9)
    # model2vec uses the same distance on model embeddings
    assert rerank(query, candidates, "model2vec", t0=t0, alpha=0.5) == asym


def test_rerank_domain_is_cosine_distance() -> None:
    ranked = rerank(np.array([1.0, 0.0]), np.array([[0.0, 1.0], [3.0, 0.1], [1.0, 1.0]]), "domain")
    assert [r.index for r in ranked] == [1, 2, 0]
    assert ranked[-1].score == pytest.approx(1.0)


def test_rerank_validates() -> None:
    with pytest.raises(TaskregError):
        rerank(QUERY, CANDIDATES, "euclid")
    with pytest.raises(TaskregError):
        rerank(QUERY, CANDIDATES, "asym")  # no t0
    with pytest.raises(TaskregError):
        rerank(QUERY, CANDIDATES[:, :3], "sym")
    with pytest.raises(TaskregError):
        rerank(np.array([np.nan, 1, 1, 1]), CANDIDATES, "sym")
    assert rerank(QUERY, np.zeros((0, 4)), "sym") == []


def test_rank_by_scores_both_directions_and_stable_ties() -> None:
    scores = [0.3, -1.0, 0.3, 2.0]
    assert [r.index for r in rank_by_scores(scores, higher_is_better=True)] == [3, 0, 2, 1]
    assert [r.index for r in rank_by_scores(scores, higher_is_better=False)] == [1, 0, 2, 3]
    assert rank_by_scores(scores, True)[0] == Ranked(3, 2.0)


def test_generic_expert_is_broadest_task() -> None:
    assert generic_expert([10, 100, 5], [5000, 1000, 50000]) == 2  # 50k, 100k, 250k examples x classes
    # ties on classes x samples go to more classes, then to the lower index
    assert generic_expert([10, 20, 20], [200, 100, 100]) == 1
    with pytest.raises(TaskregError):
        generic_expert([10, 20], [100])


def test_random_ranking_is_a_seeded_permutation() -> None:
    r = random_ranking(7, seed=1)
    assert sorted(r) == list(range(7))
    assert r == random_ranking(7, seed=1)
    assert r != random_ranking(7, seed=2)


def test_verify_topk_picks_the_measured_winner() -> None:
    digits = load_digits()
    x, y = digits.data[:600] / 16.0, digits.target[:600]
    rng = np.random.default_rng(0)
    features = {
        "noise": rng.normal(size=(600, 16)),
        "pixels": x,
        "half": x[:, :20],
    }
    protocol = LinearProbeProtocol(seed=0)
    winner, measured = verify_topk(lambda c, data: features[c], ["noise", "half", "pixels"], x, y, protocol)
    assert winner == "pixels"
    assert [v.candidate for v in measured] == ["pixels", "half", "noise"]
    errors = [v.result.test_error for v in measured]
    assert errors == sorted(errors) and errors[0] < 0.1 and errors[-1] > 0.6
    with pytest.raises(TaskregError):
        verify_topk(lambda c, data: features[c], [], x, y)
