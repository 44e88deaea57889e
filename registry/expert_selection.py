"""Expert selection: ``select`` answers "which feature extractor for this dataset?".

The query is embedded once with the probe, the Faiss index proposes candidates (cosine on normalised vectors, so the
cost per query does not grow with the number of experts), and the candidates are re-ranked exactly by the chosen
distance. The transferability baselines (LogME, LEEP, NCE, H-score) need a forward pass of every expert over the
query data instead; their cost is reported with the answer. The ranking methods are the selector registry's
(:func:`taskreg.selection.selectors.list_selectors`): a method's cost class and needs decide what is gathered for it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.progress import Progress, stage
from taskreg.registry import catalog, expert_basis
from taskreg.registry.expert_pool import CatalogExperts, ExpertPool, IndexPlan, ListedExperts
from taskreg.registry.expert_side import ExpertSide
from taskreg.registry.index import search
from taskreg.registry.model2vec_fitting import Model2VecFitter

if TYPE_CHECKING:
    import faiss

    from taskreg.registry.index import LoggedIndex
    from taskreg.selection.selectors import Selector


@dataclass(frozen=True)
class RankedExpert:
    """One row of a ranking: the expert's rank, its score (None, with the reason, when the method cannot score it)
    and its measured test error on the query (when the query is a registered task or the expert was verified);
    ``basis``: what a score rests on (a Model2Vec vector's form, the training task's Task2Vec, a forward pass, ...),
    None for an unscored row — a ranking never mixes kinds silently."""

    rank: int
    expert: str
    score: float | None
    trained_on: str | None
    measured_error: float | None
    unscored_reason: str | None = None
    basis: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "expert": self.expert, "score": self.score,
                               "trained_on": self.trained_on, "measured_error": self.measured_error,
                               "basis": self.basis}
        if self.score is None:
            out["unscored_reason"] = self.unscored_reason
        return out


@dataclass(frozen=True)
class VerifiedExpert:
    """One expert measured with the linear probe on the query (``--verify``); ``note`` says why it could not be."""

    expert: str
    test_error: float | None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"expert": self.expert, "test_error": self.test_error}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class SelectionStage:
    """One stage of ``--method two-stage``: the method, the experts it scored, its wall time and what it cost."""

    method: str
    experts_scored: tuple[str, ...]
    seconds: float
    cost: str

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "experts_scored": list(self.experts_scored), "seconds": self.seconds,
                "cost": self.cost}


@dataclass(frozen=True)
class Selection:
    """The answer of :meth:`SelectionService.select` (the CLI's JSON shape, plus diagnostics)."""

    query: str
    method: str
    results: tuple[RankedExpert, ...]
    seconds: float
    cost: str
    candidates_scored: int
    n_experts: int
    verified: tuple[VerifiedExpert, ...] = ()
    measured_winner: str | None = None
    better: str = "lower"  # "lower" or "higher": which way the method's score points
    stages: tuple[SelectionStage, ...] = ()  # --method two-stage: the shortlist stage, then the re-ranking stage

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "method": self.method, "better": self.better,
                               "results": [r.to_json() for r in self.results], "seconds": self.seconds,
                               "cost": self.cost, "candidates_scored": self.candidates_scored,
                               "n_experts": self.n_experts}
        if self.stages:
            out["stages"] = [st.to_json() for st in self.stages]
        if self.verified:
            out["verified"] = [v.to_json() for v in self.verified]
            out["measured_winner"] = self.measured_winner
        return out


@dataclass(frozen=True)
class Scored:
    """One expert in a ranking: its score, or None and the reason the method could not score it."""

    expert: catalog.ExpertRecord
    score: float | None
    unscored_reason: str | None = None


def nonfinite_note(what: str = "features") -> str:
    """Why an expert whose ``what`` (features, outputs) on the query hold NaN or Inf is not scored or measured."""
    return f"NaN or infinite {what} on the query (its weights are broken; `taskreg expert rm` removes it)"


def candidate_floor_for(top: int) -> int:
    """How many index hits to re-rank exactly: enough slack for the non-metric d_asym."""
    return max(50, 4 * top)


class SelectionService:
    """``select`` on one registry: ranks its experts for a dataset by a registered ranking method."""

    def __init__(self, side: ExpertSide, model2vec: Model2VecFitter) -> None:
        self.side = side
        self.model2vec = model2vec

    def select(
        self, source: str, *, top: int = 5, method: str | None = None, verify: int = 0, probe: str | None = None,
        embedding: str = "montecarlo", alpha: float = 0.15, max_samples: int | None = 1000, seed: int = 0,
        device: str = "cpu", dataset: datasets.Dataset | None = None, progress: Progress = None,
        shortlist: int = 5, rerank: str = "logme", shortlist_by: str | None = None,
    ) -> Selection:
        """Rank the registered experts for a dataset (see the module docstring).

        ``method="two-stage"``: an index method (``shortlist_by``; default model2vec when fitted, else asym)
        shortlists ``shortlist`` experts at the cost of one probe pass, then the forward method ``rerank`` scores
        only those; the other experts follow in the first stage's order, unscored, with their rank there.
        """
        from taskreg.selection.selectors import TWO_STAGE, get_selector

        t_start = time.perf_counter()
        if top < 1:
            raise TaskregError(f"--top must be at least 1, got {top}")
        if verify < 0:
            raise TaskregError(f"--verify must be >= 0, got {verify}")
        with self.side.core.session():  # these reads share one catalog connection, closed before the probe pass
            with self.side.core.read() as con:
                n_experts = catalog.count_experts(con)
            if not n_experts:
                raise TaskregError("no experts registered: `taskreg expert add` or `taskreg expert train` first")
            prec = self.side.probes.resolve_probe(probe)
            fitted = self.model2vec.fitted(prec.name, embedding)
            index_default = "model2vec" if fitted else "asym"
            if method is None:
                method = index_default
            if method == TWO_STAGE:
                first, selector = self._two_stage_methods(shortlist_by or index_default, rerank, shortlist)
            else:
                first, selector = None, get_selector(method)  # an unknown method: one line listing the registered
            for sel_ in (first, selector):
                if sel_ is not None and "model2vec" in sel_.needs and not fitted:
                    raise TaskregError("Model2Vec is not fitted for this probe: run `taskreg model2vec fit`")
            by_index = first if first is not None else selector if selector.cost == "index" else None
            plan = self._index_plan(by_index, prec, embedding) if by_index is not None else None
            # an index method alone names only the experts the index proposes: no need to list them all
            listed = first is not None or selector.cost != "index"
            experts = self.side.experts.list_experts() if listed else []
        ds = dataset if dataset is not None else datasets.load(source)
        pool: ExpertPool = ListedExperts(experts) if listed else CatalogExperts(self.side.core, n_experts)

        # the method's cost class and needs decide what is gathered for its scorer, never its name
        stages: tuple[SelectionStage, ...] = ()
        with contextlib.ExitStack() as after_probe:
            if first is not None:
                assert plan is not None
                assert isinstance(pool, ListedExperts)
                ranked, scored, cost, stages = self._rank_two_stage(ds, first, selector, plan, embedding, alpha,
                                                                    max_samples, seed, device, pool, shortlist,
                                                                    progress)
            elif selector.cost == "index":
                assert plan is not None
                query = self._embed_query(ds, selector, plan, embedding, max_samples, seed, device, progress)
                after_probe.enter_context(self.side.core.session())  # the reads from here on share one connection
                ranked, scored, cost = self._rank_embedded(ds, selector, plan, embedding, query, alpha, max_samples,
                                                           pool, top, shown=top)
            elif selector.cost == "forward":
                ranked, scored, cost = self._rank_by_forward(ds, selector, experts, device, progress)
            else:
                stage(progress, f"ranking {len(experts)} experts by {selector.name} (no computation on the query)")
                ranked, scored, cost = self._rank_without_query(selector, experts, seed), 0, "no computation"
            # an expert the method cannot score comes last, with its reason instead of a number (never NaN)
            ranked = [r for r in ranked if r.score is not None] + [r for r in ranked if r.score is None]

            if verify:
                after_probe.close()  # verifying runs experts forward: no catalog connection is held meanwhile
                stage(progress, f"verifying the top {min(verify, len(ranked))} with a linear probe on the query")
            verified, winner = self._verify([r.expert for r in ranked[:verify]], ds, device) if verify else ((), None)
            with self.side.core.read() as con:  # measured on the query when it is a registered task, else verified
                measured = catalog.measured_errors_by_fingerprint(con, ds.fingerprint())
                # what each score rests on (a ranking may mix kinds: never silently)
                bases = expert_basis.score_bases(con, selector, prec.name, embedding,
                                                 [r.expert for r in ranked[:top] if r.score is not None])
        verified_errors = {v.expert: v.test_error for v in verified}
        results = tuple(
            RankedExpert(rank=i + 1, expert=r.expert.name, score=r.score, trained_on=r.expert.trained_on,
                         measured_error=measured.get(r.expert.id, verified_errors.get(r.expert.name)),
                         unscored_reason=r.unscored_reason if r.score is None else None,
                         basis=bases.get(r.expert.id))
            for i, r in enumerate(ranked[:top]))
        return Selection(query=source, method=method, results=results, seconds=time.perf_counter() - t_start,
                         cost=cost, candidates_scored=scored, n_experts=n_experts, verified=verified,
                         measured_winner=winner, better=selector.better, stages=stages)

    @staticmethod
    def _two_stage_methods(shortlist_by: str, rerank: str, shortlist: int) -> tuple[Selector, Selector]:
        """The two selectors of ``two-stage``, checked: an index method first, a forward method second."""
        from taskreg.selection.selectors import get_selector, list_selectors

        if isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1:
            raise TaskregError(f"--shortlist must be an integer >= 1, got {shortlist!r}")
        first, second = get_selector(shortlist_by), get_selector(rerank)
        if first.cost != "index":
            raise TaskregError(f"--shortlist-by must be an index method ({', '.join(list_selectors('index'))}), "
                               f"got {shortlist_by!r}")
        if second.cost != "forward":
            raise TaskregError(f"--rerank must be a forward method ({', '.join(list_selectors('forward'))}), "
                               f"got {rerank!r}")
        return first, second

    def _rank_two_stage(self, ds: datasets.Dataset, first: Selector, second: Selector, plan: IndexPlan,
                        embedding: str,
                        alpha: float, max_samples: int | None, seed: int, device: str,
                        pool: ListedExperts, shortlist: int,
                        progress: Progress) -> tuple[list[Scored], int, str, tuple[SelectionStage, ...]]:
        """Shortlist by the index method, re-rank the shortlist by the forward method; the rest follow, unscored."""
        t0 = time.perf_counter()
        ranked1, scored1, cost1 = self._rank_by_index(ds, first, plan, embedding, alpha, max_samples, seed, device,
                                                      pool, shortlist, progress)
        short = [r.expert for r in ranked1 if r.score is not None][:shortlist]
        t1 = time.perf_counter()
        ranked2, scored2, cost2 = self._rank_by_forward(ds, second, short, device, progress)
        t2 = time.perf_counter()
        chosen = {e.id for e in short}
        rest = [r if r.score is None else
                Scored(r.expert, None, f"not in the {len(short)}-expert shortlist of {first.name} (rank {i + 1} there)")
                for i, r in enumerate(ranked1) if r.expert.id not in chosen]
        stages = (SelectionStage(first.name, tuple(r.expert.name for r in ranked1 if r.score is not None), t1 - t0,
                                 cost1),
                  SelectionStage(second.name, tuple(e.name for e in short), t2 - t1, cost2))
        cost = f"{first.name} shortlist of {len(short)}: {cost1}; then {second.name}: {cost2}"
        return ranked2 + rest, scored1 + scored2, cost, stages

    def _verify(self, cands: list[catalog.ExpertRecord], ds: datasets.Dataset,
                device: str) -> tuple[tuple[VerifiedExpert, ...], str | None]:
        """Measure the top candidates with the linear probe on the query: (the measurements, the measured winner).

        An expert whose features on the query are not finite cannot be measured: it is listed last with
        ``test_error`` None and a note, and cannot be the measured winner.
        """
        from taskreg.selection import select as sel
        from taskreg.trainers.experts import LinearProbeProtocol

        feats: dict[str, np.ndarray] = {}
        broken: list[str] = []
        for e in cands:
            rec, model, spec = self.side.experts.load_expert(e.name)
            f = self.side.evaluator.expert_features(rec, model, spec, ds, device=device)
            if np.isfinite(f).all():
                feats[e.name] = f
            else:
                broken.append(e.name)
        verified: list[VerifiedExpert] = []
        winner = None
        if feats:
            best, measures = sel.verify_topk(lambda name, _x: feats[name], list(feats), ds.x, ds.y,
                                             LinearProbeProtocol())
            verified = [VerifiedExpert(str(m.candidate), m.result.test_error) for m in measures]
            winner = str(best)
        verified += [VerifiedExpert(n, None, nonfinite_note()) for n in broken]
        return tuple(verified), winner

    def _index_plan(self, selector: Selector, prec: catalog.ProbeRecord, embedding: str) -> IndexPlan:
        """The index ``selector`` searches, loaded (or rebuilt, when stale) now: before the probe pass, so a writer
        in another process never waits on a rebuild and the catalog is not held open during the pass. Checks the
        probe's weights too (sha256), so a damaged probe fails before any work."""
        self.side.probes.check_weights(prec)
        vec_method = "domain" if "domain" in selector.needs else embedding
        vectors = "model2vec" if "model2vec" in selector.needs else "task"  # the experts' own vectors, or their tasks'
        # Model2Vec: the index holds expert vectors. Task2Vec / domain: it holds task vectors, and an expert is
        # represented by its training task.
        index = self.side.index_manager.get(self.side.index_manager.kind(vectors, prec.name, vec_method))
        return IndexPlan(prec, vectors, vec_method, index)

    def _embed_query(self, ds: datasets.Dataset, selector: Selector, plan: IndexPlan, embedding: str,
                     max_samples: int | None, seed: int, device: str, progress: Progress) -> np.ndarray:
        """The query's vector for ``selector``: its Task2Vec (or domain) embedding on the plan's probe, (D,)."""
        stage(progress, f"embedding the query ({embedding} Task2Vec on probe {plan.probe.name}, "
                        f"{min(ds.n, max_samples or ds.n)} images)")
        _, emb, dom = self.side.tasks.embed_dataset(ds, probe=plan.probe, method=embedding, max_samples=max_samples,
                                                    seed=seed, device=device, progress=progress)
        stage(progress, f"ranking the experts by {selector.name} (index search and exact re-rank)")
        return dom if "domain" in selector.needs else emb.vector

    def _rank_by_index(self, ds: datasets.Dataset, selector: Selector, plan: IndexPlan, embedding: str, alpha: float,
                       max_samples: int | None, seed: int, device: str, pool: ExpertPool,
                       top: int, progress: Progress = None) -> tuple[list[Scored], int, str]:
        """Embed the query once; Faiss candidates; exact re-rank. Experts without a vector come last, unscored."""
        query = self._embed_query(ds, selector, plan, embedding, max_samples, seed, device, progress)
        with self.side.core.session():  # the catalog reads after the probe pass share one connection
            return self._rank_embedded(ds, selector, plan, embedding, query, alpha, max_samples, pool, top)

    def _rank_embedded(self, ds: datasets.Dataset, selector: Selector, plan: IndexPlan, embedding: str,
                       query: np.ndarray, alpha: float, max_samples: int | None,
                       pool: ExpertPool, top: int, shown: int | None = None
                       ) -> tuple[list[Scored], int, str]:
        """Rank by the plan's index once the query is embedded (``query`` (D,)): Faiss candidates, then the exact
        distance. Experts without a vector come last, unscored.

        ``shown``: only the first ``shown`` rows of the ranking will be read, so it stops there (the unscored
        experts beyond are not listed: finding each one's reason reads every task name of the catalog).
        """
        from taskreg.selection.select import rerank

        probe, vectors, vec_method, index = plan.probe.name, plan.vectors, plan.vec_method, plan.index
        t0 = self.side.probes.trivial(probe, embedding) if "trivial" in selector.needs else None
        n_experts = len(pool)
        want = max(candidate_floor_for(top), top)
        while True:
            pairs = self._candidates(index, vectors, probe, vec_method, query, want, pool)
            if len({e.id for e, _ in pairs}) >= min(top, n_experts) or want >= 4 * n_experts + 64:
                break
            want *= 4
        ranked: list[Scored] = []
        if pairs:
            cands = np.stack([v for _, v in pairs])
            order = rerank(query, cands, selector.name, t0=t0, alpha=alpha)
            seen: set[int] = set()
            for r in order:
                e = pairs[r.index][0]
                if e.id not in seen:
                    seen.add(e.id)
                    ranked.append(Scored(e, r.score))
        ranked_ids = {x.expert.id for x in ranked}
        rest = pool.others(ranked_ids, None if shown is None else shown - len(ranked))
        if rest:
            reasons = self._unscored_reasons(vectors, probe, vec_method, rest, want)
            ranked += [Scored(e, None, reasons[e.id]) for e in rest]
        cost = f"1 probe pass over {min(ds.n, max_samples or ds.n)} images; {len(pairs)} candidates re-ranked"
        return ranked, len(pairs), cost

    def _unscored_reasons(self, method: str, probe: str, vec_method: str, experts: list[catalog.ExpertRecord],
                          want: int) -> dict[int, str]:
        """Why each of ``experts`` got no distance from an index method (expert id -> one-line reason)."""
        with self.side.core.read() as con:
            return expert_basis.unscored_reasons(con, method, probe, vec_method, experts, want)

    def _candidates(self, index: faiss.Index | LoggedIndex | None, method: str, probe: str, vec_method: str,
                    query: np.ndarray, want: int, pool: ExpertPool
                    ) -> list[tuple[catalog.ExpertRecord, np.ndarray]]:
        """(expert, vector) pairs for the top ``want`` hits of ``index`` (``method``'s: "model2vec" or "task")."""
        if index is None:
            return []
        fetch = catalog.model2vec_vectors if method == "model2vec" else catalog.expert_task_vectors
        ids, _ = search(index, query, want)
        with self.side.core.read() as con:
            found, vectors = fetch(con, probe, vec_method, ids.tolist())
        by_id = pool.records(sorted({int(i) for i in found}))
        return [(by_id[int(i)], v) for i, v in zip(found, vectors, strict=True) if int(i) in by_id]

    def _rank_by_forward(self, ds: datasets.Dataset, selector: Selector, experts: list[catalog.ExpertRecord],
                         device: str, progress: Progress) -> tuple[list[Scored], int, str]:
        """Methods that run every expert over the query (transferability scores), one expert at a time.

        An expert whose features (or outputs) on the query are not finite is not scored: it comes last
        with the reason, so one broken expert does not stop the ranking of the others. A ``pooled`` selector
        (scores relative to the other experts) scores the finite outputs of all experts in one call."""
        from taskreg.selection import select as sel
        from taskreg.selection.selectors import SelectorInput
        from taskreg.trainers.experts import head_logits

        features = "features" in selector.needs  # else the head's logits
        scores: list[float] = []
        scored: list[catalog.ExpertRecord] = []
        unscored: list[Scored] = []
        pool: list[tuple[catalog.ExpertRecord, np.ndarray]] = []  # pooled selectors: scored after the loop
        refused: dict[int, str] = {}  # expert id -> why the scorer refused its outputs
        t0 = time.perf_counter()
        stage(progress, f"scoring experts by {selector.name} (one forward pass of each over the query)")
        if progress and experts:
            progress(0, len(experts))
        for i, e in enumerate(experts):
            rec, model, spec = self.side.experts.load_expert(e.name)
            values = self.side.evaluator.expert_features(rec, model, spec, ds, device=device)  # cached per query
            if not features:  # the head's logits: fc(features), so every score shares one forward pass
                values = head_logits(model, values)
            if not np.isfinite(values).all():
                unscored.append(Scored(e, None, nonfinite_note("features" if features else "outputs")))
            elif selector.pooled:
                pool.append((e, values))
            else:
                try:
                    result: object = selector.score(SelectorInput(n=1, outputs=(values,), y=ds.y))
                except TaskregError as exc:  # e.g. SFDA on collapsed features: this expert, not the query
                    refused[e.id] = str(exc)
                    result = np.nan
                self._keep_score(selector, e, result, scores, scored, unscored, refused.get(e.id))
            if progress:
                progress(i + 1, len(experts))
        if pool:
            try:
                values_all = selector.score(SelectorInput(n=len(pool), outputs=[v for _, v in pool], y=ds.y))
            except TaskregError:  # find the experts whose outputs it refuses (alone), pool the others
                for e, v in pool:
                    try:
                        selector.score(SelectorInput(n=1, outputs=(v,), y=ds.y))
                    except TaskregError as exc:
                        refused[e.id] = str(exc)
                        self._keep_score(selector, e, np.nan, scores, scored, unscored, str(exc))
                pool = [(e, v) for e, v in pool if e.id not in refused]
                values_all = (selector.score(SelectorInput(n=len(pool), outputs=[v for _, v in pool], y=ds.y))
                              if pool else [])
            for (e, _), value in zip(pool, np.asarray(values_all, dtype=np.float64).reshape(-1), strict=True):
                self._keep_score(selector, e, value, scores, scored, unscored)
        if refused and not scored and len(set(refused.values())) == 1:
            raise TaskregError(next(iter(refused.values())))  # every expert refused alike: it is the query
        ranked = sel.rank_by_scores(scores, higher_is_better=selector.higher_is_better)
        cost = f"a forward pass of all {len(experts)} experts over {ds.n} images ({time.perf_counter() - t0:.1f} s)"
        return [Scored(scored[r.index], r.score) for r in ranked] + unscored, len(experts), cost

    @staticmethod
    def _keep_score(selector: Selector, e: catalog.ExpertRecord, result: object, scores: list[float],
                    scored: list[catalog.ExpertRecord], unscored: list[Scored], refusal: str | None = None) -> None:
        """File one expert's forward score: with the scored if finite, else with the unscored and why."""
        score = np.asarray(result, dtype=np.float64).reshape(-1)[0]
        if refusal is not None:
            unscored.append(Scored(e, None, f"{selector.name} cannot score its features on the query: {refusal}"))
        elif np.isfinite(score):
            scores.append(float(score))
            scored.append(e)
        else:
            unscored.append(Scored(e, None, f"{selector.name} is not finite on the query ({score})"))

    def _rank_without_query(self, selector: Selector, experts: list[catalog.ExpertRecord], seed: int) -> list[Scored]:
        """Methods that compute nothing on the query: from the experts' training-set sizes ("sizes": classes x
        samples, from the expert or its registered training task), from their reference accuracies ("prior"),
        or from nothing at all (chance). Experts without the fact come last, unscored, with the reason."""
        from taskreg.selection import select as sel
        from taskreg.selection.selectors import SelectorInput

        known: dict[int, Any] = dict(enumerate(experts))  # expert position -> its fact (chance: the record)
        missing = ""
        if "sizes" in selector.needs:
            tasks = {t.name: t for t in self.side.tasks.list_tasks()}
            known = {}
            for i, e in enumerate(experts):
                task = tasks.get(e.trained_on or "")
                if e.n_classes and e.n_train:
                    known[i] = (e.n_classes, e.n_train)
                elif task is not None:
                    known[i] = (task.n_classes, task.n_samples)
            missing = "training-set size unknown (no training task recorded)"
        elif "prior" in selector.needs:
            known = {i: e.reference_accuracy for i, e in enumerate(experts) if e.reference_accuracy is not None}
            missing = ("no reference accuracy recorded (`expert add --reference-accuracy`, or trained with "
                       "--holdout 0)")
        order = list(known)
        ranked: list[Scored] = []
        if order:
            facts = [known[i] for i in order]
            inputs = SelectorInput(n=len(order), sizes=facts if "sizes" in selector.needs else (),
                                   priors=facts if "prior" in selector.needs else (), seed=seed)
            ranked = [Scored(experts[order[r.index]], r.score)
                      for r in sel.rank(selector, selector.score(inputs), len(order))]
        return ranked + [Scored(e, None, missing) for i, e in enumerate(experts) if i not in known]
