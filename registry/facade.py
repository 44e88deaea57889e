"""The public :class:`Registry`: one core and one service object per concern, behind a thin facade.

::

    Registry
     ├─ core          Core: root, lock, catalog connections, tracker (MLflow), index store   (core.py)
     ├─ index_manager IndexManager: rebuild / repair / append / remove Faiss indexes         (index.py)
     ├─ probes        ProbeService(core)                                                     (probes.py)
     ├─ tasks         TaskService(core, index_manager, probes)                               (tasks.py)
     ├─ experts       ExpertService(core, index_manager, probes, tasks): records, adding     (experts.py)
     ├─ evaluator     ExpertEvaluator(core, experts, tasks): features, results               (expert_evaluation.py)
     ├─ model2vec     Model2VecFitter(expert_side): fit Model2Vec                             (model2vec_fitting.py)
     ├─ selection     SelectionService(expert_side, model2vec): select                       (expert_selection.py)
     ├─ policies      PolicyService(core): affinity sets, win rates, policies                (policies.py)
     ├─ taskonomy     TaskonomyPipeline(core, experts)                                       (taskonomy_pipeline.py)
     ├─ maintenance   Maintenance(core, index_manager): check, check --fix                   (maintenance.py)
     ├─ zoo           ZooService(probes, experts): packaged pretrained models                (zoo.py)
     └─ recovery      Recovery(core, index_manager): recover                                 (recovery.py)

``expert_side`` is an :class:`~taskreg.registry.expert_side.ExpertSide` (core, index_manager, probes, tasks,
experts, evaluator), built once here for the two services that share those collaborators. Each service receives its
collaborators in its constructor and declares its state there; no service inherits from another. The facade's
methods (``reg.add_task(...)``, ``reg.select(...)``, ...) are one-line delegations to the services; opening, creating
and restoring a registry live here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskreg.errors import TaskregError
from taskreg.registry import backup as backups
from taskreg.registry import catalog
from taskreg.registry.core import Core, default_root
from taskreg.registry.damage import RECOVERY, Unaccounted, missing_catalog, unaccounted
from taskreg.registry.expert_evaluation import ExpertEvaluator
from taskreg.registry.expert_selection import SelectionService
from taskreg.registry.expert_side import ExpertSide
from taskreg.registry.experts import ExpertService
from taskreg.registry.index import IndexManager
from taskreg.registry.maintenance import Maintenance
from taskreg.registry.model2vec_fitting import Model2VecFitter
from taskreg.registry.policies import PolicyService
from taskreg.registry.probes import ProbeService
from taskreg.registry.recovery import Recovery
from taskreg.registry.taskonomy_pipeline import TaskonomyPipeline
from taskreg.registry.tasks import TaskService
from taskreg.registry.tracking import check_tracking_uri
from taskreg.registry.zoo import ZooService


class _Delegate:
    """``name = _Delegate("service.method")``: ``reg.name`` is the bound method of the service (one-line
    delegation that keeps the service method's signature and docstring for ``help``)."""

    def __init__(self, path: str) -> None:
        self.service, self.method = path.split(".")

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.service), self.method)


class Registry:
    """The registry facade used by the CLI and by Python callers."""

    def __init__(self, root: Path | str) -> None:
        self.core = Core(Path(root))
        self.index_manager = IndexManager(self.core)
        self.probes = ProbeService(self.core)
        self.tasks = TaskService(self.core, self.index_manager, self.probes)
        self.experts = ExpertService(self.core, self.index_manager, self.probes, self.tasks)
        self.evaluator = ExpertEvaluator(self.core, self.experts, self.tasks)
        expert_side = ExpertSide(self.core, self.index_manager, self.probes, self.tasks, self.experts, self.evaluator)
        self.model2vec = Model2VecFitter(expert_side)
        self.selection = SelectionService(expert_side, self.model2vec)
        self.policies = PolicyService(self.core)
        self.taskonomy = TaskonomyPipeline(self.core, self.experts)
        self.maintenance = Maintenance(self.core, self.index_manager)
        self.recovery = Recovery(self.core, self.index_manager)
        self.zoo = ZooService(self.probes, self.experts)

    # ------------------------------------------------------------------ the core
    @property
    def root(self) -> Path:
        return self.core.root

    @property
    def catalog_path(self) -> Path:
        return self.core.catalog_path

    @property
    def cache_dir(self) -> Path:
        return self.core.cache_dir

    @property
    def tracker(self) -> Any:
        return self.core.tracker

    @property
    def indexes(self) -> Any:
        return self.core.indexes

    @property
    def damage(self) -> str | None:
        """What is wrong with a registry opened with ``damaged_ok`` (None: nothing)."""
        return self.core.damage

    @property
    def read_only(self) -> bool:
        return self.core.read_only

    require_write_access = _Delegate("core.require_write_access")
    lock = _Delegate("core.lock")
    read = _Delegate("core.read")
    write = _Delegate("core.write")
    sql = _Delegate("core.sql")

    # ------------------------------------------------------------------ indexes
    kind = staticmethod(IndexManager.kind)
    catalog_kinds = _Delegate("index_manager.catalog_kinds")
    index = _Delegate("index_manager.get")
    rebuild_index = _Delegate("index_manager.rebuild")
    add_to_index = _Delegate("index_manager.add")
    remove_from_index = _Delegate("index_manager.remove")
    rebuild_indexes = _Delegate("index_manager.rebuild_all")
    compact_indexes = _Delegate("index_manager.compact_all")
    index_problems = _Delegate("index_manager.problems")
    repair_indexes = _Delegate("index_manager.repair")

    # ------------------------------------------------------------------ probes
    resolve_probe = _Delegate("probes.resolve_probe")
    load_probe = _Delegate("probes.load_probe")
    list_probes = _Delegate("probes.list_probes")
    train_probe = _Delegate("probes.train_probe")
    add_probe = _Delegate("probes.add_probe")
    trivial = _Delegate("probes.trivial")

    # ------------------------------------------------------------------ the model zoo
    list_zoo = _Delegate("zoo.list")
    add_zoo_model = _Delegate("zoo.add")

    # ------------------------------------------------------------------ tasks
    list_tasks = _Delegate("tasks.list_tasks")
    count_tasks = _Delegate("tasks.count_tasks")
    get_task = _Delegate("tasks.get_task")
    show_task = _Delegate("tasks.show_task")
    remove_task = _Delegate("tasks.remove_task")
    embed_dataset = _Delegate("tasks.embed_dataset")
    add_task = _Delegate("tasks.add_task")
    task_vectors = _Delegate("tasks.task_vectors")
    task_vector = _Delegate("tasks.task_vector")
    task_distance = _Delegate("tasks.task_distance")
    neighbors = _Delegate("tasks.neighbors")
    distance_matrix = _Delegate("tasks.distance_matrix")
    task_data = _Delegate("tasks.task_data")

    # ------------------------------------------------------------------ experts
    list_experts = _Delegate("experts.list_experts")
    get_expert = _Delegate("experts.get_expert")
    show_expert = _Delegate("experts.show_expert")
    remove_expert = _Delegate("experts.remove_expert")
    load_expert = _Delegate("experts.load_expert")
    add_expert = _Delegate("experts.add_expert")
    train_expert = _Delegate("experts.train_expert")
    expert_features = _Delegate("evaluator.expert_features")
    evaluate = _Delegate("evaluator.evaluate")
    results_matrix = _Delegate("evaluator.results_matrix")
    fit_model2vec = _Delegate("model2vec.fit")
    model2vec_fitted = _Delegate("model2vec.fitted")
    select = _Delegate("selection.select")

    # ------------------------------------------------------------------ affinity sets, win rates, policies
    affinity_names = _Delegate("policies.affinity_names")
    affinity = _Delegate("policies.affinity")
    import_affinity = _Delegate("policies.import_affinity")
    remove_affinity = _Delegate("policies.remove_affinity")
    policy = _Delegate("policies.policy")
    winrates = _Delegate("policies.winrates")
    first_order_winrates = _Delegate("policies.first_order_winrates")

    # ------------------------------------------------------------------ the Taskonomy pipeline
    dictionary_ref = _Delegate("taskonomy.dictionary_ref")
    taskonomy_build = _Delegate("taskonomy.taskonomy_build")
    compute_winrates = _Delegate("taskonomy.compute_winrates")
    affinities_from_winrates = _Delegate("taskonomy.affinities_from_winrates")
    taskonomy_add_target = _Delegate("taskonomy.taskonomy_add_target")
    register_task_network_experts = _Delegate("taskonomy.register_task_network_experts")

    # ------------------------------------------------------------------ maintenance
    check = _Delegate("maintenance.check")
    recover = _Delegate("recovery.recover")

    def unaccounted(self) -> Unaccounted:
        """Committed records MLflow holds that the catalog does not (see registry/damage.py)."""
        return unaccounted(self.core)

    def backup(self, dest: Path | str) -> Path:
        """Write a consistent copy of the registry into ``dest`` (see :func:`taskreg.registry.backup.backup`)."""
        if self.core.snapshot:
            raise TaskregError(f"{self.root} is a snapshot (taskreg export): copy its directory to back it up")
        return backups.backup(self.core, dest)

    def export(self, dest: Path | str, *, with_experts: bool = False) -> Path:
        """Write a read-only snapshot for readers elsewhere (see :func:`taskreg.registry.snapshot.export`)."""
        from taskreg.registry.snapshot import export

        if self.core.snapshot:
            raise TaskregError(f"{self.root} is itself a snapshot: export from the registry it came from")
        return export(self.core, dest, with_experts=with_experts)

    @classmethod
    def restore(cls, backup: Path | str, root: Path | str | None = None, *, force: bool = False,
                announce: Callable[[Path], None] | None = None) -> Registry:
        """Restore a directory written by :meth:`backup` as the registry ``root`` and open it
        (see :func:`taskreg.registry.backup.restore`)."""
        return cls.open(backups.restore(backup, root, force=force, announce=announce))

    # ------------------------------------------------------------------ open / init
    @classmethod
    def init(cls, root: Path | str | None = None, *, tracking_uri: str | None = None) -> Registry:
        """Create (or upgrade) a registry at ``root``; idempotent on a healthy registry.

        Refuses, changing nothing, a directory whose ``mlflow.db`` holds a registry but whose catalog is
        missing or empty, and a registry whose catalog lost records that MLflow still holds: that is a
        damaged registry, not a new one (see the module docstring).

        ``tracking_uri`` (http(s)://HOST:PORT of an ``mlflow server --serve-artifacts``): the new registry keeps its
        runs, weights and registered models on that server, a setting recorded in the catalog that every later
        open uses. An existing registry keeps the store it was created with (refused when ``tracking_uri`` names
        another), and a server that already holds a registry's runs or models is refused.
        """
        uri = check_tracking_uri(tracking_uri) if tracking_uri is not None else None
        reg = cls(Path(root) if root is not None else default_root())
        if reg.root.exists() and not reg.root.is_dir():
            raise TaskregError(f"{reg.root} exists and is not a directory")
        reg.require_write_access("init")
        if reg.core.catalog_state()[0] > 0:
            current = reg.core.tracking_uri()
            if uri is not None and uri != current:
                raise TaskregError(f"registry {reg.root} keeps its MLflow store in {current or 'mlflow.db'}: "
                                   f"--tracking-uri {uri} cannot move an existing registry")
            reg = cls.open(reg.root)
            lost = unaccounted(reg.core)
            if lost:
                raise TaskregError(f"the catalog lost records: {lost.describe()}: a damaged registry, not a new one; "
                                   f"{RECOVERY}")
            reg.tracker.init()
            return reg
        store = reg.tracker.store_summary()
        if store is not None and store.holds_registry():
            raise TaskregError(missing_catalog(store))
        if uri is not None:
            reg.core.use_tracking_server(uri)
            server = reg.tracker.store_summary()  # one-line error when the server is unreachable
            if server is not None and server.holds_registry():
                raise TaskregError(f"tracking server {uri} already holds "
                                   f"{'registry ' + server.registry_id if server.registry_id else 'taskreg runs'} "
                                   f"({server.describe()}): a tracking server serves one registry")
        for sub in ("artifacts", "index", "cache"):
            (reg.root / sub).mkdir(parents=True, exist_ok=True)
        registry_id = uuid.uuid4().hex
        with reg.write(transactional=False) as con:
            catalog.migrate(con)
            catalog.set_registry_id(con, registry_id)
            if uri is not None:
                catalog.set_tracking_uri(con, uri)
        reg.tracker.init(registry_id)  # after the catalog: an MLflow identity always had a catalog first
        return reg

    @classmethod
    def open_on_server(cls, root: Path | str | None, tracking_uri: str) -> Registry:
        """Open, for ``recover``, a registry whose MLflow store is the tracking server ``tracking_uri`` although its
        catalog (the only place that names the server) is lost: opened damaged, bound to that server. A directory
        whose catalog exists must name the same server (then it is :meth:`open` with ``damaged_ok``); a server that
        holds no registry has nothing to recover."""
        uri = check_tracking_uri(tracking_uri)
        reg = cls(Path(root) if root is not None else default_root())
        reg.require_write_access("recover")
        if reg.core.catalog_state()[0] > 0:
            current = reg.core.tracking_uri()
            if current != uri:
                raise TaskregError(f"registry {reg.root} keeps its MLflow store in {current or 'mlflow.db'}, not on "
                                   f"{uri}: run `taskreg recover` without --tracking-uri")
            return cls.open(reg.root, damaged_ok=True, write="recover")
        if (reg.root / "mlflow.db").exists():
            raise TaskregError(f"{reg.root} holds a local mlflow.db: its records are there, not on {uri}; run "
                               "`taskreg recover` without --tracking-uri")
        reg.core.use_tracking_server(uri)
        store = reg.tracker.store_summary()  # one line when the server is unreachable
        if store is None or not store.holds_registry():
            raise TaskregError(f"tracking server {uri} holds no taskreg registry: nothing to recover")
        reg.core.damage = missing_catalog(store)
        return reg

    @classmethod
    def open(cls, root: Path | str | None = None, *, repair_indexes: bool = True,
             write: str | None = None, damaged_ok: bool = False) -> Registry:
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
        with reg.core.session():  # the checks share one read-only catalog connection (a write closes it first)
            reg._settle(repair_indexes=repair_indexes, write=write, damaged_ok=damaged_ok)
        return reg

    def _settle(self, *, repair_indexes: bool, write: str | None, damaged_ok: bool) -> None:
        """:meth:`open`'s checks and upkeep on this registry (see there)."""
        version, mine = self.core.catalog_state()
        theirs = self.tracker.stored_registry_id()
        if version == 0:
            store = self.tracker.store_summary()
            if store is not None and store.holds_registry():
                self.core.damage = missing_catalog(store)
            elif not self.catalog_path.exists():
                raise TaskregError(f"no registry at {self.root} (run `taskreg init` or pass --registry DIR)")
        elif version > catalog.SCHEMA_VERSION:
            raise TaskregError(
                f"catalog schema version {version} is newer than this taskreg ({catalog.SCHEMA_VERSION})"
            )
        elif mine is not None and theirs is not None and mine != theirs:
            self.core.damage = (f"catalog.duckdb belongs to registry {mine} but mlflow.db to registry {theirs}: a "
                               f"catalog was created over another registry's MLflow store; {RECOVERY}")
        if write is not None:
            self.require_write_access(write)
        if self.damage is not None:
            if damaged_ok:
                return
            raise TaskregError(self.damage)
        read_only = self.read_only
        if version < catalog.SCHEMA_VERSION and read_only:
            raise TaskregError(f"registry {self.root} is read-only for this user and its catalog (schema version "
                               f"{version}) needs an upgrade to {catalog.SCHEMA_VERSION}: its owner must open it "
                               "once with this taskreg")
        if read_only:
            return
        recorded = self.tracker.recorded_root()
        if recorded is not None and recorded != self.root:
            with self.lock():  # the registry was copied or restored elsewhere: point MLflow at our artifacts
                self.tracker.relocate()
        if version < catalog.SCHEMA_VERSION:
            with self.write(transactional=False) as con:
                catalog.migrate(con)
        if mine is None or theirs is None:
            self.core.adopt_identity()
        if repair_indexes:
            self.repair_indexes()
