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
    m2v = fit_model2vec(tv, tv, errors, t0=t0, epochs=300, lr=0.05, seed=0)
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
