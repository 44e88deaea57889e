"""A damaged registry: committed records MLflow holds that the catalog lost.

A lost catalog is not a leftover. A committed record run that no catalog row references and that no
``rm`` marked, a registered model holding such a run, a catalog whose registry id differs from the one
in ``mlflow.db``, or a missing catalog beside an MLflow store that holds the registry's runs: the
registry is damaged. ``init`` refuses to start a new registry over it, ``open`` refuses it (naming the
recovery: ``taskreg restore BACKUP --force``, or ``taskreg recover`` to rebuild the records MLflow
holds), ``check`` reports it as a problem, and ``check --fix`` never deletes any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.tracking import RECORD_RUN_KINDS, StoreSummary, Tracker

if TYPE_CHECKING:
    from taskreg.registry.core import Core

RECOVERY = ("restore a backup (`taskreg restore BACKUP --force`) or rebuild the probes, tasks and experts that "
            "MLflow holds (`taskreg recover`)")


@dataclass
class Unaccounted:
    """Committed records MLflow holds that the catalog does not (see :func:`unaccounted`)."""

    runs: list[tuple[str, str, str]]  # (run id, taskreg.kind, run name)
    models: list[str]  # registered expert models holding a committed run without a catalog row

    SHOWN = 20  # problem lines listing runs, the rest counted

    def __bool__(self) -> bool:
        return bool(self.runs or self.models)

    def describe(self) -> str:
        """E.g. 'mlflow.db holds 4 committed runs (1 expert, 1 probe, 2 task_embedding) and 1 registered model
        that the catalog does not have and no `rm` removed'."""
        kinds: dict[str, int] = {}
        for _, kind, _ in self.runs:
            kinds[kind] = kinds.get(kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        what = [f"{len(self.runs)} committed run{'s' * (len(self.runs) != 1)} ({parts})"] if self.runs else []
        if self.models:
            what.append(f"{len(self.models)} registered model{'s' * (len(self.models) != 1)}")
        return f"mlflow.db holds {' and '.join(what)} that the catalog does not have and no `rm` removed"

    def problems(self) -> list[str]:
        if not self:
            return []
        lines = [f"committed MLflow run {r} ({kind} {name}) has no catalog row and no removal mark: the catalog "
                 "lost this record" for r, kind, name in self.runs[:self.SHOWN]]
        if len(self.runs) > self.SHOWN:
            lines.append(f"... and {len(self.runs) - self.SHOWN} more such committed runs")
        lines += [f"registered model {m} holds a committed run but has no catalog row: the catalog lost this record"
                  for m in self.models]
        lines.append(f"the catalog lost records: {self.describe()}; `check --fix` leaves them alone; {RECOVERY}")
        return lines


def holds_committed(run_ids: set[str], states: dict[str, str]) -> bool:
    return any(states.get(r) == "committed" for r in run_ids)


def missing_catalog(store: StoreSummary) -> str:
    return (f"catalog.duckdb is missing or empty but mlflow.db holds {store.describe()}: a damaged registry, "
            f"not a new one; {RECOVERY}")


def unaccounted(core: Core) -> Unaccounted:
    """Committed records that MLflow holds and the catalog does not: committed record runs that no
    catalog row references and no ``rm`` marked, and expert models holding such a run.

    Read under the registry lock, where it is exact: a command commits its catalog rows and its MLflow
    states under the lock in an order (run pending until after the commit; ``removing`` before an rm's
    commit) that never shows a committed, unmarked, unreferenced run to a lock holder.
    """
    with core.lock():
        with core.read() as con:
            referenced = catalog.referenced_run_ids(con)
            experts = {f"expert-{n}" for n in catalog.expert_names(con)}
        runs = core.tracker.run_states()
        models = core.tracker.registered_models()
        model_runs = core.tracker.model_runs()
    states, tags = runs.states, runs.tags
    lost = [(r, tags.get(r, {}).get("taskreg.kind", ""), tags.get(r, {}).get("mlflow.runName", ""))
            for r, state in sorted(states.items()) if state == "committed" and r not in referenced
            and tags.get(r, {}).get("taskreg.kind") in RECORD_RUN_KINDS]
    lost_models = sorted(m for m, t in models.items() if t.get("taskreg.kind") == "expert" and m not in experts
                         and holds_committed(model_runs.get(m, set()), states))
    return Unaccounted(lost, lost_models)


def refuse_lost_model(tracker: Tracker, name: str) -> None:
    """Refuse when the registered model ``name`` holds a committed, unmarked run although the caller saw no
    catalog row for it: a record the catalog lost."""
    runs = tracker.model_runs(name).get(name, set())
    if any(tracker.run_state(r) == "committed" for r in runs):
        raise TaskregError(f"registered model {name} holds a committed record that the catalog does not have "
                           f"(the catalog lost records, see `taskreg check`): {RECOVERY}")


def clear_stray_model(tracker: Tracker, name: str) -> None:
    """Delete the registered model ``name`` that has no catalog row (the caller holds the lock and saw no
    row): the leftover of a killed add or rm. A model the catalog lost is refused, never deleted."""
    refuse_lost_model(tracker, name)
    tracker.delete_registered_model(name)
