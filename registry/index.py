"""Faiss indexes derived from the catalog: build, persist atomically, detect staleness, search.

One index per vector kind (``task/<probe>/<method>``, ``model2vec/<probe>/<method>``,
``domain/<probe>/domain``), keyed by catalog ids (``IndexIDMap2``). Vectors are L2-normalised so
inner product is cosine similarity. The asymmetric Task2Vec distance is not a metric, so the
index only proposes candidates; the caller re-ranks them exactly.

Each index file ``index/<kind>.faiss`` has a manifest ``index/<kind>.json`` recording the catalog
generation it was built from, the number of vectors, the dimension and the file size. An index
whose manifest is missing, whose generation differs from the catalog's, or whose file is truncated
or unreadable is stale and gets rebuilt from DuckDB. Files are written to a temporary name and
renamed, so a crash never leaves a half-written index behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

# Above this many vectors an exact flat index gets slow per query; switch to HNSW.
APPROXIMATE_THRESHOLD = 200_000


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


def build_index(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """An ``IndexIDMap2`` over cosine similarity: exact while small, HNSW above the threshold.

    ids : (N,) int64 catalog ids; vectors : (N, D) float32.
    """
    import faiss

    n, dim = vectors.shape
    if n >= APPROXIMATE_THRESHOLD:
        inner = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        inner.hnsw.efSearch = 128
    else:
        inner = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)
    if n:
        index.add_with_ids(normalise(vectors), np.asarray(ids, dtype=np.int64))
    return index


def search(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and cosine similarities for one query vector (D,)."""
    k = min(int(k), int(index.ntotal))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    sims, ids = index.search(normalise(np.asarray(query, dtype=np.float32)[None, :]), k)
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
        tmp = ipath.with_suffix(".faiss.tmp")
        faiss.write_index(index, str(tmp))
        _fsync(tmp)
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        manifest = Manifest(
            kind=kind, generation=generation, ntotal=int(index.ntotal), dim=int(index.d),
            index_type=type(inner).__name__, file_size=tmp.stat().st_size,
        )
        os.replace(tmp, ipath)
        mtmp = mpath.with_suffix(".json.tmp")
        mtmp.write_text(json.dumps(manifest.__dict__, indent=1))
        _fsync(mtmp)
        os.replace(mtmp, mpath)
        return manifest

    def load(self, kind: str) -> faiss.Index | None:
        """Read a persisted index; None when the file cannot be read."""
        import faiss

        ipath, _ = self.paths(kind)
        try:
            return faiss.read_index(str(ipath))
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
