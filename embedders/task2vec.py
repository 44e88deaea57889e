"""Task2Vec (Achille et al., 2019): embed a labelled image dataset as the per-filter Fisher information
of a fixed probe network.

Pipeline of :func:`embed` (paper Sect. 3.1):

1. deep-copy the probe (the caller's model is never modified), BatchNorm in eval mode throughout;
2. compute the frozen features ``z = probe.features(x)`` once and train a fresh linear head for the
   task's classes on them (softmax regression, zero-initialised, Adam, deterministic);
3. estimate the diagonal Fisher of the feature extractor's convolution weights (BatchNorm and the
   head are skipped) and average it over the weights of each filter (output channel). The vector has
   one entry per filter (4,800 for ResNet-18, 336 for cifar_resnet8), in :func:`fisher_layout` order.

Estimators
----------
``montecarlo`` -- exact per-sample diagonal Fisher with labels sampled from the model:
    F_f = 1/N sum_i 1/|f| sum_{k in f} (d/dw_k log p(y_i | x_i))^2,  y_i ~ p_w(y | x_i).
    Per-sample squared gradients are computed *exactly* without per-sample backward passes
    (the "per-example gradient" trick of Goodfellow 2015 for conv layers): forward hooks keep each
    conv's input ``a`` and tensor hooks its output gradient ``g``; the per-sample weight gradient is
    ``g_i @ unfold(a_i)^T``. Because only the per-filter *sum of squares* is needed, layers with few
    output positions P use the Gram form ``sum_o g_io^T (A_i^T A_i) g_io`` instead, and where the input
    has few positions too, the Gram of the receptive fields is assembled from the Gram of the input's
    pixels without unfolding at all; grouped and depthwise convs (EfficientNet's) run per group, or through
    torch's own weight-gradient kernel with the images folded into the groups; a cost model picks one of the
    four exact forms per layer (see :func:`_per_filter_sq_grad_sum`). Autograd only computes the gradients
    w.r.t. activations (the weights are frozen and the graph starts at the first conv's output, so not even the images'
    gradient is formed): the whole pass costs less than one forward+backward of ordinary training.
    Why not the cheaper "square of the batch-sum gradient"?
    With labels drawn from the model the scores have zero conditional mean, so it would be unbiased
    too, but its variance grows with the batch size (cross terms g_i g_j); the exact per-sample
    estimator has no such batch-size dependence. Why not torch.func vmap(grad)? It materialises
    every per-sample gradient of every weight (B x 11 M floats for ResNet-18) and was slower on CPU.
    Labels are drawn by inverse-CDF sampling over the classes sorted by probability, so a relabelling
    of the classes (with a head that is then exactly permuted) draws exactly the same samples.

``variational`` -- the paper's robust estimator: a Gaussian posterior N(w_hat, Lambda^-1) around the
    probe's weights with one precision Lambda_f per filter, against an isotropic prior of precision
    lambda2_f, minimising  E_q[CE] + beta/N * sum_f |f| KL(N(0, 1/Lambda_f) || N(0, 1/lambda2_f)).
    To second order the optimum is ``Lambda_f = lambda2_f + (N/beta) F_f`` (paper, Sect. 3.1).
    Pass 1 computes exactly that (the Laplace solution, from the exact Fisher); each further pass
    (``var_epochs - 1``) refines it on the objective itself:

    * ``var_solver="sgvb"`` (default, the paper's method): Adam on log Lambda with the local
      reparameterisation trick -- the noise is drawn on each conv output with the variance that
      independent weight noise would give (see :func:`_sgvb_refine`);
    * ``var_solver="fixed_point"``: the stationarity condition beyond second order,
      ``Lambda_f = lambda2_f + (N/beta) E_q[F_f(w)]`` (Price's theorem + Gauss-Newton), solved by damped
      fixed-point steps, each an exact per-sample Fisher pass at weights drawn from the posterior.

    Scale choices (benchmarks/RESULTS.md, "Task2Vec", measures them):

    * prior: ``lambda2_f = prior_scale / mean(w_hat_f^2)`` -- weight noise on the scale of the filter's
      own weights (the official code's choice, per layer there);
    * beta: default ``N / W`` (W = number of conv weights), i.e. the posterior may cost ~1/2 nat of
      cross-entropy per image. With the paper's ELBO value beta = 1 and W >> N the posterior is the
      prior for any realistic N (the first default, lambda2 = 1e3 and beta = 1, gave a data term of
      1e-4..1e-3 of the prior on a trained cifar_resnet20 with 300 images, and a learned embedding that
      was mostly optimiser noise);
    * the embedding is ``Lambda_f / lambda2_f >= 1`` (precision relative to the prior), so the trivial
      embedding t0 (the prior) is 1 in every coordinate for every probe. d_sym is unchanged by a
      per-coordinate unit.

Trivial embedding of ``montecarlo``: the Fisher of a task without information is 0 (a head that
predicts a constant distribution has zero scores), which makes d_sym(., t0) degenerate. We instead use
a fixed reference "noise task", derived deterministically from the probe: ``TRIVIAL_N`` images of
uniform noise labelled by a fixed random linear head (10 classes, logits of unit scale). Its labels
carry no information about any real dataset, so distance from it measures how specific (complex) a
task is for this probe. It is fixed per probe and seed.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskreg.embedders.probes import ProbeNet, ProbeSpec, adapt_inputs, to_device
from taskreg.errors import TaskregError

__all__ = [
    "METHODS",
    "TaskEmbedding",
    "balanced_subsample",
    "domain_embedding",
    "embed",
    "fisher_layout",
    "trivial_embedding",
]

METHODS = ("montecarlo", "variational")
SQ_GRAD_FORMS = ("direct", "cols_gram", "shifted_gram", "native")  # see _per_filter_sq_grad_sum
DEFAULT_PRIOR_SCALE = 1.0  # lambda2_f = scale / mean(w_f^2): prior weight-noise std = the filter's RMS weight
DEFAULT_BETA: float | None = None  # None: beta = N / (number of conv weights), see _variational_fisher
VAR_SOLVERS = ("sgvb", "fixed_point")
DEFAULT_VAR_SOLVER = "sgvb"
_TINY_W2 = 1e-30
_MIN_WEIGHT_DRAWS = 16  # weight draws per perturbed pass (one per batch; smaller batches if N is small)
TRIVIAL_N = 256
# montecarlo: most memory the features pass may keep for the Fisher pass (see embed). Keeping saves a forward
# pass (-15% at 1,000 32x32 images on ResNet-18, 0.44 GB kept) but every kept byte is freshly allocated: at
# 5,000 images (2.2 GB) first-touch page faults cost as much as the forward pass saved, so beyond 1 GiB: no.
_RETAIN_CAP = 2**30
_EPS = 1e-12
# Cost model of the per-sample forms (_sq_grad_plans), in multiply-adds per image; fitted to the timings of
# `benchmarks/task2vec_bench.py --forms` on a 2-core CPU: writing a float, and unfolding (torch's im2col loops
# over the K rows of every image: about 1 us per image plus a few ns per row)
_MEM_WEIGHT = 4.0
_UNFOLD_FIXED = 40_000.0
_UNFOLD_PER_ROW = 200.0
_NATIVE_PER_MAC = 4.0  # torch's conv weight-gradient kernel, per multiply-add, relative to a matmul's
_MAX_CHUNK_FLOATS = 600_000  # floats of per-sample intermediates per chunk (~2.4 MB, _sq_grad_plans): chunks that stay
# in cache made the per-sample pass of ResNet-18 ~30% faster than whole 64-image batches (9.4 MB per layer-1 conv)

Progress = Callable[[int, int], None]


@dataclass
class TaskEmbedding:
    """A Task2Vec embedding and how it was obtained.

    vector : (D,) float32, one value per probe filter (order given by ``layout``).
    layout : [(conv weight name, number of filters)], the blocks of ``vector`` in order.
    """

    vector: np.ndarray
    method: str
    arch: str
    n_samples: int
    n_classes: int
    seed: int
    layout: list[tuple[str, int]] = field(default_factory=list)
    head_train_accuracy: float = float("nan")
    head_train_loss: float = float("nan")
    seconds: float = 0.0
    mean_features: np.ndarray | None = None  # (feature_dim,) mean probe features of the images used: the
    # domain embedding of those images, a by-product of the features pass (see :func:`domain_embedding`)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Convolutions of the feature extractor (everything except the ``fc`` head), in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("fc")]


def fisher_layout(model: nn.Module) -> list[tuple[str, int]]:
    """[(conv weight name, n filters)] -- the coordinates of a Task2Vec vector for this probe."""
    return [(f"{n}.weight", int(m.out_channels)) for n, m in _convs(model)]


def balanced_subsample(y: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced random subset of at most ``max_samples`` items (sorted).

    Each class gets an equal share (classes smaller than their share give all their items and the
    rest is redistributed). Choices depend on a seeded global permutation, not on the class ids, so
    relabelling the classes selects the same items.

    y : (N,) labels. Returns (M,) int64 indices, M = min(N, max_samples).
    """
    n = int(y.shape[0])
    if max_samples is None or max_samples >= n:
        return np.arange(n, dtype=np.int64)
    if max_samples < 1:
        raise TaskregError(f"max_samples must be >= 1, got {max_samples}")
    order = np.random.default_rng(seed).permutation(n)
    classes, first_pos = [], []
    members: dict[int, np.ndarray] = {}
    y_perm = y[order]
    for c in np.unique(y):
        pos = np.flatnonzero(y_perm == c)
        members[int(c)] = order[pos]
        classes.append(int(c))
        first_pos.append(int(pos[0]))
    # water-filling of quotas; leftover single items go to classes in order of first appearance
    classes = [c for _, c in sorted(zip(first_pos, classes, strict=True))]
    quota = dict.fromkeys(classes, 0)
    remaining = int(max_samples)
    open_classes = list(classes)
    while remaining > 0 and open_classes:
        share = max(1, remaining // len(open_classes))
        for c in list(open_classes):
            if remaining == 0:
                break
            take = min(share, len(members[c]) - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if quota[c] >= len(members[c]):
                open_classes.remove(c)
    idx = np.concatenate([members[c][: quota[c]] for c in classes])
    return np.sort(idx).astype(np.int64)


def _validate_xy(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[int, np.ndarray]:
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y_np.ndim != 1:
        raise TaskregError(f"y must be a 1-D label array, got shape {y_np.shape}")
    if not np.issubdtype(y_np.dtype, np.integer):
        raise TaskregError(f"y must hold integer class labels, got dtype {y_np.dtype}")
    n = int(x.shape[0]) if hasattr(x, "shape") else len(x)
    if y_np.shape[0] != n:
        raise TaskregError(f"x has {n} images but y has {y_np.shape[0]} labels")
    return n, y_np


@torch.no_grad()
def _features(model: nn.Module, xt: torch.Tensor, batch_size: int, dev: torch.device,
              tick: Callable[[], None] | None = None) -> torch.Tensor:
    """Frozen probe features. xt : (N, 3, S, S) adapted -> (N, D) float32 on CPU."""
    out = []
    for i in range(0, xt.shape[0], batch_size):
        out.append(model.features(xt[i : i + batch_size].to(dev)).float().cpu())
        if tick is not None:
            tick()
    return torch.cat(out)


def _train_head(z: torch.Tensor, y: torch.Tensor, k: int, *, epochs: int, lr: float, weight_decay: float,
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
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
    n = z.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(lin(zs[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        logits = lin(zs)
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
        head = nn.Linear(z.shape[1], k)
        head.weight.copy_(lin.weight / sd)
        head.bias.copy_(lin.bias - (lin.weight * (mu / sd)).sum(1))
    return head, acc, loss


def _sample_labels(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per row from softmax(logits), by inverse CDF over classes sorted by probability."""
    p = torch.softmax(logits.detach().float().cpu(), dim=1)
    p_sorted, order = torch.sort(p, dim=1, descending=True, stable=True)
    cdf = p_sorted.cumsum(1)
    u = torch.rand(p.shape[0], 1, generator=gen) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, u).clamp_max(p.shape[1] - 1)
    return order.gather(1, pos).squeeze(1).to(logits.device)


# --------------------------------------------------------------------------------------------------
# Exact per-sample Fisher (Monte Carlo labels)
# --------------------------------------------------------------------------------------------------


def _is_pointwise(conv: nn.Conv2d) -> bool:
    """A 1x1 conv with stride 1 and no padding: its unfolded input is the input itself (no copy)."""
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def _sq_grad_plans(conv: nn.Conv2d, a_shape: Sequence[int], g_shape: Sequence[int]) -> dict[str, tuple[float, int]]:
    """Per form of :func:`_per_filter_sq_grad_sum`: (estimated cost per sample, floats held per sample).

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
    padded2 = ((h + 2 * conv.padding[0]) * (w + 2 * conv.padding[1])) ** 2
    unfold = 0.0 if _is_pointwise(conv) else _UNFOLD_FIXED + _UNFOLD_PER_ROW * k + _MEM_WEIGHT * k * p
    return {
        "native": (_NATIVE_PER_MAC * o * p * k_g + _MEM_WEIGHT * o * k_g, o * k_g),
        "direct": (unfold + o * p * k_g + _MEM_WEIGHT * o * k_g, k * p + o * k_g),
        "cols_gram": (unfold + p * p * k + o * p * p + _MEM_WEIGHT * groups * p * p, k * p + groups * p * p),
        "shifted_gram": (hw2 * c + o * p * p + _MEM_WEIGHT * groups * (hw2 + padded2 + 2 * taps * p * p),
                         groups * (hw2 + padded2 + p * p)),
    }


def _cheapest_form(plans: dict[str, tuple[float, int]]) -> str:
    """The form of :func:`_sq_grad_plans` with the lowest estimated cost."""
    return min(plans, key=lambda f: plans[f][0])


def _patch_gram(conv: nn.Conv2d, a: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """Gram matrices of each image's receptive fields, per group, without unfolding: (B, C, H, W) -> (B G, P, P).

    <patch_p, patch_q> = sum_taps M[s p + d t, s q + d t] where M = A^T A is the (zero-padded) Gram of the
    input's pixel vectors (the C/G channels of one group each): one (HW x C/G) @ (C/G x HW) product per image and
    group and one shifted slice-add per kernel tap, instead of K x P unfolded columns and a (P x K) @ (K x P)
    product. Row ``i G + j`` is image i, group j.
    """
    b, c, h, w = a.shape
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    av = a.reshape(b * conv.groups, c // conv.groups, h * w)
    m = torch.bmm(av.transpose(1, 2), av).view(-1, h, w, h, w)
    if ph or pw:
        m = F.pad(m, (pw, pw, ph, ph, pw, pw, ph, ph))
    rows = [slice(i * dh, i * dh + sh * (ho - 1) + 1, sh) for i in range(kh)]
    cols = [slice(j * dw, j * dw + sw * (wo - 1) + 1, sw) for j in range(kw)]
    taps = [m[:, r, c, r, c] for r in rows for c in cols]  # views (b G, Ho, Wo, Ho, Wo), one per kernel tap
    gram = taps[0].clone()
    for tap in taps[1:]:
        gram += tap
    return gram.reshape(-1, ho * wo, ho * wo)


def _per_filter_sq_grad_sum(conv: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, form: str | None = None
                            ) -> torch.Tensor:
    """sum_i sum_{k in filter o} (dL_i/dW_ok)^2 for each output channel o -> (O,).

    a : (B, C, H, W) conv input, g : (B, O, Ho, Wo) gradient of sum_i L_i w.r.t. the conv output.
    With A_i the (K, P) unfolded input of image i and G_i its (O, P) output gradient, the per-sample
    weight gradient is G_i A_i^T, and three exact forms give its per-filter sum of squares:

    * ``direct``: form G_i A_i^T and square it -- O P K per image (large P: early layers, big inputs);
    * ``cols_gram``: sum_p,q G_op G_oq (A_i^T A_i)_pq -- P^2 K + O P^2 (few output positions);
    * ``shifted_gram``: the same with the patch Gram from :func:`_patch_gram` -- (HW)^2 C + O P^2, no unfolding
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

    ``form=None`` picks the cheapest by :func:`_sq_grad_plans` (:func:`_cheapest_form`). Images are processed
    in chunks of about ``_MAX_CHUNK_FLOATS`` floats of intermediates so that they stay in cache.
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TaskregError("Task2Vec supports convolutions with numeric zero padding only")
    b, o, ho, wo = g.shape
    groups = conv.groups
    plans = _sq_grad_plans(conv, a.shape, g.shape)
    form = form or _cheapest_form(plans)
    chunk = max(1, _MAX_CHUNK_FLOATS // max(1, plans[form][1]))
    total = torch.zeros(o, dtype=g.dtype, device=g.device)
    for s in range(0, b, chunk):
        if form == "native":
            sub, gsub = a[s : s + chunk], g[s : s + chunk]
            nb = sub.shape[0]
            grads = torch.nn.grad.conv2d_weight(  # (b O, C/G, kh, kw): per-sample weight gradients
                sub.reshape(1, nb * sub.shape[1], *sub.shape[2:]), (nb * o, *conv.weight.shape[1:]),
                gsub.reshape(1, nb * o, ho, wo), conv.stride, conv.padding, conv.dilation, nb * groups)
            total += grads.reshape(nb, o, -1).square().sum(dim=(0, 2))
            continue
        gs = g[s : s + chunk].reshape(-1, o // groups, ho * wo)  # (b G, O/G, P)
        if form == "shifted_gram":
            per = (torch.bmm(gs, _patch_gram(conv, a[s : s + chunk], ho, wo)) * gs).sum(dim=2)  # (b G, O/G)
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


class _FisherAccumulator:
    """Hooks on every feature-extractor conv that add per-sample squared weight gradients per filter."""

    def __init__(self, model: nn.Module) -> None:
        self.convs = _convs(model)
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
                self.sums[i] += _per_filter_sq_grad_sum(mod, a, g.detach()).double().cpu()

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


def _montecarlo_fisher(net: nn.Module, xt: torch.Tensor, batch_size: int, dev: torch.device,
                       gen: torch.Generator, tick: Callable[[], None] | None = None,
                       labels: torch.Tensor | None = None,
                       kept: tuple[list[torch.Tensor | None], _FisherAccumulator] | None = None) -> np.ndarray:
    """Per-filter Fisher of ``net`` (head included, weights frozen) on adapted images xt (N, 3, S, S).

    Labels are sampled from the model unless ``labels`` (N,) is given (then it is the empirical
    Fisher; used by tests to check the per-sample computation against autograd). ``kept``: the
    graph-carrying features of every batch and the accumulator hooked while they were computed (from
    :func:`_features_keeping_graphs`); the batches then start from there instead of running the network
    forward again -- the same labels, sums and result.
    """
    if kept is None:
        for prm in net.parameters():
            prm.requires_grad_(False)
        graphs, acc = None, _FisherAccumulator(net)
    else:
        graphs, acc = kept
    try:
        for b, i in enumerate(range(0, xt.shape[0], batch_size)):
            if graphs is None:
                logits = net(xt[i : i + batch_size].to(dev))
            else:
                logits = net.fc(graphs[b])
                graphs[b] = None  # each graph is freed by its backward
            yb = _sample_labels(logits, gen) if labels is None else labels[i : i + batch_size].to(dev)
            F.cross_entropy(logits, yb, reduction="sum").backward()
            if tick is not None:
                tick()
    finally:
        acc.remove()
    return acc.per_filter_mean(xt.shape[0])


def _available_bytes(dev: torch.device) -> int:
    """Free memory of the device in bytes (CUDA: free device memory; CPU: the OS's available memory)."""
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _features_keeping_graphs(net: nn.Module, xt: torch.Tensor, batch_size: int, dev: torch.device,
                             budget: int, tick: Callable[[], None] | None = None
                             ) -> tuple[torch.Tensor, list[torch.Tensor | None], _FisherAccumulator] | None:
    """The features pass of the montecarlo estimator with each batch's autograd graph kept.

    The Fisher pass then starts from the kept features (head, sampled labels, backward) instead of
    running the network forward a second time. Returns (features (N, D) on CPU, per-batch graph-carrying
    features, the hooked accumulator), or None -- nothing kept -- when a forward pass of one image shows that
    all graphs would need more than ``budget`` bytes (the distinct activation storages autograd saves, weights
    excluded; ResNet-18 at 32x32: 442 KB per image; EfficientNet-Lite0 at 128 px: 24.7 MiB). Measuring on
    one image rather than on the first batch wastes one image's forward pass, not a batch's, when nothing is
    kept.
    """
    if budget <= 0 or type(net).forward is not ProbeNet.forward:
        return None
    for prm in net.parameters():
        prm.requires_grad_(False)
    acc = _FisherAccumulator(net)
    saved = 0
    seen = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}  # shared, not per batch

    def pack(t: torch.Tensor) -> torch.Tensor:  # bytes of each distinct activation storage autograd keeps
        nonlocal saved
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved += t.untyped_storage().nbytes()
        return t

    feats: list[torch.Tensor] = []
    graphs: list[torch.Tensor | None] = []
    n = xt.shape[0]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.features(xt[:1].to(dev))  # its graph is dropped unused; BatchNorm in eval: images independent
        if saved * n > budget:
            acc.remove()
            return None
        for i in range(0, n, batch_size):
            zb = net.features(xt[i : i + batch_size].to(dev))
            graphs.append(zb)
            feats.append(zb.detach().float().cpu())
            if tick is not None:
                tick()
    except BaseException:
        acc.remove()
        raise
    return torch.cat(feats), graphs, acc


# --------------------------------------------------------------------------------------------------
# Variational (robust) estimator
# --------------------------------------------------------------------------------------------------


def _split_layers(vec: torch.Tensor, convs: list[tuple[str, nn.Conv2d]]) -> list[torch.Tensor]:
    """Cut a (D,) per-filter vector into one (O_l,) block per conv layer."""
    return list(torch.split(vec, [m.out_channels for _, m in convs]))


def _perturbed_fisher(net: nn.Module, convs: list[tuple[str, nn.Conv2d]], w_hat: list[torch.Tensor],
                      log_prec: list[torch.Tensor], xt: torch.Tensor, batch_size: int, dev: torch.device,
                      gen: torch.Generator, noise_gen: torch.Generator,
                      tick: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """Exact per-sample Fisher averaged over weights drawn from the posterior N(w_hat, Lambda^-1).

    One weight draw per batch (the draw of an odd batch is the negated draw of the batch before:
    antithetic pairs cancel the first-order change of the Fisher). Labels are sampled from the
    perturbed model. ``log_prec`` : per layer (O_l,) float64 log Lambda. Returns per layer (O_l,) float64.
    The conv weights are restored to ``w_hat`` before returning.
    """
    acc = _FisherAccumulator(net)
    std = [torch.exp(-0.5 * lp).to(device=dev, dtype=w.dtype).view(-1, 1, 1, 1) for lp, w in zip(log_prec, w_hat,
                                                                                                 strict=True)]
    delta: list[torch.Tensor] = []
    try:
        for b, i in enumerate(range(0, xt.shape[0], batch_size)):
            if b % 2 == 0:
                delta = [torch.randn(w.shape, generator=noise_gen, device=dev, dtype=w.dtype) * s
                         for w, s in zip(w_hat, std, strict=True)]
            sign = 1.0 if b % 2 == 0 else -1.0
            with torch.no_grad():
                for (_, m), w, d in zip(convs, w_hat, delta, strict=True):
                    m.weight.copy_(w + sign * d)
            logits = net(xt[i : i + batch_size].to(dev))
            F.cross_entropy(logits, _sample_labels(logits, gen), reduction="sum").backward()
            if tick is not None:
                tick()
    finally:
        acc.remove()
        with torch.no_grad():
            for (_, m), w in zip(convs, w_hat, strict=True):
                m.weight.copy_(w)
    return _split_layers(torch.from_numpy(acc.per_filter_mean(xt.shape[0])).double(), convs)


def _receptive_energy(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """Sum of the squared inputs each output sees: (B, C, H, W) -> (B, O, Ho, Wo), or (B, 1, Ho, Wo) when every
    filter sees all channels (groups = 1). The variance of a conv output under independent weight noise of unit
    variance, i.e. the sum of its squared derivatives w.r.t. its filter's weights; with G groups filter o sees
    only the C/G channels of its group."""
    groups = conv.groups
    ones = torch.ones(groups, conv.in_channels // groups, *conv.kernel_size, device=a.device, dtype=a.dtype)
    energy = F.conv2d(a * a, ones, None, conv.stride, conv.padding, conv.dilation, groups)  # (B, G, Ho, Wo)
    return energy.repeat_interleave(conv.out_channels // groups, dim=1) if groups > 1 else energy


def _sgvb_refine(net: nn.Module, convs: list[tuple[str, nn.Conv2d]], log_rel: list[torch.Tensor],
                 prior: list[torch.Tensor], xt: torch.Tensor, y: torch.Tensor, *, beta: float, epochs: int,
                 lr: float, batch_size: int, dev: torch.device, gen: torch.Generator,
                 tick: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """Stochastic variational refinement of the precision with the local reparameterisation trick.

    Minimises  mean CE(y | x, w) under w ~ N(w_hat, Lambda^-1)  +  beta/N sum_f |f| KL(N(0, 1/Lambda_f) ||
    N(0, 1/lambda2_f))  with Adam on r_f = log(Lambda_f / lambda2_f) >= 0 (the weights stay at w_hat).
    Local reparameterisation (Kingma et al. 2015): instead of drawing weights, the noise is drawn on
    each conv output, whose variance under independent weight noise is ``Lambda_o^-1 * conv(a^2, ones)``.
    For a convolution this draws independent noise per output position (a shared weight draw would
    correlate them): the paper's estimator, with that approximation.
    ``log_rel`` (starting point) and ``prior`` (lambda2): per layer (O_l,). Returns per layer (O_l,) r.
    """
    n = xt.shape[0]
    params = [r.detach().float().to(dev).clone().requires_grad_(True) for r in log_rel]
    neg_log_prior = [-torch.log(p).float().to(dev) for p in prior]
    sizes = [float(m.weight[0].numel()) for _, m in convs]  # weights per filter
    noise_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))

    def make_hook(i: int) -> Callable[..., torch.Tensor]:
        def hook(mod: nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            energy = _receptive_energy(mod, inputs[0])
            var = torch.exp(neg_log_prior[i] - params[i]).view(1, -1, 1, 1) * energy  # 1/Lambda * energy
            eps = torch.randn(out.shape, generator=noise_gen, device=out.device, dtype=out.dtype)
            return out + torch.sqrt(var.clamp_min(1e-30)) * eps

        return hook

    for prm in net.parameters():
        prm.requires_grad_(False)
    handles = [m.register_forward_hook(make_hook(i)) for i, (_, m) in enumerate(convs)]
    steps = max(1, epochs * math.ceil(n / batch_size))
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    try:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for j in range(0, n, batch_size):
                idx = perm[j : j + batch_size]
                ce = F.cross_entropy(net(xt[idx].to(dev)), y[idx].to(dev))
                # KL(N(0, 1/L) || N(0, 1/l2)) per weight = 0.5 (l2/L - 1 + log(L/l2)) = 0.5 (e^-r - 1 + r)
                kl = sum(s * 0.5 * (torch.exp(-r) - 1 + r).sum() for s, r in zip(sizes, params, strict=True))
                loss = ce + beta / n * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():  # the precision is kept at or above the prior's
                    for r in params:
                        r.clamp_(min=0.0)
                if tick is not None:
                    tick()
    finally:
        for h in handles:
            h.remove()
    return [r.detach().double().cpu() for r in params]


def _variational_fisher(net: nn.Module, xt: torch.Tensor, y: torch.Tensor, *, batch_size: int, epochs: int,
                        prior_scale: float, beta: float | None, solver: str, lr: float, dev: torch.device,
                        gen: torch.Generator, tick: Callable[[], None] | None = None) -> np.ndarray:
    """Posterior precision relative to the prior, Lambda_f / lambda2_f (D,), of the paper's objective.

    Objective (per filter f with |f| weights, N images): E_{w ~ N(w_hat, Lambda^-1)}[CE(w)]
    + beta/N sum_f |f| KL(N(0, 1/Lambda_f) || N(0, 1/lambda2_f)). Its stationarity condition is
    Lambda_f = lambda2_f + (2N / (beta |f|)) dE[CE]/d(1/Lambda_f), and by Price's theorem with the
    Gauss-Newton approximation of the Hessian (the GGN of the cross-entropy is the Fisher, whatever
    the labels) this is Lambda_f = lambda2_f + (N/beta) E_q[F_f(w)]: the prior plus the Fisher averaged
    over the posterior itself. Pass 1 evaluates the exact Fisher at w_hat (the Laplace solution); the
    ``epochs - 1`` further passes refine it with ``solver``: "sgvb" = stochastic gradient on the
    objective with the local reparameterisation trick (:func:`_sgvb_refine`, Adam with rate ``lr``);
    "fixed_point" = damped fixed-point iterations of the condition above (as in the precision update of
    VOGN, Khan et al. 2018, with the mean frozen at w_hat): the Fisher at weights drawn from the
    current posterior, log Lambda moved half-way to the new value.

    Prior: lambda2_f = prior_scale / mean_k(w_hat_fk^2), isotropic within each filter, on the scale of
    the filter's own weights (a conv followed by BatchNorm is unchanged when a filter is rescaled,
    and F_f * mean(w_f^2) is invariant to that rescaling, so the relative precision is too).
    ``beta=None`` means beta = N / (number of conv weights): the KL is counted per weight rather than
    per image, and (to second order) the weight noise at the optimum costs at most beta * W / (2N) = 1/2 nat
    of cross-entropy per image, whatever the size of the probe. Each perturbed pass uses at least
    ``_MIN_WEIGHT_DRAWS`` weight draws (smaller batches when N is small): with one draw per 64 images the
    seed-to-seed spread at N=120 was twice as large.
    """
    convs = _convs(net)
    w_hat = [m.weight.detach().clone() for _, m in convs]
    n = xt.shape[0]
    n_weights = sum(w.numel() for w in w_hat)
    beta_eff = float(beta) if beta is not None else n / max(1, n_weights)
    data_weight = n / beta_eff
    prior = [prior_scale / w.detach().double().cpu().pow(2).flatten(1).mean(1).clamp_min(_TINY_W2) for w in w_hat]
    fisher0 = _split_layers(torch.from_numpy(_montecarlo_fisher(net, xt, batch_size, dev, gen, tick)).double(), convs)
    if solver == "sgvb":
        log_rel = [torch.log1p(data_weight * f / p) for p, f in zip(prior, fisher0, strict=True)]
        if epochs > 1:
            log_rel = _sgvb_refine(net, convs, log_rel, prior, xt, y, beta=beta_eff, epochs=epochs - 1, lr=lr,
                                   batch_size=batch_size, dev=dev, gen=gen, tick=tick)
        return torch.cat([torch.exp(r) for r in log_rel]).numpy().astype(np.float32)
    log_prec = [torch.log(p + data_weight * f) for p, f in zip(prior, fisher0, strict=True)]
    noise_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    micro = max(1, min(batch_size, math.ceil(n / _MIN_WEIGHT_DRAWS)))  # >= _MIN_WEIGHT_DRAWS draws per pass
    units, micro_batches = math.ceil(n / batch_size), math.ceil(n / micro)
    done = 0

    def micro_tick() -> None:  # progress in units of ``batch_size`` images, whatever the micro-batch size
        nonlocal done
        done += 1
        if tick is not None and (done * units) // micro_batches > ((done - 1) * units) // micro_batches:
            tick()

    for _ in range(epochs - 1):
        done = 0
        fisher = _perturbed_fisher(net, convs, w_hat, log_prec, xt, micro, dev, gen, noise_gen, micro_tick)
        log_prec = [0.5 * lp + 0.5 * torch.log(p + data_weight * f)
                    for lp, p, f in zip(log_prec, prior, fisher, strict=True)]
    rel = torch.cat([torch.exp(lp - torch.log(p)) for lp, p in zip(log_prec, prior, strict=True)])
    return rel.numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def embed(
    model: nn.Module,
    spec: ProbeSpec,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    method: str = "montecarlo",
    max_samples: int | None = None,
    batch_size: int = 64,
    head_epochs: int = 20,
    head_lr: float = 0.01,
    head_weight_decay: float = 1e-3,
    var_epochs: int = 3,
    prior_scale: float = DEFAULT_PRIOR_SCALE,
    beta: float | None = DEFAULT_BETA,
    var_solver: str = DEFAULT_VAR_SOLVER,
    var_lr: float = 0.1,
    retain_bytes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> TaskEmbedding:
    """Task2Vec embedding of the labelled dataset (x, y) on the probe ``model``.

    Parameters
    ----------
    model : a ProbeNet (``features`` + ``fc``); deep-copied, never modified.
    spec : how to adapt the images to the probe (size, channels, normalisation).
    x : (N, C, H, W) float32 in [0, 1], C = 1 or 3, any H, W.
    y : (N,) integer labels (any K distinct values; remapped to 0..K-1, the embedding does not
        depend on the naming of the classes).
    method : "montecarlo" (exact per-sample Fisher, sampled labels) or "variational" (robust estimator).
    max_samples : class-balanced seeded subsample of this size when N is larger.
    batch_size : images per forward/backward pass (does not change the montecarlo scale).
    head_epochs, head_lr, head_weight_decay : training of the linear head on frozen features.
    var_epochs, prior_scale, beta, var_solver, var_lr : variational estimator: passes over the data (the
        first is the exact Fisher at the probe's weights, each further one refines the posterior with
        ``var_solver``, "sgvb" with Adam rate ``var_lr`` or "fixed_point"), prior precision
        lambda2_f = prior_scale / mean(w_f^2), KL weight beta (None: N / number of conv weights).
        See the module docstring.
    retain_bytes : montecarlo only: when the autograd graphs of all N images fit in this many bytes, the
        features pass keeps them and the Fisher pass starts from there (one forward pass fewer, same
        result exactly); otherwise the network runs forward twice. 0 disables; None (default): a quarter
        of the memory available on the device, at most 1 GiB.
    progress : called with (done, total) work units.

    Returns
    -------
    TaskEmbedding with ``vector`` (D,) float32, D = number of probe filters.
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise TaskregError(f"unknown Task2Vec method {method!r}; choose one of {', '.join(METHODS)}")
    for name, v in (("batch_size", batch_size), ("head_epochs", head_epochs), ("var_epochs", var_epochs)):
        if int(v) < 1:
            raise TaskregError(f"{name} must be >= 1, got {v}")
    if not (math.isfinite(prior_scale) and prior_scale > 0):
        raise TaskregError(f"prior_scale must be a positive number, got {prior_scale}")
    if var_solver not in VAR_SOLVERS:
        raise TaskregError(f"unknown variational solver {var_solver!r}; choose one of {', '.join(VAR_SOLVERS)}")
    if not (math.isfinite(var_lr) and var_lr > 0):
        raise TaskregError(f"var_lr must be a positive number, got {var_lr}")
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise TaskregError(f"beta must be a positive number or None, got {beta}")
    if not hasattr(model, "features") or not hasattr(model, "fc"):
        raise TaskregError("model must be a probe with .features(x) and an .fc head (see taskreg.embedders.probes)")
    dev = to_device(device)
    n, y_np = _validate_xy(x, y)
    idx = balanced_subsample(y_np, max_samples, seed)
    classes, y_idx = np.unique(y_np[idx], return_inverse=True)
    k = len(classes)
    x_sel = x[torch.as_tensor(idx)] if isinstance(x, torch.Tensor) else np.asarray(x)[idx]
    xt = adapt_inputs(x_sel, spec).cpu()
    yt = torch.as_tensor(y_idx.reshape(-1), dtype=torch.int64)
    m = xt.shape[0]

    n_batches = math.ceil(m / batch_size)
    fisher_units = n_batches if method == "montecarlo" else var_epochs * n_batches
    total_units = n_batches + head_epochs + fisher_units
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total_units), total_units)

    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).to(dev).eval()
    kept = None
    if method == "montecarlo":
        budget = _available_bytes(dev) // 4 if retain_bytes is None else int(retain_bytes)
        kept = _features_keeping_graphs(net, xt, batch_size, dev, min(budget, _RETAIN_CAP), tick)
    z = kept[0] if kept is not None else _features(net, xt, batch_size, dev, tick)
    head, acc, loss = _train_head(z, yt, k, epochs=head_epochs, lr=head_lr, weight_decay=head_weight_decay,
                                  batch_size=256, gen=gen)
    done += head_epochs - 1
    tick()
    net.fc = head.to(dev)
    if method == "montecarlo":
        vec = _montecarlo_fisher(net, xt, batch_size, dev, gen, tick, kept=None if kept is None else kept[1:])
    else:
        vec = _variational_fisher(net, xt, yt, batch_size=batch_size, epochs=var_epochs, prior_scale=prior_scale,
                                  beta=beta, solver=var_solver, lr=var_lr, dev=dev, gen=gen, tick=tick)
    vec = np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return TaskEmbedding(
        vector=vec, method=method, arch=str(getattr(model, "arch", type(model).__name__)), n_samples=m,
        n_classes=k, seed=seed, layout=fisher_layout(net), head_train_accuracy=acc, head_train_loss=loss,
        seconds=time.perf_counter() - t_start, mean_features=z.mean(0).numpy().astype(np.float32),
    )


def trivial_embedding(
    layout_or_model: Sequence[tuple[str, int]] | nn.Module,
    method: str,
    *,
    spec: ProbeSpec | None = None,
    n_classes: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embedding t0 of a task without information, used by ``d_asym`` (see the module docstring).

    * variational: the prior, i.e. 1 in every coordinate (the embedding is the posterior precision
      relative to the prior precision; needs only the layout or the model).
    * montecarlo: the exact Fisher of the fixed "noise task" of the probe (needs the model and spec):
      ``TRIVIAL_N`` uniform-noise images, labels sampled from a seeded random linear head.

    Returns (D,) float32.
    """
    if method not in METHODS:
        raise TaskregError(f"unknown Task2Vec method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "variational":
        layout = fisher_layout(layout_or_model) if isinstance(layout_or_model, nn.Module) else layout_or_model
        d = sum(int(c) for _, c in layout)
        if d == 0:
            raise TaskregError("the probe layout has no filters")
        return np.ones(d, dtype=np.float32)
    if not isinstance(layout_or_model, nn.Module) or spec is None:
        raise TaskregError("the montecarlo trivial embedding needs the probe model and its ProbeSpec")
    dev = to_device(device)
    gen = torch.Generator().manual_seed(seed)
    s = int(spec.input_size)
    noise = torch.rand(TRIVIAL_N, spec.in_chans, s, s, generator=gen)
    xt = adapt_inputs(noise, spec)
    net = copy.deepcopy(layout_or_model).to(dev).eval()
    z = _features(net, xt, batch_size, dev)
    head = nn.Linear(z.shape[1], n_classes)
    with torch.no_grad():
        w = torch.randn(n_classes, z.shape[1], generator=gen)
        zc = z - z.mean(0)
        scale = (zc @ w.T).std().clamp_min(_EPS)  # logits of unit standard deviation
        head.weight.copy_(w / scale)
        head.bias.copy_(-(head.weight @ z.mean(0)))
    net.fc = head.to(dev)
    return _montecarlo_fisher(net, xt, batch_size, dev, gen)


@torch.no_grad()
def domain_embedding(
    model: nn.Module,
    spec: ProbeSpec,
    x: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Baseline "domain embedding": mean probe features over the images (ignores the labels).

    x : (N, C, H, W) float in [0, 1]. Returns (feature_dim,) float32.
    """
    if int(batch_size) < 1:
        raise TaskregError(f"batch_size must be >= 1, got {batch_size}")
    dev = to_device(device)
    xt = adapt_inputs(x, spec)
    net = copy.deepcopy(model).to(dev).eval()
    return _features(net, xt, batch_size, dev).mean(0).numpy().astype(np.float32)
