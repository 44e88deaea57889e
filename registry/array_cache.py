"""The registry's derived-array cache (``<registry>/cache``): results recomputable from the catalog and the data.

Files are named by content (weight digests, dataset fingerprints, parameters), so an entry can never answer for
other inputs; a damaged or truncated file reads as a miss and is recomputed. Writes are atomic (temporary file,
then rename) and skipped on a registry this user cannot write, which still answers, only without the cache.
Everything is read with ``allow_pickle=False``: a cache file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskreg.arrays import load_npy, load_npz, save_npy, save_npz
from taskreg.registry.core import Core

__all__ = ["load_array", "load_arrays", "save_array", "save_arrays"]


def load_array(path: Path, *, rows: int | None = None) -> np.ndarray | None:
    """The ``.npy`` array at ``path``, or None if absent, unreadable or (``rows`` given) of another length."""
    return load_npy(path, rows=rows)


def save_array(core: Core, path: Path, arr: np.ndarray) -> None:
    """Store ``arr`` at ``path`` (``.npy``) atomically, unless the registry is read-only."""
    if not core.read_only:
        save_npy(path, arr)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of the ``.npz`` at ``path``, or None if absent or unreadable."""
    return load_npz(path)


def save_arrays(core: Core, path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Store named arrays at ``path`` (``.npz``) atomically, unless the registry is read-only."""
    if not core.read_only:
        save_npz(path, arrays)
