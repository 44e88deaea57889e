"""Rebuilding the records MLflow still holds into a lost or emptied catalog (``taskreg recover``).

Every probe, task embedding and expert is logged as an MLflow run before its catalog row is
committed: the run's parameters, tags and metrics describe the record, and its artifacts hold the
weights (probes, experts) or the vectors (tasks). From those this module re-inserts, in one DuckDB
transaction under the registry lock, every committed record run that no catalog row references and
no ``rm`` marked (:func:`taskreg.registry.damage.unaccounted`), then rebuilds the indexes.

What only the catalog held cannot come back: expert evaluations, Model2Vec fits, Taskonomy transfers
(per-image losses, win rates; the task-network runs of a build are marked removed, since a build
retrains them), imported or built affinity sets and policies. A task is rebuilt from its logged
parameters; runs logged before those included the data's domain and size load the data source again
(a task whose source no longer loads, or loads other data, is skipped and named).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import duckdb
import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.core import Core
from taskreg.registry.damage import unaccounted
from taskreg.registry.index import IndexManager
from taskreg.registry.names import check_name
from taskreg.registry.tracking import RunData, RunRef, TrackingServerDown
from taskreg.registry.weights import file_sha256, head_classes

NOT_IN_MLFLOW = ("expert evaluations (`taskreg expert eval`)", "Model2Vec fits (`taskreg model2vec fit`)",
                 "Taskonomy transfers (`taskreg taskonomy build`)", "imported affinity sets", "policies")


@dataclass
class RecoveryReport:
    probes: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    embeddings: int = 0
    experts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what could not be rebuilt, and why
    retired: list[str] = field(default_factory=list)  # runs marked removed instead (task networks, duplicates)
    retired_runs: list[str] = field(default_factory=list)
    found: int = 0  # committed record runs the catalog did not account for

    def summary(self) -> str:
        return (f"recovered {len(self.probes)} probe(s), {len(self.tasks)} task(s) ({self.embeddings} embeddings), "
                f"{len(self.experts)} expert(s)")


class Recovery:
    """``taskreg recover`` on one registry."""

    def __init__(self, core: Core, index_manager: IndexManager) -> None:
        self.core = core
        self.index_manager = index_manager

    def recover(self, *, device: str = "cpu") -> RecoveryReport:
        """Re-insert the probes, tasks and experts MLflow holds but the catalog lost; see the module docstring.

        Works on a registry whose catalog is missing (it is created with MLflow's registry id) or lacks
        records; refuses a catalog that belongs to another registry. Nothing to recover: an empty report.
        """
        report = RecoveryReport()
        with self.core.lock():
            self._prepare_catalog()
            lost = unaccounted(self.core)
            report.found = len(lost.runs)
            if not lost.runs:
                return report
            runs = [self.core.tracker.run_data(run_id) for run_id, _, _ in lost.runs]
            runs.sort(key=lambda r: (r.start_time, r.run_id))
            by_kind: dict[str, list[RunData]] = {}
            for run in runs:
                by_kind.setdefault(run.tags.get("taskreg.kind", ""), []).append(run)
            probes = self._recover_probes(by_kind.get("probe", []), report, device)
            experts = self._recover_experts(by_kind.get("expert", []), report)
            with self.core.read() as con:
                known = {p.name for p in catalog.list_probes(con)} | {p[0] for p in probes}
                have = {t.name: t for t in catalog.list_tasks(con)}
            tasks = self._recover_tasks(by_kind.get("task_embedding", []), known, have, report)
            for run in by_kind.get("task_network", []):
                report.retired.append(f"task network {run.name} (run {run.run_id}): its transfers were only in the "
                                      "catalog; `taskreg taskonomy build` trains it again")
                report.retired_runs.append(run.run_id)
            with self.core.write() as con:
                self._insert_recovered(con, probes, experts, tasks, {r.run_id: r for r in runs}, report)
            for run_id in report.retired_runs:  # after the commit: a rerun finds them unaccounted for again
                self.core.tracker.mark_removing(run_id)
        self.index_manager.rebuild_all()
        return report

    # ------------------------------------------------------------------ preparing the catalog
    def _prepare_catalog(self) -> None:
        """Make sure a catalog of this registry exists (created with MLflow's id when it is missing or empty)."""
        version, mine = self.core.catalog_state()
        theirs = self.core.tracker.stored_registry_id()
        if mine is not None and theirs is not None and mine != theirs:
            raise TaskregError(f"catalog.duckdb belongs to registry {mine}, not to mlflow.db's {theirs}: move it "
                               "away first, then `taskreg recover` rebuilds a catalog from MLflow")
        if version > catalog.SCHEMA_VERSION:
            raise TaskregError(f"catalog schema version {version} is newer than this taskreg "
                               f"({catalog.SCHEMA_VERSION})")
        for sub in ("artifacts", "index", "cache"):
            (self.core.root / sub).mkdir(parents=True, exist_ok=True)
        if version == 0:
            self.core.catalog_path.unlink(missing_ok=True)  # an empty file (no schema) is replaced
        with self.core.write(transactional=False) as con:
            catalog.migrate(con)
            if catalog.registry_id(con) is None:
                catalog.set_registry_id(con, theirs or uuid.uuid4().hex)
            if self.core.tracker.remote and catalog.tracking_uri(con) is None:  # a lost catalog of a server's registry
                catalog.set_tracking_uri(con, self.core.tracker.uri)
        if theirs is None:
            self.core.adopt_identity()
        self.core.damage = None

    def _newest(self, runs: list[RunData], prefix: str, what: str, report: RecoveryReport) -> dict[str, RunData]:
        """name -> the newest run per record name (runs are sorted by start time); older duplicates (the
        leftovers of an `rm` made before removal marks existed) are marked removed. Bad names are skipped."""
        out: dict[str, RunData] = {}
        for run in runs:
            name = run.name[len(prefix):] if run.name.startswith(prefix) else ""
            try:
                check_name(name, f"{what} name")
            except TaskregError:
                report.skipped.append(f"{what} run {run.run_id} ({run.name!r}): not a {what} run name")
                continue
            if name in out:
                report.retired_runs.append(out[name].run_id)
                report.retired.append(f"{what} {name}: older run {out[name].run_id} superseded by {run.run_id}")
            out[name] = run
        return out

    # ------------------------------------------------------------------ records from runs
    def _weights(self, run: RunData, name: str, what: str, report: RecoveryReport) -> tuple[str, str] | None:
        path = run.artifact_dir / "weights" / f"{name}.pt"
        if not path.is_file():
            report.skipped.append(f"{what} {name}: its weights artifact {path} is missing")
            return None
        try:
            rel = self.core.tracker.artifact_ref(run.run_id, path.resolve())
        except ValueError:
            report.skipped.append(f"{what} {name}: its weights artifact {path} is outside the registry")
            return None
        return rel, file_sha256(path)

    def _recover_probes(self, runs: list[RunData], report: RecoveryReport,
                        device: str) -> list[tuple[str, catalog.ProbeRecord, dict[str, np.ndarray]]]:
        from taskreg.embedders.probes import ProbeSpec, create_model, default_spec
        from taskreg.embedders.task2vec import fisher_layout, trivial_embedding
        from taskreg.embedders.weight_files import load_state_dict_file, load_weights

        out = []
        for name, run in self._newest(runs, "probe-", "probe", report).items():
            found = self._weights(run, name, "probe", report)
            if found is None:
                continue
            arch = run.params.get("arch", "")
            try:
                spec = default_spec(arch)
                if run.params.get("input_size", "").isdigit():
                    spec = ProbeSpec(arch=arch, input_size=int(run.params["input_size"]), in_chans=spec.in_chans,
                                     mean=spec.mean, std=spec.std)
                state = load_state_dict_file(self.core.tracker.local_file(found[0]))  # a server's: its cached copy
                model = create_model(arch, num_classes=head_classes(state))
                load_weights(model, state, ignore_head=False)
            except TrackingServerDown:
                raise  # not a property of the run: recover stops (and may be run again)
            except (TaskregError, KeyError, ValueError, RuntimeError) as exc:
                report.skipped.append(f"probe {name}: its weights do not load as {arch!r} ({str(exc).splitlines()[0]})")
                continue
            model.eval()
            trivial = {"montecarlo": trivial_embedding(model, "montecarlo", spec=spec, device=device),
                       "variational": trivial_embedding(fisher_layout(model), "variational")}
            rec = catalog.ProbeRecord(name=name, arch=arch, input_size=spec.input_size, in_chans=spec.in_chans,
                                      mean=tuple(spec.mean), std=tuple(spec.std), sha256=found[1], weights=found[0],
                                      origin="trained" if "sources" in run.params else "added", run_id=run.run_id)
            out.append((name, rec, trivial))
        return out

    def _recover_experts(self, runs: list[RunData], report: RecoveryReport) -> list[dict]:
        out = []
        for name, run in self._newest(runs, "expert-", "expert", report).items():
            found = self._weights(run, name, "expert", report)
            if found is None:
                continue
            model = f"expert-{name}"
            version = self.core.tracker.model_version(model, run.run_id)
            if version is None:  # the registered model went too: register the run's weights again
                tags = {k: run.tags.get(k, "") for k in ("arch", "trained_on", "taskreg.kind", "origin")}
                version = self.core.tracker.register(model, RunRef(run.run_id, run.artifact_dir), "weights", tags)
            out.append({"name": name, "arch": run.tags.get("arch") or run.params.get("arch", ""), "sha256": found[1],
                        "weights": found[0], "trained_on": run.tags.get("trained_on") or None,
                        "origin": run.tags.get("origin") or "added", "n_train": _int(run.params.get("n_train")),
                        "n_classes": _int(run.params.get("n_classes")), "run_id": run.run_id,
                        "model_version": version, "input_size": _int(run.params.get("input_size")),
                        "reference_accuracy": _fraction(run.params.get("reference_accuracy")),
                        "reference": run.params.get("reference") or None})
        return out

    def _recover_tasks(self, runs: list[RunData], probes: set[str], have: dict[str, catalog.TaskRecord],
                       report: RecoveryReport) -> dict[str, dict]:
        """task name -> its row (None when the catalog still has the task) and embeddings."""
        newest: dict[tuple[str, str, str], RunData] = {}
        for run in runs:
            key = (run.params.get("task", ""), run.params.get("probe", ""), run.params.get("method", ""))
            if key in newest:
                report.retired_runs.append(newest[key].run_id)
                report.retired.append(f"task {key[0]} ({key[2]}): older run {newest[key].run_id} superseded by "
                                      f"{run.run_id}")
            newest[key] = run
        tasks: dict[str, dict] = {}
        failed: set[str] = set()
        for (name, probe, method), run in sorted(newest.items(), key=lambda kv: (kv[1].start_time, kv[1].run_id)):
            if name in failed:
                continue
            try:
                check_name(name, "task name")
                vector = np.load(run.artifact_dir / "vectors" / "task2vec.npy", allow_pickle=False)
                domain_vec = np.load(run.artifact_dir / "vectors" / "domain.npy", allow_pickle=False)
            except (TaskregError, OSError, ValueError) as exc:
                report.skipped.append(f"task {name!r} ({method}, run {run.run_id}): {str(exc).splitlines()[0]}")
                continue
            if probe not in probes:
                report.skipped.append(f"task {name} ({method}): its probe {probe!r} is neither in the catalog nor "
                                      "recovered")
                continue
            if name in have and have[name].fingerprint != run.params.get("fingerprint"):
                report.skipped.append(f"task {name} ({method}): the catalog's task {name} holds other data")
                continue
            if name not in tasks:
                row = None if name in have else self._task_row(name, run, report)
                if name not in have and row is None:
                    failed.add(name)
                    continue
                tasks[name] = {"row": row, "embeddings": [], "domains": set()}
            entry = tasks[name]
            seconds = run.metrics.get("seconds")
            entry["embeddings"].append((probe, method, vector, _int(run.params.get("n_samples")) or 0,
                                        _int(run.params.get("seed")) or 0, seconds, run.run_id))
            if probe not in entry["domains"]:  # the first run of a task and probe carries its domain embedding
                entry["domains"].add(probe)
                entry["embeddings"].append((probe, "domain", domain_vec, _int(run.params.get("n_samples")) or 0,
                                            _int(run.params.get("seed")) or 0, None, run.run_id))
        return tasks

    def _task_row(self, name: str, run: RunData, report: RecoveryReport) -> dict | None:
        source, fingerprint = run.params.get("source", ""), run.params.get("fingerprint", "")
        n_classes = _int(run.params.get("n_classes"))
        domain, size = run.params.get("domain"), _int(run.params.get("dataset_size"))
        if domain is None or size is None:  # logged before these parameters existed: load the data again
            try:
                ds = datasets.load(source)
            except TaskregError as exc:
                report.skipped.append(f"task {name}: its source {source!r} no longer loads ({exc})")
                return None
            if ds.fingerprint() != fingerprint:
                report.skipped.append(f"task {name}: its source {source!r} now holds other data than was embedded")
                return None
            domain, size, n_classes = ds.domain, ds.n, ds.n_classes
        return {"name": name, "source": source, "domain": domain, "n_samples": size, "n_classes": n_classes or 0,
                "fingerprint": fingerprint}

    def _insert_recovered(self, con: duckdb.DuckDBPyConnection, probes: list, experts: list[dict],
                          tasks: dict[str, dict], runs: dict[str, RunData], report: RecoveryReport) -> None:
        """Insert the rebuilt records (``runs``: run id -> run, whose start time becomes ``created_at``)."""
        for name, rec, trivial in probes:
            if catalog.get_probe(con, name) is not None:
                continue
            catalog.insert_probe(con, rec)
            _created_at(con, "probes", "name", name, runs[rec.run_id])
            for method, vec in trivial.items():
                catalog.insert_trivial_embedding(con, name, method, vec, if_absent=True)
            report.probes.append(name)
        for expert in experts:
            if catalog.get_expert(con, expert["name"]) is not None:
                report.skipped.append(f"expert {expert['name']}: the catalog has another expert of that name")
                continue
            _created_at(con, "experts", "id", catalog.insert_expert(con, **expert), runs[expert["run_id"]])
            report.experts.append(expert["name"])
        kinds: set[str] = set()
        for name, entry in tasks.items():
            if entry["row"] is not None:
                task_id = catalog.insert_task(con, **entry["row"])
                _created_at(con, "tasks", "id", task_id, runs[entry["embeddings"][0][-1]])
            else:
                held = catalog.get_task(con, name)
                if held is None:  # entry["row"] is None only for a task the catalog held when recovery began
                    raise TaskregError(f"task {name} left the catalog while recovery was running; run recover again")
                task_id = held.id
            added = 0
            for probe, method, vector, n_samples, seed, seconds, run_id in entry["embeddings"]:
                if catalog.has_embedding(con, task_id, probe, method):
                    continue
                catalog.insert_embedding(con, task_id, probe, method, vector, n_samples, seed, seconds, run_id)
                kinds.add(self.index_manager.kind("task", probe, method))
                added += 1
            report.embeddings += added
            report.tasks.append(name)
        for kind in sorted(kinds):
            catalog.bump_generation(con, kind)


def _created_at(con: duckdb.DuckDBPyConnection, table: str, key: str, value: object, run: RunData) -> None:
    """The record's creation time: its run's start (the catalog commit came moments later)."""
    catalog.set_created_at(con, table, key, value, run.start_time)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _fraction(text: str | None) -> float | None:
    """A run parameter holding a number in [0, 1] (an expert's reference accuracy); None if absent or not one."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None
