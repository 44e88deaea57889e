"""``DIR``: an image folder ``DIR/<class>/<image>`` read with Pillow (rules in the package docstring)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from taskreg.data import validation
from taskreg.data.dataset import RawData
from taskreg.data.images import resize_image
from taskreg.data.sources.builtin import BUILTINS, SCHEME
from taskreg.data.validation import check_bytes, fail

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that transpose width and height
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass
class _ImageInfo:
    path: str
    size: tuple[int, int]  # (width, height) after EXIF orientation
    colour: bool


def _scan(source: str, root: str) -> tuple[list[str], list[list[str]], int]:
    """Class names (sorted), image paths per class (sorted), number of ignored entries."""
    seen = 0
    ignored = 0
    class_dirs: list[tuple[str, str]] = []

    def count() -> None:
        nonlocal seen
        seen += 1
        if seen > validation.MAX_FOLDER_FILES:
            fail(source, f"more than {validation.MAX_FOLDER_FILES:,} entries in the image folder; refusing to "
                         "read it (use an .npz file or a smaller folder)")

    try:
        with os.scandir(root) as entries:
            for entry in entries:
                count()
                if not entry.name.startswith(".") and entry.is_dir():
                    class_dirs.append((entry.name, entry.path))
                else:
                    ignored += 1
    except OSError as err:
        fail(source, f"cannot list folder: {err}")
    class_dirs.sort()
    if len(class_dirs) < 2:
        fail(source, f"image folder needs at least 2 class directories, found {len(class_dirs)} "
                     "(layout: DIR/<class>/<image>)")
    if len(class_dirs) > validation.MAX_CLASSES:
        fail(source, f"{len(class_dirs)} class directories, above the limit of {validation.MAX_CLASSES}")
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
            fail(source, f"cannot list class directory '{name}': {err}")
        if not files:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            fail(source, f"class directory '{name}' contains no images ({extensions})")
        files_per_class.append(sorted(files))
    return [name for name, _ in class_dirs], files_per_class, ignored


def _probe(source: str, path: str) -> _ImageInfo:
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
            colour = image.mode in _COLOUR_MODES
            if image.mode in ("P", "PA"):  # a palette image is colour unless the pixels it shows are grey
                shown = np.asarray(image.convert("RGB"))
                colour = bool((shown != shown[:, :, :1]).any())
    except _READ_ERRORS as err:
        fail(source, f"cannot read image {path}: {err}")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if width == 0 or height == 0:
        fail(source, f"image {path} is empty (0x0)")
    return _ImageInfo(path, (width, height), colour)


def _read(source: str, info: _ImageInfo, size: tuple[int, int], rgb: bool) -> np.ndarray:
    """One image → (C, H, W) float32 in [0, 1] at ``size`` = (width, height)."""
    try:
        with Image.open(info.path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            if image.mode.startswith("I;16") or image.mode in ("I", "F"):  # 16-bit ints; floats in [0, 1]
                scale = 1.0 if image.mode == "F" else 65535.0
                grey = np.clip(np.asarray(image, dtype=np.float64) / scale, 0.0, 1.0)
                image = Image.fromarray(np.rint(grey * 255).astype(np.uint8), mode="L")
            pixels = np.asarray(image.convert("RGB" if rgb else "L"))
            if pixels.shape[:2] != size[::-1]:
                pixels = resize_image(pixels, size[::-1])
            array = pixels.astype(np.float32) / np.float32(255.0)
    except _READ_ERRORS as err:
        fail(source, f"cannot read image {info.path}: {err}")
    return array.transpose(2, 0, 1) if rgb else array[None]


def load(source: str, root: str) -> RawData:
    """Scan ``root``, probe every image, then decode them at the most common size."""
    if not os.path.exists(root):
        bare = os.path.basename(root.rstrip(os.sep)).lower()
        hint = f" (did you mean {SCHEME}:{bare}?)" if bare in BUILTINS else ""
        fail(source, f"no such file or directory: {root}{hint}")
    if not os.path.isdir(root):
        fail(source, f"{root} is a file, expected an .npz file or an image-folder directory")
    names, files_per_class, ignored = _scan(source, root)
    infos = [[_probe(source, path) for path in files] for files in files_per_class]
    flat = [info for infos_of_class in infos for info in infos_of_class]
    sizes = Counter(info.size for info in flat)
    size = max(sizes, key=lambda s: (sizes[s], s[0] * s[1], s))  # most common; ties → larger area
    rgb = any(info.colour for info in flat)
    channels = 3 if rgb else 1
    check_bytes(source, len(flat) * channels * size[0] * size[1] * 4,
                f"{len(flat)} images of {size[0]}x{size[1]} need {{size}}")
    x = np.empty((len(flat), channels, size[1], size[0]), dtype=np.float32)
    for i, info in enumerate(flat):
        x[i] = _read(source, info, size, rgb)
    y = np.concatenate([np.full(len(files), k, dtype=np.int64) for k, files in enumerate(files_per_class)])
    notes = []
    resized = len(flat) - sizes[size]
    if resized:
        notes.append(f"resized {resized} of {len(flat)} images to the most common size {size[0]}x{size[1]}")
    if ignored:
        notes.append(f"ignored {ignored} entries that are not images inside a class directory")
    return RawData(x, y, names, "folder", notes)
