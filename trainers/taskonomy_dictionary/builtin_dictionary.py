"""The built-in dictionary: crops of the photographs bundled with scikit-image and scikit-learn,
annotated with every built-in task (design decisions in the package docstring)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from taskreg.data.images import load_photograph, resize_image, short_side_shape
from taskreg.errors import TaskregError
from taskreg.trainers.taskonomy_dictionary.builtin_tasks import PHOTO_CATEGORY, builtin_task_specs
from taskreg.trainers.taskonomy_dictionary.definition import Crops, Dictionary


def _load_disparity() -> np.ndarray:
    """Motorcycle disparity (H, W) float32 in [0, 1]; occlusions filled with the nearest valid value."""
    import skimage.data
    from scipy import ndimage  # here, not at the top: every probe network's module imports this package

    _, _, disp = skimage.data.stereo_motorcycle()
    disp = np.asarray(disp, dtype=np.float32)
    valid = np.isfinite(disp)
    if not valid.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
        disp = disp[iy, ix]
    return disp / max(float(disp.max()), 1e-8)


def _resize(image: np.ndarray, short_side: int) -> np.ndarray:
    """(H, W, C) → float32 with the shorter side ``short_side`` (anti-aliased bilinear, the dictionary's kernel)."""
    height, width = image.shape[:2]
    return resize_image(image, short_side_shape(height, width, short_side), kernel="linear")


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split integer ``total`` proportionally to ``weights`` (largest remainder)."""
    raw = total * weights / max(float(weights.sum()), 1e-12)
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


def _sample_crops(
    photos: list[tuple[str, np.ndarray, np.ndarray | None]],
    counts: np.ndarray,
    size: int,
    test: bool,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    imgs, disps, labels = [], [], []
    for p, ((_, img, disp), n) in enumerate(zip(photos, counts, strict=True)):
        h, w = img.shape[:2]
        test_w = max(size, math.ceil(0.25 * w))
        x_lo, x_hi = (w - test_w, w - size) if test else (0, w - test_w - size)
        ys = rng.integers(0, h - size + 1, size=n)
        xs = rng.integers(x_lo, x_hi + 1, size=n)
        for y, x in zip(ys, xs, strict=True):
            imgs.append(img[y : y + size, x : x + size].transpose(2, 0, 1))
            d = disp[y : y + size, x : x + size] if disp is not None else np.zeros((size, size), np.float32)
            disps.append(d[None])
            labels.append(p)
    return imgs, disps, labels


def build_builtin_dictionary(
    *,
    size: int = 32,
    n_images: int = 1600,
    seed: int = 0,
    tiny: bool = False,
    test_fraction: float = 0.2,
    disparity_share: float = 0.2,
    context: float = 5.0,
) -> Dictionary:
    """Build the built-in dictionary from bundled photos (offline, deterministic given ``seed``).

    size : crop side in pixels (multiple of 4, >= 8)
    n_images : total number of crops (train + test)
    tiny : for tests: overrides ``size`` to 16 and ``n_images`` to 160 (all tasks are kept)
    test_fraction : share of crops in the test split (taken from the right quarter of each photo)
    disparity_share : share of crops taken from the motorcycle photo (the only one with real disparity)
    context : photos are resized so their shorter side is ``context * size`` pixels (smaller values:
        crops show more of the scene)

    Returns a :class:`Dictionary` whose images are (n_images, 3, size, size) float32 in [0, 1].
    """
    if tiny:
        size, n_images = 16, 160
    if size < 8 or size % 4:
        raise TaskregError(f"size must be a multiple of 4 and >= 8, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise TaskregError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= disparity_share < 1.0:
        raise TaskregError(f"disparity_share must be in [0, 1), got {disparity_share}")

    photos: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for name in PHOTO_CATEGORY:
        try:
            img = load_photograph(name).astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]
        except Exception as exc:  # a photo missing from this installation: skip it, keep the others
            warnings.warn(f"skipping bundled photo {name!r}: {exc}", stacklevel=2)
            continue
        disp = _load_disparity() if name == "motorcycle" else None
        short = max(size + 1, round(context * size))
        img = _resize(img, short)
        if disp is not None:
            disp = _resize(disp[:, :, None], short)[:, :, 0]
        photos.append((name, img, disp))
    if len(photos) < 2:
        raise TaskregError("fewer than 2 bundled photos could be loaded; is scikit-image installed?")
    n_min = 4 * len(photos)
    if n_images < n_min:
        raise TaskregError(f"n_images must be >= {n_min} (4 per photo), got {n_images}")

    names = tuple(p[0] for p in photos)
    weights = np.ones(len(photos))
    if "motorcycle" in names and disparity_share > 0 and len(photos) > 1:
        m = names.index("motorcycle")
        weights[m] = disparity_share * (len(photos) - 1) / (1.0 - disparity_share)
    n_test = max(len(photos), round(test_fraction * n_images))
    rng = np.random.default_rng([seed, 7])
    tr = _sample_crops(photos, _allocate(n_images - n_test, weights), size, False, rng)
    te = _sample_crops(photos, _allocate(n_test, weights), size, True, rng)

    images = np.stack(tr[0] + te[0]).astype(np.float32)
    disparity = np.stack(tr[1] + te[1]).astype(np.float32)
    photo_index = np.array(tr[2] + te[2], dtype=np.int64)
    is_test = np.r_[np.zeros(len(tr[0]), bool), np.ones(len(te[0]), bool)]
    order = rng.permutation(len(images))  # interleave photos and splits
    images, disparity, photo_index, is_test = images[order], disparity[order], photo_index[order], is_test[order]

    specs = builtin_task_specs(size)
    # the photo task's classes are the photos that actually loaded
    specs["photo"].out_channels = len(names)
    crops = Crops(images=images, photo_index=photo_index, disparity=disparity, photo_names=names, seed=seed)
    targets: dict[str, np.ndarray] = {}
    inputs: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if spec.input_key != "image":
            inputs[spec.input_key] = spec.input(crops)
        if spec.kind != "none":
            targets[name] = spec.target(crops)
    return Dictionary.from_split(images, is_test, specs, targets, inputs, photo_index=photo_index,
                                 photo_names=names, seed=seed)

