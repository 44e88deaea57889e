"""Is a network usable? Finite weights, and finite features on a small test batch.

Every network that enters a registry (a user's weight file, a fine-tuned expert, a trained probe, a
Taskonomy encoder) passes :func:`check_network` first, so a NaN in one file cannot surface later as an
anonymous "features contain NaN" in ``expert eval`` or ``select``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from taskreg.embedders.probes import ProbeSpec, normalize_images
from taskreg.errors import TaskregError

TEST_BATCH = 2  # images in the test batch (BatchNorm runs in eval mode, so any size works)


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity, in order."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def probe_batch(spec: ProbeSpec, seed: int = 0) -> torch.Tensor:
    """A deterministic (TEST_BATCH, in_chans, S, S) batch of uniform images, normalised for ``spec``."""
    gen = torch.Generator().manual_seed(seed)
    size = int(spec.input_size)
    return normalize_images(torch.rand((TEST_BATCH, spec.in_chans, size, size), generator=gen), spec)


@torch.no_grad()
def check_network(model: nn.Module, spec: ProbeSpec, label: str) -> None:
    """Raise TaskregError (``"{label}: ..."``, one line) unless ``model`` is usable.

    Usable: every floating-point tensor of its state_dict is finite, and ``features`` and the ``fc``
    head give finite values on :func:`probe_batch` at the network's input size. The model's mode
    (train/eval), device and weights are left as they were.
    """
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        count = f"{len(bad)} tensors hold" if len(bad) > 1 else "1 tensor holds"
        raise TaskregError(f"{label}: {count} NaN or Inf (first: {bad[0]})")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        feats = model.features(probe_batch(spec).to(device)).flatten(1)  # type: ignore[operator]
        logits = model.fc(feats)  # type: ignore[operator]
    finally:
        model.train(was_training)
    for what, out in (("features", feats), ("outputs", logits)):
        if not bool(torch.isfinite(out).all()):
            raise TaskregError(f"{label}: the weights are finite but a forward pass on a small test batch "
                               f"({spec.input_size}x{spec.input_size}) gives NaN or infinite {what}")
