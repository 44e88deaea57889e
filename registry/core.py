"""The registry root: paths, locking, catalog connections, indexes and the consistency check.

``RegistryCore`` is the base of the public :class:`taskreg.registry.Registry` facade; the
task/expert/taxonomy operations live in sibling modules as mixins so each file stays readable.

Concurrency: DuckDB allows one read-write process per file, so writes take a registry-level file
lock (bounded wait, clear message on timeout) and hold the catalog connection only for the short
commit; long computations happen before the lock is taken. Readers open the catalog read-only and
retry briefly while a writer commits.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.index import IndexStore, build_index, kind_name
from taskreg.registry.tracking import Tracker, recorded_root, relocate

if TYPE_CHECKING:
    import faiss

DEFAULT_ROOT = ".taskreg"
LOCK_TIMEOUT = float(os.environ.get("TASKREG_LOCK_TIMEOUT", "120"))


def default_root() -> Path:
    return Path(os.environ.get("TASKREG_HOME", DEFAULT_ROOT))


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

    # ------------------------------------------------------------------ open / init
    @classmethod
    def init(cls, root: Path | str | None = None) -> RegistryCore:
        """Create (or upgrade) a registry at ``root``; idempotent."""
        reg = cls(Path(root) if root is not None else default_root())
        if reg.root.exists() and not reg.root.is_dir():
            raise TaskregError(f"{reg.root} exists and is not a directory")
        for sub in ("artifacts", "index", "cache"):
            (reg.root / sub).mkdir(parents=True, exist_ok=True)
        with reg.write(transactional=False) as con:
            catalog.migrate(con)
        reg.tracker.init()
        return reg

    @classmethod
    def open(cls, root: Path | str | None = None, *, repair_indexes: bool = True) -> RegistryCore:
        """Open an existing registry: migrate an older catalog, rebuild stale or missing indexes."""
        reg = cls(Path(root) if root is not None else default_root())
        if not reg.catalog_path.exists():
            raise TaskregError(f"no registry at {reg.root} (run `taskreg init` or pass --registry DIR)")
        recorded = recorded_root(reg.root / "mlflow.db")
        if recorded is not None and recorded != reg.root:
            with reg.lock():  # the registry was copied or restored elsewhere: point MLflow at our artifacts
                relocate(reg.root / "mlflow.db", recorded, reg.root)
        with reg.read() as con:
            version = catalog.schema_version(con)
        if version < catalog.SCHEMA_VERSION:
            with reg.write(transactional=False) as con:
                catalog.migrate(con)
        elif version > catalog.SCHEMA_VERSION:
            raise TaskregError(
                f"catalog schema version {version} is newer than this taskreg ({catalog.SCHEMA_VERSION})"
            )
        if repair_indexes:
            reg.repair_indexes()
        return reg

    # ------------------------------------------------------------------ locking and connections
    @contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """The registry-wide write lock (re-entrant within one Registry object)."""
        if self._lock_fd is not None:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        wait = LOCK_TIMEOUT if timeout is None else timeout
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
        """Run a read-only SQL query against the catalog; returns (column names, rows)."""
        with self.read() as con:
            try:
                cur = con.execute(query)
            except duckdb.Error as exc:
                raise TaskregError(f"SQL error: {str(exc).splitlines()[0]}") from None
            if cur.description is None:
                return [], []
            return [d[0] for d in cur.description], cur.fetchall()

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
        if len(ids) == 0:
            self.indexes.remove(kind)
            self._index_cache.pop(kind, None)
            return 0
        index = build_index(ids, vecs)
        self.indexes.save(kind, index, gen)
        self._index_cache[kind] = (gen, index)
        return len(ids)

    def rebuild_indexes(self) -> dict[str, int]:
        """Recreate every index from the catalog (``taskreg index rebuild``)."""
        kinds = self.catalog_kinds()
        for stale in set(self.indexes.kinds_on_disk()) - set(kinds):
            self.indexes.remove(stale)
        return {kind: self.rebuild_index(kind) for kind in sorted(kinds)}

    def index_problems(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        with self.read() as con:
            kinds = {k: int(g) for k, g in con.execute("SELECT kind, generation FROM index_state").fetchall()}
            for kind, gen in kinds.items():
                count = self._kind_count(con, kind)
                if count == 0:
                    continue
                why = self.indexes.problem(kind, gen, count)
                if why:
                    problems[kind] = why
        for orphan in set(self.indexes.kinds_on_disk()) - set(kinds):
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
    def check(self, *, fix: bool = False) -> CheckReport:
        """Catalog ↔ MLflow ↔ index consistency. ``fix`` removes harmless leftovers (orphan runs)."""
        report = CheckReport()
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
        for what, run_id in runs:
            referenced.add(run_id)
            state = self.tracker.run_state(run_id)
            if state is None or state == "deleted":
                report.problems.append(f"{what}: MLflow run {run_id} is {state or 'missing'}")
        for what, rel, sha in files:
            path = self.root / rel
            if not path.exists():
                report.problems.append(f"{what}: weights file {rel} is missing")
            elif file_sha256(path) != sha:
                report.problems.append(f"{what}: weights file {rel} does not match its sha256")
        models = self.tracker.registered_models()
        for name in experts:
            if f"expert-{name}" not in models:
                report.problems.append(f"expert {name}: no registered model expert-{name} in MLflow")
        known_models = {f"expert-{n}" for n in experts}
        for model, tags in models.items():
            if tags.get("taskreg.kind") == "expert" and model not in known_models:
                report.notes.append(f"registered model {model} has no catalog row (leftover)")
                if fix:
                    self.tracker.delete_registered_model(model)
        for run_id in self.tracker.pending_runs():
            if run_id not in referenced:
                report.notes.append(f"MLflow run {run_id} was never committed (interrupted command)")
                if fix:
                    self.tracker.delete_run(run_id)
        for kind, why in self.index_problems().items():
            report.problems.append(f"index {kind}: {why}")
        return report
