"""The catalog as Parquet files (``taskreg export``) and back into a DuckDB file (opening such a snapshot).

One Parquet file per table, written by DuckDB's own ``COPY ... TO`` inside one read transaction (a consistent
state); read back by creating the schema at this taskreg's version (:func:`migrate`) and inserting each file's
rows. Only a snapshot of this schema version is read: an older one is exported again by its owner.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from taskreg.errors import TaskregError
from taskreg.registry.catalog.rows import fetch_one
from taskreg.registry.catalog.schema import SCHEMA_VERSION, TABLES, migrate, schema_version, transaction

#: every table a snapshot holds: the records, plus the schema's version and the registry's identity
SNAPSHOT_TABLES = (*TABLES, "registry_info", "schema_version")


def export_tables(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, int]:
    """Write every table of :data:`SNAPSHOT_TABLES` to ``folder/<table>.parquet`` (one read transaction);
    returns the row count of each."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        for table in SNAPSHOT_TABLES:
            path = str(folder / f"{table}.parquet").replace("'", "''")
            con.execute(f"COPY (SELECT * FROM {table}) TO '{path}' (FORMAT PARQUET)")
            rows[table] = int(fetch_one(con, f"SELECT count(*) FROM {table}")[0])
    finally:
        con.execute("ROLLBACK")
    return rows


def import_tables(con: duckdb.DuckDBPyConnection, folder: Path, version: int) -> None:
    """Fill an empty catalog from a snapshot's Parquet files (schema ``version``, which must be this taskreg's)."""
    if version != SCHEMA_VERSION:
        raise TaskregError(f"snapshot {folder.parent} has catalog schema version {version}, this taskreg reads "
                           f"{SCHEMA_VERSION}: export it again with this taskreg")
    if schema_version(con) != 0:
        raise TaskregError("import_tables needs an empty catalog")
    missing = [t for t in SNAPSHOT_TABLES if not (folder / f"{t}.parquet").is_file()]
    if missing:
        raise TaskregError(f"snapshot {folder.parent} is incomplete: no {missing[0]}.parquet")
    migrate(con)
    with transaction(con):
        con.execute("DELETE FROM schema_version")
        for table in SNAPSHOT_TABLES:
            path = str(folder / f"{table}.parquet").replace("'", "''")
            try:
                con.execute(f"INSERT INTO {table} SELECT * FROM read_parquet('{path}')")
            except duckdb.Error as exc:
                raise TaskregError(f"snapshot {folder.parent}: {table}.parquet does not fit the catalog "
                                   f"({str(exc).splitlines()[0]})") from None
