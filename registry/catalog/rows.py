"""Bulk rows and vectors in and out of DuckDB (through Arrow), shared by every table family."""

from __future__ import annotations

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


VECTOR_BATCH_ROWS = 16_384  # rows per Arrow record batch when streaming vectors out of DuckDB
SMALL_VECTOR_ROWS = 4_096  # at most this many rows: DuckDB's numpy fetch, no pyarrow (whose import pulls in pandas)


def vectors_to_numpy(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> tuple[
    np.ndarray, np.ndarray
]:
    """Run ``sql`` selecting ``(id, vector)`` and return ``ids (N,) int64`` and ``vectors (N, D) float32``.

    Streams the result in Arrow record batches of ``VECTOR_BATCH_ROWS`` (a million vectors come back without a
    Python loop over rows) and copies each batch into the result as it arrives: the peak memory is about one
    copy of the vectors. Fetching the whole result as one Arrow table and combining its chunks held about
    4.7 copies (15 GB for 1M x 784, issue 16). Up to ``SMALL_VECTOR_ROWS`` rows (a query's candidates) come
    through DuckDB's numpy fetch instead: importing pyarrow imports pandas, 0.3 s of a fresh ``select``.
    """
    con.execute("SELECT 1").fetchall()  # finish a result the caller left half-read
    n = int(con.execute(f"SELECT count(*) FROM ({sql})", list(params)).fetchall()[0][0])
    if n <= SMALL_VECTOR_ROWS:
        return _small_vectors(con, sql, params, n)
    rel = con.sql(sql, params=list(params))  # a relation streams; a DB-API result would be materialised first
    if rel is None:  # only a statement without a result set (not a SELECT) gives none
        raise RuntimeError(f"catalog query returned no result set: {sql}")
    ids = np.empty(n, dtype=np.int64)
    out: np.ndarray | None = None
    start = 0
    for batch in rel.to_arrow_reader(VECTOR_BATCH_ROWS):
        m = batch.num_rows
        if m == 0:
            continue
        col = batch.column(1)
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        if out is None:
            out = np.empty((n, int(lengths[0])), dtype=np.float32)
        if not np.all(lengths == out.shape[1]):
            raise TaskregError("catalog holds vectors of different lengths under one kind; run `taskreg check`")
        ids[start:start + m] = batch.column(0).to_numpy()
        out[start:start + m] = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].reshape(m, -1)
        start += m
    if out is None:
        return ids[:0], np.zeros((0, 0), dtype=np.float32)
    if start != n:
        raise RuntimeError(f"catalog query returned {start} rows after counting {n}: {sql}")
    return ids, out


def _small_vectors(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object], n: int) -> tuple[
    np.ndarray, np.ndarray
]:
    """:func:`vectors_to_numpy` for ``n`` rows or so, fetched as numpy columns (the vectors: one array per row)."""
    cols = list(con.execute(sql, list(params)).fetchnumpy().values())
    ids = np.asarray(cols[0], dtype=np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    rows = [np.asarray(v, dtype=np.float32) for v in cols[1]]
    if len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
        raise TaskregError("catalog holds vectors of different lengths under one kind; run `taskreg check`")
    return ids, np.stack(rows)


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
