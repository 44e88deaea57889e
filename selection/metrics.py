"""Model-selection metrics (Task2Vec, Achille et al. 2019, Sect. 4.2 and Table 1).

The ground truth is an error matrix ``errors`` of shape (T, E): the linear-probe test error of every
expert e on every query task t (see :func:`taskreg.trainers.experts.linear_probe_error`). A selection
method produces, per task, a *ranking*: expert indices ordered best first (it may list only the top M
candidates, e.g. those the Faiss index returned). Table 1 reports the oracle's mean error ("Optimal")
and, per method, the relative error increase of the expert it picks; we add top-k hit rates and a
weighted Kendall tau of the whole ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import weightedtau

from taskreg.errors import TaskregError

MIN_ORACLE_ERROR = 1e-3
"""Floor on the oracle error in the denominator of the relative error increase (see below)."""


def _vector(a: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise TaskregError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise TaskregError(f"{name} contains NaN or infinite values")
    return a


def _ranking(ranking: Sequence[int] | np.ndarray, n_experts: int, name: str = "ranking") -> np.ndarray:
    r = np.asarray(ranking)
    if r.ndim != 1 or r.size == 0 or not np.issubdtype(r.dtype, np.integer):
        raise TaskregError(f"{name} must be a non-empty list of expert indices, got {list(ranking)!r}")
    if r.min() < 0 or r.max() >= n_experts:
        raise TaskregError(f"{name} has expert indices outside 0..{n_experts - 1}: {r.tolist()}")
    if np.unique(r).size != r.size:
        raise TaskregError(f"{name} lists an expert twice: {r.tolist()}")
    return r


def relative_error_increase(
    chosen_error: Sequence[float] | np.ndarray,
    oracle_error: Sequence[float] | np.ndarray,
    *,
    min_oracle_error: float = MIN_ORACLE_ERROR,
) -> float:
    """Mean over tasks of ``(err_chosen - err_oracle) / err_oracle`` (Table 1's "+9.97%" is 0.0997).

    Zero oracle error: a task solved perfectly by some expert would divide by zero, so the denominator
    is ``max(err_oracle, min_oracle_error)`` (default 1e-3, i.e. 0.1% error). A perfect pick on such a
    task still contributes 0; a wrong pick contributes ``err_chosen / 1e-3`` — large, as it should be,
    but finite.

    chosen_error, oracle_error : (T,) errors in [0, 1].
    """
    chosen = _vector(chosen_error, "chosen_error")
    oracle = _vector(oracle_error, "oracle_error")
    if chosen.shape != oracle.shape:
        raise TaskregError(f"chosen_error {chosen.shape} and oracle_error {oracle.shape} differ in length")
    if min_oracle_error <= 0:
        raise TaskregError(f"min_oracle_error must be > 0, got {min_oracle_error}")
    return float(np.mean((chosen - oracle) / np.maximum(oracle, min_oracle_error)))


def topk_hit(ranking: Sequence[int] | np.ndarray, errors: Sequence[float] | np.ndarray, k: int) -> bool:
    """True if a best expert for the task is among the first ``k`` entries of ``ranking``.

    ranking : expert indices, best first (may be shorter than E). errors : (E,) that task's errors.
    Ties: every expert whose error equals the minimum counts as "the best".
    """
    err = _vector(errors, "errors")
    r = _ranking(ranking, err.size)
    if k < 1:
        raise TaskregError(f"k must be >= 1, got {k}")
    return bool((err[r[:k]] <= err.min()).any())


def weighted_kendall_tau(
    scores_pred: Sequence[float] | np.ndarray,
    errors_true: Sequence[float] | np.ndarray,
    *,
    higher_is_better: bool = False,
) -> float:
    """Weighted Kendall tau between a method's scores and the true errors of the E experts.

    ``scipy.stats.weightedtau`` (hyperbolic weights, additive) weighs disagreements among the *best*
    experts most. We feed it "goodness" on both sides — ``-errors_true`` and ``-scores_pred`` (distances,
    lower = better, the default) or ``scores_pred`` (``higher_is_better=True``, e.g. LogME) — so a
    perfect ranking gives +1 and a reversed one -1. Returns 0.0 when it is undefined (constant input).

    scores_pred, errors_true : (E,) with E >= 2.
    """
    scores = _vector(scores_pred, "scores_pred")
    err = _vector(errors_true, "errors_true")
    if scores.shape != err.shape:
        raise TaskregError(f"scores_pred {scores.shape} and errors_true {err.shape} differ in length")
    if scores.size < 2:
        raise TaskregError("weighted_kendall_tau needs at least 2 experts")
    goodness = scores if higher_is_better else -scores
    tau = weightedtau(-err, goodness).statistic
    return float(tau) if np.isfinite(tau) else 0.0


def ranking_to_scores(ranking: Sequence[int] | np.ndarray, n_experts: int) -> np.ndarray:
    """(E,) positions of a (possibly partial) ranking, lower = better; unranked experts tie last."""
    r = _ranking(ranking, n_experts)
    position = np.full(n_experts, float(r.size))
    position[r] = np.arange(r.size, dtype=np.float64)
    return position


def oracle_rankings(errors: np.ndarray) -> list[list[int]]:
    """The ground-truth ranking per task: experts by error, ties by index. errors (T, E) -> T lists."""
    errors = np.asarray(errors, dtype=np.float64)
    return [np.argsort(row, kind="stable").tolist() for row in errors]


def chance_relative_error_increase(errors: np.ndarray) -> float:
    """Expected relative error increase of picking an expert uniformly at random (Table 1 "Chance")."""
    errors = _errors(errors)
    return relative_error_increase(errors.mean(axis=1), errors.min(axis=1))


def _errors(errors: np.ndarray) -> np.ndarray:
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2 or errors.size == 0:
        raise TaskregError(f"errors must be a non-empty (tasks, experts) matrix, got shape {errors.shape}")
    if not np.isfinite(errors).all():
        raise TaskregError("errors contains NaN or infinite values")
    return errors


@dataclass(frozen=True)
class SelectionReport:
    """One method's row of the model-selection table (errors as fractions, not percent).

    mean_error : mean test error of the expert ranked first, over tasks.
    oracle_error : mean test error of the best expert per task (Table 1 "Optimal").
    relative_error_increase : mean over tasks of (chosen - oracle) / oracle (Table 1 "+x%").
    top1_rate, top3_rate : share of tasks whose best expert is ranked within the first 1 / 3.
    mean_weighted_tau : mean over tasks of :func:`weighted_kendall_tau` of the ranking positions
        (unranked experts tie last); tasks with a single expert are skipped (0.0 if none remain).
    """

    method: str
    n_tasks: int
    mean_error: float
    oracle_error: float
    relative_error_increase: float
    top1_rate: float
    top3_rate: float
    mean_weighted_tau: float


def evaluate_rankings(
    rankings: Mapping[str, Sequence[Sequence[int]]], errors: np.ndarray
) -> dict[str, SelectionReport]:
    """Score each method's per-task rankings against the error matrix.

    rankings : method name -> T rankings (expert indices, best first) in the row order of ``errors``.
    errors : (T, E) true test error of expert e on task t.
    """
    errors = _errors(errors)
    n_tasks, n_experts = errors.shape
    oracle = errors.min(axis=1)
    reports: dict[str, SelectionReport] = {}
    for method, per_task in rankings.items():
        if len(per_task) != n_tasks:
            raise TaskregError(f"method {method!r} has {len(per_task)} rankings for {n_tasks} tasks")
        checked = [_ranking(r, n_experts, f"{method} ranking {t}") for t, r in enumerate(per_task)]
        chosen = np.array([errors[t, r[0]] for t, r in enumerate(checked)])
        taus = [
            weighted_kendall_tau(ranking_to_scores(r, n_experts), errors[t])
            for t, r in enumerate(checked)
            if n_experts >= 2
        ]
        reports[method] = SelectionReport(
            method=method,
            n_tasks=n_tasks,
            mean_error=float(chosen.mean()),
            oracle_error=float(oracle.mean()),
            relative_error_increase=relative_error_increase(chosen, oracle),
            top1_rate=float(np.mean([topk_hit(r, errors[t], 1) for t, r in enumerate(checked)])),
            top3_rate=float(np.mean([topk_hit(r, errors[t], 3) for t, r in enumerate(checked)])),
            mean_weighted_tau=float(np.mean(taus)) if taus else 0.0,
        )
    return reports


@dataclass(frozen=True)
class Interval:
    """A statistic over tasks with its percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


BOOTSTRAP_DRAWS = 2000


def bootstrap(stat: Callable[[np.ndarray], float], n_tasks: int, *, draws: int = BOOTSTRAP_DRAWS,
              level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap over tasks: ``stat(idx)`` on all tasks and on ``draws`` resamples of them.

    stat : a function of an index array (T',) into the rows of the caller's (T, ...) data, e.g.
        ``lambda i: chosen[i].mean() / oracle[i].mean() - 1`` (the ratio of means) — resampling the same
        tasks for the numerator and the denominator keeps their pairing.
    n_tasks : T, drawn with replacement T at a time. Returns the statistic on every task and the
        ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of its resampled values.
    """
    if n_tasks < 1 or draws < 1 or not 0.0 < level < 1.0:
        raise TaskregError(f"bootstrap needs n_tasks >= 1, draws >= 1 and 0 < level < 1; got {n_tasks}, {draws}, "
                           f"{level}")
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n_tasks, n_tasks)) for _ in range(draws)], dtype=np.float64)
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(stat(np.arange(n_tasks))), float(low), float(high))
