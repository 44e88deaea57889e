"""The linear head Task2Vec trains on a probe's frozen features: zero-initialised softmax regression on standardised
features (:func:`train_head`), optimised by :class:`HeadAdam`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadAdam", "train_head"]


class HeadAdam:
    """``torch.optim.Adam(params, lr, weight_decay=wd)`` for the linear head, its CPU update written out.

    Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (about 1.6 s in a fresh process): most of
    the cost of a small query's probe pass, paid by every ``select`` and ``task add``. This is Adam's single-tensor
    update (L2 weight decay added to the gradient, betas 0.9/0.999, eps 1e-8, no amsgrad) with the same operations
    in the same order, so the result is bit-for-bit that of ``torch.optim.Adam`` on the CPU
    (tests/test_task2vec.py checks it).
    """

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)  # torch keeps the count in a float32 tensor and reads it back as a float
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = self.lr / bias_correction1
        for p, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def train_head(z: torch.Tensor, y: torch.Tensor, k: int, *, epochs: int, lr: float, weight_decay: float,
                batch_size: int, gen: torch.Generator) -> tuple[nn.Linear, float, float]:
    """Zero-initialised softmax regression on standardised features, folded back to raw features.

    z : (N, D) features, y : (N,) labels 0..K-1. Returns (head on raw features, train acc, train loss).
    Zero init + a label-independent batch order make the result exactly equivariant to relabelling.
    """
    mu = z.mean(0)
    sd = z.std(0, unbiased=False).clamp_min(1e-6)
    zs = (z - mu) / sd
    lin = nn.Linear(z.shape[1], k)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = HeadAdam(lin.parameters(), lr=lr, weight_decay=weight_decay)  # torch.optim.Adam, without its import
    n = z.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            batch_loss = F.cross_entropy(lin(zs[idx]), y[idx])
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
    with torch.no_grad():
        logits = lin(zs)
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
        head = nn.Linear(z.shape[1], k)
        head.weight.copy_(lin.weight / sd)
        head.bias.copy_(lin.bias - (lin.weight * (mu / sd)).sum(1))
    return head, acc, loss
