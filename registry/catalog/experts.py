"""The ``experts`` and ``expert_task_results`` tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from taskreg.registry.catalog.rows import fetch_one, fetch_rows, vectors_to_numpy


@dataclass(frozen=True)
class ExpertRecord:
    id: int
    name: str
    arch: str
    sha256: str
    weights: str
    trained_on: str | None
    origin: str
    n_train: int | None
    n_classes: int | None
    run_id: str | None
    model_version: str | None
    created_at: str
    input_size: int | None = None  # the resolution it runs at; None: its arch's default (experts of before)
    reference_accuracy: float | None = None  # accuracy on its own reference task, in [0, 1]; None: unknown
    reference: str | None = None  # what that accuracy was measured on


@dataclass(frozen=True)
class ExpertTaskError:
    """One measured result of an expert (``expert show``): the task and the linear probe's test error."""

    task: str
    test_error: float


@dataclass(frozen=True)
class ExpertTaskResult:
    """One row of ``expert_task_results`` by ids: the test error of an expert's features on a task."""

    expert_id: int
    task_id: int
    test_error: float


_EXPERT_COLS = (
    "id, name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, model_version, "
    "CAST(created_at AS VARCHAR), input_size, reference_accuracy, reference"
)


def list_experts(con: duckdb.DuckDBPyConnection) -> list[ExpertRecord]:
    return fetch_rows(con, f"SELECT {_EXPERT_COLS} FROM experts ORDER BY id", (), ExpertRecord)


def count_experts(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM experts").fetchall()[0][0])


def experts_by_ids(con: duckdb.DuckDBPyConnection, ids: Sequence[int]) -> list[ExpertRecord]:
    """The records of those of ``ids`` that exist, by id."""
    return fetch_rows(con, f"SELECT {_EXPERT_COLS} FROM experts WHERE id IN (SELECT unnest(?::INTEGER[])) "
                      "ORDER BY id", ([int(i) for i in ids],), ExpertRecord)


def experts_except(con: duckdb.DuckDBPyConnection, exclude: Sequence[int], limit: int) -> list[ExpertRecord]:
    """The first ``limit`` experts by id that are not in ``exclude``."""
    return fetch_rows(con, f"SELECT {_EXPERT_COLS} FROM experts WHERE id NOT IN (SELECT unnest(?::INTEGER[])) "
                      "ORDER BY id LIMIT ?", ([int(i) for i in exclude], int(limit)), ExpertRecord)


def get_expert(con: duckdb.DuckDBPyConnection, name: str) -> ExpertRecord | None:
    rows = fetch_rows(con, f"SELECT {_EXPERT_COLS} FROM experts WHERE name = ?", (name,), ExpertRecord)
    return rows[0] if rows else None


def insert_expert(
    con: duckdb.DuckDBPyConnection, *, name: str, arch: str, sha256: str, weights: str,
    trained_on: str | None, origin: str, n_train: int | None = None, n_classes: int | None = None,
    run_id: str | None = None, model_version: str | None = None, input_size: int | None = None,
    reference_accuracy: float | None = None, reference: str | None = None,
) -> int:
    row = fetch_one(
        con, "INSERT INTO experts (name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, "
        "model_version, input_size, reference_accuracy, reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING id",
        [name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, model_version, input_size,
         reference_accuracy, reference],
    )
    return int(row[0])



def expert_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM experts").fetchall()]


def expert_exists(con: duckdb.DuckDBPyConnection, expert_id: int) -> bool:
    return con.execute("SELECT 1 FROM experts WHERE id = ?", [expert_id]).fetchone() is not None


def expert_ids(con: duckdb.DuckDBPyConnection) -> set[int]:
    return {int(r[0]) for r in con.execute("SELECT id FROM experts").fetchall()}


def delete_expert(con: duckdb.DuckDBPyConnection, expert_id: int) -> None:
    """An expert's row, its expert x task results and its Model2Vec vectors."""
    con.execute("DELETE FROM expert_task_results WHERE expert_id = ?", [expert_id])
    con.execute("DELETE FROM model2vec WHERE expert_id = ?", [expert_id])
    con.execute("DELETE FROM experts WHERE id = ?", [expert_id])


def expert_task_vectors(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                        task_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Expert ids (N,) and (N, D) vectors of the training tasks of the experts trained on one of ``task_ids``,
    embedded with ``probe``/``method`` (an expert is represented by its training task in a Task2Vec ranking)."""
    return vectors_to_numpy(
        con,
        "SELECT x.id, e.vector FROM experts x JOIN tasks t ON t.name = x.trained_on "
        "JOIN task_embeddings e ON e.task_id = t.id WHERE e.probe = ? AND e.method = ? "
        "AND t.id IN (SELECT unnest(?::INTEGER[]))", (probe, method, [int(i) for i in task_ids]))


# --------------------------------------------------------------------------- expert x task results

def expert_task_errors(con: duckdb.DuckDBPyConnection, expert_id: int) -> list[ExpertTaskError]:
    """The measured test errors of one expert, best first."""
    return fetch_rows(con, "SELECT t.name, r.test_error FROM expert_task_results r JOIN tasks t ON t.id = r.task_id "
                      "WHERE r.expert_id = ? ORDER BY r.test_error", (expert_id,), ExpertTaskError)


def expert_task_results(con: duckdb.DuckDBPyConnection) -> list[ExpertTaskResult]:
    """Every measured (expert, task) test error."""
    return fetch_rows(con, "SELECT expert_id, task_id, test_error FROM expert_task_results", (), ExpertTaskResult)


def insert_expert_task_result(con: duckdb.DuckDBPyConnection, *, expert_id: int, task_id: int, test_error: float,
                              train_error: float | None, protocol: str, seconds: float | None) -> None:
    """Store one measurement (``protocol``: the linear-probe protocol as JSON). Nothing is stored when the expert or
    the task was removed meanwhile, or when the pair is already measured."""
    con.execute(
        "INSERT INTO expert_task_results (expert_id, task_id, test_error, train_error, protocol, seconds) "
        "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM experts WHERE id = ?) "
        "AND EXISTS (SELECT 1 FROM tasks WHERE id = ?) ON CONFLICT DO NOTHING",
        [expert_id, task_id, test_error, train_error, protocol, seconds, expert_id, task_id],
    )


def measured_errors_by_fingerprint(con: duckdb.DuckDBPyConnection, fingerprint: str) -> dict[int, float]:
    """Expert id -> measured test error on the registered task(s) holding the data of ``fingerprint``."""
    rows = con.execute("SELECT r.expert_id, r.test_error FROM expert_task_results r JOIN tasks t ON t.id = r.task_id "
                       "WHERE t.fingerprint = ?", [fingerprint]).fetchall()
    return {int(e): float(err) for e, err in rows}


def measured_expert_ids(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> set[int]:
    """Experts with a measured test error on at least one task embedded with ``probe``/``method``."""
    rows = con.execute("SELECT DISTINCT r.expert_id FROM expert_task_results r JOIN task_embeddings e "
                       "ON e.task_id = r.task_id WHERE e.probe = ? AND e.method = ?", [probe, method]).fetchall()
    return {int(r[0]) for r in rows}
