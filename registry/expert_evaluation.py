"""Expert evaluation: frozen features of an expert on a dataset (cached) and the expert x task results.

``expert eval`` measures every expert on every task with the linear probe of
:func:`taskreg.trainers.experts.linear_probe_error` and stores the test errors in ``expert_task_results``; Model2Vec
(:mod:`taskreg.registry.model2vec_fitting`) is fitted on them and ``select`` reports them beside its ranking.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.array_cache import load_array, save_array
from taskreg.registry.core import Core
from taskreg.registry.experts import ExpertService
from taskreg.registry.tasks import TaskService

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
        from taskreg.embedders.probes import default_spec
        from taskreg.trainers.experts import extract_features

        size = "" if spec == default_spec(rec.arch) else f"-{spec.input_size}px"
        path = self.core.cache_dir / "features" / f"{rec.sha256[:16]}-{ds.fingerprint()[:16]}{size}.npy"
        cached = load_array(path, rows=ds.n)
        if cached is not None:
            return cached
        feats = extract_features(model, spec, ds.x, device=device)
        save_array(self.core, path, feats)
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
        exp_recs = [self.experts.get_expert(n) for n in experts] if experts else self.experts.list_experts()
        task_recs = [self.tasks.get_task(n) for n in tasks] if tasks else self.tasks.list_tasks()
        with self.core.read() as con:
            done = {(r.expert_id, r.task_id) for r in catalog.expert_task_results(con)}
        todo = [(e, t) for e in exp_recs for t in task_recs if (e.id, t.id) not in done]
        skipped = len(exp_recs) * len(task_recs) - len(todo)
        data: dict[int, datasets.Dataset] = {}
        loaded: dict[int, tuple[catalog.ExpertRecord, nn.Module, ProbeSpec]] = {}
        broken: dict[str, list[str]] = {}  # expert -> tasks on which its features are not finite
        measured = 0
        for i, (erec, trec) in enumerate(todo):
            if trec.id not in data:
                data[trec.id] = self.tasks.task_data(trec)
            if erec.id not in loaded:
                loaded = {erec.id: self.experts.load_expert(erec.name)}  # keep one network in memory at a time
            _, model, spec = loaded[erec.id]
            feats = self.expert_features(erec, model, spec, data[trec.id], device=device)
            if not np.isfinite(feats).all():
                if on_unmeasurable is None:
                    raise TaskregError(unmeasurable_note(erec.name, [trec.name]))
                broken.setdefault(erec.name, []).append(trec.name)
                if progress:
                    progress(i + 1, len(todo))
                continue
            res = linear_probe_error(feats, data[trec.id].y, protocol)
            measured += 1
            with self.core.write() as con:  # nothing is stored for an expert or task removed meanwhile
                catalog.insert_expert_task_result(con, expert_id=erec.id, task_id=trec.id, test_error=res.test_error,
                                                  train_error=res.train_error, protocol=json.dumps(asdict(protocol)),
                                                  seconds=res.seconds)
            if progress:
                progress(i + 1, len(todo))
        for name, failed in broken.items():  # only filled when on_unmeasurable is given
            if on_unmeasurable is not None:
                on_unmeasurable(unmeasurable_note(name, failed))
        return measured, skipped

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
