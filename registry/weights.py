"""Weight files: their sha256 and what a state_dict says about its network."""

from __future__ import annotations

from taskreg.files import head_classes
from taskreg.files import sha256_file as file_sha256

__all__ = ["file_sha256", "head_classes"]
