"""``builtin:digits``: scikit-learn's 1,797 handwritten digits, (1, 8, 8)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from taskreg.data.dataset import RawData, read_only

DESCRIPTION = "1,797 handwritten digits, 8x8 grey, 10 classes (sklearn load_digits)"


@functools.lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 1, 8, 8) float32 in [0, 1] (original 0..16 divided by 16), (1797,) int64 (read-only, cached).

    Read from the CSV scikit-learn ships (what ``load_digits`` reads: 64 pixels then the label per row) without
    importing scikit-learn, whose import takes 1.5-2 s -- most of a small query's ``select``.
    """
    path = _bundled_csv()
    if path is None:  # a scikit-learn that keeps its data elsewhere: its own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    else:
        data = np.loadtxt(path, delimiter=",")
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    x = (np.asarray(images, dtype=np.float32) / 16.0)[:, None]
    return read_only(x, np.asarray(target, dtype=np.int64))


def _bundled_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing the package (None if absent)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def load() -> RawData:
    x, y = arrays()
    return RawData(x, y, [str(d) for d in range(10)], "digits")
