"""``PATH.npz``: arrays ``x`` and ``y`` saved with ``numpy.savez`` (rules in the package docstring)."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from taskreg.data.dataset import RawData
from taskreg.data.validation import check_bytes, fail, labels_to_classes, pixels_to_unit, to_nchw


def _read_member(source: str, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        value = archive[key]
    except ValueError as err:
        if "pickle" in str(err).lower():
            fail(source, f"array '{key}' holds Python objects (pickled); refused, save numeric arrays only")
        fail(source, f"array '{key}' cannot be read: {err}")
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        fail(source, f"array '{key}' is corrupt or truncated: {err}")
    if not isinstance(value, np.ndarray):
        fail(source, f"member '{key}' is not a numpy array")
    if value.dtype.hasobject or not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        fail(source, f"array '{key}' has non-numeric dtype {value.dtype}")
    return value


def load(source: str, path: str) -> RawData:
    """Read and validate ``path``; never unpickles (``allow_pickle=False``)."""
    if not os.path.exists(path):
        fail(source, f"no such file: {path}")
    if os.path.isdir(path):
        fail(source, f"{path} is a directory, expected an .npz file")
    if not zipfile.is_zipfile(path):
        fail(source, "not an npz archive (not a zip file, or truncated); save it with numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        fail(source, f"cannot open npz archive: {err}")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            fail(source, f"npz has no array {' or '.join(repr(m) for m in missing)} "
                         f"(found: {', '.join(archive.files) or 'nothing'})")
        members = set(archive.zip.namelist())
        for key in ("x", "y"):
            size = archive.zip.getinfo(key + ".npy" if key + ".npy" in members else key).file_size
            check_bytes(source, size, f"array '{key}' is {{size}}")
        x = _read_member(source, archive, "x")
        y = _read_member(source, archive, "y")
    if np.iscomplexobj(x) or np.iscomplexobj(y):
        fail(source, "x and y must be real-valued, got complex numbers")
    if x.ndim not in (3, 4):
        fail(source, f"x has rank {x.ndim} (shape {x.shape}); expected (N,H,W), (N,C,H,W) or (N,H,W,C)")
    if y.ndim != 1:
        fail(source, f"y must have rank 1 (N,), got shape {y.shape}")
    if len(x) != len(y):
        fail(source, f"x has {len(x)} images but y has {len(y)} labels")
    if len(x) == 0:
        fail(source, "empty data: N = 0 images")
    check_bytes(source, x.size * 4, "x would take {size} as float32")
    x = to_nchw(source, x)
    if x.shape[2] == 0 or x.shape[3] == 0:
        fail(source, f"empty images of size {x.shape[2]}x{x.shape[3]}")
    labels, names = labels_to_classes(source, y, max_ratio_check=True)
    return RawData(pixels_to_unit(source, np.ascontiguousarray(x)), labels, names, "npz")
