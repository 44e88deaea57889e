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

Modules: ``definition`` (Crops, TaskSpec, Dictionary), ``builtin_tasks`` (how each built-in task's input
and target are computed, and their specs), ``builtin_dictionary`` (photographs → crops → dictionary),
``user_dictionary`` (the ``.npz`` format), ``reference`` (picklable DictionaryRef, content fingerprint).
Photographs come from the data package's one photograph loader and image resizer
(:mod:`taskreg.data.images`).
"""

from __future__ import annotations

from taskreg.trainers.taskonomy_dictionary.builtin_dictionary import build_builtin_dictionary
from taskreg.trainers.taskonomy_dictionary.builtin_tasks import (
    CATEGORIES,
    JIGSAW_PERMUTATIONS,
    PHOTO_CATEGORY,
    builtin_task_specs,
    grey,
)
from taskreg.trainers.taskonomy_dictionary.definition import RANDOM_TASK, Crops, Dictionary, TaskSpec
from taskreg.trainers.taskonomy_dictionary.reference import DictionaryRef, dictionary_fingerprint
from taskreg.trainers.taskonomy_dictionary.user_dictionary import load_dictionary_npz, save_dictionary_npz

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

