"""The Taskonomy pipeline's tables: ``transfers``, ``transfer_losses`` and ``winrates``.

A transfer row is one finished job of ``taskonomy build`` / ``taskonomy add-target`` (a task network, a
transfer of some order, or the ``scratch`` baseline), keyed by (dictionary, job key), with its per-image test
losses in ``transfer_losses``. Win rates are computed from those losses in SQL (:func:`compute_winrates`) or
copied from the published tables (:func:`insert_winrates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from taskreg.registry.catalog.rows import insert_columns, insert_rows


@dataclass(frozen=True)
class TransferRecord:
    """One row of ``transfers``: kind 'self' (a task network), 'transfer' or 'scratch'."""

    dictionary: str
    key: str
    kind: str
    sources: tuple[str, ...]
    target: str
    order: int
    mean_loss: float
    train_size: int | None
    seconds: float | None
    run_id: str | None


@dataclass(frozen=True)
class WinRate:
    """One row of ``winrates``: the share of test images on which option ``a`` beats option ``b`` for ``target``.

    Options are 'self', 'scratch' ('pixels' in the published tables) or the sources joined by '+'."""

    target: str
    a: str
    b: str
    value: float
    n_images: int | None = None


_TRANSFER_COLS = 'dictionary, key, kind, sources, target, "order", mean_loss, train_size, seconds, run_id'


def _transfer(row: tuple[Any, ...]) -> TransferRecord:
    d, key, kind, sources, target, order, mean_loss, train_size, seconds, run_id = row
    return TransferRecord(d, key, kind, tuple(sources), target, int(order), float(mean_loss),
                          None if train_size is None else int(train_size), None if seconds is None else float(seconds),
                          run_id)


# ---------------------------------------------------------------------------------------------------- transfers
def insert_transfer(con: duckdb.DuckDBPyConnection, record: TransferRecord, losses: np.ndarray) -> None:
    """One transfer row and its per-image test losses (image i has loss ``losses[i]``)."""
    con.execute(
        f"INSERT INTO transfers ({_TRANSFER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [record.dictionary, record.key, record.kind, list(record.sources), record.target, record.order,
         record.mean_loss, record.train_size, record.seconds, record.run_id],
    )
    losses = np.asarray(losses, dtype=np.float64).ravel()
    insert_columns(con, "transfer_losses", {"dictionary": [record.dictionary] * len(losses),
                                            "key": [record.key] * len(losses),
                                            "image": np.arange(len(losses), dtype=np.int32), "loss": losses})


def transfer_keys(con: duckdb.DuckDBPyConnection, dictionary: str) -> set[str]:
    """The keys of the finished jobs of ``dictionary``."""
    return {key for (key,) in con.execute("SELECT key FROM transfers WHERE dictionary = ?", [dictionary]).fetchall()}


def get_transfer(con: duckdb.DuckDBPyConnection, dictionary: str, key: str) -> TransferRecord | None:
    row = con.execute(f"SELECT {_TRANSFER_COLS} FROM transfers WHERE dictionary = ? AND key = ?",
                      [dictionary, key]).fetchone()
    return None if row is None else _transfer(row)


def transfers_by_keys(con: duckdb.DuckDBPyConnection, dictionary: str, keys: Sequence[str]) -> list[TransferRecord]:
    """The stored transfers among ``keys``, ordered by target, order and key."""
    rows = con.execute(f"SELECT {_TRANSFER_COLS} FROM transfers WHERE dictionary = ? AND key IN "
                       "(SELECT unnest(?::VARCHAR[])) ORDER BY target, \"order\", key", [dictionary, list(keys)])
    return [_transfer(r) for r in rows.fetchall()]


def task_network_keys(con: duckdb.DuckDBPyConnection, dictionary: str) -> dict[str, str]:
    """Target -> job key of every stored task network (kind 'self') of ``dictionary``."""
    rows = con.execute("SELECT target, key FROM transfers WHERE dictionary = ? AND kind = 'self' ORDER BY target",
                       [dictionary]).fetchall()
    return {target: key for target, key in rows}


def is_transfer_target(con: duckdb.DuckDBPyConnection, dictionary: str, target: str) -> bool:
    """Whether ``dictionary`` holds any job (task network, transfer or scratch) to ``target``."""
    return con.execute("SELECT 1 FROM transfers WHERE dictionary = ? AND target = ? LIMIT 1",
                       [dictionary, target]).fetchone() is not None


# ---------------------------------------------------------------------------------------------------- win rates
def compute_winrates(con: duckdb.DuckDBPyConnection, dictionary: str, keys: Sequence[str], *,
                     targets: Iterable[str] | None = None) -> int:
    """Pairwise win rates between every two options of each target, from the per-image losses, in SQL.

    ``winrates(a, b)`` = share of test images on which option a has a lower loss than b (ties count one half).
    Only the jobs in ``keys`` take part; the rows of ``targets`` (default: all of the dictionary) are replaced.
    Returns the number of win-rate rows of the dictionary afterwards.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE _keys AS SELECT unnest(?::VARCHAR[]) AS key", [list(keys)])
    if targets is None:
        con.execute("DELETE FROM winrates WHERE dictionary = ?", [dictionary])
    else:
        con.execute("DELETE FROM winrates WHERE dictionary = ? AND target IN (SELECT unnest(?::VARCHAR[]))",
                    [dictionary, list(targets)])
    con.execute(
        """
        INSERT INTO winrates (dictionary, target, a, b, value, n_images)
        WITH opts AS (
            SELECT t.key, t.target,
                   CASE WHEN t.kind IN ('self', 'scratch') THEN t.kind ELSE array_to_string(t.sources, '+')
                   END AS label
            FROM transfers t JOIN _keys USING (key) WHERE t.dictionary = $1
        )
        SELECT $1, oa.target, oa.label, ob.label,
               avg(CASE WHEN la.loss < lb.loss THEN 1.0 WHEN la.loss = lb.loss THEN 0.5 ELSE 0.0 END),
               count(*)
        FROM opts oa JOIN opts ob ON oa.target = ob.target AND oa.key <> ob.key
        JOIN transfer_losses la ON la.dictionary = $1 AND la.key = oa.key
        JOIN transfer_losses lb ON lb.dictionary = $1 AND lb.key = ob.key AND lb.image = la.image
        GROUP BY ALL
        """,
        [dictionary],
    )
    row = con.execute("SELECT count(*) FROM winrates WHERE dictionary = ?", [dictionary]).fetchone()
    con.execute("DROP TABLE _keys")
    return int(row[0]) if row else 0


def insert_winrates(con: duckdb.DuckDBPyConnection, dictionary: str, rows: Sequence[WinRate]) -> None:
    insert_rows(con, "winrates", ("dictionary", "target", "a", "b", "value", "n_images"),
                [(dictionary, w.target, w.a, w.b, w.value, w.n_images) for w in rows])


def _winrates(con: duckdb.DuckDBPyConnection, where: str, params: Sequence[object], order: str = "") -> list[WinRate]:
    rows = con.execute(f"SELECT target, a, b, value, n_images FROM winrates WHERE {where} {order}", list(params))
    return [WinRate(t, a, b, float(v), None if n is None else int(n)) for t, a, b, v, n in rows.fetchall()]


def dictionary_winrates(con: duckdb.DuckDBPyConnection, dictionary: str) -> list[WinRate]:
    """Every win rate of ``dictionary``, ordered by target, a and b."""
    return _winrates(con, "dictionary = ?", [dictionary], "ORDER BY target, a, b")


def target_winrates(con: duckdb.DuckDBPyConnection, dictionary: str, target: str, b: str) -> list[WinRate]:
    """The win rates of every option against ``b`` for one target, best first (ties by option)."""
    return _winrates(con, "dictionary = ? AND target = ? AND b = ?", [dictionary, target, b], "ORDER BY value DESC, a")


def first_order_winrates(con: duckdb.DuckDBPyConnection, dictionary: str) -> list[WinRate]:
    """The win rates of single sources (and 'self') against scratch ('pixels' in the published tables)."""
    return _winrates(con, "dictionary = ? AND b IN ('scratch', 'pixels') AND NOT contains(a, '+')", [dictionary],
                     "ORDER BY target, a, b")


def winrate_targets(con: duckdb.DuckDBPyConnection, dictionary: str) -> list[str]:
    """The targets that have win rates in ``dictionary``, sorted."""
    rows = con.execute("SELECT DISTINCT target FROM winrates WHERE dictionary = ? ORDER BY 1", [dictionary])
    return [target for (target,) in rows.fetchall()]
