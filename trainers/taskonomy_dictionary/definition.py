"""The data model of a Taskonomy task dictionary: :class:`Crops` (what the built-in task functions see),
:class:`TaskSpec` (one task: kind, input, target, loss) and :class:`Dictionary` (images, split, every
task's input and target)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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

    @classmethod
    def from_split(cls, images: np.ndarray, is_test: np.ndarray, tasks: dict[str, TaskSpec],
                   targets: dict[str, np.ndarray], inputs: dict[str, np.ndarray], **extra: Any) -> Dictionary:
        """A dictionary whose test images are those where ``is_test`` ((N,) bool) is True, the rest train."""
        return cls(images=images, train_idx=np.flatnonzero(~is_test).astype(np.int64),
                   test_idx=np.flatnonzero(is_test).astype(np.int64), tasks=tasks, targets=targets, inputs=inputs,
                   **extra)

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
