"""Bulk rows and vectors in and out of DuckDB (through Arrow), shared by every table family."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np

from taskreg.errors import TaskregError


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...]:
    """The row of a query that always returns one: an aggregate, or an ``INSERT ... RETURNING`` of one row."""
    row = con.execute(sql, list(params)).fetchone()
    if row is None:
        raise RuntimeError(f"catalog query returned no row: {sql}")
    return row


def vectors_to_numpy(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> tuple[
    np.ndarray, np.ndarray
]:
    """Run ``sql`` selecting ``(id, vector)`` and return ``ids (N,) int64`` and ``vectors (N, D) float32``.

    Uses Arrow so a million vectors come back without a Python loop.
    """
    with warnings.catch_warnings():  # DuckDB notes the one extra copy; fine for catalog-sized results
        warnings.simplefilter("ignore", UserWarning)
        table = con.execute(sql, list(params)).to_arrow_table()
    if table is None:  # only a statement without a result set (not a SELECT) gives none
        raise RuntimeError(f"catalog query returned no result set: {sql}")
    ids = table.column(0).to_numpy().astype(np.int64)
    if table.num_rows == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    col = table.column(1).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    lengths = np.diff(col.offsets.to_numpy())
    if not np.all(lengths == lengths[0]):
        raise TaskregError("catalog holds vectors of different lengths under one kind; run `taskreg check`")
    return ids, flat.reshape(len(ids), int(lengths[0]))


def vector_param(v: np.ndarray) -> list[float]:
    """A numpy vector as a DuckDB FLOAT[] parameter."""
    return np.asarray(v, dtype=np.float32).ravel().tolist()


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                *, on_conflict: str = "") -> None:
    """Bulk insert through Arrow (DuckDB's ``executemany`` goes row by row and is ~100x slower).

    ``on_conflict`` is appended verbatim, e.g. ``"ON CONFLICT DO NOTHING"``.
    """
    if not rows:
        return
    insert_columns(con, table, {c: [r[i] for r in rows] for i, c in enumerate(columns)}, on_conflict=on_conflict)


def insert_columns(con: duckdb.DuckDBPyConnection, table: str, data: Mapping[str, Sequence[object] | np.ndarray],
                   *, on_conflict: str = "") -> None:
    """Bulk insert column-wise through Arrow, without a Python loop over numpy data.

    data : column name -> values, all of one length N. A (N,) numpy array becomes an Arrow column
    without copying; a (N, D) numpy array becomes a ``FLOAT[]``/list column (one vector per row,
    e.g. 100,000 Task2Vec vectors in one call); a Python sequence is converted by ``pyarrow.array``
    (``None`` is NULL). ``on_conflict`` is appended verbatim, e.g. ``"ON CONFLICT DO NOTHING"``.
    """
    import pyarrow as pa

    lengths = {c: len(v) for c, v in data.items()}
    if len(set(lengths.values())) > 1:
        raise TaskregError(f"insert into {table}: columns of different lengths {lengths}")
    if not data or not next(iter(lengths.values())):
        return
    arrays = {}
    for col, values in data.items():
        if isinstance(values, np.ndarray) and values.ndim == 2:
            n, dim = values.shape
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            offsets = np.arange(n + 1, dtype=np.int64) * dim
            if n * dim < 2**31:
                arrays[col] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
            else:
                arrays[col] = pa.LargeListArray.from_arrays(pa.array(offsets), flat)
        elif isinstance(values, np.ndarray):
            arrays[col] = pa.array(values)
        else:
            arrays[col] = pa.array(list(values))
    con.execute("SELECT 1").fetchall()  # finish a result the caller left half-read: DuckDB 2 refuses register()
    con.register("_taskreg_rows", pa.table(arrays))
    try:
        cols = ", ".join(f'"{c}"' for c in data)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _taskreg_rows {on_conflict}")
    finally:
        con.unregister("_taskreg_rows")



def fetch_rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object], cls: Callable) -> list:
    return [cls(*row) for row in con.execute(sql, list(params)).fetchall()]
