"""Tasks: embed and register datasets, show and remove them, distances and neighbours.

Every mutating operation follows the write protocol of :mod:`taskreg.registry.runs` (pending run, one
catalog transaction under the lock, commit tag, index).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taskreg import data as datasets
from taskreg.embedders.task_jobs import DataInfo, cache_name, embedding_arrays, embedding_from_arrays
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.array_cache import load_arrays, save_arrays
from taskreg.registry.core import Core
from taskreg.registry.index import IndexManager, search
from taskreg.registry.names import check_name
from taskreg.registry.probes import ProbeService
from taskreg.registry.runs import after_commit, marking_removal, pending_run
from taskreg.registry.tracking import RunRef

if TYPE_CHECKING:
    import duckdb

    from taskreg.embedders.task_embedding import TaskEmbedding

METHODS = ("montecarlo", "variational")


@dataclass(frozen=True)
class TaskCommit:
    """One computed embedding to store as a task (:meth:`TaskService.commit_tasks`)."""

    name: str
    data: DataInfo
    method: str
    max_samples: int | None
    seed: int
    emb: TaskEmbedding


@dataclass(frozen=True)
class Neighbor:
    name: str
    distance: float
    domain: str


class TaskService:
    """The tasks of one registry: their records, Task2Vec and domain embeddings, distances."""

    def __init__(self, core: Core, index_manager: IndexManager, probes: ProbeService) -> None:
        self.core = core
        self.index_manager = index_manager
        self.probes = probes

    def list_tasks(self, *, limit: int | None = None) -> list[catalog.TaskRecord]:
        with self.core.read() as con:
            return catalog.list_tasks(con, limit=limit)

    def count_tasks(self) -> int:
        with self.core.read() as con:
            return catalog.count_tasks(con)

    def get_task(self, name: str) -> catalog.TaskRecord:
        with self.core.read() as con:
            rec = catalog.get_task(con, name)
        if rec is None:
            raise TaskregError(f"unknown task {name!r} (see `taskreg task list`)")
        return rec

    def show_task(self, name: str) -> dict[str, Any]:
        rec = self.get_task(name)
        with self.core.read() as con:
            embeddings = catalog.task_embedding_infos(con, rec.id)
            results = catalog.task_results(con, rec.id)
        return {
            **asdict(rec),
            "embeddings": [asdict(e) for e in embeddings],
            "expert_errors": [{"expert": e, "test_error": err} for e, err in results],
        }

    def remove_task(self, name: str) -> None:
        rec = self.get_task(name)
        with self.core.lock(), marking_removal(self.core.tracker) as mark, self.core.write() as con:
            if not catalog.task_exists(con, rec.id):
                raise TaskregError(f"unknown task {name!r} (removed meanwhile)")
            runs, kinds = catalog.task_run_ids(con, rec.id), catalog.task_vector_kinds(con, rec.id)
            mark(runs)
            catalog.delete_task(con, rec.id)
            for kind in kinds:
                catalog.bump_generation(con, kind)
        for kind in kinds:  # drop the vector from the saved index; a rebuild only when that index is not current
            self.index_manager.remove(kind, np.array([rec.id], dtype=np.int64))
        with after_commit(f"task {name} is removed"):
            for run_id in runs:
                self.core.tracker.delete_run(run_id)

    # ------------------------------------------------------------------ tasks
    def embed_dataset(self, ds: datasets.Dataset, *, probe: str | catalog.ProbeRecord | None = None,
                      method: str = "montecarlo",
                      max_samples: int | None = 1000, seed: int = 0, device: str = "cpu",
                      progress: Progress = None) -> tuple[catalog.ProbeRecord, TaskEmbedding, np.ndarray]:
        """Embed a dataset with a registered probe: (probe record, Task2Vec embedding, domain embedding).

        Cached in ``cache/task2vec`` by probe weights, input size, dataset fingerprint, method, sample size, seed
        and device type, so ranking one query with several methods (or registering a dataset after querying with
        it) embeds it once.

        The domain embedding (mean probe features) comes from the Task2Vec features pass, on the same
        class-balanced subsample of ``max_samples`` images: no second pass over the data. ``probe``: a name (None:
        the default probe), or a record whose weights the caller has just checked (``ProbeService.check_weights``).
        """
        from taskreg.devices import device_type

        if method not in METHODS:
            raise TaskregError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        rec = probe if isinstance(probe, catalog.ProbeRecord) else self.probes.checked_probe(probe)
        dev = device_type(device)  # a GPU's result may differ from the CPU's in the last bits
        path = self.core.cache_dir / "task2vec" / cache_name(rec.sha256, rec.input_size, ds.fingerprint(), method,
                                                             max_samples, seed, dev)
        emb = embedding_from_arrays(load_arrays(path))
        if emb is None:  # only now torch and the probe's network: a cached query needs neither
            from taskreg.embedders.task2vec import embed

            _, model, spec = self.probes.load_checked_probe(rec)
            emb = embed(model, spec, ds.x, ds.y, method=method, max_samples=max_samples, seed=seed, device=device,
                        progress=progress)
            save_arrays(self.core, path, embedding_arrays(emb))
        assert emb.mean_features is not None
        return rec, emb, emb.mean_features

    def add_task(
        self, name: str, source: str, *, probe: str | None = None, method: str = "montecarlo",
        max_samples: int | None = 1000, seed: int = 0, device: str = "cpu", progress: Progress = None,
        dataset: datasets.Dataset | None = None,
    ) -> catalog.TaskRecord:
        """Validate the data, embed it, and store task + vectors (catalog, MLflow run, index) in one step.

        Adding an existing task again with another probe or method adds that embedding; the source must match.
        """
        check_name(name, "task name")
        ds = dataset if dataset is not None else datasets.load(source)
        existing = self._existing_task(name, ds)
        prec = self.probes.resolve_probe(probe)
        if existing is not None:
            with self.core.read() as con:
                have = catalog.has_embedding(con, existing.id, prec.name, method)
            if have:
                raise TaskregError(f"task {name!r} already has a {method} embedding with probe {prec.name}")
        rec, emb, _ = self.embed_dataset(ds, probe=prec.name, method=method, max_samples=max_samples, seed=seed,
                                         device=device, progress=progress)
        return self.commit_task(name, DataInfo.of(ds), rec, method=method, max_samples=max_samples, seed=seed,
                                emb=emb)

    def commit_task(self, name: str, data: DataInfo, rec: catalog.ProbeRecord, *, method: str,
                    max_samples: int | None, seed: int, emb: TaskEmbedding) -> catalog.TaskRecord:
        """Store one computed embedding of ``data`` as task ``name``: :meth:`commit_tasks` with a batch of one."""
        return self.commit_tasks(rec, [TaskCommit(name, data, method, max_samples, seed, emb)])[0]

    def commit_tasks(self, rec: catalog.ProbeRecord, items: Sequence[TaskCommit]) -> list[catalog.TaskRecord]:
        """Store computed embeddings (made with probe ``rec``) as tasks, created where new; all or nothing for the
        whole batch: one MLflow run per item, the catalog rows of every item (its Task2Vec vector and, unless the
        task has it, its domain vector ``emb.mean_features``) in one transaction, then one index update per vector
        kind. Refused (nothing written; TaskregError naming the task) if a task exists meanwhile with other data or
        already has that embedding. Used by :meth:`add_task` (a batch of one) and by ``task add-many``'s driver.
        Returns the tasks' records, in the order of ``items``."""
        if not items:
            return []
        added: dict[str, tuple[list[int], list[np.ndarray]]] = {}  # vector kind -> the ids and vectors added to it
        with contextlib.ExitStack() as runs_stack:  # a failure deletes every run of the batch
            runs = [runs_stack.enter_context(self._logged_run(rec, item)) for item in items]
            with self.core.write() as con:
                for item, run in zip(items, runs, strict=True):
                    self._insert_embedding(con, rec, item, run, added)
                for kind in added:
                    catalog.bump_generation(con, kind)
        done = (f"task {items[0].name} ({items[0].method}) is" if len(items) == 1 else
                f"{len(items)} tasks ({items[0].name} ... {items[-1].name}) are")
        with after_commit(f"{done} registered"):  # a server that stops here: the index is rebuilt on the next open
            for run in runs:
                self.core.tracker.commit(run.run_id)
        for kind, (ids, vecs) in added.items():  # append to the index on disk; a rebuild only when it is not current
            self.index_manager.add(kind, np.array(ids, dtype=np.int64), np.stack(vecs))
        with self.core.session():
            return [self.get_task(item.name) for item in items]

    @contextlib.contextmanager
    def _logged_run(self, rec: catalog.ProbeRecord, item: TaskCommit) -> Iterator[RunRef]:
        """The pending MLflow run of one embedding: its parameters (all a rebuild needs), metrics and vectors."""
        emb, data = item.emb, item.data
        params = {"task": item.name, "source": data.source, "probe": rec.name, "arch": rec.arch,
                  "method": item.method, "max_samples": item.max_samples, "seed": item.seed,
                  "n_samples": emb.n_samples, "n_classes": data.n_classes, "fingerprint": data.fingerprint,
                  "domain": data.domain, "dataset_size": data.n}
        tags = {"taskreg.kind": "task_embedding"}
        with pending_run(self.core, "tasks", f"task-{item.name}-{item.method}", params, tags) as run:
            norm = float(np.linalg.norm(emb.vector))
            self.core.tracker.log_metrics(run.run_id, {"norm": norm, "seconds": emb.seconds,
                                                       "head_train_accuracy": emb.head_train_accuracy})
            with tempfile.TemporaryDirectory() as tmp:
                assert emb.mean_features is not None
                np.save(Path(tmp) / "task2vec.npy", emb.vector)
                np.save(Path(tmp) / "domain.npy", emb.mean_features)
                for f in ("task2vec.npy", "domain.npy"):
                    self.core.tracker.log_artifact(run.run_id, Path(tmp) / f, "vectors")
            yield run

    def _insert_embedding(self, con: duckdb.DuckDBPyConnection, rec: catalog.ProbeRecord, item: TaskCommit,
                          run: RunRef, added: dict[str, tuple[list[int], list[np.ndarray]]]) -> None:
        """Inside the write transaction: the task's row (if new) and its embedding rows; records in ``added`` the
        vectors each index kind gains."""
        name, data, emb, dom = item.name, item.data, item.emb, item.emb.mean_features
        assert dom is not None
        existing = catalog.get_task(con, name)  # again: another process may have added or removed it
        if existing is None:
            task_id = catalog.insert_task(con, name=name, source=data.source, domain=data.domain, n_samples=data.n,
                                          n_classes=data.n_classes, fingerprint=data.fingerprint)
        else:
            task_id = existing.id
            if existing.fingerprint != data.fingerprint:
                raise TaskregError(f"task {name!r} already exists with different data ({existing.source})")
            if catalog.has_embedding(con, task_id, rec.name, item.method):
                raise TaskregError(f"task {name!r} already has a {item.method} embedding with probe {rec.name}")
        catalog.insert_embedding(con, task_id, rec.name, item.method, emb.vector, emb.n_samples, item.seed,
                                 emb.seconds, run.run_id)
        vectors = [(self.index_manager.kind("task", rec.name, item.method), emb.vector)]
        if not catalog.has_embedding(con, task_id, rec.name, "domain"):
            catalog.insert_embedding(con, task_id, rec.name, "domain", dom, emb.n_samples, item.seed, None,
                                     run.run_id)
            vectors.append((self.index_manager.kind("task", rec.name, "domain"), dom))
        for kind, vec in vectors:
            ids, vecs = added.setdefault(kind, ([], []))
            ids.append(task_id)
            vecs.append(vec)

    def _existing_task(self, name: str, ds: datasets.Dataset) -> catalog.TaskRecord | None:
        with self.core.read() as con:
            existing = catalog.get_task(con, name)
        if existing is not None and existing.fingerprint != ds.fingerprint():
            raise TaskregError(f"task {name!r} already exists with different data ({existing.source})")
        return existing

    # ------------------------------------------------------------------ vectors and distances
    def task_vectors(self, probe: str, method: str, names: Sequence[str] | None = None) -> tuple[
        list[str], np.ndarray
    ]:
        """Names and (N, D) vectors of the tasks embedded with ``probe``/``method`` (all, or ``names``)."""
        if names is not None and not names:
            return [], np.zeros((0, 0), dtype=np.float32)
        with self.core.read() as con:
            rows = catalog.task_vectors(con, probe, method, names)
        found = dict(rows)
        if names is None:
            names = list(found)
        missing = [n for n in names if n not in found]
        if missing:
            raise TaskregError(f"no {method} embedding with probe {probe} for task(s): {', '.join(missing)}")
        if not names:
            return [], np.zeros((0, 0), dtype=np.float32)
        return list(names), np.stack([found[n] for n in names])

    def task_vector(self, name: str, probe: str | None = None, method: str = "montecarlo") -> np.ndarray:
        self.get_task(name)
        prec = self.probes.resolve_probe(probe)
        return self.task_vectors(prec.name, method, [name])[1][0]

    def task_distance(self, a: str, b: str, *, asym: bool = False, probe: str | None = None,
                      method: str = "montecarlo", alpha: float = 0.15) -> float:
        """d_sym(a, b), or d_asym(a → b) = d_sym(a, b) − α·d_sym(a, t0): transfer from source a to target b."""
        from taskreg.embedders.distances import d_asym, d_sym

        prec = self.probes.resolve_probe(probe)
        va, vb = self.task_vector(a, prec.name, method), self.task_vector(b, prec.name, method)
        if asym:  # distances.d_asym takes (target, source): the complexity term is the source's
            return float(d_asym(vb, va, self.probes.trivial(prec.name, method), alpha=alpha))
        return float(d_sym(va, vb))

    def neighbors(self, name: str, k: int = 5, *, probe: str | None = None, method: str = "montecarlo",
                  candidates: int = 50) -> list[Neighbor]:
        """The ``k`` tasks nearest to ``name``: Faiss cosine candidates, re-ranked exactly by d_sym."""
        from taskreg.embedders.distances import d_sym_many

        if k < 1:
            raise TaskregError(f"-k must be at least 1, got {k}")
        prec = self.probes.resolve_probe(probe)
        query = self.task_vector(name, prec.name, method)
        index = self.index_manager.get(self.index_manager.kind("task", prec.name, method))
        if index is None:
            return []
        ids, _ = search(index, query, max(candidates, 4 * k) + 1)
        with self.core.read() as con:
            rows = catalog.task_vectors_by_id(con, prec.name, method, ids.tolist())
        rows = [r for r in rows if r[1] != name]
        if not rows:
            return []
        dist = d_sym_many(query, np.stack([r[3] for r in rows]))
        order = np.argsort(dist, kind="stable")[:k]
        return [Neighbor(rows[i][1], float(dist[i]), rows[i][2]) for i in order]

    def distance_matrix(self, *, probe: str | None = None, method: str = "montecarlo",
                        names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
        """All pairwise d_sym among the embedded tasks: (names, (N, N) matrix, domains)."""
        from taskreg.embedders.distances import pairwise_sym

        prec = self.probes.resolve_probe(probe)
        names, vecs = self.task_vectors(prec.name, method, names)
        if len(names) < 2:
            raise TaskregError(f"need at least 2 tasks embedded with {prec.name}/{method}, have {len(names)}")
        domains = {t.name: t.domain for t in self.list_tasks()}
        return names, pairwise_sym(vecs), [domains[n] for n in names]


    def task_data(self, rec: catalog.TaskRecord) -> datasets.Dataset:
        """Reload a registered task's data from its source and check it is still the same data."""
        ds = datasets.load(rec.source)
        if ds.fingerprint() != rec.fingerprint:
            raise TaskregError(f"task {rec.name}: the data at {rec.source} changed since it was registered")
        return ds
