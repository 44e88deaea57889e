"""Backup and restore of a whole registry.

:func:`backup` copies the catalog, ``mlflow.db`` (sqlite's backup API) and the indexes while holding the
registry lock, then the artifacts (written before the catalog rows that reference them and never modified
afterwards, so the snapshot's records all find their files); the cache is skipped. Both write into a hidden
sibling directory and rename it into place, so an interrupted backup or restore never leaves a
half-written registry under the final name.

A registry whose MLflow store is a tracking server (``init --tracking-uri``) is refused by both, in one line
(:func:`remote_store_refusal`): its runs, weights and registered models are the server's, in PostgreSQL and the
server's artifact store, and only a backup of those taken together with the catalog restores a consistent registry.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.core import Core, default_root
from taskreg.registry.tracking import Tracker

BACKUP_MANIFEST = "backup.json"


def remote_store_refusal(what: str, uri: str) -> str:
    """One line: what ``backup`` / ``restore`` cannot do for a registry whose MLflow store is the tracking server
    ``uri``, and what to do instead (README, "Running it for a team")."""
    return (f"{what}: this registry's runs, weights and registered models live on the tracking server {uri}, which "
            "taskreg cannot copy or put back; back up the server's PostgreSQL database (pg_dump) and artifact store "
            "there, together with this directory's catalog.duckdb and index/ while no taskreg command writes, and "
            "restore them together (README: Running it for a team)")


def backup(core: Core, dest: Path | str) -> Path:
    """Write a consistent copy of the registry into ``dest`` (a new or empty directory); returns it.

    The copy is itself a registry (its MLflow paths point at it): ``taskreg restore`` puts it back,
    and ``Registry.open`` works on it directly.
    """
    if core.tracker.remote:  # before anything is created (the copy needs the whole MLflow store)
        raise TaskregError(remote_store_refusal("backup", core.tracker.uri))
    dest = Path(dest).expanduser().resolve()
    _refuse_nested(core.root, dest)
    if dest.exists() and not _is_empty_dir(dest):
        raise TaskregError(f"backup directory {dest} already exists and is not empty")
    _require_writable_parent(dest, "backup")
    staging = _staging_dir(dest, "backup")
    try:
        with core.lock(write=False):  # no commit can land while the catalog and MLflow are copied
            _copy_catalog(core.catalog_path, staging / "catalog.duckdb")
            core.tracker.copy_store(staging / "mlflow.db")
            _copy_tree(core.root / "index", staging / "index")
            with core.read() as con:
                counts, version = catalog.counts(con), catalog.schema_version(con)
        _copy_tree(core.root / "artifacts", staging / "artifacts")
        (staging / "cache").mkdir()
        _finish_copy(staging, dest)
        (staging / BACKUP_MANIFEST).write_text(json.dumps(
            {"source": str(core.root), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "schema_version": version, "counts": counts}, indent=1))
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def restore(backup: Path | str, root: Path | str | None = None, *, force: bool = False,
            announce: Callable[[Path], None] | None = None) -> Path:
    """Put a directory written by :func:`backup` in place as the registry ``root``; returns that root
    (``Registry.restore`` then opens it).

    ``root`` must be new or empty unless ``force``, which replaces an existing registry (never a
    directory that is not one); ``announce(root)`` is called once the backup has been checked and
    copied, just before the existing registry is replaced. Stop other taskreg processes on ``root``
    before forcing.
    """
    src = Path(backup).expanduser().resolve()
    target = (Path(root) if root is not None else default_root()).expanduser().resolve()
    if (src / "catalog.duckdb").is_file() and not (src / "mlflow.db").is_file():
        uri = Core(src).tracking_uri()  # a copy of a tracking-server registry's directory
        if uri is not None:
            raise TaskregError(remote_store_refusal("restore", uri))
    if not (src / "catalog.duckdb").is_file() or not (src / "mlflow.db").is_file():
        raise TaskregError(f"{src} is not a taskreg backup (it needs catalog.duckdb and mlflow.db)")
    _refuse_nested(src, target)
    if target.exists() and not target.is_dir():
        raise TaskregError(f"{target} exists and is not a directory")
    replace = target.exists() and not _is_empty_dir(target)
    if replace and not force:
        raise TaskregError(f"registry {target} is not empty: pass --force to replace it with the backup")
    store = Tracker(target).store_summary()  # a registry whose catalog was lost is one too
    if replace and not (target / "catalog.duckdb").is_file() and not (store and store.holds_registry()):
        raise TaskregError(f"{target} is not empty and not a taskreg registry: refusing to replace it")
    if target.exists():
        Core(target).require_write_access("restore")
    _require_writable_parent(target, "restore")
    staging = _staging_dir(target, "restore")
    try:
        _copy_catalog(src / "catalog.duckdb", staging / "catalog.duckdb")
        Tracker(src).copy_store(staging / "mlflow.db")
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
            with Core(target).lock():  # no command of ours commits into the old registry while it moves
                os.rename(target, old)
                os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


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
        catalog.fold_wal(staging / "catalog.duckdb")
    Tracker(staging).relocate(final_root)
