"""What `taskreg check`, recovery and relocation ask of the catalog as a whole."""

from __future__ import annotations

import duckdb

from taskreg.registry.catalog.rows import fetch_one


def referenced_run_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every MLflow run id a catalog row holds (task embeddings, experts, probes, transfers)."""
    return {r[0] for r in con.execute(
        "SELECT run_id FROM task_embeddings WHERE run_id IS NOT NULL UNION ALL SELECT run_id FROM experts "
        "WHERE run_id IS NOT NULL UNION ALL SELECT run_id FROM probes WHERE run_id IS NOT NULL "
        "UNION ALL SELECT run_id FROM transfers WHERE run_id IS NOT NULL").fetchall()}



_DANGLING = {
    "task_embeddings without task": "SELECT count(*) FROM task_embeddings e "
    "WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = e.task_id)",
    "task embeddings with an unknown probe": "SELECT count(*) FROM task_embeddings e "
    "WHERE NOT EXISTS (SELECT 1 FROM probes p WHERE p.name = e.probe)",
    "expert_task_results without expert or task": "SELECT count(*) FROM expert_task_results r "
    "WHERE r.expert_id NOT IN (SELECT id FROM experts) OR r.task_id NOT IN (SELECT id FROM tasks)",
    "model2vec vectors without expert": "SELECT count(*) FROM model2vec m "
    "WHERE m.expert_id NOT IN (SELECT id FROM experts)",
    "affinities without affinity set": "SELECT count(*) FROM affinities a "
    "WHERE a.name NOT IN (SELECT name FROM affinity_sets)",
    "transfer_losses without transfer": "SELECT count(*) FROM transfer_losses l WHERE NOT EXISTS "
    "(SELECT 1 FROM transfers t WHERE t.dictionary = l.dictionary AND t.key = l.key)",
    "non-finite vectors": "SELECT (SELECT count(*) FROM task_embeddings WHERE NOT "
    "list_bool_and(list_transform(vector, lambda x: isfinite(x)))) + (SELECT count(*) FROM model2vec "
    "WHERE NOT list_bool_and(list_transform(vector, lambda x: isfinite(x))))",
}


def dangling_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """What -> how many rows of that kind point at nothing (or hold non-finite vectors); all should be 0."""
    return {what: int(fetch_one(con, sql)[0]) for what, sql in _DANGLING.items()}


def run_references(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(what, run id) of every catalog row that holds an MLflow run id, e.g. ('expert e1', run id)."""
    return con.execute(
        "SELECT 'task embedding ' || t.name || ' (' || e.method || ')', e.run_id FROM task_embeddings e "
        "JOIN tasks t ON t.id = e.task_id WHERE e.run_id IS NOT NULL "
        "UNION ALL SELECT 'expert ' || name, run_id FROM experts WHERE run_id IS NOT NULL "
        "UNION ALL SELECT 'probe ' || name, run_id FROM probes WHERE run_id IS NOT NULL "
        "UNION ALL SELECT 'transfer ' || dictionary || ':' || key, run_id FROM transfers "
        "WHERE run_id IS NOT NULL"
    ).fetchall()


def weight_files(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """(what, weights path relative to the root, sha256) of every expert and probe."""
    return con.execute(
        "SELECT 'expert ' || name, weights, sha256 FROM experts "
        "UNION ALL SELECT 'probe ' || name, weights, sha256 FROM probes"
    ).fetchall()



_CREATED_AT_KEYS = {"probes": "name", "experts": "id", "tasks": "id"}


def set_created_at(con: duckdb.DuckDBPyConnection, table: str, key: str, value: object, millis: int) -> None:
    """Set a record's ``created_at`` to ``millis`` (ms since the epoch), e.g. its MLflow run's start time."""
    if _CREATED_AT_KEYS.get(table) != key:
        raise ValueError(f"set_created_at: no such record key {table}.{key}")
    con.execute(f"UPDATE {table} SET created_at = make_timestamp(?::BIGINT * 1000) WHERE {key} = ?",
                [millis, value])
