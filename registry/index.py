"""Faiss indexes derived from the catalog: build, search, and their lifecycle in a registry
(:class:`IndexManager`: rebuild, repair, append, remove, compact). The files (index, manifest, append log)
are :mod:`taskreg.registry.index_store`'s.

One index per vector kind (``task/<probe>/<method>``, ``model2vec/<probe>/<method>``,
``domain/<probe>/domain``), keyed by catalog ids (``IndexIDMap2``). Vectors are L2-normalised so
inner product is cosine similarity. The asymmetric Task2Vec distance is not a metric, so the
index only proposes candidates; the caller re-ranks them exactly.

Index type (chosen by measurement: ``benchmarks/scale_bench.py``, ``benchmarks/index_bench.py`` and the sections
"Scale" and "Issue 16" of ``benchmarks/RESULTS.md``): an exact ``IndexFlatIP`` while an exact query is cheap,
IVF-SQfp16 above that. An exact query reads all n x dim floats, so the switch is at
``n * dim >= APPROXIMATE_THRESHOLD`` floats: 100,000 Task2Vec vectors of ``cifar_resnet20`` (784 filters; there
one exact query took 39 ms p50 on the shared 2-core test machine), 16,300 of ResNet-18 (4,800), never for the
64-dim domain vectors of a catalog below 1.2M tasks. IVF-SQfp16 clusters the vectors with k-means into
``ivf_nlist(n, "ivf16")`` lists (2 sqrt(n): 2,000 at 1M), stores each vector as float16 and scans the
``ivf_nprobe`` lists nearest to the query (3.2 %, at least 32: 64 at 1M). At 1M x 784 it answers a top-10
query in 2.4 ms p50 / 3.1 ms p99 on one thread at recall@10 0.995 (0.98 on queries from unseen task
families) in 1.6 GB, where IVF-Flat with 500 lists (the type before issue 16, still ``index_type="ivf"``) took
9.4 / 12.2 ms at 1.0 / 0.97 in 3.2 GB: half the bytes per scanned vector and lists four times smaller. It builds in
35 s at 1M on an idle machine (the k-means on 2,000 lists; IVF-Flat: 8 s).
Rejected by the same measurement: IVF-SQ8 with
exact re-ranking (IndexRefineFlat) is as fast but loses unseen-family neighbours in its 8-bit codes (0.97 at
k_factor 8) and needs 3.9 GB; IVF-PQ + refine lost even seen neighbours; HNSW builds 8x slower, has the
worst recall on unseen families and cannot remove ids.
Vectors are normalised and added in chunks, so building never holds a second full copy of them.

Each index file has a manifest recording the catalog generation it was built from; an index whose manifest is
missing, whose generation differs from the catalog's, or whose file is truncated or unreadable is stale and gets
rebuilt from DuckDB. Files are written to a temporary name and renamed, so a crash never leaves a half-written
index behind. Indexes are loaded memory-mapped (the vectors stay in the page cache instead of being copied into
each process), which is safe because a file is never modified in place: a rebuild writes a new file and renames
it. A large index file (``LOG_MIN_BYTES``) is not rewritten for each ``task add`` / ``task remove``: the commit
goes to its append log (see :mod:`taskreg.registry.index_store`), searches merge the file's hits with an exact
search of the log (:class:`LoggedIndex`), and ``taskreg index compact``, a rebuild, or the commit that finds
``LOG_MAX_VECTORS`` in the log merges it into the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.index_store import AppendLog, IndexStore, Manifest, kind_name, parse_log

__all__ = ["AppendLog", "IndexManager", "IndexStore", "LoggedIndex", "Manifest", "build_index", "kind_name",
           "normalise", "parse_log", "search"]

if TYPE_CHECKING:
    import faiss

    from taskreg.registry.core import Core

# n * dim (floats read by one exact query) from which an IVF index replaces the exact flat index.
APPROXIMATE_THRESHOLD = 100_000 * 784
IVF_MIN_VECTORS = 10_000  # below this, exact whatever the dimension (k-means on a few lists is pointless)
# IVF-Flat (the type before issue 16; kept for index_type="ivf"): nlist = sqrt(n)/2, and the fraction of the lists
# scanned per query, with a floor: at 1M, 16 of 500 lists gave recall@10 0.97, but 0.85 on queries from unseen
# task families; 40 give 0.99 and 0.95 (RESULTS.md, "Scale").
IVF_SCAN_FRACTION = 0.08
IVF_MIN_NPROBE = 24
# IVF-SQfp16 (the type above the threshold since issue 16; benchmarks/index_bench.py): four times as many, smaller
# lists (2 sqrt(n): 2,000 at 1M) of which a smaller share is scanned (64 of 2,000 at 1M), each vector stored
# as float16 (half the bytes a scan reads, half the memory).
IVF16_LISTS_PER_SQRT = 2.0
IVF16_SCAN_FRACTION = 0.032
IVF16_MIN_NPROBE = 32
IVF_MAX_NLIST = 4096
IVF_TRAIN_PER_LIST = 40  # k-means training points per list (Faiss warns below 39)
IVF_KMEANS_ITERATIONS = 10
ADD_CHUNK = 65_536  # rows normalised and added at a time
INDEX_TYPES = ("flat", "ivf", "ivf16")
# What each index type is called in a manifest (the Faiss class inside the IndexIDMap2).
INDEX_CLASSES = {"flat": "IndexFlatIP", "ivf": "IndexIVFFlat", "ivf16": "IndexIVFScalarQuantizer"}
# Append log (``index/<kind>.log``): an index whose file is at least this big takes new and removed vectors
# into its log instead of being rewritten, until the log holds LOG_MAX_VECTORS (then they are merged).
LOG_MIN_BYTES = 64 * 2**20
LOG_MAX_VECTORS = 4096


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, float32, zero rows left at zero. (N, D) -> (N, D)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def ivf_nlist(n: int, index_type: str = "ivf") -> int:
    """Number of IVF lists for ``n`` vectors: sqrt(n) / 2 for IVF-Flat (500 of 2,000 vectors at 1M), 2 sqrt(n)
    for IVF-SQfp16 (2,000 of 500), within [16, 4096] and at least ``IVF_TRAIN_PER_LIST`` vectors per list."""
    per_sqrt = IVF16_LISTS_PER_SQRT if index_type == "ivf16" else 0.5
    return int(min(max(round(math.sqrt(max(n, 1)) * per_sqrt), 16), IVF_MAX_NLIST,
                   max(n // IVF_TRAIN_PER_LIST, 1)))


def ivf_nprobe(nlist: int, index_type: str = "ivf") -> int:
    """Lists scanned per query: a fraction of them with a floor (IVF-Flat: 40 of 500 at 1M; IVF-SQfp16: 64 of
    2,000)."""
    fraction, floor = ((IVF16_SCAN_FRACTION, IVF16_MIN_NPROBE) if index_type == "ivf16"
                       else (IVF_SCAN_FRACTION, IVF_MIN_NPROBE))
    return int(min(nlist, max(floor, math.ceil(fraction * nlist))))


def choose_index_type(n: int, dim: int) -> str:
    """'ivf16' when an exact query would read ``APPROXIMATE_THRESHOLD`` floats or more, else 'flat' (exact)."""
    return "ivf16" if n >= IVF_MIN_VECTORS and n * dim >= APPROXIMATE_THRESHOLD else "flat"


def build_index(ids: np.ndarray, vectors: np.ndarray, *, index_type: str | None = None, seed: int = 0,
                nprobe: int | None = None) -> faiss.Index:
    """An ``IndexIDMap2`` over cosine similarity: exact while small, IVF-SQfp16 above the threshold.

    ids : (N,) int64 catalog ids; vectors : (N, D) float32 (normalised here, chunk by chunk).
    index_type : 'flat', 'ivf' (IVF-Flat, the type before issue 16) or 'ivf16' (IVF over float16 codes,
        ``IndexIVFScalarQuantizer`` QT_fp16); None chooses by size (:func:`choose_index_type`).
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
    if index_type in ("ivf", "ivf16"):
        nlist = ivf_nlist(n, index_type)
        quantizer = faiss.IndexFlatIP(dim)  # kept alive by the IVF index's Python wrapper
        ivf: faiss.IndexIVF
        if index_type == "ivf":
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = IVF_KMEANS_ITERATIONS
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
        ivf.nprobe = min(nprobe or ivf_nprobe(nlist, index_type), nlist)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
        ivf.train(normalise(vectors[sample]))
        inner = ivf
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)
    for start in range(0, n, ADD_CHUNK):
        stop = min(start + ADD_CHUNK, n)
        index.add_with_ids(normalise(vectors[start:stop]), ids[start:stop])
    return index


def _inner(index: faiss.Index) -> faiss.Index:
    import faiss

    return faiss.downcast_index(index.index) if hasattr(index, "index") else index


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF part of an index (IVF-Flat or IVF-SQfp16); None for an exact index."""
    import faiss

    inner = _inner(index)
    return faiss.extract_index_ivf(inner) if isinstance(inner, faiss.IndexIVF) else None


def describe(index: faiss.Index | LoggedIndex) -> str:
    """One line: the index type and its search settings, e.g. 'IVF2000-SQfp16, nprobe 64'."""
    import faiss

    if isinstance(index, LoggedIndex):
        return f"{describe(index.main)} + append log of {index.log.batches} commits"
    ivf = _ivf(index)
    if ivf is None:
        return "exact flat"
    code = "SQfp16" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFScalarQuantizer) else "Flat"
    return f"IVF{ivf.nlist}-{code}, nprobe {ivf.nprobe}"


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


def search(index: faiss.Index | LoggedIndex, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and cosine similarities for one query vector (D,).

    On an IVF index the number of lists scanned grows with ``k`` so that the scanned lists hold
    about twice ``k`` vectors: a large candidate request still gets ``k`` answers. An index with
    an append log (:class:`LoggedIndex`) merges the main index's hits with an exact search of the log.
    """
    k = min(int(k), int(index.ntotal))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    q = normalise(np.asarray(query, dtype=np.float32).reshape(1, -1))
    if q.shape[1] != index.d:
        raise TaskregError(f"query has dimension {q.shape[1]}, the index holds vectors of dimension {index.d}")
    if isinstance(index, LoggedIndex):
        return index.search(q[0], k)
    return _search_faiss(index, q, k)


def _search_faiss(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one normalised query (1, D) in a Faiss index; k <= ntotal."""
    import faiss

    params: faiss.SearchParameters | None = None
    ivf = _ivf(index)
    if ivf is not None:
        per_list = max(ivf.ntotal / max(ivf.nlist, 1), 1.0)
        ivf_params = faiss.SearchParametersIVF()
        ivf_params.nprobe = int(min(ivf.nlist, max(ivf.nprobe, math.ceil(2 * k / per_list))))
        params = ivf_params
    with _one_thread():
        sims, ids = index.search(q, k, params=params)
    keep = ids[0] >= 0
    return ids[0][keep], sims[0][keep]

class LoggedIndex:
    """An index file plus its append log, searched as one: the file's hits minus the removed ids, merged with an
    exact search over the added vectors (at most LOG_MAX_VECTORS: about a millisecond at dimension 784)."""

    def __init__(self, main: faiss.Index, log: AppendLog) -> None:
        self.main, self.log = main, log
        self.removed = set(log.removed.tolist())

    @property
    def ntotal(self) -> int:
        return int(self.main.ntotal) + self.log.net

    @property
    def d(self) -> int:
        return int(self.main.d)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids (k,), similarities (k,)) of one normalised query (D,)."""
        want = min(k + len(self.removed), int(self.main.ntotal))
        ids, sims = _search_faiss(self.main, q[None], want) if want > 0 else (np.zeros(0, np.int64),
                                                                              np.zeros(0, np.float32))
        if self.removed:
            keep = ~np.isin(ids, self.log.removed)
            ids, sims = ids[keep], sims[keep]
        ids = np.concatenate([ids, self.log.added_ids])
        sims = np.concatenate([sims, self.log.added @ q])
        order = np.argsort(-sims, kind="stable")[:k]
        return ids[order], sims[order].astype(np.float32)


class IndexManager:
    """The index lifecycle of one registry: load, rebuild, append, remove, detect and repair stale indexes.

    Beside the :class:`IndexStore` (the files) it keeps the indexes this process loaded or rebuilt, by
    vector kind, with the catalog generation they were built at.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.indexes
        self.cache: dict[str, tuple[int, faiss.Index | LoggedIndex]] = {}
        self.log_min_bytes = LOG_MIN_BYTES  # index files from this size take commits into their append log
        self.log_max_vectors = LOG_MAX_VECTORS  # a log this long is merged into its index file by the next commit

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
        del vecs
        with self.core.read() as con:
            current = catalog.generation(con, kind)
        if current == gen and not read_only:  # else a newer commit landed meanwhile and its rebuild saves that
            self.store.save(kind, index, gen)
        self.cache[kind] = (gen, index)
        return len(ids)

    def add(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> int:
        """After a commit that added exactly ``ids`` (N,) / ``vectors`` (N, D) to ``kind`` and bumped its
        generation once: bring the index on disk up to date without rebuilding it from the catalog.

        A large index file (``log_min_bytes``) gets the vectors in its append log, in constant time; a small one
        is rewritten with them (and with its log, if any). Falls back to :meth:`rebuild` whenever the index on
        disk is not exactly the state before that commit (another writer came between, a file is stale, damaged
        or its log torn). Returns the number of vectors in the index.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = normalise(np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1))
        return self._commit(kind, 1, ids, vectors)

    def remove(self, kind: str, ids: np.ndarray) -> int:
        """After a commit that removed exactly ``ids`` from ``kind`` and bumped its generation once: drop them from
        the index on disk (logged as removed for a large index file; same fallback to a rebuild as :meth:`add`)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._commit(kind, -1, ids, None)

    def _commit(self, kind: str, op: int, ids: np.ndarray, vectors: np.ndarray | None) -> int:
        with self.core.lock():  # the registry's write lock: appending and rewriting exclude each other
            with self.core.read() as con:
                gen = catalog.generation(con, kind)
                count = catalog.kind_count(con, kind)
            state = self.store.state(kind)
            found = None if count <= 0 or isinstance(state, str) else state
            if found is not None:
                m, log = found
                before = (log.generation, m.ntotal + log.net) if log else (m.generation, m.ntotal)
                if before != (gen - 1, count - op * len(ids)) or (vectors is not None and vectors.shape[1] != m.dim):
                    found = None
            if found is not None:
                records = (log.records if log else 0) + len(ids)
                if m.file_size >= self.log_min_bytes and records <= self.log_max_vectors:
                    self.store.append_log(kind, m, log, op, ids, vectors, gen)
                    self.cache.pop(kind, None)
                    return count
                merged = self._merged(kind, m, log, op, ids, vectors, count)
                if merged is not None:
                    self.store.save(kind, merged, gen)
                    self.cache[kind] = (gen, merged)
                    return int(merged.ntotal)
        return self.rebuild(kind)

    def _merged(self, kind: str, m: Manifest, log: AppendLog | None, op: int, ids: np.ndarray,
                vectors: np.ndarray | None, count: int) -> faiss.Index | None:
        """The index file of ``kind`` loaded for modification with its log and one more batch applied; None
        when that is not possible (the size calls for the other index type, the type cannot remove ids)."""
        import faiss

        if m.index_type != INDEX_CLASSES[choose_index_type(count, m.dim)]:
            return None
        index = self.store.load(kind, mmap=False)
        if index is None or index.ntotal != m.ntotal:
            return None
        removed = [log.removed] if log is not None else []
        added_ids, added = ([log.added_ids], [log.added]) if log is not None else ([], [])
        if op == 1 and vectors is not None:
            added_ids.append(ids)
            added.append(vectors)
        elif op == -1:
            in_log = np.isin(ids, added_ids[0]) if added_ids else np.zeros(len(ids), bool)
            if in_log.any():  # removed before ever reaching the file
                keep = ~np.isin(added_ids[0], ids)
                added_ids[0], added[0] = added_ids[0][keep], added[0][keep]
            removed.append(ids[~in_log])
        gone = np.concatenate(removed) if removed else np.zeros(0, np.int64)
        if len(gone):
            try:
                if index.remove_ids(faiss.IDSelectorBatch(gone)) != len(gone):
                    return None
            except RuntimeError:  # a type that cannot remove ids: rebuild
                return None
        if added_ids and sum(len(a) for a in added_ids):
            index.add_with_ids(np.concatenate(added), np.concatenate(added_ids))
        return index if index.ntotal == count else None

    def compact(self, kind: str) -> tuple[int, int]:
        """Merge the append log of ``kind`` into its index file (``taskreg index compact``); a stale index is
        rebuilt instead. Returns (log records merged, vectors in the index)."""
        with self.core.lock():  # the registry's write lock: appending and rewriting exclude each other
            with self.core.read() as con:
                gen = catalog.generation(con, kind)
                count = catalog.kind_count(con, kind)
            found = self.store.state(kind)
            if count > 0 and not isinstance(found, str) and self.store.problem(kind, gen, count) is None:
                m, log = found
                if log is None:
                    return 0, m.ntotal
                merged = self._merged(kind, m, log, 0, np.zeros(0, np.int64), None, count)
                if merged is not None:
                    self.store.save(kind, merged, gen)
                    self.cache[kind] = (gen, merged)
                    return log.records, int(merged.ntotal)
                records = log.records
            else:
                records = 0
        return records, self.rebuild(kind)

    def compact_all(self) -> dict[str, tuple[int, int]]:
        """:meth:`compact` every vector kind whose index has an append log on disk."""
        kinds = self.catalog_kinds()
        return {kind: self.compact(kind) for kind in sorted(kinds) if self.store.log_path(kind).exists()}

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

    def get(self, kind: str) -> faiss.Index | LoggedIndex | None:
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
            found = self.store.state(kind)
            index = self.store.load(kind)
            if index is not None and not isinstance(found, str):
                full: faiss.Index | LoggedIndex = index if found[1] is None else LoggedIndex(index, found[1])
                if full.ntotal == count:
                    self.cache[kind] = (gen, full)
                    return full
        self.rebuild(kind)
        return self.cache[kind][1]
