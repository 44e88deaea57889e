"""The one photograph loader and the one image resizer of the package.

:func:`load_photograph` reads the photographs that ship inside scikit-image and scikit-learn (offline:
no download) and :func:`resize_image` resizes one image. ``builtin:patches``, the image-folder source, the ``lowres``
transform and the Taskonomy task dictionary (``taskreg.trainers.taskonomy_dictionary``) all use them.
"""

from __future__ import annotations

import numpy as np

from taskreg.errors import TaskregError

#: Photographs bundled with scikit-learn (``sklearn.datasets.load_sample_image``).
SKLEARN_PHOTOS = ("china", "flower")
#: Stereo pairs bundled with scikit-image: the photograph is the left view.
STEREO_PHOTOS = ("motorcycle",)
KERNELS = ("lanczos", "linear", "area", "nearest")


def load_photograph(name: str) -> np.ndarray:
    """A photograph bundled with scikit-image or scikit-learn as (H, W, 3) uint8 (grey replicated, alpha dropped).

    name : a scikit-image ``skimage.data`` image ('astronaut', 'coins', ...; only those in the wheel
        load offline: 'eagle' & co. need a download and fail), 'motorcycle' (left view of
        ``skimage.data.stereo_motorcycle``), or 'china' / 'flower' (scikit-learn's sample images).
    """
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        loader = getattr(skimage.data, f"stereo_{name}" if name in STEREO_PHOTOS else name, None)
        if loader is None or name.startswith("_"):
            raise TaskregError(f"unknown bundled photograph {name!r}")
        image = loader()[0] if name in STEREO_PHOTOS else loader()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)


def short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) scaled so that the shorter side is ``short_side`` pixels (aspect ratio kept)."""
    f = short_side / min(height, width)
    return max(short_side, round(height * f)), max(short_side, round(width * f))


def resize_image(image: np.ndarray, shape: tuple[int, int], *, kernel: str = "lanczos") -> np.ndarray:
    """Resize one image to ``shape`` = (height, width).

    image : (H, W) or (H, W, C).
    kernel :
        'lanczos' (default): Pillow's Lanczos filter on a uint8 grey or RGB image; returns uint8. The
        dataset sources use it (photograph crops, image folders of mixed sizes).
        'linear': scikit-image's anti-aliased bilinear interpolation on a real-valued image; returns
        float32 in the input's value range. The Taskonomy dictionary uses it for its photographs and
        the disparity map: its pixels key every cached Taskonomy result, so its kernel stays.
        'area' / 'nearest': Pillow's box filter (each output pixel the mean of the input area it covers;
        exact block means for integer factors) / nearest neighbour on a real-valued image, channel by
        channel in float32; return float32. The ``lowres`` transform downsamples with 'area' and
        upsamples with 'nearest' (``taskreg.data.source_selectors``).
    """
    if kernel == "lanczos":
        from PIL import Image

        resized = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(shape[::-1], Image.Resampling.LANCZOS)
        return np.asarray(resized)
    if kernel == "linear":
        from skimage.transform import resize

        return resize(image, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
    if kernel in ("area", "nearest"):
        from PIL import Image

        method = Image.Resampling.BOX if kernel == "area" else Image.Resampling.NEAREST
        planes = np.asarray(image, dtype=np.float32)
        planes = planes[:, :, None] if planes.ndim == 2 else planes
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[:, :, c])).resize(shape[::-1], method))
                        for c in range(planes.shape[2])], axis=2)
        return out[:, :, 0] if np.ndim(image) == 2 else out
    raise TaskregError(f"unknown resize kernel {kernel!r}; known: {', '.join(KERNELS)}")


def batch_to_size(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) float images resized to ``size`` x ``size`` (bilinear, antialiased) and made RGB, clipped to
    [0, 1]: sources of any shape can then be stacked (probe training, a novel Taskonomy target)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1).numpy()
