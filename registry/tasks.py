"""Probes and tasks: train/add probes, embed and register tasks, distances and neighbours.

Every mutating operation follows the same order so that it either completes or leaves nothing:
validate and compute everything first (no lock held), then log the MLflow run (tagged
``pending``), then commit the catalog rows in one DuckDB transaction under the registry lock, then
mark the run committed and refresh the index. A failure before the commit deletes the run; a crash
before it leaves only a pending run, which ``taskreg check --fix`` removes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.core import file_sha256
from taskreg.registry.index import search
from taskreg.registry.names import check_name
from taskreg.registry.records import RecordOps
from taskreg.registry.tracking import RunRef

if TYPE_CHECKING:
    from torch import nn

    from taskreg.embedders.probes import ProbeSpec
    from taskreg.embedders.task2vec import TaskEmbedding

METHODS = ("montecarlo", "variational")
DEFAULT_PROBE_SOURCES = ("builtin:patches", "builtin:mnist5k")


@dataclass(frozen=True)
class Neighbor:
    name: str
    distance: float
    domain: str


class TaskOps(RecordOps):
    # ------------------------------------------------------------------ runs
    @contextmanager
    def _pending_run(self, experiment: str, run_name: str, params: dict, tags: dict | None = None) -> Iterator[
        RunRef
    ]:
        """An MLflow run that is deleted again if the block fails (before the catalog commit)."""
        self.require_write_access("this command")  # before MLflow writes anything (the CLI refused earlier)
        run = self.tracker.start_run(experiment, run_name, params=params, tags=tags)
        try:
            yield run
        except BaseException:
            self.tracker.delete_run(run.run_id)
            raise
        self.tracker.finish(run.run_id)

    def _store_weights(self, run: RunRef, state_dict: dict, filename: str) -> tuple[str, str]:
        """Save a state_dict as a run artifact; return (path relative to the root, sha256)."""
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            torch.save(state_dict, local)
            stored = self.tracker.log_artifact(run.run_id, local, "weights")
        return str(stored.relative_to(self.root)), file_sha256(stored)

    # ------------------------------------------------------------------ probes
    def resolve_probe(self, name: str | None) -> catalog.ProbeRecord:
        with self.read() as con:
            if name is not None:
                rec = catalog.get_probe(con, name)
                if rec is None:
                    known = ", ".join(p.name for p in catalog.list_probes(con)) or "none"
                    raise TaskregError(f"unknown probe {name!r} (registered: {known})")
                return rec
            probes = catalog.list_probes(con)
        if not probes:
            raise TaskregError("no probe registered: run `taskreg probe train` or `taskreg probe add`")
        by_name = {p.name: p for p in probes}
        return by_name.get("default", probes[0])

    def load_probe(self, name: str | None = None) -> tuple[catalog.ProbeRecord, nn.Module, ProbeSpec]:
        from taskreg.embedders.probes import ProbeSpec, create_model, load_state_dict_file, load_weights

        rec = self.resolve_probe(name)
        path = self.root / rec.weights
        if not path.exists() or file_sha256(path) != rec.sha256:
            raise TaskregError(f"probe {rec.name}: weights file {rec.weights} is missing or altered (run check)")
        state = load_state_dict_file(path)
        model = create_model(rec.arch, num_classes=_head_classes(state))
        load_weights(model, state, ignore_head=False)
        model.eval()
        spec = ProbeSpec(arch=rec.arch, input_size=rec.input_size, in_chans=rec.in_chans, mean=rec.mean,
                         std=rec.std)
        return rec, model, spec

    def list_probes(self) -> list[catalog.ProbeRecord]:
        with self.read() as con:
            return catalog.list_probes(con)

    def train_probe(
        self, name: str = "default", *, arch: str = "cifar_resnet20", sources: Sequence[str] = DEFAULT_PROBE_SOURCES,
        epochs: int = 6, seed: int = 0, device: str = "cpu", progress: Progress = None,
    ) -> catalog.ProbeRecord:
        """Train a probe from scratch on the union of ``sources`` (classes kept apart) and register it."""
        from taskreg.embedders.probes import default_spec, train_probe

        check_name(name, "probe name")
        self._refuse_existing_probe(name)
        spec = default_spec(arch)
        xs, ys, offset = [], [], 0
        for src in sources:
            ds = datasets.load(src)
            xs.append(_to_size(ds.x, spec.input_size))
            ys.append(ds.y + offset)
            offset += ds.n_classes
        x, y = np.concatenate(xs), np.concatenate(ys)
        t0 = time.perf_counter()
        model = train_probe(arch, x, y, epochs=epochs, seed=seed, device=device, progress=progress, spec=spec)
        seconds = time.perf_counter() - t0
        params = {"arch": arch, "sources": ",".join(sources), "epochs": epochs, "seed": seed, "n_images": len(y),
                  "n_classes": offset}
        return self._register_probe(name, model, spec, "trained", params, {"train_seconds": seconds})

    def add_probe(self, name: str, *, arch: str, weights: Path, input_size: int | None = None,
                  device: str = "cpu") -> catalog.ProbeRecord:
        """Register a user's probe from a weight file (loaded with ``weights_only=True``)."""
        from taskreg.embedders.probes import ProbeSpec, create_model, default_spec, load_state_dict_file, load_weights

        check_name(name, "probe name")
        self._refuse_existing_probe(name)
        if not Path(weights).is_file():
            raise TaskregError(f"weight file {weights} not found")
        state = load_state_dict_file(weights)
        model = create_model(arch, num_classes=_head_classes(state))
        load_weights(model, state, ignore_head=True)
        spec = default_spec(arch)
        if input_size is not None:
            spec = ProbeSpec(arch=arch, input_size=int(input_size), in_chans=spec.in_chans, mean=spec.mean,
                             std=spec.std)
        return self._register_probe(name, model, spec, "added", {"arch": arch, "weights_file": str(weights)}, {},
                                    device=device, label=f"weights {weights}")

    def _refuse_existing_probe(self, name: str) -> None:
        with self.read() as con:
            if catalog.get_probe(con, name) is not None:
                raise TaskregError(f"probe {name!r} already exists")

    def _register_probe(self, name: str, model: nn.Module, spec: ProbeSpec, origin: str, params: dict,
                        metrics: dict, device: str = "cpu", label: str | None = None) -> catalog.ProbeRecord:
        from taskreg.embedders.task2vec import fisher_layout, trivial_embedding
        from taskreg.embedders.weight_checks import check_network

        check_network(model, spec, label or f"probe {name}: the trained network")  # before anything is stored
        model.eval()
        trivial = {
            "montecarlo": trivial_embedding(model, "montecarlo", spec=spec, device=device),
            "variational": trivial_embedding(fisher_layout(model), "variational"),
        }
        params = {**params, "input_size": spec.input_size}  # with the arch, all `taskreg recover` needs
        with self._pending_run("probes", f"probe-{name}", params, {"taskreg.kind": "probe"}) as run:
            self.tracker.log_metrics(run.run_id, metrics)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            rel, sha = self._store_weights(run, state, f"{name}.pt")
            rec = catalog.ProbeRecord(name=name, arch=spec.arch, input_size=spec.input_size, in_chans=spec.in_chans,
                                      mean=tuple(spec.mean), std=tuple(spec.std), sha256=sha, weights=rel,
                                      origin=origin, run_id=run.run_id)
            with self.write() as con:
                if catalog.get_probe(con, name) is not None:  # registered by another process meanwhile
                    raise TaskregError(f"probe {name!r} already exists")
                catalog.insert_probe(con, rec)
                for method, vec in trivial.items():
                    con.execute("INSERT INTO trivial_embeddings VALUES (?, ?, ?)",
                                [name, method, catalog.vector_param(vec)])
        self.tracker.commit(run.run_id)
        return rec

    def trivial(self, probe: str, method: str) -> np.ndarray:
        if method == "domain":
            raise TaskregError("the domain embedding has no trivial embedding (use --method sym or a Task2Vec one)")
        with self.read() as con:
            row = con.execute("SELECT vector FROM trivial_embeddings WHERE probe = ? AND method = ?",
                              [probe, method]).fetchone()
        if row is None:
            raise TaskregError(f"probe {probe!r} has no trivial embedding for method {method!r}")
        return np.asarray(row[0], dtype=np.float32)

    # ------------------------------------------------------------------ tasks
    def embed_dataset(self, ds: datasets.Dataset, *, probe: str | None = None, method: str = "montecarlo",
                      max_samples: int | None = 1000, seed: int = 0, device: str = "cpu",
                      progress: Progress = None) -> tuple[catalog.ProbeRecord, TaskEmbedding, np.ndarray]:
        """Embed a dataset with a registered probe: (probe record, Task2Vec embedding, domain embedding).

        The domain embedding (mean probe features) comes from the Task2Vec features pass, on the same
        class-balanced subsample of ``max_samples`` images: no second pass over the data.
        """
        from taskreg.embedders.task2vec import embed

        if method not in METHODS:
            raise TaskregError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        rec, model, spec = self.load_probe(probe)
        emb = embed(model, spec, ds.x, ds.y, method=method, max_samples=max_samples, seed=seed, device=device,
                    progress=progress)
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
        prec = self.resolve_probe(probe)
        if existing is not None:
            with self.read() as con:
                have = con.execute("SELECT 1 FROM task_embeddings WHERE task_id = ? AND probe = ? AND method = ?",
                                   [existing.id, prec.name, method]).fetchone()
            if have:
                raise TaskregError(f"task {name!r} already has a {method} embedding with probe {prec.name}")
        rec, emb, dom = self.embed_dataset(ds, probe=prec.name, method=method, max_samples=max_samples, seed=seed,
                                           device=device, progress=progress)
        params = {"task": name, "source": ds.source, "probe": rec.name, "arch": rec.arch, "method": method,
                  "max_samples": max_samples, "seed": seed, "n_samples": emb.n_samples, "n_classes": ds.n_classes,
                  "fingerprint": ds.fingerprint(), "domain": ds.domain, "dataset_size": ds.n}  # all a rebuild needs
        kinds = [self.kind("task", rec.name, method), self.kind("task", rec.name, "domain")]
        with self._pending_run("tasks", f"task-{name}-{method}", params, {"taskreg.kind": "task_embedding"}) as run:
            norm = float(np.linalg.norm(emb.vector))
            self.tracker.log_metrics(run.run_id, {"norm": norm, "seconds": emb.seconds,
                                                  "head_train_accuracy": emb.head_train_accuracy})
            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "task2vec.npy", emb.vector)
                np.save(Path(tmp) / "domain.npy", dom)
                for f in ("task2vec.npy", "domain.npy"):
                    self.tracker.log_artifact(run.run_id, Path(tmp) / f, "vectors")
            with self.write() as con:
                existing = catalog.get_task(con, name)  # again: another process may have added or removed it
                if existing is None:
                    task_id = catalog.insert_task(con, name=name, source=ds.source, domain=ds.domain,
                                                  n_samples=ds.n, n_classes=ds.n_classes, fingerprint=ds.fingerprint())
                else:
                    task_id = existing.id
                    if existing.fingerprint != ds.fingerprint():
                        raise TaskregError(f"task {name!r} already exists with different data ({existing.source})")
                    if con.execute("SELECT 1 FROM task_embeddings WHERE task_id = ? AND probe = ? AND method = ?",
                                   [task_id, rec.name, method]).fetchone():
                        raise TaskregError(f"task {name!r} already has a {method} embedding with probe {rec.name}")
                _insert_embedding(con, task_id, rec.name, method, emb.vector, emb.n_samples, seed, emb.seconds,
                                  run.run_id)
                added = {kinds[0]: emb.vector}  # vector kind -> the vector this commit adds to it
                has_domain = con.execute("SELECT 1 FROM task_embeddings WHERE task_id = ? AND probe = ? AND "
                                         "method = 'domain'", [task_id, rec.name]).fetchone()
                if not has_domain:
                    _insert_embedding(con, task_id, rec.name, "domain", dom, emb.n_samples, seed, None, run.run_id)
                    added[kinds[1]] = dom
                for kind in added:
                    catalog.bump_generation(con, kind)
        self.tracker.commit(run.run_id)
        for kind, vec in added.items():  # append to the index on disk; a full rebuild only when it is not current
            self.add_to_index(kind, np.array([task_id], dtype=np.int64), vec[None, :])
        return self.get_task(name)

    def _existing_task(self, name: str, ds: datasets.Dataset) -> catalog.TaskRecord | None:
        with self.read() as con:
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
        sql = ("SELECT t.name, e.vector FROM task_embeddings e JOIN tasks t ON t.id = e.task_id "
               "WHERE e.probe = ? AND e.method = ?")
        params: list[object] = [probe, method]
        if names is not None:  # fetch only the rows asked for, not every vector of the probe
            sql += " AND list_contains(?, t.name)"
            params.append(list(names))
        with self.read() as con:
            rows = con.execute(sql + " ORDER BY t.id", params).fetchall()
        found = {n: np.asarray(v, dtype=np.float32) for n, v in rows}
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
        prec = self.resolve_probe(probe)
        return self.task_vectors(prec.name, method, [name])[1][0]

    def task_distance(self, a: str, b: str, *, asym: bool = False, probe: str | None = None,
                      method: str = "montecarlo", alpha: float = 0.15) -> float:
        """d_sym(a, b), or d_asym(a → b) = d_sym(a, b) − α·d_sym(a, t0): transfer from source a to target b."""
        from taskreg.embedders.distances import d_asym, d_sym

        prec = self.resolve_probe(probe)
        va, vb = self.task_vector(a, prec.name, method), self.task_vector(b, prec.name, method)
        if asym:  # distances.d_asym takes (target, source): the complexity term is the source's
            return float(d_asym(vb, va, self.trivial(prec.name, method), alpha=alpha))
        return float(d_sym(va, vb))

    def neighbors(self, name: str, k: int = 5, *, probe: str | None = None, method: str = "montecarlo",
                  candidates: int = 50) -> list[Neighbor]:
        """The ``k`` tasks nearest to ``name``: Faiss cosine candidates, re-ranked exactly by d_sym."""
        from taskreg.embedders.distances import d_sym_many

        if k < 1:
            raise TaskregError(f"-k must be at least 1, got {k}")
        prec = self.resolve_probe(probe)
        query = self.task_vector(name, prec.name, method)
        index = self.index(self.kind("task", prec.name, method))
        ids, _ = search(index, query, max(candidates, 4 * k) + 1)
        with self.read() as con:
            rows = con.execute(
                "SELECT t.id, t.name, t.domain, e.vector FROM task_embeddings e JOIN tasks t ON t.id = e.task_id "
                "WHERE e.probe = ? AND e.method = ? AND t.id IN (SELECT unnest(?::INTEGER[]))",
                [prec.name, method, ids.tolist()],
            ).fetchall()
        rows = [r for r in rows if r[1] != name]
        if not rows:
            return []
        dist = d_sym_many(query, np.stack([np.asarray(r[3], dtype=np.float32) for r in rows]))
        order = np.argsort(dist, kind="stable")[:k]
        return [Neighbor(rows[i][1], float(dist[i]), rows[i][2]) for i in order]

    def distance_matrix(self, *, probe: str | None = None, method: str = "montecarlo",
                        names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
        """All pairwise d_sym among the embedded tasks: (names, (N, N) matrix, domains)."""
        from taskreg.embedders.distances import pairwise_sym

        prec = self.resolve_probe(probe)
        names, vecs = self.task_vectors(prec.name, method, names)
        if len(names) < 2:
            raise TaskregError(f"need at least 2 tasks embedded with {prec.name}/{method}, have {len(names)}")
        domains = {t.name: t.domain for t in self.list_tasks()}
        return names, pairwise_sym(vecs), [domains[n] for n in names]


def _insert_embedding(con: object, task_id: int, probe: str, method: str, vector: np.ndarray, n_samples: int,
                      seed: int, seconds: float | None, run_id: str) -> None:
    con.execute(
        "INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed, seconds, run_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [task_id, probe, method, catalog.vector_param(vector), float(np.linalg.norm(vector)), int(n_samples),
         int(seed), seconds, run_id],
    )


def _head_classes(state: dict) -> int:
    w = state.get("fc.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else 10


def _to_size(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) float images resized to ``size`` and made RGB, so sources of any shape can be stacked."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1).numpy()
