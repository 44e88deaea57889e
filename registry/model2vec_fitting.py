"""Model2Vec fitting: ``m_i = F_i + b_i`` learned from the measured expert x task results, stored per probe and
Task2Vec estimator in the catalog (``model2vec`` table) and its Faiss index; ``select --method model2vec`` ranks by it.

The mathematics is :func:`taskreg.embedders.model2vec.fit_model2vec`; this service gathers its inputs from the
registry, logs the fit as an MLflow run and commits the vectors.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog, expert_basis
from taskreg.registry.expert_side import ExpertSide
from taskreg.registry.runs import pending_run


@dataclass(frozen=True)
class Model2VecFit:
    """What one ``model2vec fit`` did: the tasks and experts it was fitted on, its loss, penalty and MLflow run;
    ``forms``: expert name -> the form of its vector (``F_i + b_i``, ``b_i`` or ``F_i``); ``skipped``: expert name ->
    why it got no vector (F_i unknown and nothing measured)."""

    tasks: int
    experts: int
    initial_loss: float
    final_loss: float
    l2: float
    run_id: str
    forms: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class Model2VecFitter:
    """Fits Model2Vec on one registry and answers whether it is fitted."""

    def __init__(self, side: ExpertSide) -> None:
        self.side = side

    def fit(self, *, probe: str | None = None, method: str = "montecarlo", alpha: float = 0.15, epochs: int = 300,
            seed: int = 0, exclude_tasks: Sequence[str] = (), l2: float | str = "auto",
            progress: Progress = None) -> Model2VecFit:
        """Fit ``m_i = F_i + b_i`` on the measured results and store the vectors (catalog + index).

        ``l2``: the bias penalty, or "auto" (cross-validated over the tasks, see embedders.model2vec)."""
        from taskreg.embedders.model2vec import check_l2, fit_model2vec

        l2 = check_l2(l2)  # before any other check: a bad argument is named as such
        prec = self.side.probes.resolve_probe(probe)
        names, experts, errors = self.side.evaluator.results_matrix()
        if len(experts) < 2:
            raise TaskregError(f"Model2Vec ranks experts against each other: it needs at least 2 experts, "
                               f"found {len(experts)} (`taskreg expert add` / `expert train`)")
        keep = [i for i, n in enumerate(names) if n not in set(exclude_tasks) and np.sum(~np.isnan(errors[i])) >= 2]
        with self.side.core.read() as con:
            embedded = catalog.embedded_task_names(con, prec.name, method)
        keep = [i for i in keep if names[i] in embedded]
        if not keep:
            raise TaskregError("no task has both an embedding and results for at least 2 experts: run `expert eval`")
        _, task_vecs = self.side.tasks.task_vectors(prec.name, method, [names[i] for i in keep])
        exp_recs = self.side.experts.list_experts()
        base = np.zeros((len(exp_recs), task_vecs.shape[1]), dtype=np.float32)
        for j, e in enumerate(exp_recs):
            if e.trained_on and e.trained_on in embedded:
                base[j] = self.side.tasks.task_vectors(prec.name, method, [e.trained_on])[1][0]
        t0 = self.side.probes.trivial(prec.name, method)
        fit = fit_model2vec(task_vecs, base, errors[keep], t0=t0, alpha=alpha, epochs=epochs, seed=seed, l2=l2,
                            progress=progress)
        kind = self.side.index_manager.kind("model2vec", prec.name, method)
        initial_loss, final_loss = float(fit.loss_history[0]), float(fit.loss_history[-1])
        forms = {e.name: b for e, b in zip(exp_recs, fit.basis, strict=True) if b is not None}
        skipped = {exp_recs[j].name: expert_basis.skipped_reason(exp_recs[j], prec.name, method)
                   for j in fit.skipped}  # F_i unknown and nothing measured: no vector
        ok = fit.fitted
        # The fit is logged like every other record (pending run, catalog commit, commit tag): its settings,
        # losses and the fitted vectors/biases by expert name, so a fit can be compared with earlier ones.
        params = {"probe": prec.name, "estimator": method, "alpha": alpha, "epochs": epochs, "seed": seed,
                  "l2_requested": l2, "l2": fit.l2, "tasks": len(keep), "experts": len(exp_recs)}
        with pending_run(self.side.core, "model2vec", f"model2vec-{prec.name}-{method}", params,
                         {"taskreg.kind": "model2vec_fit"}) as run:
            self.side.core.tracker.log_metrics(run.run_id, {"initial_loss": initial_loss, "final_loss": final_loss})
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "model2vec.npz"
                np.savez(local, experts=np.array([e.name for e in exp_recs])[ok], vectors=fit.vectors[ok],
                         biases=fit.biases[ok], basis=np.array([b for b in fit.basis if b is not None], dtype=str),
                         loss_history=np.asarray(fit.loss_history))
                self.side.core.tracker.log_artifact(run.run_id, local)
            with self.side.core.write() as con:  # experts removed since the results were read are skipped
                kept = [e.id for e, k in zip(exp_recs, ok, strict=True) if k]  # skipped experts get no row
                catalog.replace_model2vec(con, prec.name, method, kept, fit.vectors[ok], fit.biases[ok], final_loss)
                catalog.bump_generation(con, kind)
        self.side.core.tracker.commit(run.run_id)
        self.side.index_manager.rebuild(kind)
        return Model2VecFit(tasks=len(keep), experts=len(exp_recs), initial_loss=initial_loss, final_loss=final_loss,
                            l2=fit.l2, run_id=run.run_id, forms=forms, skipped=skipped)

    def fitted(self, probe: str, method: str) -> bool:
        """Whether Model2Vec has vectors for ``probe``/``method``."""
        with self.side.core.read() as con:
            return catalog.model2vec_count(con, probe, method) > 0
