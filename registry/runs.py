"""The write protocol every record follows: a pending MLflow run, one catalog transaction, the commit tag.

Every mutating operation follows the same order so that it either completes or leaves nothing:
validate and compute everything first (no lock held), then log the MLflow run (tagged
``pending``, :func:`pending_run`), then commit the catalog rows in one DuckDB transaction under the
registry lock, then mark the run committed and refresh the index. A failure before the commit deletes
the run; a crash before it leaves only a pending run, which ``taskreg check --fix`` removes. Removing a
record marks its runs ``removing`` inside the transaction that deletes its rows (:func:`marking_removal`).

A tracking server that stops answering mid-command (:class:`~taskreg.registry.tracking.TrackingServerDown`) is the
same as a crash at that point, reported on one line: before the catalog commit nothing is committed and the cleanup
is left to ``check --fix`` (:func:`best_effort`); after it, the error says the change is made (:func:`after_commit`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from taskreg.errors import TaskregError
from taskreg.registry.tracking import RunRef, TrackingServerDown
from taskreg.registry.weights import file_sha256

if TYPE_CHECKING:
    from taskreg.registry.core import Core
    from taskreg.registry.tracking import Tracker


@contextmanager
def pending_run(core: Core, experiment: str, run_name: str, params: dict,
                tags: dict | None = None) -> Iterator[RunRef]:
    """An MLflow run that is deleted again if the block fails (before the catalog commit)."""
    core.require_write_access("this command")  # before MLflow writes anything (the CLI refused earlier)
    run = core.tracker.start_run(experiment, run_name, params=params, tags=tags)
    try:
        yield run
    except BaseException:
        with best_effort():
            core.tracker.delete_run(run.run_id)
        raise
    core.tracker.finish(run.run_id)


@contextmanager
def best_effort() -> Iterator[None]:
    """Cleanup of a failed command (deleting its pending run, its registered model): a tracking server that stopped
    answering leaves the leftover for ``check --fix`` instead of hiding the command's own error."""
    try:
        yield
    except TrackingServerDown:
        pass


@contextmanager
def after_commit(done: str) -> Iterator[None]:
    """MLflow calls made after the catalog commit (the commit tag, deleting a removed record's runs): when the
    tracking server stops answering there, the error says that the command's change is made (``done``, e.g. "expert
    e1 is registered") and what is left for ``check --fix``."""
    try:
        yield
    except TrackingServerDown as exc:
        raise TaskregError(f"{done} in the catalog, but {exc}") from None


@contextmanager
def marking_removal(tracker: Tracker) -> Iterator[Callable[[list[str]], None]]:
    """``mark(run_ids)`` tags the runs of a record ``removing`` before the catalog commit that deletes its
    rows (call it inside that transaction, under the lock): a committed run without a row and without
    this mark is then a record the catalog lost, never an interrupted ``rm`` (see registry/damage.py).
    If the block fails, the marked runs are committed again (their rows were rolled back)."""
    marked: list[str] = []

    def mark(run_ids: list[str]) -> None:
        for run_id in run_ids:
            marked.append(run_id)
            tracker.mark_removing(run_id)

    try:
        yield mark
    except BaseException:
        with best_effort():
            for run_id in marked:
                tracker.commit(run_id)
        raise


def store_weights(core: Core, run: RunRef, state_dict: dict, filename: str) -> tuple[str, str]:
    """Save a state_dict as a run artifact; return (how the catalog names it, sha256): the path relative to the root,
    or ``runs:/RUN_ID/weights/FILE`` on a tracking server (see :meth:`Tracker.artifact_ref`)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / filename
        torch.save(state_dict, local)
        stored = core.tracker.log_artifact(run.run_id, local, "weights")
    return core.tracker.artifact_ref(run.run_id, stored), file_sha256(stored)


def verified_weights(core: Core, ref: str, sha256: str, what: str) -> Path:
    """The local file of the weights the catalog names ``ref``, checked against its recorded ``sha256``; a cached
    download that does not match is fetched again once from the tracking server. One-line error otherwise."""
    path = core.tracker.local_file(ref)
    if path.is_file() and file_sha256(path) == sha256:
        return path
    if core.tracker.remote:
        path = core.tracker.local_file(ref, refresh=True)
        if path.is_file() and file_sha256(path) == sha256:
            return path
    raise TaskregError(f"{what}: weights file {ref} is missing or altered (run check)")
