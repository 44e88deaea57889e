"""Experts: fine-tune feature extractors, extract frozen features, and score them with a linear probe.

An *expert* is a feature extractor (a network from :func:`taskreg.embedders.probes.create_model`, with
``features(x) -> (N, D)``, an ``fc`` head and ``feature_dim``) fine-tuned on one labelled task. Model
selection (Task2Vec, Achille et al. 2019, Sect. 4.2) is scored by training a *linear classifier on top
of the frozen expert* for the query task; :func:`linear_probe_error` is that fixed protocol, and the
protocol's parameters (:class:`LinearProbeProtocol`) are recorded with every result.

Images enter as float32 (N, C, H, W) in [0, 1]; :func:`taskreg.embedders.probes.adapt_inputs` resizes,
turns grey into 3 channels and normalises them for the network's :class:`ProbeSpec`, one batch at a time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskreg.embedders.probes import ProbeNet, ProbeSpec, adapt_inputs, to_device
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.trainers.batchnorm import batch_slices, recalibrate_batchnorm

DTYPE_NP = np.float32  # precision of the linear probe (features are standardised first)


# --------------------------------------------------------------------------------------------- checks
def _check_images(x: np.ndarray, name: str = "x") -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise TaskregError(f"{name} must be a (N, C, H, W) array of images, got shape {shape}")
    if x.shape[0] == 0:
        raise TaskregError(f"{name} is empty (0 images)")
    if x.shape[1] not in (1, 3):
        raise TaskregError(f"{name} must have 1 or 3 channels, got {x.shape[1]} (shape {x.shape})")
    if not np.isfinite(x).all():
        raise TaskregError(f"{name} contains NaN or infinite values")


def _check_labels(y: np.ndarray, n: int, name: str = "y") -> None:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise TaskregError(f"{name} must have shape ({n},) to match the data, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TaskregError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise TaskregError(f"{name} must hold labels 0..K-1, found {int(y.min())}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise TaskregError(f"{name} must be > 0, got {value}")


def _batches(x: np.ndarray, spec: ProbeSpec, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Yield adapted (B, spec.in_chans, S, S) tensors on ``device`` for consecutive slices of ``x`` (in order;
    a trailing single image joins the previous batch, see :func:`~taskreg.trainers.batchnorm.batch_slices`)."""
    for part in batch_slices(x.shape[0], batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[part], dtype=np.float32))
        yield adapt_inputs(xb, spec).to(device)


# ----------------------------------------------------------------------------------------- fine-tune
def _random_shift(xb: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (reflect padding, then a random crop)."""
    if pad == 0:
        return xb
    n, _, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


class FinetuneStart(NamedTuple):
    """What both fine-tuners start from (:func:`prepare_finetune`)."""

    net: ProbeNet  # a deep copy of the input network with a fresh, seeded ``fc`` head; eval mode, on ``device``
    y: np.ndarray  # the labels as an array
    device: torch.device


def prepare_finetune(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
                     weight_decay: float, seed: int, device: str | torch.device) -> FinetuneStart:
    """The shared preamble of :func:`finetune_expert` and :func:`~taskreg.trainers.partial_finetune.
    finetune_last_blocks`: validate the data and the SGD schedule (one-line TaskregErrors), deep-copy ``model`` and
    give the copy a new ``nn.Linear(feature_dim, K)`` head, ``K = y.max() + 1``, initialised from ``seed`` (the
    global torch RNG is left as it was). The input network is never modified."""
    _check_images(x)
    y = np.asarray(y)
    _check_labels(y, x.shape[0])
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TaskregError(f"{name} must be an integer, got {value!r}")
    _check_positive(epochs=epochs, batch_size=batch_size, lr=lr)
    if not np.isfinite(lr):
        raise TaskregError(f"lr must be finite, got {lr}")
    if not (weight_decay >= 0 and np.isfinite(weight_decay)):
        raise TaskregError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if np.unique(y).size < 2:
        raise TaskregError(f"fine-tuning needs at least 2 classes, y has {np.unique(y).size}")
    if not isinstance(model, ProbeNet):
        raise TaskregError(f"{type(model).__name__} is not a probe network (features + fc); use probes.create_model")
    device = to_device(device)

    net = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net.fc = nn.Linear(int(net.feature_dim), int(y.max()) + 1)
    return FinetuneStart(net.to(device).eval(), y, device)


def finetune_expert(
    model: nn.Module,
    spec: ProbeSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    augment: bool = True,
    recalibrate_bn: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress = None,
) -> nn.Module:
    """Fine-tune a copy of ``model`` (all layers) with a new head on a labelled dataset.

    The input network is never modified: it is deep-copied, its ``fc`` head is replaced by a fresh
    ``nn.Linear(feature_dim, K)`` with ``K = y.max() + 1``, and everything is trained with SGD
    (momentum 0.9, Nesterov, cosine learning-rate decay to 0, cross-entropy). Light augmentation
    (``augment=True``): each image is translated by up to 1/8 of its side (reflect padding); no flips,
    so digits and text stay readable. Deterministic given ``seed`` on a given device: the head
    initialisation, the shuffling and the augmentation all draw from seeded generators.

    Parameters
    ----------
    model : a :class:`~taskreg.embedders.probes.ProbeNet` (``features``, ``fc``, ``feature_dim``; e.g. the
        registry's probe network for ``--from-probe``, or a fresh ``create_model(arch)``).
    spec : ProbeSpec of the network (input size, channels, normalisation).
    x : (N, C, H, W) float32 in [0, 1].
    y : (N,) integer labels 0..K-1, at least 2 distinct classes.
    epochs, batch_size, lr, weight_decay : SGD schedule.
    recalibrate_bn : after training, recompute every BatchNorm layer's running statistics over the training images
        (not augmented, in order, ``batch_size`` at a time) with the final weights (:func:`~taskreg.trainers.
        batchnorm.recalibrate_batchnorm`; one extra forward pass, no gradients). The running averages of the
        training steps lag behind the weights: an ImageNet Lite0 fine-tuned on MNIST digits scores far less in eval
        mode without it (benchmarks/RESULTS.md, finetune_bench).
    progress : optional callback called with (optimisation steps done, total steps).

    Returns
    -------
    The trained copy, in eval mode, on ``device``, with its ``fc`` head for the K training classes.
    """
    expert, y, device = prepare_finetune(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                                         weight_decay=weight_decay, seed=seed, device=device)
    expert.train()

    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps_per_epoch = -(-n // batch_size)
    total = epochs * steps_per_epoch
    optimiser = torch.optim.SGD(
        expert.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total)
    labels = torch.from_numpy(y.astype(np.int64))
    pad = max(1, spec.input_size // 8) if augment else 0

    done = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            # a BatchNorm layer cannot train on a single sample: fold a trailing singleton into the batch
            if idx.numel() == 1 and n > 1:
                idx = torch.cat([idx, order[:1]])
            xb = torch.from_numpy(x[idx.numpy()].astype(np.float32, copy=False))
            xb = _random_shift(adapt_inputs(xb, spec), pad, gen).to(device)
            logits = expert.fc(expert.features(xb))
            loss = F.cross_entropy(logits, labels[idx].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            done += 1
            if progress is not None:
                progress(done, total)
    if recalibrate_bn:
        recalibrate_batchnorm(expert, _batches(x, spec, batch_size, device))
    return expert.eval()


# ------------------------------------------------------------------------------------------ features
def _forward_in_batches(
    head: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    spec: ProbeSpec,
    x: np.ndarray,
    batch_size: int,
    device: str | torch.device,
) -> np.ndarray:
    """``head(xb)`` of ``model`` (moved to ``device``, eval mode) over ``x`` in batches: (N, ...) float32 on the CPU."""
    _check_images(x)
    _check_positive(batch_size=batch_size)
    device = to_device(device)
    model.to(device).eval()
    chunks = [head(xb).float().cpu().numpy() for xb in _batches(x, spec, batch_size, device)]
    return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)


@torch.no_grad()
def extract_features(model: nn.Module, spec: ProbeSpec, x: np.ndarray, *, batch_size: int = 256,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Frozen penultimate features ``model.features(x)``: (N, C, H, W) in [0, 1] -> (N, D) float32.

    The model is moved to ``device`` and put in eval mode (BatchNorm uses running statistics);
    gradients are off.
    """
    def features(xb: torch.Tensor) -> torch.Tensor:
        return model.features(xb).flatten(1)  # type: ignore[operator]

    return _forward_in_batches(features, model, spec, x, batch_size, device)


@torch.no_grad()
def expert_logits(model: nn.Module, spec: ProbeSpec, x: np.ndarray, *, batch_size: int = 256,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """The expert's own head on new data: (N, C, H, W) -> logits (N, K_source) float32.

    These are the source-label predictions LEEP and NCE need (softmax them for LEEP, argmax for NCE;
    see :mod:`taskreg.selection.transferability`).
    """
    def logits(xb: torch.Tensor) -> torch.Tensor:
        return model.fc(model.features(xb).flatten(1))  # type: ignore[operator]

    return _forward_in_batches(logits, model, spec, x, batch_size, device)


@torch.no_grad()
def head_logits(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """The expert's own head on features it computed (``extract_features``): (N, D) -> (N, K_source) float32.

    Equal to :func:`expert_logits` on the images (the head is ``fc(features(x).flatten(1))``), without a second
    pass of the network; runs on the CPU (one matrix product).
    """
    head = model.fc
    if not isinstance(head, nn.Module):
        raise TaskregError(f"{type(model).__name__}.fc is not a module")
    fc = copy.deepcopy(head).cpu().eval()  # a copy: moving the expert's own head would move the expert
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    return fc(feats).numpy().astype(np.float32, copy=False)


def head_accuracy(model: nn.Module, spec: ProbeSpec, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256,
                  device: str | torch.device = "cpu") -> float:
    """Accuracy in [0, 1] of the expert's own classifier on labelled images (N, C, H, W) and labels (N,) of its
    training classes: the share of ``argmax expert_logits == y``. N >= 1."""
    _check_images(x)
    _check_labels(y, x.shape[0])
    logits = expert_logits(model, spec, x, batch_size=batch_size, device=device)
    if int(y.max()) >= logits.shape[1]:
        raise TaskregError(f"labels reach {int(y.max())} but the expert's head has {logits.shape[1]} classes")
    return float(np.mean(logits.argmax(axis=1) == y))


# -------------------------------------------------------------------------------------- linear probe
@dataclass(frozen=True)
class LinearProbeProtocol:
    """The fixed protocol that turns frozen features into a test error (recorded with every result).

    Multinomial logistic regression on features standardised with the training split's mean and
    standard deviation, trained full-batch with L-BFGS (strong-Wolfe line search) in float32.

    test_fraction : share of each class held out for the test error (stratified, seeded split).
    epochs : maximum number of L-BFGS iterations (full-batch, so one iteration = one epoch).
    lr : L-BFGS step length (1.0 is the natural value with a line search).
    weight_decay : L2 penalty ``weight_decay / 2 * ||W||^2`` on the weights (not the bias), added to
        the mean cross-entropy.
    seed : seed of the train/test split (the optimisation itself is deterministic: zero init).
    """

    test_fraction: float = 0.25
    epochs: int = 100
    lr: float = 1.0
    weight_decay: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise TaskregError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _check_positive(epochs=self.epochs, lr=self.lr)
        if self.weight_decay < 0:
            raise TaskregError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def as_params(self) -> dict[str, float | int | str]:
        """Flat parameters for logging next to a result (``probe.*`` keys)."""
        params: dict[str, float | int | str] = {"probe.method": "multinomial-logreg-lbfgs"}
        params.update({f"probe.{k}": v for k, v in asdict(self).items()})
        return params


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`linear_probe_error`: errors are fractions in [0, 1]."""

    test_error: float
    train_error: float
    n_train: int
    n_test: int
    seconds: float


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices 0..N-1: returns (train_idx, test_idx), both sorted.

    Each class with n_c >= 2 samples puts ``round(test_fraction * n_c)`` of them (at least 1, at most
    n_c - 1) in the test set; classes with a single sample go to the training set.
    """
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < 2:
            continue
        n_test = int(np.clip(round(test_fraction * members.size), 1, members.size - 1))
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(y.shape[0], dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def linear_probe_error(
    features: np.ndarray, y: np.ndarray, protocol: LinearProbeProtocol | None = None
) -> ProbeResult:
    """Test error of a linear classifier on frozen features, under a fixed :class:`LinearProbeProtocol`.

    Parameters
    ----------
    features : (N, D) float, finite.
    y : (N,) integer labels (any integers; they are mapped to 0..K-1); at least 2 classes.
    protocol : defaults to ``LinearProbeProtocol()``.

    Returns
    -------
    ProbeResult with the held-out and training misclassification rates.
    """
    protocol = protocol or LinearProbeProtocol()
    started = time.perf_counter()
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise TaskregError(f"features must be a non-empty (N, D) array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise TaskregError("features contain NaN or infinite values")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != features.shape[0]:
        raise TaskregError(f"y must have shape ({features.shape[0]},) to match features, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TaskregError(f"y must hold integer class labels, got dtype {y.dtype}")
    classes, codes = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise TaskregError(f"a linear probe needs at least 2 classes, y has {classes.size}")
    train_idx, test_idx = stratified_split(codes, protocol.test_fraction, protocol.seed)
    if test_idx.size == 0:
        raise TaskregError("too few samples for a test split: every class has a single sample")

    x = torch.from_numpy(features.astype(DTYPE_NP))
    target = torch.from_numpy(codes.astype(np.int64))
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant features stay constant (zero)
    x = (x - mean) / std
    x_train, y_train = x[train_idx], target[train_idx]

    weight = torch.zeros(x.shape[1], classes.size, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes.size, dtype=x.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias],
        lr=protocol.lr,
        max_iter=protocol.epochs,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, y_train)
        loss = loss + 0.5 * protocol.weight_decay * (weight * weight).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        predicted = (x @ weight + bias).argmax(1)
        wrong = (predicted != target).numpy()
    return ProbeResult(
        test_error=float(wrong[test_idx].mean()),
        train_error=float(wrong[train_idx].mean()),
        n_train=int(train_idx.size),
        n_test=int(test_idx.size),
        seconds=time.perf_counter() - started,
    )
