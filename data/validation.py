"""Every check a dataset goes through, in one place: the error format, the size limits, the conversion
of user arrays (pixels, layouts, labels) into the package conventions, and the final invariants of a
:class:`~taskreg.data.Dataset`.

Sources call these instead of checking on their own, so a new source refuses bad input with the same
one-line messages. The limits are read at call time (``validation.MAX_ARRAY_BYTES``), so a test can
lower them with ``monkeypatch.setattr``.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from taskreg.errors import TaskregError

MAX_FOLDER_FILES = 200_000  # directory entries an image-folder source may scan
MAX_CLASSES = 10_000
MAX_ARRAY_BYTES = 4 * 1024**3  # float32 size of the loaded x (and on-disk size of an npz member)


def fail(source: str, problem: str) -> NoReturn:
    """Raise the one-line error of a dataset source: ``dataset '<source>': <problem>``."""
    shown = source if len(source) <= 160 else f"{source[:120]}…({len(source)} characters)"
    raise TaskregError(f"dataset '{shown}': {problem}")


def check_bytes(source: str, n_bytes: int, what: str) -> None:
    """Refuse more than MAX_ARRAY_BYTES. ``what`` says where ``{size}`` goes, e.g. "array 'x' is {size}"."""
    if n_bytes > MAX_ARRAY_BYTES:
        size = f"{n_bytes / 1024**3:.1f} GiB"
        fail(source, f"{what.replace('{size}', size)}, above the {MAX_ARRAY_BYTES / 1024**3:.0f} GiB limit")


def check_dataset(source: str, x: object, y: object, n_classes: int) -> None:
    """The invariants of a Dataset: x (N, C, H, W) float32 in [0, 1] with C in {1, 3}; y (N,) int64 in 0..K-1."""
    where = f"dataset '{source}'"
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise TaskregError(f"{where}: x must be a (N, C, H, W) float32 array")
    if x.shape[1] not in (1, 3):
        raise TaskregError(f"{where}: x must have 1 or 3 channels, got {x.shape[1]}")
    if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
        raise TaskregError(f"{where}: y must be a (N,) int64 array")
    if len(y) != len(x):
        raise TaskregError(f"{where}: {len(x)} images but {len(y)} labels")
    if x.size and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        raise TaskregError(f"{where}: pixel values must be finite and in [0, 1]")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise TaskregError(f"{where}: labels must lie in 0..{n_classes - 1}")


def pixels_to_unit(source: str, x: np.ndarray) -> np.ndarray:
    """Any numeric (N, C, H, W) array → float32 in [0, 1] by the rules of the npz source (package docstring)."""
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.uint16:
        return x.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            fail(source, f"x has {int(x.size - finite.sum())} NaN/inf pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo >= -1e-6 and hi <= 1.0 + 1e-6:
        return np.clip(x.astype(np.float32), 0.0, 1.0)
    if lo >= -1e-6 and hi <= 255.0 + 1e-4:
        return np.clip(x.astype(np.float32) / np.float32(255.0), 0.0, 1.0)
    fail(source, f"pixel values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] or [0, 255] (rescale x)")


def to_nchw(source: str, x: np.ndarray) -> np.ndarray:
    """(N, H, W) / (N, C, H, W) / (N, H, W, C) → (N, C, H, W) with C in {1, 3} (RGBA: alpha dropped)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        fail(source, f"x has rank {x.ndim} (shape {x.shape}); expected (N,H,W), (N,C,H,W) or (N,H,W,C)")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.shape[1] == 4:
        return x[:, :3]
    if x.shape[3] == 4:
        return x.transpose(0, 3, 1, 2)[:, :3]
    fail(source, f"x has shape {x.shape}: no channel axis of size 1, 3 or 4 (RGBA) at axis 1 or 3")


def labels_to_classes(source: str, y: np.ndarray, max_ratio_check: bool) -> tuple[np.ndarray, list[str]]:
    """(N,) labels of any integral type → (N,) int64 0..K-1 and the K sorted original values as names."""
    if y.ndim != 1:
        fail(source, f"y must have rank 1 (N,), got shape {y.shape}")
    if y.dtype == np.bool_:
        values = y.astype(np.int64)
        names_of = {0: "False", 1: "True"}
    elif np.issubdtype(y.dtype, np.integer):
        values = y.astype(np.int64)
        names_of = None
    elif np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            fail(source, "y has NaN/inf labels; labels must be integers")
        if not (y == np.round(y)).all():
            fail(source, "y has non-integer labels (fractional values): looks like a regression target")
        if np.abs(y).max(initial=0) > 2**53:
            fail(source, "y has labels too large to be class ids")
        values = y.astype(np.int64)
        names_of = None
    else:
        fail(source, f"y must hold integer labels, got dtype {y.dtype}")
    uniques, labels = np.unique(values, return_inverse=True)
    k, n = len(uniques), len(values)
    if k > MAX_CLASSES or (max_ratio_check and k > n / 2):
        fail(source, f"y has {k} distinct values for {n} examples: labels look like a regression target "
                     "or ids")
    names = [names_of[int(v)] if names_of else str(int(v)) for v in uniques]
    return labels.astype(np.int64).reshape(-1), names
