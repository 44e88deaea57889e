"""The ``index/`` folder of a registry: index files, their manifests and append logs (see :mod:`.index`).

Each index file ``index/<kind>.faiss`` has a manifest ``index/<kind>.json`` recording the catalog generation it
was built from, the number of vectors, the dimension and the file size. Beside it, a large index may have an
append log ``index/<kind>.log`` (issue 16): the commits since the file was saved, one batch each, so that
``task add`` / ``task remove`` cost the same at a million vectors as at ten. The log starts with a header naming
the index file it extends (its generation, ntotal and size: a log left from before the file was last saved is
ignored), then batches ``(magic, op, count, generation, crc32)`` + ids (+ float32 vectors for an addition),
each written by one ``write`` on an ``O_APPEND`` descriptor and fsync'd. A batch cut short by a crash, a bad
checksum or a generation that does not follow the previous one makes the index "torn"/"corrupt"/"out of order":
it is then rebuilt from DuckDB, the source of truth, like any stale index.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss


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

_LOG_HEADER = struct.Struct("<8sqqqq")  # magic, dim, generation, ntotal and file size of the index it extends
_LOG_BATCH = struct.Struct("<8sqqqI4x")  # magic, op (+1 add, -1 remove), count, generation, crc32 of the rest
_LOG_MAGIC, _BATCH_MAGIC = b"TRIXLOG1", b"TRIXBTCH"


@dataclass
class AppendLog:
    """The content of an append log: the commits since the index file was saved, one batch each.

    generation : catalog generation after the last batch.
    added_ids (L,) int64 / added (L, D) float32 normalised : vectors added since, in order (a removed one dropped).
    removed (R,) int64 : ids removed since (hidden from the index file's answers).
    """

    generation: int
    added_ids: np.ndarray
    added: np.ndarray
    removed: np.ndarray
    batches: int
    records: int  # vectors written to the log (added + removed), what LOG_MAX_VECTORS bounds

    @property
    def net(self) -> int:
        """Vectors the index holds beyond its file's ``ntotal``."""
        return len(self.added_ids) - len(self.removed)


def _log_header(m: Manifest) -> bytes:
    return _LOG_HEADER.pack(_LOG_MAGIC, m.dim, m.generation, m.ntotal, m.file_size)


def _log_batch(op: int, ids: np.ndarray, vectors: np.ndarray | None, generation: int) -> bytes:
    payload = np.ascontiguousarray(ids, dtype="<i8").tobytes()
    if vectors is not None:
        payload += np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    head = struct.pack("<qqq", op, len(ids), generation)
    return _LOG_BATCH.pack(_BATCH_MAGIC, op, len(ids), generation, zlib.crc32(head + payload)) + payload


def parse_log(data: bytes, m: Manifest) -> AppendLog | str | None:
    """Read an append log written on top of the index file described by ``m``.

    None when the log belongs to an earlier index file (a leftover: the index was saved since, so the log's
    commits are in it or the generation check catches them); a one-line problem when it is torn (a batch
    cut short by a crash), corrupt (checksum) or out of order (generations not consecutive from ``m``'s).
    """
    if len(data) < _LOG_HEADER.size:
        return "torn append log (incomplete header)"
    magic, dim, generation, ntotal, file_size = _LOG_HEADER.unpack_from(data, 0)
    if magic != _LOG_MAGIC:
        return "corrupt append log (bad header)"
    if (dim, generation, ntotal, file_size) != (m.dim, m.generation, m.ntotal, m.file_size):
        return None
    pos, gen, batches, records = _LOG_HEADER.size, generation, 0, 0
    added: dict[int, np.ndarray] = {}
    removed: list[int] = []
    while pos < len(data):
        if len(data) - pos < _LOG_BATCH.size:
            return "torn append log (incomplete batch)"
        magic, op, count, batch_gen, crc = _LOG_BATCH.unpack_from(data, pos)
        pos += _LOG_BATCH.size
        size = count * 8 + (count * dim * 4 if op == 1 else 0)
        if magic != _BATCH_MAGIC or op not in (1, -1) or count < 0:
            return "corrupt append log (bad batch header)"
        if len(data) - pos < size:
            return "torn append log (incomplete batch)"
        payload = data[pos:pos + size]
        pos += size
        if zlib.crc32(struct.pack("<qqq", op, count, batch_gen) + payload) != crc:
            return "corrupt append log (checksum)"
        if batch_gen != gen + 1:
            return f"append log out of order (generation {batch_gen} after {gen})"
        gen, batches, records = batch_gen, batches + 1, records + count
        ids = np.frombuffer(payload, dtype="<i8", count=count)
        if op == 1:
            vecs = np.frombuffer(payload, dtype="<f4", offset=count * 8).reshape(count, dim)
            added.update(zip(ids.tolist(), vecs, strict=True))
        else:
            for i in ids.tolist():
                if added.pop(i, None) is None:
                    removed.append(i)
    added_ids = np.fromiter(added, dtype=np.int64, count=len(added))
    vectors = np.stack(list(added.values())).astype(np.float32) if added else np.zeros((0, dim), np.float32)
    return AppendLog(gen, added_ids, vectors, np.asarray(removed, dtype=np.int64), batches, records)

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

    def log_path(self, kind: str) -> Path:
        return self.folder / f"{_file_stem(kind)}.log"

    def read_log(self, kind: str, m: Manifest) -> AppendLog | str | None:
        """The append log on top of the index file described by ``m`` (see :func:`parse_log`); None: no log."""
        try:
            data = self.log_path(kind).read_bytes()
        except FileNotFoundError:
            return None
        return parse_log(data, m)

    def state(self, kind: str) -> tuple[Manifest, AppendLog | None] | str:
        """(manifest, append log or None) of the index on disk, or why it cannot be read."""
        ipath, _ = self.paths(kind)
        m = self.manifest(kind)
        if m is None or not ipath.exists():
            return "missing"
        if ipath.stat().st_size != m.file_size:
            return "truncated or modified file"
        log = self.read_log(kind, m)
        return log if isinstance(log, str) else (m, log)

    def problem(self, kind: str, generation: int, count: int) -> str | None:
        """Why the persisted index of ``kind`` (file + append log) cannot be used (None when it is fresh)."""
        found = self.state(kind)
        if isinstance(found, str):
            return found
        m, log = found
        gen, total = (log.generation, m.ntotal + log.net) if log else (m.generation, m.ntotal)
        if gen != generation or total != count:
            with_log = f" + {log.batches} logged commits" if log else ""
            return (
                f"stale (built at generation {gen} with {total} vectors{with_log}, "
                f"catalog at {generation} with {count})"
            )
        return None

    def append_log(self, kind: str, m: Manifest, log: AppendLog | None, op: int, ids: np.ndarray,
                   vectors: np.ndarray | None, generation: int) -> None:
        """Append one commit's batch (op +1: ``vectors`` (N, D) normalised added under ``ids`` (N,); -1: ``ids``
        removed) to the log of the index file ``m``: one write on an O_APPEND descriptor, then fsync. A log
        that is not ``log`` (a leftover of an earlier index file) is replaced. Constant time in the index size."""
        path = self.log_path(kind)
        data = _log_batch(op, ids, vectors, generation)
        fresh = log is None
        if fresh:
            path.unlink(missing_ok=True)
            data = _log_header(m) + data
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if fresh:
            _fsync_dir(self.folder)

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
        self.log_path(kind).unlink(missing_ok=True)  # its commits are in the new file (a leftover log is ignored)
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
        for p in (*self.paths(kind), self.log_path(kind)):
            p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a file created in ``folder`` durable (its directory entry)."""
    _fsync(folder)
