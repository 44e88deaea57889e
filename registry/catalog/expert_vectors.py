"""What the experts' vectors rest on: their Model2Vec rows (``model2vec``), and which experts have measured
errors (``expert_task_results``) on tasks embedded with a probe — the queries behind the ``basis`` of a
``select`` score, ``expert show``'s Model2Vec form and the reasons an expert is unscored."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np


def model2vec_rows(con: duckdb.DuckDBPyConnection, expert_id: int) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(probe, estimator, vector, bias) of every Model2Vec vector of one expert, by probe and estimator."""
    rows = con.execute("SELECT probe, method, vector, bias FROM model2vec WHERE expert_id = ? ORDER BY probe, method",
                       [expert_id]).fetchall()
    return [(p, m, np.asarray(v, dtype=np.float32), np.asarray(b, dtype=np.float32)) for p, m, v, b in rows]


def model2vec_with_bias(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                        expert_ids: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """expert id -> (vector, bias) for those of ``expert_ids`` fitted with (probe, estimator)."""
    rows = con.execute("SELECT expert_id, vector, bias FROM model2vec WHERE probe = ? AND method = ? AND "
                       "expert_id IN (SELECT unnest(?::INTEGER[]))", [probe, method, list(expert_ids)]).fetchall()
    return {int(i): (np.asarray(v, dtype=np.float32), np.asarray(b, dtype=np.float32)) for i, v, b in rows}


def model2vec_expert_ids(con: duckdb.DuckDBPyConnection, probe: str, method: str | None = None) -> set[int]:
    """Experts with a Model2Vec vector for ``probe`` (and estimator ``method``; any estimator when None)."""
    if method is None:
        rows = con.execute("SELECT DISTINCT expert_id FROM model2vec WHERE probe = ?", [probe]).fetchall()
    else:
        rows = con.execute("SELECT expert_id FROM model2vec WHERE probe = ? AND method = ?", [probe, method]).fetchall()
    return {int(r[0]) for r in rows}


def measured_expert_ids(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> set[int]:
    """Experts with a measured test error on at least one task embedded with (probe, estimator)."""
    rows = con.execute("SELECT DISTINCT r.expert_id FROM expert_task_results r JOIN task_embeddings e "
                       "ON e.task_id = r.task_id WHERE e.probe = ? AND e.method = ?", [probe, method]).fetchall()
    return {int(r[0]) for r in rows}


def embedded_task_names(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> set[str]:
    """Names of the tasks embedded with (probe, estimator)."""
    rows = con.execute("SELECT t.name FROM tasks t JOIN task_embeddings e ON e.task_id = t.id WHERE e.probe = ? "
                       "AND e.method = ?", [probe, method]).fetchall()
    return {r[0] for r in rows}
