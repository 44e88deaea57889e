"""The DuckDB catalog: schema, migrations and typed queries. The source of truth for every record.

Reason: it is the one home of the SQL (issue 13); splitting it by table family (tasks, experts, taxonomy,
  maintenance) is open in issue 13.

Plain functions over a ``duckdb.DuckDBPyConnection``, in the style of DuckDB's own Python API.
Vectors are stored as ``FLOAT[]`` columns; names of tasks, experts and probes are unique.

Schema versions (each a migration applied in order, recorded in ``schema_version``):

1. probes, tasks, task_embeddings, experts, expert_task_results, model2vec, transfers,
   transfer_losses, winrates, affinity_sets, affinities, policies.
2. ``index_state`` (a generation counter per vector kind, bumped in the same transaction as any
   change to the vectors, so a persisted Faiss index can tell that it is stale) and
   ``trivial_embeddings`` (the trivial task embedding t0 per probe and estimator).
3. ``registry_info``: the registry's identity (a uuid written at ``init``, also an experiment tag in
   ``mlflow.db``), so a catalog that does not belong to the MLflow store beside it is recognised.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from taskreg.errors import TaskregError

if TYPE_CHECKING:
    from taskreg.selection.affinity_sets import AffinitySet

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
    key         VARCHAR PRIMARY KEY,       -- 'registry_id'
    value       VARCHAR NOT NULL
);
"""

MIGRATIONS: list[str] = [_MIGRATION_1, _MIGRATION_2, _MIGRATION_3]
SCHEMA_VERSION = len(MIGRATIONS)

TABLES = (
    "probes", "tasks", "task_embeddings", "experts", "expert_task_results", "model2vec",
    "transfers", "transfer_losses", "winrates", "affinity_sets", "affinities", "policies",
    "index_state", "trivial_embeddings",
)


# --------------------------------------------------------------------------- connections

def connect(path: Path | str, *, read_only: bool = False, wait: float = 30.0,
            config: Mapping[str, object] | None = None) -> duckdb.DuckDBPyConnection:
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


# --------------------------------------------------------------------------- the SQL console

# What `taskreg sql` may run, by DuckDB's own parse of the statement: queries (SELECT, and SHOW, DESCRIBE,
# SUMMARIZE, FROM-first, VALUES, which DuckDB parses as SELECT), EXPLAIN and PRAGMA (the pragmas that change
# anything are settings, which the locked configuration refuses).
CONSOLE_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA"})
# The console's DuckDB configuration: no file outside the catalog is read or written (COPY, EXPORT, ATTACH,
# read_csv/read_text/glob/..., extensions), no extension is installed or loaded, and `lock_configuration`
# (set last, see :func:`connect_console`) forbids any SET that would undo this.
CONSOLE_CONFIG: dict[str, object] = {
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
    config = {**CONSOLE_CONFIG, "temp_directory": str(spill_dir) if spill_dir is not None else ""}
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
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


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


# --------------------------------------------------------------------------- vectors

def vectors_to_numpy(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> tuple[
    np.ndarray, np.ndarray
]:
    """Run ``sql`` selecting ``(id, vector)`` and return ``ids (N,) int64`` and ``vectors (N, D) float32``.

    Uses Arrow so a million vectors come back without a Python loop.
    """
    with warnings.catch_warnings():  # DuckDB notes the one extra copy; fine for catalog-sized results
        warnings.simplefilter("ignore", UserWarning)
        table = con.execute(sql, list(params)).to_arrow_table()
    ids = table.column(0).to_numpy().astype(np.int64)
    if table.num_rows == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    col = table.column(1).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    lengths = np.diff(col.offsets.to_numpy())
    if not np.all(lengths == lengths[0]):
        raise TaskregError("catalog holds vectors of different lengths under one kind; run `taskreg check`")
    return ids, flat.reshape(len(ids), int(lengths[0]))


def vector_param(v: np.ndarray) -> list[float]:
    """A numpy vector as a DuckDB FLOAT[] parameter."""
    return np.asarray(v, dtype=np.float32).ravel().tolist()


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                *, on_conflict: str = "") -> None:
    """Bulk insert through Arrow (DuckDB's ``executemany`` goes row by row and is ~100x slower).

    ``on_conflict`` is appended verbatim, e.g. ``"ON CONFLICT DO NOTHING"``.
    """
    if not rows:
        return
    insert_columns(con, table, {c: [r[i] for r in rows] for i, c in enumerate(columns)}, on_conflict=on_conflict)


def insert_columns(con: duckdb.DuckDBPyConnection, table: str, data: Mapping[str, Sequence[object] | np.ndarray],
                   *, on_conflict: str = "") -> None:
    """Bulk insert column-wise through Arrow, without a Python loop over numpy data.

    data : column name -> values, all of one length N. A (N,) numpy array becomes an Arrow column
    without copying; a (N, D) numpy array becomes a ``FLOAT[]``/list column (one vector per row,
    e.g. 100,000 Task2Vec vectors in one call); a Python sequence is converted by ``pyarrow.array``
    (``None`` is NULL). ``on_conflict`` is appended verbatim, e.g. ``"ON CONFLICT DO NOTHING"``.
    """
    import pyarrow as pa

    lengths = {c: len(v) for c, v in data.items()}
    if len(set(lengths.values())) > 1:
        raise TaskregError(f"insert into {table}: columns of different lengths {lengths}")
    if not data or not next(iter(lengths.values())):
        return
    arrays = {}
    for col, values in data.items():
        if isinstance(values, np.ndarray) and values.ndim == 2:
            n, dim = values.shape
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            offsets = np.arange(n + 1, dtype=np.int64) * dim
            if n * dim < 2**31:
                arrays[col] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
            else:
                arrays[col] = pa.LargeListArray.from_arrays(pa.array(offsets), flat)
        elif isinstance(values, np.ndarray):
            arrays[col] = pa.array(values)
        else:
            arrays[col] = pa.array(list(values))
    con.execute("SELECT 1").fetchall()  # finish a result the caller left half-read: DuckDB 2 refuses register()
    con.register("_taskreg_rows", pa.table(arrays))
    try:
        cols = ", ".join(f'"{c}"' for c in data)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _taskreg_rows {on_conflict}")
    finally:
        con.unregister("_taskreg_rows")


def bump_generation(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Increment the generation of one vector kind (call inside the transaction that changes it)."""
    con.execute(
        "INSERT INTO index_state VALUES (?, 1) ON CONFLICT (kind) DO UPDATE SET generation = generation + 1",
        [kind],
    )
    return int(con.execute("SELECT generation FROM index_state WHERE kind = ?", [kind]).fetchone()[0])


def generation(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    row = con.execute("SELECT generation FROM index_state WHERE kind = ?", [kind]).fetchone()
    return int(row[0]) if row else 0



def kinds(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Every vector kind the catalog has, with its generation."""
    return {k: int(g) for k, g in con.execute("SELECT kind, generation FROM index_state").fetchall()}


_KIND_SQL = {
    "task": "SELECT task_id, vector FROM task_embeddings WHERE probe = ? AND method = ? ORDER BY task_id",
    "model2vec": "SELECT expert_id, vector FROM model2vec WHERE probe = ? AND method = ? ORDER BY expert_id",
}


def kind_vectors(con: duckdb.DuckDBPyConnection, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids (N,) int64 and vectors (N, D) float32 of one vector kind (``task/<probe>/<method>`` or
    ``model2vec/<probe>/<method>``), in id order."""
    family, probe, method = kind.split("/")
    return vectors_to_numpy(con, _KIND_SQL[family], (probe, method))


def kind_count(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Number of vectors of one vector kind."""
    family, probe, method = kind.split("/")
    table = "task_embeddings" if family == "task" else "model2vec"
    row = con.execute(f"SELECT count(*) FROM {table} WHERE probe = ? AND method = ?", [probe, method]).fetchone()
    return int(row[0])


def referenced_run_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every MLflow run id a catalog row holds (task embeddings, experts, probes, transfers)."""
    return {r[0] for r in con.execute(
        "SELECT run_id FROM task_embeddings WHERE run_id IS NOT NULL UNION ALL SELECT run_id FROM experts "
        "WHERE run_id IS NOT NULL UNION ALL SELECT run_id FROM probes WHERE run_id IS NOT NULL "
        "UNION ALL SELECT run_id FROM transfers WHERE run_id IS NOT NULL").fetchall()}


def expert_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM experts").fetchall()]


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
    return {what: int(con.execute(sql).fetchone()[0]) for what, sql in _DANGLING.items()}


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


# --------------------------------------------------------------------------- records

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


@dataclass(frozen=True)
class TaskRecord:
    id: int
    name: str
    source: str
    domain: str
    n_samples: int
    n_classes: int
    fingerprint: str
    created_at: str


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


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object], cls: Callable) -> list:
    return [cls(*row) for row in con.execute(sql, list(params)).fetchall()]


_PROBE_COLS = "name, arch, input_size, in_chans, mean, std, sha256, weights, origin, run_id"
_TASK_COLS = "id, name, source, domain, n_samples, n_classes, fingerprint, CAST(created_at AS VARCHAR)"
_EXPERT_COLS = (
    "id, name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, model_version, "
    "CAST(created_at AS VARCHAR)"
)


def _probe(*row: object) -> ProbeRecord:
    r = list(row)
    r[4], r[5] = tuple(r[4]), tuple(r[5])
    return ProbeRecord(*r)


def list_probes(con: duckdb.DuckDBPyConnection) -> list[ProbeRecord]:
    return _rows(con, f"SELECT {_PROBE_COLS} FROM probes ORDER BY created_at, name", (), _probe)


def get_probe(con: duckdb.DuckDBPyConnection, name: str) -> ProbeRecord | None:
    rows = _rows(con, f"SELECT {_PROBE_COLS} FROM probes WHERE name = ?", (name,), _probe)
    return rows[0] if rows else None


def insert_probe(con: duckdb.DuckDBPyConnection, p: ProbeRecord) -> None:
    con.execute(
        f"INSERT INTO probes ({_PROBE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [p.name, p.arch, p.input_size, p.in_chans, list(p.mean), list(p.std), p.sha256, p.weights,
         p.origin, p.run_id],
    )


def list_tasks(con: duckdb.DuckDBPyConnection, *, limit: int | None = None) -> list[TaskRecord]:
    sql = f"SELECT {_TASK_COLS} FROM tasks ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return _rows(con, sql, (), TaskRecord)


def get_task(con: duckdb.DuckDBPyConnection, name: str) -> TaskRecord | None:
    rows = _rows(con, f"SELECT {_TASK_COLS} FROM tasks WHERE name = ?", (name,), TaskRecord)
    return rows[0] if rows else None


def insert_task(
    con: duckdb.DuckDBPyConnection, *, name: str, source: str, domain: str, n_samples: int,
    n_classes: int, fingerprint: str,
) -> int:
    row = con.execute(
        "INSERT INTO tasks (name, source, domain, n_samples, n_classes, fingerprint) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        [name, source, domain, n_samples, n_classes, fingerprint],
    ).fetchone()
    return int(row[0])


def list_experts(con: duckdb.DuckDBPyConnection) -> list[ExpertRecord]:
    return _rows(con, f"SELECT {_EXPERT_COLS} FROM experts ORDER BY id", (), ExpertRecord)


def get_expert(con: duckdb.DuckDBPyConnection, name: str) -> ExpertRecord | None:
    rows = _rows(con, f"SELECT {_EXPERT_COLS} FROM experts WHERE name = ?", (name,), ExpertRecord)
    return rows[0] if rows else None


def insert_expert(
    con: duckdb.DuckDBPyConnection, *, name: str, arch: str, sha256: str, weights: str,
    trained_on: str | None, origin: str, n_train: int | None = None, n_classes: int | None = None,
    run_id: str | None = None, model_version: str | None = None,
) -> int:
    row = con.execute(
        "INSERT INTO experts (name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, "
        "model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [name, arch, sha256, weights, trained_on, origin, n_train, n_classes, run_id, model_version],
    ).fetchone()
    return int(row[0])


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row count of every table (for `taskreg status` and tests)."""
    return {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}


# --------------------------------------------------------------------------- task embeddings and trivial embeddings

def insert_embedding(con: duckdb.DuckDBPyConnection, task_id: int, probe: str, method: str, vector: np.ndarray,
                     n_samples: int, seed: int, seconds: float | None, run_id: str) -> None:
    con.execute(
        "INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed, seconds, run_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [task_id, probe, method, vector_param(vector), float(np.linalg.norm(vector)), int(n_samples),
         int(seed), seconds, run_id],
    )


def has_embedding(con: duckdb.DuckDBPyConnection, task_id: int, probe: str, method: str) -> bool:
    return con.execute("SELECT 1 FROM task_embeddings WHERE task_id = ? AND probe = ? AND method = ?",
                       [task_id, probe, method]).fetchone() is not None


def insert_trivial_embedding(con: duckdb.DuckDBPyConnection, probe: str, method: str, vector: np.ndarray, *,
                             if_absent: bool = False) -> None:
    """The trivial task embedding t0 of a probe and estimator (``if_absent``: keep one already stored)."""
    con.execute("INSERT INTO trivial_embeddings VALUES (?, ?, ?)" + (" ON CONFLICT DO NOTHING" if if_absent else ""),
                [probe, method, vector_param(vector)])


def trivial_embedding(con: duckdb.DuckDBPyConnection, probe: str, method: str) -> np.ndarray | None:
    row = con.execute("SELECT vector FROM trivial_embeddings WHERE probe = ? AND method = ?",
                      [probe, method]).fetchone()
    return None if row is None else np.asarray(row[0], dtype=np.float32)


_CREATED_AT_KEYS = {"probes": "name", "experts": "id", "tasks": "id"}


def set_created_at(con: duckdb.DuckDBPyConnection, table: str, key: str, value: object, millis: int) -> None:
    """Set a record's ``created_at`` to ``millis`` (ms since the epoch), e.g. its MLflow run's start time."""
    if _CREATED_AT_KEYS.get(table) != key:
        raise ValueError(f"set_created_at: no such record key {table}.{key}")
    con.execute(f"UPDATE {table} SET created_at = make_timestamp(?::BIGINT * 1000) WHERE {key} = ?",
                [millis, value])


# --------------------------------------------------------------------------- affinity sets

def insert_affinity_set(con: duckdb.DuckDBPyConnection, aff: AffinitySet, origin: str) -> None:
    con.execute("INSERT INTO affinity_sets (name, origin, source_only) VALUES (?, ?, ?)",
                [aff.name, origin, list(aff.source_only)])
    insert_rows(con, "affinities", ("name", "sources", "target", "order", "value"),
                [(aff.name, list(t.sources), t.target, t.order, t.value) for t in aff.transfers])


def delete_affinity_set(con: duckdb.DuckDBPyConnection, name: str) -> None:
    con.execute("DELETE FROM affinities WHERE name = ?", [name])
    con.execute("DELETE FROM affinity_sets WHERE name = ?", [name])


# --------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class EmbeddingInfo:
    """One task embedding without its vector (``task show``)."""

    probe: str
    method: str
    dim: int
    norm: float
    n_samples: int
    seed: int
    seconds: float | None
    run_id: str | None


def count_tasks(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM tasks").fetchone()[0])


def task_exists(con: duckdb.DuckDBPyConnection, task_id: int) -> bool:
    return con.execute("SELECT 1 FROM tasks WHERE id = ?", [task_id]).fetchone() is not None


def task_embedding_infos(con: duckdb.DuckDBPyConnection, task_id: int) -> list[EmbeddingInfo]:
    return _rows(con, "SELECT probe, method, len(vector), norm, n_samples, seed, seconds, run_id "
                 "FROM task_embeddings WHERE task_id = ? ORDER BY probe, method", [task_id], EmbeddingInfo)


def task_results(con: duckdb.DuckDBPyConnection, task_id: int) -> list[tuple[str, float]]:
    """(expert name, test error) of every expert measured on a task, best first."""
    return con.execute(
        "SELECT e.name, r.test_error FROM expert_task_results r JOIN experts e ON e.id = r.expert_id "
        "WHERE r.task_id = ? ORDER BY r.test_error", [task_id]
    ).fetchall()


def task_run_ids(con: duckdb.DuckDBPyConnection, task_id: int) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT DISTINCT run_id FROM task_embeddings WHERE task_id = ? AND run_id IS NOT NULL", [task_id]
    ).fetchall()]


def task_vector_kinds(con: duckdb.DuckDBPyConnection, task_id: int) -> list[str]:
    """The vector kinds (``task/<probe>/<method>``) a task has a vector in."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT 'task/' || probe || '/' || method FROM task_embeddings WHERE task_id = ?", [task_id],
    ).fetchall()]


def delete_task(con: duckdb.DuckDBPyConnection, task_id: int) -> None:
    """A task's row, embeddings and expert results."""
    con.execute("DELETE FROM task_embeddings WHERE task_id = ?", [task_id])
    con.execute("DELETE FROM expert_task_results WHERE task_id = ?", [task_id])
    con.execute("DELETE FROM tasks WHERE id = ?", [task_id])


def task_vectors(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                 names: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """(task name, vector) of the tasks embedded with ``probe``/``method`` (all, or only ``names``), by id."""
    sql = ("SELECT t.name, e.vector FROM task_embeddings e JOIN tasks t ON t.id = e.task_id "
           "WHERE e.probe = ? AND e.method = ?")
    params: list[object] = [probe, method]
    if names is not None:  # fetch only the rows asked for, not every vector of the probe
        sql += " AND list_contains(?, t.name)"
        params.append(list(names))
    rows = con.execute(sql + " ORDER BY t.id", params).fetchall()
    return [(n, np.asarray(v, dtype=np.float32)) for n, v in rows]


def task_vectors_by_id(con: duckdb.DuckDBPyConnection, probe: str, method: str,
                       ids: Sequence[int]) -> list[tuple[int, str, str, np.ndarray]]:
    """(task id, name, domain, vector) of the tasks ``ids`` embedded with ``probe``/``method``."""
    rows = con.execute(
        "SELECT t.id, t.name, t.domain, e.vector FROM task_embeddings e JOIN tasks t ON t.id = e.task_id "
        "WHERE e.probe = ? AND e.method = ? AND t.id IN (SELECT unnest(?::INTEGER[]))",
        [probe, method, list(ids)],
    ).fetchall()
    return [(int(i), n, d, np.asarray(v, dtype=np.float32)) for i, n, d, v in rows]
