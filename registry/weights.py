"""Weight files: their sha256 and what a state_dict says about its network."""

from __future__ import annotations

from taskreg.files import sha256_file as file_sha256

__all__ = ["file_sha256", "head_classes"]


def head_classes(state: dict) -> int:
    """Number of classes of a state_dict's classifier head (``fc.weight``); 10 when it has none."""
    w = state.get("fc.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else 10
