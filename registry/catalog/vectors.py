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


# No ORDER BY: DuckDB would sort the whole result in its own memory first (at 1M x 784: a peak of 10 GB against
# 6.5 GB, see kind_vectors); rows come back in insertion order, which is id order unless ids were inserted out
# of order.
_KIND_SQL = {
    "task": "SELECT task_id, vector FROM task_embeddings WHERE probe = ? AND method = ?",
    "model2vec": "SELECT expert_id, vector FROM model2vec WHERE probe = ? AND method = ?",
}


def kind_vectors(con: duckdb.DuckDBPyConnection, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids (N,) int64 and vectors (N, D) float32 of one vector kind (``task/<probe>/<method>`` or
    ``model2vec/<probe>/<method>``), in id order (sorted here when storage order is not id order: one more
    copy of the vectors only then)."""
    family, probe, method = kind.split("/")
    ids, vectors = vectors_to_numpy(con, _KIND_SQL[family], (probe, method))
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
    return ids, vectors


def kind_count(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Number of vectors of one vector kind."""
    family, probe, method = kind.split("/")
    table = "task_embeddings" if family == "task" else "model2vec"
    return int(fetch_one(con, f"SELECT count(*) FROM {table} WHERE probe = ? AND method = ?", [probe, method])[0])
