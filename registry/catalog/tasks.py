"""The ``tasks``, ``task_embeddings`` and ``trivial_embeddings`` tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from taskreg.registry.catalog.rows import fetch_one, fetch_rows, vector_param


@dataclass(frozen=True)
class TaskRecord:
    id: int
    name: str
    source: str
    domain: str
    n_samples: int
    n_classes: int
    fingerprint: str
    created_at: str



_TASK_COLS = "id, name, source, domain, n_samples, n_classes, fingerprint, CAST(created_at AS VARCHAR)"


def list_tasks(con: duckdb.DuckDBPyConnection, *, limit: int | None = None) -> list[TaskRecord]:
    sql = f"SELECT {_TASK_COLS} FROM tasks ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return fetch_rows(con, sql, (), TaskRecord)


def get_task(con: duckdb.DuckDBPyConnection, name: str) -> TaskRecord | None:
    rows = fetch_rows(con, f"SELECT {_TASK_COLS} FROM tasks WHERE name = ?", (name,), TaskRecord)
    return rows[0] if rows else None


def insert_task(
    con: duckdb.DuckDBPyConnection, *, name: str, source: str, domain: str, n_samples: int,
    n_classes: int, fingerprint: str,
) -> int:
    row = fetch_one(
        con, "INSERT INTO tasks (name, source, domain, n_samples, n_classes, fingerprint) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        [name, source, domain, n_samples, n_classes, fingerprint],
    )
    return int(row[0])


# --------------------------------------------------------------------------- task embeddings and trivial embeddings

def insert_embedding(con: duckdb.DuckDBPyConnection, task_id: int, probe: str, method: str, vector: np.ndarray,
                     n_samples: int, seed: int, seconds: float | None, run_id: str) -> None:
    con.execute(
        "INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed, seconds, run_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [task_id, probe, method, vector_param(vector), float(np.linalg.norm(vector)), int(n_samples),
         int(seed), seconds, run_id],
    )


def has_embedding(con: duckdb.DuckDBPyConnection, task_id: int, probe: str, method: str) -> bool:
    return con.execute("SELECT 1 FROM task_embeddings WHERE task_id = ? AND probe = ? AND method = ?",
                       [task_id, probe, method]).fetchone() is not None


def insert_trivial_embedding(con: duckdb.DuckDBPyConnection, probe: str, method: str, vector: np.ndarray, *,
                             if_absent: bool = False) -> None:
    """The trivial task embedding t0 of a probe and estimator (``if_absent``: keep one already stored)."""
    con.execute("INSERT INTO trivial_embeddings VALUES (?, ?, ?)" + (" ON CONFLICT DO NOTHING" if if_absent else ""),
                [probe, method, vector_param(vector)])


def trivial_embedding(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> np.ndarray | None:
    row = con.execute("SELECT vector FROM trivial_embeddings WHERE probe = ? AND method = ?",
                      [probe, method]).fetchone()
    return None if row is None else np.asarray(row[0], dtype=np.float32)


@dataclass(frozen=True)
class EmbeddingInfo:
    """One task embedding without its vector (``task show``)."""

    probe: str
    method: str
    dim: int
    norm: float
    n_samples: int
    seed: int
    seconds: float | None
    run_id: str | None


def count_tasks(con: duckdb.DuckDBPyConnection) -> int:
    return int(fetch_one(con, "SELECT count(*) FROM tasks")[0])


def task_exists(con: duckdb.DuckDBPyConnection, task_id: int) -> bool:
    return con.execute("SELECT 1 FROM tasks WHERE id = ?", [task_id]).fetchone() is not None


def task_embedding_infos(con: duckdb.DuckDBPyConnection, task_id: int) -> list[EmbeddingInfo]:
    return fetch_rows(con, "SELECT probe, method, len(vector), norm, n_samples, seed, seconds, run_id "
                 "FROM task_embeddings WHERE task_id = ? ORDER BY probe, method", [task_id], EmbeddingInfo)


def task_results(con: duckdb.DuckDBPyConnection, task_id: int) -> list[tuple[str, float]]:
    """(expert name, test error) of every expert measured on a task, best first."""
    return con.execute(
        "SELECT e.name, r.test_error FROM expert_task_results r JOIN experts e ON e.id = r.expert_id "
        "WHERE r.task_id = ? ORDER BY r.test_error", [task_id]
    ).fetchall()


def task_run_ids(con: duckdb.DuckDBPyConnection, task_id: int) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT DISTINCT run_id FROM task_embeddings WHERE task_id = ? AND run_id IS NOT NULL", [task_id]
    ).fetchall()]


def task_vector_kinds(con: duckdb.DuckDBPyConnection, task_id: int) -> list[str]:
    """The vector kinds (``task/<probe>/<method>``) a task has a vector in."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT 'task/' || probe || '/' || method FROM task_embeddings WHERE task_id = ?", [task_id],
    ).fetchall()]


def delete_task(con: duckdb.DuckDBPyConnection, task_id: int) -> None:
    """A task's row, embeddings and expert results."""
    con.execute("DELETE FROM task_embeddings WHERE task_id = ?", [task_id])
    con.execute("DELETE FROM expert_task_results WHERE task_id = ?", [task_id])
    con.execute("DELETE FROM tasks WHERE id = ?", [task_id])


def task_vectors(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                 names: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """(task name, vector) of the tasks embedded with ``probe``/``method`` (all, or only ``names``), by id."""
    sql = ("SELECT t.name, e.vector FROM task_embeddings e JOIN tasks t ON t.id = e.task_id "
           "WHERE e.probe = ? AND e.method = ?")
    params: list[object] = [probe, method]
    if names is not None:  # fetch only the rows asked for, not every vector of the probe
        sql += " AND list_contains(?, t.name)"
        params.append(list(names))
    rows = con.execute(sql + " ORDER BY t.id", params).fetchall()
    return [(n, np.asarray(v, dtype=np.float32)) for n, v in rows]


def task_vectors_by_id(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                       ids: Sequence[int]) -> list[tuple[int, str, str, np.ndarray]]:
    """(task id, name, domain, vector) of the tasks ``ids`` embedded with ``probe``/``method``."""
    rows = con.execute(
        "SELECT t.id, t.name, t.domain, e.vector FROM task_embeddings e JOIN tasks t ON t.id = e.task_id "
        "WHERE e.probe = ? AND e.method = ? AND t.id IN (SELECT unnest(?::INTEGER[]))",
        [probe, method, list(ids)],
    ).fetchall()
    return [(int(i), n, d, np.asarray(v, dtype=np.float32)) for i, n, d, v in rows]


def task_name_by_fingerprint(con: duckdb.DuckDBPyConnection, fingerprint: str) -> str | None:
    """The oldest registered task holding the data of ``fingerprint``, if any."""
    row = con.execute("SELECT name FROM tasks WHERE fingerprint = ? ORDER BY id LIMIT 1", [fingerprint]).fetchone()
    return str(row[0]) if row else None


def embedded_task_names(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> set[str]:
    """The names of the tasks embedded with ``probe``/``method``."""
    return {str(r[0]) for r in con.execute(
        "SELECT t.name FROM task_embeddings e JOIN tasks t ON t.id = e.task_id WHERE e.probe = ? AND e.method = ?",
        [probe, method]).fetchall()}
