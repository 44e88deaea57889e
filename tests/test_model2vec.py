"""Tests of taskreg.embedders.model2vec on a small real example (binary digit tasks, pixel experts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from taskreg.embedders.model2vec import fit_model2vec, rank
from taskreg.embedders.probes import create_model, default_spec
from taskreg.embedders.task2vec import embed
from taskreg.errors import TaskregError

PAIRS = [(0, 1), (0, 6), (3, 8), (3, 5), (4, 9), (7, 1)]


@pytest.fixture(scope="module")
def example() -> tuple[np.ndarray, np.ndarray]:
    """Task2Vec vectors (T, D) of binary digit tasks and errors (T, E) of experts trained on each task."""
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    torch.manual_seed(0)
    probe = create_model("cifar_resnet8")
    spec = default_spec("cifar_resnet8")
    vecs, experts, tests = [], [], []
    for a, b in PAIRS:
        idx = np.flatnonzero((d.target == a) | (d.target == b))
        lab = (d.target[idx] == b).astype(np.int64)
        tr, te = idx[::2], idx[1::2]
        vecs.append(embed(probe, spec, images[tr][:60, None], lab[::2][:60], head_epochs=5).vector)
        experts.append(LogisticRegression(max_iter=500).fit(images[tr].reshape(len(tr), -1), lab[::2]))
        tests.append((images[te].reshape(len(te), -1), lab[1::2]))
    errors = np.array([[1.0 - e.score(xt, yt) for e in experts] for xt, yt in tests])
    return np.stack(vecs), errors


def test_fit_reduces_loss_and_ranks_best_expert_first(example) -> None:
    tv, errors = example
    t0 = tv.mean(0)
    m2v = fit_model2vec(tv, tv, errors, t0=t0, epochs=300, lr=0.05, l2=1e-3, seed=0)
    assert m2v.vectors.shape == tv.shape and (m2v.vectors > 0).all()
    assert np.allclose(m2v.biases, m2v.vectors - tv)
    assert m2v.loss_history[-1] < 0.5 * m2v.loss_history[0]
    for t in range(len(PAIRS)):
        best = set(np.flatnonzero(errors[t] == errors[t].min()))
        assert int(rank(tv[t], m2v, t0)[0]) in best, (t, errors[t])


def test_unknown_expert_tasks_and_missing_errors(example) -> None:
    tv, errors = example
    partial = errors.copy()
    partial[0, 2:] = np.nan
    partial[1, 1:] = np.nan  # task 1 has a single measured expert: skipped
    m2v = fit_model2vec(tv, np.zeros_like(tv), partial, t0=tv.mean(0), epochs=200, seed=0)
    assert m2v.n_tasks_used == len(PAIRS) - 1
    assert np.isfinite(m2v.vectors).all() and (m2v.vectors > 0).all()
    assert m2v.loss_history[-1] < m2v.loss_history[0]
    again = fit_model2vec(tv, np.zeros_like(tv), partial, t0=tv.mean(0), epochs=200, seed=0)
    assert np.array_equal(m2v.vectors, again.vectors)


def test_validation(example) -> None:
    tv, errors = example
    t0 = tv.mean(0)
    with pytest.raises(TaskregError, match="nothing to fit"):
        fit_model2vec(tv, tv, np.full_like(errors, np.nan), t0=t0)
    with pytest.raises(TaskregError, match="shape"):
        fit_model2vec(tv, tv, errors[:, :3], t0=t0)
    with pytest.raises(TaskregError, match="mismatch"):
        fit_model2vec(tv, tv[:, :10], errors, t0=t0)
    for bad in (-1.0, float("nan"), "best"):
        with pytest.raises(TaskregError, match="l2"):
            fit_model2vec(tv, tv, errors, t0=t0, l2=bad)


def test_auto_l2_is_chosen_by_held_out_regret(example) -> None:
    from taskreg.embedders.model2vec import L2_GRID

    tv, errors = example
    noisy = np.concatenate([tv, tv * np.random.default_rng(0).uniform(0.8, 1.25, tv.shape)])  # 12 tasks
    errs = np.concatenate([errors, errors])
    m2v = fit_model2vec(noisy, tv, errs, t0=tv.mean(0), epochs=100, seed=0)
    assert set(m2v.cv_regret) == set(L2_GRID) and all(r >= 0 for r in m2v.cv_regret.values())
    best = min(m2v.cv_regret.values())
    assert m2v.l2 == max(v for v, r in m2v.cv_regret.items() if r == best)
    fixed = fit_model2vec(noisy, tv, errs, t0=tv.mean(0), epochs=100, seed=0, l2=m2v.l2)
    assert np.array_equal(fixed.vectors, m2v.vectors) and fixed.cv_regret == {}
    few = fit_model2vec(tv[:3], tv, errors[:3], t0=tv.mean(0), epochs=50, seed=0)  # too few tasks to split
    assert few.cv_regret == {} and few.l2 == max(L2_GRID)
