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
    # l2 "auto": 20 cross-validation fits + the final one per call, so few epochs (the loss still drops ~1e4x)
    m2v = fit_model2vec(tv, np.zeros_like(tv), partial, t0=tv.mean(0), epochs=50, seed=0)
    assert m2v.n_tasks_used == len(PAIRS) - 1
    assert np.isfinite(m2v.vectors).all() and (m2v.vectors > 0).all()
    assert m2v.loss_history[-1] < m2v.loss_history[0]
    again = fit_model2vec(tv, np.zeros_like(tv), partial, t0=tv.mean(0), epochs=50, seed=0)
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
    m2v = fit_model2vec(noisy, tv, errs, t0=tv.mean(0), epochs=50, seed=0)  # (same regrets and l2 as at 100 epochs)
    assert set(m2v.cv_regret) == set(L2_GRID) and all(r >= 0 for r in m2v.cv_regret.values())
    best = min(m2v.cv_regret.values())
    assert m2v.l2 == max(v for v, r in m2v.cv_regret.items() if r == best)
    fixed = fit_model2vec(noisy, tv, errs, t0=tv.mean(0), epochs=50, seed=0, l2=m2v.l2)
    assert np.array_equal(fixed.vectors, m2v.vectors) and fixed.cv_regret == {}
    few = fit_model2vec(tv[:3], tv, errors[:3], t0=tv.mean(0), epochs=50, seed=0)  # too few tasks to split
    assert few.cv_regret == {} and few.l2 == max(L2_GRID)


# ---- issue 14 item 3: experts whose training data you do not have (F_i unknown: m_i = b_i)

def two_clusters() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tasks of two clusters in an 8-D Task2Vec-like space (4 train + 1 held out each), t0, the experts' base
    rows and their errors on the training tasks. Experts: 0 trained on a task of A (best on A), 1 trained on
    a task of B (second on B), 2 F unknown and best on B, 3 F unknown and worst everywhere, 4 F unknown and
    never measured."""
    rng = np.random.default_rng(0)
    a = np.array([4.0, 3.0, 4.0, 3.0, 0.5, 0.4, 0.6, 0.5])
    ta, tb = a * rng.uniform(0.7, 1.4, (5, 8)), a[::-1] * rng.uniform(0.7, 1.4, (5, 8))
    tv = np.vstack([ta[:4], tb[:4]])
    base = np.zeros((5, 8))
    base[0], base[1] = ta[0], tb[0]
    errors = np.full((8, 5), np.nan)
    errors[:4, :4] = [0.10, 0.30, 0.40, 0.45]
    errors[4:, :4] = [0.40, 0.20, 0.10, 0.45]
    return tv, ta[4], tb[4], np.ones(8), base, errors


@pytest.mark.parametrize("l2", ["auto", 1e-2, 0.1, 1.0])
def test_an_expert_without_training_task_is_placed_by_its_measured_errors(l2: float | str) -> None:
    from taskreg.embedders.model2vec import BASIS_BIAS, BASIS_TASK_AND_BIAS, NO_EVIDENCE

    tv, held_a, held_b, t0, base, errors = two_clusters()
    # "auto" fits 20 cross-validation folds before the final fit: 100 epochs each (it picks l2 = 1.0 then, whose
    # 300-epoch fit is the case after it; at 300 epochs it picks 0.1)
    m2v = fit_model2vec(tv, base, errors, t0=t0, l2=l2, seed=0, epochs=100 if l2 == "auto" else 300)
    assert m2v.basis == [BASIS_TASK_AND_BIAS, BASIS_TASK_AND_BIAS, BASIS_BIAS, BASIS_BIAS, None]
    assert int(rank(held_b, m2v, t0)[0]) == 2  # the unknown-F expert best on B is first for a new task of B
    assert int(rank(held_a, m2v, t0)[0]) == 0  # ... and not for a task of A
    for q in (held_a, held_b, *tv):  # the generalist anchor does not put the always-worst expert first
        assert int(rank(q, m2v, t0)[0]) != 3
    # never measured, no training task: no vector (rather than the anchor), a reason, ranked last
    assert m2v.skipped == {4: NO_EVIDENCE} and "no measured test error" in NO_EVIDENCE
    assert np.isnan(m2v.vectors[4]).all() and np.isnan(m2v.biases[4]).all()
    assert m2v.fitted.tolist() == [True, True, True, True, False]
    assert np.isfinite(m2v.vectors[:4]).all() and (m2v.vectors[:4] > 0).all()
    assert int(rank(held_a, m2v, t0)[-1]) == 4 and int(rank(held_b, m2v, t0)[-1]) == 4


def test_the_anchor_of_an_unknown_training_task_is_the_mean_of_the_tasks_used() -> None:
    from taskreg.embedders.model2vec import BASIS_TASK, basis_of

    tv, _, _, t0, base, errors = two_clusters()
    errors[0, 1:] = np.nan  # task 0 has one measured expert: not used, so not in the mean
    base[4] = tv[5]  # known F, never measured: it stays at F_i (b_i = 0), like asymmetric Task2Vec
    m2v = fit_model2vec(tv, base, errors, t0=t0, epochs=1, lr=1e-9, l2=0.0, seed=0)  # (a step of 1e-9: the start)
    assert m2v.n_tasks_used == 7 and m2v.skipped == {}
    for i in (2, 3):
        assert np.allclose(m2v.vectors[i], tv[1:].mean(0), rtol=1e-5)
        assert np.array_equal(m2v.biases[i], m2v.vectors[i])  # m_i = b_i
    assert m2v.basis[4] == BASIS_TASK and np.allclose(m2v.vectors[4], tv[5], rtol=1e-5)
    full = fit_model2vec(tv, base, errors, t0=t0, l2=0.1, seed=0)
    # the form can be told from a stored vector and its bias alone (what `expert show` reads)
    assert [basis_of(full.vectors[i], full.biases[i]) for i in range(5)] == full.basis


def test_with_every_unknown_expert_unmeasured_the_fit_still_refuses_or_skips_clearly() -> None:
    tv, _, _, t0, base, errors = two_clusters()
    errors[:, 2:] = np.nan  # only the two experts with a training task are measured
    m2v = fit_model2vec(tv, base, errors, t0=t0, l2=0.1, seed=0)
    assert sorted(m2v.skipped) == [2, 3, 4] and m2v.basis[2:] == [None, None, None]
    assert rank(tv[0], m2v, t0).tolist()[2:] == [2, 3, 4]
    errors[:, 1] = np.nan  # one measured expert per task: nothing ranks experts against each other
    with pytest.raises(TaskregError, match="nothing to fit"):
        fit_model2vec(tv, base, errors, t0=t0)


def test_the_hand_written_d_sym_gradient_matches_autograd_of_the_formula() -> None:
    """_d_sym_t's forward equals d_sym written with broadcast tensors, and its backward passes gradcheck."""
    from taskreg.embedders.distances import d_sym
    from taskreg.embedders.model2vec import _d_sym_t

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(5, 9, dtype=torch.float64, generator=gen) + 1e-3
    b = (torch.rand(4, 9, dtype=torch.float64, generator=gen) + 1e-3).requires_grad_(True)
    got = _d_sym_t(a, b).detach().numpy()
    want = np.array([[d_sym(ai, bi) for bi in b.detach().numpy()] for ai in a.numpy()])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert torch.autograd.gradcheck(lambda m: _d_sym_t(a, m), (b,))
