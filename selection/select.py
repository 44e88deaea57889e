"""Ranking experts for a query task, after the Faiss index has returned candidate embeddings.

Task2Vec model selection (Achille et al. 2019, Sect. 3.3-3.4, 4.2): pick the expert whose training
task embeds closest to the query, with the asymmetric distance
``d_asym(t_expert -> t_query) = d_sym(t_expert, t_query) - alpha * d_sym(t_expert, t0)`` (t0: the trivial
embedding; alpha = 0.15 in the paper), which favours experts trained on more complex tasks. Baselines:
the symmetric distance, a Model2Vec embedding (same distance against learned model embeddings), the
domain embedding (cosine distance of mean feature activations), a generic expert and chance.
``verify_topk`` is the cheap hybrid: measure the top K candidates with a linear probe and keep the best.

The methods themselves (name, what each needs, its cost class, its score direction and its scorer) are
registered in :mod:`taskreg.selection.selectors`; :func:`rank` and :func:`rerank` rank with them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from taskreg.errors import TaskregError
from taskreg.selection.selectors import Ranked, Scores, Selector, SelectorInput, get_selector, list_selectors

if TYPE_CHECKING:
    from taskreg.trainers.experts import LinearProbeProtocol, ProbeResult

__all__ = ["Ranked", "Verified", "generic_expert", "random_ranking", "rank", "rank_by_scores", "rerank",
           "verify_topk"]
C = TypeVar("C", bound=Hashable)


def rank_by_scores(scores: Sequence[float] | np.ndarray, higher_is_better: bool) -> list[Ranked]:
    """Order candidates best first by a score (ties keep the input order). scores : (M,)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise TaskregError(f"scores must be 1-D, got shape {s.shape}")
    if np.isnan(s).any():
        raise TaskregError("scores contain NaN")
    order = np.argsort(-s if higher_is_better else s, kind="stable")
    return [Ranked(int(i), float(s[i])) for i in order]


def rank(selector: Selector, result: Scores, n: int) -> list[Ranked]:
    """Best first: what ``selector``'s scorer returned for ``n`` items, sorted its way (``better``; ties keep
    the input order), or the scorer's own ranking (a list of :class:`Ranked`) after checking it."""
    if isinstance(result, list) and result and isinstance(result[0], Ranked):
        if sorted(r.index for r in result) != list(range(n)):
            raise TaskregError(f"selector {selector.name!r} returned a ranking that is not a permutation of "
                               f"its {n} items")
        return list(result)
    scores = np.asarray(result, dtype=np.float64).reshape(-1)
    if scores.shape != (n,):
        raise TaskregError(f"selector {selector.name!r} returned {scores.size} scores for {n} items")
    return rank_by_scores(scores, higher_is_better=selector.higher_is_better)


def rerank(
    query: np.ndarray,
    candidates: np.ndarray,
    method: str,
    *,
    t0: np.ndarray | None = None,
    alpha: float = 0.15,
) -> list[Ranked]:
    """Rank candidate embeddings by an index method's score (best first; for the built-in ones the score is
    a distance, lower = better).

    query : (D,) embedding of the query task (Task2Vec Fisher diagonal, or mean features for "domain").
    candidates : (M, D) embeddings of the experts' training tasks ("asym", "sym", "domain") or the
        experts' Model2Vec embeddings ("model2vec").
    method : a selector of cost class "index" (:func:`~taskreg.selection.selectors.list_selectors`): "asym" —
        d_asym with trivial embedding ``t0`` (required) and ``alpha``; "model2vec" — the same distance against
        model embeddings (Sect. 3.4); "sym" — d_sym; "domain" — cosine distance.
    """
    selector = get_selector(method)
    if selector.cost != "index":
        raise TaskregError(f"{method!r} does not rank stored vectors; choose one of "
                           f"{', '.join(list_selectors('index'))}")
    q = np.asarray(query, dtype=np.float64)
    cands = np.asarray(candidates, dtype=np.float64)
    if q.ndim != 1 or cands.ndim != 2 or cands.shape[1] != q.shape[0]:
        raise TaskregError(f"query (D,) and candidates (M, D) do not match: {q.shape} vs {cands.shape}")
    if cands.shape[0] == 0:
        return []
    if not (np.isfinite(q).all() and np.isfinite(cands).all()):
        raise TaskregError("query or candidates contain NaN or infinite values")
    if "trivial" in selector.needs:
        if t0 is None:
            raise TaskregError(f"method {method!r} needs the trivial embedding t0 of the probe network")
        t0 = np.asarray(t0, dtype=np.float64)
        if t0.shape != q.shape:
            raise TaskregError(f"t0 has shape {t0.shape}, the query {q.shape}")
    inputs = SelectorInput(n=cands.shape[0], query=q, candidates=cands, t0=t0, alpha=alpha)
    return rank(selector, selector.score(inputs), cands.shape[0])


def generic_expert(num_classes: Sequence[int], num_samples: Sequence[int]) -> int:
    """Index of the "generic" expert: the one trained on the broadest task.

    Broadest = largest ``num_classes * num_samples`` (the ImageNet expert of Table 1 is both the most
    varied and the largest); ties go to more classes, then to the lower index. Arguments: (E,) each.
    """
    classes = np.asarray(num_classes, dtype=np.int64)
    samples = np.asarray(num_samples, dtype=np.int64)
    if classes.ndim != 1 or classes.size == 0 or classes.shape != samples.shape:
        raise TaskregError(
            f"num_classes and num_samples must be equal-length non-empty lists, got {classes.shape}, "
            f"{samples.shape}"
        )
    # lexsort sorts by the last key first; negate for "largest first", index breaks the remaining ties
    order = np.lexsort((np.arange(classes.size), -classes, -(classes * samples)))
    return int(order[0])


def random_ranking(n: int, seed: int) -> list[int]:
    """A uniformly random ranking of n experts (the "chance" baseline), deterministic given seed."""
    if n < 0:
        raise TaskregError(f"n must be >= 0, got {n}")
    return np.random.default_rng(seed).permutation(n).tolist()


@dataclass(frozen=True)
class Verified(Generic[C]):
    """A candidate measured on the query data by the linear-probe protocol."""

    candidate: C
    result: ProbeResult


def verify_topk(
    feature_fn: Callable[[C, np.ndarray], np.ndarray],
    candidates: Sequence[C],
    x: np.ndarray,
    y: np.ndarray,
    protocol: LinearProbeProtocol | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[C, list[Verified[C]]]:
    """Measure each candidate with a linear probe on the query data; return (winner, measurements).

    ``candidates`` are the top K of a ranking (best first, any hashable ids); ``feature_fn(candidate, x)``
    returns that expert's frozen (N, D) features of the query images ``x`` (e.g. a closure over
    :func:`taskreg.trainers.experts.extract_features`). The winner has the lowest test error; ties go to
    the candidate ranked earlier. The measurements come back sorted the same way (best first).
    """
    from taskreg.trainers.experts import LinearProbeProtocol, linear_probe_error

    if len(candidates) == 0:
        raise TaskregError("verify_topk needs at least one candidate")
    protocol = protocol or LinearProbeProtocol()
    measured: list[Verified[C]] = []
    for done, candidate in enumerate(candidates, start=1):
        measured.append(Verified(candidate, linear_probe_error(feature_fn(candidate, x), y, protocol)))
        if progress is not None:
            progress(done, len(candidates))
    measured.sort(key=lambda v: v.result.test_error)  # stable: earlier-ranked candidates win ties
    return measured[0].candidate, measured
