"""Small networks for the Taskonomy pipeline (CPU-sized).

* :class:`Encoder` — the one architecture shared by every task (Taskonomy Sec. 3.1: "homogeneous
  across all tasks"). (N, 3, H, W) in [0, 1] -> representation (N, ``rep_channels``, H/4, W/4).
  With the defaults a 32x32 crop becomes 16 x 8 x 8 = 1024 numbers (a 3:1 bottleneck, like the
  paper's 16x16x8 code of a 256x256 image): the representation must be task specific.
* :func:`make_decoder` — task-dependent head reading a representation: an upsampling conv decoder
  for pixel tasks, flatten + MLP for classification and regression (flatten, not global pooling,
  so spatial tasks such as rotation and jigsaw stay solvable).
* :class:`Readout` — the transfer function's shallow part (Sec. 3.2): two conv layers on the
  channel-concatenated frozen source representations, giving a tensor of the encoder's output
  shape that a fresh target decoder consumes.
* :func:`random_projection_encoder` — the untrained, seeded encoder of the 'random' source.
* :class:`EncoderProbe` — an encoder as a registered probe architecture (``taskonomy_encoder``), so task
  networks can be registered as experts.
"""

from __future__ import annotations

import torch
from torch import nn

from taskreg.embedders.probes import ProbeNet, ProbeSpec, register_model, register_spec
from taskreg.errors import TaskregError
from taskreg.trainers.taskonomy_dictionary import TaskSpec

REP_CHANNELS = 16
WIDTH = 32


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Encoder(nn.Module):
    """Task encoder. x : (N, 3, H, W) float32 in [0, 1], H and W multiples of 4 -> (N, rep, H/4, W/4).

    Space-to-depth (2x2 pixels -> 12 channels) first, then three conv blocks (one strided) and a
    1x1 projection to ``rep_channels``. Starting with space-to-depth instead of a full-resolution
    3-channel conv makes training ~2.5x cheaper on CPU for the same receptive field.
    """

    def __init__(self, rep_channels: int = REP_CHANNELS, width: int = WIDTH) -> None:
        super().__init__()
        self.rep_channels = rep_channels
        self.body = nn.Sequential(
            nn.PixelUnshuffle(2),
            *_block(12, width),
            *_block(width, width, stride=2),
            *_block(width, width),
            nn.Conv2d(width, rep_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - 0.5)


class PixelDecoder(nn.Module):
    """(N, rep, h, w) -> (N, out_channels, 4h, 4w): conv, 2x upsampling, conv, then depth-to-space 2x."""

    def __init__(self, out_channels: int, rep_channels: int = REP_CHANNELS, width: int = WIDTH) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(rep_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 4 * out_channels, 1),
            nn.PixelShuffle(2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class VectorDecoder(nn.Module):
    """(N, rep, h, w) -> (N, out_features): conv, 2x2 average pooling, linear (logits or values).

    Pooling to a 2x2 grid (not to 1x1) keeps the coarse layout that rotation and jigsaw need,
    with few parameters, so the decoder does not overfit the small transfer training sets.
    """

    def __init__(self, out_features: int, rep_channels: int = REP_CHANNELS, width: int = WIDTH) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(rep_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * width, out_features),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


def make_decoder(task: TaskSpec, rep_shape: tuple[int, int, int]) -> nn.Module:
    """The decoder of ``task`` for representations of shape ``rep_shape`` = (C, h, w)."""
    if task.kind == "pixel":
        return PixelDecoder(task.out_channels, rep_channels=rep_shape[0])
    if task.kind in ("classification", "regression"):
        return VectorDecoder(task.out_channels, rep_channels=rep_shape[0])
    raise TaskregError(f"task {task.name!r} of kind {task.kind!r} has no decoder")


class Readout(nn.Module):
    """Transfer readout: (N, k * rep, h, w) concatenated frozen representations -> (N, rep, h, w)."""

    def __init__(self, n_sources: int, rep_channels: int = REP_CHANNELS, width: int = WIDTH) -> None:
        super().__init__()
        if n_sources < 1:
            raise TaskregError(f"a readout needs at least one source, got {n_sources}")
        self.body = nn.Sequential(
            nn.Conv2d(n_sources * rep_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, rep_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class TaskModel(nn.Module):
    """Encoder followed by a decoder: (N, 3, H, W) -> the task's prediction."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class TransferModel(nn.Module):
    """Readout followed by a target decoder: (N, k * rep, h, w) frozen features -> prediction."""

    def __init__(self, readout: Readout, decoder: nn.Module) -> None:
        super().__init__()
        self.readout = readout
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.readout(z))


def rep_shape_for(image_hw: tuple[int, int], rep_channels: int = REP_CHANNELS) -> tuple[int, int, int]:
    """Representation shape (C, h, w) of an (H, W) image."""
    h, w = image_hw
    if h % 4 or w % 4:
        raise TaskregError(f"image height and width must be multiples of 4, got {h}x{w}")
    return rep_channels, h // 4, w // 4


def random_projection_encoder(seed: int, rep_channels: int = REP_CHANNELS) -> Encoder:
    """An untrained encoder with seeded random (PyTorch default) weights, frozen and in eval mode.

    Its batch norms are at their initial statistics (identity), so it is a fixed random
    conv-ReLU projection of the image.
    """
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        enc = Encoder(rep_channels=rep_channels)
    finally:
        torch.random.set_rng_state(gen_state)
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


__all__ = [
    "REP_CHANNELS",
    "Encoder",
    "PixelDecoder",
    "Readout",
    "TaskModel",
    "TransferModel",
    "VectorDecoder",
    "make_decoder",
    "random_projection_encoder",
    "rep_shape_for",
]


# ----------------------------------------------------------------------------------------------------
# A task network's encoder as a feature extractor (an "expert" that `taskreg select` can rank)
# ----------------------------------------------------------------------------------------------------


class EncoderProbe(ProbeNet):
    """The Taskonomy :class:`Encoder` wrapped as a probe architecture (``taskonomy_encoder``).

    ``features(x)`` = the encoder's representation, global-average-pooled: (N, 3, H, W) in [0, 1]
    -> (N, rep_channels). The encoder subtracts 0.5 itself, so its :class:`ProbeSpec` uses mean 0, std 1.
    """

    def __init__(self, num_classes: int = 1, rep_channels: int = REP_CHANNELS) -> None:
        super().__init__()
        self.encoder = Encoder(rep_channels=rep_channels)
        self.feature_dim = rep_channels
        self.fc = nn.Linear(rep_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))


@register_model
def taskonomy_encoder(num_classes: int = 1) -> ProbeNet:
    return EncoderProbe(num_classes=num_classes)


register_spec(ProbeSpec(arch="taskonomy_encoder", input_size=32, in_chans=3, mean=(0.0, 0.0, 0.0),
                        std=(1.0, 1.0, 1.0)))
