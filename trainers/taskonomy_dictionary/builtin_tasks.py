"""The 15 tasks of the built-in dictionary: how each one's input and target are computed from the crops
(top-level functions, so task specs stay picklable for worker processes), and :func:`builtin_task_specs`."""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F

from taskreg.trainers.taskonomy_dictionary.definition import RANDOM_TASK, Crops, TaskSpec

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
    from scipy import ndimage  # imported where used: every probe network's module imports this package (0.25 s)

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
    from scipy import ndimage

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

