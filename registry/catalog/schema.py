"""The catalog's schema: its tables, the migrations that make them, connections and transactions.

Schema versions (each a migration applied in order, recorded in ``schema_version``):

1. probes, tasks, task_embeddings, experts, expert_task_results, model2vec,
   transfers, transfer_losses, winrates, affinity_sets, affinities, policies.
2. ``index_state`` (a generation counter per vector kind, bumped in the same transaction as any
   change to the vectors, so a persisted Faiss index can tell that it is stale) and
   ``trivial_embeddings`` (the trivial task embedding t0 per probe and estimator).
3. ``registry_info``: the registry's identity (a uuid written at ``init``, also an experiment tag in
   ``mlflow.db``), so a catalog that does not belong to the MLflow store beside it is recognised.
4. ``experts.input_size``: the square input resolution the expert was trained (or is meant to be run) at;
   NULL (every expert registered before) = its architecture's default resolution.
5. ``experts.reference_accuracy`` and ``experts.reference``: the expert's accuracy on its own reference task and
   what that task is (ImageNet-1k top-1 for a zoo model, a held-out split of its training data for a trained
   expert, or the user's value); NULL where none is known. The ``prior`` selection method ranks by it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import duckdb

from taskreg.errors import TaskregError
from taskreg.registry.catalog.rows import fetch_one

#: a value of DuckDB's connection configuration (``duckdb.connect(config=...)``)
ConfigValue = str | int | float | list[str]

_MIGRATION_1 = """
CREATE SEQUENCE IF NOT EXISTS task_id_seq START 1;
CREATE SEQUENCE IF NOT EXISTS expert_id_seq START 1;
CREATE SEQUENCE IF NOT EXISTS embedding_id_seq START 1;
CREATE SEQUENCE IF NOT EXISTS policy_id_seq START 1;

CREATE TABLE probes (
    name        VARCHAR PRIMARY KEY,
    arch        VARCHAR NOT NULL,
    input_size  INTEGER NOT NULL,
    in_chans    INTEGER NOT NULL,
    mean        FLOAT[] NOT NULL,
    std         FLOAT[] NOT NULL,
    sha256      VARCHAR NOT NULL,
    weights     VARCHAR NOT NULL,          -- path relative to the registry root
    origin      VARCHAR NOT NULL,          -- 'trained' | 'added'
    run_id      VARCHAR,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY DEFAULT nextval('task_id_seq'),
    name        VARCHAR NOT NULL UNIQUE,
    source      VARCHAR NOT NULL,
    domain      VARCHAR NOT NULL,
    n_samples   INTEGER NOT NULL,
    n_classes   INTEGER NOT NULL,
    fingerprint VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE task_embeddings (
    id          INTEGER PRIMARY KEY DEFAULT nextval('embedding_id_seq'),
    task_id     INTEGER NOT NULL,
    probe       VARCHAR NOT NULL,
    method      VARCHAR NOT NULL,          -- 'montecarlo' | 'variational' | 'domain'
    vector      FLOAT[] NOT NULL,
    norm        DOUBLE NOT NULL,
    n_samples   INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    seconds     DOUBLE,
    run_id      VARCHAR,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (task_id, probe, method)
);

CREATE TABLE experts (
    id          INTEGER PRIMARY KEY DEFAULT nextval('expert_id_seq'),
    name        VARCHAR NOT NULL UNIQUE,
    arch        VARCHAR NOT NULL,
    sha256      VARCHAR NOT NULL,
    weights     VARCHAR NOT NULL,
    trained_on  VARCHAR,                   -- task name, may be unknown
    origin      VARCHAR NOT NULL,          -- 'trained' | 'added' | 'task_network'
    n_train     INTEGER,
    n_classes   INTEGER,
    run_id      VARCHAR,
    model_version VARCHAR,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE expert_task_results (
    expert_id   INTEGER NOT NULL,
    task_id     INTEGER NOT NULL,
    test_error  DOUBLE NOT NULL,
    train_error DOUBLE,
    protocol    VARCHAR NOT NULL,          -- JSON of the linear-probe protocol
    seconds     DOUBLE,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (expert_id, task_id)
);

CREATE TABLE model2vec (
    expert_id   INTEGER NOT NULL,
    probe       VARCHAR NOT NULL,
    method      VARCHAR NOT NULL,
    vector      FLOAT[] NOT NULL,
    bias        FLOAT[] NOT NULL,
    fit_loss    DOUBLE,
    fitted_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (expert_id, probe, method)
);

CREATE TABLE transfers (
    dictionary  VARCHAR NOT NULL,
    key         VARCHAR NOT NULL,          -- stable job key, e.g. 'edges+rotation->depth'
    kind        VARCHAR NOT NULL,          -- 'transfer' | 'scratch' | 'self'
    sources     VARCHAR[] NOT NULL,
    target      VARCHAR NOT NULL,
    "order"     INTEGER NOT NULL,
    mean_loss   DOUBLE NOT NULL,
    train_size  INTEGER,
    seconds     DOUBLE,
    run_id      VARCHAR,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dictionary, key)
);

CREATE TABLE transfer_losses (
    dictionary  VARCHAR NOT NULL,
    key         VARCHAR NOT NULL,
    image       INTEGER NOT NULL,
    loss        DOUBLE NOT NULL,
    PRIMARY KEY (dictionary, key, image)
);

-- Pairwise win rates among the options for one target: fraction of test images on which
-- option a beats option b (ties count half). Gain is b = 'scratch' ('pixels' in the published
-- tables), Quality is b = 'self'.
CREATE TABLE winrates (
    dictionary  VARCHAR NOT NULL,
    target      VARCHAR NOT NULL,
    a           VARCHAR NOT NULL,
    b           VARCHAR NOT NULL,
    value       DOUBLE NOT NULL,
    n_images    INTEGER,
    PRIMARY KEY (dictionary, target, a, b)
);

CREATE TABLE affinity_sets (
    name        VARCHAR PRIMARY KEY,
    origin      VARCHAR NOT NULL,          -- 'builtin' | 'import:<file>' | 'build:<dictionary>'
    source_only VARCHAR[] NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE affinities (
    name        VARCHAR NOT NULL,
    sources     VARCHAR[] NOT NULL,
    target      VARCHAR NOT NULL,
    "order"     INTEGER NOT NULL,
    value       DOUBLE NOT NULL
);

CREATE TABLE policies (
    id          INTEGER PRIMARY KEY DEFAULT nextval('policy_id_seq'),
    affinity    VARCHAR NOT NULL,
    budget      DOUBLE NOT NULL,
    max_order   INTEGER,
    objective   DOUBLE NOT NULL,
    supervised  VARCHAR[] NOT NULL,
    transfers   VARCHAR NOT NULL,          -- JSON list of {target, sources, value}
    options     VARCHAR NOT NULL,          -- JSON of the request (targets, importance, cost, ...)
    seconds     DOUBLE,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

_MIGRATION_2 = """
CREATE TABLE index_state (
    kind        VARCHAR PRIMARY KEY,       -- e.g. 'task/default/montecarlo', 'model2vec/default/montecarlo'
    generation  BIGINT NOT NULL
);

CREATE TABLE trivial_embeddings (
    probe       VARCHAR NOT NULL,
    method      VARCHAR NOT NULL,
    vector      FLOAT[] NOT NULL,
    PRIMARY KEY (probe, method)
);
"""

_MIGRATION_3 = """
CREATE TABLE registry_info (
    key         VARCHAR PRIMARY KEY,       -- 'registry_id'; 'tracking_uri' (a registry on a tracking server)
    value       VARCHAR NOT NULL
);
"""

_MIGRATION_4 = """
ALTER TABLE experts ADD COLUMN input_size INTEGER;  -- NULL: the arch's default resolution
"""

_MIGRATION_5 = """
ALTER TABLE experts ADD COLUMN reference_accuracy DOUBLE;  -- in [0, 1]; NULL: unknown
ALTER TABLE experts ADD COLUMN reference VARCHAR;  -- what it was measured on, e.g. 'ImageNet-1k top-1 (published)'
"""

MIGRATIONS: list[str] = [_MIGRATION_1, _MIGRATION_2, _MIGRATION_3, _MIGRATION_4, _MIGRATION_5]
SCHEMA_VERSION = len(MIGRATIONS)

TABLES = (
    "probes", "tasks", "task_embeddings", "experts", "expert_task_results", "model2vec",
    "transfers", "transfer_losses", "winrates", "affinity_sets", "affinities", "policies",
    "index_state", "trivial_embeddings",
)


# --------------------------------------------------------------------------- connections

def connect(path: Path | str, *, read_only: bool = False, wait: float = 30.0,
            config: Mapping[str, ConfigValue] | None = None) -> duckdb.DuckDBPyConnection:
    """Open the catalog, retrying while another process holds DuckDB's file lock (bounded wait)."""
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=dict(config or {}))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise TaskregError(f"cannot open catalog {path}: {str(exc).splitlines()[0]}") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        except duckdb.ConnectionException as exc:  # this process holds the file open with another configuration
            raise TaskregError(f"cannot open catalog {path}: {str(exc).splitlines()[0]}") from None
        con.execute("SET enable_progress_bar = false")  # scans of 100k+ vectors would draw one in `taskreg check`
        return con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing block: commit on success, roll back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


# --------------------------------------------------------------------------- migrations

def fold_wal(path: Path) -> None:
    """Fold the write-ahead log left beside a copied catalog file into it (DuckDB's CHECKPOINT)."""
    con = duckdb.connect(str(path))
    try:
        con.execute("CHECKPOINT")
    finally:
        con.close()

def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The catalog's schema version; 0 for an empty database."""
    exists = fetch_one(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'")[0]
    if not exists:
        return 0
    return int(fetch_one(con, "SELECT max(version) FROM schema_version")[0] or 0)


def migrate(con: duckdb.DuckDBPyConnection, *, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply the missing migrations up to ``target`` in one transaction; return the versions applied."""
    current = schema_version(con)
    if current > SCHEMA_VERSION:
        raise TaskregError(
            f"catalog schema version {current} is newer than this taskreg ({SCHEMA_VERSION}); upgrade taskreg"
        )
    applied: list[int] = []
    if current >= target:
        return applied
    with transaction(con):
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
        )
        for version in range(current + 1, target + 1):
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO schema_version(version) VALUES (?)", [version])
            applied.append(version)
    return applied


def registry_id(con: duckdb.DuckDBPyConnection) -> str | None:
    """The registry's identity recorded in the catalog; None for a catalog made before identities existed."""
    if schema_version(con) < 3:
        return None
    row = con.execute("SELECT value FROM registry_info WHERE key = 'registry_id'").fetchone()
    return str(row[0]) if row else None


def set_registry_id(con: duckdb.DuckDBPyConnection, value: str) -> None:
    con.execute("INSERT INTO registry_info VALUES ('registry_id', ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                [value, value])


def tracking_uri(con: duckdb.DuckDBPyConnection) -> str | None:
    """The MLflow tracking server the registry's runs, weights and models live on; None: the local ``mlflow.db``."""
    if schema_version(con) < 3:
        return None
    row = con.execute("SELECT value FROM registry_info WHERE key = 'tracking_uri'").fetchone()
    return str(row[0]) if row else None


def set_tracking_uri(con: duckdb.DuckDBPyConnection, value: str) -> None:
    con.execute("INSERT INTO registry_info VALUES ('tracking_uri', ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                [value, value])



def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row count of every table (for `taskreg status` and tests)."""
    return {t: int(fetch_one(con, f"SELECT count(*) FROM {t}")[0]) for t in TABLES}
