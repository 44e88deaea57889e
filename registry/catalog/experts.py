"""The ``experts`` table."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from taskreg.registry.catalog.rows import fetch_one, fetch_rows


@dataclass(frozen=True)
class ExpertRecord:
    id: int
    name: str
    arch: str
    sha256: str
    weights: str
    trained_on: str | None
    origin: str
    n_train: int | None
    n_classes: int | None
    run_id: str | None
    model_version: str | None
    created_at: str



_EXPERT_COLS = (
    "id, name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, model_version, "
    "CAST(created_at AS VARCHAR)"
)


def list_experts(con: duckdb.DuckDBPyConnection) -> list[ExpertRecord]:
    return fetch_rows(con, f"SELECT {_EXPERT_COLS} FROM experts ORDER BY id", (), ExpertRecord)


def get_expert(con: duckdb.DuckDBPyConnection, name: str) -> ExpertRecord | None:
    rows = fetch_rows(con, f"SELECT {_EXPERT_COLS} FROM experts WHERE name = ?", (name,), ExpertRecord)
    return rows[0] if rows else None


def insert_expert(
    con: duckdb.DuckDBPyConnection, *, name: str, arch: str, sha256: str, weights: str,
    trained_on: str | None, origin: str, n_train: int | None = None, n_classes: int | None = None,
    run_id: str | None = None, model_version: str | None = None,
) -> int:
    row = fetch_one(
        con, "INSERT INTO experts (name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, "
        "model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, model_version],
    )
    return int(row[0])



def expert_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM experts").fetchall()]
