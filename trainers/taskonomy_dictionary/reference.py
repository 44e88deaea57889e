"""Picklable references to a dictionary (jobs in worker processes rebuild or reload it once per
process) and the content fingerprint that keys cached results."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from taskreg.errors import TaskregError
from taskreg.trainers.taskonomy_dictionary.builtin_dictionary import build_builtin_dictionary
from taskreg.trainers.taskonomy_dictionary.definition import Dictionary
from taskreg.trainers.taskonomy_dictionary.user_dictionary import load_dictionary_npz


@dataclass(frozen=True)
class DictionaryRef:
    """A small picklable recipe for a dictionary: the built-in one (with its parameters) or an .npz path.

    ``load()`` builds it once per process and caches it, so jobs sent to worker processes carry this
    reference instead of megabytes of arrays.
    """

    source: str = "builtin"  # 'builtin' | 'npz'
    path: str = ""
    size: int = 32
    n_images: int = 1600
    seed: int = 0
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.source not in ("builtin", "npz"):
            raise TaskregError(f"DictionaryRef.source must be 'builtin' or 'npz', got {self.source!r}")
        if self.source == "npz" and not self.path:
            raise TaskregError("DictionaryRef(source='npz') needs a path")

    def load(self) -> Dictionary:
        """The referenced dictionary (cached per process)."""
        if self not in _DICTIONARY_CACHE:
            if len(_DICTIONARY_CACHE) >= 4:
                _DICTIONARY_CACHE.pop(next(iter(_DICTIONARY_CACHE)))
            if self.source == "builtin":
                d = build_builtin_dictionary(size=self.size, n_images=self.n_images, seed=self.seed, tiny=self.tiny)
            else:
                d = load_dictionary_npz(self.path, seed=self.seed)
            _DICTIONARY_CACHE[self] = d
        return _DICTIONARY_CACHE[self]


_DICTIONARY_CACHE: dict[DictionaryRef, Dictionary] = {}


def dictionary_fingerprint(dictionary: Dictionary) -> str:
    """A 12-hex-digit content hash of images, split, task names/kinds and targets (for cache keys)."""

    h = hashlib.sha1()
    h.update(np.ascontiguousarray(dictionary.images).tobytes())
    h.update(np.ascontiguousarray(dictionary.test_idx).tobytes())
    for name, spec in dictionary.tasks.items():
        h.update(f"{name}:{spec.kind}:{spec.out_channels}:{spec.source_only}:{spec.input_key};".encode())
        if name in dictionary.targets:
            h.update(np.ascontiguousarray(dictionary.targets[name]).tobytes())
    return h.hexdigest()[:12]
