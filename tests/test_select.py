"""Ranking logic: rerank by Task2Vec distances, score ranking, baselines, and verify-top-K."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from taskreg.errors import TaskregError
from taskreg.selection import selectors
from taskreg.selection.select import (
    Ranked,
    generic_expert,
    random_ranking,
    rank,
    rank_by_scores,
    rerank,
    verify_topk,
)
from taskreg.selection.selectors import NEEDS, SelectorInput, get_selector, list_selectors, register_selector
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


# ---- the selector registry (issue 13 item 4): one list of ranking methods, with what each needs and costs
BUILTIN = {  # name -> (cost class, score direction, needs): the methods `taskreg select` has always had
    "model2vec": ("index", "lower", ("model2vec", "trivial")), "asym": ("index", "lower", ("task2vec", "trivial")),
    "sym": ("index", "lower", ("task2vec",)), "domain": ("index", "lower", ("domain",)),
    "logme": ("forward", "higher", ("features",)), "leep": ("forward", "higher", ("logits",)),
    "nce": ("forward", "higher", ("logits",)), "hscore": ("forward", "higher", ("features",)),
    "sfda": ("forward", "higher", ("features",)), "ncti": ("forward", "higher", ("features",)),  # issue 15
    **{m: ("forward", "higher", ("features",)) for m in ("etran", "etran-energy", "knn", "transrate", "gbc")},
    "generic": ("none", "higher", ("sizes",)), "prior": ("none", "higher", ("prior",)),  # issue 15
    "random": ("none", "lower", ()),
}


def test_the_registry_lists_every_builtin_method_with_its_cost_and_direction() -> None:
    assert list_selectors() == list(BUILTIN)  # each of them is run end to end by test_hostile / test_registry_workflow
    for name, (cost, better, needs) in BUILTIN.items():
        s = get_selector(name)
        assert (s.cost, s.better, s.needs) == (cost, better, needs) and s.description
        assert s.higher_is_better == (better == "higher") and set(needs) <= set(NEEDS)
    assert list_selectors("index") == ["model2vec", "asym", "sym", "domain"]
    assert list_selectors("forward") == ["logme", "leep", "nce", "hscore", "sfda", "ncti", "etran", "etran-energy",
                                         "knn", "transrate", "gbc"]
    assert list_selectors("none") == ["generic", "prior", "random"]


def test_an_unknown_method_is_one_line_listing_the_known_ones() -> None:
    for bad in ("nope", "", "ASYM", None):
        with pytest.raises(TaskregError) as err:
            get_selector(bad)  # type: ignore[arg-type]
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"unknown selection method {bad!r}")
        assert message.endswith("choose one of " + ", ".join(list_selectors()) + ", two-stage")
    with pytest.raises(TaskregError, match="does not rank stored vectors; choose one of model2vec, asym, sym, domain"):
        rerank(QUERY, CANDIDATES, "logme")


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations in a test go to a copy of the registry, dropped afterwards."""
    monkeypatch.setattr(selectors, "SELECTORS", dict(selectors.SELECTORS))


def test_register_selector_refuses_inconsistent_declarations(scratch_registry: None) -> None:
    def scorer(q: SelectorInput) -> list[float]:
        return [0.0] * q.n

    bad = [
        dict(name="asym", needs=("task2vec",), cost="index", better="lower"),  # taken
        dict(name="x", needs=("task2vec",), cost="cheap", better="lower"),
        dict(name="x", needs=("task2vec",), cost="index", better="smaller"),
        dict(name="x", needs=("gpu",), cost="index", better="lower"),
        dict(name="x", needs=("features",), cost="index", better="lower"),  # a forward need on an index method
        dict(name="x", needs=("task2vec", "model2vec"), cost="index", better="lower"),  # two vector sources
        dict(name="x", needs=("trivial",), cost="index", better="lower"),  # no vectors to score
        dict(name="x", needs=(), cost="forward", better="higher"),
        dict(name="x", needs=("domain", "trivial"), cost="index", better="lower"),
        dict(name="x y", needs=(), cost="none", better="lower"),
        dict(name="x", needs=("sizes", "prior"), cost="none", better="higher"),  # two facts
    ]
    for kwargs in bad:
        name = kwargs.pop("name")
        with pytest.raises(ValueError, match="selector"):
            register_selector(name, description="-", **kwargs)(scorer)
    assert list_selectors() == list(BUILTIN)


def test_a_new_method_is_one_function_and_one_decorator(scratch_registry: None) -> None:
    @register_selector("l1", needs=("task2vec",), cost="index", better="lower", description="L1 distance")
    def l1(q: SelectorInput) -> np.ndarray:
        return np.abs(q.candidates - q.query).sum(1)

    @register_selector("farthest", needs=("task2vec",), cost="index", better="higher", description="L1, reversed")
    def farthest(q: SelectorInput) -> np.ndarray:
        return np.abs(q.candidates - q.query).sum(1)

    assert list_selectors("index")[-2:] == ["l1", "farthest"]
    l1_dist = np.abs(CANDIDATES - QUERY).sum(1)
    ranked = rerank(QUERY, CANDIDATES, "l1")
    assert [r.index for r in ranked] == np.argsort(l1_dist, kind="stable").tolist()
    assert [r.score for r in ranked] == sorted(l1_dist.tolist())
    assert [r.index for r in rerank(QUERY, CANDIDATES, "farthest")] == [r.index for r in ranked][::-1]
    # the scorer's answer is checked: one score per item, or a permutation when it returns a ranking
    with pytest.raises(TaskregError, match="returned 3 scores for 4 items"):
        rank(get_selector("l1"), [0.0, 1.0, 2.0], 4)
    with pytest.raises(TaskregError, match="not a permutation"):
        rank(get_selector("l1"), [Ranked(0, 1.0), Ranked(0, 2.0)], 2)
