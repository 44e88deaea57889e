"""``builtin:digits``: scikit-learn's 1,797 handwritten digits, (1, 8, 8)."""

from __future__ import annotations

import functools

import numpy as np

from taskreg.data.dataset import RawData, read_only

DESCRIPTION = "1,797 handwritten digits, 8x8 grey, 10 classes (sklearn load_digits)"


@functools.lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 1, 8, 8) float32 in [0, 1] (original 0..16 divided by 16), (1797,) int64 (read-only, cached)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    return read_only(x, bunch.target)


def load() -> RawData:
    x, y = arrays()
    return RawData(x, y, [str(d) for d in range(10)], "digits")
