"""Faiss indexes derived from the catalog: build, persist atomically, detect staleness, search, and their
lifecycle in a registry (:class:`IndexManager`: rebuild, repair, append, remove).

One index per vector kind (``task/<probe>/<method>``, ``model2vec/<probe>/<method>``,
``domain/<probe>/domain``), keyed by catalog ids (``IndexIDMap2``). Vectors are L2-normalised so
inner product is cosine similarity. The asymmetric Task2Vec distance is not a metric, so the
index only proposes candidates; the caller re-ranks them exactly.

Index type (chosen by measurement, see ``benchmarks/scale_bench.py`` and the "Scale" section of
``benchmarks/RESULTS.md``): an exact ``IndexFlatIP`` while an exact query is cheap, an
``IndexIVFFlat`` above that. An exact query reads all n x dim floats, so the switch is at
``n * dim >= APPROXIMATE_THRESHOLD`` floats: 100,000 Task2Vec vectors of ``cifar_resnet20``
(784 filters; there one exact query took 39 ms p50 on the shared 2-core test machine, IVF 5.6 ms
at recall@10 0.996), 16,300 of ResNet-18 (4,800), never for the 64-dim domain vectors of a catalog
below 1.2M tasks. IVF-Flat clusters the vectors with k-means into ``ivf_nlist(n)`` lists
(sqrt(n)/2: 500 at 1M) and scans the ``ivf_nprobe(nlist)`` lists nearest to the query (8 %, at
least 24), with exact inner products inside them: at 1M, 21 ms p50 against 307 ms for numpy brute
force, recall@10 0.990. Against HNSW (M=32), on the same Fisher-like vectors, it builds 8x faster
(the index is rebuilt from DuckDB when stale: 6 s instead of 47 s at 100k), has the better recall
(HNSW's was 0.94, and 0.72 on queries from unseen task families, IVF's 0.996 and 0.98), supports
``remove_ids``, and its search is deterministic.
Vectors are normalised and added in chunks, so building never holds a second full copy of them.

Each index file ``index/<kind>.faiss`` has a manifest ``index/<kind>.json`` recording the catalog
generation it was built from, the number of vectors, the dimension and the file size. An index
whose manifest is missing, whose generation differs from the catalog's, or whose file is truncated
or unreadable is stale and gets rebuilt from DuckDB. Files are written to a temporary name and
renamed, so a crash never leaves a half-written index behind. Indexes are loaded memory-mapped
(the vectors stay in the page cache instead of being copied into each process), which is safe
because a file is never modified in place: a rebuild writes a new file and renames it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskreg.errors import TaskregError
from taskreg.registry import catalog

if TYPE_CHECKING:
    import faiss

    from taskreg.registry.core import Core

# n * dim (floats read by one exact query) from which IVF-Flat replaces the exact flat index.
APPROXIMATE_THRESHOLD = 100_000 * 784
IVF_MIN_VECTORS = 10_000  # below this, exact whatever the dimension (k-means on a few lists is pointless)
# Fraction of the IVF lists scanned per query, with a floor: recall@10 against the exact answer on
# Fisher-like vectors >= 0.95 up to 1M vectors, also for queries unlike anything indexed (RESULTS.md:
# at 1M, 16 of 500 lists gave 0.97, but 0.85 on queries from unseen task families; 40 give 0.99 and 0.95).
IVF_SCAN_FRACTION = 0.08
IVF_MIN_NPROBE = 24
IVF_TRAIN_PER_LIST = 40  # k-means training points per list (Faiss warns below 39)
IVF_KMEANS_ITERATIONS = 10
ADD_CHUNK = 65_536  # rows normalised and added at a time
INDEX_TYPES = ("flat", "ivf")


@dataclass(frozen=True)
class Manifest:
    kind: str
    generation: int
    ntotal: int
    dim: int
    index_type: str
    file_size: int


def kind_name(family: str, probe: str, method: str) -> str:
    return f"{family}/{probe}/{method}"


def _file_stem(kind: str) -> str:
    return kind.replace("/", "__")


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, float32, zero rows left at zero. (N, D) -> (N, D)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: sqrt(n) / 2, so lists of ~2 sqrt(n) vectors (500 of 2,000 at 1M)."""
    return int(min(max(round(math.sqrt(max(n, 1)) / 2), 16), 4096, max(n // IVF_TRAIN_PER_LIST, 1)))


def ivf_nprobe(nlist: int) -> int:
    """Lists scanned per query: ``IVF_SCAN_FRACTION`` of them, at least ``IVF_MIN_NPROBE`` (40 of 500 at 1M)."""
    return int(min(nlist, max(IVF_MIN_NPROBE, math.ceil(IVF_SCAN_FRACTION * nlist))))


def choose_index_type(n: int, dim: int) -> str:
    """'ivf' when an exact query would read ``APPROXIMATE_THRESHOLD`` floats or more, else 'flat' (exact)."""
    return "ivf" if n >= IVF_MIN_VECTORS and n * dim >= APPROXIMATE_THRESHOLD else "flat"


def build_index(ids: np.ndarray, vectors: np.ndarray, *, index_type: str | None = None, seed: int = 0,
                nprobe: int | None = None) -> faiss.Index:
    """An ``IndexIDMap2`` over cosine similarity: exact while small, IVF-Flat above the threshold.

    ids : (N,) int64 catalog ids; vectors : (N, D) float32 (normalised here, chunk by chunk).
    index_type : 'flat' or 'ivf'; None chooses by size (:func:`choose_index_type`).
    seed : k-means initialisation and training sample of the IVF lists (the build is deterministic).
    nprobe : lists an IVF search scans by default (stored in the index file); None: :func:`ivf_nprobe`.
    """
    import faiss

    ids = np.asarray(ids, dtype=np.int64).ravel()
    if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
        raise TaskregError(f"build_index: expected vectors of shape ({ids.shape[0]}, D), got {vectors.shape}")
    n, dim = vectors.shape
    index_type = index_type or choose_index_type(n, dim)
    if index_type not in INDEX_TYPES:
        raise TaskregError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    inner: faiss.Index
    if index_type == "ivf":
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)  # kept alive by the IVF index's Python wrapper
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.cp.niter = IVF_KMEANS_ITERATIONS
        inner.cp.seed = seed
        inner.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        inner.nprobe = min(nprobe or ivf_nprobe(nlist), nlist)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
        inner.train(normalise(vectors[sample]))
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)
    for start in range(0, n, ADD_CHUNK):
        stop = min(start + ADD_CHUNK, n)
        index.add_with_ids(normalise(vectors[start:stop]), ids[start:stop])
    return index


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return faiss.extract_index_ivf(inner) if isinstance(inner, faiss.IndexIVF) else None


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run Faiss on one OpenMP thread: a single query is faster without the thread barrier.

    With two threads on a loaded machine a one-query search waits for the slower thread
    (measured 2-3x slower p50, see benchmarks/RESULTS.md).
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and cosine similarities for one query vector (D,).

    On an IVF index the number of lists scanned grows with ``k`` so that the scanned lists hold
    about twice ``k`` vectors: a large candidate request still gets ``k`` answers.
    """
    import faiss

    k = min(int(k), int(index.ntotal))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))
    if q.shape[1] != index.d:
        raise TaskregError(f"query has dimension {q.shape[1]}, the index holds vectors of dimension {index.d}")
    params = None
    ivf = _ivf(index)
    if ivf is not None:
        per_list = max(index.ntotal / max(ivf.nlist, 1), 1.0)
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(ivf.nlist, max(ivf.nprobe, math.ceil(2 * k / per_list))))
    with _one_thread():
        sims, ids = index.search(q, k, params=params)
    keep = ids[0] >= 0
    return ids[0][keep], sims[0][keep]


class IndexStore:
    """The ``index/`` folder of a registry."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def paths(self, kind: str) -> tuple[Path, Path]:
        stem = _file_stem(kind)
        return self.folder / f"{stem}.faiss", self.folder / f"{stem}.json"

    def manifest(self, kind: str) -> Manifest | None:
        _, mpath = self.paths(kind)
        try:
            return Manifest(**json.loads(mpath.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def problem(self, kind: str, generation: int, count: int) -> str | None:
        """Why the persisted index of ``kind`` cannot be used (None when it is fresh)."""
        ipath, _ = self.paths(kind)
        m = self.manifest(kind)
        if m is None or not ipath.exists():
            return "missing"
        if m.generation != generation or m.ntotal != count:
            return (
                f"stale (built at generation {m.generation} with {m.ntotal} vectors, "
                f"catalog at {generation} with {count})"
            )
        if ipath.stat().st_size != m.file_size:
            return "truncated or modified file"
        return None

    def save(self, kind: str, index: faiss.Index, generation: int) -> Manifest:
        import faiss

        self.folder.mkdir(parents=True, exist_ok=True)
        ipath, mpath = self.paths(kind)
        # per-process temporary names: two processes rebuilding one index never write the same file
        tmp = ipath.with_name(f"{ipath.name}.{os.getpid()}.tmp")
        faiss.write_index(index, str(tmp))
        _fsync(tmp)
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        manifest = Manifest(
            kind=kind, generation=generation, ntotal=int(index.ntotal), dim=int(index.d),
            index_type=type(inner).__name__, file_size=tmp.stat().st_size,
        )
        os.replace(tmp, ipath)
        mtmp = mpath.with_name(f"{mpath.name}.{os.getpid()}.tmp")
        mtmp.write_text(json.dumps(manifest.__dict__, indent=1))
        _fsync(mtmp)
        os.replace(mtmp, mpath)
        return manifest

    def load(self, kind: str, *, mmap: bool = True) -> faiss.Index | None:
        """Read a persisted index (memory-mapped unless ``mmap`` is False); None when it cannot be read.

        A memory-mapped index is for searching: it loads in milliseconds whatever its size, but
        must not be modified (build a new one with :func:`build_index` instead).
        """
        import faiss

        ipath, _ = self.paths(kind)
        try:
            return faiss.read_index(str(ipath), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        except (RuntimeError, OSError):
            return None

    def kinds_on_disk(self) -> list[str]:
        if not self.folder.exists():
            return []
        return sorted(p.stem.replace("__", "/") for p in self.folder.glob("*.json"))

    def remove(self, kind: str) -> None:
        for p in self.paths(kind):
            p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IndexManager:
    """The index lifecycle of one registry: load, rebuild, append, remove, detect and repair stale indexes.

    Beside the :class:`IndexStore` (the files) it keeps the indexes this process loaded or rebuilt, by
    vector kind, with the catalog generation they were built at.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.indexes
        self.cache: dict[str, tuple[int, faiss.Index]] = {}

    @staticmethod
    def kind(family: str, probe: str, method: str) -> str:
        return kind_name(family, probe, method)

    def catalog_kinds(self) -> dict[str, int]:
        """Every vector kind the catalog has, with its generation."""
        with self.core.read() as con:
            return catalog.kinds(con)

    def rebuild(self, kind: str) -> int:
        """Recreate one index from DuckDB; returns the number of vectors."""
        with self.core.read() as con:
            gen = catalog.generation(con, kind)
            ids, vecs = catalog.kind_vectors(con, kind)
        read_only = self.core.read_only  # this user cannot save it: the rebuilt index serves this process only
        if len(ids) == 0:
            if not read_only:
                self.store.remove(kind)
            self.cache.pop(kind, None)
            return 0
        index = build_index(ids, vecs)
        with self.core.read() as con:
            current = catalog.generation(con, kind)
        if current == gen and not read_only:  # else a newer commit landed meanwhile and its rebuild saves that
            self.store.save(kind, index, gen)
        self.cache[kind] = (gen, index)
        return len(ids)

    def add(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> int:
        """After a commit that added exactly ``ids`` (N,) / ``vectors`` (N, D) to ``kind`` and bumped its
        generation once: append them to the index on disk instead of rebuilding it from the catalog.

        Falls back to :meth:`rebuild` whenever the index on disk is not exactly the state before
        that commit (another writer came between, a file is stale or damaged) or the new size calls for
        the other index type. Returns the number of vectors in the index.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found = self._before_commit(kind, len(ids), int(vectors.shape[1]))
        if found is None:
            return self.rebuild(kind)
        gen, index = found
        if len(ids):
            index.add_with_ids(normalise(np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)), ids)
        return self._save_updated(kind, gen, index)

    def remove(self, kind: str, ids: np.ndarray) -> int:
        """After a commit that removed exactly ``ids`` from ``kind`` and bumped its generation once: drop
        them from the index on disk (same fallback to a rebuild as :meth:`add`)."""
        import faiss

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found = self._before_commit(kind, -len(ids), None)
        if found is None:
            return self.rebuild(kind)
        gen, index = found
        if index.remove_ids(faiss.IDSelectorBatch(ids)) != len(ids):
            return self.rebuild(kind)
        return self._save_updated(kind, gen, index)

    def _before_commit(self, kind: str, change: int, dim: int | None) -> tuple[int, faiss.Index] | None:
        """(catalog generation, index loaded for modification) when the index on disk is exactly the state
        one commit before (generation - 1, ``change`` fewer vectors, dimension ``dim``, None: any) and the
        index type still fits; else None."""
        with self.core.read() as con:
            gen = catalog.generation(con, kind)
            count = catalog.kind_count(con, kind)
        before = count - change
        m = self.store.manifest(kind)
        if count <= 0 or before <= 0 or m is None or (dim is not None and m.dim != dim):
            return None
        dim = m.dim
        wanted = {"flat": "IndexFlatIP", "ivf": "IndexIVFFlat"}[choose_index_type(count, dim)]
        if m.index_type != wanted or self.store.problem(kind, gen - 1, before) is not None:
            return None
        index = self.store.load(kind, mmap=False)
        if index is None or index.ntotal != before:
            return None
        return gen, index

    def _save_updated(self, kind: str, gen: int, index: faiss.Index) -> int:
        with self.core.read() as con:
            current = catalog.generation(con, kind)
        if current == gen:  # else a newer commit landed meanwhile and that writer saves the newer index
            self.store.save(kind, index, gen)
        self.cache[kind] = (gen, index)
        return int(index.ntotal)

    def rebuild_all(self) -> dict[str, int]:
        """Recreate every index from the catalog (``taskreg index rebuild``)."""
        kinds = self.catalog_kinds()
        for stale in set(self.store.kinds_on_disk()) - set(kinds):
            self.store.remove(stale)
        return {kind: self.rebuild(kind) for kind in sorted(kinds)}

    def problems(self) -> dict[str, str]:
        """Vector kind -> why its index on disk cannot be used (missing, stale, damaged, orphaned)."""
        problems: dict[str, str] = {}
        on_disk = set(self.store.kinds_on_disk())
        with self.core.read() as con:
            kinds = catalog.kinds(con)
            for kind, gen in kinds.items():
                count = catalog.kind_count(con, kind)
                if count == 0:
                    if kind in on_disk:  # its last vectors were removed by a command killed before the rebuild
                        problems[kind] = "index without catalog vectors"
                    continue
                why = self.store.problem(kind, gen, count)
                if why:
                    problems[kind] = why
        for orphan in on_disk - set(kinds):
            problems[orphan] = "index without catalog vectors"
        return problems

    def repair(self) -> dict[str, str]:
        """Rebuild every index that is missing, stale or unreadable; returns what was repaired and why."""
        problems = self.problems()
        for kind in problems:
            if kind in self.catalog_kinds():
                self.rebuild(kind)
            else:
                self.store.remove(kind)
        return problems

    def get(self, kind: str) -> faiss.Index | None:
        """The Faiss index of one vector kind, loaded from disk or rebuilt when stale; None if empty."""
        with self.core.read() as con:
            gen = catalog.generation(con, kind)
            count = catalog.kind_count(con, kind)
        if count == 0:
            return None
        cached = self.cache.get(kind)
        if cached and cached[0] == gen and cached[1].ntotal == count:
            return cached[1]
        if self.store.problem(kind, gen, count) is None:
            index = self.store.load(kind)
            if index is not None and index.ntotal == count:
                self.cache[kind] = (gen, index)
                return index
        self.rebuild(kind)
        return self.cache[kind][1]
