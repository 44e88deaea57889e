"""The consistency check (``taskreg check``) and the leftovers of interrupted commands (``check --fix``).

Crash safety: the catalog is the source of truth and every command commits it in one DuckDB
transaction. What a command killed at any point can leave behind is only ever a *leftover*, never
an inconsistency: an MLflow run still tagged pending (killed before or just after the commit), the
runs of a removed record (killed after an ``rm`` committed; ``rm`` tags them ``removing`` before its
commit), an expert's registered model without its catalog row, a stale index (rebuilt on open) or an
index temporary file. ``check`` lists them as notes; ``check --fix`` clears them under the lock,
touching only what belongs to dead processes. Records the catalog lost are damage, not leftovers
(:mod:`taskreg.registry.damage`): reported as problems, never removed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from taskreg.registry import catalog
from taskreg.registry.core import Core
from taskreg.registry.damage import holds_committed, unaccounted
from taskreg.registry.index import IndexManager
from taskreg.registry.tracking import RECORD_RUN_KINDS, process_alive, process_token
from taskreg.registry.weights import file_sha256


@dataclass
class CheckReport:
    """Result of :meth:`Maintenance.check`: problems make the registry inconsistent, notes do not."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


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


class Maintenance:
    """``check`` and ``check --fix`` of one registry."""

    def __init__(self, core: Core, index_manager: IndexManager) -> None:
        self.core = core
        self.index_manager = index_manager

    def check(self, *, fix: bool = False, deep: bool = False) -> CheckReport:
        """Catalog ↔ MLflow ↔ index consistency. ``fix`` removes harmless leftovers (orphan runs).

        Scales with the registry without per-row round trips: the state of every MLflow run comes from
        one paged search, weight files are rehashed only when their stat changed (:class:`HashCache`;
        ``deep`` rehashes every file).
        """
        report = CheckReport()
        if self.core.damage is not None:  # opened with damaged_ok: nothing to compare, and nothing is touched
            report.problems.append(self.core.damage)
            return report
        with self.core.read() as con:
            report.counts = catalog.counts(con)
            version = catalog.schema_version(con)
            if version != catalog.SCHEMA_VERSION:
                report.problems.append(f"schema version {version}, expected {catalog.SCHEMA_VERSION}")
            for what, n in catalog.dangling_counts(con).items():
                if n:
                    report.problems.append(f"{n} {what}")
            runs = catalog.run_references(con)
            files = catalog.weight_files(con)
            experts = catalog.expert_names(con)
        if self.core.snapshot:  # no MLflow store in a snapshot: its tables, copied weights and indexes only
            for what, rel, sha in files:
                path = self.core.root / rel
                if path.is_file() and file_sha256(path) != sha:
                    report.problems.append(f"{what}: weights file {rel} does not match its sha256")
            missing = sum(not (self.core.root / rel).is_file() for _, rel, _ in files)
            report.notes.append("a snapshot (taskreg export): MLflow runs and registered models stay with the "
                                "registry it came from" + (f"; {missing} weight file(s) not copied (export "
                                                           "--with-experts)" if missing else ""))
            for kind, why in self.index_manager.problems().items():
                report.problems.append(f"index {kind}: {why}")
            return report
        referenced = set()
        tracked = self.core.tracker.run_states()
        states, run_tags = tracked.states, tracked.tags
        for what, run_id in runs:
            referenced.add(run_id)
            state = states[run_id] if run_id in states else self.core.tracker.run_state(run_id)
            if state is None or state == "deleted":
                report.problems.append(f"{what}: MLflow run {run_id} is {state or 'missing'}")
        hashes = HashCache(self.core.cache_dir / "weights-sha256.json")
        for what, rel, sha in files:
            path = self.core.tracker.local_file(rel, refresh=deep)  # a tracking server's: its cached download
            if not path.is_file():
                report.problems.append(f"{what}: weights file {rel} is missing")
            elif hashes.sha256(path, deep=deep) != sha:
                report.problems.append(f"{what}: weights file {rel} does not match its sha256")
        hashes.save()
        models = self.core.tracker.registered_models()
        for name in experts:
            if f"expert-{name}" not in models:
                report.problems.append(f"expert {name}: no registered model expert-{name} in MLflow")
        self._leftovers(report, referenced, experts, models, states, run_tags, fix=fix)
        for kind, why in self.index_manager.problems().items():
            report.problems.append(f"index {kind}: {why}")
        return report

    def _leftovers(self, report: CheckReport, referenced: set[str], experts: list[str],
                   models: dict[str, dict[str, str]], states: dict[str, str], run_tags: dict[str, dict[str, str]],
                   *, fix: bool) -> None:
        """Note what interrupted commands left behind; with ``fix`` remove it (see the module docstring).

        Removal happens under the registry lock after re-reading the catalog, and a pending run is
        deleted only when the process that created it is dead: a command still computing, or one
        that committed while this check was looking, keeps its run and its model. Committed records the
        catalog does not account for (:func:`~taskreg.registry.damage.unaccounted`) are problems, and nothing of
        them is removed.
        """
        expert_models = {f"expert-{n}" for n in experts}
        strays = sorted(m for m, tags in models.items()
                        if tags.get("taskreg.kind") == "expert" and m not in expert_models)
        model_runs = self.core.tracker.model_runs() if strays else {}
        stray_models = [m for m in strays if not holds_committed(model_runs.get(m, set()), states)]
        unmarked = sorted(r for r, state in states.items() if state in ("pending", "removing") and r in referenced)
        never = sorted(r for r, state in states.items() if state == "pending" and r not in referenced)
        running = {r for r in never if run_tags.get(r, {}).get("taskreg.owner") and
                   process_alive(run_tags[r]["taskreg.owner"])}
        removed = sorted(r for r, state in states.items() if state == "removing" and r not in referenced)
        maybe_lost = any(state == "committed" and r not in referenced and
                         run_tags.get(r, {}).get("taskreg.kind") in RECORD_RUN_KINDS for r, state in states.items())
        temps = sorted(self.core.indexes.folder.glob("*.tmp")) if self.core.indexes.folder.is_dir() else []
        report.notes += [f"registered model {m} has no catalog row (leftover)" for m in stray_models]
        report.notes += [f"MLflow run {r} is committed in the catalog but still tagged {states[r]} (interrupted "
                         + ("after its commit)" if states[r] == "pending" else "rm, before its commit)")
                         for r in unmarked]
        report.notes += [f"MLflow run {r} was never committed ("
                         + ("its command is still running)" if r in running else "interrupted command)") for r in never]
        report.notes += [f"MLflow run {r} belongs to a removed record (interrupted rm)" for r in removed]
        report.notes += [f"index temporary file {t.name} (interrupted index write)" for t in temps]
        if maybe_lost or len(stray_models) < len(strays):
            report.problems += unaccounted(self.core).problems()  # confirmed under the lock
        if not fix or not (stray_models or unmarked or never or removed or temps):
            return
        with self.core.lock():
            with self.core.read() as con:
                referenced = catalog.referenced_run_ids(con)
                expert_models = {f"expert-{n}" for n in catalog.expert_names(con)}
            for model in stray_models:
                if model not in expert_models:
                    self.core.tracker.delete_registered_model(model)
            for run_id in unmarked:
                if run_id in referenced:
                    self.core.tracker.commit(run_id)
            for run_id in [*never, *removed]:
                if run_id not in referenced and run_id not in running:
                    self.core.tracker.delete_run(run_id)
            for tmp in temps:  # <name>.<pid>.tmp, written by IndexStore.save
                pid = tmp.name.rsplit(".", 2)[-2]
                if pid.isdigit() and not process_alive(process_token(int(pid))):
                    tmp.unlink(missing_ok=True)
