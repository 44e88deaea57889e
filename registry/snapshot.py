"""Read-only snapshots of a registry for readers on other machines (``taskreg export DIR``; issue 17).

DuckDB allows one writer per catalog file, so a team keeps one writer host and gives everyone else a snapshot:

    DIR/SNAPSHOT.json            format, schema version, registry id, time, row counts, the files copied
    DIR/catalog/<table>.parquet  every catalog table (:func:`taskreg.registry.catalog.export_tables`)
    DIR/index/                   the Faiss indexes (derived; valid for the exported generations)
    DIR/artifacts/...            the probes' weight files (Task2Vec of a query), and the experts' with
                                 ``--with-experts`` (the forward-pass selection methods need them)

The manifest records each Parquet file's SHA-256, checked before a catalog is built from them.
``--registry DIR`` then answers reads — ``select``, ``policy``, ``sql``, ``task list`` ... — and refuses every
write in one line. Opening one builds its DuckDB catalog once from the Parquet files into the user's cache
(``$XDG_CACHE_HOME/taskreg/snapshots/<digest of SNAPSHOT.json>/``), so the snapshot itself may be read-only.
There is no MLflow store in a snapshot: runs and registered models stay on the writer host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskreg.errors import TaskregError
from taskreg.files import sha256_file
from taskreg.registry import catalog

if TYPE_CHECKING:
    from taskreg.registry.core import Core

SNAPSHOT_FILE = "SNAPSHOT.json"
FORMAT = 1


def is_snapshot(root: Path) -> bool:
    return (Path(root) / SNAPSHOT_FILE).is_file()


def export(core: Core, dest: Path | str, *, with_experts: bool = False) -> Path:
    """Write a snapshot of the registry into ``dest`` (a new or empty directory); returns it."""
    from taskreg.registry.backup import _copy_tree, _is_empty_dir, _publish, _require_writable_parent, _staging_dir

    dest = Path(dest).expanduser().resolve()
    if core.tracker.remote:
        raise TaskregError(f"{core.root} keeps its weights on a tracking server: export copies local weight files "
                           "only, which such a registry does not have")
    if dest == core.root or core.root in dest.parents or dest in core.root.parents:
        raise TaskregError(f"{core.root} and {dest} overlap: export into a directory outside the registry")
    if dest.exists() and not _is_empty_dir(dest):
        raise TaskregError(f"export directory {dest} already exists and is not empty")
    _require_writable_parent(dest, "export")
    staging = _staging_dir(dest, "export")
    try:
        with core.lock(write=False):  # no commit lands while the tables and indexes are copied
            with core.read() as con:
                rows = catalog.export_tables(con, staging / "catalog")
                version, registry_id = catalog.schema_version(con), catalog.registry_id(con)
                files = [p.weights for p in catalog.list_probes(con)]
                if with_experts:
                    files += [e.weights for e in catalog.list_experts(con)]
            _copy_tree(core.root / "index", staging / "index")
        for rel in files:  # written before the rows that name them and never modified: no lock needed
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(core.root / rel, target)
        digests = {t: sha256_file(staging / "catalog" / f"{t}.parquet") for t in rows}
        manifest = {"format": FORMAT, "schema_version": version, "registry_id": registry_id,
                    "source": str(core.root), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "rows": rows, "sha256": digests, "with_experts": with_experts, "files": sorted(files)}
        (staging / SNAPSHOT_FILE).write_text(json.dumps(manifest, indent=1))
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def read_manifest(root: Path) -> dict[str, Any]:
    """The snapshot's SNAPSHOT.json, checked (one-line errors)."""
    path = Path(root) / SNAPSHOT_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskregError(f"snapshot {root}: {SNAPSHOT_FILE} cannot be read ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("schema_version"), int) or not isinstance(manifest.get("sha256"), dict):
        raise TaskregError(f"snapshot {root}: {SNAPSHOT_FILE} is not a taskreg snapshot of format {FORMAT}")
    return manifest


def snapshot_catalog(root: Path) -> Path:
    """The DuckDB catalog of the snapshot at ``root``, built on first use into the user's cache (keyed by the
    manifest's digest, so a new export of the same directory gets a new catalog)."""
    root = Path(root)
    manifest = read_manifest(root)
    digest = hashlib.sha256((root / SNAPSHOT_FILE).read_bytes()).hexdigest()[:20]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "taskreg" / "snapshots" / digest / "catalog.duckdb"
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TaskregError(f"snapshot {root}: cannot create its catalog under {path.parent} ({exc.strerror})") from None
    for table in catalog.SNAPSHOT_TABLES:  # the files are what was exported, before any row is read
        file = root / "catalog" / f"{table}.parquet"
        if not file.is_file():
            raise TaskregError(f"snapshot {root} is incomplete: no {table}.parquet")
        if sha256_file(file) != manifest["sha256"].get(table):
            raise TaskregError(f"snapshot {root}: catalog/{table}.parquet is damaged (its SHA-256 is not the one "
                               f"{SNAPSHOT_FILE} records)")
    tmp = path.with_name(f"catalog.{os.getpid()}.tmp.duckdb")
    tmp.unlink(missing_ok=True)
    con = catalog.connect(tmp)
    try:
        catalog.import_tables(con, root / "catalog", manifest["schema_version"])
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    tmp.replace(path)
    return path
