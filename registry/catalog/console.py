"""The SQL console (``taskreg sql``): a read-only connection locked down by DuckDB itself."""

from __future__ import annotations

from pathlib import Path

import duckdb

from taskreg.errors import TaskregError
from taskreg.registry.catalog.schema import ConfigValue, connect

# What `taskreg sql` may run, by DuckDB's own parse of the statement: queries (SELECT, and SHOW, DESCRIBE,
# SUMMARIZE, FROM-first, VALUES, which DuckDB parses as SELECT), EXPLAIN and PRAGMA (the pragmas that change
# anything are settings, which the locked configuration refuses).
CONSOLE_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA"})
# The console's DuckDB configuration: no file outside the catalog is read or written (COPY, EXPORT, ATTACH,
# read_csv/read_text/glob/..., extensions), no extension is installed or loaded, and `lock_configuration`
# (set last, see :func:`connect_console`) forbids any SET that would undo this.
CONSOLE_CONFIG: dict[str, ConfigValue] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_persistent_secrets": False,
}


def connect_console(path: Path | str, spill_dir: Path | None) -> duckdb.DuckDBPyConnection:
    """A read-only connection for untrusted queries, locked down by DuckDB itself (:data:`CONSOLE_CONFIG`).

    ``spill_dir``: a directory private to this query where DuckDB may spill a large sort or join (it must
    not exist yet; its parent must), or None to keep everything in memory.
    """
    spill = str(spill_dir) if spill_dir is not None else ""
    config: dict[str, ConfigValue] = {**CONSOLE_CONFIG, "temp_directory": spill}
    con = connect(path, read_only=True, config=config)
    con.execute("SET lock_configuration = true")
    return con


def console_query(con: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], list[tuple]]:
    """Run one query of ``taskreg sql`` on a :func:`connect_console` connection: (column names, rows).

    Anything but a single query (:data:`CONSOLE_STATEMENTS`) is refused before it runs; what DuckDB refuses
    while running it (a file access, a setting, a write to the read-only catalog) is refused in one line too.
    """
    try:
        statements = con.extract_statements(query)
        kinds = [s.type.name for s in statements]
    except duckdb.Error as exc:
        raise TaskregError(f"SQL error: {_first_line(exc)}") from None
    except ValueError:  # a statement type this DuckDB's Python API has no name for (e.g. UPDATE EXTENSIONS)
        kinds = ["other"]
    if not kinds:
        raise TaskregError("SQL error: no statement given")
    if len(kinds) > 1:
        raise TaskregError(f"SQL refused: taskreg sql runs one statement at a time, got {len(kinds)}")
    if kinds[0] not in CONSOLE_STATEMENTS:
        raise TaskregError(f"SQL refused: taskreg sql only answers queries (SELECT, SHOW, DESCRIBE, EXPLAIN, "
                           f"PRAGMA), not {kinds[0]} statements")
    try:
        cur = con.execute(query)
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except (duckdb.PermissionException, duckdb.InvalidInputException) as exc:
        if "configuration" in str(exc) or "read-only" in str(exc) or isinstance(exc, duckdb.PermissionException):
            raise TaskregError(f"SQL refused: {_first_line(exc)}") from None
        raise TaskregError(f"SQL error: {_first_line(exc)}") from None
    except duckdb.Error as exc:
        raise TaskregError(f"SQL error: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
