"""Selectors: the ``?key=value&...`` part of a source string, and the domain-shift transforms.

Each selector has one normaliser in :data:`SELECTORS` (syntax check + canonical value) and each
transform one function in :data:`TRANSFORMS`; :func:`apply` runs them on a source's :class:`RawData` in
the documented order classes → split → n → transform (see the package docstring for their meaning).
A new selector or transform is one function plus one table entry here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from taskreg.data.dataset import RawData, SourceSpec
from taskreg.data.images import resize_image
from taskreg.data.validation import fail

SPLITS = ("train", "test")
SPLIT_SEED = 20_240_607  # fixed on purpose: the split must not move when ``seed`` changes
TEST_FRACTION = 0.25
BLUR_SIGMA = 1.0
NOISE_SIGMA = 0.1
LOWRES_FACTOR = 4  # 28 px -> 7 px, 32 -> 8, 25 -> 6
LOWRES_MIN_SIDE = 4  # ... but never below 4 px (8 px digits -> 4 px, not 2)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: the grey level of a colour image for ``colour``


# ----------------------------------------------------------------------------------------------------
# Transforms: (N, C, H, W) float32 in [0, 1], seed -> the shifted images (clipped to [0, 1] by apply_transform)
# ----------------------------------------------------------------------------------------------------


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, C, H, W) over H and W, edge padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum()).astype(np.float32)
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        length = x.shape[axis]
        out = np.zeros_like(x)
        for i, w in enumerate(weights):
            out += w * np.take(padded, np.arange(i, i + length), axis=axis)
        x = out
    return x


def _invert(x: np.ndarray, seed: int) -> np.ndarray:
    return 1.0 - x


def _rot90(x: np.ndarray, seed: int) -> np.ndarray:
    """Counter-clockwise; swaps H and W."""
    return np.rot90(x, k=1, axes=(2, 3))


def _blur(x: np.ndarray, seed: int) -> np.ndarray:
    return gaussian_blur(x, BLUR_SIGMA)


def _noise(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x6E6F6973])
    return x + rng.normal(0.0, NOISE_SIGMA, size=x.shape).astype(np.float32)


def lowres_shape(height: int, width: int) -> tuple[int, int]:
    """The (height, width) that ``lowres`` samples an image down to: each side divided by LOWRES_FACTOR and
    rounded, but at least LOWRES_MIN_SIDE (a side already that small is kept)."""
    return (max(min(height, LOWRES_MIN_SIDE), round(height / LOWRES_FACTOR)),
            max(min(width, LOWRES_MIN_SIDE), round(width / LOWRES_FACTOR)))


def _lowres(x: np.ndarray, seed: int) -> np.ndarray:
    """A low-resolution sensor: each image is averaged down to :func:`lowres_shape` (box filter: every low-res
    pixel is the mean of the area it covers, so thin strokes fade instead of vanishing) and blown back up to
    its size with nearest neighbour, keeping the blocky pixels (bilinear upsampling would look much like
    ``blur``). A 28 px digit becomes 7x7 blocks of 4x4 px: still legible, clearly degraded. Shape kept."""
    h, w = x.shape[2:]
    small = lowres_shape(h, w)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        image = x[i].transpose(1, 2, 0)  # (H, W, C)
        low = resize_image(image, small, kernel="area")
        out[i] = resize_image(low, (h, w), kernel="nearest").transpose(2, 0, 1)
    return out


def colour_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (dark, light) RGB colours (each (n, 3) float32 in [0, 1]) that ``colour`` gives n images.

    Drawn in HSV from a generator seeded by ``seed``: hues uniform, the light one's 60-300 degrees away from
    the dark one's, saturations in [0.5, 1], values in [0, 0.3] (dark) and [0.7, 1] (light)."""
    from skimage.color import hsv2rgb

    rng = np.random.default_rng([seed, 0x636F6C6F])
    hue = rng.uniform(0.0, 1.0, n)
    hues = np.stack([hue, (hue + rng.uniform(1 / 6, 5 / 6, n)) % 1.0], axis=1)
    saturation = rng.uniform(0.5, 1.0, (n, 2))
    value = np.stack([rng.uniform(0.0, 0.3, n), rng.uniform(0.7, 1.0, n)], axis=1)
    rgb = np.clip(hsv2rgb(np.stack([hues, saturation, value], axis=2)), 0.0, 1.0).astype(np.float32)
    return rgb[:, 0], rgb[:, 1]


def _colour(x: np.ndarray, seed: int) -> np.ndarray:
    """Re-colour every image with its own two random colours (:func:`colour_pairs`, seeded by ``seed``; the
    k-th selected image gets the k-th pair): its grey level g (a grey image's pixel, a colour image's BT.601
    luma) becomes ``dark + g * (light - dark)``. Black becomes the dark colour, white the light one, so the
    brightness order (and ``invert``) survives while hue, saturation and contrast change from image to image.
    Grey or colour in, always 3 channels out."""
    grey = x[:, 0] if x.shape[1] == 1 else np.tensordot(np.asarray(LUMA, dtype=np.float32), x, axes=([0], [1]))
    dark, light = colour_pairs(x.shape[0], seed)
    return dark[:, :, None, None] + grey[:, None] * (light - dark)[:, :, None, None]


TRANSFORMS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "invert": _invert,
    "rot90": _rot90,
    "blur": _blur,
    "noise": _noise,
    "lowres": _lowres,
    "colour": _colour,
}


def apply_transform(x: np.ndarray, name: str, seed: int) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1] → same dtype and range (rot90 swaps H and W; colour makes C = 3)."""
    return np.ascontiguousarray(np.clip(TRANSFORMS[name](x, seed), 0.0, 1.0), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------
# Selector syntax: one normaliser per selector, (source, value) -> canonical value string
# ----------------------------------------------------------------------------------------------------


def _parse_int(source: str, key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        fail(source, f"selector {key}={value!r} must be an integer")
    if number < minimum:
        fail(source, f"selector {key}={value} must be >= {minimum}")
    return number


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")]


def _classes(source: str, value: str) -> str:
    names = _names(value)
    if any(name == "" for name in names):
        fail(source, f"selector classes={value!r} has an empty class name (use classes=a,b,c)")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        fail(source, f"selector classes= names {', '.join(duplicated)} more than once")
    return ",".join(names)


def _n(source: str, value: str) -> str:
    return str(_parse_int(source, "n", value, 1))


def _seed(source: str, value: str) -> str:
    return str(_parse_int(source, "seed", value, 0))


def _split(source: str, value: str) -> str:
    if value not in SPLITS:
        fail(source, f"selector split={value!r} is not one of: {', '.join(SPLITS)}")
    return value


def _transform(source: str, value: str) -> str:
    names = _names(value)
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        fail(source, f"unknown transform {unknown[0]!r}; known: {', '.join(TRANSFORMS)}")
    return ",".join(names)


SELECTORS: dict[str, Callable[[str, str], str]] = {
    "classes": _classes,
    "n": _n,
    "seed": _seed,
    "split": _split,
    "transform": _transform,
}
KNOWN_SELECTORS = tuple(SELECTORS)


def parse_selectors(source: str, query: str) -> dict[str, str]:
    """The part after '?' → selector name → normalised value (TaskregError for unknown, repeated or bad ones)."""
    selectors: dict[str, str] = {}
    for item in query.split("&"):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in SELECTORS:
            fail(source, f"unknown selector {key!r}; known: {', '.join(KNOWN_SELECTORS)}")
        if not eq or not value:
            fail(source, f"selector {key!r} needs a value ({key}=...)")
        if key in selectors:
            fail(source, f"selector {key!r} given twice")
        selectors[key] = SELECTORS[key](source, value)
    return selectors


# ----------------------------------------------------------------------------------------------------
# Selection: which examples a source's selectors keep
# ----------------------------------------------------------------------------------------------------


def select_classes(source: str, raw: RawData, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of the wanted classes and a map old label → new label (-1 if dropped)."""
    position = {name: k for k, name in enumerate(raw.class_names)}
    unknown = [name for name in wanted if name not in position]
    if unknown:
        known = raw.class_names if len(raw.class_names) <= 20 else [*raw.class_names[:20], "..."]
        fail(source, f"class {unknown[0]!r} does not exist; known classes: {', '.join(known)}")
    mapping = np.full(len(raw.class_names), -1, dtype=np.int64)
    for new, name in enumerate(wanted):
        mapping[position[name]] = new
    return np.flatnonzero(mapping[raw.y] >= 0), mapping


def split_indices(source: str, y: np.ndarray, names: list[str], split: str, wanted: list[int]) -> np.ndarray:
    """Indices (sorted) into y of one side of the fixed stratified split, for the wanted class ids.

    y : (N,) int64 base labels. Each class is permuted on its own by a generator seeded with SPLIT_SEED
    and the class name, so the side of an example never depends on the other selectors."""
    keep = [np.empty(0, dtype=np.int64)]
    for k in wanted:
        name = names[k]
        members = np.flatnonzero(y == k)
        m = len(members)
        if m < 2:
            fail(source, f"class '{name}' has {m} example(s); split= needs at least 2 per class")
        n_test = min(m - 1, max(1, int(m * TEST_FRACTION + 0.5)))  # rounded half up
        order = np.random.default_rng([SPLIT_SEED, zlib.crc32(name.encode())]).permutation(m)
        side = order[:n_test] if split == "test" else order[n_test:]
        keep.append(members[side])
    return np.sort(np.concatenate(keep))


def stratified_indices(source: str, y: np.ndarray, k: int, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of a stratified subsample of size n: one per class, the rest proportional to
    class size (largest remainder), drawn without replacement with ``seed``."""
    total = len(y)
    if n > total:
        fail(source, f"n={n} is larger than the {total} examples available (after classes/split)")
    if n < k:
        fail(source, f"n={n} is smaller than the number of classes ({k}); stratified sampling needs one "
                     "per class")
    counts = np.bincount(y, minlength=k)
    spare = counts - 1
    extra = n - k
    share = extra * spare / max(int(spare.sum()), 1)
    quota = np.floor(share).astype(np.int64)
    remainder = share - quota
    for c in np.argsort(-remainder, kind="stable")[: extra - int(quota.sum())]:
        quota[c] += 1
    quota = np.minimum(quota + 1, counts)
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(y == c), size=int(quota[c]), replace=False) for c in range(k)]
    return np.sort(np.concatenate(keep))


def apply(source: str, raw: RawData, spec: SourceSpec) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Run the selectors of ``spec`` on ``raw`` (classes → split → n → transform).

    Returns x (M, C, H', W') float32 in [0, 1] (a new array), y (M,) int64 in 0..K'-1, the K' class
    names and the domain ('mnist5k+invert', ...)."""
    names = list(raw.class_names)
    index = np.arange(len(raw.y))
    labels = np.asarray(raw.y, dtype=np.int64)
    if spec.classes is not None:
        index, mapping = select_classes(source, raw, spec.classes)
        labels = mapping[raw.y]
        names = list(spec.classes)
    if len(names) < 2:
        fail(source, f"only one class ({names[0]!r}) after selectors; classification needs at least 2")
    if spec.split is not None:
        wanted = [int(k) for k in np.unique(raw.y[index])]
        index = split_indices(source, raw.y, raw.class_names, spec.split, wanted)
    if spec.n is not None:
        chosen = stratified_indices(source, labels[index], len(names), spec.n, spec.seed)
        index = index[chosen]

    picked = raw.x[index]
    x = picked.astype(np.float32) / np.float32(255.0) if picked.dtype == np.uint8 else picked.astype(np.float32)
    for name in spec.transforms:
        x = apply_transform(x, name, spec.seed)
    domain = "+".join([raw.domain, *spec.transforms])
    return np.ascontiguousarray(x), labels[index].copy(), names, domain
