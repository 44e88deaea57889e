"""``builtin:patches``: (3, 32, 32) crops of the photographs bundled with scikit-image and scikit-learn,
``PATCHES_PER_PHOTO`` per photograph, labelled by photograph (17 classes)."""

from __future__ import annotations

import functools

import numpy as np

from taskreg.data.dataset import RawData, read_only
from taskreg.data.images import SKLEARN_PHOTOS, load_photograph, resize_image, short_side_shape

DESCRIPTION = "32x32 RGB crops of 17 bundled photographs, 200 per photograph (scikit-image, sklearn)"

PATCH_SIZE = 32
PATCHES_PER_PHOTO = 200
PATCH_SEED = 7
PATCH_MAX_SIDE = 256  # photographs are first downscaled so their shorter side is at most this
PATCH_MIN_STD = 2.0 / 255.0  # crops flatter than this (black sky, retina border) are redrawn
# Photographs that load offline from the scikit-image wheel (``eagle`` & co. need a download).
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS  # the classes, in this order


@functools.lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(17 * PATCHES_PER_PHOTO, 3, 32, 32) uint8 crops, labels = photograph index, photograph names.

    Each photograph is downscaled (Lanczos) so its shorter side is at most PATCH_MAX_SIDE, then
    PATCHES_PER_PHOTO crop corners are drawn uniformly with a fixed per-photograph seed; crops whose
    pixel std is below PATCH_MIN_STD are redrawn (up to 50 tries each). Crops may overlap.
    """
    xs, ys = [], []
    for label, name in enumerate(PHOTOS):
        image = load_photograph(name)
        h, w = image.shape[:2]
        if min(h, w) > PATCH_MAX_SIDE:
            image = resize_image(image, short_side_shape(h, w, PATCH_MAX_SIDE))
        h, w = image.shape[:2]
        rng = np.random.default_rng([PATCH_SEED, label])
        crops = np.empty((PATCHES_PER_PHOTO, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)
        for i in range(PATCHES_PER_PHOTO):
            for _ in range(50):
                top = int(rng.integers(0, h - PATCH_SIZE + 1))
                left = int(rng.integers(0, w - PATCH_SIZE + 1))
                crop = image[top:top + PATCH_SIZE, left:left + PATCH_SIZE]
                if crop.std() / 255.0 >= PATCH_MIN_STD:
                    break
            crops[i] = crop
        xs.append(crops.transpose(0, 3, 1, 2))
        ys.append(np.full(PATCHES_PER_PHOTO, label))
    x, y = read_only(np.concatenate(xs), np.concatenate(ys))
    return x, y, PHOTOS


def load() -> RawData:
    x, y, names = arrays()
    return RawData(x, y, list(names), "patches")
