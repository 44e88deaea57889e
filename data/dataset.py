"""The records of the data package: what a source yields before selectors (:class:`RawData`), a parsed
source string (:class:`SourceSpec`), the loaded :class:`Dataset` and its :class:`DatasetSummary`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from taskreg.data.validation import check_dataset


@dataclass
class Dataset:
    """A labelled image dataset in the project's data conventions.

    Attributes
    ----------
    x : (N, C, H, W) float32 in [0, 1], C = 1 or 3
    y : (N,) int64 in 0..K-1
    class_names : K names; ``class_names[k]`` is the name of label k
    source : canonical source string (``canonical_source``)
    domain : base domain ('mnist5k', 'digits', 'patches', 'faces', 'npz', 'folder') plus one
        ``+transform`` suffix per transform, e.g. 'mnist5k+invert'
    notes : human-readable remarks from loading (e.g. files ignored in an image folder)
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    source: str
    domain: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_dataset(self.source, self.x, self.y, len(self.class_names))

    @property
    def n(self) -> int:
        """Number of examples N."""
        return int(self.x.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of classes K (= len(class_names))."""
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def fingerprint(self) -> str:
        """sha256 hex digest over the shapes and bytes of x and y (a key for feature caches)."""
        h = hashlib.sha256()
        h.update(f"x{self.x.shape}{self.x.dtype.str};y{self.y.shape}{self.y.dtype.str};".encode())
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string.

    kind : a key of the dispatch table ``taskreg.data.sources.KINDS`` ('builtin', 'npz', 'folder')
    location : builtin name (e.g. 'mnist5k') or absolute path
    selectors : selector name → normalised value string (no defaults filled in)
    """

    kind: str
    location: str
    selectors: dict[str, str]

    @property
    def classes(self) -> list[str] | None:
        """Requested class names in order, or None for all classes."""
        value = self.selectors.get("classes")
        return None if value is None else value.split(",")

    @property
    def n(self) -> int | None:
        """Requested subsample size, or None for all examples."""
        value = self.selectors.get("n")
        return None if value is None else int(value)

    @property
    def seed(self) -> int:
        """Seed of the subsample and of the noise and colour transforms (default 0)."""
        return int(self.selectors.get("seed", "0"))

    @property
    def split(self) -> str | None:
        """'train', 'test' or None."""
        return self.selectors.get("split")

    @property
    def transforms(self) -> list[str]:
        """Transforms to apply in order (possibly empty)."""
        value = self.selectors.get("transform")
        return [] if value is None else value.split(",")


@dataclass
class DatasetSummary:
    """What ``taskreg data inspect`` shows about a dataset."""

    source: str
    domain: str
    n: int
    shape: tuple[int, int, int]
    dtype: str
    n_classes: int
    class_names: list[str]
    counts: list[int]
    value_min: float
    value_max: float
    value_mean: float
    fingerprint: str
    notes: list[str]

    def as_text(self) -> str:
        """A short multi-line plain-text rendering."""
        c, h, w = self.shape
        lines = [
            f"source:      {self.source}",
            f"domain:      {self.domain}",
            f"examples:    {self.n}  images {c}x{h}x{w} {self.dtype}",
            f"values:      min {self.value_min:.4g}  max {self.value_max:.4g}  mean {self.value_mean:.4g}",
            f"classes:     {self.n_classes}",
        ]
        lines += [f"  {k:>4}  {name}: {count}" for k, (name, count) in
                  enumerate(zip(self.class_names, self.counts, strict=True))]
        lines.append(f"fingerprint: {self.fingerprint}")
        lines += [f"note:        {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class RawData:
    """What a source yields, before selectors.

    x : (N, C, H, W) uint8 (scale 255) or float32 in [0, 1]
    y : (N,) int64 in 0..K-1
    class_names : K names (the values ``classes=`` selects by)
    domain : the base domain ('mnist5k', 'npz', 'folder', ...)
    notes : remarks for ``Dataset.notes``
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    domain: str
    notes: list[str] = field(default_factory=list)


def read_only(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous read-only copies-or-views of cached arrays (y as int64); ``load`` copies before use."""
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y
