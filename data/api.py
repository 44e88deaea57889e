"""The public entry points of the data package (re-exported by ``taskreg.data``)."""

from __future__ import annotations

import os

import numpy as np

from taskreg.data import source_selectors
from taskreg.data.dataset import Dataset, DatasetSummary, SourceSpec
from taskreg.data.sources import KINDS, list_builtins
from taskreg.data.validation import fail
from taskreg.errors import TaskregError

__all__ = ["canonical_source", "describe", "list_builtins", "load", "parse_source"]


def parse_source(source: str) -> SourceSpec:
    """Parse a source string and check its selectors' syntax (does not touch the file system).

    Raises TaskregError for an empty source, an unknown builtin, an unknown or repeated selector, or a
    malformed selector value. Paths are made absolute (``~`` expanded).
    """
    if not isinstance(source, str):
        raise TaskregError(f"dataset source must be a string, got {type(source).__name__}")
    if not source.strip():
        raise TaskregError("dataset source is empty; give PATH.npz, an image folder or builtin:NAME")
    base, _, query = source.strip().partition("?")
    chosen = source_selectors.parse_selectors(source, query)
    lowered = base.lower()
    for kind, entry in KINDS.items():
        if entry.scheme and lowered.startswith(entry.scheme + ":"):
            rest = base[len(entry.scheme) + 1:]
            return SourceSpec(kind, entry.resolve(source, rest) if entry.resolve else rest.strip(), chosen)
    if not base:
        fail(source, "no path before '?'")
    path = os.path.abspath(os.path.expanduser(base))
    by_suffix = [kind for kind, entry in KINDS.items() if entry.suffix and lowered.endswith(entry.suffix.lower())]
    fallback = [kind for kind, entry in KINDS.items() if not entry.scheme and not entry.suffix]
    return SourceSpec((by_suffix + fallback)[0], path, chosen)


def canonical_source(source: str) -> str:
    """The canonical form of a source: absolute path or lower-case builtin, selectors sorted by name,
    values normalised, ``seed=0`` (the default) dropped. Equal data requests give equal strings."""
    spec = parse_source(source)
    scheme = KINDS[spec.kind].scheme
    head = f"{scheme}:{spec.location}" if scheme else spec.location
    items = [f"{k}={v}" for k, v in sorted(spec.selectors.items()) if not (k == "seed" and v == "0")]
    return head + ("?" + "&".join(items) if items else "")


def load(source: str) -> Dataset:
    """Load and validate a dataset source, applying its selectors (classes → split → n → transform).

    Returns a Dataset with x (N, C, H, W) float32 in [0, 1] and y (N,) int64 in 0..K-1.
    Raises TaskregError (one line naming the source and the problem) for any invalid input.
    """
    spec = parse_source(source)
    raw = KINDS[spec.kind].load(source, spec.location)
    x, y, names, domain = source_selectors.apply(source, raw, spec)
    return Dataset(x, y, names, canonical_source(source), domain, list(raw.notes))


def describe(ds: Dataset) -> DatasetSummary:
    """Summary of a loaded dataset: size, image shape, dtype, per-class counts, value range."""
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    has = ds.x.size > 0
    return DatasetSummary(
        source=ds.source,
        domain=ds.domain,
        n=ds.n,
        shape=ds.shape,
        dtype=str(ds.x.dtype),
        n_classes=ds.n_classes,
        class_names=list(ds.class_names),
        counts=[int(c) for c in counts],
        value_min=float(ds.x.min()) if has else 0.0,
        value_max=float(ds.x.max()) if has else 0.0,
        value_mean=float(ds.x.mean(dtype=np.float64)) if has else 0.0,
        fingerprint=ds.fingerprint(),
        notes=list(ds.notes),
    )
