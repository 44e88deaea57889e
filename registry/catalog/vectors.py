"""Vector kinds (``task/<probe>/<estimator>``, ``model2vec/<probe>/<estimator>``) and their generations."""

from __future__ import annotations

import duckdb
import numpy as np

from taskreg.registry.catalog.rows import fetch_one, vectors_to_numpy


def bump_generation(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Increment the generation of one vector kind (call inside the transaction that changes it)."""
    con.execute(
        "INSERT INTO index_state VALUES (?, 1) ON CONFLICT (kind) DO UPDATE SET generation = generation + 1",
        [kind],
    )
    return int(fetch_one(con, "SELECT generation FROM index_state WHERE kind = ?", [kind])[0])


def generation(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    row = con.execute("SELECT generation FROM index_state WHERE kind = ?", [kind]).fetchone()
    return int(row[0]) if row else 0



def kinds(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Every vector kind the catalog has, with its generation."""
    return {k: int(g) for k, g in con.execute("SELECT kind, generation FROM index_state").fetchall()}


_KIND_SQL = {
    "task": "SELECT task_id, vector FROM task_embeddings WHERE probe = ? AND method = ? ORDER BY task_id",
    "model2vec": "SELECT expert_id, vector FROM model2vec WHERE probe = ? AND method = ? ORDER BY expert_id",
}


def kind_vectors(con: duckdb.DuckDBPyConnection, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids (N,) int64 and vectors (N, D) float32 of one vector kind (``task/<probe>/<method>`` or
    ``model2vec/<probe>/<method>``), in id order."""
    family, probe, method = kind.split("/")
    return vectors_to_numpy(con, _KIND_SQL[family], (probe, method))


def kind_count(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Number of vectors of one vector kind."""
    family, probe, method = kind.split("/")
    table = "task_embeddings" if family == "task" else "model2vec"
    return int(fetch_one(con, f"SELECT count(*) FROM {table} WHERE probe = ? AND method = ?", [probe, method])[0])
