"""Weight files: their sha256 and what a state_dict says about its network."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def head_classes(state: dict) -> int:
    """Number of classes of a state_dict's classifier head (``fc.weight``); 10 when it has none."""
    w = state.get("fc.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else 10
