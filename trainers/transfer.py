"""Taskonomy steps I and II: task-specific networks, transfer functions, baselines, beam search.

Reason: Taskonomy transfer networks, their jobs and training loops share one module; not yet split by concern.

Pipeline (Zamir et al., CVPR 2018, Sec. 3.1-3.2), as the lead's ``taskonomy build`` runs it:

1. ``self`` — :func:`train_task_network` trains encoder + decoder of every trainable task on the
   whole training split (the 'random' source is not trained: :func:`source_encoder` gives its fixed
   random encoder).
2. Representations — :func:`encode` applies a frozen source encoder to images; it is called once per
   (source, input key) on the rows :func:`feature_indices` (the small transfer-training subset plus
   the test split) and the arrays are cached, so nothing is encoded twice.
3. ``transfer`` — :func:`train_transfer` trains a readout (two convs on the channel-concatenated
   frozen source representations) and a fresh target decoder on a little data (default 1/8 of
   the training split, the same deterministic subset for every transfer to a target).
   ``scratch`` — :func:`train_scratch` trains encoder + decoder from pixels on that same subset.
4. Higher order — :func:`beam_candidates` picks, per target, the 5 best first-order sources and all
   their k-combinations, 2 <= k <= max_order (beam of 1, i.e. the top k, for k > beam).

What the sources see. The paper feeds the same query image to every frozen encoder. Here the query
image of a target is the target's *input* (``Dictionary.input_of(target)``): the raw crop for most
targets, but the noisy crop for denoising, the masked crop for inpainting and the zoomed crop for
scale — otherwise those targets would be ill-posed (a source that saw the clean image cannot know
the noise or the zoom). Caches are therefore keyed by (source, ``input_key`` of the target); the
built-in dictionary has 4 input keys among its targets. Source encoders trained on a modified input
(colorization: grey, rotation: rotated, jigsaw: shuffled) are applied to these query images as is.

Per-image losses are the test-split losses (N_test,), in ``Dictionary.test_idx`` order, so win
rates between any two results for one target compare the same images (:func:`win_rate`).

Jobs. :class:`TransferJob` is a small picklable description with a stable ``key`` (the lead skips
jobs whose key is already stored); :func:`run_job` executes one in any process. Big arrays travel as
file paths: frozen features as ``.npy`` files (``feature_paths``), the dictionary as a
:class:`~taskreg.trainers.taskonomy_dictionary.DictionaryRef` (rebuilt or reloaded once per worker process).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from torch import nn

from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.trainers.networks import (
    Encoder,
    Readout,
    TaskModel,
    TransferModel,
    make_decoder,
    random_projection_encoder,
    rep_shape_for,
)
from taskreg.trainers.taskonomy_dictionary import Dictionary, DictionaryRef, TaskSpec

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python 3.11+; annotations are not evaluated at run time

#: defaults chosen so the built-in pipeline runs in minutes on 2 CPU cores (see the report/README)
SELF_EPOCHS = 10
TRANSFER_EPOCHS = 30
BATCH_SIZE = 32
LR = 2e-3
TRAIN_FRACTION = 1 / 8
JOB_KINDS = ("transfer", "scratch", "self")
#: label smoothing of the classification training objective (evaluation losses are plain cross-entropy)
LABEL_SMOOTHING = 0.1


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


@dataclass
class TransferResult:
    """Outcome of one transfer (or baseline) to ``target``.

    sources : source tasks, canonical (sorted) order; () for scratch, (target,) for self
    order : number of sources (0 for scratch)
    per_image_loss : (N_test,) float32 test loss per image, ``Dictionary.test_idx`` order
    mean_loss : mean of ``per_image_loss``
    seconds : wall-clock training + evaluation time
    train_size : number of training images used
    kind : 'transfer' | 'scratch' | 'self'
    """

    sources: tuple[str, ...]
    target: str
    order: int
    per_image_loss: np.ndarray
    mean_loss: float
    seconds: float
    train_size: int
    kind: str = "transfer"


class TaskNetwork(TaskModel):
    """A trained task-specific network (encoder + decoder) and its test losses.

    task : task name
    per_image_loss : (N_test,) float32; mean_loss : float; seconds : training time; train_size : int
    """

    def __init__(
        self,
        task: str,
        encoder: nn.Module,
        decoder: nn.Module,
        per_image_loss: np.ndarray,
        seconds: float,
        train_size: int,
    ) -> None:
        super().__init__(encoder, decoder)
        self.task = task
        self.per_image_loss = per_image_loss
        self.mean_loss = float(per_image_loss.mean()) if per_image_loss.size else float("nan")
        self.seconds = seconds
        self.train_size = train_size

    def as_result(self) -> TransferResult:
        """The ``self`` baseline as a :class:`TransferResult` (sources = (task,), kind 'self')."""
        return TransferResult(
            sources=(self.task,),
            target=self.task,
            order=1,
            per_image_loss=self.per_image_loss,
            mean_loss=self.mean_loss,
            seconds=self.seconds,
            train_size=self.train_size,
            kind="self",
        )


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TaskregError(f"invalid device {device!r}: {exc}") from exc


def _target_task(dictionary: Dictionary, target: str) -> TaskSpec:
    spec = dictionary.task(target)
    if spec.source_only:
        raise TaskregError(f"task {target!r} is source-only and cannot be a transfer target")
    return spec


def _target_tensor(task: TaskSpec, y: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(y))
    return t.long() if task.kind == "classification" else t.float()


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: TaskSpec,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: Progress = None,
) -> None:
    """Adam with cosine lr decay on ``task.loss``; x, y on the CPU, moved to ``device`` batch by batch."""
    model.to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    # cosine decay to 0 over the run: better end points for short schedules than a constant lr
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < 2 and n >= 2:  # a batch of 1 breaks BatchNorm; skip the remainder
                continue
            loss = task.loss(model(x[idx].to(device)), y[idx].to(device), label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)


@torch.no_grad()
def _per_image_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: TaskSpec, batch_size: int, device: torch.device
) -> np.ndarray:
    model.to(device).eval()
    step = max(batch_size, 256)
    out = [
        task.per_image_loss(model(x[s : s + step].to(device)), y[s : s + step].to(device)).cpu()
        for s in range(0, x.shape[0], step)
    ]
    losses = torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)
    if not np.isfinite(losses).all():
        raise TaskregError(f"task {task.name!r}: non-finite test losses (training diverged; lower the lr)")
    return losses


class TrainOptions(TypedDict, total=False):
    """The training options of :func:`train_task_network`, :func:`train_transfer` and :func:`train_scratch`.

    epochs (default :data:`SELF_EPOCHS` for a task network, :data:`TRANSFER_EPOCHS` otherwise), batch_size
    (:data:`BATCH_SIZE`), lr (:data:`LR`), seed (0: torch's global seed and the batch order), device ("cpu"),
    progress (None; else called with (epochs done, epochs)).
    """

    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: str | torch.device
    progress: Progress


@dataclass(frozen=True)
class _Training:
    """One training run of a network: its checked options and start time; :meth:`fit_and_test` trains and tests."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: torch.device
    progress: Progress
    t0: float

    @classmethod
    def start(
        cls, default_epochs: int, *, epochs: int | None = None, batch_size: int = BATCH_SIZE, lr: float = LR,
        seed: int = 0, device: str | torch.device = "cpu", progress: Progress = None,
    ) -> _Training:
        """Check the options (``epochs`` None: ``default_epochs``), start the clock and seed torch."""
        epochs = default_epochs if epochs is None else epochs
        if epochs < 1:
            raise TaskregError(f"epochs must be >= 1, got {epochs}")
        if batch_size < 1:
            raise TaskregError(f"batch_size must be >= 1, got {batch_size}")
        if not lr > 0:
            raise TaskregError(f"lr must be > 0, got {lr}")
        run = cls(epochs, batch_size, lr, seed, _device(device), progress, time.perf_counter())
        torch.manual_seed(seed)
        return run

    @property
    def seconds(self) -> float:
        """Wall-clock seconds since :meth:`start`."""
        return time.perf_counter() - self.t0

    def fit_and_test(
        self, model: nn.Module, task: TaskSpec, train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
    ) -> np.ndarray:
        """Train ``model`` on ``train`` (x, y) with :func:`_fit`; its per-image losses on ``test`` (x, y)."""
        _fit(model, *train, task, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
             device=self.device, progress=self.progress)
        return _per_image_losses(model, *test, task, self.batch_size, self.device)

    def result(
        self, model: nn.Module, task: TaskSpec, train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor], *, sources: tuple[str, ...], target: str, kind: str,
    ) -> TransferResult:
        """:meth:`fit_and_test`, as the :class:`TransferResult` of ``sources -> target`` (order = len(sources))."""
        losses = self.fit_and_test(model, task, train, test)
        return TransferResult(sources=sources, target=target, order=len(sources), per_image_loss=losses,
                              mean_loss=float(losses.mean()), seconds=self.seconds, train_size=len(train[0]),
                              kind=kind)


# ----------------------------------------------------------------------------------------------------
# Step I: task-specific networks
# ----------------------------------------------------------------------------------------------------


def train_task_network(dictionary: Dictionary, task: str, **options: Unpack[TrainOptions]) -> TaskNetwork:
    """Train the fully supervised network of ``task`` on the whole training split.

    The network reads ``dictionary.input_of(task)`` (N, 3, H, W) and predicts the task's target.
    Returns a :class:`TaskNetwork` in eval mode with the per-image test losses (N_test,).
    The 'random' source (kind 'none') is not trained: use :func:`source_encoder`. options: :class:`TrainOptions`.
    """
    spec = dictionary.task(task)
    if not spec.trainable:
        raise TaskregError(f"task {task!r} is a random projection; it has no network to train")
    run = _Training.start(SELF_EPOCHS, **options)
    encoder = Encoder()
    decoder = make_decoder(spec, rep_shape_for(dictionary.image_shape[1:]))
    model = TaskModel(encoder, decoder)
    x = torch.from_numpy(dictionary.input_of(task))
    y = _target_tensor(spec, dictionary.target_of(task))
    tr, te = torch.from_numpy(dictionary.train_idx), torch.from_numpy(dictionary.test_idx)
    losses = run.fit_and_test(model, spec, (x[tr], y[tr]), (x[te], y[te]))
    net = TaskNetwork(task, encoder, decoder, losses, run.seconds, len(tr))
    net.cpu().eval()
    return net


def source_encoder(
    dictionary: Dictionary, source: str, networks: Mapping[str, TaskNetwork], *, seed: int = 0
) -> nn.Module:
    """The frozen encoder of ``source``: from its trained network, or the seeded random projection."""
    spec = dictionary.task(source)
    if not spec.trainable:
        return random_projection_encoder(seed)
    if source not in networks:
        raise TaskregError(f"no trained network for source task {source!r}")
    return networks[source].encoder


@torch.no_grad()
def encode(
    encoder: nn.Module,
    inputs: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Frozen representations of ``inputs``.

    inputs : (N, 3, H, W) float32 in [0, 1]
    Returns (N, C, H/4, W/4) float32 (C = 16 with the default encoder).
    """
    if inputs.ndim != 4 or inputs.shape[1] != 3:
        raise TaskregError(f"inputs must have shape (N, 3, H, W), got {inputs.shape}")
    dev = _device(device)
    was_training = encoder.training
    encoder.to(dev).eval()
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    out = [encoder(x[s : s + batch_size].to(dev)).cpu() for s in range(0, x.shape[0], batch_size)]
    encoder.train(was_training)
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0,), np.float32)


# ----------------------------------------------------------------------------------------------------
# Step II: transfers and the scratch baseline
# ----------------------------------------------------------------------------------------------------


def transfer_train_indices(dictionary: Dictionary, train_fraction: float = TRAIN_FRACTION) -> np.ndarray:
    """The little training subset of transfers and scratch: sorted int64 indices into the images.

    ceil(train_fraction * N_train) training images drawn with the dictionary's seed, the same for
    every transfer so that all sources of a target are compared on the same data.
    """
    if not 0.0 < train_fraction <= 1.0:
        raise TaskregError(f"train_fraction must be in (0, 1], got {train_fraction}")
    n_train = len(dictionary.train_idx)
    m = min(n_train, max(2, math.ceil(train_fraction * n_train)))
    rng = np.random.default_rng([dictionary.seed, 11])
    return np.sort(rng.permutation(dictionary.train_idx)[:m]).astype(np.int64)


def feature_indices(dictionary: Dictionary, train_fraction: float = TRAIN_FRACTION) -> np.ndarray:
    """Sorted rows that transfers read: the transfer-training subset and the test split.

    Encode ``dictionary.input_array(key)[feature_indices(...)]`` to make a compact feature cache.
    """
    return np.union1d(transfer_train_indices(dictionary, train_fraction), dictionary.test_idx).astype(np.int64)


def encode_for_transfers(
    encoder: nn.Module,
    dictionary: Dictionary,
    input_key: str,
    *,
    train_fraction: float = TRAIN_FRACTION,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Compact feature cache: ``encode`` of the rows :func:`feature_indices` of input ``input_key``.

    Returns (len(feature_indices), C, h, w) float32, accepted by :func:`train_transfer`.
    """
    rows = feature_indices(dictionary, train_fraction)
    return encode(encoder, dictionary.input_array(input_key)[rows], batch_size=batch_size, device=device)


def _align_features(
    features: np.ndarray, dictionary: Dictionary, train_fraction: float, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of one source's features, given for all N images or feature_indices."""
    train_rows = transfer_train_indices(dictionary, train_fraction)
    if features.ndim != 4:
        raise TaskregError(f"{what}: features must have shape (N, C, h, w), got {features.shape}")
    if features.shape[0] == dictionary.n_images:
        return np.asarray(features[train_rows]), np.asarray(features[dictionary.test_idx])
    rows = feature_indices(dictionary, train_fraction)
    if features.shape[0] != len(rows):
        raise TaskregError(
            f"{what}: features have {features.shape[0]} rows; expected {dictionary.n_images} (all images) "
            f"or {len(rows)} (feature_indices with train_fraction={train_fraction:g})"
        )
    pos = {int(r): i for i, r in enumerate(rows)}
    tr = np.array([pos[int(r)] for r in train_rows])
    te = np.array([pos[int(r)] for r in dictionary.test_idx])
    return np.asarray(features[tr]), np.asarray(features[te])


def train_transfer(
    source_features: Sequence[np.ndarray],
    dictionary: Dictionary,
    target: str,
    *,
    sources: Sequence[str] | None = None,
    train_fraction: float = TRAIN_FRACTION,
    **options: Unpack[TrainOptions],
) -> TransferResult:
    """Train a transfer function (readout + fresh decoder) from frozen source features to ``target``.

    source_features : one array per source, (N, C, h, w) for all images or
        (len(feature_indices), C, h, w) — the source encoders applied to ``dictionary.input_of(target)``
    sources : names of the sources (for the result; defaults to 's0', 's1', ...)
    Each source's features are standardised per channel with training-subset statistics, then
    concatenated along channels (higher-order transfers). Trained on
    :func:`transfer_train_indices`, evaluated on the test split. options: :class:`TrainOptions`.
    """
    spec = _target_task(dictionary, target)
    run = _Training.start(TRANSFER_EPOCHS, **options)
    if len(source_features) < 1:
        raise TaskregError("train_transfer needs at least one source feature array")
    names = tuple(sources) if sources is not None else tuple(f"s{i}" for i in range(len(source_features)))
    if len(names) != len(source_features):
        raise TaskregError(f"got {len(names)} source names for {len(source_features)} feature arrays")
    tr_parts, te_parts = [], []
    for name, feats in zip(names, source_features, strict=True):
        tr_f, te_f = _align_features(feats, dictionary, train_fraction, f"source {name!r}")
        mean = tr_f.mean(axis=(0, 2, 3), keepdims=True)
        std = tr_f.std(axis=(0, 2, 3), keepdims=True)
        std = np.where(std > 1e-6, std, 1.0)
        tr_parts.append((tr_f - mean) / std)
        te_parts.append((te_f - mean) / std)
    shapes = {p.shape[1:] for p in tr_parts}
    if len(shapes) != 1:
        raise TaskregError(f"source features have different shapes {sorted(shapes)}; they must match")
    rep_c, h, w = tr_parts[0].shape[1:]
    x_tr = torch.from_numpy(np.concatenate(tr_parts, axis=1).astype(np.float32))
    x_te = torch.from_numpy(np.concatenate(te_parts, axis=1).astype(np.float32))
    y_all = dictionary.target_of(target)
    train_rows = transfer_train_indices(dictionary, train_fraction)
    y_tr = _target_tensor(spec, y_all[train_rows])
    y_te = _target_tensor(spec, y_all[dictionary.test_idx])

    model = TransferModel(Readout(len(names), rep_channels=rep_c), make_decoder(spec, (rep_c, h, w)))
    return run.result(model, spec, (x_tr, y_tr), (x_te, y_te), sources=names, target=target, kind="transfer")


def train_scratch(
    dictionary: Dictionary, target: str, *, train_fraction: float = TRAIN_FRACTION, **options: Unpack[TrainOptions]
) -> TransferResult:
    """Baseline: encoder + decoder trained from pixels on the transfers' little training subset.

    options: :class:`TrainOptions`."""
    spec = _target_task(dictionary, target)
    run = _Training.start(TRANSFER_EPOCHS, **options)
    model = TaskModel(Encoder(), make_decoder(spec, rep_shape_for(dictionary.image_shape[1:])))
    rows = transfer_train_indices(dictionary, train_fraction)
    x = dictionary.input_of(target)
    y = dictionary.target_of(target)
    x_tr, y_tr = torch.from_numpy(x[rows]), _target_tensor(spec, y[rows])
    x_te, y_te = torch.from_numpy(x[dictionary.test_idx]), _target_tensor(spec, y[dictionary.test_idx])
    return run.result(model, spec, (x_tr, y_tr), (x_te, y_te), sources=(), target=target, kind="scratch")


# ----------------------------------------------------------------------------------------------------
# Comparisons and higher-order candidates
# ----------------------------------------------------------------------------------------------------


def win_rate(loss_a: np.ndarray, loss_b: np.ndarray) -> float:
    """Share of test images on which A has a lower loss than B (ties count one half), in [0, 1].

    loss_a, loss_b : (N_test,) per-image losses of two results for the same target.
    """
    a, b = np.asarray(loss_a), np.asarray(loss_b)
    if a.shape != b.shape or a.ndim != 1:
        raise TaskregError(f"per-image losses must be two vectors of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.5
    return float(((a < b).sum() + 0.5 * (a == b).sum()) / a.size)


def beam_candidates(
    first_order_scores: Mapping[str, float],
    *,
    beam: int = 5,
    max_order: int = 3,
    higher_is_better: bool = False,
) -> list[tuple[str, ...]]:
    """Higher-order source sets of one target by the paper's beam search (Sec. 3.2).

    first_order_scores : source -> first-order score for this target; by default a loss (lower is
        better); pass ``higher_is_better=True`` for win rates or affinities
    Returns, for k = 2..max_order: all k-combinations of the ``beam`` best sources if k <= beam,
    else the single set of the k best sources (beam of size 1). Each tuple is sorted by name
    (canonical, matching :attr:`TransferJob.key`); k ascending, then combinations in rank order.
    Ties in score are broken by source name.
    """
    if beam < 1:
        raise TaskregError(f"beam must be >= 1, got {beam}")
    if max_order < 1:
        raise TaskregError(f"max_order must be >= 1, got {max_order}")
    for name, s in first_order_scores.items():
        if not np.isfinite(s):
            raise TaskregError(f"first-order score of source {name!r} is not finite: {s}")
    sign = -1.0 if higher_is_better else 1.0
    ranked = sorted(first_order_scores, key=lambda s: (sign * float(first_order_scores[s]), s))
    top = ranked[:beam]
    out: list[tuple[str, ...]] = []
    for k in range(2, max_order + 1):
        if k > len(ranked):
            break
        combos = itertools.combinations(top, k) if k <= beam else [tuple(ranked[:k])]
        out.extend(tuple(sorted(c)) for c in combos)
    return out


# ----------------------------------------------------------------------------------------------------
# Jobs (picklable, resumable)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferJob:
    """One unit of work for an executor.

    kind 'self': train the task network of ``target`` (sources ignored, set to (target,)).
    kind 'scratch': the from-pixels baseline on the little subset (sources = ()).
    kind 'transfer': readout from ``sources`` (stored sorted) to ``target``; ``feature_paths`` are
        ``.npy`` files aligned with ``sources`` (each (N, C, h, w) or (len(feature_indices), C, h, w)).
    dictionary : how a worker process obtains the dictionary.
    tag : optional extra key component (e.g. a dictionary fingerprint).
    ``key`` depends on kind, sources, target, hyper-parameters, seed and tag — not on paths.
    """

    sources: tuple[str, ...]
    target: str
    kind: str = "transfer"
    train_fraction: float = TRAIN_FRACTION
    epochs: int = TRANSFER_EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LR
    seed: int = 0
    tag: str = ""
    dictionary: DictionaryRef = field(default_factory=DictionaryRef, compare=False)
    feature_paths: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise TaskregError(f"job kind must be one of {JOB_KINDS}, got {self.kind!r}")
        sources = tuple(self.sources)
        paths = tuple(self.feature_paths)
        if self.kind == "self":
            sources, paths = (self.target,), ()
            object.__setattr__(self, "train_fraction", 1.0)
        elif self.kind == "scratch":
            sources, paths = (), ()
        else:
            if not sources:
                raise TaskregError(f"transfer job to {self.target!r} has no sources")
            if len(set(sources)) != len(sources):
                raise TaskregError(f"transfer job to {self.target!r} repeats a source: {sources}")
            if paths and len(paths) != len(sources):
                raise TaskregError(f"transfer job: {len(paths)} feature paths for {len(sources)} sources")
            order = sorted(range(len(sources)), key=lambda i: sources[i])
            sources = tuple(sources[i] for i in order)
            paths = tuple(paths[i] for i in order) if paths else ()
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "feature_paths", paths)

    @property
    def order(self) -> int:
        return len(self.sources) if self.kind != "scratch" else 0

    @property
    def key(self) -> str:
        """Stable string identifying the job's result, e.g.
        ``transfer:edges2d+keypoints2d->disparity|f=0.125,e=30,b=32,lr=0.002,s=0``."""
        src = "+".join(self.sources)
        base = f"{self.kind}:{src}->{self.target}|f={self.train_fraction:.6g},e={self.epochs},"
        base += f"b={self.batch_size},lr={self.lr:.6g},s={self.seed}"
        return f"{base},t={self.tag}" if self.tag else base


def run_job(job: TransferJob) -> TaskNetwork | TransferResult:
    """Execute ``job`` (in any process): a :class:`TaskNetwork` for 'self', else a :class:`TransferResult`.

    Top-level and picklable, for executors. Features are memory-mapped from ``job.feature_paths``.
    """
    d = job.dictionary.load()
    common: TrainOptions = {"epochs": job.epochs, "batch_size": job.batch_size, "lr": job.lr, "seed": job.seed}
    if job.kind == "self":
        return train_task_network(d, job.target, **common)
    if job.kind == "scratch":
        return train_scratch(d, job.target, train_fraction=job.train_fraction, **common)
    if not job.feature_paths:
        raise TaskregError(f"transfer job {job.key} has no feature_paths")
    feats = []
    for p in job.feature_paths:
        try:
            feats.append(np.load(p, mmap_mode="r"))
        except (OSError, ValueError) as exc:
            raise TaskregError(f"cannot read feature cache {p}: {exc}") from exc
    return train_transfer(feats, d, job.target, sources=job.sources, train_fraction=job.train_fraction, **common)


def plan_self(
    dictionary: Dictionary,
    *,
    ref: DictionaryRef | None = None,
    epochs: int = SELF_EPOCHS,
    **job_kwargs: object,
) -> list[TransferJob]:
    """One 'self' job (task-specific network) per trainable task ('random' is never trained)."""
    extra: dict = dict(job_kwargs)
    if ref is not None:
        extra["dictionary"] = ref
    return [
        TransferJob((name,), name, "self", epochs=epochs, **extra)
        for name, spec in dictionary.tasks.items()
        if spec.trainable
    ]


def plan_first_order(
    dictionary: Dictionary,
    feature_path: Callable[[str, str], str],
    *,
    ref: DictionaryRef | None = None,
    **job_kwargs: object,
) -> list[TransferJob]:
    """All first-order transfer jobs plus one scratch job per target.

    feature_path : (source, input_key) -> path of that source's feature cache for that input key
    ref : the DictionaryRef put into every job; job_kwargs : other :class:`TransferJob` fields.
    Sources are all tasks except the target itself.
    """
    extra: dict = dict(job_kwargs)
    if ref is not None:
        extra["dictionary"] = ref
    jobs: list[TransferJob] = []
    for target in dictionary.target_names:
        key = dictionary.task(target).input_key
        for source in dictionary.source_names:
            if source == target:
                continue
            jobs.append(TransferJob((source,), target, "transfer", feature_paths=(feature_path(source, key),), **extra))
        jobs.append(TransferJob((), target, "scratch", **extra))
    return jobs


def plan_higher_order(
    dictionary: Dictionary,
    first_order: Sequence[TransferResult],
    feature_path: Callable[[str, str], str],
    *,
    beam: int = 5,
    max_order: int = 3,
    ref: DictionaryRef | None = None,
    **job_kwargs: object,
) -> list[TransferJob]:
    """Higher-order transfer jobs from first-order results (ranked by mean test loss per target)."""
    extra: dict = dict(job_kwargs)
    if ref is not None:
        extra["dictionary"] = ref
    scores: dict[str, dict[str, float]] = {}
    for r in first_order:
        if r.kind == "transfer" and r.order == 1:
            scores.setdefault(r.target, {})[r.sources[0]] = r.mean_loss
    jobs: list[TransferJob] = []
    for target in dictionary.target_names:
        if target not in scores:
            continue
        key = dictionary.task(target).input_key
        for combo in beam_candidates(scores[target], beam=beam, max_order=max_order):
            paths = tuple(feature_path(s, key) for s in combo)
            jobs.append(TransferJob(combo, target, "transfer", feature_paths=paths, **extra))
    return jobs


__all__ = [
    "TaskNetwork",
    "TransferJob",
    "TrainOptions",
    "TransferResult",
    "beam_candidates",
    "encode",
    "encode_for_transfers",
    "feature_indices",
    "plan_first_order",
    "plan_higher_order",
    "plan_self",
    "run_job",
    "source_encoder",
    "train_scratch",
    "train_task_network",
    "train_transfer",
    "transfer_train_indices",
    "win_rate",
]
