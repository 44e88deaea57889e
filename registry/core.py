"""The registry core: root, paths, the registry lock, catalog connections, the tracker and the index store.

Every service of the registry (tasks, experts, probes, policies, the Taskonomy pipeline, maintenance; see
:mod:`taskreg.registry.facade`) is given one :class:`Core` and reaches the catalog, MLflow and the index
folder only through it.

Concurrency: DuckDB allows one read-write process per file, so writes take a registry-level file
lock (bounded wait, clear message on timeout) and hold the catalog connection only for the short
commit; long computations happen before the lock is taken. Readers open the catalog read-only and
retry briefly while a writer commits.

Crash safety: the catalog is the source of truth and every command commits it in one DuckDB
transaction, in the same order everywhere (:mod:`taskreg.registry.runs`): pending MLflow run → one
catalog transaction under the lock → commit tag → index. What a killed command can leave behind is
only ever a *leftover* (see :mod:`taskreg.registry.maintenance`); a lost catalog is *damage* (see
:mod:`taskreg.registry.damage`).
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.index import IndexStore
from taskreg.registry.snapshot import is_snapshot, snapshot_catalog
from taskreg.registry.tracking import Tracker

DEFAULT_ROOT = ".taskreg"
DEFAULT_LOCK_TIMEOUT = 120.0


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


class Core:
    """A registry on disk (see ARCHITECTURE.md, "The registry on disk"): what every service shares."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        # a snapshot (`taskreg export`) is read-only, its catalog built from its Parquet files into the user's cache
        self.snapshot = is_snapshot(self.root)
        self.catalog_path = snapshot_catalog(self.root) if self.snapshot else self.root / "catalog.duckdb"
        self._tracker: Tracker | None = None
        self.indexes = IndexStore(self.root / "index")
        self.cache_dir = self.root / "cache"
        self.damage: str | None = None  # set by ``Registry.open(damaged_ok=True)`` on a damaged registry
        self._con: duckdb.DuckDBPyConnection | None = None
        self._shared: duckdb.DuckDBPyConnection | None = None  # the read-only connection of a :meth:`session`
        self._sessions = 0
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ MLflow
    @property
    def tracker(self) -> Tracker:
        """The registry's MLflow store: ``<root>/mlflow.db``, or the tracking server its catalog names (a setting
        made by ``init --tracking-uri``; no environment variable overrides it)."""
        if self._tracker is None:  # a snapshot has no MLflow store: the server stays the writer host's business
            self._tracker = Tracker(self.root, None if self.snapshot else self.tracking_uri())
        return self._tracker

    def tracking_uri(self) -> str | None:
        """The tracking server recorded in the catalog; None for a local MLflow store (or no catalog yet)."""
        if not self.catalog_path.exists():
            return None
        with self.read() as con:
            return catalog.tracking_uri(con)

    def use_tracking_server(self, uri: str) -> None:
        """Bind this core to the tracking server ``uri`` before the catalog records it (``init``)."""
        self._tracker = Tracker(self.root, uri)

    # ------------------------------------------------------------------ identity
    def catalog_state(self) -> tuple[int, str | None]:
        """(schema version, registry id) of the catalog; (0, None) when the file is missing or holds no schema."""
        if not self.catalog_path.exists():
            return 0, None
        with self.read() as con:
            return catalog.schema_version(con), catalog.registry_id(con)

    def adopt_identity(self) -> None:
        """Give the catalog and MLflow one registry id where either lacks it (a registry made before ids
        existed, or an ``init`` killed between the two): the catalog takes MLflow's, else a new one."""
        theirs = self.tracker.stored_registry_id()
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
        indexes (a shared registry owned by someone else, a read-only mount), or a snapshot."""
        if self.snapshot:
            return True
        paths = (self.root, self.catalog_path, self.root / "mlflow.db", self.root / "artifacts", self.indexes.folder)
        return any(p.exists() and not os.access(p, os.W_OK) for p in paths)

    def require_write_access(self, what: str) -> None:
        """Refuse, in one line, ``what`` (a command) on a registry this user cannot write."""
        if self.snapshot:
            raise TaskregError(f"{self.root} is a read-only snapshot (taskreg export): {what} needs the registry it "
                               "was exported from")
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
    def session(self) -> Iterator[None]:
        """Group reads: every :meth:`read` inside shares one read-only connection, opened at the first read and
        closed at the end (a DuckDB connect and close cost 20-70 ms on a 100,000-task catalog; ``select`` reads
        it a dozen times). Keep a session short -- a few reads, never around a long computation: while its
        connection is open, a writer in another process waits for the catalog. A :meth:`write` inside closes
        the shared connection first (DuckDB cannot hold a file read-only and read-write in one process)."""
        self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1
            if not self._sessions:
                self._close_shared()

    def _close_shared(self) -> None:
        con, self._shared = self._shared, None
        if con is not None:
            con.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only catalog connection (or the current write connection, when inside one; the session's,
        inside a :meth:`session`)."""
        if self._con is not None:
            yield self._con
            return
        if self._sessions:
            if self._shared is None:
                self._shared = catalog.connect(self.catalog_path, read_only=True)
            yield self._shared
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
        self._close_shared()
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

