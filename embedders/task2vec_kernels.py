"""Exact per-sample Fisher of a probe's convolutions: the squared-gradient kernels, their cost model, the hooks
that accumulate them, and the ``montecarlo`` Fisher pass built on them (used by :mod:`taskreg.embedders.task2vec`
and, for its first pass and its perturbed passes, by :mod:`taskreg.embedders.task2vec_variational`).

Per-sample squared gradients are computed *exactly* without per-sample backward passes: forward hooks keep each
conv's input ``a`` and tensor hooks its output gradient ``g``; the per-sample weight gradient is
``g_i @ unfold(a_i)^T``, and since only its per-filter sum of squares is needed, a cost model
(:func:`sq_grad_plans`) picks one of four exact forms per layer (:func:`per_filter_sq_grad_sum`).
The method and its choices are described in the docstring of :mod:`taskreg.embedders.task2vec`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskreg.errors import TaskregError

__all__ = [
    "SQ_GRAD_FORMS",
    "FisherAccumulator",
    "cheapest_form",
    "feature_convs",
    "montecarlo_fisher",
    "patch_gram",
    "per_filter_sq_grad_sum",
    "sample_labels",
    "sq_grad_plans",
]

SQ_GRAD_FORMS = ("direct", "cols_gram", "shifted_gram", "native")  # see per_filter_sq_grad_sum
# Cost model of the per-sample forms (sq_grad_plans), in multiply-adds per image; fitted to the timings of
# `benchmarks/task2vec_bench.py --forms` on a 2-core CPU: writing a float, and unfolding (torch's im2col loops
# over the K rows of every image: about 1 us per image plus a few ns per row)
_MEM_WEIGHT = 4.0
_UNFOLD_FIXED = 40_000.0
_UNFOLD_PER_ROW = 200.0
# torch's conv weight-gradient kernel (``native``), per multiply-add, relative to a matmul's: a grouped conv (B x G
# groups of few channels: depthwise) or a 1x1 conv pays 4; a dense conv with a spatial kernel (B groups of a full
# conv) runs near oneDNN's speed where it has many output positions P and slows down where it has few:
# 0.47 + 58 / P, fitted to `--forms` on ResNet-18 at 224 px (at P = 3,136 native takes 1.8-2.0 ms per image, direct
# 5.8-6.4 ms; at P = 49, 5.8-7.0 vs 3.7-4.4 ms; benchmarks/RESULTS.md, "Issue 16: the per-sample form at 224 px").
_NATIVE_PER_MAC = 4.0
_NATIVE_DENSE_PER_MAC = 0.47
_NATIVE_DENSE_PER_POSITION = 58.0
_MAX_CHUNK_FLOATS = 600_000  # floats of per-sample intermediates per chunk (~2.4 MB, sq_grad_plans): chunks that stay
# in cache made the per-sample pass of ResNet-18 ~30% faster than whole 64-image batches (9.4 MB per layer-1 conv)


def feature_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Convolutions of the feature extractor (everything except the ``fc`` head), in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("fc")]


def sample_labels(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per row from softmax(logits), by inverse CDF over classes sorted by probability."""
    p = torch.softmax(logits.detach().float().cpu(), dim=1)
    p_sorted, order = torch.sort(p, dim=1, descending=True, stable=True)
    cdf = p_sorted.cumsum(1)
    u = torch.rand(p.shape[0], 1, generator=gen) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, u).clamp_max(p.shape[1] - 1)
    return order.gather(1, pos).squeeze(1).to(logits.device)


def _is_pointwise(conv: nn.Conv2d) -> bool:
    """A 1x1 conv with stride 1 and no padding: its unfolded input is the input itself (no copy)."""
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def sq_grad_plans(conv: nn.Conv2d, a_shape: Sequence[int], g_shape: Sequence[int]) -> dict[str, tuple[float, int]]:
    """Per form of :func:`per_filter_sq_grad_sum`: (estimated cost per sample, floats held per sample).

    The cost counts multiply-adds, ``_MEM_WEIGHT`` per float written and the overhead of unfolding (none for a
    pointwise conv, whose unfolded input is a view); on the ResNets of probes.py its pick is measured against
    the fastest form for every layer shape at 32, 64 and 224 px, and on EfficientNet-Lite0 at 128 px, by
    ``benchmarks/task2vec_bench.py --forms`` (benchmarks/RESULTS.md). A conv with G groups is G independent
    convs of C/G input and O/G output channels: per-group Gram matrices (G of them) and per-sample gradients
    of O x K/G weights.
    a_shape : (B, C, H, W) conv input, g_shape : (B, O, Ho, Wo) output gradient.
    """
    c, h, w = a_shape[1], a_shape[2], a_shape[3]
    o, p = g_shape[1], g_shape[2] * g_shape[3]
    groups = conv.groups
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    k = c * taps
    k_g = k // groups
    hw2 = (h * w) ** 2
    padded2 = ((h + 2 * conv.padding[0]) * (w + 2 * conv.padding[1])) ** 2  # type: ignore[operator]
    unfold = 0.0 if _is_pointwise(conv) else _UNFOLD_FIXED + _UNFOLD_PER_ROW * k + _MEM_WEIGHT * k * p
    dense = groups == 1 and taps > 1  # a full conv with a spatial kernel; 1x1 convs are plain matmuls for direct
    native_per_mac = _NATIVE_DENSE_PER_MAC + _NATIVE_DENSE_PER_POSITION / p if dense else _NATIVE_PER_MAC
    return {
        "native": (native_per_mac * o * p * k_g + _MEM_WEIGHT * o * k_g, o * k_g),
        "direct": (unfold + o * p * k_g + _MEM_WEIGHT * o * k_g, k * p + o * k_g),
        "cols_gram": (unfold + p * p * k + o * p * p + _MEM_WEIGHT * groups * p * p, k * p + groups * p * p),
        "shifted_gram": (hw2 * c + o * p * p + _MEM_WEIGHT * groups * (hw2 + padded2 + 2 * taps * p * p),
                         groups * (hw2 + padded2 + p * p)),
    }


def cheapest_form(plans: dict[str, tuple[float, int]]) -> str:
    """The form of :func:`sq_grad_plans` with the lowest estimated cost."""
    return min(plans, key=lambda f: plans[f][0])


def patch_gram(conv: nn.Conv2d, a: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """Gram matrices of each image's receptive fields, per group, without unfolding: (B, C, H, W) -> (B G, P, P).

    <patch_p, patch_q> = sum_taps M[s p + d t, s q + d t] where M = A^T A is the (zero-padded) Gram of the
    input's pixel vectors (the C/G channels of one group each): one (HW x C/G) @ (C/G x HW) product per image and
    group and one shifted slice-add per kernel tap, instead of K x P unfolded columns and a (P x K) @ (K x P)
    product. Row ``i G + j`` is image i, group j.
    """
    b, c, h, w = a.shape
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = conv.padding  # type: ignore[str-unpack]
    av = a.reshape(b * conv.groups, c // conv.groups, h * w)
    m = torch.bmm(av.transpose(1, 2), av).view(-1, h, w, h, w)
    if ph or pw:
        m = F.pad(m, (pw, pw, ph, ph, pw, pw, ph, ph))  # type: ignore[arg-type]
    rows = [slice(i * dh, i * dh + sh * (ho - 1) + 1, sh) for i in range(kh)]
    cols = [slice(j * dw, j * dw + sw * (wo - 1) + 1, sw) for j in range(kw)]
    taps = [m[:, r, c, r, c] for r in rows for c in cols]  # views (b G, Ho, Wo, Ho, Wo), one per kernel tap
    gram = taps[0].clone()
    for tap in taps[1:]:
        gram += tap
    return gram.reshape(-1, ho * wo, ho * wo)


def per_filter_sq_grad_sum(conv: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, form: str | None = None
                            ) -> torch.Tensor:
    """sum_i sum_{k in filter o} (dL_i/dW_ok)^2 for each output channel o -> (O,).

    a : (B, C, H, W) conv input, g : (B, O, Ho, Wo) gradient of sum_i L_i w.r.t. the conv output.
    With A_i the (K, P) unfolded input of image i and G_i its (O, P) output gradient, the per-sample
    weight gradient is G_i A_i^T, and three exact forms give its per-filter sum of squares:

    * ``direct``: form G_i A_i^T and square it -- O P K per image (large P: early layers, big inputs);
    * ``cols_gram``: sum_p,q G_op G_oq (A_i^T A_i)_pq -- P^2 K + O P^2 (few output positions);
    * ``shifted_gram``: the same with the patch Gram from :func:`patch_gram` -- (HW)^2 C + O P^2, no unfolding
      (few input positions, many channels: most of a ResNet at 32 px);
    * ``native``: torch's own weight-gradient kernel of the conv (``torch.nn.grad.conv2d_weight``, the one
      ordinary training runs) with the images folded into the groups -- B images of a G-group conv are one
      image of a (B G)-group conv whose weight gradient is the B per-sample gradients side by side. Same
      O P K/G multiply-adds as ``direct`` without unfolding; the form for depthwise convs, where ``direct``
      would run one tiny (1 x P) @ (P x taps) product per image and channel.

    A grouped conv (``groups`` = G > 1, depthwise when G = C) is G independent convs: filter o sees only the
    C/G channels of its group, i.e. the rows of A_i of that group, so each form runs per (image, group) with
    the O/G filters and K/G unfolded rows of the group (direct: O P K/G; the Grams: one P x P per group).
    A pointwise conv (1x1, stride 1, no padding) is not unfolded at all: A_i is the input itself.

    ``form=None`` picks the cheapest by :func:`sq_grad_plans` (:func:`cheapest_form`). Images are processed
    in chunks of about ``_MAX_CHUNK_FLOATS`` floats of intermediates so that they stay in cache.
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TaskregError("Task2Vec supports convolutions with numeric zero padding only")
    b, o, ho, wo = g.shape
    groups = conv.groups
    plans = sq_grad_plans(conv, a.shape, g.shape)
    form = form or cheapest_form(plans)
    chunk = max(1, _MAX_CHUNK_FLOATS // max(1, plans[form][1]))
    total = torch.zeros(o, dtype=g.dtype, device=g.device)
    for s in range(0, b, chunk):
        if form == "native":
            sub, gsub = a[s : s + chunk], g[s : s + chunk]
            nb = sub.shape[0]
            # (b O, C/G, kh, kw): per-sample weight gradients
            grads = torch.nn.grad.conv2d_weight(  # type: ignore[attr-defined]
                sub.reshape(1, nb * sub.shape[1], *sub.shape[2:]), (nb * o, *conv.weight.shape[1:]),
                gsub.reshape(1, nb * o, ho, wo), conv.stride, conv.padding, conv.dilation, nb * groups)
            total += grads.reshape(nb, o, -1).square().sum(dim=(0, 2))
            continue
        gs = g[s : s + chunk].reshape(-1, o // groups, ho * wo)  # (b G, O/G, P)
        if form == "shifted_gram":
            per = (torch.bmm(gs, patch_gram(conv, a[s : s + chunk], ho, wo)) * gs).sum(dim=2)  # (b G, O/G)
        else:
            sub = a[s : s + chunk]
            if _is_pointwise(conv):
                cols = sub.reshape(sub.shape[0], sub.shape[1], -1)  # (b, C, P): a view of the input
            else:
                cols = F.unfold(sub, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (b, K, P)
            cols = cols.reshape(gs.shape[0], -1, ho * wo)  # (b G, K/G, P): unfold rows are channel-major
            if form == "cols_gram":
                per = (torch.bmm(gs, torch.bmm(cols.transpose(1, 2), cols)) * gs).sum(dim=2)
            else:
                per = torch.bmm(gs, cols.transpose(1, 2)).square().sum(dim=2)  # (b G, O/G, K/G) per-sample grads
        total += per.reshape(-1, o).sum(dim=0)
    return total


class FisherAccumulator:
    """Hooks on every feature-extractor conv that add per-sample squared weight gradients per filter."""

    def __init__(self, model: nn.Module) -> None:
        self.convs = feature_convs(model)
        self.sums = [torch.zeros(m.out_channels, dtype=torch.float64) for _, m in self.convs]
        self.handles = [m.register_forward_hook(self._make_hook(i)) for i, (_, m) in enumerate(self.convs)]

    def _make_hook(self, i: int) -> Callable[..., None]:
        def hook(mod: nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            if not out.requires_grad:  # nothing before this conv is tracked (the weights are frozen): the graph
                out.requires_grad_(True)  # starts here, so no gradient w.r.t. the images is ever computed
            a = inputs[0].detach()

            def on_grad(g: torch.Tensor) -> None:
                self.sums[i] += per_filter_sq_grad_sum(mod, a, g.detach()).double().cpu()

            out.register_hook(on_grad)

        return hook

    def per_filter_mean(self, n_samples: int) -> np.ndarray:
        """(D,) mean over samples of the per-filter average squared gradient."""
        parts = []
        for (_, m), s in zip(self.convs, self.sums, strict=True):
            parts.append(s / max(1, n_samples) / m.weight[0].numel())  # weights per filter: C/G x kh x kw
        return torch.cat(parts).numpy().astype(np.float32)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def montecarlo_fisher(net: nn.Module, xt: torch.Tensor, batch_size: int, dev: torch.device,
                       gen: torch.Generator, tick: Callable[[], None] | None = None,
                       labels: torch.Tensor | None = None,
                       kept: tuple[list[torch.Tensor | None], FisherAccumulator] | None = None) -> np.ndarray:
    """Per-filter Fisher of ``net`` (head included, weights frozen) on adapted images xt (N, 3, S, S).

    Labels are sampled from the model unless ``labels`` (N,) is given (then it is the empirical
    Fisher; used by tests to check the per-sample computation against autograd). ``kept``: the
    graph-carrying features of each batch (None for a batch whose graph was not kept) and the accumulator hooked
    while they were computed (from :func:`taskreg.embedders.task2vec.features_keeping_graphs`); the kept batches
    then start from there instead of running the network forward again -- the same labels, sums and result.
    """
    if kept is None:
        for prm in net.parameters():
            prm.requires_grad_(False)
        graphs, acc = None, FisherAccumulator(net)
    else:
        graphs, acc = kept
    try:
        for b, i in enumerate(range(0, xt.shape[0], batch_size)):
            if graphs is None or graphs[b] is None:  # not kept: the network runs forward again
                logits = net(xt[i : i + batch_size].to(dev))
            else:
                logits = net.fc(graphs[b])  # type: ignore[operator]
                graphs[b] = None  # each graph is freed by its backward
            yb = sample_labels(logits, gen) if labels is None else labels[i : i + batch_size].to(dev)
            F.cross_entropy(logits, yb, reduction="sum").backward()
            if tick is not None:
                tick()
    finally:
        acc.remove()
    return acc.per_filter_mean(xt.shape[0])
