"""The SQL on MLflow's own sqlite schema; used only by registry/tracking.py.

Every other module reaches MLflow through :mod:`taskreg.registry.tracking`, which calls these functions for the
paths where MLflow's client is too slow or cannot help: the whole-store reads of ``check`` (10,000 runs in well
under a second, where the ORM spends ~1 ms a run), the identity and counts read before a catalog exists (no MLflow
import, nothing written), the artifact-location rewrite after a registry moved, and the online copy of a backup.

Plain functions over the path of ``mlflow.db``; each opens and closes its own sqlite connection. The readers open
the file read-only and answer None when it cannot answer (no such file, not an MLflow store, another schema), so
tracking falls back to the MLflow client. The tables involved (experiments, experiment_tags, runs, tags,
registered_models, registered_model_tags, model_versions) have kept these columns since MLflow 1.x.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

TASKS_EXPERIMENT = "taskreg-tasks"  # its artifact location is <root>/artifacts/tasks, its tags the registry's identity


@dataclass(frozen=True)
class RunTags:
    """Every run of some experiments: run id -> MLflow lifecycle stage ('active' | 'deleted'), run id -> tags."""

    stages: dict[str, str]
    tags: dict[str, dict[str, str]]


@dataclass(frozen=True)
class StoreCounts:
    """Identity, run counts and registered models of a store, read in one connection."""

    registry_id: str | None  # the identity tag of the taskreg-tasks experiment
    runs: dict[tuple[str, str], int]  # (taskreg.state, taskreg.kind) -> active runs of the taskreg experiments
    models: int  # registered models


def local_path(uri: str) -> Path:
    """The local path of an artifact location or source as MLflow stores it (a ``file://`` URI or a plain path)."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path(uri)


@contextmanager
def _read_only(db: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        yield con
    finally:
        con.close()


def _read(db: Path, sql: str, params: Sequence[str] = ()) -> list[tuple[str, ...]] | None:
    """Rows of a read-only query; None when it cannot answer (no file, another schema)."""
    if not db.is_file():
        return None
    try:
        with _read_only(db) as con:
            return con.execute(sql, list(params)).fetchall()
    except sqlite3.Error:
        return None


_RUN_TAGS_SQL = (
    "SELECT r.run_uuid, r.lifecycle_stage, t.key, t.value FROM runs r "
    "JOIN experiments e ON e.experiment_id = r.experiment_id LEFT JOIN tags t ON t.run_uuid = r.run_uuid "
    "WHERE e.name IN ({})"
)


def run_tags(db: Path, experiments: Sequence[str]) -> RunTags | None:
    """Lifecycle stage and tags of every run of the experiments named ``experiments`` (deleted runs included)."""
    rows = _read(db, _RUN_TAGS_SQL.format(", ".join("?" for _ in experiments)), experiments)
    if rows is None:
        return None
    out = RunTags({}, {})
    for run_id, lifecycle, key, value in rows:
        out.stages[run_id] = lifecycle
        tags = out.tags.setdefault(run_id, {})
        if key is not None:
            tags[key] = value
    return out


_MODEL_TAGS_SQL = (
    "SELECT m.name, t.key, t.value FROM registered_models m LEFT JOIN registered_model_tags t ON t.name = m.name"
)


def registered_model_tags(db: Path) -> dict[str, dict[str, str]] | None:
    """Registered model name -> its tags."""
    rows = _read(db, _MODEL_TAGS_SQL)
    if rows is None:
        return None
    models: dict[str, dict[str, str]] = {}
    for name, key, value in rows:
        model = models.setdefault(name, {})
        if key is not None:
            model[key] = value
    return models


def model_version_runs(db: Path, name: str | None = None) -> dict[str, set[str]] | None:
    """Registered model name -> the run ids of its versions (only model ``name`` when given)."""
    sql = "SELECT name, run_id FROM model_versions" + (" WHERE name = ?" if name is not None else "")
    rows = _read(db, sql, [name] if name is not None else [])
    if rows is None:
        return None
    out: dict[str, set[str]] = {}
    for model, run_id in rows:
        out.setdefault(model, set()).update([run_id] if run_id else [])
    return out


_EXPERIMENT_IDS_SQL = (
    "SELECT e.name, t.value FROM experiments e LEFT JOIN experiment_tags t "
    "ON t.experiment_id = e.experiment_id AND t.key = ? WHERE e.name LIKE 'taskreg-%'"
)
_RUN_COUNTS_SQL = (
    "SELECT coalesce(s.value, 'committed'), coalesce(k.value, ''), count(*) FROM runs r "
    "JOIN experiments e ON e.experiment_id = r.experiment_id "
    "LEFT JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'taskreg.state' "
    "LEFT JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'taskreg.kind' "
    "WHERE e.name LIKE 'taskreg-%' AND r.lifecycle_stage = 'active' GROUP BY 1, 2"
)


def registry_id(db: Path, tag: str) -> str | None:
    """The value of experiment tag ``tag`` on the taskreg-tasks experiment; None when there is none."""
    rows = _read(db, _EXPERIMENT_IDS_SQL + " AND e.name = ?", [tag, TASKS_EXPERIMENT])
    return rows[0][1] if rows else None


def store_counts(db: Path, id_tag: str) -> StoreCounts | None:
    """The identity (experiment tag ``id_tag``), active run counts and registered models in one read-only
    connection; None when there is no such file or it is not an MLflow store."""
    if not db.is_file():
        return None
    try:
        with _read_only(db) as con:
            ids = dict(con.execute(_EXPERIMENT_IDS_SQL, [id_tag]).fetchall())
            runs = {(state, kind): int(n) for state, kind, n in con.execute(_RUN_COUNTS_SQL).fetchall()}
            models = int(con.execute("SELECT count(*) FROM registered_models").fetchone()[0])
    except sqlite3.Error:
        return None
    return StoreCounts(ids.get(TASKS_EXPERIMENT), runs, models)


def tasks_artifact_location(db: Path) -> str | None:
    """The artifact location recorded for the taskreg-tasks experiment; None without file, table or row."""
    if not db.exists():
        return None
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT artifact_location FROM experiments WHERE name = ?", [TASKS_EXPERIMENT]).fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return None if row is None else str(row[0])


_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def replace_location_prefix(db: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in every absolute artifact location the store holds (experiments, runs, model
    versions, logged models: whichever of those tables exist), in one sqlite transaction."""
    con = sqlite3.connect(db)
    try:
        with con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, column in _LOCATION_COLUMNS:
                if table in tables:
                    con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE instr({column}, ?) > 0",
                                [old, new, old])
    finally:
        con.close()


def repoint_default_experiment(db: Path, location: Path) -> None:
    """Set MLflow's ``Default`` experiment (id 0) to ``location`` when it points elsewhere (one transaction)."""
    con = sqlite3.connect(db)
    try:
        with con:
            row = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
            if row is not None and local_path(row[0]) != location:
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", [location.as_uri()])
    finally:
        con.close()


def copy_database(src: Path, dst: Path) -> None:
    """A transactionally consistent copy of the store ``src`` into a new file ``dst`` (sqlite's online backup)."""
    source = sqlite3.connect(src, timeout=60)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
