"""The ``model2vec`` table: one fitted vector and bias per expert, probe and Task2Vec estimator."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np

from taskreg.registry.catalog.experts import expert_ids
from taskreg.registry.catalog.rows import insert_columns, vectors_to_numpy


def model2vec_count(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> int:
    """Number of experts with a Model2Vec vector fitted for ``probe``/``method``."""
    row = con.execute("SELECT count(*) FROM model2vec WHERE probe = ? AND method = ?", [probe, method]).fetchone()
    return int(row[0]) if row else 0


def model2vec_expert_ids(con: duckdb.DuckDBPyConnection, probe: str, method: str | None = None) -> set[int]:
    """The experts with a Model2Vec vector fitted for ``probe``/``method`` (any estimator when ``method`` is None)."""
    if method is None:
        rows = con.execute("SELECT DISTINCT expert_id FROM model2vec WHERE probe = ?", [probe]).fetchall()
    else:
        rows = con.execute("SELECT expert_id FROM model2vec WHERE probe = ? AND method = ?", [probe, method]).fetchall()
    return {int(r[0]) for r in rows}


def model2vec_rows(con: duckdb.DuckDBPyConnection, expert_id: int) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(probe, estimator, vector, bias) of every Model2Vec vector of one expert, by probe and estimator."""
    rows = con.execute("SELECT probe, method, vector, bias FROM model2vec WHERE expert_id = ? ORDER BY probe, method",
                       [expert_id]).fetchall()
    return [(str(p), str(m), np.asarray(v, dtype=np.float32), np.asarray(b, dtype=np.float32)) for p, m, v, b in rows]


def model2vec_with_bias(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                        expert_ids: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """expert id -> (vector, bias) for those of ``expert_ids`` fitted with ``probe``/``method``."""
    cols = con.execute("SELECT expert_id, vector, bias FROM model2vec WHERE probe = ? AND method = ? AND "
                       "expert_id IN (SELECT unnest(?::INTEGER[]))", [probe, method, [int(i) for i in expert_ids]]
                       ).fetchnumpy()  # columns as numpy (a vector per row): no Python float per element
    return {int(i): (np.asarray(v, dtype=np.float32), np.asarray(b, dtype=np.float32))
            for i, v, b in zip(cols["expert_id"], cols["vector"], cols["bias"], strict=True)}


def model2vec_kinds_of_expert(con: duckdb.DuckDBPyConnection, expert_id: int) -> list[str]:
    """The vector kinds (``model2vec/<probe>/<method>``) an expert has a vector in."""
    return [str(r[0]) for r in con.execute(
        "SELECT DISTINCT 'model2vec/' || probe || '/' || method FROM model2vec WHERE expert_id = ?", [expert_id],
    ).fetchall()]


def model2vec_vectors(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                      ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Expert ids (N,) and (N, D) Model2Vec vectors of those experts of ``ids`` fitted for ``probe``/``method``."""
    return vectors_to_numpy(con, "SELECT expert_id, vector FROM model2vec WHERE probe = ? AND method = ? AND "
                            "expert_id IN (SELECT unnest(?::INTEGER[]))", (probe, method, [int(i) for i in ids]))


def replace_model2vec(con: duckdb.DuckDBPyConnection, probe: str, method: str, experts: Sequence[int],
                      vectors: np.ndarray, biases: np.ndarray, fit_loss: float) -> int:
    """Replace the Model2Vec vectors of ``probe``/``method`` by a new fit: row j of ``vectors`` and ``biases`` belongs
    to expert id ``experts[j]``. Experts removed since the fit are skipped; returns the number of rows stored."""
    con.execute("DELETE FROM model2vec WHERE probe = ? AND method = ?", [probe, method])
    alive = expert_ids(con)
    keep = [j for j, e in enumerate(experts) if e in alive]
    insert_columns(con, "model2vec", {
        "expert_id": np.asarray([experts[j] for j in keep], dtype=np.int32),
        "probe": [probe] * len(keep),
        "method": [method] * len(keep),
        "vector": np.asarray(vectors, dtype=np.float32)[keep],
        "bias": np.asarray(biases, dtype=np.float32)[keep],
        "fit_loss": np.full(len(keep), float(fit_loss), dtype=np.float64),
    })
    return len(keep)
