"""``.npy`` and ``.npz`` files read safely and written atomically, shared by every layer (the registry's cache,
executor workers).

Read with ``allow_pickle=False`` (a file cannot run code); a missing, damaged or truncated file reads as None (a
cache miss). A write goes to a temporary file in the same directory, then is renamed over the target, so a reader
never sees half a file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["load_npy", "load_npz", "save_npy", "save_npz"]


def load_npy(path: Path | str, *, rows: int | None = None) -> np.ndarray | None:
    """The ``.npy`` array at ``path``, or None if absent, unreadable or (``rows`` given) of another length."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        arr: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr if rows is None or arr.shape[0] == rows else None


def save_npy(path: Path | str, arr: np.ndarray) -> None:
    """Store ``arr`` at ``path`` atomically (creating its directory); concurrent writers of the same content are
    safe (each renames its own temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)


def load_npz(path: Path | str) -> dict[str, np.ndarray] | None:
    """The named arrays of the ``.npz`` at ``path``, or None if absent, unreadable or damaged (a cache miss)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def save_npz(path: Path | str, arrays: dict[str, np.ndarray]) -> None:
    """Store named arrays at ``path`` (``.npz``) atomically (creating its directory), as :func:`save_npy`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
