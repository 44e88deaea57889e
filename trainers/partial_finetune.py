"""Bounded-cost fine-tuning: train only the last blocks of a probe network, on cached activations.

Full fine-tuning of an ImageNet EfficientNet-Lite on 2 CPU cores costs a forward and a backward pass through the
whole network for every image of every epoch. :func:`finetune_last_blocks` instead splits a copy of the network
into a frozen *prefix* (the stem and all blocks but the last ``train_blocks``) and a trainable *suffix* (the last
``train_blocks`` blocks, the head and a new ``fc`` for the task's K classes), runs the prefix ONCE over all images
(eval mode, no gradients) to cache its output, then trains only the suffix on that cached tensor. The cost is one
prefix forward pass plus ``epochs`` passes of the (small) suffix; ``train_blocks=0`` is a linear probe (a new
``fc`` on the frozen ``features``). The returned network is the whole copy (same class and ``state_dict`` keys as
the input, so it is registered under the input's architecture), its prefix parameters and buffers bit-identical
to the input's.

Consequences of caching, on purpose: no input augmentation (the prefix sees each image once), and the prefix's
BatchNorm layers keep their pretrained statistics. The suffix trains in train mode (batch statistics); afterwards
its BatchNorm running statistics are recomputed exactly on the cached training activations with the final weights
(``recalibrate_bn``, one extra suffix forward pass; :func:`recalibrate_batchnorm`): BatchNorm momentum 0.01, as in
EfficientNet-Lite, would otherwise leave them mostly at their ImageNet values after a few hundred steps (measured in
benchmarks/finetune_bench.py: -3 points of held-out accuracy without it).

Supported architectures (``SPLITTERS``, keyed by class; a subclass uses its nearest registered base):
EfficientNet-Lite (blocks = its MBConv blocks; head = 1x1 conv head, BatchNorm, ReLU6, pooling), the ImageNet
ResNets and the CIFAR ResNets (blocks = the residual blocks of all stages in order, so ``train_blocks=2`` of a
ResNet-18 is its last stage; head = pooling). Any other :class:`~taskreg.embedders.probes.ProbeNet` supports
``train_blocks=0`` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskreg.embedders.efficientnet_lite import EfficientNetLite
from taskreg.embedders.probes import CifarResNet, ProbeNet, ProbeSpec, ResNet, adapt_inputs
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.trainers.batchnorm import batch_norms, batch_slices, recalibrate_batchnorm
from taskreg.trainers.experts import prepare_finetune

__all__ = ["SPLITTERS", "FinetuneCost", "NetworkParts", "finetune_last_blocks", "network_parts",
           "recalibrate_batchnorm", "split_network"]


@dataclass(frozen=True)
class FinetuneCost:
    """What :func:`finetune_last_blocks` spent: wall seconds of the prefix pass (image adaptation included) and of
    the suffix training (BatchNorm recalibration included), trainable vs all parameters of the returned network
    (the new head counted in both), and the size of the cached activations in bytes."""

    seconds_cache: float
    seconds_train: float
    n_params_trained: int
    n_params_total: int
    cache_bytes: int


@dataclass(frozen=True)
class NetworkParts:
    """A network as a chain ``head(blocks[-1](...blocks[0](stem(x))))`` = ``features(x)``, then ``fc``.

    The modules share their parameters with the network they were taken from (nothing is copied)."""

    stem: nn.Module
    blocks: tuple[nn.Module, ...]
    head: nn.Module


class _Fn(nn.Module):
    """A parameter-free step of a chain (e.g. pooling), or one that applies registered submodules."""

    def __init__(self, fn: Callable[..., torch.Tensor], **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.children())


class _Features(nn.Module):
    """``net.features`` of a network this module does not own (holds no parameters; ``net``'s mode is its own)."""

    def __init__(self, net: ProbeNet) -> None:
        super().__init__()
        self._net = (net,)  # a tuple: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net[0].features(x)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _lite_stem(x: torch.Tensor, conv: Any, bn: nn.Module) -> torch.Tensor:
    return F.relu6(bn(conv(conv.padded(x))))


def _lite_head(x: torch.Tensor, conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    return _pool(F.relu6(bn(conv(x))))


def _lite_parts(net: nn.Module) -> NetworkParts:
    """EfficientNet-Lite: as :meth:`EfficientNetLite.features`, step by step."""
    assert isinstance(net, EfficientNetLite)
    return NetworkParts(_Fn(_lite_stem, conv=net._conv_stem, bn=net._bn0), tuple(net._blocks),
                        _Fn(_lite_head, conv=net._conv_head, bn=net._bn1))


def _resnet_stem(x: torch.Tensor, conv: nn.Module, bn: nn.Module, *pool: nn.Module) -> torch.Tensor:
    x = F.relu(bn(conv(x)))
    return pool[0](x) if pool else x


def _resnet_parts(net: nn.Module) -> NetworkParts:
    """ImageNet ResNet (stem with max-pool, four stages) and CIFAR ResNet (no max-pool, three stages)."""
    assert isinstance(net, ResNet | CifarResNet)
    stages = [net.layer1, net.layer2, net.layer3] + ([net.layer4] if isinstance(net, ResNet) else [])
    stem_modules: dict[str, nn.Module] = {"conv": net.conv1, "bn": net.bn1}
    if isinstance(net, ResNet):
        stem_modules["maxpool"] = net.maxpool
    return NetworkParts(_Fn(_resnet_stem, **stem_modules), tuple(b for s in stages for b in s), _Fn(_pool))


#: architecture family -> function giving its parts; extend with a new entry for a new family
SPLITTERS: dict[type[nn.Module], Callable[[nn.Module], NetworkParts]] = {
    EfficientNetLite: _lite_parts,
    ResNet: _resnet_parts,
    CifarResNet: _resnet_parts,
}


def network_parts(model: nn.Module) -> NetworkParts | None:
    """The parts of ``model`` if its class (or a base class) is in :data:`SPLITTERS`, else None."""
    for cls in type(model).__mro__:
        if cls in SPLITTERS:
            return SPLITTERS[cls](model)
    return None


def _check_train_blocks(model: nn.Module, train_blocks: int) -> NetworkParts | None:
    if isinstance(train_blocks, bool) or not isinstance(train_blocks, int | np.integer):
        raise TaskregError(f"train_blocks must be an integer, got {train_blocks!r}")
    parts = network_parts(model)
    if parts is None:
        if train_blocks != 0:
            known = ", ".join(sorted(c.__name__ for c in SPLITTERS))
            raise TaskregError(f"cannot fine-tune the last blocks of {type(model).__name__} (supported: {known}); "
                               "train_blocks=0 (a new linear head) works for any probe network")
    elif not 0 <= train_blocks <= len(parts.blocks):
        raise TaskregError(f"train_blocks must lie in 0..{len(parts.blocks)} for this "
                           f"{type(model).__name__} ({len(parts.blocks)} blocks), got {train_blocks}")
    return parts


def split_network(model: nn.Module, train_blocks: int) -> tuple[nn.Module, nn.Module]:
    """(prefix, suffix) of ``model``: ``suffix(prefix(x)) == model(x)`` (same operations, same order).

    ``train_blocks`` >= 1: the suffix is the last ``train_blocks`` blocks, the head and ``fc``; ``train_blocks=0``:
    the prefix is ``model.features`` and the suffix ``model.fc``. Both share their parameters with ``model``.
    Raises TaskregError for an unsupported architecture or ``train_blocks`` out of range.
    """
    if not isinstance(model, ProbeNet):
        raise TaskregError(f"{type(model).__name__} is not a probe network (features + fc); use probes.create_model")
    parts = _check_train_blocks(model, train_blocks)
    if parts is None:  # any other probe network, train_blocks=0
        return _Features(model), model.fc
    cut = len(parts.blocks) - int(train_blocks)
    if cut == len(parts.blocks):
        return nn.Sequential(parts.stem, *parts.blocks, parts.head), model.fc
    return (nn.Sequential(parts.stem, *parts.blocks[:cut]),
            nn.Sequential(*parts.blocks[cut:], parts.head, model.fc))


def finetune_last_blocks(
    model: nn.Module,
    spec: ProbeSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    train_blocks: int = 2,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    recalibrate_bn: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress = None,
) -> tuple[nn.Module, FinetuneCost]:
    """Fine-tune the last ``train_blocks`` blocks of a copy of ``model`` (with a new head) on cached activations.

    Parameters
    ----------
    model : a :class:`~taskreg.embedders.probes.ProbeNet` (``features`` then ``fc``); never modified.
    spec : its ProbeSpec (input size, channels, normalisation), applied with ``adapt_inputs``.
    x : (N, C, H, W) float32 in [0, 1], N >= 2.
    y : (N,) integer labels 0..K-1 with at least 2 distinct classes; the new head has ``K = y.max() + 1`` outputs.
    train_blocks : how many of the last blocks train (0: only the new linear head); see :func:`split_network`.
    epochs, batch_size, lr, weight_decay : SGD (momentum 0.9, Nesterov), cosine decay to 0 over all steps,
        cross-entropy.
    recalibrate_bn : recompute the suffix's BatchNorm running statistics on the training activations at the end.
    seed : seeds the head initialisation and the shuffling: equal inputs and seed give equal weights (same device).
    progress : optional callback (done, total) over prefix batches, optimisation steps and recalibration batches.

    Returns
    -------
    (network, cost): the trained copy (eval mode, on ``device``, head for K classes) and a :class:`FinetuneCost`.
    """
    net, y, device = prepare_finetune(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                                      weight_decay=weight_decay, seed=seed, device=device)
    prefix, suffix = split_network(net, train_blocks)  # refuses an unsupported network or train_blocks out of range
    n = x.shape[0]

    n_batches = -(-n // batch_size)
    steps = int(epochs) * n_batches
    recalibrate = recalibrate_bn and bool(batch_norms(suffix))
    recal_slices = batch_slices(n, batch_size)
    total = n_batches + steps + (len(recal_slices) if recalibrate else 0)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    started = time.perf_counter()
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
            chunks.append(prefix(adapt_inputs(xb, spec).to(device)))
            tick()
    cache = torch.cat(chunks)
    del chunks
    seconds_cache = time.perf_counter() - started

    started = time.perf_counter()
    labels = torch.from_numpy(y.astype(np.int64)).to(device)
    params = list(suffix.parameters())
    optimiser = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    suffix.train()
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() == 1:  # BatchNorm cannot train on one sample: fold a trailing singleton into the batch
                idx = torch.cat([idx, order[:1]])
            idx = idx.to(device)
            loss = F.cross_entropy(suffix(cache[idx]), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            tick()
    if recalibrate:
        recalibrate_batchnorm(suffix, (cache[part] for part in recal_slices))
        done += len(recal_slices) - 1
        tick()
    net.eval()
    seconds_train = time.perf_counter() - started

    cost = FinetuneCost(
        seconds_cache=seconds_cache,
        seconds_train=seconds_train,
        n_params_trained=sum(p.numel() for p in params),
        n_params_total=sum(p.numel() for p in net.parameters()),
        cache_bytes=cache.element_size() * cache.numel(),
    )
    return net, cost
