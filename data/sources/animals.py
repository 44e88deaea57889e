"""``builtin:animals``: the 10,000 animal silhouettes of the ``animal-mnist`` wheel (MIT), (1, 28, 28).

The wheel keeps its arrays as pickled numpy arrays in two ``.gz`` files, and its own loader imports
tensorflow. This module neither imports the package nor trusts the pickles: it finds the two files
through the installed distribution's file list and reads them with :class:`ArrayUnpickler`, which
resolves exactly the three globals a pickled ndarray needs (numpy's ``_reconstruct``, ``ndarray`` and
``dtype``) and refuses every other one, so a tampered file cannot run code. Install the wheel without
its dependencies (``pip install --no-deps animal-mnist==0.4``; ``make`` does), since it declares
tensorflow and pandas, which taskreg never uses.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np

from taskreg.data.dataset import RawData, read_only
from taskreg.errors import TaskregError

DESCRIPTION = "10,000 animal silhouettes, 28x28 grey, 10 classes x 1,000 (animal-mnist wheel)"
DISTRIBUTION = "animal-mnist"
DATA_FILE, LABEL_FILE = "animal_data_version_3.gz", "animal_label_version_3.gz"
# The class names in the order of the package's description; label k is the k-th (the package does not
# document the mapping, and its labels are sorted 0..9 with 1,000 each).
CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
MISSING = (f"builtin:animals needs the {DISTRIBUTION} wheel, which is not installed: "
           f"pip install --no-deps {DISTRIBUTION}==0.4 (make installs it)")


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no global other than the three an ndarray needs)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own, wherever this numpy keeps it
        return getattr(np, name)


def read_array(path: Path) -> np.ndarray:
    """The ndarray pickled (gzip) in ``path``; TaskregError for anything else, and nothing in it runs."""
    try:
        with gzip.open(path, "rb") as f:
            obj = ArrayUnpickler(io.BytesIO(f.read())).load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise TaskregError(f"builtin:animals: {path.name} is not a plain pickled array ({exc})") from None
    if not isinstance(obj, np.ndarray) or obj.dtype == object:
        raise TaskregError(f"builtin:animals: {path.name} does not hold a numeric array")
    return obj


def data_files() -> tuple[Path, Path]:
    """The installed wheel's two data files (found without importing the package)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise TaskregError(MISSING) from None
    found = {Path(str(f)).name: Path(str(dist.locate_file(f))) for f in dist.files or []}
    if DATA_FILE not in found or LABEL_FILE not in found:
        raise TaskregError(f"builtin:animals: the installed {DISTRIBUTION} {dist.version} has no {DATA_FILE} / "
                           f"{LABEL_FILE}; reinstall it: pip install --no-deps --force-reinstall {DISTRIBUTION}==0.4")
    return found[DATA_FILE], found[LABEL_FILE]


@functools.lru_cache(maxsize=1)
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """(10000, 1, 28, 28) uint8, (10000,) int64 (read-only, cached)."""
    data_path, label_path = data_files()
    x, y = read_array(data_path), read_array(label_path)
    if x.shape != (10_000, 28, 28) or y.shape != (10_000,) or set(np.unique(y).tolist()) != set(range(10)):
        raise TaskregError(f"builtin:animals: unexpected arrays {x.shape} / {y.shape} in {DISTRIBUTION}")
    return read_only(np.ascontiguousarray(x, dtype=np.uint8)[:, None], y.astype(np.int64))


def load() -> RawData:
    x, y = arrays()
    return RawData(x, y, list(CLASSES), "animals")
