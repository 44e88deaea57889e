"""Experts: register, fine-tune, evaluate (expert × task results), Model2Vec, and ``select``.

Reason: registration, evaluation, Model2Vec and select of experts; its SQL still moves into the catalog layer
  and select then splits out (issue 13, open).

``select`` answers "which feature extractor for this dataset?": the query is embedded once with the
probe, the Faiss index proposes candidates (cosine on normalised vectors, so the cost per query does
not grow with the number of experts), and the candidates are re-ranked exactly by the chosen
distance. The transferability baselines (LogME, LEEP, NCE, H-score) need a forward pass of every
expert over the query data instead; their cost is reported with the answer.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.core import Core
from taskreg.registry.damage import clear_stray_model, refuse_lost_model
from taskreg.registry.index import IndexManager, search
from taskreg.registry.names import check_name
from taskreg.registry.probes import ProbeService
from taskreg.registry.runs import marking_removal, pending_run, store_weights
from taskreg.registry.tasks import TaskService
from taskreg.registry.weights import file_sha256, head_classes

if TYPE_CHECKING:
    from torch import nn

    from taskreg.embedders.probes import ProbeSpec
    from taskreg.selection.selectors import Selector
    from taskreg.trainers.experts import LinearProbeProtocol

# The ranking methods of `select` are the selector registry's: taskreg.selection.selectors.list_selectors().


@dataclass
class Selection:
    """The answer of :meth:`ExpertService.select` (the CLI's JSON shape, plus diagnostics)."""

    query: str
    method: str
    results: list[dict[str, Any]]
    seconds: float
    cost: str
    candidates_scored: int
    n_experts: int
    verified: list[dict[str, Any]] = field(default_factory=list)
    measured_winner: str | None = None
    better: str = "lower"  # "lower" or "higher": which way the method's score points

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "method": self.method, "better": self.better,
                               "results": self.results, "seconds": self.seconds, "cost": self.cost,
                               "candidates_scored": self.candidates_scored, "n_experts": self.n_experts}
        if self.verified:
            out["verified"] = self.verified
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


class ExpertService:
    """The experts of one registry: records, registration, evaluation, Model2Vec and ``select``."""

    def __init__(self, core: Core, index_manager: IndexManager, probes: ProbeService, tasks: TaskService) -> None:
        self.core = core
        self.index_manager = index_manager
        self.probes = probes
        self.tasks = tasks

    # ------------------------------------------------------------------ experts
    def list_experts(self) -> list[catalog.ExpertRecord]:
        with self.core.read() as con:
            return catalog.list_experts(con)

    def get_expert(self, name: str) -> catalog.ExpertRecord:
        with self.core.read() as con:
            rec = catalog.get_expert(con, name)
        if rec is None:
            raise TaskregError(f"unknown expert {name!r} (see `taskreg expert list`)")
        return rec

    def show_expert(self, name: str) -> dict[str, Any]:
        rec = self.get_expert(name)
        with self.core.read() as con:
            results = con.execute(
                "SELECT t.name, r.test_error FROM expert_task_results r JOIN tasks t ON t.id = r.task_id "
                "WHERE r.expert_id = ? ORDER BY r.test_error", [rec.id]
            ).fetchall()
        return {**asdict(rec), "task_errors": [{"task": t, "test_error": e} for t, e in results]}

    def remove_expert(self, name: str) -> None:
        rec = self.get_expert(name)
        # the model goes under the same hold of the lock as the row: a new `expert add` of the name waits
        with self.core.lock():
            with marking_removal(self.core.tracker) as mark, self.core.write() as con:
                if con.execute("SELECT 1 FROM experts WHERE id = ?", [rec.id]).fetchone() is None:
                    raise TaskregError(f"unknown expert {name!r} (removed meanwhile)")
                kinds = [r[0] for r in con.execute(
                    "SELECT DISTINCT 'model2vec/' || probe || '/' || method FROM model2vec WHERE expert_id = ?",
                    [rec.id],
                ).fetchall()]
                mark([rec.run_id] if rec.run_id else [])
                con.execute("DELETE FROM expert_task_results WHERE expert_id = ?", [rec.id])
                con.execute("DELETE FROM model2vec WHERE expert_id = ?", [rec.id])
                con.execute("DELETE FROM experts WHERE id = ?", [rec.id])
                for kind in kinds:
                    catalog.bump_generation(con, kind)
            self.core.tracker.delete_registered_model(f"expert-{rec.name}")
        for kind in kinds:
            self.index_manager.rebuild(kind)
        if rec.run_id:
            self.core.tracker.delete_run(rec.run_id)

    # ------------------------------------------------------------------ registration
    def load_expert(self, name: str) -> tuple[catalog.ExpertRecord, nn.Module, ProbeSpec]:
        from taskreg.embedders.probes import create_model, default_spec, load_state_dict_file, load_weights

        rec = self.get_expert(name)
        path = self.core.root / rec.weights
        if not path.exists() or file_sha256(path) != rec.sha256:
            raise TaskregError(f"expert {name}: weights file {rec.weights} is missing or altered (run check)")
        state = load_state_dict_file(path)
        model = create_model(rec.arch, num_classes=head_classes(state))
        load_weights(model, state, ignore_head=False)
        return rec, model.eval(), default_spec(rec.arch)

    def add_expert(self, name: str, *, arch: str, weights: Path, trained_on: str | None = None) -> catalog.ExpertRecord:
        """Register a user's feature extractor from a weight file (read with ``weights_only=True``)."""
        from taskreg.embedders.probes import create_model, load_state_dict_file, load_weights

        check_name(name, "expert name")
        self.refuse_existing_expert(name)
        if trained_on is not None:
            self.tasks.get_task(trained_on)
        if not Path(weights).is_file():
            raise TaskregError(f"weight file {weights} not found")
        state = load_state_dict_file(weights)
        model = create_model(arch, num_classes=head_classes(state))
        load_weights(model, state, ignore_head=False)
        return self.register_expert(name, model, arch, trained_on, "added", {"weights_file": str(weights)},
                                     label=f"weights {weights}")

    def train_expert(
        self, name: str, source: str, *, from_probe: bool = True, probe: str | None = None,
        arch: str = "cifar_resnet20", task_name: str | None = None, epochs: int = 8, seed: int = 0,
        device: str = "cpu", progress: Progress = None, embed_progress: Progress = None,
        max_samples: int | None = 1000, train_blocks: int | None = None,
    ) -> catalog.ExpertRecord:
        """Fine-tune an expert on a dataset (from the probe's weights or from scratch) and register it.

        The training data becomes the expert's ``trained_on`` task (named ``task_name``, default the
        expert's name), embedded with the probe if it is not registered yet (on a class-balanced
        subsample of ``max_samples`` images; the expert itself trains on all of them).
        ``train_blocks`` set: only the network's last ``train_blocks`` blocks, its head and a new ``fc`` train, on
        activations of the frozen rest computed once (``trainers.partial_finetune``; 0 = a new linear head only).
        """
        from taskreg.embedders.probes import create_model, default_spec
        from taskreg.embedders.weight_checks import check_network
        from taskreg.trainers.experts import finetune_expert

        check_name(name, "expert name")
        self.refuse_existing_expert(name)
        ds = datasets.load(source)
        task = self._task_by_fingerprint(ds) or task_name or name
        check_name(task, "task name")
        if from_probe:
            _, base, spec = self.probes.load_probe(probe)
            arch = spec.arch
        else:
            base, spec = create_model(arch, num_classes=ds.n_classes), default_spec(arch)
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if train_blocks is None:
            model = finetune_expert(base, spec, ds.x, ds.y, epochs=epochs, seed=seed, device=device,
                                    progress=progress)
        else:
            from taskreg.trainers.partial_finetune import finetune_last_blocks

            model, cost = finetune_last_blocks(base, spec, ds.x, ds.y, train_blocks=train_blocks, epochs=epochs,
                                               seed=seed, device=device, progress=progress)
            metrics = {"cache_seconds": cost.seconds_cache, "trained_params": cost.n_params_trained}
        metrics["train_seconds"] = time.perf_counter() - t0
        label = f"expert {name}: the fine-tuned network"
        check_network(model, default_spec(arch), label)  # a diverged training registers nothing, not even its task
        if not self._task_exists(task):
            self.tasks.add_task(task, ds.source, probe=probe, seed=seed, device=device, progress=embed_progress,
                                dataset=ds, max_samples=max_samples)
        params = {"source": ds.source, "from_probe": from_probe, "epochs": epochs, "seed": seed,
                  "n_train": ds.n, "n_classes": ds.n_classes}
        if train_blocks is not None:
            params["train_blocks"] = train_blocks
        return self.register_expert(name, model, arch, task, "trained", params, metrics, n_train=ds.n,
                                     n_classes=ds.n_classes, label=label)

    def _task_exists(self, name: str) -> bool:
        with self.core.read() as con:
            return catalog.get_task(con, name) is not None

    def _task_by_fingerprint(self, ds: datasets.Dataset) -> str | None:
        with self.core.read() as con:
            row = con.execute("SELECT name FROM tasks WHERE fingerprint = ? ORDER BY id LIMIT 1",
                              [ds.fingerprint()]).fetchone()
        return row[0] if row else None

    def refuse_existing_expert(self, name: str) -> None:
        with self.core.read() as con:
            if catalog.get_expert(con, name) is not None:
                raise TaskregError(f"expert {name!r} already exists")
        # before any work: the name may be taken by a record the catalog lost
        refuse_lost_model(self.core.tracker, f"expert-{name}")

    def register_expert(self, name: str, model: nn.Module, arch: str, trained_on: str | None, origin: str,
                         params: dict, metrics: dict | None = None, *, n_train: int | None = None,
                         n_classes: int | None = None, label: str | None = None,
                         extra_tags: dict[str, str] | None = None) -> catalog.ExpertRecord:
        """Store a network as an expert; it must be usable first (``label`` names it in the refusal).
        ``extra_tags`` go on the run and the registered model (e.g. a zoo model's source and license)."""
        from taskreg.embedders.probes import default_spec
        from taskreg.embedders.weight_checks import check_network

        check_network(model, default_spec(arch), label or f"expert {name}")
        tags = {"arch": arch, "trained_on": trained_on or "", "taskreg.kind": "expert", "origin": origin,
                **(extra_tags or {})}
        with pending_run(self.core, "experts", f"expert-{name}", {"arch": arch, **params}, tags) as run:
            self.core.tracker.log_metrics(run.run_id, metrics or {})
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            rel, sha = store_weights(self.core, run, state, f"{name}.pt")
            # The registered model and the catalog row are created under one hold of the lock, so a model
            # without a row is the leftover of a killed attempt (or of a killed `expert rm`): replace it,
            # unless it holds a committed expert the catalog lost (refused, never deleted).
            with self.core.lock():
                self.refuse_existing_expert(name)  # another process may have registered it meanwhile
                clear_stray_model(self.core.tracker, f"expert-{name}")
                version = self.core.tracker.register(f"expert-{name}", run, "weights", tags)
                try:
                    with self.core.write() as con:
                        catalog.insert_expert(con, name=name, arch=arch, sha256=sha, weights=rel,
                                              trained_on=trained_on, origin=origin, n_train=n_train,
                                              n_classes=n_classes, run_id=run.run_id, model_version=version)
                except BaseException:
                    self.core.tracker.delete_registered_model(f"expert-{name}")
                    raise
        self.core.tracker.commit(run.run_id)
        return self.get_expert(name)

    # ------------------------------------------------------------------ evaluation
    def expert_features(self, rec: catalog.ExpertRecord, model: nn.Module, spec: ProbeSpec, ds: datasets.Dataset,
                        *, device: str = "cpu") -> np.ndarray:
        """Frozen features of an expert on a dataset, computed once and cached in ``cache/features``."""
        from taskreg.trainers.experts import extract_features

        path = self.core.cache_dir / "features" / f"{rec.sha256[:16]}-{ds.fingerprint()[:16]}.npy"
        if path.exists():
            try:
                feats = np.load(path, allow_pickle=False)
                if feats.shape[0] == ds.n:
                    return feats
            except (OSError, ValueError):
                pass
        feats = extract_features(model, spec, ds.x, device=device)
        if not self.core.read_only:  # a registry this user cannot write still answers, without the cache
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, feats)
            tmp.replace(path)
        return feats

    def evaluate(
        self, *, experts: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
        protocol: LinearProbeProtocol | None = None, device: str = "cpu", progress: Progress = None,
        on_unmeasurable: Callable[[str], None] | None = None,
    ) -> tuple[int, int]:
        """Fill ``expert_task_results`` with linear-probe test errors; skips pairs already measured.

        Returns (measured now, already present). Each result is committed on its own, so an
        interrupted run resumes where it stopped. An expert whose features on a task hold NaN or Inf
        (broken weights) cannot be measured: without ``on_unmeasurable`` that is a TaskregError naming
        it; with it, the pair is skipped (nothing stored), every other pair is measured, and the callback
        receives one line per such expert at the end.
        """
        from taskreg.trainers.experts import LinearProbeProtocol, linear_probe_error

        protocol = protocol or LinearProbeProtocol()
        exp_recs = [self.get_expert(n) for n in experts] if experts else self.list_experts()
        task_recs = [self.tasks.get_task(n) for n in tasks] if tasks else self.tasks.list_tasks()
        with self.core.read() as con:
            done = set(con.execute("SELECT expert_id, task_id FROM expert_task_results").fetchall())
        todo = [(e, t) for e in exp_recs for t in task_recs if (e.id, t.id) not in done]
        skipped = len(exp_recs) * len(task_recs) - len(todo)
        data: dict[int, datasets.Dataset] = {}
        loaded: dict[int, tuple] = {}
        broken: dict[str, list[str]] = {}  # expert -> tasks on which its features are not finite
        measured = 0
        for i, (erec, trec) in enumerate(todo):
            if trec.id not in data:
                data[trec.id] = self.tasks.task_data(trec)
            if erec.id not in loaded:
                loaded = {erec.id: self.load_expert(erec.name)}  # keep one network in memory at a time
            _, model, spec = loaded[erec.id]
            feats = self.expert_features(erec, model, spec, data[trec.id], device=device)
            if not np.isfinite(feats).all():
                if on_unmeasurable is None:
                    raise TaskregError(_unmeasurable(erec.name, [trec.name]))
                broken.setdefault(erec.name, []).append(trec.name)
                if progress:
                    progress(i + 1, len(todo))
                continue
            res = linear_probe_error(feats, data[trec.id].y, protocol)
            measured += 1
            with self.core.write() as con:  # nothing is stored for an expert or task removed meanwhile
                con.execute(
                    "INSERT INTO expert_task_results (expert_id, task_id, test_error, train_error, protocol, seconds) "
                    "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM experts WHERE id = ?) "
                    "AND EXISTS (SELECT 1 FROM tasks WHERE id = ?) ON CONFLICT DO NOTHING",
                    [erec.id, trec.id, res.test_error, res.train_error, json.dumps(asdict(protocol)), res.seconds,
                     erec.id, trec.id],
                )
            if progress:
                progress(i + 1, len(todo))
        for name, failed in broken.items():  # only filled when on_unmeasurable is given
            if on_unmeasurable is not None:
                on_unmeasurable(_unmeasurable(name, failed))
        return measured, skipped

    def results_matrix(self) -> tuple[list[str], list[str], np.ndarray]:
        """(task names, expert names, (T, E) test errors with NaN where not measured)."""
        tasks, experts = self.tasks.list_tasks(), self.list_experts()
        t_pos = {t.id: i for i, t in enumerate(tasks)}
        e_pos = {e.id: j for j, e in enumerate(experts)}
        errors = np.full((len(tasks), len(experts)), np.nan)
        with self.core.read() as con:
            rows = con.execute("SELECT expert_id, task_id, test_error FROM expert_task_results").fetchall()
        for eid, tid, err in rows:
            errors[t_pos[tid], e_pos[eid]] = err
        return [t.name for t in tasks], [e.name for e in experts], errors

    # ------------------------------------------------------------------ Model2Vec
    def fit_model2vec(self, *, probe: str | None = None, method: str = "montecarlo", alpha: float = 0.15,
                      epochs: int = 300, seed: int = 0, exclude_tasks: Sequence[str] = (),
                      l2: float | str = "auto") -> dict[str, float]:
        """Fit ``m_i = F_i + b_i`` on the measured results and store the vectors (catalog + index).

        ``l2``: the bias penalty, or "auto" (cross-validated over the tasks, see embedders.model2vec)."""
        from taskreg.embedders.model2vec import check_l2, fit_model2vec

        l2 = check_l2(l2)  # before any other check: a bad argument is named as such
        prec = self.probes.resolve_probe(probe)
        names, experts, errors = self.results_matrix()
        if len(experts) < 2:
            raise TaskregError(f"Model2Vec ranks experts against each other: it needs at least 2 experts, "
                               f"found {len(experts)} (`taskreg expert add` / `expert train`)")
        keep = [i for i, n in enumerate(names) if n not in set(exclude_tasks) and np.sum(~np.isnan(errors[i])) >= 2]
        with self.core.read() as con:
            embedded = {r[0] for r in con.execute(
                "SELECT t.name FROM task_embeddings e JOIN tasks t ON t.id = e.task_id WHERE probe = ? AND method = ?",
                [prec.name, method]).fetchall()}
        keep = [i for i in keep if names[i] in embedded]
        if not keep:
            raise TaskregError("no task has both an embedding and results for at least 2 experts: run `expert eval`")
        _, task_vecs = self.tasks.task_vectors(prec.name, method, [names[i] for i in keep])
        exp_recs = self.list_experts()
        base = np.zeros((len(exp_recs), task_vecs.shape[1]), dtype=np.float32)
        for j, e in enumerate(exp_recs):
            if e.trained_on and e.trained_on in embedded:
                base[j] = self.tasks.task_vectors(prec.name, method, [e.trained_on])[1][0]
        t0 = self.probes.trivial(prec.name, method)
        fit = fit_model2vec(task_vecs, base, errors[keep], t0=t0, alpha=alpha, epochs=epochs, seed=seed, l2=l2)
        kind = self.index_manager.kind("model2vec", prec.name, method)
        summary = {"tasks": len(keep), "experts": len(exp_recs), "initial_loss": float(fit.loss_history[0]),
                   "final_loss": float(fit.loss_history[-1]), "l2": fit.l2}
        # The fit is logged like every other record (pending run, catalog commit, commit tag): its settings,
        # losses and the fitted vectors/biases by expert name, so a fit can be compared with earlier ones.
        params = {"probe": prec.name, "estimator": method, "alpha": alpha, "epochs": epochs, "seed": seed,
                  "l2_requested": l2, "l2": fit.l2, "tasks": len(keep), "experts": len(exp_recs)}
        with pending_run(self.core, "model2vec", f"model2vec-{prec.name}-{method}", params,
                         {"taskreg.kind": "model2vec_fit"}) as run:
            self.core.tracker.log_metrics(run.run_id, {k: summary[k] for k in ("initial_loss", "final_loss")})
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "model2vec.npz"
                np.savez(local, experts=np.array([e.name for e in exp_recs]), vectors=fit.vectors,
                         biases=fit.biases, loss_history=np.asarray(fit.loss_history))
                self.core.tracker.log_artifact(run.run_id, local)
            with self.core.write() as con:
                con.execute("DELETE FROM model2vec WHERE probe = ? AND method = ?", [prec.name, method])
                alive = {r[0] for r in con.execute("SELECT id FROM experts").fetchall()}  # skip experts removed since
                for j, e in enumerate(exp_recs):
                    if e.id not in alive:
                        continue
                    con.execute("INSERT INTO model2vec (expert_id, probe, method, vector, bias, fit_loss) VALUES "
                                "(?, ?, ?, ?, ?, ?)", [e.id, prec.name, method, catalog.vector_param(fit.vectors[j]),
                                                       catalog.vector_param(fit.biases[j]),
                                                       float(fit.loss_history[-1])])
                catalog.bump_generation(con, kind)
        self.core.tracker.commit(run.run_id)
        self.index_manager.rebuild(kind)
        return {**summary, "run_id": run.run_id}

    def model2vec_fitted(self, probe: str, method: str) -> bool:
        with self.core.read() as con:
            n = con.execute("SELECT count(*) FROM model2vec WHERE probe = ? AND method = ?", [probe, method]).fetchone()
        return bool(n[0])

    # ------------------------------------------------------------------ selection
    def select(
        self, source: str, *, top: int = 5, method: str | None = None, verify: int = 0, probe: str | None = None,
        embedding: str = "montecarlo", alpha: float = 0.15, max_samples: int | None = 1000, seed: int = 0,
        device: str = "cpu", dataset: datasets.Dataset | None = None, progress: Progress = None,
    ) -> Selection:
        """Rank the registered experts for a dataset (see the module docstring)."""
        from taskreg.selection.selectors import get_selector

        t_start = time.perf_counter()
        if top < 1:
            raise TaskregError(f"--top must be at least 1, got {top}")
        if verify < 0:
            raise TaskregError(f"--verify must be >= 0, got {verify}")
        experts = self.list_experts()
        if not experts:
            raise TaskregError("no experts registered: `taskreg expert add` or `taskreg expert train` first")
        prec = self.probes.resolve_probe(probe)
        if method is None:
            method = "model2vec" if self.model2vec_fitted(prec.name, embedding) else "asym"
        selector = get_selector(method)  # an unknown method: one line listing the registered ones
        if "model2vec" in selector.needs and not self.model2vec_fitted(prec.name, embedding):
            raise TaskregError("Model2Vec is not fitted for this probe: run `taskreg model2vec fit`")
        ds = dataset if dataset is not None else datasets.load(source)
        by_id = {e.id: e for e in experts}

        # the method's cost class and needs decide what is gathered for its scorer, never its name
        if selector.cost == "index":
            ranked, scored, cost = self._rank_by_index(ds, selector, prec.name, embedding, alpha, max_samples, seed,
                                                       device, by_id, top)
        elif selector.cost == "forward":
            ranked, scored, cost = self._rank_by_forward(ds, selector, experts, device, progress)
        else:
            ranked, scored, cost = self._rank_without_query(selector, experts, seed), 0, "no computation"
        # an expert the method cannot score comes last, with its reason instead of a number (never NaN)
        ranked = [r for r in ranked if r.score is not None] + [r for r in ranked if r.score is None]

        measured = self._measured_errors(ds)
        results = []
        for i, r in enumerate(ranked[:top]):
            row: dict[str, Any] = {"rank": i + 1, "expert": r.expert.name, "score": r.score,
                                   "trained_on": r.expert.trained_on, "measured_error": measured.get(r.expert.id)}
            if r.score is None:
                row["unscored_reason"] = r.unscored_reason
            results.append(row)
        out = Selection(query=source, method=method, results=results, seconds=0.0, cost=cost,
                        candidates_scored=scored, n_experts=len(experts), better=selector.better)
        if verify:
            self._verify(out, [r.expert for r in ranked[:verify]], ds, device)
        out.seconds = time.perf_counter() - t_start
        return out

    def _verify(self, out: Selection, cands: list[catalog.ExpertRecord], ds: datasets.Dataset, device: str) -> None:
        """Measure the top candidates with the linear probe on the query; fill ``verified`` and ``measured_error``.

        An expert whose features on the query are not finite cannot be measured: it is listed last in
        ``verified`` with ``test_error`` None and a note, and cannot be the measured winner.
        """
        from taskreg.selection import select as sel
        from taskreg.trainers.experts import LinearProbeProtocol

        feats: dict[str, np.ndarray] = {}
        broken: list[str] = []
        for e in cands:
            rec, model, spec = self.load_expert(e.name)
            f = self.expert_features(rec, model, spec, ds, device=device)
            if np.isfinite(f).all():
                feats[e.name] = f
            else:
                broken.append(e.name)
        if feats:
            winner, measures = sel.verify_topk(lambda name, _x: feats[name], list(feats), ds.x, ds.y,
                                               LinearProbeProtocol())
            out.verified = [{"expert": m.candidate, "test_error": m.result.test_error} for m in measures]
            out.measured_winner = str(winner)
        out.verified += [{"expert": n, "test_error": None, "note": nonfinite_note()} for n in broken]
        errors = {v["expert"]: v["test_error"] for v in out.verified}
        for row in out.results:  # the query's own measurement, when the expert was verified
            if row["measured_error"] is None and errors.get(row["expert"]) is not None:
                row["measured_error"] = errors[row["expert"]]

    def _rank_by_index(self, ds: datasets.Dataset, selector: Selector, probe: str, embedding: str, alpha: float,
                       max_samples: int | None, seed: int, device: str, by_id: dict[int, catalog.ExpertRecord],
                       top: int) -> tuple[list[Scored], int, str]:
        """Embed the query once; Faiss candidates; exact re-rank. Experts without a vector come last, unscored."""
        from taskreg.selection.select import rerank

        _, emb, dom = self.tasks.embed_dataset(ds, probe=probe, method=embedding, max_samples=max_samples, seed=seed,
                                         device=device)
        query = dom if "domain" in selector.needs else emb.vector
        vec_method = "domain" if "domain" in selector.needs else embedding
        t0 = self.probes.trivial(probe, embedding) if "trivial" in selector.needs else None
        vectors = "model2vec" if "model2vec" in selector.needs else "task"  # the experts' own vectors, or their tasks'
        n_experts = len(by_id)
        want = max(candidate_floor_for(top), top)
        while True:
            pairs = self._candidates(vectors, probe, vec_method, query, want, by_id)
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
        rest = [e for e in by_id.values() if e.id not in ranked_ids]
        if rest:
            reasons = self._unscored_reasons(vectors, probe, vec_method, rest, want)
            ranked += [Scored(e, None, reasons[e.id]) for e in rest]
        cost = f"1 probe pass over {min(ds.n, max_samples or ds.n)} images; {len(pairs)} candidates re-ranked"
        return ranked, len(pairs), cost

    def _unscored_reasons(self, method: str, probe: str, vec_method: str, experts: list[catalog.ExpertRecord],
                          want: int) -> dict[int, str]:
        """Why each of ``experts`` got no distance from an index method (expert id -> one-line reason)."""
        with self.core.read() as con:
            if method == "model2vec":
                fitted = {r[0] for r in con.execute("SELECT expert_id FROM model2vec WHERE probe = ? AND method = ?",
                                                    [probe, vec_method]).fetchall()}
            else:
                embedded = {r[0] for r in con.execute(
                    "SELECT t.name FROM tasks t JOIN task_embeddings e ON e.task_id = t.id WHERE e.probe = ? "
                    "AND e.method = ?", [probe, vec_method]).fetchall()}
        out: dict[int, str] = {}
        for e in experts:
            if method == "model2vec":
                out[e.id] = ("no Model2Vec vector (registered after `taskreg model2vec fit`: run it again)"
                             if e.id not in fitted else f"not among the {want} nearest index candidates")
            elif e.trained_on is None:
                out[e.id] = ("no training task to embed (a Taskonomy task network)" if e.origin == "task_network"
                             else "no training task to embed (registered without --trained-on)")
            elif e.trained_on not in embedded:
                out[e.id] = f"its training task {e.trained_on} has no {vec_method} embedding with probe {probe}"
            else:
                out[e.id] = f"its training task is not among the {want} nearest index candidates"
        return out

    def _candidates(self, method: str, probe: str, vec_method: str, query: np.ndarray, want: int,
                    by_id: dict[int, catalog.ExpertRecord]) -> list[tuple[catalog.ExpertRecord, np.ndarray]]:
        """(expert, vector) pairs for the index's top ``want`` hits."""
        if method == "model2vec":
            index = self.index_manager.get(self.index_manager.kind("model2vec", probe, vec_method))
            if index is None:
                return []
            ids, _ = search(index, query, want)
            with self.core.read() as con:
                rows = con.execute("SELECT expert_id, vector FROM model2vec WHERE probe = ? AND method = ? AND "
                                   "expert_id IN (SELECT unnest(?::INTEGER[]))",
                                   [probe, vec_method, ids.tolist()]).fetchall()
            return [(by_id[i], np.asarray(v, dtype=np.float32)) for i, v in rows if i in by_id]
        # Task2Vec / domain: the index holds task vectors; an expert is represented by its training task.
        index = self.index_manager.get(self.index_manager.kind("task", probe, vec_method))
        if index is None:
            return []
        ids, _ = search(index, query, want)
        with self.core.read() as con:
            rows = con.execute(
                "SELECT x.id, e.vector FROM experts x JOIN tasks t ON t.name = x.trained_on "
                "JOIN task_embeddings e ON e.task_id = t.id WHERE e.probe = ? AND e.method = ? "
                "AND t.id IN (SELECT unnest(?::INTEGER[]))", [probe, vec_method, ids.tolist()]).fetchall()
        return [(by_id[i], np.asarray(v, dtype=np.float32)) for i, v in rows if i in by_id]

    def _rank_by_forward(self, ds: datasets.Dataset, selector: Selector, experts: list[catalog.ExpertRecord],
                         device: str, progress: Progress) -> tuple[list[Scored], int, str]:
        """Methods that run every expert over the query (transferability scores), one expert at a time.

        An expert whose features (or outputs) on the query are not finite is not scored: it comes last
        with the reason, so one broken expert does not stop the ranking of the others."""
        from taskreg.selection import select as sel
        from taskreg.selection.selectors import SelectorInput
        from taskreg.trainers.experts import expert_logits

        features = "features" in selector.needs  # else the head's logits
        scores: list[float] = []
        scored: list[catalog.ExpertRecord] = []
        unscored: list[Scored] = []
        t0 = time.perf_counter()
        for i, e in enumerate(experts):
            rec, model, spec = self.load_expert(e.name)
            if features:
                values = self.expert_features(rec, model, spec, ds, device=device)
            else:
                values = expert_logits(model, spec, ds.x, device=device)
            if not np.isfinite(values).all():
                unscored.append(Scored(e, None, nonfinite_note("features" if features else "outputs")))
            else:
                score = np.asarray(selector.score(SelectorInput(n=1, outputs=(values,), y=ds.y)),
                                   dtype=np.float64).reshape(-1)[0]
                if np.isfinite(score):
                    scores.append(float(score))
                    scored.append(e)
                else:
                    unscored.append(Scored(e, None, f"{selector.name} is not finite on the query ({score})"))
            if progress:
                progress(i + 1, len(experts))
        ranked = sel.rank_by_scores(scores, higher_is_better=selector.higher_is_better)
        cost = f"a forward pass of all {len(experts)} experts over {ds.n} images ({time.perf_counter() - t0:.1f} s)"
        return [Scored(scored[r.index], r.score) for r in ranked] + unscored, len(experts), cost

    def _rank_without_query(self, selector: Selector, experts: list[catalog.ExpertRecord], seed: int) -> list[Scored]:
        """Methods that compute nothing on the query: from the experts' training-set sizes ("sizes": classes x
        samples, from the expert or its registered training task; experts of unknown size come last, unscored)
        or from nothing at all (chance)."""
        from taskreg.selection import select as sel
        from taskreg.selection.selectors import SelectorInput

        sizes: dict[int, tuple[int, int]] = {}  # expert position -> (classes, samples), where known
        if "sizes" in selector.needs:
            tasks = {t.name: t for t in self.tasks.list_tasks()}
            for i, e in enumerate(experts):
                task = tasks.get(e.trained_on or "")
                if e.n_classes and e.n_train:
                    sizes[i] = (e.n_classes, e.n_train)
                elif task is not None:
                    sizes[i] = (task.n_classes, task.n_samples)
        known = list(sizes) if "sizes" in selector.needs else list(range(len(experts)))
        ranked: list[Scored] = []
        if known:
            inputs = SelectorInput(n=len(known), sizes=[sizes[i] for i in known if i in sizes], seed=seed)
            ranked = [Scored(experts[known[r.index]], r.score)
                      for r in sel.rank(selector, selector.score(inputs), len(known))]
        return ranked + [Scored(e, None, "training-set size unknown (no training task recorded)")
                         for i, e in enumerate(experts) if i not in known]

    def _measured_errors(self, ds: datasets.Dataset) -> dict[int, float]:
        """Measured test errors of the experts on the query, when the query is a registered task."""
        with self.core.read() as con:
            rows = con.execute(
                "SELECT r.expert_id, r.test_error FROM expert_task_results r JOIN tasks t ON t.id = r.task_id "
                "WHERE t.fingerprint = ?", [ds.fingerprint()]).fetchall()
        return {int(e): float(err) for e, err in rows}


def _unmeasurable(expert: str, tasks: list[str]) -> str:
    shown = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
    return (f"expert {expert} gives NaN or infinite features on task(s) {shown}: not measured (its weights are "
            f"broken: `taskreg expert rm {expert}`)")


def candidate_floor_for(top: int) -> int:
    """How many index hits to re-rank exactly: enough slack for the non-metric d_asym."""
    return max(50, 4 * top)
