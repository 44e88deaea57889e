"""Where should Model2Vec anchor an expert whose training task is unknown (F_i = 0)?

Run: .venv/bin/python benchmarks/model2vec_anchor_check.py   (about a minute on 2 cores; prints only)

The numbers quoted in the docstring of taskreg/embedders/model2vec.py. Twelve binary tasks from
scikit-learn's digits, embedded with a random-init cifar_resnet8 probe (montecarlo Task2Vec, its
trivial embedding t0); six experts are logistic regressions trained on the first six tasks (F_i known),
plus two experts with F_i unknown: one measured worst on every task (error 0.5), one best on the tasks
that contain a 1 or a 7 (error 0) and worst elsewhere.

1. Geometry of candidate anchors: d_sym from the anchor to each task and to t0, against the same
   distances of the tasks themselves.
2. Leave one task out: fit on eleven tasks with the unknown-F experts' anchor set to each candidate
   (given as their base row, which is the same fit), rank the experts for the held-out task, and report the
   mean regret of the top pick (its error minus the best) and how often the always-worst expert is first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from taskreg.embedders.distances import d_sym_many, pairwise_sym  # noqa: E402
from taskreg.embedders.model2vec import L2_GRID, fit_model2vec, rank  # noqa: E402
from taskreg.embedders.probes import create_model, default_spec  # noqa: E402
from taskreg.embedders.task2vec import embed, trivial_embedding  # noqa: E402

PAIRS = [(0, 1), (0, 6), (3, 8), (3, 5), (4, 9), (7, 1), (2, 7), (5, 6), (8, 9), (1, 4), (2, 3), (6, 9)]
N_KNOWN = 6


def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Task vectors (T, D), t0 (D,) and errors (T, N_KNOWN + 2)."""
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    torch.manual_seed(0)
    probe, spec = create_model("cifar_resnet8"), default_spec("cifar_resnet8")
    vecs, experts, tests = [], [], []
    for a, b in PAIRS:
        idx = np.flatnonzero((d.target == a) | (d.target == b))
        lab = (d.target[idx] == b).astype(np.int64)
        tr, te = idx[::2], idx[1::2]
        vecs.append(embed(probe, spec, images[tr][:60, None], lab[::2][:60], head_epochs=5).vector)
        experts.append(LogisticRegression(max_iter=500).fit(images[tr].reshape(len(tr), -1)[:, ::3], lab[::2]))
        tests.append((images[te].reshape(len(te), -1)[:, ::3], lab[1::2]))
    known = np.array([[1 - e.score(x, y) for e in experts[:N_KNOWN]] for x, y in tests])
    worst = np.full((len(PAIRS), 1), 0.5)
    ones_sevens = np.array([[0.0 if (1 in p or 7 in p) else 0.5] for p in PAIRS])
    t0 = trivial_embedding(probe, "montecarlo", spec=spec)
    return np.stack(vecs), t0, np.hstack([known, worst, ones_sevens])


def anchors(tv: np.ndarray) -> dict[str, np.ndarray]:
    mean = tv.mean(0)
    flat = np.full_like(mean, mean.mean())
    target = float(np.median(pairwise_sym(tv)[~np.eye(len(tv), dtype=bool)]))
    lo, hi = 0.0, 1.0  # log-interpolate mean -> flat until the median d_sym to the tasks is the tasks' own
    for _ in range(40):
        lam = (lo + hi) / 2
        m = np.exp((1 - lam) * np.log(np.maximum(mean, 1e-12)) + lam * np.log(flat))
        lo, hi = (lam, hi) if np.median(d_sym_many(m, tv)) < target else (lo, lam)
    return {"mean": mean, "geometric mean": np.exp(np.log(np.maximum(tv, 1e-12)).mean(0)), "flat": flat,
            "typical distance": m}


def main() -> None:
    tv, t0, errors = build()
    n_t = len(tv)
    tt = pairwise_sym(tv)[~np.eye(n_t, dtype=bool)]
    print(f"{n_t} tasks: d_sym between tasks {tt.min():.3f}-{tt.max():.3f}, "
          f"d_sym(task, t0) {d_sym_many(t0, tv).min():.3f}-{d_sym_many(t0, tv).max():.3f}")
    for name, a in anchors(tv).items():
        ds = d_sym_many(a, tv)
        print(f"  anchor {name:16s}: d_sym to the tasks {ds.min():.3f}-{ds.max():.3f}, "
              f"d_sym to t0 {d_sym_many(t0, a[None])[0]:.3f}")
    print("leave one task out: mean regret of the top pick / held-out tasks where the always-worst expert is first")
    for name in anchors(tv):
        cells = []
        for l2 in L2_GRID:
            regrets, worst_first = [], 0
            for h in range(n_t):
                keep = [i for i in range(n_t) if i != h]
                base = np.zeros((errors.shape[1], tv.shape[1]))
                base[:N_KNOWN] = tv[:N_KNOWN]
                base[N_KNOWN:] = anchors(tv[keep])[name]  # the anchor as a base row: the same fit
                fit = fit_model2vec(tv[keep], base, errors[keep], t0=t0, l2=l2, seed=0)
                top = int(rank(tv[h], fit, t0)[0])
                regrets.append(errors[h, top] - errors[h].min())
                worst_first += top == N_KNOWN
            cells.append(f"l2={l2:g}: {np.mean(regrets):.3f}/{worst_first}")
        print(f"  {name:16s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
