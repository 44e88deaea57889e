"""The Taskonomy task dictionary: images where every image carries every annotation.

A *task* maps an image crop to an input (usually the crop itself, sometimes a modified crop: noisy,
rotated, masked, ...) and a target (an edge map, a class, a scalar, ...). Every task is computed for
every image of the dictionary, as in Taskonomy (Zamir et al., CVPR 2018, Sec. 3), so transfer results
reflect the tasks and not the data.

Two ways to get a :class:`Dictionary`:

* :func:`build_builtin_dictionary` — crops of real photographs bundled with scikit-image and
  scikit-learn (loaded offline), annotated programmatically with 15 tasks (11 targets, 4 source-only).
* :func:`load_dictionary_npz` — a user dictionary: an ``.npz`` with an ``images`` array and one array
  per task (the key is the task name, the kind is inferred from shape and dtype).

Built-in dictionary, design decisions (see also the README of the lead):

* Photos are resized so their shorter side is ``5 * size`` pixels, then square ``size x size`` crops
  are taken at random (seeded) positions. The train/test split is *spatial*: test crops come from
  the rightmost quarter of each photo, train crops from the rest, so no test pixel is seen in
  training while the semantic tasks still see every photo in both splits.
* Grey photos are replicated to 3 channels.
* ``disparity`` uses the real stereo disparity of scikit-image's motorcycle pair (left view is one of
  the photos; occluded pixels are filled with the nearest valid disparity; values are divided by the
  maximum disparity, so they are in [0, 1]). The other photos have no stereo pair: by convention they
  are treated as seen at infinity, i.e. their disparity target is 0 everywhere. So that the task is
  not dominated by zeros, the motorcycle provides ``disparity_share`` (default 20 %) of the crops.
* Tasks whose definition *is* a modified input (denoising, inpainting, rotation, scale, jigsaw,
  colorization) have ``input_key == name``; their inputs are stored in ``Dictionary.inputs``.
  All other tasks read the raw crop (``input_key == "image"``).
* ``random`` (kind ``"none"``) is the random-projection source: a fixed, seeded, untrained encoder.
  It has no target and is never a target.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from taskreg.errors import TaskregError

KINDS = ("pixel", "classification", "regression", "none")
RESERVED_KEYS = ("images", "split", "source_only")
INPUT_PREFIX = "input__"
RANDOM_TASK = "random"


# ----------------------------------------------------------------------------------------------------
# Crops: what the task functions see
# ----------------------------------------------------------------------------------------------------


@dataclass
class Crops:
    """The raw material of the built-in dictionary: crops plus the metadata some targets need.

    images : (N, 3, H, W) float32 in [0, 1]
    photo_index : (N,) int64, index into ``photo_names``
    disparity : (N, 1, H, W) float32 in [0, 1] (0 for photos without a stereo pair)
    photo_names : names of the photos, in class order
    seed : seeds the per-image randomness of the input transforms (noise, rotation, ...)
    """

    images: np.ndarray
    photo_index: np.ndarray
    disparity: np.ndarray
    photo_names: tuple[str, ...]
    seed: int = 0


# ----------------------------------------------------------------------------------------------------
# Task specification
# ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class TaskSpec:
    """One task of the dictionary.

    name : unique task name (also the array key in user ``.npz`` dictionaries)
    kind : 'pixel' (target (N, C, H, W) float32, L1 loss), 'classification' (target (N,) int64,
        cross-entropy), 'regression' (target (N, k) float32, squared error) or 'none' (the random
        projection source: no target, no loss)
    out_channels : pixel channels C, number of classes K, or regression dimension k (0 for 'none')
    source_only : True if the task may be a transfer source but is never a target
    input_key : 'image' if the task reads the raw crop, else the key of its modified input in
        ``Dictionary.inputs`` (the task name)
    make_input : (crops) -> (N, 3, H, W) float32, for tasks with a modified input
    make_target : (crops) -> target array; None for user tasks (targets are given)
    pixel_weight : optional (H, W) float32 weight of each pixel in the loss (inpainting: the hole)
    """

    name: str
    kind: str
    out_channels: int
    source_only: bool = False
    input_key: str = "image"
    description: str = ""
    make_input: Callable[[Crops], np.ndarray] | None = field(default=None, repr=False)
    make_target: Callable[[Crops], np.ndarray] | None = field(default=None, repr=False)
    pixel_weight: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TaskregError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "none" and not self.source_only:
            raise TaskregError(f"task {self.name!r}: kind 'none' is only allowed for source-only tasks")
        if self.kind != "none" and self.out_channels < 1:
            raise TaskregError(f"task {self.name!r}: out_channels must be >= 1, got {self.out_channels}")

    @property
    def n_classes(self) -> int:
        """Number of classes K (classification tasks only; 0 otherwise)."""
        return self.out_channels if self.kind == "classification" else 0

    @property
    def trainable(self) -> bool:
        """False for the random projection source (its encoder is never trained)."""
        return self.kind != "none"

    # -- data --------------------------------------------------------------------------------------

    def input(self, crops: Crops) -> np.ndarray:
        """The network input for these crops: (N, 3, H, W) float32 in [0, 1]."""
        if self.make_input is None:
            return crops.images
        return self.make_input(crops).astype(np.float32, copy=False)

    def target(self, crops: Crops) -> np.ndarray:
        """The target for these crops (shape and dtype depend on ``kind``, see the class docstring)."""
        if self.make_target is None:
            raise TaskregError(f"task {self.name!r} has no target function (its targets are given as data)")
        return self.make_target(crops)

    # -- losses ------------------------------------------------------------------------------------

    def per_image_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each image, (N,) float32; lower is better.

        pred : (N, C, H, W) for 'pixel', (N, K) logits for 'classification', (N, k) for 'regression'
        target : (N, C, H, W) float, (N,) int64, (N, k) float respectively
        """
        if self.kind == "pixel":
            err = (pred - target).abs()
            if self.pixel_weight is None:
                return err.flatten(1).mean(dim=1)
            w = torch.as_tensor(self.pixel_weight, dtype=err.dtype, device=err.device)
            denom = max(float(w.sum()) * err.shape[1], 1e-12)
            return (err * w).flatten(1).sum(dim=1) / denom
        if self.kind == "classification":
            return F.cross_entropy(pred, target, reduction="none")
        if self.kind == "regression":
            return ((pred - target) ** 2).flatten(1).mean(dim=1)
        raise TaskregError(f"task {self.name!r} (kind 'none') has no loss")

    def loss(self, pred: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean of :meth:`per_image_loss` over the batch (a scalar tensor).

        label_smoothing : for classification only, the training objective may smooth the labels
            (the trainers use 0.1 against over-confident small-data readouts); evaluation uses 0.
        """
        if self.kind == "classification" and label_smoothing > 0:
            return F.cross_entropy(pred, target, label_smoothing=label_smoothing)
        return self.per_image_loss(pred, target).mean()


# ----------------------------------------------------------------------------------------------------
# Dictionary
# ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Dictionary:
    """A task dictionary: N images, a train/test split, and every task's input and target.

    images : (N, 3, H, W) float32 in [0, 1]
    train_idx, test_idx : int64 index arrays (disjoint, sorted)
    tasks : task name -> :class:`TaskSpec` (dictionary order is the canonical task order)
    targets : task name -> target array with first dimension N (absent for kind 'none')
    inputs : input key -> (N, 3, H, W) float32 modified inputs (the raw images are not duplicated here)
    photo_index, photo_names : which photo each crop comes from (built-in dictionary only)
    """

    images: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    tasks: dict[str, TaskSpec]
    targets: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    photo_index: np.ndarray | None = None
    photo_names: tuple[str, ...] = ()
    seed: int = 0

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def source_names(self) -> list[str]:
        """Tasks that can be transfer sources: all of them (including the random projection)."""
        return list(self.tasks)

    @property
    def target_names(self) -> list[str]:
        """Tasks that can be transfer targets: all but the source-only ones."""
        return [n for n, t in self.tasks.items() if not t.source_only]

    @property
    def input_keys(self) -> list[str]:
        """Distinct input keys of the targets ('image' first): one feature cache per (source, key)."""
        keys = ["image"]
        for name in self.target_names:
            key = self.tasks[name].input_key
            if key not in keys:
                keys.append(key)
        return keys

    def task(self, name: str) -> TaskSpec:
        """The spec of task ``name``; TaskregError if unknown."""
        if name not in self.tasks:
            raise TaskregError(f"unknown task {name!r}; known tasks: {', '.join(self.tasks)}")
        return self.tasks[name]

    def input_array(self, key: str) -> np.ndarray:
        """The (N, 3, H, W) float32 input for input key ``key`` ('image' = the raw images)."""
        if key == "image":
            return self.images
        if key not in self.inputs:
            raise TaskregError(f"unknown input key {key!r}; known: image, {', '.join(self.inputs)}")
        return self.inputs[key]

    def input_of(self, task: str) -> np.ndarray:
        """The (N, 3, H, W) float32 input of task ``task``."""
        return self.input_array(self.task(task).input_key)

    def target_of(self, task: str) -> np.ndarray:
        """The target array of task ``task`` (first dimension N)."""
        spec = self.task(task)
        if spec.kind == "none":
            raise TaskregError(f"task {task!r} is a random projection and has no target")
        return self.targets[task]


# ----------------------------------------------------------------------------------------------------
# Helpers for the built-in tasks (top-level functions so specs stay picklable)
# ----------------------------------------------------------------------------------------------------


def _task_rng(seed: int, task: str) -> np.random.Generator:
    """A generator specific to (seed, task), stable across runs and platforms."""
    return np.random.default_rng([int(seed), zlib.crc32(task.encode())])


def grey(images: np.ndarray) -> np.ndarray:
    """Luma of RGB images. images : (N, 3, H, W) -> (N, 1, H, W) float32."""
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
    return (images * w).sum(axis=1, keepdims=True).astype(np.float32)


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32) / 4.0


def _gradients(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel gradients of (N, 1, H, W) images, computed per image (no mixing across the batch)."""
    kx = _SOBEL_X.reshape(1, 1, 3, 3)
    ky = _SOBEL_X.T.copy().reshape(1, 1, 3, 3)
    gx = ndimage.correlate(g, kx, mode="reflect")
    gy = ndimage.correlate(g, ky, mode="reflect")
    return gx, gy


def _target_edges(crops: Crops) -> np.ndarray:
    gx, gy = _gradients(grey(crops.images))
    # |grad| of a [0, 1] image is at most ~1.4 with this kernel; x2 spreads the typical range
    return np.clip(2.0 * np.sqrt(gx**2 + gy**2), 0.0, 1.0).astype(np.float32)


def _structure_tensor(crops: Crops, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gx, gy = _gradients(grey(crops.images))
    s = (0, 0, sigma, sigma)
    jxx = ndimage.gaussian_filter(gx * gx, s, mode="reflect")
    jyy = ndimage.gaussian_filter(gy * gy, s, mode="reflect")
    jxy = ndimage.gaussian_filter(gx * gy, s, mode="reflect")
    return jxx, jyy, jxy


def _target_keypoints(crops: Crops) -> np.ndarray:
    """Harris corner response, positive part, square-root compressed into [0, 1]."""
    jxx, jyy, jxy = _structure_tensor(crops, sigma=1.0)
    r = jxx * jyy - jxy**2 - 0.05 * (jxx + jyy) ** 2
    return np.clip(np.sqrt(np.maximum(r, 0.0)) * 20.0, 0.0, 1.0).astype(np.float32)


def _target_orientation(crops: Crops) -> np.ndarray:
    """Dominant gradient orientation of the crop: (N, 2) = coherence * (cos 2θ, sin 2θ)."""
    gx, gy = _gradients(grey(crops.images))
    jxx = (gx * gx).mean(axis=(1, 2, 3))
    jyy = (gy * gy).mean(axis=(1, 2, 3))
    jxy = (gx * gy).mean(axis=(1, 2, 3))
    denom = np.maximum(jxx + jyy, 1e-8)
    return np.stack([(jxx - jyy) / denom, 2.0 * jxy / denom], axis=1).astype(np.float32)


def _target_segment(crops: Crops) -> np.ndarray:
    """Boundaries of an unsupervised Felzenszwalb segmentation, (N, 1, H, W) in {0, 1}."""
    from skimage.segmentation import felzenszwalb, find_boundaries

    n, _, h, w = crops.images.shape
    out = np.zeros((n, 1, h, w), dtype=np.float32)
    scale = 2.0 * h  # keeps the segment size proportional to the crop size
    for i in range(n):
        seg = felzenszwalb(crops.images[i].transpose(1, 2, 0), scale=scale, sigma=0.5, min_size=h // 4)
        out[i, 0] = find_boundaries(seg, mode="inner")
    return out


def _target_images(crops: Crops) -> np.ndarray:
    return crops.images


def _target_disparity(crops: Crops) -> np.ndarray:
    return crops.disparity


def _target_photo(crops: Crops) -> np.ndarray:
    return crops.photo_index.astype(np.int64)


def _target_category(crops: Crops) -> np.ndarray:
    cats = np.array([CATEGORY_INDEX[PHOTO_CATEGORY[n]] for n in crops.photo_names], dtype=np.int64)
    return cats[crops.photo_index]


def _input_noisy(crops: Crops, sigma: float = 0.1) -> np.ndarray:
    rng = _task_rng(crops.seed, "denoising")
    noise = rng.normal(0.0, sigma, size=crops.images.shape).astype(np.float32)
    return np.clip(crops.images + noise, 0.0, 1.0)


def _centre_mask(h: int, w: int) -> np.ndarray:
    """(H, W) float32, 1 on the central (H/2, W/2) square."""
    m = np.zeros((h, w), dtype=np.float32)
    m[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 1.0
    return m


def _input_masked(crops: Crops) -> np.ndarray:
    h, w = crops.images.shape[2:]
    m = _centre_mask(h, w)
    return (crops.images * (1.0 - m) + 0.5 * m).astype(np.float32)


def _input_grey(crops: Crops) -> np.ndarray:
    return np.repeat(grey(crops.images), 3, axis=1)


def _rotation_classes(crops: Crops) -> np.ndarray:
    return _task_rng(crops.seed, "rotation").integers(0, 4, size=len(crops.images)).astype(np.int64)


def _input_rotated(crops: Crops) -> np.ndarray:
    k = _rotation_classes(crops)
    out = np.empty_like(crops.images)
    for r in range(4):
        sel = k == r
        out[sel] = np.rot90(crops.images[sel], r, axes=(2, 3))
    return out


#: the Klein four-group on the 2x2 tiles (tile i -> slot perm[i]): every two permutations move every
#: tile differently (Hamming distance 4), which makes the task learnable from little data (with all 24
#: permutations of 4 tiles the networks stay at chance at this scale)
JIGSAW_PERMUTATIONS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0))


def _jigsaw_classes(crops: Crops) -> np.ndarray:
    n_perm = len(JIGSAW_PERMUTATIONS)
    return _task_rng(crops.seed, "jigsaw").integers(0, n_perm, size=len(crops.images)).astype(np.int64)


def _input_jigsaw(crops: Crops) -> np.ndarray:
    """2x2 tiles shuffled by permutation ``JIGSAW_PERMUTATIONS[class]``: tile i goes to slot perm[i]."""
    x = crops.images
    h2, w2 = x.shape[2] // 2, x.shape[3] // 2
    tiles = [x[:, :, r * h2 : (r + 1) * h2, c * w2 : (c + 1) * w2] for r in range(2) for c in range(2)]
    out = x.copy()
    for cls, perm in enumerate(JIGSAW_PERMUTATIONS):
        sel = _jigsaw_classes(crops) == cls
        if not sel.any():
            continue
        for i, slot in enumerate(perm):
            r, c = divmod(slot, 2)
            out[sel, :, r * h2 : (r + 1) * h2, c * w2 : (c + 1) * w2] = tiles[i][sel]
    return out


MAX_LOG2_ZOOM = 2.0


def _zoom_factors(crops: Crops) -> np.ndarray:
    """Zoom factors z = 2**u, u uniform in [0, MAX_LOG2_ZOOM] (1x to 4x)."""
    u = _task_rng(crops.seed, "scale").uniform(0.0, MAX_LOG2_ZOOM, size=len(crops.images))
    return np.exp2(u).astype(np.float32)


def _input_zoomed(crops: Crops) -> np.ndarray:
    """The central 1/z of the crop, bilinearly enlarged back to (H, W)."""
    z = torch.from_numpy(_zoom_factors(crops))
    theta = torch.zeros(len(z), 2, 3)
    theta[:, 0, 0] = 1.0 / z
    theta[:, 1, 1] = 1.0 / z
    x = torch.from_numpy(np.ascontiguousarray(crops.images))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False).numpy().astype(np.float32)


def _target_scale(crops: Crops) -> np.ndarray:
    return np.log2(_zoom_factors(crops)).reshape(-1, 1).astype(np.float32)


def _target_none(crops: Crops) -> np.ndarray:
    return np.zeros((len(crops.images), 0), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------
# Built-in photos
# ----------------------------------------------------------------------------------------------------

#: photo name -> coarse semantic category (the 'category' task)
PHOTO_CATEGORY: dict[str, str] = {
    "astronaut": "scene",
    "coffee": "scene",
    "chelsea": "scene",
    "rocket": "scene",
    "camera": "scene",
    "clock": "scene",
    "coins": "scene",
    "china": "scene",
    "flower": "scene",
    "motorcycle": "scene",
    "brick": "texture",
    "grass": "texture",
    "gravel": "texture",
    "page": "document",
    "text": "document",
    "hubble_deep_field": "science",
    "immunohistochemistry": "science",
    "retina": "science",
    "moon": "science",
    "cell": "science",
}
CATEGORIES: tuple[str, ...] = ("scene", "texture", "document", "science")
CATEGORY_INDEX: dict[str, int] = {c: i for i, c in enumerate(CATEGORIES)}


def _load_photo(name: str) -> np.ndarray:
    """One bundled photo as (H, W, 3) float32 in [0, 1] (offline)."""
    if name == "motorcycle":
        import skimage.data

        left, _, _ = skimage.data.stereo_motorcycle()
        img = left
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    return (img.astype(np.float32) / scale).clip(0.0, 1.0)


def _load_disparity() -> np.ndarray:
    """Motorcycle disparity (H, W) float32 in [0, 1]; occlusions filled with the nearest valid value."""
    import skimage.data

    _, _, disp = skimage.data.stereo_motorcycle()
    disp = np.asarray(disp, dtype=np.float32)
    valid = np.isfinite(disp)
    if not valid.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
        disp = disp[iy, ix]
    return disp / max(float(disp.max()), 1e-8)


def _resize(img: np.ndarray, short_side: int) -> np.ndarray:
    from skimage.transform import resize

    h, w = img.shape[:2]
    f = short_side / min(h, w)
    shape = (max(short_side, round(h * f)), max(short_side, round(w * f)))
    return resize(img, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split integer ``total`` proportionally to ``weights`` (largest remainder)."""
    raw = total * weights / max(float(weights.sum()), 1e-12)
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


# ----------------------------------------------------------------------------------------------------
# Built-in task list and dictionary
# ----------------------------------------------------------------------------------------------------


def builtin_task_specs(size: int) -> dict[str, TaskSpec]:
    """The 15 built-in tasks for ``size x size`` crops (11 targets, 4 source-only), in canonical order."""
    n_perm = len(JIGSAW_PERMUTATIONS)
    specs = [
        TaskSpec("edges2d", "pixel", 1, description="Sobel gradient magnitude of the grey image",
                 make_target=_target_edges),
        TaskSpec("keypoints2d", "pixel", 1, description="Harris corner response (positive part, sqrt)",
                 make_target=_target_keypoints),
        TaskSpec("segment2d", "pixel", 1, description="Felzenszwalb unsupervised segmentation boundaries",
                 make_target=_target_segment),
        TaskSpec("autoencoding", "pixel", 3, description="reconstruct the image",
                 make_target=_target_images),
        TaskSpec("denoising", "pixel", 3, input_key="denoising",
                 description="recover the image from Gaussian noise (sigma 0.1)",
                 make_input=_input_noisy, make_target=_target_images),
        TaskSpec("inpainting", "pixel", 3, input_key="inpainting",
                 description="fill the masked central square (loss on the hole only)",
                 make_input=_input_masked, make_target=_target_images,
                 pixel_weight=_centre_mask(size, size)),
        TaskSpec("disparity", "pixel", 1,
                 description="stereo disparity (real for the motorcycle pair, 0 for single photos)",
                 make_target=_target_disparity),
        TaskSpec("scale", "regression", 1, input_key="scale",
                 description="log2 of the zoom factor (1x..4x) applied to the input",
                 make_input=_input_zoomed, make_target=_target_scale),
        TaskSpec("orientation", "regression", 2,
                 description="dominant orientation: coherence * (cos 2t, sin 2t) of the structure tensor",
                 make_target=_target_orientation),
        TaskSpec("photo", "classification", len(PHOTO_CATEGORY),
                 description="which photograph the crop comes from", make_target=_target_photo),
        TaskSpec("category", "classification", len(CATEGORIES),
                 description=f"coarse photo category ({', '.join(CATEGORIES)})", make_target=_target_category),
        TaskSpec("rotation", "classification", 4, source_only=True, input_key="rotation",
                 description="which multiple of 90 degrees the input was rotated by (RotNet-style)",
                 make_input=_input_rotated, make_target=_rotation_classes),
        TaskSpec("colorization", "pixel", 3, source_only=True, input_key="colorization",
                 description="predict the colour image from its grey version",
                 make_input=_input_grey, make_target=_target_images),
        TaskSpec("jigsaw", "classification", n_perm, source_only=True, input_key="jigsaw",
                 description=f"which of the {n_perm} permutations shuffled the 2x2 tiles",
                 make_input=_input_jigsaw, make_target=_jigsaw_classes),
        TaskSpec(RANDOM_TASK, "none", 0, source_only=True,
                 description="random projection: a fixed seeded untrained encoder", make_target=_target_none),
    ]
    return {s.name: s for s in specs}


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
            img = _load_photo(name)
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
    return Dictionary(
        images=images,
        train_idx=np.flatnonzero(~is_test).astype(np.int64),
        test_idx=np.flatnonzero(is_test).astype(np.int64),
        tasks=specs,
        targets=targets,
        inputs=inputs,
        photo_index=photo_index,
        photo_names=names,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------------
# User dictionaries (.npz)
# ----------------------------------------------------------------------------------------------------


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
    np.savez(path, **arrays)
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
    return Dictionary(
        images=images,
        train_idx=np.flatnonzero(~is_test).astype(np.int64),
        test_idx=np.flatnonzero(is_test).astype(np.int64),
        tasks=tasks,
        targets=targets,
        inputs=inputs,
        seed=seed,
    )


__all__ = [
    "CATEGORIES",
    "Crops",
    "DictionaryRef",
    "Dictionary",
    "JIGSAW_PERMUTATIONS",
    "PHOTO_CATEGORY",
    "RANDOM_TASK",
    "TaskSpec",
    "build_builtin_dictionary",
    "dictionary_fingerprint",
    "builtin_task_specs",
    "grey",
    "load_dictionary_npz",
    "save_dictionary_npz",
]


# ----------------------------------------------------------------------------------------------------
# Picklable references (jobs in worker processes rebuild or reload the dictionary once per process)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DictionaryRef:
    """A small picklable recipe for a dictionary: the built-in one (with its parameters) or an .npz path.

    ``load()`` builds it once per process and caches it, so jobs sent to worker processes carry this
    reference instead of megabytes of arrays.
    """

    source: str = "builtin"  # 'builtin' | 'npz'
    path: str = ""
    size: int = 32
    n_images: int = 1600
    seed: int = 0
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.source not in ("builtin", "npz"):
            raise TaskregError(f"DictionaryRef.source must be 'builtin' or 'npz', got {self.source!r}")
        if self.source == "npz" and not self.path:
            raise TaskregError("DictionaryRef(source='npz') needs a path")

    def load(self) -> Dictionary:
        """The referenced dictionary (cached per process)."""
        if self not in _DICTIONARY_CACHE:
            if len(_DICTIONARY_CACHE) >= 4:
                _DICTIONARY_CACHE.pop(next(iter(_DICTIONARY_CACHE)))
            if self.source == "builtin":
                d = build_builtin_dictionary(size=self.size, n_images=self.n_images, seed=self.seed, tiny=self.tiny)
            else:
                d = load_dictionary_npz(self.path, seed=self.seed)
            _DICTIONARY_CACHE[self] = d
        return _DICTIONARY_CACHE[self]


_DICTIONARY_CACHE: dict[DictionaryRef, Dictionary] = {}


def dictionary_fingerprint(dictionary: Dictionary) -> str:
    """A 12-hex-digit content hash of images, split, task names/kinds and targets (for cache keys)."""
    import hashlib

    h = hashlib.sha1()
    h.update(np.ascontiguousarray(dictionary.images).tobytes())
    h.update(np.ascontiguousarray(dictionary.test_idx).tobytes())
    for name, spec in dictionary.tasks.items():
        h.update(f"{name}:{spec.kind}:{spec.out_channels}:{spec.source_only}:{spec.input_key};".encode())
        if name in dictionary.targets:
            h.update(np.ascontiguousarray(dictionary.targets[name]).tobytes())
    return h.hexdigest()[:12]
