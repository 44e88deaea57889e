"""The ``policies`` table: every transfer policy solved on a registry that could record it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:  # selection.bip imports PuLP: not at import time of the catalog
    from taskreg.selection.bip import Policy, PolicyTransfer


@dataclass(frozen=True)
class PolicyRecord:
    """One recorded policy: the request (affinity set, budget, options) and the BIP's answer."""

    id: int
    affinity: str
    budget: float
    max_order: int | None
    objective: float
    supervised: tuple[str, ...]
    transfers: tuple[PolicyTransfer, ...]
    options: str  # JSON of the request: targets, source_only, importance, cost, pin_supervised, free_source_only
    seconds: float | None
    created_at: str


def insert_policy(con: duckdb.DuckDBPyConnection, affinity: str, budget: float, policy: Policy,
                  options: Mapping[str, Any]) -> int:
    """Record ``policy`` (solved on ``affinity`` under ``budget`` with the request ``options``); returns its id."""
    row = con.execute(
        "INSERT INTO policies (affinity, budget, max_order, objective, supervised, transfers, options, seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [affinity, float(budget), policy.max_order, policy.objective, list(policy.supervised),
         json.dumps([asdict(t) for t in policy.transfers]), json.dumps(dict(options)), policy.seconds],
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING gives one row
    return int(row[0])


def list_policies(con: duckdb.DuckDBPyConnection) -> list[PolicyRecord]:
    """Every recorded policy, oldest first."""
    from taskreg.selection.bip import PolicyTransfer

    rows = con.execute("SELECT id, affinity, budget, max_order, objective, supervised, transfers, options, seconds, "
                       "CAST(created_at AS VARCHAR) FROM policies ORDER BY id").fetchall()
    return [PolicyRecord(int(i), a, float(b), None if m is None else int(m), float(o), tuple(s),
                         tuple(PolicyTransfer(t["target"], tuple(t["sources"]), float(t["value"]))
                               for t in json.loads(tr)),
                         opts, None if sec is None else float(sec), created)
            for i, a, b, m, o, s, tr, opts, sec, created in rows]
