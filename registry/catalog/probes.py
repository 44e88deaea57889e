"""The ``probes`` table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from taskreg.registry.catalog.rows import fetch_rows


@dataclass(frozen=True)
class ProbeRecord:
    name: str
    arch: str
    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    weights: str
    origin: str
    run_id: str | None



PROBE_COLS = "name, arch, input_size, in_chans, mean, std, sha256, weights, origin, run_id"


def _probe(*row: Any) -> ProbeRecord:  # one catalog row, in the order of PROBE_COLS
    r = list(row)
    r[4], r[5] = tuple(r[4]), tuple(r[5])
    return ProbeRecord(*r)


def list_probes(con: duckdb.DuckDBPyConnection) -> list[ProbeRecord]:
    return fetch_rows(con, f"SELECT {PROBE_COLS} FROM probes ORDER BY created_at, name", (), _probe)


def get_probe(con: duckdb.DuckDBPyConnection, name: str) -> ProbeRecord | None:
    rows = fetch_rows(con, f"SELECT {PROBE_COLS} FROM probes WHERE name = ?", (name,), _probe)
    return rows[0] if rows else None


def insert_probe(con: duckdb.DuckDBPyConnection, p: ProbeRecord) -> None:
    con.execute(
        f"INSERT INTO probes ({PROBE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [p.name, p.arch, p.input_size, p.in_chans, list(p.mean), list(p.std), p.sha256, p.weights,
         p.origin, p.run_id],
    )
