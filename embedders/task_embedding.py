"""The :class:`TaskEmbedding` record, apart from :mod:`taskreg.embedders.task2vec` so that reading a cached
embedding (``select`` on a query it has seen) does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TaskEmbedding:
    """A Task2Vec embedding and how it was obtained.

    vector : (D,) float32, one value per probe filter (order given by ``layout``).
    layout : [(conv weight name, number of filters)], the blocks of ``vector`` in order.
    """

    vector: np.ndarray
    method: str
    arch: str
    n_samples: int
    n_classes: int
    seed: int
    layout: list[tuple[str, int]] = field(default_factory=list)
    head_train_accuracy: float = float("nan")
    head_train_loss: float = float("nan")
    seconds: float = 0.0
    mean_features: np.ndarray | None = None  # (feature_dim,) mean probe features of the images used: the
    # domain embedding of those images, a by-product of the features pass (see :func:`domain_embedding`)
