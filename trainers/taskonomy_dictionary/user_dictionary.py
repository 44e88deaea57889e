"""User dictionaries: an ``.npz`` with an ``images`` array and one array per task (kind inferred)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskreg.errors import TaskregError
from taskreg.trainers.taskonomy_dictionary.definition import INPUT_PREFIX, RANDOM_TASK, Dictionary, TaskSpec


def save_dictionary_npz(dictionary: Dictionary, path: str | Path) -> Path:
    """Write ``dictionary`` in the user ``.npz`` format read by :func:`load_dictionary_npz`.

    Keys: ``images``, one array per task with a target, ``input__<task>`` for modified inputs,
    ``split`` (int8, 1 = test) and ``source_only`` (names). Pixel loss weights are not stored.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"images": dictionary.images}
    split = np.zeros(dictionary.n_images, dtype=np.int8)
    split[dictionary.test_idx] = 1
    arrays["split"] = split
    arrays["source_only"] = np.array(
        [n for n, t in dictionary.tasks.items() if t.source_only and t.kind != "none"], dtype=str
    )
    for name, spec in dictionary.tasks.items():
        if spec.kind == "none":
            continue
        arrays[name] = dictionary.targets[name]
        if spec.input_key != "image":
            arrays[INPUT_PREFIX + name] = dictionary.input_of(name)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _infer_task(name: str, arr: np.ndarray, n: int, hw: tuple[int, int]) -> tuple[TaskSpec, np.ndarray]:
    """Kind, size and the normalised target array of a user task (TaskregError if it does not fit)."""
    if arr.shape[0] != n:
        raise TaskregError(f"task {name!r}: has {arr.shape[0]} rows but 'images' has {n}")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        if arr.ndim != 1:
            raise TaskregError(f"task {name!r}: integer targets must be a vector (N,), got shape {arr.shape}")
        if arr.min() < 0:
            raise TaskregError(f"task {name!r}: class labels must be >= 0, got {arr.min()}")
        arr = arr.astype(np.int64)
        return TaskSpec(name, "classification", int(arr.max()) + 1), arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise TaskregError(f"task {name!r}: dtype {arr.dtype} is neither integer nor float")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise TaskregError(f"task {name!r}: target contains NaN or inf")
    if arr.ndim in (1, 2):
        arr = arr.reshape(n, -1)
        if arr.shape[1] < 1:
            raise TaskregError(f"task {name!r}: regression target has 0 columns")
        return TaskSpec(name, "regression", arr.shape[1]), arr
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim == 4:
        if tuple(arr.shape[2:]) != hw:
            raise TaskregError(
                f"task {name!r}: pixel target is {arr.shape[2]}x{arr.shape[3]} but images are {hw[0]}x{hw[1]}"
            )
        return TaskSpec(name, "pixel", arr.shape[1]), arr
    raise TaskregError(
        f"task {name!r}: cannot infer the kind of an array of shape {arr.shape} "
        "(expected (N,) int, (N,) or (N, k) float, or (N, C, H, W) float)"
    )


def _as_images(arr: np.ndarray, what: str) -> np.ndarray:
    """User images -> (N, 3, H, W) float32 in [0, 1] (uint8 is divided by 255; 1 channel is repeated)."""
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise TaskregError(f"{what} must have shape (N, C, H, W) with C in (1, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise TaskregError(f"{what} contains NaN or inf")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise TaskregError(f"{what} must be in [0, 1], got range [{arr.min():.3g}, {arr.max():.3g}]")
    else:
        raise TaskregError(f"{what} must be float in [0, 1] or uint8, got dtype {arr.dtype}")
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return arr


def load_dictionary_npz(
    path: str | Path, *, seed: int = 0, test_fraction: float = 0.2, add_random: bool = True
) -> Dictionary:
    """Load a user-defined dictionary from an ``.npz`` file.

    Required: ``images`` (N, C, H, W) float32 in [0, 1] or uint8, C in (1, 3), H and W multiples of 4;
    and at least one task array whose key is the task name. The kind is inferred per array:
    integer (N,) -> classification; float (N,) or (N, k) -> regression; float (N, C, H, W) or (N, H, W)
    -> pixel (H, W as the images).
    Optional: ``split`` (N,) int, 1 = test, 0 = train (otherwise a seeded random ``test_fraction``
    split); ``source_only`` (array of task names); ``input__<task>`` (N, C, H, W) modified input of
    ``<task>`` (otherwise the task reads the images).
    add_random : also add the untrained ``random`` projection source (kind 'none').
    """
    path = Path(path)
    if not path.is_file():
        raise TaskregError(f"dictionary file not found: {path}")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as exc:
        raise TaskregError(f"cannot read {path} as an .npz file: {exc}") from exc
    if "images" not in data:
        raise TaskregError(f"{path}: missing the 'images' array (N, C, H, W)")
    images = _as_images(data.pop("images"), f"{path.name}: 'images'")
    n, _, h, w = images.shape
    if h % 4 or w % 4 or h < 8 or w < 8:
        raise TaskregError(f"{path.name}: image height and width must be multiples of 4 and >= 8, got {h}x{w}")
    if n < 10:
        raise TaskregError(f"{path.name}: need at least 10 images, got {n}")

    split = data.pop("split", None)
    if split is None:
        if not 0.0 < test_fraction < 1.0:
            raise TaskregError(f"test_fraction must be in (0, 1), got {test_fraction}")
        perm = np.random.default_rng(seed).permutation(n)
        n_test = min(n - 2, max(1, round(test_fraction * n)))
        is_test = np.zeros(n, bool)
        is_test[perm[:n_test]] = True
    else:
        split = np.asarray(split).reshape(-1)
        if split.shape[0] != n or not np.isin(split, (0, 1)).all():
            raise TaskregError(f"{path.name}: 'split' must be (N,) with values 0 (train) / 1 (test)")
        is_test = split.astype(bool)
        if is_test.all() or (~is_test).sum() < 2:
            raise TaskregError(f"{path.name}: 'split' must leave >= 2 training and >= 1 test image")
    source_only = {str(s) for s in np.asarray(data.pop("source_only", np.array([], dtype=str))).reshape(-1)}

    input_arrays = {k[len(INPUT_PREFIX) :]: data.pop(k) for k in list(data) if k.startswith(INPUT_PREFIX)}
    if not data:
        raise TaskregError(f"{path.name}: no task arrays besides 'images'")
    if add_random and RANDOM_TASK in data:
        raise TaskregError(f"{path.name}: task name {RANDOM_TASK!r} is reserved for the random projection")
    unknown = (set(input_arrays) | source_only) - set(data)
    if unknown:
        raise TaskregError(f"{path.name}: inputs or source_only name unknown tasks: {', '.join(sorted(unknown))}")

    tasks: dict[str, TaskSpec] = {}
    targets: dict[str, np.ndarray] = {}
    inputs: dict[str, np.ndarray] = {}
    for name, arr in data.items():
        spec, target = _infer_task(name, np.asarray(arr), n, (h, w))
        spec.source_only = name in source_only
        if name in input_arrays:
            x = _as_images(input_arrays[name], f"{path.name}: {INPUT_PREFIX + name!r}")
            if x.shape != images.shape:
                raise TaskregError(f"{path.name}: input of task {name!r} has shape {x.shape}, not {images.shape}")
            spec.input_key = name
            inputs[name] = x
        tasks[name] = spec
        targets[name] = target
    if not any(not t.source_only for t in tasks.values()):
        raise TaskregError(f"{path.name}: every task is source-only; at least one target is needed")
    if add_random:
        tasks[RANDOM_TASK] = TaskSpec(RANDOM_TASK, "none", 0, source_only=True,
                                      description="random projection: a fixed seeded untrained encoder")
    return Dictionary.from_split(images, is_test, tasks, targets, inputs, seed=seed)


