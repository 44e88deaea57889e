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
    four exact forms per layer (see :func:`taskreg.embedders.task2vec_kernels.per_filter_sq_grad_sum`).
    Autograd only computes the gradients w.r.t. activations (the weights are frozen and the graph starts at the first
    conv's output, so not even the images' gradient is formed): the whole pass costs less than one forward+backward
    of ordinary training.
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
      independent weight noise would give (see :func:`taskreg.embedders.task2vec_variational._sgvb_refine`);
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

import numpy as np
import torch
from torch import nn

from taskreg.embedders.linear_head import train_head
from taskreg.embedders.probes import ProbeNet, ProbeSpec, adapt_inputs, to_device
from taskreg.embedders.task2vec_kernels import FisherAccumulator, feature_convs, montecarlo_fisher
from taskreg.embedders.task2vec_variational import (
    DEFAULT_BETA,
    DEFAULT_PRIOR_SCALE,
    DEFAULT_VAR_SOLVER,
    VAR_SOLVERS,
    variational_fisher,
)
from taskreg.embedders.task_embedding import TaskEmbedding
from taskreg.errors import TaskregError
from taskreg.progress import Progress

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
TRIVIAL_N = 256
# montecarlo: most memory the features pass may keep for the Fisher pass (see embed). Keeping saves a forward
# pass (-15% at 1,000 32x32 images on ResNet-18, 0.44 GB kept) but every kept byte is freshly allocated: at
# 5,000 images (2.2 GB) first-touch page faults cost as much as the forward pass saved, so beyond 1 GiB: no.
_RETAIN_CAP = 2**30
_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def fisher_layout(model: nn.Module) -> list[tuple[str, int]]:
    """[(conv weight name, n filters)] -- the coordinates of a Task2Vec vector for this probe."""
    return [(f"{n}.weight", int(m.out_channels)) for n, m in feature_convs(model)]


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
def probe_features(model: nn.Module, xt: torch.Tensor, batch_size: int, dev: torch.device,
              tick: Callable[[], None] | None = None) -> torch.Tensor:
    """Frozen probe features. xt : (N, 3, S, S) adapted -> (N, D) float32 on CPU."""
    out = []
    for i in range(0, xt.shape[0], batch_size):
        out.append(model.features(xt[i : i + batch_size].to(dev)).float().cpu())  # type: ignore[operator]
        if tick is not None:
            tick()
    return torch.cat(out)


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


def features_keeping_graphs(net: nn.Module, xt: torch.Tensor, batch_size: int, dev: torch.device,
                             budget: int, tick: Callable[[], None] | None = None
                             ) -> tuple[torch.Tensor, list[torch.Tensor | None], FisherAccumulator] | None:
    """The features pass of the montecarlo estimator with the autograd graphs of as many batches as fit kept.

    The Fisher pass then starts each kept batch from its graph-carrying features (head, sampled labels, backward)
    instead of running the network forward a second time; the batches whose graphs did not fit (``None`` in the
    returned list) run forward again there. Returns (features (N, D) on CPU, per-batch graph-carrying features or
    None, the hooked accumulator), or None -- nothing kept -- when not even one batch's graph fits in ``budget``
    bytes (the distinct activation storages autograd saves, weights excluded; ResNet-18 at 32x32: 442 KB per
    image; EfficientNet-Lite0 at 128 px: 24.7 MiB). The first batch's size is measured on one image, so a budget
    that holds nothing costs one image's forward pass, not a batch's; later batches are kept while the bytes
    actually saved so far plus one more batch stay within the budget, so the split is the same on every run.
    """
    if budget <= 0 or type(net).forward is not ProbeNet.forward:
        return None
    for prm in net.parameters():
        prm.requires_grad_(False)
    acc = FisherAccumulator(net)
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
            # its graph is dropped unused; BatchNorm in eval: images independent
            net.features(xt[:1].to(dev))  # type: ignore[operator]
        per_image, saved = saved, 0
        if per_image * min(batch_size, n) > budget:
            acc.remove()
            return None
        for i in range(0, n, batch_size):
            xb = xt[i : i + batch_size].to(dev)
            if saved + per_image * xb.shape[0] <= budget:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    zb = net.features(xb)  # type: ignore[operator]
                graphs.append(zb)
            else:  # no room: features only, this batch runs forward again in the Fisher pass
                with torch.no_grad():
                    zb = net.features(xb)  # type: ignore[operator]
                graphs.append(None)
            feats.append(zb.detach().float().cpu())
            if tick is not None:
                tick()
    except BaseException:
        acc.remove()
        raise
    return torch.cat(feats), graphs, acc


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
    progress: Progress = None,
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
        kept = features_keeping_graphs(net, xt, batch_size, dev, min(budget, _RETAIN_CAP), tick)
    z = kept[0] if kept is not None else probe_features(net, xt, batch_size, dev, tick)
    head, acc, loss = train_head(z, yt, k, epochs=head_epochs, lr=head_lr, weight_decay=head_weight_decay,
                                  batch_size=256, gen=gen)
    done += head_epochs - 1
    tick()
    net.fc = head.to(dev)
    if method == "montecarlo":
        vec = montecarlo_fisher(net, xt, batch_size, dev, gen, tick, kept=None if kept is None else kept[1:])
    else:
        vec = variational_fisher(net, xt, yt, batch_size=batch_size, epochs=var_epochs, prior_scale=prior_scale,
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
    z = probe_features(net, xt, batch_size, dev)
    head = nn.Linear(z.shape[1], n_classes)
    with torch.no_grad():
        w = torch.randn(n_classes, z.shape[1], generator=gen)
        zc = z - z.mean(0)
        scale = (zc @ w.T).std().clamp_min(_EPS)  # logits of unit standard deviation
        head.weight.copy_(w / scale)
        head.bias.copy_(-(head.weight @ z.mean(0)))
    net.fc = head.to(dev)
    return montecarlo_fisher(net, xt, batch_size, dev, gen)


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
    return probe_features(net, xt, batch_size, dev).mean(0).numpy().astype(np.float32)
