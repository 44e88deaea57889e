"""Listing, showing and removing tasks and experts (the records every other operation builds on)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.core import RegistryCore


class RecordOps(RegistryCore):
    @contextmanager
    def _marking_removal(self) -> Iterator[Callable[[list[str]], None]]:
        """``mark(run_ids)`` tags the runs of a record ``removing`` before the catalog commit that deletes its
        rows (call it inside that transaction, under the lock): a committed run without a row and without
        this mark is then a record the catalog lost, never an interrupted ``rm`` (see core's docstring).
        If the block fails, the marked runs are committed again (their rows were rolled back)."""
        marked: list[str] = []

        def mark(run_ids: list[str]) -> None:
            for run_id in run_ids:
                marked.append(run_id)
                self.tracker.mark_removing(run_id)

        try:
            yield mark
        except BaseException:
            for run_id in marked:
                self.tracker.commit(run_id)
            raise

    # ------------------------------------------------------------------ tasks
    def list_tasks(self, *, limit: int | None = None) -> list[catalog.TaskRecord]:
        with self.read() as con:
            return catalog.list_tasks(con, limit=limit)

    def count_tasks(self) -> int:
        with self.read() as con:
            return int(con.execute("SELECT count(*) FROM tasks").fetchone()[0])

    def get_task(self, name: str) -> catalog.TaskRecord:
        with self.read() as con:
            rec = catalog.get_task(con, name)
        if rec is None:
            raise TaskregError(f"unknown task {name!r} (see `taskreg task list`)")
        return rec

    def show_task(self, name: str) -> dict[str, Any]:
        rec = self.get_task(name)
        with self.read() as con:
            embeddings = con.execute(
                "SELECT probe, method, len(vector), norm, n_samples, seed, seconds, run_id "
                "FROM task_embeddings WHERE task_id = ? ORDER BY probe, method", [rec.id]
            ).fetchall()
            results = con.execute(
                "SELECT e.name, r.test_error FROM expert_task_results r JOIN experts e ON e.id = r.expert_id "
                "WHERE r.task_id = ? ORDER BY r.test_error", [rec.id]
            ).fetchall()
        cols = ("probe", "method", "dim", "norm", "n_samples", "seed", "seconds", "run_id")
        return {
            **asdict(rec),
            "embeddings": [dict(zip(cols, row, strict=True)) for row in embeddings],
            "expert_errors": [{"expert": e, "test_error": err} for e, err in results],
        }

    def remove_task(self, name: str) -> None:
        rec = self.get_task(name)
        with self.lock(), self._marking_removal() as mark, self.write() as con:
            if con.execute("SELECT 1 FROM tasks WHERE id = ?", [rec.id]).fetchone() is None:
                raise TaskregError(f"unknown task {name!r} (removed meanwhile)")
            runs = [r[0] for r in con.execute(
                "SELECT DISTINCT run_id FROM task_embeddings WHERE task_id = ? AND run_id IS NOT NULL", [rec.id]
            ).fetchall()]
            kinds = [r[0] for r in con.execute(
                "SELECT DISTINCT 'task/' || probe || '/' || method FROM task_embeddings WHERE task_id = ?", [rec.id],
            ).fetchall()]
            mark(runs)
            con.execute("DELETE FROM task_embeddings WHERE task_id = ?", [rec.id])
            con.execute("DELETE FROM expert_task_results WHERE task_id = ?", [rec.id])
            con.execute("DELETE FROM tasks WHERE id = ?", [rec.id])
            for kind in kinds:
                catalog.bump_generation(con, kind)
        for kind in kinds:  # drop the vector from the saved index; a rebuild only when that index is not current
            self.remove_from_index(kind, np.array([rec.id], dtype=np.int64))
        for run_id in runs:
            self.tracker.delete_run(run_id)

    # ------------------------------------------------------------------ experts
    def list_experts(self) -> list[catalog.ExpertRecord]:
        with self.read() as con:
            return catalog.list_experts(con)

    def get_expert(self, name: str) -> catalog.ExpertRecord:
        with self.read() as con:
            rec = catalog.get_expert(con, name)
        if rec is None:
            raise TaskregError(f"unknown expert {name!r} (see `taskreg expert list`)")
        return rec

    def show_expert(self, name: str) -> dict[str, Any]:
        rec = self.get_expert(name)
        with self.read() as con:
            results = con.execute(
                "SELECT t.name, r.test_error FROM expert_task_results r JOIN tasks t ON t.id = r.task_id "
                "WHERE r.expert_id = ? ORDER BY r.test_error", [rec.id]
            ).fetchall()
        return {**asdict(rec), "task_errors": [{"task": t, "test_error": e} for t, e in results]}

    def remove_expert(self, name: str) -> None:
        rec = self.get_expert(name)
        # the model goes under the same hold of the lock as the row: a new `expert add` of the name waits
        with self.lock():
            with self._marking_removal() as mark, self.write() as con:
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
            self.tracker.delete_registered_model(f"expert-{rec.name}")
        for kind in kinds:
            self.rebuild_index(kind)
        if rec.run_id:
            self.tracker.delete_run(rec.run_id)
