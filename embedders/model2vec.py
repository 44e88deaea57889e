"""Model2Vec (Achille et al. 2019, Sect. 3.4): co-embed experts (models) with tasks for model selection.

Each expert i gets a vector ``m_i = F_i + b_i`` in Task2Vec space, where F_i is the Task2Vec embedding
of the task it was trained on (zeros if unknown) and b_i a learned "model bias". The biases are fit
so that the expert closest to a task in the asymmetric score is the one with the lowest error:

    p(best = j | t) = softmax_j( -d_asym(t, m_j) / tau ),   d_asym(t, m) = d_sym(t, m) - alpha d_sym(m, t0)

minimising the cross-entropy against the measured best expert of each training task (ties share the
target mass; experts without a measured error are masked out; tasks with fewer than two measured
experts are skipped). The temperature tau is learned as well.

Implementation notes
--------------------
* All embeddings are divided by one scalar (the mean of the task vectors) before fitting; d_sym and
  d_asym are invariant to a common scale, so this only conditions the optimisation.
* m_i is parameterised as ``exp(theta_i)`` so it stays strictly positive (d_sym needs m >= 0). It is
  initialised at F_i (entries clamped to >= 1e-6 of the mean scale) or, when F_i is unknown (all
  zeros), at the mean task vector, which is also the anchor of the ``l2`` penalty on log(m / anchor).

Experts whose training data you do not have
--------------------------------------------
A third-party checkpoint (an ImageNet network from the zoo, a colleague's weights) has no registered
training task, so F_i is unknown (a zero row of ``expert_base``): its vector is ``m_i = b_i``, placed by
its measured errors on the registered tasks alone. Each expert's ``basis`` in the result says which form
it has: ``F_i + b_i`` (training task and measured errors), ``b_i`` (measured errors only) or ``F_i``
(training task, no measured error on the tasks used: b_i stays 0, the same place as asymmetric Task2Vec).

The anchor of such an expert (its starting point and the target of the ``l2`` penalty) is the mean of
the task vectors used in the fit. Why that point (numbers from ``benchmarks/model2vec_anchor_check.py``:
12 binary digit tasks, a random-init cifar_resnet8 probe, leave one task out):

* it has no preference among the tasks: it is symmetric in them (any one registered task would claim
  F_i = that task), and its d_sym to each task varies little (0.21-0.28, against 0.28-0.48 between
  the tasks themselves);
* it lies inside the cone of the task vectors, where every known F_j lies, so d_sym and the complexity
  term of d_asym compare it with the other experts on one scale (d_sym to t0: 0.50, the tasks'
  0.52-0.61, so its complexity bonus alpha * d_sym(m, t0) is within 0.02 of theirs);
* the alternatives did worse or no better: a zero vector has no log (and d_sym 1 to every task); t0
  means "learnt nothing", the largest complexity penalty, the opposite of a generic ImageNet expert;
  a flat vector, or one interpolated towards it so that it sits at the typical task-to-task distance,
  missed the unknown-F expert that is best on a group of tasks (mean regret of the top pick 0.11-0.25
  and 0.06-0.25 over the l2 grid, against 0.06-0.13 for the mean); the geometric mean ties the mean on
  regret but put the always-worst expert first more often (up to 3 of 12 held-out tasks, the mean 1).

The price: the mean averages out each task's noise, so it is closer to every task than the tasks are
to each other, and an unknown-F expert starts as a generalist ranked first nearly everywhere; its
measured errors are what move it (an expert measured worst on every task still came first on 1 of the
12 held-out tasks for l2 >= 0.1). Hence an expert with unknown F_i and no measured error on any task
used gets no vector at all (``skipped``, with the reason ``NO_EVIDENCE``): the anchor would rank it
first on no evidence. ``rank`` puts skipped experts last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from taskreg.embedders.distances import d_asym_many
from taskreg.embedders.model2vec_basis import BASIS_BIAS, BASIS_TASK, BASIS_TASK_AND_BIAS, basis_of
from taskreg.embedders.probes import to_device
from taskreg.errors import TaskregError
from taskreg.progress import Progress

__all__ = ["BASIS_BIAS", "BASIS_TASK", "BASIS_TASK_AND_BIAS", "NO_EVIDENCE", "Model2Vec", "basis_of", "check_l2",
           "fit_model2vec", "rank"]

_REL_EPS = 1e-6
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
CV_FOLDS = 4
NO_EVIDENCE = ("no training task (F_i unknown) and no measured test error on any task used: nothing places it "
               "(measure it with `taskreg expert eval`)")


@dataclass
class Model2Vec:
    """Fitted expert embeddings.

    vectors : (E, D) float32, m_i = F_i + b_i (strictly positive); a row of NaN for a skipped expert.
    biases : (E, D) float32, b_i = m_i - F_i (NaN where skipped).
    loss_history : cross-entropy (data term) per epoch.
    basis : per expert, BASIS_TASK_AND_BIAS, BASIS_BIAS or BASIS_TASK; None where skipped.
    skipped : expert index -> why it has no vector (see the module docstring).
    """

    vectors: np.ndarray
    biases: np.ndarray
    loss_history: list[float] = field(default_factory=list)
    temperature: float = 1.0
    alpha: float = 0.15
    n_tasks_used: int = 0
    l2: float = 0.0
    cv_regret: dict[float, float] = field(default_factory=dict)  # mean held-out regret per l2 (l2="auto")
    basis: list[str | None] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def fitted(self) -> np.ndarray:
        """(E,) bool: the experts that have a vector."""
        return np.array([i not in self.skipped for i in range(self.vectors.shape[0])], dtype=bool)


def check_l2(l2: object) -> float | str:
    """``l2`` as fit_model2vec takes it: "auto" or a finite number >= 0 (returned as float); else TaskregError."""
    if l2 == "auto":
        return "auto"
    if isinstance(l2, int | float) and not isinstance(l2, bool) and np.isfinite(l2) and l2 >= 0:
        return float(l2)
    raise TaskregError(f"l2 must be a number >= 0 or 'auto', got {l2!r}")


class _DSym(torch.autograd.Function):
    """d_sym between every task row and every expert row, with the gradient for the experts only.

    Forward: tasks a (T, D) > 0 (constant), experts b (E, D) > 0 -> (T, E). With r = a / (a + b), d_sym's
    normalised vectors are r and 1 - r, so with P = sum r(1 - r), A = sum r^2, B = sum (1 - r)^2 it is
    1 - P / sqrt(A B). Since dr/db = -r / (a + b), the gradient is written out:
    dd/db = -cos * (1/P + 1/B - 2 r (1/P + 1/(2A) + 1/(2B))) * (-r / (a + b)), summed over tasks. Both passes
    loop over experts, so no (T, E, D) tensor or autograd graph of one is held: the generic autograd version
    spent 2.4 s a step on 80 tasks x 23 experts x 21k filters, almost all of it allocating those tensors.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n_t, n_e = a.shape[0], b.shape[0]
        p, aa, bb = (a.new_empty(n_t, n_e) for _ in range(3))
        for e in range(n_e):
            r = a / (a + b[e])
            r2 = (r * r).sum(1)
            p[:, e] = r.sum(1) - r2
            aa[:, e] = r2
            bb[:, e] = (1.0 - r).square_().sum(1)
        p, aa, bb = p.clamp_min(1e-30), aa.clamp_min(1e-30), bb.clamp_min(1e-30)
        cos = p / (aa * bb).sqrt()
        ctx.save_for_backward(a, b, p, aa, bb, cos)
        return 1.0 - cos

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        a, b, p, aa, bb, cos = ctx.saved_tensors  # type: ignore[attr-defined]
        g = grad * cos  # (T, E): -grad * -cos, the sign of dd = -dcos and of dr/db = -r/s
        c1 = g * (1.0 / p + 1.0 / bb)
        c2 = -2.0 * g * (1.0 / p + 0.5 / aa + 0.5 / bb)
        out = torch.empty_like(b)
        for e in range(b.shape[0]):
            s = a + b[e]
            r = a / s
            out[e] = ((c1[:, e, None] + c2[:, e, None] * r) * r / s).sum(0)
        return None, out


def _d_sym_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable (in b) d_sym between rows: a (T, D), b (E, D), both > 0 -> (T, E)."""
    out = _DSym.apply(a, b)
    assert isinstance(out, torch.Tensor)
    return out


def _check(name: str, arr: np.ndarray, ndim: int, *, allow_nan: bool = False) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != ndim:
        raise TaskregError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if allow_nan:
        if np.isinf(a).any():
            raise TaskregError(f"{name} contains infinite values")
    elif not np.isfinite(a).all():
        raise TaskregError(f"{name} contains NaN or infinite values")
    return a


def fit_model2vec(
    task_vectors: np.ndarray,
    expert_base: np.ndarray,
    errors: np.ndarray,
    *,
    t0: np.ndarray,
    alpha: float = 0.15,
    epochs: int = 300,
    lr: float = 0.05,
    l2: float | str = "auto",
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress = None,
) -> Model2Vec:
    """Learn Model2Vec expert embeddings.

    Parameters
    ----------
    task_vectors : (T, D) non-negative Task2Vec embeddings of the training tasks.
    expert_base : (E, D) Task2Vec embedding of each expert's training task (a zero row if unknown).
    errors : (T, E) test error of expert e on task t; NaN = not measured.
    t0 : (D,) trivial embedding; alpha : weight of the complexity term of d_asym.
    epochs, lr : full-batch Adam steps and learning rate.
    l2 : penalty on log(m / anchor), or "auto": chosen from ``L2_GRID`` by cross-validation over the
        tasks (see the module docstring; falls back to the grid's largest value below 2 folds' worth).
    progress : called with (Adam steps done, total steps): ``epochs`` for the fit, plus ``epochs`` per l2 value
        and fold of the cross-validation when ``l2="auto"``.

    Returns
    -------
    Model2Vec (its ``basis`` says each expert's form; an expert with F_i unknown and no measured error
    on the tasks used is in ``skipped``, with a NaN row). Raises TaskregError on bad shapes/values or if
    no task has two measured experts.
    """
    tv = _check("task_vectors", task_vectors, 2)
    eb = _check("expert_base", expert_base, 2)
    err = _check("errors", errors, 2, allow_nan=True)
    t0v = _check("t0", t0, 1)
    n_t, d = tv.shape
    n_e = eb.shape[0]
    if eb.shape[1] != d or t0v.shape[0] != d:
        raise TaskregError(f"dimension mismatch: task_vectors D={d}, expert_base D={eb.shape[1]}, t0 D={t0v.shape[0]}")
    if err.shape != (n_t, n_e):
        raise TaskregError(f"errors must have shape (T, E) = ({n_t}, {n_e}), got {err.shape}")
    if (tv < 0).any() or (eb < 0).any() or (t0v < 0).any():
        raise TaskregError("task_vectors, expert_base and t0 must be non-negative")
    l2 = check_l2(l2)
    if int(epochs) < 1 or not lr > 0:
        raise TaskregError(f"need epochs >= 1 and lr > 0; got {epochs}, {lr}")

    measured = ~np.isnan(err)
    keep = measured.sum(1) >= 2
    if not keep.any():
        raise TaskregError("nothing to fit: no task has test errors measured for at least two experts")
    scale = float(tv[keep].mean())
    if not scale > 0:
        raise TaskregError("nothing to fit: the task vectors are all zero")

    folds = min(CV_FOLDS, int(keep.sum()) // 2)
    steps = _Steps(progress, int(epochs) * (1 + (len(L2_GRID) * folds if l2 == "auto" and folds >= 2 else 0)))
    cv_regret: dict[float, float] = {}
    if l2 == "auto":
        cv_regret = _cv_regret(tv[keep], eb, err[keep], t0v, alpha=alpha, epochs=epochs, lr=lr, seed=seed,
                               device=device, steps=steps)
        best = min(cv_regret.values()) if cv_regret else 0.0
        l2 = max(v for v, r in cv_regret.items() if r <= best + 1e-12) if cv_regret else max(L2_GRID)
    fit = _fit(tv[keep], eb, err[keep], t0v, scale=scale, alpha=alpha, epochs=epochs, lr=lr, l2=float(l2), seed=seed,
               device=device, steps=steps)
    steps.finish()
    fit.n_tasks_used, fit.l2, fit.cv_regret = int(keep.sum()), float(l2), cv_regret
    known, evidence = eb.sum(1) > 0, measured[keep].any(0)
    fit.basis = [BASIS_TASK_AND_BIAS if k and m else BASIS_TASK if k else BASIS_BIAS if m else None
                 for k, m in zip(known, evidence, strict=True)]
    fit.skipped = {i: NO_EVIDENCE for i, b in enumerate(fit.basis) if b is None}
    for i in fit.skipped:  # no vector rather than the anchor, which would rank it first everywhere
        fit.vectors[i] = np.nan
        fit.biases[i] = np.nan
    return fit


class _Steps:
    """Counts optimisation steps over every fit of one :func:`fit_model2vec` call and reports them."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done = progress, max(1, total), 0
        if progress is not None:
            progress(0, self.total)

    def tick(self) -> None:
        self.done = min(self.done + 1, self.total)
        if self.progress is not None:
            self.progress(self.done, self.total)

    def finish(self) -> None:  # the cross-validation stopped early (a fold with all-zero vectors): report the end
        if self.progress is not None and self.done < self.total:
            self.done = self.total
            self.progress(self.done, self.total)


def _cv_regret(tv: np.ndarray, eb: np.ndarray, err: np.ndarray, t0v: np.ndarray, *, alpha: float, epochs: int,
               lr: float, seed: int, device: str | torch.device, steps: _Steps | None = None) -> dict[float, float]:
    """Mean held-out regret (error of the top-ranked measured expert minus the best error) per l2 in L2_GRID.

    tv (T, D), err (T, E) with at least two measured experts per row. Tasks are split into CV_FOLDS
    seeded folds; empty dict when there are too few tasks (fewer than 2 per fold).
    """
    n_t = tv.shape[0]
    folds = min(CV_FOLDS, n_t // 2)
    if folds < 2:
        return {}
    order = np.random.default_rng(seed).permutation(n_t)
    measured = ~np.isnan(err)
    best_err = np.where(measured, err, np.inf).min(1)
    out: dict[float, float] = {}
    for value in L2_GRID:
        regrets = np.zeros(n_t)
        for f in range(folds):
            held = order[f::folds]
            train = np.setdiff1d(order, held)
            scale = float(tv[train].mean())
            if not scale > 0:
                return {}
            fit = _fit(tv[train], eb, err[train], t0v, scale=scale, alpha=alpha, epochs=epochs, lr=lr, l2=value,
                       seed=seed, device=device, steps=steps)
            for t in held:
                scores = d_asym_many(tv[t], fit.vectors, t0v, alpha)
                scores = np.where(measured[t], scores, np.inf)
                regrets[t] = err[t, int(np.argmin(scores))] - best_err[t]
        out[value] = float(regrets.mean())
    return out


def _fit(tv: np.ndarray, eb: np.ndarray, err: np.ndarray, t0v: np.ndarray, *, scale: float, alpha: float,
         epochs: int, lr: float, l2: float, seed: int, device: str | torch.device,
         steps: _Steps | None = None) -> Model2Vec:
    """One fit on tasks tv (T, D) that all have >= 2 measured experts in err (T, E)."""
    measured = ~np.isnan(err)
    dev = to_device(device)
    torch.manual_seed(seed)
    tasks = torch.as_tensor(tv / scale, dtype=torch.float32, device=dev).clamp_min(0.0)
    t0_t = torch.as_tensor(t0v / scale, dtype=torch.float32, device=dev)
    mask = torch.as_tensor(measured, device=dev)
    err_k = np.where(measured, err, np.inf)
    best = err_k == err_k.min(axis=1, keepdims=True)
    target = torch.as_tensor(best / best.sum(1, keepdims=True), dtype=torch.float32, device=dev)

    mean_task = tv.mean(0) / scale
    known = eb.sum(1) > 0
    anchor = np.where(known[:, None], eb / scale, mean_task[None, :])
    anchor = np.maximum(anchor, _REL_EPS)
    log_anchor = torch.as_tensor(np.log(anchor), dtype=torch.float32, device=dev)
    theta = log_anchor.clone().requires_grad_(True)
    log_tau = torch.tensor(np.log(0.05), dtype=torch.float32, device=dev, requires_grad=True)
    opt = torch.optim.Adam([theta, log_tau], lr=lr)
    history: list[float] = []
    for _ in range(int(epochs)):
        m = theta.exp()
        score = _d_sym_t(tasks, m) - alpha * _d_sym_t(t0_t[None, :], m)  # (T, E) d_asym
        tau = log_tau.clamp(min=np.log(1e-3)).exp()
        logits = (-score / tau).masked_fill(~mask, float("-inf"))
        logp = torch.log_softmax(logits, dim=1).masked_fill(~mask, 0.0)
        ce = -(target * logp).sum(1).mean()
        loss = ce + l2 * (theta - log_anchor).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(ce.detach()))
        if steps is not None:
            steps.tick()

    vectors = (theta.detach().exp().cpu().numpy() * scale).astype(np.float32)
    return Model2Vec(
        vectors=vectors, biases=(vectors - eb).astype(np.float32), loss_history=history,
        temperature=float(log_tau.detach().clamp(min=np.log(1e-3)).exp()), alpha=float(alpha),
        n_tasks_used=int(tv.shape[0]), l2=float(l2),
    )


def rank(query: np.ndarray, model2vec: Model2Vec, t0: np.ndarray, alpha: float | None = None) -> np.ndarray:
    """Expert indices, best first, by ascending d_asym(query, m_j); skipped experts (no vector) last, in index
    order. query, t0 : (D,). Returns (E,) int64."""
    a = model2vec.alpha if alpha is None else alpha
    fitted = model2vec.fitted
    scores = np.full(fitted.shape[0], np.inf)
    if fitted.any():
        scores[fitted] = d_asym_many(query, model2vec.vectors[fitted], t0, a)
    return np.argsort(scores, kind="stable").astype(np.int64)
