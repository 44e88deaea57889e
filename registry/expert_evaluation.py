"""Expert evaluation: frozen features of an expert on a dataset (cached) and the expert x task results.

``expert eval`` measures every expert on every task with the linear probe of
:func:`taskreg.trainers.experts.linear_probe_error` and stores the test errors in ``expert_task_results``; Model2Vec
(:mod:`taskreg.registry.model2vec_fitting`) is fitted on them and ``select`` reports them beside its ranking.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.array_cache import load_array, save_array
from taskreg.registry.core import Core
from taskreg.registry.experts import ExpertService
from taskreg.registry.runs import verified_weights
from taskreg.registry.tasks import TaskService
from taskreg.trainers.expert_eval_jobs import EvalJob, EvalOutcome, run_eval_job

if TYPE_CHECKING:
    from torch import nn

    from taskreg.embedders.probes import ProbeSpec
    from taskreg.trainers.experts import LinearProbeProtocol


class ExpertEvaluator:
    """Frozen features of the experts and their measured test errors on the registered tasks."""

    def __init__(self, core: Core, experts: ExpertService, tasks: TaskService) -> None:
        self.core = core
        self.experts = experts
        self.tasks = tasks

    def expert_features(self, rec: catalog.ExpertRecord, model: nn.Module, spec: ProbeSpec, ds: datasets.Dataset,
                        *, device: str = "cpu") -> np.ndarray:
        """Frozen features of an expert on a dataset at ``spec``'s resolution, computed once and cached in
        ``cache/features`` by weights, data and resolution (features at the arch's default resolution keep the
        name they had before experts recorded theirs, so those caches stay valid)."""
        from taskreg.trainers.experts import extract_features

        path = self.feature_path(rec, spec, ds.fingerprint())
        cached = load_array(path, rows=ds.n)
        if cached is not None:
            return cached
        feats = extract_features(model, spec, ds.x, device=device)
        save_array(self.core, path, feats)
        return feats

    def feature_path(self, rec: catalog.ExpertRecord, spec: ProbeSpec, fingerprint: str) -> Path:
        """Where an expert's features of a dataset are cached: by weights, data and resolution (features at the
        arch's default resolution keep the name they had before experts recorded theirs)."""
        from taskreg.embedders.probes import default_spec

        size = "" if spec == default_spec(rec.arch) else f"-{spec.input_size}px"
        return self.core.cache_dir / "features" / f"{rec.sha256[:16]}-{fingerprint[:16]}{size}.npy"

    def evaluate(
        self, *, experts: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
        protocol: LinearProbeProtocol | None = None, device: str = "cpu", progress: Progress = None,
        on_unmeasurable: Callable[[str], None] | None = None, executor: str = "local",
        batch_seconds: float = 2.0,
    ) -> tuple[int, int]:
        """Fill ``expert_task_results`` with linear-probe test errors; skips pairs already measured.

        Returns (measured now, already present). The (expert, task) pairs run as jobs on ``executor`` (``local``,
        ``local:N``, ``ray[:N|:ADDRESS]``; :func:`taskreg.trainers.expert_eval_jobs.run_eval_job`): workers compute
        features (cached per expert and dataset where they can see the registry's cache) and the linear probe, and
        never open the catalog; this process commits their results in batches (every ``batch_seconds``), so an
        interrupted run resumes where it stopped, losing at most one batch. An expert whose features on a task hold
        NaN or Inf (broken weights) cannot be measured: without ``on_unmeasurable`` that is a TaskregError naming
        it; with it, the pair is skipped (nothing stored), every other pair is measured, and the callback receives
        one line per such expert at the end. Data, weights and executor are checked before any job runs.
        """
        from taskreg.trainers.executors import RayExecutor, get_executor
        from taskreg.trainers.experts import LinearProbeProtocol

        protocol = protocol or LinearProbeProtocol()
        run_on = get_executor(executor)
        exp_recs = [self.experts.get_expert(n) for n in experts] if experts else self.experts.list_experts()
        task_recs = [self.tasks.get_task(n) for n in tasks] if tasks else self.tasks.list_tasks()
        with self.core.read() as con:
            done = {(r.expert_id, r.task_id) for r in catalog.expert_task_results(con)}
        todo = [(e, t) for e in exp_recs for t in task_recs if (e.id, t.id) not in done]
        skipped = len(exp_recs) * len(task_recs) - len(todo)
        jobs = self._jobs(todo, protocol, device)
        names = {e.id: e.name for e in exp_recs} | {t.id: t.name for t in task_recs}
        broken: dict[str, list[str]] = {}  # expert -> tasks on which its features are not finite
        pending: list[EvalOutcome] = []
        measured, last_commit = 0, time.monotonic()
        params = json.dumps(asdict(protocol))
        with contextlib.ExitStack() as stack:
            if isinstance(run_on, RayExecutor):
                stack.enter_context(run_on)  # a Ray runtime this call started is shut down after it
            try:
                for _, out in run_on.map(run_eval_job, jobs, progress=progress):
                    if not out.finite:
                        if on_unmeasurable is None:
                            raise TaskregError(unmeasurable_note(names[out.expert_id], [names[out.task_id]]))
                        broken.setdefault(names[out.expert_id], []).append(names[out.task_id])
                        continue
                    pending.append(out)
                    if time.monotonic() - last_commit >= batch_seconds:
                        measured += self._commit(pending, params)
                        pending, last_commit = [], time.monotonic()
            finally:  # what finished before an error or Ctrl-C is kept: the rerun does only the rest
                measured += self._commit(pending, params)
        for name, failed in broken.items():  # only filled when on_unmeasurable is given
            if on_unmeasurable is not None:
                on_unmeasurable(unmeasurable_note(name, failed))
        return measured, skipped

    def _jobs(self, todo: list[tuple[catalog.ExpertRecord, catalog.TaskRecord]], protocol: LinearProbeProtocol,
              device: str) -> list[EvalJob]:
        """One job per pair, grouped by expert; each expert's weights and each task's data are checked here
        first (the same one-line errors as a measurement in this process would give)."""
        from taskreg.registry.experts import expert_spec

        weights: dict[int, Path] = {}  # expert id -> its verified local weight file
        checked_tasks: set[int] = set()
        jobs = []
        for erec, trec in todo:
            if erec.id not in weights:  # the check load_expert makes (a tracking server's weights are fetched)
                weights[erec.id] = verified_weights(self.core, erec.weights, erec.sha256, f"expert {erec.name}")
            if trec.id not in checked_tasks:
                self.tasks.task_data(trec)  # loads and checks the data is still what was registered
                checked_tasks.add(trec.id)
            spec = expert_spec(erec.arch, erec.input_size)
            cache = None if self.core.read_only else str(self.feature_path(erec, spec, trec.fingerprint))
            jobs.append(EvalJob(erec.id, erec.name, trec.id, trec.name, str(weights[erec.id]), erec.sha256,
                                erec.arch, spec, trec.source, trec.fingerprint, cache, protocol, device))
        return jobs

    def _commit(self, outcomes: list[EvalOutcome], protocol: str) -> int:
        """Store a batch of results in one transaction; nothing for an expert or task removed meanwhile."""
        if not outcomes:
            return 0
        with self.core.write() as con:
            for out in outcomes:
                catalog.insert_expert_task_result(con, expert_id=out.expert_id, task_id=out.task_id,
                                                  test_error=out.test_error, train_error=out.train_error,
                                                  protocol=protocol, seconds=out.seconds)
        return len(outcomes)

    def results_matrix(self) -> tuple[list[str], list[str], np.ndarray]:
        """(task names, expert names, (T, E) test errors with NaN where not measured)."""
        tasks, experts = self.tasks.list_tasks(), self.experts.list_experts()
        t_pos = {t.id: i for i, t in enumerate(tasks)}
        e_pos = {e.id: j for j, e in enumerate(experts)}
        errors = np.full((len(tasks), len(experts)), np.nan)
        with self.core.read() as con:
            results = catalog.expert_task_results(con)
        for r in results:
            errors[t_pos[r.task_id], e_pos[r.expert_id]] = r.test_error
        return [t.name for t in tasks], [e.name for e in experts], errors


def unmeasurable_note(expert: str, tasks: list[str]) -> str:
    """Why an expert is not measured on ``tasks``: its features there hold NaN or Inf."""
    shown = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
    return (f"expert {expert} gives NaN or infinite features on task(s) {shown}: not measured (its weights are "
            f"broken: `taskreg expert rm {expert}`)")
