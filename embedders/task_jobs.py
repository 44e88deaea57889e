"""One row of ``taskreg task add-many`` as a self-contained job, for any executor (issue 17).

A job carries everything a worker needs and nothing of the registry: the row (line number, task name, canonical data
source, optional domain), the probe's weight file (path and SHA-256, checked before loading, read with
``weights_only=True``) and input spec, the Task2Vec parameters, the fingerprint of the data already registered under
that name (or None), and the registry's Task2Vec cache directory (read only). :func:`run_embed_job` loads the data,
reads the cached embedding or computes it (the Task2Vec vector and, from the same features pass, the mean features:
the domain embedding) and returns an :class:`EmbedOutcome`; a row that cannot be embedded returns its one-line error
instead of raising, so the other rows go on. The driver writes the cache and commits the outcome; workers never open
the catalog.

The cache file name (:func:`cache_name`) and the cache format (:func:`embedding_arrays`,
:func:`embedding_from_arrays`) are shared with the registry's in-process embedding (``TaskService.embed_dataset``),
so both read each other's entries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskreg.arrays import load_npz
from taskreg.embedders.task_embedding import TaskEmbedding
from taskreg.errors import TaskregError

if TYPE_CHECKING:
    from torch import nn

    from taskreg.data import Dataset
    from taskreg.embedders.probes import ProbeSpec


def cache_name(probe_sha256: str, input_size: int, fingerprint: str, method: str, max_samples: int | None, seed: int,
               device_type: str) -> str:
    """The file name (in the registry's ``cache/task2vec``) of an embedding: by probe weights, input size, dataset
    fingerprint, method, sample size, seed and device type (a GPU's result may differ from the CPU's in the last
    bits)."""
    return (f"{probe_sha256[:16]}-{input_size}px-{fingerprint[:16]}-{method}-{max_samples}-{seed}-"
            f"{device_type}.npz")


_EMBEDDING_SCALARS = ("method", "arch", "n_samples", "n_classes", "seed", "head_train_accuracy", "head_train_loss",
                      "seconds")


def embedding_arrays(emb: TaskEmbedding) -> dict[str, np.ndarray]:
    """A TaskEmbedding as plain arrays for the cache (no pickled objects)."""
    assert emb.mean_features is not None
    out = {"vector": emb.vector, "mean_features": emb.mean_features,
           "layout_names": np.array([n for n, _ in emb.layout], dtype=np.str_),
           "layout_sizes": np.array([k for _, k in emb.layout], dtype=np.int64)}
    out.update({k: np.array(getattr(emb, k)) for k in _EMBEDDING_SCALARS})
    return out


def embedding_from_arrays(arrays: dict[str, np.ndarray] | None) -> TaskEmbedding | None:
    """The TaskEmbedding cached by :func:`embedding_arrays`; None for a miss or a file of another shape."""
    want = {"vector", "mean_features", "layout_names", "layout_sizes", *_EMBEDDING_SCALARS}
    if arrays is None or set(arrays) != want:
        return None
    a = arrays
    return TaskEmbedding(
        vector=a["vector"], method=str(a["method"]), arch=str(a["arch"]), n_samples=int(a["n_samples"]),
        n_classes=int(a["n_classes"]), seed=int(a["seed"]),
        layout=[(str(n), int(k)) for n, k in zip(a["layout_names"], a["layout_sizes"], strict=True)],
        head_train_accuracy=float(a["head_train_accuracy"]), head_train_loss=float(a["head_train_loss"]),
        seconds=float(a["seconds"]), mean_features=a["mean_features"],
    )


@dataclass(frozen=True)
class DataInfo:
    """What the catalog records of a task's data (no arrays): canonical source, domain, size, classes, fingerprint."""

    source: str
    domain: str
    n: int
    n_classes: int
    fingerprint: str

    @classmethod
    def of(cls, ds: Dataset) -> DataInfo:
        return cls(ds.source, ds.domain, ds.n, ds.n_classes, ds.fingerprint())


@dataclass(frozen=True)
class EmbedJob:
    """Embed one manifest row with a probe (picklable; run by :func:`run_embed_job`)."""

    line: int
    name: str
    source: str  # canonical (absolute paths): a worker may run in another directory
    domain: str | None  # the row's domain, replacing the data's; None: the data's own
    registered: tuple[str, str] | None  # (source, fingerprint) of the data already registered as ``name``, or None
    probe: str  # name, for messages
    weights: str  # absolute path of the probe's state_dict
    sha256: str
    spec: ProbeSpec
    method: str
    max_samples: int | None
    seed: int
    device: str
    cache_dir: str | None  # the registry's cache/task2vec, read only (None: no cache)


@dataclass(frozen=True)
class EmbedOutcome:
    """The result of one job: the data's record and its embedding, or the one-line ``error`` that refused the row.
    ``cache_path`` is where the embedding belongs in the cache; ``cached`` says it was read from there."""

    line: int
    name: str
    data: DataInfo | None = None
    embedding: TaskEmbedding | None = None
    cache_path: str | None = None
    cached: bool = False
    error: str | None = None


def _probe(job: EmbedJob) -> nn.Module:
    from taskreg.embedders.weight_files import load_verified_network

    return load_verified_network(job.weights, job.spec.arch, job.sha256, f"probe {job.probe}")


def embed_job_data(job: EmbedJob) -> Dataset:
    """The row's data, loaded and checked: the row's domain applied, and the same data as the task already
    registered under its name (if any)."""
    from taskreg import data as datasets

    ds = datasets.load(job.source)
    if job.domain is not None:
        ds = replace(ds, domain=job.domain)
    if job.registered is not None and job.registered[1] != ds.fingerprint():
        raise TaskregError(f"task {job.name!r} already exists with different data ({job.registered[0]})")
    return ds


def run_embed_job(job: EmbedJob) -> EmbedOutcome:
    """Load the row's data and embed it (from the cache when there); a TaskregError becomes the outcome's error."""
    from taskreg.devices import device_type

    try:
        ds = embed_job_data(job)
        info = DataInfo.of(ds)
        path = None
        if job.cache_dir is not None:
            path = str(Path(job.cache_dir) / cache_name(job.sha256, job.spec.input_size, info.fingerprint, job.method,
                                                        job.max_samples, job.seed, device_type(job.device)))
        emb = embedding_from_arrays(load_npz(path)) if path is not None else None
        if emb is not None:
            return EmbedOutcome(job.line, job.name, info, emb, path, cached=True)
        from taskreg.embedders.task2vec import embed

        emb = embed(_probe(job), job.spec, ds.x, ds.y, method=job.method, max_samples=job.max_samples,
                    seed=job.seed, device=job.device)
        return EmbedOutcome(job.line, job.name, info, emb, path)
    except TaskregError as exc:
        return EmbedOutcome(job.line, job.name, error=str(exc))
