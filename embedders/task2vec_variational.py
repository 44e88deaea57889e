"""The variational (robust) Task2Vec estimator of Achille et al. (2019): the posterior precision of the probe's
conv weights relative to the prior, per filter (:func:`variational_fisher`), refined by stochastic variational
inference with the local reparameterisation trick (``sgvb``) or by damped fixed-point steps (``fixed_point``).
The objective, the scale choices and the defaults are described in the docstring of
:mod:`taskreg.embedders.task2vec`, which calls :func:`variational_fisher` from ``embed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskreg.embedders.task2vec_kernels import FisherAccumulator, feature_convs, montecarlo_fisher, sample_labels

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_PRIOR_SCALE",
    "DEFAULT_VAR_SOLVER",
    "VAR_SOLVERS",
    "receptive_energy",
    "variational_fisher",
]

DEFAULT_PRIOR_SCALE = 1.0  # lambda2_f = scale / mean(w_f^2): prior weight-noise std = the filter's RMS weight
DEFAULT_BETA: float | None = None  # None: beta = N / (number of conv weights), see variational_fisher
VAR_SOLVERS = ("sgvb", "fixed_point")
DEFAULT_VAR_SOLVER = "sgvb"
_TINY_W2 = 1e-30
_MIN_WEIGHT_DRAWS = 16  # weight draws per perturbed pass (one per batch; smaller batches if N is small)


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
    acc = FisherAccumulator(net)
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
            F.cross_entropy(logits, sample_labels(logits, gen), reduction="sum").backward()
            if tick is not None:
                tick()
    finally:
        acc.remove()
        with torch.no_grad():
            for (_, m), w in zip(convs, w_hat, strict=True):
                m.weight.copy_(w)
    return _split_layers(torch.from_numpy(acc.per_filter_mean(xt.shape[0])).double(), convs)


def receptive_energy(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
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
            energy = receptive_energy(mod, inputs[0])
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


def variational_fisher(net: nn.Module, xt: torch.Tensor, y: torch.Tensor, *, batch_size: int, epochs: int,
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
    convs = feature_convs(net)
    w_hat = [m.weight.detach().clone() for _, m in convs]
    n = xt.shape[0]
    n_weights = sum(w.numel() for w in w_hat)
    beta_eff = float(beta) if beta is not None else n / max(1, n_weights)
    data_weight = n / beta_eff
    prior = [prior_scale / w.detach().double().cpu().pow(2).flatten(1).mean(1).clamp_min(_TINY_W2) for w in w_hat]
    fisher0 = _split_layers(torch.from_numpy(montecarlo_fisher(net, xt, batch_size, dev, gen, tick)).double(), convs)
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
