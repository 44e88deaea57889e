"""One (expert, task) pair of ``taskreg expert eval`` as a self-contained job, for any executor (issue 17).

A job carries everything a worker needs and nothing of the registry: the expert's weight file (path and SHA-256,
checked before loading, read with ``weights_only=True``), its architecture and input spec, the task's data source
and fingerprint (the data must still be what was registered), where the expert's features of that data are cached
(or None), and the linear-probe protocol. :func:`run_eval_job` loads, extracts (or reads the cached features),
runs the linear probe and returns an :class:`EvalOutcome`; the driver commits outcomes to the catalog. Workers
never open the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from taskreg.arrays import load_npy, save_npy
from taskreg.errors import TaskregError

if TYPE_CHECKING:
    from torch import nn

    from taskreg.data import Dataset
    from taskreg.embedders.probes import ProbeSpec
    from taskreg.trainers.experts import LinearProbeProtocol


@dataclass(frozen=True)
class EvalJob:
    """Measure one expert on one task (picklable; run by :func:`run_eval_job`)."""

    expert_id: int
    expert: str  # name, for messages
    task_id: int
    task: str
    weights: str  # absolute path of the expert's state_dict
    sha256: str
    arch: str
    spec: ProbeSpec
    source: str
    fingerprint: str
    feature_path: str | None  # the features cache file, or None (not cached: e.g. a read-only registry)
    protocol: LinearProbeProtocol
    device: str = "cpu"


@dataclass(frozen=True)
class EvalOutcome:
    """The result of one job: the linear probe's test and training errors, or ``finite=False`` when the expert's
    features hold NaN or Inf (broken weights; nothing to store)."""

    expert_id: int
    task_id: int
    finite: bool
    test_error: float = float("nan")
    train_error: float = float("nan")
    seconds: float = 0.0


_DATA: dict[str, Dataset] = {}  # fingerprint -> dataset, the most recently used last, at most DATA_BYTES in all
DATA_BYTES = 512 * 2**20


def _dataset(job: EvalJob) -> Dataset:
    """The task's data, loaded once per worker while it fits in :data:`DATA_BYTES` (every expert runs on every
    task, so each worker would otherwise reload each task's data once per expert)."""
    from taskreg import data as datasets

    ds = _DATA.pop(job.fingerprint, None)
    if ds is None:
        ds = datasets.load(job.source)
        if ds.fingerprint() != job.fingerprint:
            raise TaskregError(f"task {job.task}: the data at {job.source} changed since it was registered")
    _DATA[job.fingerprint] = ds
    while sum(d.x.nbytes for d in _DATA.values()) > DATA_BYTES and len(_DATA) > 1:
        del _DATA[next(iter(_DATA))]
    return ds


def _expert(job: EvalJob) -> nn.Module:
    from taskreg.embedders.weight_files import load_verified_network

    return load_verified_network(job.weights, job.arch, job.sha256, f"expert {job.expert}")


def run_eval_job(job: EvalJob) -> EvalOutcome:
    """Features of the expert on the task's data (from the cache when there), then the linear probe."""
    from taskreg.trainers.experts import extract_features, linear_probe_error

    ds = _dataset(job)
    feats = load_npy(job.feature_path, rows=ds.n) if job.feature_path else None
    if feats is None:
        feats = extract_features(_expert(job), job.spec, ds.x, device=job.device)
        if job.feature_path:
            save_npy(job.feature_path, feats)
    if not np.isfinite(feats).all():
        return EvalOutcome(job.expert_id, job.task_id, finite=False)
    res = linear_probe_error(feats, ds.y, job.protocol)
    return EvalOutcome(job.expert_id, job.task_id, True, res.test_error, res.train_error, res.seconds)
