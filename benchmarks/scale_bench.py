"""Scale benchmark: a million task vectors, a catalog of 100,000 tasks and 10,000 experts, CLI start-up.

Run: .venv/bin/python benchmarks/scale_bench.py [--quick] [--workdir DIR --keep] [--no-results]
(full: 14 min and a peak RSS of 8 GB on a 2-core machine shared with other jobs, load average ~12;
--quick: 100k vectors, 10k tasks / 1k experts, 7 min there)

1. Index at scale (in process). Synthetic Task2Vec-like vectors of dimension 784 -- the number of
   filters of the ``cifar_resnet20`` probe, ``sum(n for _, n in fisher_layout(create_model("cifar_resnet20")))``.
   ResNet-18's 4,800 would need 19 GB for 1M float32 vectors, before the index's own copy; 784 keeps
   the vectors at 3.1 GB and the peak RSS of the benchmark under 8 GB. The vectors look like
   montecarlo Fisher embeddings (non-negative, log-normal over 7 orders of magnitude, a few
   coordinates holding most of the mass, clustered by task family; the parameters were calibrated on
   real cifar_resnet20 embeddings, see ``FisherLike``), because recall depends on the distribution.
   For each size: a select-style single top-10 query (p50/p99 over held-out queries) with numpy
   brute force (the baseline: ``vectors @ q`` + argpartition), the exact Faiss flat index, IVF-Flat
   at several ``nprobe`` and through ``index.search`` (the registry's path and defaults), HNSW at
   --hnsw-sizes; recall@10 of each against the exact answer, overall and on queries from task
   families absent from the index ("novel").
2. Catalog at 100,000 tasks / 10,000 experts, built in under a minute by bulk Arrow inserts
   (``catalog.insert_columns``): tasks with a montecarlo and a domain embedding, experts with real
   MLflow runs and registered models (one expert registered through ``add_expert``, the rest cloned
   row by row in ``mlflow.db``), weight files (hard links of one real cifar_resnet20 state_dict),
   expert x task results, Model2Vec vectors; the probe is registered like ``add_probe`` but with a
   synthetic trivial embedding. Then: open, ``list_tasks``, ``select`` (asym and model2vec) with the
   query's probe pass measured once and taken out (it does not depend on the catalog and is the
   baseline), ``check`` against what it replaced (a ``get_run`` per row, MLflow's client, hashing
   every weight file), index rebuild, and the CLI on that registry.
3. CLI cold start: ``taskreg --help`` and ``taskreg task list`` in a fresh process (median of
   --repeats), against ``python -c pass``.

Everything is printed as tables and written to the "## Scale" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

K = 10
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# --------------------------------------------------------------------------- synthetic Fisher vectors

def probe_layout(arch: str = "cifar_resnet20") -> list[int]:
    """Filters per convolution of the probe: the blocks of a Task2Vec vector."""
    from taskreg.embedders.probes import create_model
    from taskreg.embedders.task2vec import fisher_layout

    return [n for _, n in fisher_layout(create_model(arch))]


class FisherLike:
    """Synthetic montecarlo Task2Vec vectors: clustered, non-negative, heavy-tailed.

    log v[t, f] = layer(f) + filter(f) + family(c(t), f) + cluster(c(t), f) + noise(t, f) + scale(t)

    ``layer`` falls with depth (early layers carry more Fisher information), ``filter`` is shared by
    all tasks (it is the probe's), a task belongs to one of ``n_clusters`` clusters (Zipf-sized),
    clusters to ``n_families`` families. Calibrated on 12 real cifar_resnet20 embeddings (MNIST,
    sklearn digits, photo patches, faces): there the log-values spread with std 1.4-2.4 over the
    784 coordinates (synthetic: 2.2), the top 8 coordinates hold 76-99 % of the squared norm
    (synthetic: 69-95 %), and pairwise cosines range from 0.04 to 0.99 (synthetic: 0.18 to 0.98,
    0.87-0.98 within a cluster).
    """

    def __init__(self, layout: Sequence[int], *, n_clusters: int = 300, n_families: int = 12, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        depth = np.concatenate([np.full(n, i) for i, n in enumerate(layout)])
        self.dim = int(depth.size)
        layer = np.linspace(0.7, -5.0, len(layout)) + rng.normal(0, 0.6, len(layout))
        self.base = (layer[depth] + rng.normal(0, 0.8, self.dim)).astype(np.float32)
        families = rng.normal(0, 1.0, (n_families, self.dim))
        family_of = rng.integers(0, n_families, n_clusters)
        self.centres = (self.base + families[family_of] + rng.normal(0, 0.6, (n_clusters, self.dim))).astype(
            np.float32)
        weights = np.minimum(rng.zipf(1.6, n_clusters), 200).astype(np.float64)
        self.weights = weights / weights.sum()

    def _fill(self, out: np.ndarray, centres: np.ndarray, rng: np.random.Generator, normalise: bool) -> None:
        out[:] = centres
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(0.3)
        out += rng.standard_normal((out.shape[0], 1), dtype=np.float32)
        np.exp(out, out=out)
        if normalise:
            out /= np.linalg.norm(out, axis=1, keepdims=True)

    def sample(self, n: int, seed: int, *, normalise: bool = False, chunk: int = 65_536,
               out: np.ndarray | None = None) -> np.ndarray:
        """(n, D) float32 vectors from the known clusters, generated chunk by chunk into ``out``."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32) if out is None else out
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            cl = rng.choice(len(self.centres), size=stop - start, p=self.weights)
            self._fill(out[start:stop], self.centres[cl], rng, normalise)
        return out

    def sample_novel(self, n: int, seed: int, *, normalise: bool = False) -> np.ndarray:
        """(n, D) vectors of task families the index has never seen (a new family and cluster each)."""
        rng = np.random.default_rng(seed)
        centres = (self.base + rng.normal(0, 1.0, (n, self.dim)) + rng.normal(0, 0.6, (n, self.dim))).astype(
            np.float32)
        out = np.empty((n, self.dim), dtype=np.float32)
        self._fill(out, centres, rng, normalise)
        return out


# --------------------------------------------------------------------------- timing helpers

def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def percentiles_ms(times: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: object) -> None:
        self.rows.append(list(row))

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def print(self) -> None:
        cells = [self.columns] + [[_fmt(v) for v in r] for r in self.rows]
        numeric = [[False] * len(self.columns)] + [[isinstance(v, int | float) for v in r] for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        print(f"\n{self.title}")
        for j, (r, num) in enumerate(zip(cells, numeric, strict=True)):
            print("  ".join(c.rjust(w) if isnum else c.ljust(w) for c, w, isnum in zip(r, widths, num, strict=True)))
            if j == 0:
                print("  ".join("-" * w for w in widths))
        for n in self.notes:
            print(f"  note: {n}")
        sys.stdout.flush()


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# --------------------------------------------------------------------------- part 1: the index at scale

def exact_topk(db: np.ndarray, queries: np.ndarray, k: int, block: int = 131_072) -> np.ndarray:
    """(Q, k) positions of the exact top-k inner products, computed block by block (bounded memory)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(db), block):
        s = queries @ db[start:start + block].T
        idx = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i


def numpy_top(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: exact cosine top-k of one normalised query by brute force in numpy."""
    s = db @ q
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top])]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth,
                                                                                                   strict=True)]))


@dataclass
class QuerySet:
    """Held-out queries with their exact answer on the first ``n`` database vectors."""

    queries: np.ndarray  # (Q, D) normalised
    novel: np.ndarray  # (Q,) bool: from a task family absent from the database
    truth: np.ndarray  # (Q, K) exact top-K positions
    numpy_p50: float = float("nan")


def measure(table: Table, qs: QuerySet, n: int, label: str, search: Callable[[np.ndarray], np.ndarray],
            build_s: float, n_eval: int, index: object | None = None) -> tuple[float, float, float, float | None]:
    """Time ``search`` (one query -> top-K positions) and its recall@K on the first ``n_eval`` queries.

    The first measurement of a size is the numpy baseline; later rows get their p50 ratio to it.
    Adds a row to ``table``; returns (p50 ms, p99 ms, recall@10, recall@10 on the novel queries).
    """
    for q in qs.queries[:3]:  # warm-up: first-call costs (thread pools, page faults) are not per query
        search(q)
    times, found = [], []
    for q in qs.queries[:n_eval]:
        t = time.perf_counter()
        found.append(search(q)[:K])
        times.append(time.perf_counter() - t)
    p50, p99 = percentiles_ms(times)
    if qs.numpy_p50 != qs.numpy_p50:
        qs.numpy_p50 = p50
    got, truth, novel = np.stack(found), qs.truth[:n_eval], qs.novel[:n_eval]
    mb = index_bytes(index) / 1e6 if index is not None else None
    rec, rec_novel = recall(got, truth), recall(got[novel], truth[novel]) if novel.any() else None
    table.add(n, label, build_s, p50, p99, ratio(p50, qs.numpy_p50), rec, rec_novel, mb)
    return p50, p99, rec, rec_novel


def index_part(args: argparse.Namespace, gen: FisherLike, facts: dict) -> tuple[Table, Table]:
    """Part 1 (see the module docstring). Returns the measurements and the index-choice summary."""
    import faiss

    from taskreg.registry import index as ix

    sizes = sorted(args.sizes)
    n_max, n_q = sizes[-1], args.queries
    n_novel = n_q // 5
    t_gen, db = timed(lambda: gen.sample(n_max, seed=1, normalise=True))
    queries = np.concatenate([gen.sample(n_q - n_novel, seed=2, normalise=True),
                              gen.sample_novel(n_novel, seed=3, normalise=True)])
    order = np.random.default_rng(4).permutation(n_q)  # novel queries spread out: any prefix has its share
    queries, novel = queries[order], (np.arange(n_q) >= n_q - n_novel)[order]
    positions = np.arange(n_max, dtype=np.int64)  # the ids given to the indexes are the row positions
    print(f"generated {n_max:,} x {gen.dim} Fisher-like vectors in {t_gen:.1f} s ({db.nbytes / 1e9:.2f} GB); "
          f"peak RSS {peak_rss_gb():.2f} GB", flush=True)

    table = Table(f"Top-{K} query at scale (D = {gen.dim}; {n_q} held-out queries, {n_novel} of them from task "
                  "families absent from the index; one query at a time, as `select` does)",
                  ["N", "method", "build s", "p50 ms", "p99 ms", "p50 / numpy", "recall@10", "recall@10 novel",
                   "index MB"])
    summary = Table("Index choice (what build_index does at each size)",
                    ["N", "exact p50 ms", "exact p99 ms", "IVF build s", "IVF nlist / nprobe", "IVF p50 ms",
                     "IVF p99 ms", "IVF recall@10", "IVF recall@10 novel", "HNSW build s", "build_index uses"])
    for n in sizes:
        sub = db[:n]
        qs = QuerySet(queries, novel, exact_topk(sub, queries, K))
        n_lat = n_q if n <= 200_000 else max(20, n_q // 5)  # exact search at 1M costs ~0.2-0.4 s a query
        measure(table, qs, n, f"numpy brute force (baseline; {n_lat} q)", lambda q, _s=sub: numpy_top(_s, q, K),
                0.0, n_lat)

        build_s, flat = timed(lambda _n=n, _sub=sub: build_flat(positions[:_n], _sub))
        exact = measure(table, qs, n, f"faiss flat, exact ({n_lat} q)", lambda q, _f=flat: ix.search(_f, q, K)[0],
                        build_s, n_lat, flat)
        if n == n_max:
            measure(table, qs, n, "faiss flat, 2 OpenMP threads", lambda q, _f=flat: _f.search(q[None], K)[1][0],
                    build_s, n_lat, flat)
        del flat
        gc.collect()

        ivf_s, ivf = timed(lambda _n=n, _sub=sub: ix.build_index(positions[:_n], _sub, index_type="ivf"))
        nlist, default = ix._ivf(ivf).nlist, ix._ivf(ivf).nprobe
        for nprobe in sorted({p for p in args.nprobes if p < nlist}):
            def ivf_search(q: np.ndarray, _i: object = ivf, _p: int = nprobe) -> np.ndarray:
                with ix._one_thread():
                    return _i.search(q[None], K, params=faiss.SearchParametersIVF(nprobe=_p))[1][0]

            measure(table, qs, n, f"IVF-Flat nlist={nlist} nprobe={nprobe}", ivf_search, ivf_s, n_q, ivf)
        chosen = measure(table, qs, n, f"search(): IVF-Flat nlist={nlist}, default nprobe={default}",
                         lambda q, _i=ivf: ix.search(_i, q, K)[0], ivf_s, n_q, ivf)
        if n == n_max:
            measure(table, qs, n, f"IVF-Flat nprobe={default}, 2 OpenMP threads",
                    lambda q, _i=ivf, _p=default: _i.search(q[None], K, params=faiss.SearchParametersIVF(
                        nprobe=_p))[1][0], ivf_s, n_q, ivf)
        del ivf
        gc.collect()

        hnsw_s = None
        if n in args.hnsw_sizes:
            hnsw_s, hnsw = timed(lambda _n=n, _sub=sub: build_hnsw(positions[:_n], _sub))
            for ef in (64, 128):
                def hnsw_search(q: np.ndarray, _h: object = hnsw, _ef: int = ef) -> np.ndarray:
                    with ix._one_thread():
                        return _h.search(q[None], K, params=faiss.SearchParametersHNSW(efSearch=_ef))[1][0]

                res = measure(table, qs, n, f"HNSW M=32 efConstruction=80 efSearch={ef}", hnsw_search, hnsw_s, n_q,
                              hnsw)
                facts.setdefault("hnsw", {})[n] = res
            del hnsw
            gc.collect()
        summary.add(n, *exact[:2], ivf_s, f"{nlist} / {default}", *chosen, hnsw_s, ix.choose_index_type(n, gen.dim))
        facts.setdefault("index", {})[n] = {"numpy_p50": qs.numpy_p50, "exact_p50": exact[0], "ivf_build_s": ivf_s,
                                            "ivf_p50": chosen[0], "ivf_p99": chosen[1], "recall": chosen[2],
                                            "recall_novel": chosen[3], "hnsw_build_s": hnsw_s, "nprobe": default,
                                            "nlist": nlist}
        print(f"  N={n:,} done; peak RSS {peak_rss_gb():.2f} GB", flush=True)
    del db
    gc.collect()
    summary.notes.append(f"exact below n x dim = APPROXIMATE_THRESHOLD = {ix.APPROXIMATE_THRESHOLD:,} floats "
                         f"({ix.APPROXIMATE_THRESHOLD // gen.dim:,} vectors of {gen.dim}); IVF nlist = sqrt(N)/2, "
                         f"nprobe = max({ix.IVF_MIN_NPROBE}, {ix.IVF_SCAN_FRACTION:.0%} of nlist); "
                         f"peak RSS {peak_rss_gb():.2f} GB")
    return table, summary


def build_flat(ids: np.ndarray, vectors: np.ndarray) -> object:
    """The exact index of ``build_index(index_type="flat")`` from already normalised vectors, added in one call
    (chunked adds grow Faiss's storage by doubling: a 1M flat index would briefly need 2x its 3 GB)."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, ids)
    return index


def build_hnsw(ids: np.ndarray, vectors: np.ndarray) -> object:
    """The HNSW index the registry used before (M=32, efConstruction=80), for comparison."""
    import faiss

    from taskreg.registry.index import ADD_CHUNK

    inner = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = 80
    index = faiss.IndexIDMap2(inner)
    for s in range(0, len(ids), ADD_CHUNK):
        index.add_with_ids(vectors[s:s + ADD_CHUNK], ids[s:s + ADD_CHUNK])
    return index


def index_bytes(index: object) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes) if getattr(index, "ntotal", 0) < 300_000 else _estimate(index)


def _estimate(index: object) -> int:
    """Serialising a multi-GB index just to weigh it is slow: vectors + ids (+ HNSW links)."""
    import faiss

    inner = faiss.downcast_index(index.index)
    links = inner.hnsw.neighbors.size() * 4 if isinstance(inner, faiss.IndexHNSW) else 0
    return int(index.ntotal) * (index.d * 4 + 16) + links


# --------------------------------------------------------------------------- part 2: a large catalog

@dataclass
class Catalog:
    root: Path
    n_tasks: int
    n_experts: int
    seconds: dict[str, float]
    weight_bytes: int
    query: str


def _random_state_dict(arch: str, seed: int) -> dict:
    import torch

    from taskreg.embedders.probes import create_model

    torch.manual_seed(seed)
    return create_model(arch, num_classes=10).state_dict()


def fresh_registry(root: Path, template: Path) -> None:
    """A new empty registry at ``root``: a copy of an initialised one (``Registry.init`` creates MLflow's
    database through its migrations, 10-20 s; ``Registry.open`` re-points a copy at its own artifacts)."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(template, root)


def register_probe(reg: object, name: str, arch: str, trivial: np.ndarray, seed: int) -> None:
    """Register a random-init probe like ``add_probe`` (MLflow run, weights artifact, catalog row), except
    that the trivial embedding is a synthetic vector: computing it pushes 256 images through the probe
    (20-80 s on this machine), which says nothing about scale."""
    from taskreg.embedders.probes import default_spec
    from taskreg.registry import catalog
    from taskreg.registry.runs import pending_run, store_weights

    spec = default_spec(arch)
    with pending_run(reg.core, "probes", f"probe-{name}", {"arch": arch, "benchmark": True},
                     {"taskreg.kind": "probe"}) as run:
        rel, sha = store_weights(reg.core, run, _random_state_dict(arch, seed), f"{name}.pt")
        rec = catalog.ProbeRecord(name=name, arch=arch, input_size=spec.input_size, in_chans=spec.in_chans,
                                  mean=tuple(spec.mean), std=tuple(spec.std), sha256=sha, weights=rel,
                                  origin="added", run_id=run.run_id)
        with reg.write() as con:
            catalog.insert_probe(con, rec)
            for method in ("montecarlo", "variational"):
                con.execute("INSERT INTO trivial_embeddings VALUES (?, ?, ?)",
                            [name, method, catalog.vector_param(trivial)])
    reg.tracker.commit(run.run_id)


def build_catalog(root: Path, template: Path, n_tasks: int, n_experts: int, gen: FisherLike,
                  seed: int = 0) -> Catalog:
    """A registry with ``n_tasks`` tasks and ``n_experts`` experts, built by bulk inserts."""
    import torch

    from taskreg.registry import Registry, catalog
    from taskreg.registry.index import kind_name

    sec: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    fresh_registry(root, template)
    reg = Registry.open(root)
    register_probe(reg, "default", "cifar_resnet20", gen.sample(1, seed=seed + 5)[0], seed)
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    sec["registry copy + probe"] = time.perf_counter() - t0

    # tasks with a montecarlo and a domain embedding each (real add_task would embed the data)
    t0 = time.perf_counter()
    names = np.array([f"task-{i:06d}" for i in range(n_tasks)], dtype=object)
    domains = np.array(["digits", "photos", "faces", "sketches", "textures"], dtype=object)
    sources = [f"builtin:mnist5k?n={500 + i % 4000}&seed={i}" for i in range(n_tasks)]
    with reg.write() as con:
        catalog.insert_columns(con, "tasks", {
            "name": names.tolist(), "source": sources,
            "domain": domains[rng.integers(0, len(domains), n_tasks)].tolist(),
            "n_samples": rng.integers(100, 5000, n_tasks).astype(np.int32),
            "n_classes": rng.integers(2, 11, n_tasks).astype(np.int32),
            "fingerprint": [hashlib.sha256(s.encode()).hexdigest() for s in sources],
        })
        task_ids = np.array([r[0] for r in con.execute("SELECT id FROM tasks ORDER BY name").fetchall()],
                            dtype=np.int32)
        vecs = gen.sample(n_tasks, seed=seed + 10)
        dom = np.abs(rng.standard_normal((n_tasks, 64), dtype=np.float32))
        for method, v in (("montecarlo", vecs), ("domain", dom)):
            catalog.insert_columns(con, "task_embeddings", {
                "task_id": task_ids, "probe": ["default"] * n_tasks, "method": [method] * n_tasks, "vector": v,
                "norm": np.linalg.norm(v, axis=1).astype(np.float64), "n_samples": np.full(n_tasks, 1000, np.int32),
                "seed": np.zeros(n_tasks, np.int32), "seconds": rng.uniform(2, 20, n_tasks),
                "run_id": [None] * n_tasks,
            })
            catalog.bump_generation(con, kind_name("task", "default", method))
    sec["tasks (bulk insert)"] = time.perf_counter() - t0

    # experts: one through the real API, the others cloned (catalog rows, MLflow rows, weight files)
    t0 = time.perf_counter()
    torch.save(_random_state_dict("cifar_resnet20", seed + 1), tmp / "expert.pt")
    trained_on = [f"task-{(j * (n_tasks // n_experts)) % n_tasks:06d}" for j in range(n_experts)]
    template = reg.add_expert("expert-00000", arch="cifar_resnet20", weights=tmp / "expert.pt",
                              trained_on=trained_on[0])
    shutil.rmtree(tmp)
    sec["template expert (add_expert)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clones = [(f"expert-{j:05d}", uuid.uuid4().hex, trained_on[j]) for j in range(1, n_experts)]
    clone_mlflow(root / "mlflow.db", template.run_id, template.name, template.trained_on, clones)
    src = root / template.weights
    rels = []
    for name, run_id, _ in clones:
        rel = template.weights.replace(template.run_id, run_id).replace(template.name, name)
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
        rels.append(rel)
    n = len(clones)
    with reg.write() as con:
        catalog.insert_columns(con, "experts", {
            "name": [c[0] for c in clones], "arch": ["cifar_resnet20"] * n, "sha256": [template.sha256] * n,
            "weights": rels, "trained_on": [c[2] for c in clones], "origin": ["added"] * n,
            "n_train": rng.integers(100, 5000, n).astype(np.int32),
            "n_classes": rng.integers(2, 11, n).astype(np.int32),
            "run_id": [c[1] for c in clones], "model_version": ["1"] * n,
        })
        expert_ids = np.array([r[0] for r in con.execute("SELECT id FROM experts ORDER BY id").fetchall()],
                              dtype=np.int32)
        per = 5
        catalog.insert_columns(con, "expert_task_results", {
            "expert_id": np.repeat(expert_ids, per),
            "task_id": np.concatenate([rng.choice(task_ids, per, replace=False) for _ in expert_ids]),
            "test_error": rng.uniform(0.02, 0.9, per * len(expert_ids)),
            "train_error": rng.uniform(0.0, 0.5, per * len(expert_ids)),
            "protocol": ['{"bench": true}'] * (per * len(expert_ids)),
            "seconds": rng.uniform(0.1, 3, per * len(expert_ids)),
        })
        by_name = dict(zip(names.tolist(), range(n_tasks), strict=True))
        base = vecs[[by_name[t] for t in trained_on]]
        m2v = base * np.exp(rng.normal(0, 0.1, base.shape)).astype(np.float32)
        catalog.insert_columns(con, "model2vec", {
            "expert_id": expert_ids, "probe": ["default"] * len(expert_ids), "method": ["montecarlo"] * len(expert_ids),
            "vector": m2v, "bias": m2v - base, "fit_loss": np.zeros(len(expert_ids)),
        })
        catalog.bump_generation(con, kind_name("model2vec", "default", "montecarlo"))
    sec["experts, MLflow rows, weight links, results, Model2Vec"] = time.perf_counter() - t0
    del vecs, dom, base, m2v
    t0 = time.perf_counter()
    built = reg.rebuild_indexes()
    sec["index rebuild (" + ", ".join(f"{k} {v:,}" for k, v in built.items()) + ")"] = time.perf_counter() - t0
    return Catalog(root, n_tasks, n_experts, sec, src.stat().st_size, "builtin:digits?classes=0,1,2&n=300")


def clone_mlflow(db: Path, run_id: str, expert: str, task: str | None, clones: Sequence[tuple[str, str, str]]) -> None:
    """Copy the template expert's MLflow rows (run, tags, params, metrics, registered model, version,
    tags, alias) once per clone, replacing its run id, expert name and training task in every text value."""
    con = sqlite3.connect(db)
    try:
        with con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            keyed = [("runs", "run_uuid", run_id), ("tags", "run_uuid", run_id), ("params", "run_uuid", run_id),
                     ("metrics", "run_uuid", run_id), ("latest_metrics", "run_uuid", run_id),
                     ("registered_models", "name", f"expert-{expert}"),
                     ("registered_model_tags", "name", f"expert-{expert}"),
                     ("model_versions", "name", f"expert-{expert}"),
                     ("model_version_tags", "name", f"expert-{expert}"),
                     ("registered_model_aliases", "name", f"expert-{expert}")]
            for table, key, value in keyed:
                if table not in tables:
                    continue
                cur = con.execute(f"SELECT * FROM {table} WHERE {key} = ?", [value])
                cols = [d[0] for d in cur.description]
                rows = cur.fetchall()
                out = []
                for name, rid, trained in clones:
                    swap = {run_id: rid, expert: name}
                    if task:
                        swap[task] = trained
                    pattern = re.compile("|".join(re.escape(s) for s in swap))
                    for row in rows:
                        out.append([pattern.sub(lambda m, _s=swap: _s[m.group(0)], v) if isinstance(v, str) else v
                                    for v in row])
                marks = ", ".join("?" for _ in cols)
                con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", out)
    finally:
        con.close()


def catalog_part(args: argparse.Namespace, gen: FisherLike, cli: list[str], facts: dict) -> tuple[Table, Table, Table]:
    from taskreg.data import load as load_dataset
    from taskreg.registry import Registry

    root = Path(args.workdir) / "catalog"
    cat = build_catalog(root, Path(args.workdir) / "template", args.tasks, args.experts, gen)
    build = Table(f"Building a catalog of {args.tasks:,} tasks and {args.experts:,} experts (bulk Arrow inserts)",
                  ["step", "seconds"])
    for step, s in cat.seconds.items():
        build.add(step, s)
    build.add("total", sum(cat.seconds.values()))
    build.notes.append(f"peak RSS so far {peak_rss_gb():.2f} GB; catalog.duckdb "
                       f"{(root / 'catalog.duckdb').stat().st_size / 1e6:,.0f} MB, mlflow.db "
                       f"{(root / 'mlflow.db').stat().st_size / 1e6:,.0f} MB")
    build.print()

    t = Table(f"Interactive commands on {args.tasks:,} tasks / {args.experts:,} experts",
              ["operation", "seconds", "baseline", "baseline s", "ratio"])
    reg_s, reg = timed(lambda: Registry.open(root))
    t.add("Registry.open (schema + index freshness)", reg_s, None, None, None)
    list_s, tasks = timed(reg.list_tasks)
    assert len(tasks) == args.tasks
    t.add(f"list_tasks() -> {len(tasks):,} records", list_s, None, None, None)
    lim_s, _ = timed(lambda: reg.list_tasks(limit=50))
    t.add("list_tasks(limit=50)", lim_s, None, None, None)

    ds = load_dataset(cat.query)
    emb_s, emb = timed(lambda: reg.embed_dataset(ds, max_samples=1000))
    t.add("probe pass over the query (embed_dataset: Task2Vec + domain)", emb_s, None, None, None)
    for method in ("asym", "model2vec"):
        fresh = Registry.open(root)  # the first select of a process loads the index (memory-mapped)
        fresh.embed_dataset = lambda *a, _e=emb, **k: _e  # the probe pass measured once above
        cold, out = timed(lambda m=method, r=fresh: r.select(cat.query, method=m, top=10, dataset=ds))
        warm = min(timed(lambda m=method, r=fresh: r.select(cat.query, method=m, top=10, dataset=ds))[0]
                   for _ in range(3))
        t.add(f"select --method {method} --top 10 without the probe pass, first in process "
              f"({out.candidates_scored} candidates re-ranked)", cold, "probe pass", emb_s, ratio(cold, emb_s))
        t.add(f"select --method {method} --top 10 without the probe pass, again", warm, "probe pass", emb_s,
              ratio(warm, emb_s))
        facts.setdefault("select", {})[method] = (cold, warm)
    facts.update(probe_pass_s=emb_s, list_tasks_s=list_s)
    runs = [r[0] for r in reg.sql("SELECT run_id FROM experts WHERE run_id IS NOT NULL")[1]]
    sample = runs[: min(len(runs), args.run_sample)]
    per_run_s, _ = timed(lambda: [reg.tracker.run_state(r) for r in sample])
    per_row_total = per_run_s / max(len(sample), 1) * len(runs)
    api_s, api_runs = timed(reg.tracker.run_states_via_api)
    sql_s, runs_found = timed(reg.tracker.run_states)
    states, api_states = runs_found.states, api_runs.states
    assert set(runs) <= set(states) and states == api_states
    api_models_s, api_models = timed(reg.tracker.registered_models_via_api)
    sql_models_s, models = timed(reg.tracker.registered_models)
    assert models == api_models
    deep_s, rep = timed(lambda: Registry.open(root).check(deep=True))
    check_s, rep2 = timed(lambda: Registry.open(root).check())
    assert rep.ok and rep2.ok, rep.problems[:5] + rep2.problems[:5]
    n_files = len(reg.list_experts()) + len(reg.list_probes())
    t.add(f"check() (weight files: stat cache, {n_files:,} files)", check_s,
          f"check(deep=True): sha256 of all {n_files * cat.weight_bytes / 1e9:.1f} GB of weights", deep_s,
          ratio(check_s, deep_s))
    t.add(f"  run states of {len(states):,} MLflow runs, read from mlflow.db", sql_s,
          f"get_run per catalog row (before), {len(sample):,} of {len(runs):,} timed", per_row_total,
          ratio(sql_s, per_row_total))
    t.add("  the same through one paged MlflowClient.search_runs", api_s, "get_run per catalog row (before)",
          per_row_total, ratio(api_s, per_row_total))
    t.add(f"  {len(models):,} registered models and tags, read from mlflow.db", sql_models_s,
          "MlflowClient.search_registered_models (before)", api_models_s, ratio(sql_models_s, api_models_s))
    facts.update(check_s=check_s, deep_s=deep_s, per_row_s=per_row_total, n_experts=args.experts,
                 n_tasks=args.tasks, runs_sql_s=sql_s, models_api_s=api_models_s)
    rebuild_s, _ = timed(reg.rebuild_indexes)
    t.add("rebuild_indexes() (all kinds, from DuckDB)", rebuild_s, None, None, None)
    t.notes.append(f"query {cat.query}: the probe pass (Task2Vec + domain embedding of the query, "
                   f"cifar_resnet20) does not depend on the catalog size")

    c = Table(f"CLI on {args.tasks:,} tasks / {args.experts:,} experts (fresh process each, median of "
              f"{args.repeats})", ["command", "median s", "min s", "vs `taskreg --help`"])
    subprocess_times(cli + ["--registry", str(root), "task", "list", "--limit", "1"], 1)  # fills the bytecode cache
    help_s = subprocess_times(cli + ["--help"], args.repeats)
    c.add("taskreg --help", statistics.median(help_s), min(help_s), 1.0)
    r = ["--registry", str(root)]
    small = max(1, args.repeats // 2)
    for label, argv, reps in (
        ("taskreg task list --limit 20", [*r, "task", "list", "--limit", "20"], args.repeats),
        ("taskreg task list --limit 1000 (table)", [*r, "task", "list", "--limit", "1000"], small),
        ("taskreg task list --limit 10000 (table)", [*r, "task", "list", "--limit", "10000"], 1),
        (f"taskreg task list --json ({args.tasks:,} rows)", [*r, "task", "list", "--json"], small),
        ("taskreg check", [*r, "check"], 1),
        *([("taskreg select --data Q --top 10 --json (includes the probe pass)",
            [*r, "select", "--data", cat.query, "--top", "10", "--json"], 1)] if args.cli_select else []),
    ):
        times = subprocess_times(cli + argv, reps)
        c.add(label, statistics.median(times), min(times), ratio(statistics.median(times), statistics.median(help_s)))
        facts.setdefault("cli", {})[label] = statistics.median(times)
    if args.tasks > 10_000:
        c.notes.append(f"`taskreg task list` prints every task as a rich table: measured at 1,000 and 10,000 rows "
                       f"above, it grows linearly, so all {args.tasks:,} rows take ~{args.tasks / 10_000:.0f}x the "
                       "10,000-row time (not run here to keep the benchmark short)")
    return build, t, c


# --------------------------------------------------------------------------- part 3: CLI cold start

def subprocess_times(argv: Sequence[str], repeats: int, env: dict[str, str] | None = None,
                     warmup: bool = False) -> list[float]:
    """Wall-clock seconds of ``repeats`` fresh processes (``warmup``: after one untimed run, e.g. to fill the
    bytecode cache)."""
    times = []
    for i in range(repeats + int(warmup)):
        t = time.perf_counter()
        res = subprocess.run(list(argv), capture_output=True, text=True, env=env or cli_env())
        if i or not warmup:
            times.append(time.perf_counter() - t)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return times


_PYCACHE: list[str] = []


def cli_env(bytecode: bool = True) -> dict[str, str]:
    """The environment of the CLI runs: with a bytecode cache (in the work dir, not in the source tree) as
    an installed package has one, or without (PYTHONDONTWRITEBYTECODE=1, as some sandboxes run)."""
    env = os.environ.copy()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if bytecode and _PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = _PYCACHE[0]
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def taskreg_cli() -> list[str]:
    exe = Path(sys.executable).parent / "taskreg"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "taskreg.cli"]


def cold_start_part(args: argparse.Namespace, cli: list[str], facts: dict) -> Table:
    from taskreg.registry import Registry

    empty = Path(args.workdir) / "empty"
    fresh_registry(empty, Path(args.workdir) / "template")
    Registry.open(empty)  # relocate the copy's MLflow paths once, outside the timings
    t = Table(f"CLI cold start (fresh process, median of {args.repeats})",
              ["command", "median s", "min s", "vs `python -c pass`"])
    subprocess_times(cli + ["--registry", str(empty), "task", "list"], 1)  # fills the bytecode cache
    base = subprocess_times([sys.executable, "-c", "pass"], args.repeats)
    t.add("python -c pass (baseline)", statistics.median(base), min(base), 1.0)
    for label, argv, env in (
        ("python -c 'import taskreg.cli'", [sys.executable, "-c", "import taskreg.cli"], cli_env()),
        ("taskreg --help", cli + ["--help"], cli_env()),
        ("taskreg task list (empty registry)", cli + ["--registry", str(empty), "task", "list"], cli_env()),
        ("taskreg --help, no bytecode cache", cli + ["--help"], cli_env(bytecode=False)),
        ("taskreg task list (empty), no bytecode cache", cli + ["--registry", str(empty), "task", "list"],
         cli_env(bytecode=False)),
    ):
        times = subprocess_times(argv, args.repeats, env)
        t.add(label, statistics.median(times), min(times), ratio(statistics.median(times), statistics.median(base)))
        facts.setdefault("cold", {})[label] = statistics.median(times)
    t.notes.append("bytecode of taskreg cached in a private PYTHONPYCACHEPREFIX, as an installed package has it; "
                   "'no bytecode cache' = PYTHONDONTWRITEBYTECODE=1 (this sandbox's default), every taskreg module "
                   "compiled at each start")
    return t


# --------------------------------------------------------------------------- conclusions and RESULTS.md

def fixed_mmap_threshold() -> None:
    """Make glibc serve allocations of 1 MB and more with mmap, returned to the OS when freed.

    Its default threshold adapts upwards (to 32 MB), so the IVF lists, which grow by doubling while
    vectors are added, leave their old buffers in the heap: building the 1M index peaked 0.9 GB
    higher (7.66 GB instead of 6.76 GB with the vectors resident). Without this the benchmark would
    pass its 8 GB budget; a registry rebuilding a 1M-vector index needs that much more.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def conclusions(f: dict) -> list[str]:
    """The findings, as bullet points, from the numbers measured in this run."""
    from taskreg.registry import index as ix

    out = ["", "**Findings (numbers from the tables below)**", ""]
    idx = f.get("index", {})
    if idx:
        n = max(idx)
        r = idx[n]
        out.append(f"- Index type chosen by the library: exact `IndexFlatIP` while n x dim < "
                   f"{ix.APPROXIMATE_THRESHOLD:,} floats ({ix.APPROXIMATE_THRESHOLD // 784:,} cifar_resnet20 "
                   f"vectors), IVF-SQfp16 above (float16 codes, nlist = {ix.IVF16_LISTS_PER_SQRT:g} sqrt(n), "
                   f"nprobe = {ix.IVF16_SCAN_FRACTION:.1%} of the lists, at least {ix.IVF16_MIN_NPROBE}; measured at "
                   "1M by benchmarks/index_bench.py). The IVF rows of this benchmark are IVF-Flat (`index_type="
                   f"\"ivf\"`: nlist = sqrt(n)/2, nprobe = {ix.IVF_SCAN_FRACTION:.0%} of the lists, at least "
                   f"{ix.IVF_MIN_NPROBE}), the choice before issue 16, kept for comparison. "
                   f"At {n:,} vectors IVF-Flat (nlist {r['nlist']}, nprobe {r['nprobe']}) answers a top-10 query in "
                   f"{r['ivf_p50']:.1f} ms p50 / "
                   f"{r['ivf_p99']:.1f} ms p99 against {r['numpy_p50']:.0f} ms for numpy brute force "
                   f"({r['numpy_p50'] / r['ivf_p50']:.0f}x) and {r['exact_p50']:.0f} ms for the exact Faiss index, "
                   f"recall@10 {r['recall']:.3f} ({r['recall_novel']:.3f} on queries from unseen task families); "
                   f"it builds in {r['ivf_build_s']:.1f} s.")
        near = [m for m in idx if m * 784 >= ix.APPROXIMATE_THRESHOLD]
        if near:
            m = min(near)
            q = idx[m]
            out.append(f"- Threshold: at {m:,} vectors an exact query costs {q['exact_p50']:.0f} ms p50 (one core), "
                       f"IVF {q['ivf_p50']:.1f} ms at recall@10 {q['recall']:.3f} and {q['ivf_build_s']:.1f} s to "
                       "build. Below it the exact index is cheap and needs no training, and since the index is "
                       "rebuilt when the catalog changes, a build of seconds buys little there.")
        for m, h in f.get("hnsw", {}).items():
            if m in idx:
                out.append(f"- HNSW (M=32, efConstruction=80, the previous choice) at {m:,}: built in "
                           f"{idx[m]['hnsw_build_s']:.0f} s vs {idx[m]['ivf_build_s']:.1f} s for IVF, recall@10 "
                           f"{h[2]:.3f} ({h[3]:.3f} on unseen families) vs {idx[m]['recall']:.3f} "
                           f"({idx[m]['recall_novel']:.3f}).")
    if "check_s" in f:
        sel = f.get("select", {})
        warm = max((w for _, w in sel.values()), default=float("nan"))
        cold = max((c for c, _ in sel.values()), default=float("nan"))
        out.append(f"- {f['n_tasks']:,} tasks / {f['n_experts']:,} experts: `check()` {f['check_s']:.1f} s "
                   f"(before: get_run per row alone ~{f['per_row_s']:.0f} s, and every weight file hashed: "
                   f"{f['deep_s']:.0f} s, now `check(deep=True)`); `select` without its probe pass "
                   f"{cold:.1f} s first in a process, {warm:.1f} s again, against {f['probe_pass_s']:.0f} s for the "
                   f"probe pass itself; `list_tasks()` of all tasks {f['list_tasks_s']:.1f} s.")
    cli = f.get("cli", {})
    table10k = next((v for k, v in cli.items() if "--limit 10000" in k), None)
    if table10k is not None and f.get("n_tasks", 0) > 10_000:
        out.append(f"- Not interactive: `taskreg task list` without `--limit` renders every row with rich: "
                   f"{table10k:.0f} s for 10,000 rows, so ~{table10k * f['n_tasks'] / 10_000:.0f} s for all "
                   f"{f['n_tasks']:,} (cli.py: a default limit or plain output for long lists would fix it).")
    cold_t = f.get("cold", {})
    if cold_t:
        empty = cold_t.get("taskreg task list (empty registry)", float("nan"))
        out.append(f"- Cold start: `taskreg --help` {cold_t.get('taskreg --help', float('nan')):.2f} s, `taskreg "
                   f"task list` on an empty registry {empty:.2f} s (median, fresh processes).")
    return out



def write_results(path: Path, command: str, tables: Sequence[Table], preamble: Sequence[str]) -> None:
    """Replace (or append) the "## Scale" section of RESULTS.md, leaving the other sections alone."""
    body = [f"## Scale\n\nCommand: `{command}`\n"] + [p.rstrip() + "\n" for p in preamble]
    body += [tb.markdown() for tb in tables]
    section = "\n".join(body).rstrip() + "\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    match = re.search(r"^## Scale\b.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match:
        text = text[: match.start()] + section + ("\n" if match.end() < len(text) else "") + text[match.end():]
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k vectors, 10k tasks / 1k experts (~2-3 min)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="index sizes (default 10k .. 1M)")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries (a fifth from unseen families)")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--hnsw-sizes", type=int, nargs="*", default=None, help="sizes at which HNSW is also built "
                    "(default 100k; quick: 50k)")
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--experts", type=int, default=None)
    ap.add_argument("--run-sample", type=int, default=1000, help="runs looked up one by one for the baseline")
    ap.add_argument("--cli-select", action="store_true", help="also time `taskreg select` end to end (its probe "
                    "pass, measured in process anyway, takes 15 s on an idle machine and minutes on a loaded one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="where the registries are built (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-catalog", action="store_true")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.sizes is None:
        args.sizes = [10_000, 50_000, 100_000] if args.quick else [10_000, 50_000, 100_000, 200_000, 1_000_000]
    if args.hnsw_sizes is None:
        args.hnsw_sizes = [50_000] if args.quick else [100_000]
    args.tasks = args.tasks or (10_000 if args.quick else 100_000)
    args.experts = args.experts or (1_000 if args.quick else 10_000)
    if args.quick:
        args.queries = min(args.queries, 100)
        args.repeats = min(args.repeats, 3)
    own_workdir = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="taskreg-scale-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    _PYCACHE.append(str(Path(args.workdir) / "pycache"))
    command = " ".join(["python benchmarks/scale_bench.py", *sys.argv[1:]])

    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    fixed_mmap_threshold()
    from taskreg.registry import Registry

    Registry.init(Path(args.workdir) / "template")
    gen = FisherLike(probe_layout("cifar_resnet20"))
    print(f"vector dimension {gen.dim} (cifar_resnet20 filters); work dir {args.workdir}", flush=True)
    tables: list[Table] = []
    facts: dict = {}
    try:
        if not args.skip_index:
            measured, summary = index_part(args, gen, facts)
            measured.print()
            summary.print()
            tables += [measured, summary]
        cli = taskreg_cli()
        if not args.skip_catalog:
            built = catalog_part(args, gen, cli, facts)
            for tb in built[1:]:
                tb.print()
            tables += list(built)
        cold = cold_start_part(args, cli, facts)
        cold.print()
        tables.append(cold)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    total = time.perf_counter() - t_start
    machine = (f"{os.cpu_count()} CPU cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} "
               f"GB RAM, shared with other jobs: load average {load_start:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end; total {total / 60:.1f} min; peak RSS {peak_rss_gb():.2f} GB "
               "(glibc's mmap threshold fixed at 1 MB, see `fixed_mmap_threshold`)")
    found = conclusions(facts)
    print(f"\n{machine}\n" + "\n".join(found))
    if not args.no_results:
        write_results(RESULTS, command, tables, [machine, "\n".join(found)])
        print(f"wrote the Scale section of {RESULTS}")


if __name__ == "__main__":
    main()
