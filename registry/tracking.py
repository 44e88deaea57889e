"""MLflow tracking inside the registry: runs, artifacts and registered models.

Reason: the whole MLflow boundary is this one module by design (issue 13; tests/test_layering.py allows MLflow
imports here only), so the tracking-server failure handling lives here too; a local store and a server differ
method by method, side by side.

This is the whole MLflow boundary by design (issue 13): the client calls, the batched logging, and the fast
paths over MLflow's own sqlite schema that ``check``, ``recover``, relocation and backup need (their SQL lives in
:mod:`taskreg.registry.catalog.mlflow_store`, which only this module calls), so no other module touches MLflow.

The tracking store is ``sqlite:///<root>/mlflow.db`` and every experiment's artifact location
is ``<root>/artifacts/<experiment>``, so nothing is ever written to ``./mlruns`` in the caller's
directory. Telemetry is switched off before mlflow is imported.

Experts, probes and task networks are registered models whose weights are a ``state_dict``
artifact (loaded back with ``torch.load(weights_only=True)``), tagged with ``arch`` and
``trained_on``. MLflow 3 reserves the alias ``latest`` (``models:/NAME/latest`` already resolves to
the newest version), so the version taskreg uses carries the alias ``current``.

Runs are created with the tag ``taskreg.state=pending`` and marked ``committed`` once the catalog
row that references them is committed; ``taskreg check`` reports pending runs as orphans. Each run
also records the process that created it (``taskreg.owner``, see :func:`process_token`), so
``taskreg check --fix`` deletes the pending runs of dead processes only, never those of a command
that is still computing. Removing a record tags its runs ``taskreg.state=removing`` before the catalog
commit that deletes the rows, so a committed run that no catalog row references and that carries no such
mark is a record the catalog lost (``check`` reports it and never deletes it), not a leftover of ``rm``.

The registry's identity (a uuid, also stored in the catalog) is the tag ``taskreg.registry_id`` of the
``taskreg-tasks`` experiment: a catalog created anew beside an existing MLflow store does not match it.

A shared tracking server (issue 17): a registry created with ``taskreg init --tracking-uri http(s)://HOST:PORT``
(an ``mlflow server --serve-artifacts``, typically over PostgreSQL) keeps that URI in its catalog and every
:class:`Tracker` of it talks to the server instead (``remote``): runs, metrics, weight artifacts and registered
models live there, the fast paths over ``mlflow.db`` give way to the ``*_via_api`` reads, and a weight file is
named in the catalog as ``runs:/RUN_ID/weights/NAME.pt`` and read back through MLflow's artifact download into
``<root>/cache/artifacts/RUN_ID/`` (:meth:`Tracker.local_file`; the caller checks its sha256 as for a local file).
``MLFLOW_TRACKING_URI`` never applies: the URI is always passed to the client explicitly.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from taskreg.errors import TaskregError
from taskreg.registry.catalog import mlflow_store

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

EXPERIMENTS = ("tasks", "experts", "probes", "taskonomy", "model2vec")
ALIAS = "current"
REGISTRY_ID_TAG = "taskreg.registry_id"
# MLflow run kinds that stand for one catalog record: a committed run of these kinds that no catalog row
# references is either marked ``removing`` (an interrupted `rm`) or a record the catalog lost. Other
# kinds (pipeline stage logs) never have a row.
RECORD_RUN_KINDS = ("task_embedding", "expert", "probe", "task_network")


RUNS_SCHEME = "runs:/"


def check_tracking_uri(uri: str) -> str:
    """``uri`` without a trailing slash when it is an http(s)://HOST[:PORT][/PATH] address; else a one-line error."""
    from urllib.parse import urlparse

    parsed = urlparse(uri.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise TaskregError(f"--tracking-uri must be the http(s)://HOST:PORT address of an `mlflow server "
                           f"--serve-artifacts`, got {uri!r}")
    return uri.strip().rstrip("/")


def require_reachable(uri: str, timeout: float = 5.0) -> None:
    """One-line error unless the tracking server at ``uri`` answers its ``/health`` endpoint within ``timeout``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:  # noqa: S310 (http(s) only)
            if response.status == 200:
                return
            why = f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        why = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        why = str(getattr(e, "reason", e))
    raise TaskregError(f"tracking server {uri} is unreachable ({why}): start it or fix the registry's tracking URI")


class TrackingServerDown(TaskregError):
    """The tracking server stopped answering in the middle of a command (connection refused or lost, a timeout, a 5xx
    answer after MLflow's retries). Raised by every later call of the same :class:`Tracker` at once: a command does
    not wait out the retries again for its best-effort cleanup."""


def _server_failure(exc: BaseException) -> str | None:
    """Why ``exc`` (raised by an MLflow client call) means the server did not answer, in a few words; None when it is
    an answer (a missing run or model, a refused request), which callers handle as before."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return f"HTTP {status}" if status >= 500 else None
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
    elif isinstance(exc, MlflowException):
        text = str(exc.message)  # also a download's "failures occurred while downloading" naming such a request
        if "API request to " not in text:
            return None
        code = text.partition(" failed with error code ")[2][:3]
        if code.isdigit():
            return f"HTTP {code}" if int(code) >= 500 else None
        if " failed with timeout exception" in text:
            return "timed out"
        if " failed with exception " not in text:
            return None
    else:
        return None
    for needle, why in (("Connection refused", "connection refused"), ("RemoteDisconnected", "connection lost"),
                        ("Connection aborted", "connection lost"), ("Connection reset", "connection lost"),
                        ("Read timed out", "timed out"), ("ResponseError", "HTTP 5xx after retries"),
                        ("Max retries exceeded", "no answer after retries")):
        if needle in text:
            return why
    return "no answer"


class _ServerClient:
    """The ``MlflowClient`` of a tracking server, each of whose calls turns a server that does not answer into one
    :class:`TrackingServerDown` (instead of MLflow's exception with a traceback, or a caller mistaking it for a missing
    run); once that happened, every later call fails the same way at once."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self._client = client
        self._uri = uri
        self._down: TrackingServerDown | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._down is not None:
                raise TrackingServerDown(str(self._down))
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                why = _server_failure(exc)
                if why is None:
                    raise
                self._down = TrackingServerDown(
                    f"tracking server {self._uri} stopped answering ({why}): the command stopped and the catalog keeps "
                    "only what it had committed; once the server is back, `taskreg check` lists what the command left "
                    "there and `taskreg check --fix` clears it")
                raise TrackingServerDown(str(self._down)) from None

        return call


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class RunRef:
    run_id: str
    artifact_dir: Path  # local directory holding the run's artifacts (remote store: the run's local cache)
    artifact_uri: str = ""  # the run's artifact root as MLflow names it (set by start_run)


@dataclass(frozen=True)
class RunData:
    """What one MLflow run holds, for rebuilding its catalog record (``taskreg recover``)."""

    run_id: str
    name: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    artifact_dir: Path


class Tracker:
    """Thin wrapper over ``MlflowClient`` bound to one registry root (and its tracking server, when ``uri``)."""

    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.db = self.root / "mlflow.db"
        self.remote = uri is not None
        self.uri = check_tracking_uri(uri) if uri is not None else f"sqlite:///{self.db}"
        self.artifact_cache = self.root / "cache" / "artifacts"
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            if self.remote:  # fail in one line (not after MLflow's minutes of retries) when the server is down
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # two retries within ~2 s
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # stdout is the command's (--json)
                require_reachable(self.uri)
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            _quiet_mlflow()  # mlflow configures its loggers on import
            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self._client = cast("MlflowClient", _ServerClient(client, self.uri)) if self.remote else client
        return self._client

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            full = f"taskreg-{name}"
            exp = self.client.get_experiment_by_name(full)
            if exp is None and self.remote:  # the server's artifact root (mlflow-artifacts:/...)
                eid = self.client.create_experiment(full)
            elif exp is None:
                location = self.root / "artifacts" / name
                location.mkdir(parents=True, exist_ok=True)
                eid = self.client.create_experiment(full, artifact_location=location.as_uri())
            else:
                eid = exp.experiment_id
            self._experiments[name] = eid
        return self._experiments[name]

    def init(self, registry_id: str | None = None) -> None:
        """Create the tracking database and the experiments; record the registry's identity when given.

        MLflow gives its ``Default`` experiment an artifact location the first time it creates the database:
        through a plain client that is ``./mlruns`` of the current directory. The store is therefore created
        here with the registry's ``artifacts/`` as its artifact root, and an older registry's ``Default`` that
        points elsewhere is re-pointed, so nothing an MLflow user logs to it lands outside the registry.
        """
        if self.remote:
            for name in EXPERIMENTS:
                self.experiment_id(name)
            if registry_id is not None:
                self.set_registry_id(registry_id)
            return
        if not (self.root / "mlflow.db").exists():
            _quiet_mlflow()
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            _quiet_mlflow()  # mlflow configures its loggers on import
            store = SqlAlchemyStore(self.uri, (self.root / "artifacts").as_uri())
            store.engine.dispose()
        mlflow_store.repoint_default_experiment(self.root / "mlflow.db", self.root / "artifacts" / "0")
        for name in EXPERIMENTS:
            self.experiment_id(name)
        if registry_id is not None:
            self.set_registry_id(registry_id)

    def set_registry_id(self, registry_id: str) -> None:
        self.client.set_experiment_tag(self.experiment_id("tasks"), REGISTRY_ID_TAG, registry_id)

    # ------------------------------------------------------------------ runs
    def start_run(
        self, experiment: str, run_name: str, *, params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunRef:
        from mlflow.entities import Param

        all_tags = {"taskreg.state": "pending", "taskreg.owner": process_token(), **(tags or {})}
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=all_tags)
        rid = run.info.run_id
        if params:  # one call for all parameters
            self.client.log_batch(rid, params=[Param(key, str(value)[:6000]) for key, value in params.items()])
        if self.remote:
            return RunRef(rid, self.artifact_cache / rid, run.info.artifact_uri)
        return RunRef(rid, mlflow_store.local_path(run.info.artifact_uri), run.info.artifact_uri)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log ``metrics`` in one call (one timestamp for all)."""
        import time

        from mlflow.entities import Metric

        if not metrics:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])

    def artifact_dir(self, run_id: str) -> Path:
        """The local directory holding the artifacts of run ``run_id`` (remote store: all of them downloaded into
        the run's cache directory)."""
        if self.remote:
            target = self.artifact_cache / run_id
            target.mkdir(parents=True, exist_ok=True)
            self.client.download_artifacts(run_id, "", str(target))
            return target
        return mlflow_store.local_path(self.client.get_run(run_id).info.artifact_uri)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> Path:
        """Copy a local file into the run's artifacts; return the stored file's local path (remote store: the file
        is uploaded to the server and its copy kept in the run's cache directory)."""
        self.client.log_artifact(run_id, str(path), artifact_path)
        base = self.artifact_cache / run_id if self.remote else self.artifact_dir(run_id)
        stored = (base / artifact_path / Path(path).name) if artifact_path else base / Path(path).name
        if self.remote:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_name(f"{stored.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, stored)
        return stored

    def artifact_ref(self, run_id: str, stored: Path) -> str:
        """How the catalog names an artifact file :meth:`log_artifact` stored: its path relative to the registry
        root, or ``runs:/RUN_ID/PATH`` on a remote store."""
        if self.remote:
            return f"{RUNS_SCHEME}{run_id}/{stored.relative_to(self.artifact_cache / run_id).as_posix()}"
        return str(stored.relative_to(self.root))

    def local_file(self, ref: str, *, refresh: bool = False) -> Path:
        """The local file of an artifact named as :meth:`artifact_ref` does: ``<root>/REF``, or for ``runs:/`` its
        copy in the artifact cache, downloaded from the tracking server when missing (or ``refresh``). The path
        may not exist (a missing artifact); the caller checks the sha256 the catalog recorded."""
        if not ref.startswith(RUNS_SCHEME):
            return self.root / ref
        run_id, _, path = ref[len(RUNS_SCHEME):].partition("/")
        local = self.artifact_cache / run_id / path
        if local.is_file() and not refresh:
            return local
        from mlflow.exceptions import MlflowException

        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=self.artifact_cache) as tmp:
            try:
                got = Path(self.client.download_artifacts(run_id, path, tmp))
            except (MlflowException, OSError):
                return local if local.is_file() and not refresh else self._forget(local)
            os.replace(got, local)
        return local

    @staticmethod
    def _forget(local: Path) -> Path:
        local.unlink(missing_ok=True)
        return local

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def commit(self, run_id: str) -> None:
        """Mark a run as referenced by a committed catalog row."""
        self.client.set_tag(run_id, "taskreg.state", "committed")

    def mark_removing(self, run_id: str) -> None:
        """Mark the run of a record whose catalog rows are about to be deleted (before that commit)."""
        self.client.set_tag(run_id, "taskreg.state", "removing")

    def delete_run(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_run(run_id)
        except MlflowException:
            pass

    def run_state(self, run_id: str) -> str | None:
        """'committed', 'pending', 'removing', 'deleted' or None when the run does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage == "deleted":
            return "deleted"
        return run.data.tags.get("taskreg.state", "committed")

    def run_data(self, run_id: str) -> RunData:
        run = self.client.get_run(run_id)
        artifacts = self.artifact_dir(run_id) if self.remote else mlflow_store.local_path(run.info.artifact_uri)
        return RunData(run_id, run.info.run_name or "", int(run.info.start_time or 0), dict(run.data.tags),
                       dict(run.data.params), dict(run.data.metrics), artifacts)

    def pending_runs(self) -> list[str]:
        return list(self.runs_in_state("pending"))

    def runs_in_state(self, state: str) -> dict[str, dict[str, str]]:
        """run id -> tags of every active run tagged ``taskreg.state = state`` ('pending' or 'committed')."""
        ids = [self.experiment_id(n) for n in EXPERIMENTS]
        found: dict[str, dict[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs(
                ids, filter_string=f"tags.`taskreg.state` = '{state}'", max_results=1000, page_token=token
            )
            found.update({r.info.run_id: dict(r.data.tags) for r in page})
            token = page.token
            if not token:
                return found

    # ------------------------------------------------------------------ registered models
    def register(self, name: str, run: RunRef, artifact_path: str, tags: Mapping[str, str]) -> str:
        """Register the artifact directory of ``run`` as a new version of model ``name``; alias it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, tags=dict(tags))
        if self.remote:
            base = run.artifact_uri or self.client.get_run(run.run_id).info.artifact_uri
            source = f"{base.rstrip('/')}/{artifact_path}"
        else:
            source = (run.artifact_dir / artifact_path).as_uri()
        mv = self.client.create_model_version(name, source=source, run_id=run.run_id, tags=dict(tags))
        self.client.set_registered_model_alias(name, ALIAS, mv.version)
        return str(mv.version)

    def delete_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(name)
        except MlflowException:
            pass

    def registered_models(self) -> dict[str, dict[str, str]]:
        """Registered model name -> tags. Read straight from ``mlflow.db`` (10,000 models: ~20 s through the
        MLflow client on a loaded 2-core machine, well under a second this way); through the client when
        the schema is not the expected one."""
        if self.remote:
            return self.registered_models_via_api()
        models = mlflow_store.registered_model_tags(self.db)
        return self.registered_models_via_api() if models is None else models

    def registered_models_via_api(self) -> dict[str, dict[str, str]]:
        models: dict[str, dict[str, str]] = {}
        token = None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            models.update({m.name: dict(m.tags) for m in page})
            token = page.token
            if not token:
                return models

    def model_version(self, name: str, run_id: str) -> str | None:
        """The version of registered model ``name`` made from ``run_id`` (None: there is none)."""
        for mv in self.client.search_model_versions(f"name = '{name}'"):
            if mv.run_id == run_id:
                return str(mv.version)
        return None

    def model_runs(self, name: str | None = None) -> dict[str, set[str]]:
        """Registered model name -> the run ids of its versions (only ``name`` when given), read like
        :meth:`run_states`; through the client when the schema differs."""
        out = None if self.remote else mlflow_store.model_version_runs(self.db, name)
        if out is None:
            runs = self.model_runs_via_api()
            return runs if name is None else {k: v for k, v in runs.items() if k == name}
        return out

    def model_runs_via_api(self) -> dict[str, set[str]]:
        runs: dict[str, set[str]] = {}
        token = None
        while True:
            page = self.client.search_model_versions(max_results=1000, page_token=token)
            for mv in page:
                runs.setdefault(mv.name, set()).update([mv.run_id] if mv.run_id else [])
            token = page.token
            if not token:
                return runs

    # ------------------------------------------------------------------ the whole store at once
    def run_states(self) -> RunStates:
        """The state and tags of every run of the registry's experiments.

        One read-only query on ``mlflow.db`` instead of a ``get_run`` per catalog row: 10,000 runs in
        well under a second, where MLflow's ORM spends ~1 ms a run (and seconds on its import). When
        the tracking schema is not the expected one, one paged ``search_runs`` gives the same answer.
        """
        runs = None if self.remote else mlflow_store.run_tags(self.db, [f"taskreg-{name}" for name in EXPERIMENTS])
        if runs is None:
            return self.run_states_via_api()
        states = {r: "deleted" if stage == "deleted" else runs.tags[r].get("taskreg.state", "committed")
                  for r, stage in runs.stages.items()}
        return RunStates(states, runs.tags)

    def run_states_via_api(self) -> RunStates:
        from mlflow.entities import ViewType

        ids = [self.experiment_id(name) for name in EXPERIMENTS]
        out = RunStates({}, {})
        token = None
        while True:
            page = self.client.search_runs(ids, run_view_type=ViewType.ALL, max_results=5000, page_token=token)
            for run in page:
                deleted = run.info.lifecycle_stage == "deleted"
                out.states[run.info.run_id] = "deleted" if deleted else run.data.tags.get("taskreg.state", "committed")
                out.tags[run.info.run_id] = dict(run.data.tags)
            token = page.token
            if not token:
                return out

    def stored_registry_id(self) -> str | None:
        """The registry id recorded in ``mlflow.db`` (read-only, no MLflow import), or on the tracking server; None
        when there is none."""
        if self.remote:
            exp = self.client.get_experiment_by_name("taskreg-tasks")
            return None if exp is None else exp.tags.get(REGISTRY_ID_TAG)
        return stored_registry_id(self.db)

    def store_summary(self) -> StoreSummary | None:
        """What ``mlflow.db`` (or the tracking server) holds, read-only (see :func:`store_summary`); None when it is
        not an MLflow store."""
        if self.remote:
            return self.store_summary_via_api()
        return store_summary(self.db)

    def store_summary_via_api(self) -> StoreSummary:
        """:meth:`store_summary` through the client: the taskreg experiments' active runs by (state, kind), and the
        registered models (all of the server's: a tracking server holds one registry)."""
        ids = [exp.experiment_id for name in EXPERIMENTS
               if (exp := self.client.get_experiment_by_name(f"taskreg-{name}")) is not None]
        runs: dict[tuple[str, str], int] = {}
        token = None
        while ids:
            page = self.client.search_runs(ids, max_results=5000, page_token=token)
            for run in page:
                key = (run.data.tags.get("taskreg.state", "committed"), run.data.tags.get("taskreg.kind", ""))
                runs[key] = runs.get(key, 0) + 1
            token = page.token
            if not token:
                break
        return StoreSummary(self.stored_registry_id(), runs, len(self.registered_models_via_api()))

    def recorded_root(self) -> Path | None:
        """The registry root that ``mlflow.db`` was created under (None on a remote store: nothing to relocate)."""
        if self.remote:
            return None
        location = mlflow_store.tasks_artifact_location(self.db)
        return None if location is None else mlflow_store.local_path(location).parent.parent  # <root>/artifacts/tasks

    def relocate(self, to: Path | None = None) -> bool:
        """Point the absolute artifact locations in ``mlflow.db`` at ``to`` (default: this tracker's root, the
        final root of a copy being staged elsewhere otherwise) when they name another root (the registry was
        moved, copied or restored); returns whether anything changed. One sqlite transaction; the caller
        holds the registry lock or owns the directory alone."""
        target = self.root if to is None else Path(to)
        recorded = self.recorded_root()
        if recorded is None or recorded == target:
            return False
        old, new = str(recorded).rstrip("/") + "/", str(target).rstrip("/") + "/"
        mlflow_store.replace_location_prefix(self.db, old, new)
        return True

    def copy_store(self, dest: Path) -> None:
        """A transactionally consistent copy of this ``mlflow.db`` as ``dest`` (a new file; sqlite's online backup
        API, so a concurrent MLflow reader or writer never leaves a torn copy). Refused on a remote store."""
        if self.remote:
            raise TaskregError(f"the MLflow store of this registry is the tracking server {self.uri}: it cannot be "
                               "copied from here (back up the server's database and artifact store there)")
        mlflow_store.copy_database(self.db, dest)


@dataclass(frozen=True)
class RunStates:
    """Every run of the registry's experiments: run id -> 'committed' | 'pending' | 'removing' | 'deleted',
    and run id -> its tags."""

    states: dict[str, str]
    tags: dict[str, dict[str, str]]


@dataclass(frozen=True)
class StoreSummary:
    """What a registry's ``mlflow.db`` holds, read without MLflow (see :func:`store_summary`)."""

    registry_id: str | None
    runs: dict[tuple[str, str], int]  # (taskreg.state, taskreg.kind) -> active runs of the taskreg experiments
    models: int  # registered models

    def committed_records(self) -> dict[str, int]:
        """Record kind -> committed runs of that kind (each stands for a catalog record)."""
        out: dict[str, int] = {}
        for (state, kind), n in self.runs.items():
            if state == "committed" and kind in RECORD_RUN_KINDS:
                out[kind] = out.get(kind, 0) + n
        return out

    def holds_registry(self) -> bool:
        """Whether a catalog has existed for this store: its identity, any run or any registered model."""
        return self.registry_id is not None or sum(self.runs.values()) > 0 or self.models > 0

    def describe(self) -> str:
        """E.g. '4 committed runs (1 probe, 2 task_embedding, 1 expert) and 1 registered model'."""
        records = self.committed_records()
        n = sum(records.values())
        parts = [f"{n} committed record run{'s' * (n != 1)}"
                 + (f" ({', '.join(f'{v} {k}' for k, v in sorted(records.items()))})" if records else "")]
        other = sum(self.runs.values()) - n
        if other:
            parts.append(f"{other} other run{'s' * (other != 1)}")
        parts.append(f"{self.models} registered model{'s' * (self.models != 1)}")
        return ", ".join(parts[:-1]) + " and " + parts[-1]


def stored_registry_id(db: Path) -> str | None:
    """The registry id recorded in ``mlflow.db`` (read-only, no MLflow import); None when there is none."""
    return mlflow_store.registry_id(db, REGISTRY_ID_TAG)


def store_summary(db: Path) -> StoreSummary | None:
    """Identity, run counts and registered models of ``mlflow.db``, read-only through sqlite (no MLflow import,
    nothing written); None when there is no such file or it is not an MLflow store."""
    counts = mlflow_store.store_counts(db, REGISTRY_ID_TAG)
    return None if counts is None else StoreSummary(counts.registry_id, counts.runs, counts.models)


def process_token(pid: int | None = None) -> str:
    """``host:pid:start`` naming a process; the start time (Linux) guards against a reused pid."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def process_alive(token: str) -> bool:
    """Whether the process named by :func:`process_token` still runs. Another host's process (or a token
    that cannot be parsed) counts as alive: nothing of it is ever cleaned up from here."""
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return _start_time(pid) == start and _stat_fields(pid)[:1] != ["Z"]  # a zombie has already died


def _stat_fields(pid: int) -> list[str]:
    """Fields 3... of /proc/PID/stat (state, ppid, ...), empty where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return []


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else ""  # field 22: start time in clock ticks since boot
