"""Small file helpers shared by every layer (no third-party imports)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def head_classes(state: Mapping[str, Any]) -> int:
    """Number of classes of a weight file's classifier head (its state_dict's ``fc.weight``, a 2-D tensor);
    10 when it has none."""
    w = state.get("fc.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else 10
