"""The ``affinity_sets`` and ``affinities`` tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from taskreg.registry.catalog.rows import insert_rows

if TYPE_CHECKING:
    from taskreg.selection.affinity_sets import AffinitySet

def insert_affinity_set(con: duckdb.DuckDBPyConnection, aff: AffinitySet, origin: str) -> None:
    con.execute("INSERT INTO affinity_sets (name, origin, source_only) VALUES (?, ?, ?)",
                [aff.name, origin, list(aff.source_only)])
    insert_rows(con, "affinities", ("name", "sources", "target", "order", "value"),
                [(aff.name, list(t.sources), t.target, t.order, t.value) for t in aff.transfers])


def delete_affinity_set(con: duckdb.DuckDBPyConnection, name: str) -> None:
    con.execute("DELETE FROM affinities WHERE name = ?", [name])
    con.execute("DELETE FROM affinity_sets WHERE name = ?", [name])
