"""The ``affinity_sets`` and ``affinities`` tables: named tables of transfers (the BIP's input)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from taskreg.registry.catalog.rows import insert_rows
from taskreg.selection.affinity_sets import AffinitySet, Transfer


@dataclass(frozen=True)
class AffinitySetSummary:
    """One line of ``affinity list``: a set's origin and size (None for a built-in set not stored yet)."""

    name: str
    origin: str
    transfers: int | None
    targets: int | None
    max_order: int | None


def insert_affinity_set(con: duckdb.DuckDBPyConnection, aff: AffinitySet, origin: str) -> None:
    con.execute("INSERT INTO affinity_sets (name, origin, source_only) VALUES (?, ?, ?)",
                [aff.name, origin, list(aff.source_only)])
    insert_rows(con, "affinities", ("name", "sources", "target", "order", "value"),
                [(aff.name, list(t.sources), t.target, t.order, t.value) for t in aff.transfers])


def delete_affinity_set(con: duckdb.DuckDBPyConnection, name: str) -> None:
    con.execute("DELETE FROM affinities WHERE name = ?", [name])
    con.execute("DELETE FROM affinity_sets WHERE name = ?", [name])


def affinity_set_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return con.execute("SELECT 1 FROM affinity_sets WHERE name = ?", [name]).fetchone() is not None


def get_affinity_set(con: duckdb.DuckDBPyConnection, name: str) -> AffinitySet | None:
    """The stored set ``name``, its transfers ordered by target, order and sources; None if it is not stored."""
    source_only = affinity_source_only(con, name)
    if source_only is None:
        return None
    rows = con.execute("SELECT sources, target, \"order\", value FROM affinities WHERE name = ? "
                       "ORDER BY target, \"order\", sources", [name]).fetchall()
    transfers = [Transfer(tuple(s), t, int(o), float(v)) for s, t, o, v in rows]
    return AffinitySet(name=name, transfers=transfers, source_only=source_only)


def affinity_set_summaries(con: duckdb.DuckDBPyConnection) -> list[AffinitySetSummary]:
    """Every stored set with its number of transfers, of targets and its highest order, by name."""
    rows = con.execute(
        "SELECT s.name, s.origin, count(a.target), count(DISTINCT a.target), max(a.\"order\") "
        "FROM affinity_sets s LEFT JOIN affinities a ON a.name = s.name GROUP BY ALL ORDER BY s.name"
    ).fetchall()
    return [AffinitySetSummary(n, o, int(k), int(t), None if m is None else int(m)) for n, o, k, t, m in rows]


def affinity_source_only(con: duckdb.DuckDBPyConnection, name: str) -> tuple[str, ...] | None:
    """The source-only tasks of the stored set ``name``; None if it is not stored."""
    row = con.execute("SELECT source_only FROM affinity_sets WHERE name = ?", [name]).fetchone()
    return None if row is None else tuple(row[0])
