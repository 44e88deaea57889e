"""The registry root: paths, locking, catalog connections, indexes and the consistency check.

``RegistryCore`` is the base of the public :class:`taskreg.registry.Registry` facade; the
task/expert/taxonomy operations live in sibling modules as mixins so each file stays readable.

Concurrency: DuckDB allows one read-write process per file, so writes take a registry-level file
lock (bounded wait, clear message on timeout) and hold the catalog connection only for the short
commit; long computations happen before the lock is taken. Readers open the catalog read-only and
retry briefly while a writer commits.

Crash safety: the catalog is the source of truth and every command commits it in one DuckDB
transaction. What a command killed at any point can leave behind is only ever a *leftover*, never
an inconsistency: an MLflow run still tagged pending (killed before or just after the commit), the
runs of a removed record (killed after an ``rm`` committed; ``rm`` tags them ``removing`` before its
commit), an expert's registered model without its catalog row, a stale index (rebuilt on open) or an
index temporary file. ``check`` lists them as notes; ``check --fix`` clears them under the lock,
touching only what belongs to dead processes.

A lost catalog is not a leftover. A committed record run that no catalog row references and that no
``rm`` marked, a registered model holding such a run, a catalog whose registry id differs from the one
in ``mlflow.db``, or a missing catalog beside an MLflow store that holds the registry's runs: the
registry is damaged. ``init`` refuses to start a new registry over it, ``open`` refuses it (naming the
recovery: ``taskreg restore BACKUP --force``, or ``taskreg recover`` to rebuild the records MLflow
holds), ``check`` reports it as a problem, and ``check --fix`` never deletes any of it.

Backup and restore: :meth:`RegistryCore.backup` copies the catalog, ``mlflow.db`` (sqlite's backup
API) and the indexes while holding the registry lock, then the artifacts (written before the catalog
rows that reference them and never modified afterwards, so the snapshot's records all find their
files); the cache is skipped. Both write into a hidden sibling directory and rename it into place,
so an interrupted backup or restore never leaves a half-written registry under the final name.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import sqlite3
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.index import IndexStore, build_index, choose_index_type, kind_name, normalise
from taskreg.registry.tracking import (
    EXPERIMENTS,
    RECORD_RUN_KINDS,
    StoreSummary,
    Tracker,
    process_alive,
    process_token,
    recorded_root,
    relocate,
    store_summary,
    stored_registry_id,
)

if TYPE_CHECKING:
    import faiss

DEFAULT_ROOT = ".taskreg"
DEFAULT_LOCK_TIMEOUT = 120.0
BACKUP_MANIFEST = "backup.json"
RECOVERY = ("restore a backup (`taskreg restore BACKUP --force`) or rebuild the probes, tasks and experts that "
            "MLflow holds (`taskreg recover`)")
# Every catalog column holding an MLflow run id (the same tables as the run query of `check`).
_RUN_IDS_SQL = (
    "SELECT run_id FROM task_embeddings WHERE run_id IS NOT NULL UNION ALL SELECT run_id FROM experts "
    "WHERE run_id IS NOT NULL UNION ALL SELECT run_id FROM probes WHERE run_id IS NOT NULL "
    "UNION ALL SELECT run_id FROM transfers WHERE run_id IS NOT NULL"
)


def default_root() -> Path:
    return Path(os.environ.get("TASKREG_HOME", DEFAULT_ROOT))


def lock_timeout() -> float:
    """Seconds a command waits for the registry lock: ``TASKREG_LOCK_TIMEOUT`` (default 120)."""
    text = os.environ.get("TASKREG_LOCK_TIMEOUT", "")
    if not text.strip():
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TaskregError(f"TASKREG_LOCK_TIMEOUT must be a number of seconds >= 0, got {text!r}")
    return value


@dataclass
class CheckReport:
    """Result of :meth:`RegistryCore.check`: problems make the registry inconsistent, notes do not."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """sha256 of files keyed by their stat (size, mtime, ctime, inode), kept in one JSON file.

    ``check`` compares every weight file with the sha256 recorded in the catalog. Reading 10,000
    expert files (11 GB for cifar_resnet20) takes minutes on a cold disk; with this cache a file is
    read again only when its stat changed. Any write to a file changes its ctime (which, unlike the
    mtime, user space cannot set back), a replaced file has a new inode, so a modified file is always
    rehashed. What the cache cannot see is corruption below the file system (bit rot): ``check(deep=True)``
    rehashes everything. A file changed less than ``RACY_SECONDS`` before it was hashed is not cached
    (a second change within the timestamp granularity would keep the same stat). The cache is an
    optimisation only: unreadable or unwritable, it is ignored.
    """

    RACY_SECONDS = 2.0

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, ValueError):
            pass

    def sha256(self, path: Path, *, deep: bool = False) -> str:
        """sha256 of ``path`` (must exist), from the cache when its stat is unchanged and not ``deep``."""
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        name = str(path)
        hit = self.entries.get(name)
        if not deep and isinstance(hit, list) and len(hit) == 5 and hit[:4] == key:
            return str(hit[4])
        sha = file_sha256(path)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self.RACY_SECONDS * 1e9:
            self.entries[name] = [*key, sha]
            self.dirty = True
        return sha

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": 1, "files": self.entries}))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass


_RUN_TAGS_SQL = (
    "SELECT r.run_uuid, r.lifecycle_stage, t.key, t.value FROM runs r "
    "JOIN experiments e ON e.experiment_id = r.experiment_id LEFT JOIN tags t ON t.run_uuid = r.run_uuid "
    "WHERE e.name IN ({})"
)
_MODEL_TAGS_SQL = (
    "SELECT m.name, t.key, t.value FROM registered_models m LEFT JOIN registered_model_tags t ON t.name = m.name"
)


def _read_mlflow_db(db: Path, sql: str, params: list[str]) -> list[tuple] | None:
    """Rows of a read-only query on MLflow's sqlite store; None when it cannot answer (no file, another schema).

    ``check`` reads run states and registered models this way: the tables involved (runs, tags,
    experiments, registered_models, registered_model_tags) have kept these columns since MLflow 1.x,
    and the callers fall back to the MLflow client when a query fails.
    """
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None


class RegistryCore:
    """A registry on disk (see ARCHITECTURE.md, "The registry on disk")."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.catalog_path = self.root / "catalog.duckdb"
        self.tracker = Tracker(self.root)
        self.indexes = IndexStore(self.root / "index")
        self.cache_dir = self.root / "cache"
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock_fd: int | None = None
        self._index_cache: dict[str, tuple[int, faiss.Index]] = {}
        self.damage: str | None = None  # set by ``open(damaged_ok=True)`` on a damaged registry

    # ------------------------------------------------------------------ open / init
    @classmethod
    def init(cls, root: Path | str | None = None) -> RegistryCore:
        """Create (or upgrade) a registry at ``root``; idempotent on a healthy registry.

        Refuses, changing nothing, a directory whose ``mlflow.db`` holds a registry but whose catalog is
        missing or empty, and a registry whose catalog lost records that MLflow still holds: that is a
        damaged registry, not a new one (see the module docstring).
        """
        reg = cls(Path(root) if root is not None else default_root())
        if reg.root.exists() and not reg.root.is_dir():
            raise TaskregError(f"{reg.root} exists and is not a directory")
        reg.require_write_access("init")
        if reg._catalog_state()[0] > 0:
            reg = cls.open(reg.root)
            lost = reg.unaccounted()
            if lost:
                raise TaskregError(f"the catalog lost records: {lost.describe()}: a damaged registry, not a new one; "
                                   f"{RECOVERY}")
            reg.tracker.init()
            return reg
        store = store_summary(reg.root / "mlflow.db")
        if store is not None and store.holds_registry():
            raise TaskregError(_missing_catalog(store))
        for sub in ("artifacts", "index", "cache"):
            (reg.root / sub).mkdir(parents=True, exist_ok=True)
        registry_id = uuid.uuid4().hex
        with reg.write(transactional=False) as con:
            catalog.migrate(con)
            catalog.set_registry_id(con, registry_id)
        reg.tracker.init(registry_id)  # after the catalog: an MLflow identity always had a catalog first
        return reg

    @classmethod
    def open(cls, root: Path | str | None = None, *, repair_indexes: bool = True,
             write: str | None = None, damaged_ok: bool = False) -> RegistryCore:
        """Open an existing registry: migrate an older catalog, rebuild stale or missing indexes.

        ``write`` names what the caller is about to write (e.g. "task add"): on a registry this user cannot
        write it is refused here, before any work. Without it the registry may be read-only (a shared team
        registry): then nothing is written on open (no MLflow relocation, no migration, no identity, no index
        repair; stale indexes are rebuilt in memory when a query needs them).

        A damaged registry (catalog missing beside an MLflow store holding the registry, or a catalog of
        another registry) is refused on one line naming the recovery; with ``damaged_ok`` (for ``check``)
        it is opened untouched and :attr:`damage` says what is wrong.
        """
        reg = cls(Path(root) if root is not None else default_root())
        version, mine = reg._catalog_state()
        theirs = stored_registry_id(reg.root / "mlflow.db")
        if version == 0:
            store = store_summary(reg.root / "mlflow.db")
            if store is not None and store.holds_registry():
                reg.damage = _missing_catalog(store)
            elif not reg.catalog_path.exists():
                raise TaskregError(f"no registry at {reg.root} (run `taskreg init` or pass --registry DIR)")
        elif version > catalog.SCHEMA_VERSION:
            raise TaskregError(
                f"catalog schema version {version} is newer than this taskreg ({catalog.SCHEMA_VERSION})"
            )
        elif mine is not None and theirs is not None and mine != theirs:
            reg.damage = (f"catalog.duckdb belongs to registry {mine} but mlflow.db to registry {theirs}: a catalog "
                          f"was created over another registry's MLflow store; {RECOVERY}")
        if write is not None:
            reg.require_write_access(write)
        if reg.damage is not None:
            if damaged_ok:
                return reg
            raise TaskregError(reg.damage)
        read_only = reg.read_only
        if version < catalog.SCHEMA_VERSION and read_only:
            raise TaskregError(f"registry {reg.root} is read-only for this user and its catalog (schema version "
                               f"{version}) needs an upgrade to {catalog.SCHEMA_VERSION}: its owner must open it "
                               "once with this taskreg")
        if read_only:
            return reg
        recorded = recorded_root(reg.root / "mlflow.db")
        if recorded is not None and recorded != reg.root:
            with reg.lock():  # the registry was copied or restored elsewhere: point MLflow at our artifacts
                relocate(reg.root / "mlflow.db", recorded, reg.root)
        if version < catalog.SCHEMA_VERSION:
            with reg.write(transactional=False) as con:
                catalog.migrate(con)
        if mine is None or theirs is None:
            reg._adopt_identity()
        if repair_indexes:
            reg.repair_indexes()
        return reg

    def _catalog_state(self) -> tuple[int, str | None]:
        """(schema version, registry id) of the catalog; (0, None) when the file is missing or holds no schema."""
        if not self.catalog_path.exists():
            return 0, None
        with self.read() as con:
            return catalog.schema_version(con), catalog.registry_id(con)

    def _adopt_identity(self) -> None:
        """Give the catalog and MLflow one registry id where either lacks it (a registry made before ids
        existed, or an ``init`` killed between the two): the catalog takes MLflow's, else a new one."""
        theirs = stored_registry_id(self.root / "mlflow.db")
        with self.write() as con:
            mine = catalog.registry_id(con)
            if mine is None:
                mine = theirs or uuid.uuid4().hex
                catalog.set_registry_id(con, mine)
        if theirs is None:
            self.tracker.set_registry_id(mine)

    # ------------------------------------------------------------------ write access
    @property
    def read_only(self) -> bool:
        """Whether this user cannot write the registry: its directory, catalog, MLflow database, artifacts or
        indexes (a shared registry owned by someone else, a read-only mount)."""
        paths = (self.root, self.catalog_path, self.root / "mlflow.db", self.root / "artifacts", self.indexes.folder)
        return any(p.exists() and not os.access(p, os.W_OK) for p in paths)

    def require_write_access(self, what: str) -> None:
        """Refuse, in one line, ``what`` (a command) on a registry this user cannot write."""
        if self.read_only:
            raise TaskregError(f"registry {self.root} is read-only for this user: {what} needs write access")

    # ------------------------------------------------------------------ locking and connections
    @contextmanager
    def lock(self, timeout: float | None = None, *, write: bool = True) -> Iterator[None]:
        """The registry-wide write lock (re-entrant within one Registry object).

        ``write=False``: held only to read a consistent state (``backup``), which also works on a registry this
        user cannot write; the lock file is then opened read-only (flock needs no write access), and when
        there is none, no writer ever locked this registry and there is nothing to wait for.
        """
        if self._lock_fd is not None:
            yield
            return
        if write:
            self.require_write_access("this command")
        if self.read_only:
            try:
                fd = os.open(self.root / ".lock", os.O_RDONLY)
            except FileNotFoundError:
                yield
                return
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        wait = lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TaskregError(
                        f"registry {self.root} is busy: another taskreg process held its lock for over "
                        f"{wait:.0f} s (set TASKREG_LOCK_TIMEOUT to wait longer)"
                    ) from None
                time.sleep(0.05)
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only catalog connection (or the current write connection, when inside one)."""
        if self._con is not None:
            yield self._con
            return
        con = catalog.connect(self.catalog_path, read_only=True)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def write(self, *, transactional: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """Lock the registry and open the catalog read-write; one transaction unless told otherwise."""
        if self._con is not None:
            yield self._con
            return
        with self.lock():
            con = catalog.connect(self.catalog_path)
            self._con = con
            try:
                if transactional:
                    with catalog.transaction(con):
                        yield con
                else:
                    yield con
            finally:
                self._con = None
                con.close()

    # ------------------------------------------------------------------ SQL
    def sql(self, query: str) -> tuple[list[str], list[tuple]]:
        """Run one query against the catalog and nothing else; returns (column names, rows).

        The connection is read-only and locked down by DuckDB itself (:func:`catalog.connect_console`): no
        file outside the catalog is read or written, nothing is attached, no extension is installed or
        loaded, no setting changed. Large sorts spill into a private temporary directory, removed after.
        """
        if self._con is not None:
            raise TaskregError("SQL refused: the console cannot run inside a write transaction")
        try:
            scratch: Path | None = Path(tempfile.mkdtemp(prefix="taskreg-sql-"))
        except OSError:
            scratch = None  # no writable temporary directory: the query runs in memory only
        try:
            con = catalog.connect_console(self.catalog_path, scratch / "spill" if scratch is not None else None)
            try:
                return catalog.console_query(con, query)
            finally:
                con.close()
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ indexes
    _KIND_SQL = {
        "task": "SELECT task_id, vector FROM task_embeddings WHERE probe = ? AND method = ? ORDER BY task_id",
        "model2vec": "SELECT expert_id, vector FROM model2vec WHERE probe = ? AND method = ? ORDER BY expert_id",
    }

    def _kind_vectors(self, con: duckdb.DuckDBPyConnection, kind: str) -> tuple[np.ndarray, np.ndarray]:
        family, probe, method = kind.split("/")
        return catalog.vectors_to_numpy(con, self._KIND_SQL[family], (probe, method))

    def _kind_count(self, con: duckdb.DuckDBPyConnection, kind: str) -> int:
        family, probe, method = kind.split("/")
        table = "task_embeddings" if family == "task" else "model2vec"
        sql = f"SELECT count(*) FROM {table} WHERE probe = ? AND method = ?"
        return int(con.execute(sql, [probe, method]).fetchone()[0])

    def catalog_kinds(self) -> dict[str, int]:
        """Every vector kind the catalog has, with its generation."""
        with self.read() as con:
            return {k: int(g) for k, g in con.execute("SELECT kind, generation FROM index_state").fetchall()}

    def rebuild_index(self, kind: str) -> int:
        """Recreate one index from DuckDB; returns the number of vectors."""
        with self.read() as con:
            gen = catalog.generation(con, kind)
            ids, vecs = self._kind_vectors(con, kind)
        read_only = self.read_only  # this user cannot save it: the rebuilt index serves this process only
        if len(ids) == 0:
            if not read_only:
                self.indexes.remove(kind)
            self._index_cache.pop(kind, None)
            return 0
        index = build_index(ids, vecs)
        with self.read() as con:
            current = catalog.generation(con, kind)
        if current == gen and not read_only:  # else a newer commit landed meanwhile and its rebuild saves that
            self.indexes.save(kind, index, gen)
        self._index_cache[kind] = (gen, index)
        return len(ids)

    def add_to_index(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> int:
        """After a commit that added exactly ``ids`` (N,) / ``vectors`` (N, D) to ``kind`` and bumped its
        generation once: append them to the index on disk instead of rebuilding it from the catalog.

        Falls back to :meth:`rebuild_index` whenever the index on disk is not exactly the state before
        that commit (another writer came between, a file is stale or damaged) or the new size calls for
        the other index type. Returns the number of vectors in the index.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found = self._index_before_commit(kind, len(ids), int(vectors.shape[1]))
        if found is None:
            return self.rebuild_index(kind)
        gen, index = found
        if len(ids):
            index.add_with_ids(normalise(np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)), ids)
        return self._save_updated(kind, gen, index)

    def remove_from_index(self, kind: str, ids: np.ndarray) -> int:
        """After a commit that removed exactly ``ids`` from ``kind`` and bumped its generation once: drop
        them from the index on disk (same fallback to a rebuild as :meth:`add_to_index`)."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found = self._index_before_commit(kind, -len(ids), None)
        if found is None:
            return self.rebuild_index(kind)
        gen, index = found
        if index.remove_ids(faiss.IDSelectorBatch(ids)) != len(ids):
            return self.rebuild_index(kind)
        return self._save_updated(kind, gen, index)

    def _index_before_commit(self, kind: str, change: int, dim: int | None) -> tuple[int, faiss.Index] | None:
        """(catalog generation, index loaded for modification) when the index on disk is exactly the state
        one commit before (generation - 1, ``change`` fewer vectors, dimension ``dim``, None: any) and the
        index type still fits; else None."""
        with self.read() as con:
            gen = catalog.generation(con, kind)
            count = self._kind_count(con, kind)
        before = count - change
        m = self.indexes.manifest(kind)
        if count <= 0 or before <= 0 or m is None or (dim is not None and m.dim != dim):
            return None
        dim = m.dim
        wanted = {"flat": "IndexFlatIP", "ivf": "IndexIVFFlat"}[choose_index_type(count, dim)]
        if m.index_type != wanted or self.indexes.problem(kind, gen - 1, before) is not None:
            return None
        index = self.indexes.load(kind, mmap=False)
        if index is None or index.ntotal != before:
            return None
        return gen, index

    def _save_updated(self, kind: str, gen: int, index: faiss.Index) -> int:
        with self.read() as con:
            current = catalog.generation(con, kind)
        if current == gen:  # else a newer commit landed meanwhile and that writer saves the newer index
            self.indexes.save(kind, index, gen)
        self._index_cache[kind] = (gen, index)
        return int(index.ntotal)

    def rebuild_indexes(self) -> dict[str, int]:
        """Recreate every index from the catalog (``taskreg index rebuild``)."""
        kinds = self.catalog_kinds()
        for stale in set(self.indexes.kinds_on_disk()) - set(kinds):
            self.indexes.remove(stale)
        return {kind: self.rebuild_index(kind) for kind in sorted(kinds)}

    def index_problems(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        on_disk = set(self.indexes.kinds_on_disk())
        with self.read() as con:
            kinds = {k: int(g) for k, g in con.execute("SELECT kind, generation FROM index_state").fetchall()}
            for kind, gen in kinds.items():
                count = self._kind_count(con, kind)
                if count == 0:
                    if kind in on_disk:  # its last vectors were removed by a command killed before the rebuild
                        problems[kind] = "index without catalog vectors"
                    continue
                why = self.indexes.problem(kind, gen, count)
                if why:
                    problems[kind] = why
        for orphan in on_disk - set(kinds):
            problems[orphan] = "index without catalog vectors"
        return problems

    def repair_indexes(self) -> dict[str, str]:
        """Rebuild every index that is missing, stale or unreadable; returns what was repaired and why."""
        problems = self.index_problems()
        for kind in problems:
            if kind in self.catalog_kinds():
                self.rebuild_index(kind)
            else:
                self.indexes.remove(kind)
        return problems

    def index(self, kind: str) -> faiss.Index | None:
        """The Faiss index of one vector kind, loaded from disk or rebuilt when stale; None if empty."""
        with self.read() as con:
            gen = catalog.generation(con, kind)
            count = self._kind_count(con, kind)
        if count == 0:
            return None
        cached = self._index_cache.get(kind)
        if cached and cached[0] == gen and cached[1].ntotal == count:
            return cached[1]
        if self.indexes.problem(kind, gen, count) is None:
            index = self.indexes.load(kind)
            if index is not None and index.ntotal == count:
                self._index_cache[kind] = (gen, index)
                return index
        self.rebuild_index(kind)
        return self._index_cache[kind][1]

    @staticmethod
    def kind(family: str, probe: str, method: str) -> str:
        return kind_name(family, probe, method)

    # ------------------------------------------------------------------ consistency
    def check(self, *, fix: bool = False, deep: bool = False) -> CheckReport:
        """Catalog ↔ MLflow ↔ index consistency. ``fix`` removes harmless leftovers (orphan runs).

        Scales with the registry without per-row round trips: the state of every MLflow run comes from
        one paged search, weight files are rehashed only when their stat changed (:class:`HashCache`;
        ``deep`` rehashes every file).
        """
        report = CheckReport()
        if self.damage is not None:  # opened with damaged_ok: nothing to compare, and nothing is touched
            report.problems.append(self.damage)
            return report
        with self.read() as con:
            report.counts = catalog.counts(con)
            version = catalog.schema_version(con)
            if version != catalog.SCHEMA_VERSION:
                report.problems.append(f"schema version {version}, expected {catalog.SCHEMA_VERSION}")
            dangling = {
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
            for what, sql in dangling.items():
                n = int(con.execute(sql).fetchone()[0])
                if n:
                    report.problems.append(f"{n} {what}")
            runs = con.execute(
                "SELECT 'task embedding ' || t.name || ' (' || e.method || ')', e.run_id FROM task_embeddings e "
                "JOIN tasks t ON t.id = e.task_id WHERE e.run_id IS NOT NULL "
                "UNION ALL SELECT 'expert ' || name, run_id FROM experts WHERE run_id IS NOT NULL "
                "UNION ALL SELECT 'probe ' || name, run_id FROM probes WHERE run_id IS NOT NULL "
                "UNION ALL SELECT 'transfer ' || dictionary || ':' || key, run_id FROM transfers "
                "WHERE run_id IS NOT NULL"
            ).fetchall()
            files = con.execute(
                "SELECT 'expert ' || name, weights, sha256 FROM experts "
                "UNION ALL SELECT 'probe ' || name, weights, sha256 FROM probes"
            ).fetchall()
            experts = [r[0] for r in con.execute("SELECT name FROM experts").fetchall()]
        referenced = set()
        run_tags: dict[str, dict[str, str]] = {}
        states = self._run_states(run_tags)
        for what, run_id in runs:
            referenced.add(run_id)
            state = states[run_id] if run_id in states else self.tracker.run_state(run_id)
            if state is None or state == "deleted":
                report.problems.append(f"{what}: MLflow run {run_id} is {state or 'missing'}")
        hashes = HashCache(self.cache_dir / "weights-sha256.json")
        for what, rel, sha in files:
            path = self.root / rel
            if not path.is_file():
                report.problems.append(f"{what}: weights file {rel} is missing")
            elif hashes.sha256(path, deep=deep) != sha:
                report.problems.append(f"{what}: weights file {rel} does not match its sha256")
        hashes.save()
        models = self._registered_models()
        for name in experts:
            if f"expert-{name}" not in models:
                report.problems.append(f"expert {name}: no registered model expert-{name} in MLflow")
        self._leftovers(report, referenced, experts, models, states, run_tags, fix=fix)
        for kind, why in self.index_problems().items():
            report.problems.append(f"index {kind}: {why}")
        return report

    def _run_states(self, tags: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
        """run id -> 'committed' | 'pending' | 'deleted' for every run of the registry's experiments
        (and, into ``tags`` when given, run id -> the run's tags).

        One read-only query on ``mlflow.db`` instead of a ``get_run`` per catalog row: 10,000 runs in
        well under a second, where MLflow's ORM spends ~1 ms a run (and seconds on its import). When
        the tracking schema is not the expected one, one paged ``search_runs`` gives the same answer.
        """
        names = [f"taskreg-{name}" for name in EXPERIMENTS]
        rows = _read_mlflow_db(self.root / "mlflow.db", _RUN_TAGS_SQL.format(", ".join("?" for _ in names)), names)
        if rows is None:
            return self._run_states_via_api(tags)
        found: dict[str, dict[str, str]] = {}
        stage: dict[str, str] = {}
        for run_id, lifecycle, key, value in rows:
            stage[run_id] = lifecycle
            run = found.setdefault(run_id, {})
            if key is not None:
                run[key] = value
        if tags is not None:
            tags.update(found)
        return {r: "deleted" if stage[r] == "deleted" else found[r].get("taskreg.state", "committed") for r in stage}

    def _run_states_via_api(self, tags: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
        from mlflow.entities import ViewType

        ids = [self.tracker.experiment_id(name) for name in EXPERIMENTS]
        states: dict[str, str] = {}
        token = None
        while True:
            page = self.tracker.client.search_runs(ids, run_view_type=ViewType.ALL, max_results=5000,
                                                   page_token=token)
            for run in page:
                deleted = run.info.lifecycle_stage == "deleted"
                states[run.info.run_id] = "deleted" if deleted else run.data.tags.get("taskreg.state", "committed")
                if tags is not None:
                    tags[run.info.run_id] = dict(run.data.tags)
            token = page.token
            if not token:
                return states

    def _registered_models(self) -> dict[str, dict[str, str]]:
        """Registered model name -> tags, read like :meth:`_run_states` (10,000 models: ~20 s through the
        MLflow client on a loaded 2-core machine); ``Tracker.registered_models`` when the schema differs."""
        rows = _read_mlflow_db(self.root / "mlflow.db", _MODEL_TAGS_SQL, [])
        if rows is None:
            return self.tracker.registered_models()
        models: dict[str, dict[str, str]] = {}
        for name, key, value in rows:
            model = models.setdefault(name, {})
            if key is not None:
                model[key] = value
        return models

    def _model_runs(self, name: str | None = None) -> dict[str, set[str]]:
        """Registered model name -> the run ids of its versions (only ``name`` when given), read like
        :meth:`_run_states`; ``Tracker.model_runs`` when the schema differs."""
        sql = "SELECT name, run_id FROM model_versions" + (" WHERE name = ?" if name is not None else "")
        rows = _read_mlflow_db(self.root / "mlflow.db", sql, [name] if name is not None else [])
        if rows is None:
            runs = self.tracker.model_runs()
            return runs if name is None else {k: v for k, v in runs.items() if k == name}
        out: dict[str, set[str]] = {}
        for model, run_id in rows:
            out.setdefault(model, set()).update([run_id] if run_id else [])
        return out

    def unaccounted(self) -> Unaccounted:
        """Committed records that MLflow holds and the catalog does not: committed record runs that no
        catalog row references and no ``rm`` marked, and expert models holding such a run.

        Read under the registry lock, where it is exact: a command commits its catalog rows and its MLflow
        states under the lock in an order (run pending until after the commit; ``removing`` before an rm's
        commit) that never shows a committed, unmarked, unreferenced run to a lock holder.
        """
        with self.lock():
            with self.read() as con:
                referenced = {r[0] for r in con.execute(_RUN_IDS_SQL).fetchall()}
                experts = {f"expert-{r[0]}" for r in con.execute("SELECT name FROM experts").fetchall()}
            tags: dict[str, dict[str, str]] = {}
            states = self._run_states(tags)
            models = self._registered_models()
            model_runs = self._model_runs()
        runs = [(r, tags.get(r, {}).get("taskreg.kind", ""), tags.get(r, {}).get("mlflow.runName", ""))
                for r, state in sorted(states.items()) if state == "committed" and r not in referenced
                and tags.get(r, {}).get("taskreg.kind") in RECORD_RUN_KINDS]
        lost_models = sorted(m for m, t in models.items() if t.get("taskreg.kind") == "expert" and m not in experts
                             and _holds_committed(model_runs.get(m, set()), states))
        return Unaccounted(runs, lost_models)

    def _refuse_lost_model(self, name: str) -> None:
        """Refuse when the registered model ``name`` holds a committed, unmarked run although the caller saw no
        catalog row for it: a record the catalog lost."""
        runs = self._model_runs(name).get(name, set())
        if any(self.tracker.run_state(r) == "committed" for r in runs):
            raise TaskregError(f"registered model {name} holds a committed record that the catalog does not have "
                               f"(the catalog lost records, see `taskreg check`): {RECOVERY}")

    def _clear_stray_model(self, name: str) -> None:
        """Delete the registered model ``name`` that has no catalog row (the caller holds the lock and saw no
        row): the leftover of a killed add or rm. A model the catalog lost is refused, never deleted."""
        self._refuse_lost_model(name)
        self.tracker.delete_registered_model(name)

    def _leftovers(self, report: CheckReport, referenced: set[str], experts: list[str],
                   models: dict[str, dict[str, str]], states: dict[str, str], run_tags: dict[str, dict[str, str]],
                   *, fix: bool) -> None:
        """Note what interrupted commands left behind; with ``fix`` remove it (see the module docstring).

        Removal happens under the registry lock after re-reading the catalog, and a pending run is
        deleted only when the process that created it is dead: a command still computing, or one
        that committed while this check was looking, keeps its run and its model. Committed records the
        catalog does not account for (:meth:`unaccounted`) are problems, and nothing of them is removed.
        """
        expert_models = {f"expert-{n}" for n in experts}
        strays = sorted(m for m, tags in models.items()
                        if tags.get("taskreg.kind") == "expert" and m not in expert_models)
        model_runs = self._model_runs() if strays else {}
        stray_models = [m for m in strays if not _holds_committed(model_runs.get(m, set()), states)]
        unmarked = sorted(r for r, state in states.items() if state in ("pending", "removing") and r in referenced)
        never = sorted(r for r, state in states.items() if state == "pending" and r not in referenced)
        running = {r for r in never if run_tags.get(r, {}).get("taskreg.owner") and
                   process_alive(run_tags[r]["taskreg.owner"])}
        removed = sorted(r for r, state in states.items() if state == "removing" and r not in referenced)
        maybe_lost = any(state == "committed" and r not in referenced and
                         run_tags.get(r, {}).get("taskreg.kind") in RECORD_RUN_KINDS for r, state in states.items())
        temps = sorted(self.indexes.folder.glob("*.tmp")) if self.indexes.folder.is_dir() else []
        report.notes += [f"registered model {m} has no catalog row (leftover)" for m in stray_models]
        report.notes += [f"MLflow run {r} is committed in the catalog but still tagged {states[r]} (interrupted "
                         + ("after its commit)" if states[r] == "pending" else "rm, before its commit)")
                         for r in unmarked]
        report.notes += [f"MLflow run {r} was never committed ("
                         + ("its command is still running)" if r in running else "interrupted command)") for r in never]
        report.notes += [f"MLflow run {r} belongs to a removed record (interrupted rm)" for r in removed]
        report.notes += [f"index temporary file {t.name} (interrupted index write)" for t in temps]
        if maybe_lost or len(stray_models) < len(strays):
            report.problems += self.unaccounted().problems()  # confirmed under the lock
        if not fix or not (stray_models or unmarked or never or removed or temps):
            return
        with self.lock():
            with self.read() as con:
                referenced = {r[0] for r in con.execute(_RUN_IDS_SQL).fetchall()}
                expert_models = {f"expert-{r[0]}" for r in con.execute("SELECT name FROM experts").fetchall()}
            for model in stray_models:
                if model not in expert_models:
                    self.tracker.delete_registered_model(model)
            for run_id in unmarked:
                if run_id in referenced:
                    self.tracker.commit(run_id)
            for run_id in [*never, *removed]:
                if run_id not in referenced and run_id not in running:
                    self.tracker.delete_run(run_id)
            for tmp in temps:  # <name>.<pid>.tmp, written by IndexStore.save
                pid = tmp.name.rsplit(".", 2)[-2]
                if pid.isdigit() and not process_alive(process_token(int(pid))):
                    tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ backup and restore
    def backup(self, dest: Path | str) -> Path:
        """Write a consistent copy of the registry into ``dest`` (a new or empty directory); returns it.

        The copy is itself a registry (its MLflow paths point at it): ``taskreg restore`` puts it back,
        and ``Registry.open`` works on it directly.
        """
        dest = Path(dest).expanduser().resolve()
        _refuse_nested(self.root, dest)
        if dest.exists() and not _is_empty_dir(dest):
            raise TaskregError(f"backup directory {dest} already exists and is not empty")
        _require_writable_parent(dest, "backup")
        staging = _staging_dir(dest, "backup")
        try:
            with self.lock(write=False):  # no commit can land while the catalog and MLflow are copied
                _copy_catalog(self.catalog_path, staging / "catalog.duckdb")
                _copy_sqlite(self.root / "mlflow.db", staging / "mlflow.db")
                _copy_tree(self.root / "index", staging / "index")
                with self.read() as con:
                    counts, version = catalog.counts(con), catalog.schema_version(con)
            _copy_tree(self.root / "artifacts", staging / "artifacts")
            (staging / "cache").mkdir()
            _finish_copy(staging, dest)
            (staging / BACKUP_MANIFEST).write_text(json.dumps(
                {"source": str(self.root), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "schema_version": version, "counts": counts}, indent=1))
            _publish(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    @classmethod
    def restore(cls, backup: Path | str, root: Path | str | None = None, *, force: bool = False,
                announce: Callable[[Path], None] | None = None) -> RegistryCore:
        """Restore a directory written by :meth:`backup` as the registry ``root`` and open it.

        ``root`` must be new or empty unless ``force``, which replaces an existing registry (never a
        directory that is not one); ``announce(root)`` is called once the backup has been checked and
        copied, just before the existing registry is replaced. Stop other taskreg processes on ``root``
        before forcing.
        """
        src = Path(backup).expanduser().resolve()
        target = (Path(root) if root is not None else default_root()).expanduser().resolve()
        if not (src / "catalog.duckdb").is_file() or not (src / "mlflow.db").is_file():
            raise TaskregError(f"{src} is not a taskreg backup (it needs catalog.duckdb and mlflow.db)")
        _refuse_nested(src, target)
        if target.exists() and not target.is_dir():
            raise TaskregError(f"{target} exists and is not a directory")
        replace = target.exists() and not _is_empty_dir(target)
        if replace and not force:
            raise TaskregError(f"registry {target} is not empty: pass --force to replace it with the backup")
        store = store_summary(target / "mlflow.db")  # a registry whose catalog was lost is one too
        if replace and not (target / "catalog.duckdb").is_file() and not (store and store.holds_registry()):
            raise TaskregError(f"{target} is not empty and not a taskreg registry: refusing to replace it")
        if target.exists():
            cls(target).require_write_access("restore")
        _require_writable_parent(target, "restore")
        staging = _staging_dir(target, "restore")
        try:
            _copy_catalog(src / "catalog.duckdb", staging / "catalog.duckdb")
            _copy_sqlite(src / "mlflow.db", staging / "mlflow.db")
            _copy_tree(src / "index", staging / "index")
            _copy_tree(src / "artifacts", staging / "artifacts")
            (staging / "cache").mkdir()
            _finish_copy(staging, target)
            with catalog.connect(staging / "catalog.duckdb", read_only=True) as con:
                version = catalog.schema_version(con)
            if version > catalog.SCHEMA_VERSION or version == 0:
                raise TaskregError(f"backup {src} has catalog schema version {version}; this taskreg reads up to "
                                   f"{catalog.SCHEMA_VERSION}")
            if replace:
                if announce is not None:
                    announce(target)
                old = target.parent / f".{target.name}.replaced-{os.getpid()}"
                with cls(target).lock():  # no command of ours commits into the old registry while it moves
                    os.rename(target, old)
                    os.rename(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                _publish(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls.open(target)


# --------------------------------------------------------------------------- damage

@dataclass
class Unaccounted:
    """Committed records MLflow holds that the catalog does not (see :meth:`RegistryCore.unaccounted`)."""

    runs: list[tuple[str, str, str]]  # (run id, taskreg.kind, run name)
    models: list[str]  # registered expert models holding a committed run without a catalog row

    SHOWN = 20  # problem lines listing runs, the rest counted

    def __bool__(self) -> bool:
        return bool(self.runs or self.models)

    def describe(self) -> str:
        """E.g. 'mlflow.db holds 4 committed runs (1 expert, 1 probe, 2 task_embedding) and 1 registered model
        that the catalog does not have and no `rm` removed'."""
        kinds: dict[str, int] = {}
        for _, kind, _ in self.runs:
            kinds[kind] = kinds.get(kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        what = [f"{len(self.runs)} committed run{'s' * (len(self.runs) != 1)} ({parts})"] if self.runs else []
        if self.models:
            what.append(f"{len(self.models)} registered model{'s' * (len(self.models) != 1)}")
        return f"mlflow.db holds {' and '.join(what)} that the catalog does not have and no `rm` removed"

    def problems(self) -> list[str]:
        if not self:
            return []
        lines = [f"committed MLflow run {r} ({kind} {name}) has no catalog row and no removal mark: the catalog "
                 "lost this record" for r, kind, name in self.runs[:self.SHOWN]]
        if len(self.runs) > self.SHOWN:
            lines.append(f"... and {len(self.runs) - self.SHOWN} more such committed runs")
        lines += [f"registered model {m} holds a committed run but has no catalog row: the catalog lost this record"
                  for m in self.models]
        lines.append(f"the catalog lost records: {self.describe()}; `check --fix` leaves them alone; {RECOVERY}")
        return lines


def _holds_committed(run_ids: set[str], states: dict[str, str]) -> bool:
    return any(states.get(r) == "committed" for r in run_ids)


def _missing_catalog(store: StoreSummary) -> str:
    return (f"catalog.duckdb is missing or empty but mlflow.db holds {store.describe()}: a damaged registry, "
            f"not a new one; {RECOVERY}")


# --------------------------------------------------------------------------- backup helpers

def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _refuse_nested(a: Path, b: Path) -> None:
    if a == b or a in b.parents or b in a.parents:
        raise TaskregError(f"{a} and {b} overlap: the registry and its backup must be separate directories")


def _require_writable_parent(final: Path, what: str) -> None:
    """Refuse in one line when ``final`` cannot be created (or replaced) in its parent directory."""
    parent = next((p for p in final.parents if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise TaskregError(f"directory {parent} is not writable for this user: {what} needs to create {final} there")


def _staging_dir(final: Path, what: str) -> Path:
    """A hidden sibling of ``final`` (same file system, so it can be renamed into place)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.{what}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _publish(staging: Path, final: Path) -> None:
    if final.exists():
        final.rmdir()  # empty (checked by the caller)
    os.rename(staging, final)


def _copy_catalog(src: Path, dst: Path) -> None:
    """The DuckDB file and its write-ahead log (left by a killed writer; folded in by :func:`_finish_copy`).

    Call with the registry lock held or on a directory no process writes: only lock holders write.
    """
    shutil.copy2(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copy2(wal, dst.with_name(dst.name + ".wal"))


def _copy_sqlite(src: Path, dst: Path) -> None:
    """A transactionally consistent copy of a sqlite database (sqlite's online backup API)."""
    import sqlite3

    source = sqlite3.connect(src, timeout=60)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.tmp"))
    else:
        dst.mkdir(parents=True)


def _finish_copy(staging: Path, final_root: Path) -> None:
    """Make the copy writable by its owner (the source may be a registry this user could only read), fold a
    copied DuckDB WAL into the catalog file and point MLflow's paths at ``final_root``."""
    for path in [staging, *staging.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    if staging.joinpath("catalog.duckdb.wal").exists():
        con = duckdb.connect(str(staging / "catalog.duckdb"))
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
    recorded = recorded_root(staging / "mlflow.db")
    if recorded is not None and recorded != final_root:
        relocate(staging / "mlflow.db", recorded, final_root)
