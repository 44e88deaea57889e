"""``builtin:faces``: scikit-image's LFW subset, (1, 25, 25): the first 100 "face", the last 100 "nonface"."""

from __future__ import annotations

import functools

import numpy as np

from taskreg.data.dataset import RawData, read_only
from taskreg.errors import TaskregError

DESCRIPTION = "200 LFW crops, 25x25 grey, 'face' (first 100) vs 'nonface' (scikit-image lfw_subset)"


@functools.lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """(200, 1, 25, 25) float32 in [0, 1]; labels 0 = face (first 100), 1 = nonface (last 100)."""
    import skimage.data

    images = np.asarray(skimage.data.lfw_subset(), dtype=np.float32)
    if images.shape != (200, 25, 25):  # pragma: no cover - depends on the installed scikit-image
        raise TaskregError(f"builtin:faces: scikit-image's lfw_subset has shape {images.shape}, expected "
                           "(200, 25, 25)")
    y = np.repeat(np.arange(2), 100)
    return read_only(np.clip(images, 0.0, 1.0)[:, None], y)


def load() -> RawData:
    x, y = arrays()
    return RawData(x, y, ["face", "nonface"], "faces")
