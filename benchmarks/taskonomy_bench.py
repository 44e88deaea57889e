"""Taskonomy decision-layer benchmark: BIP solve times, the Fig. 11 significance test, data checks.

Run: ``.venv/bin/python benchmarks/taskonomy_bench.py`` (about a few minutes on 2 cores).

Sections (each a function, ``main`` runs them in order):

* :func:`bip_timing` - seconds to solve the BIP on ``taskonomy-16k`` for budgets 1..26 and max order
  1..4, with each order's total time as a ratio to the max-order-1 baseline of the same run.
* :func:`significance_test` - the paper's Fig. 11: the BIP policy's Quality (mean win rate vs. the
  fully supervised networks, ``winrate_vs_task_16k``) and Gain (vs. scratch) against 1,000 random
  feasible policies at the same budget and max order.
* :func:`data_checks` - properties of the published tables and of the policies they produce.
* :func:`build_timing` - end-to-end ``taskonomy build`` of the built-in dictionary in a fresh registry
  (stage by stage), then the same command again (everything reused).
* :func:`caching_speedup` - transfer jobs trained on cached frozen representations against the same
  jobs re-running the source encoders inside each job, in the same process.

``--build`` runs only the two pipeline sections, ``--bip`` only the decision-layer ones.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from taskreg.selection.affinity_sets import BUILTIN_SETTINGS, builtin_affinity, builtin_winrates
from taskreg.selection.bip import evaluate_policy, minimum_budget, random_feasible_policies, solve_policy

AFFINITY = "taskonomy-16k"


def bip_timing(name: str = AFFINITY, budgets: range = range(1, 27), orders: range = range(1, 5)) -> np.ndarray:
    """Solve time in seconds (wall clock, CBC included) as a (len(budgets), len(orders)) array."""
    aff = builtin_affinity(name)
    secs = np.zeros((len(budgets), len(orders)))
    objs = np.zeros_like(secs)
    for i, b in enumerate(budgets):
        for j, k in enumerate(orders):
            t0 = time.perf_counter()
            pol = solve_policy(aff, b, max_order=k)
            secs[i, j] = time.perf_counter() - t0
            objs[i, j] = pol.objective
            assert pol.status == "optimal"
    print(f"\n== BIP solve time on {name} (seconds; objective in brackets) ==")
    print("budget " + "".join(f"   order<={k:<14d}" for k in orders))
    for i, b in enumerate(budgets):
        print(f"{b:6d} " + "".join(f"  {secs[i, j]:6.3f} [{objs[i, j]:6.3f}]  " for j in range(len(orders))))
    base = secs[:, 0].sum()
    print("total  " + "".join(f"  {secs[:, j].sum():6.2f}s            " for j in range(len(orders))))
    print("ratio vs order 1: " + ", ".join(f"order<={k}: {secs[:, j].sum() / base:.2f}x"
                                           for j, k in enumerate(orders)))
    print(f"median per solve: {np.median(secs):.3f}s, max: {secs.max():.3f}s")
    return secs


def significance_test(
    name: str = AFFINITY,
    budgets: tuple[int, ...] = (2, 4, 8, 12, 16),
    max_orders: tuple[int, ...] = (1, 4),
    n_random: int = 1000,
    seed: int = 0,
) -> None:
    """Quality/Gain of the BIP policy vs. ``n_random`` random feasible policies (paper Fig. 11)."""
    aff = builtin_affinity(name)
    quality_table = builtin_winrates(name, vs="task")
    gain_table = builtin_winrates(name, vs="pixels")
    rng = np.random.default_rng(seed)
    print(f"\n== Significance test (Fig. 11) on {name}: BIP policy vs {n_random} random feasible policies ==")
    print("Quality = mean over the 22 targets of the win rate vs. the fully supervised network (self = 0.5);")
    print("Gain = mean win rate vs. a network trained from scratch on the same 16k images.")
    print(f"{'order':>5} {'budget':>6} {'BIP Q':>7} {'rand Q mean':>11} {'rand Q max':>10} {'Q beaten':>9} "
          f"{'BIP G':>7} {'rand G mean':>11} {'G beaten':>9} {'AHP beaten':>10} {'sec':>6}")
    for k in max_orders:
        for b in budgets:
            t0 = time.perf_counter()
            best = solve_policy(aff, b, max_order=k)
            q_best = float(np.mean(list(evaluate_policy(best, quality_table).values())))
            g_best = float(np.mean(list(evaluate_policy(best, gain_table).values())))
            q_rand, g_rand, o_rand = [], [], []
            for pol in random_feasible_policies(aff, b, n_random, rng, max_order=k):
                q_rand.append(np.mean(list(evaluate_policy(pol, quality_table).values())))
                g_rand.append(np.mean(list(evaluate_policy(pol, gain_table).values())))
                o_rand.append(pol.objective)
            q_rand_a, g_rand_a = np.array(q_rand), np.array(g_rand)
            print(f"{k:5d} {b:6d} {q_best:7.3f} {q_rand_a.mean():11.3f} {q_rand_a.max():10.3f} "
                  f"{np.mean(q_rand_a < q_best):9.1%} {g_best:7.3f} {g_rand_a.mean():11.3f} "
                  f"{np.mean(g_rand_a < g_best):9.1%} {np.mean(np.array(o_rand) < best.objective):10.1%} "
                  f"{time.perf_counter() - t0:6.1f}")
    print("('beaten' = fraction of random policies strictly worse than the BIP policy; 'AHP beaten' uses the")
    print(" BIP's own objective, the sum of AHP affinities, which the BIP maximises by construction.)")


def data_checks() -> None:
    """Print properties of the published tables and of the policies they produce."""
    print("\n== Data checks ==")
    for name in BUILTIN_SETTINGS:
        aff = builtin_affinity(name)
        sums = [sum(o.value for o in aff.options_for(t)) for t in aff.targets]
        beat_self = [t for t in aff.targets
                     if max(o.value for o in aff.options_for(t) if not o.is_self) > aff.value(["self"], t)]
        weak_self = sorted((aff.value(["self"], t), t) for t in aff.targets)[:3]
        non_target_sources = sorted(set(aff.tasks) - set(aff.targets) - set(aff.source_only))
        print(f"{name}: {len(aff.transfers)} rows, {len(aff.targets)} targets, {len(aff.tasks)} tasks, "
              f"max order {aff.max_order}; per-target sums in [{min(sums):.6f}, {max(sums):.6f}]")
        print(f"  sources that are neither targets nor source-only (cost 1 like any task): {non_target_sources}")
        print(f"  targets where some transfer has higher p than the supervised network: {beat_self}")
        print("  weakest self affinities: " + ", ".join(f"{t} {v:.2g}" for v, t in weak_self))
        print(f"  minimum budget: {minimum_budget(aff):g} (every task trained from scratch costs 1, the paper's "
              f"convention); {minimum_budget(aff, free_source_only=True):g} with free source-only tasks")
        n = len(aff.tasks)
        for k in sorted({1, 2, min(4, aff.max_order)}):
            full = solve_policy(aff, n, max_order=k)
            both = sorted(set(full.supervised) & {tr.target for tr in full.transfers})
            print(f"  budget {n}, max order {k}: supervises {len(full.supervised)} tasks, "
                  f"{len(full.transfers)} targets by transfer {[tr.target for tr in full.transfers]}, "
                  f"supervised-but-transferred {both}")
        small = [solve_policy(aff, b, max_order=2) for b in (1, 2, 3, 5)]
        print("  first picks (order<=2): " + "; ".join(f"b={p.budget:g}: {p.supervised}" for p in small))
        paper = solve_policy(aff, 26, max_order=2)
        free = solve_policy(aff, 26, max_order=2, free_source_only=True)
        print(f"  budget 26, paper convention (the default): cost {paper.cost:g}, supervised {len(paper.supervised)}, "
              f"source-only used {paper.source_only_used}; with --free-source-only: objective "
              f"{free.objective:.4f} vs {paper.objective:.4f}")


def build_timing(root: Path, *, n_images: int, max_order: int, executor: str) -> None:
    """Wall time of `taskonomy build` on the built-in dictionary, by stage, then of a resumed re-run."""
    from taskreg.registry import Registry

    reg = Registry.init(root)
    print(f"\n## taskonomy build (builtin, {n_images} images, max order {max_order}, executor {executor})")
    for attempt in ("first run", "second run (resume)"):
        t0 = time.perf_counter()
        rep = reg.taskonomy_build("builtin", max_order=max_order, executor=executor, n_images=n_images,
                                  register_experts=False)
        total = time.perf_counter() - t0
        stages = ", ".join(f"{k} {v:.1f}s ({rep.jobs_run.get(k, '-')} trained)" for k, v in rep.seconds.items())
        print(f"  {attempt}: {total:.1f}s — {stages}")


def caching_speedup(n_jobs: int = 24, n_images: int = 960) -> None:
    """Seconds for the same first-order transfer jobs with cached features vs re-encoding inside each job."""
    from taskreg.trainers import transfer as tr
    from taskreg.trainers.taskonomy_dictionary import DictionaryRef

    d = DictionaryRef("builtin", n_images=n_images).load()
    sources = [s for s in d.source_names if d.task(s).trainable][:4]
    nets = {s: tr.train_task_network(d, s, epochs=2) for s in sources}
    targets = d.target_names
    jobs = [(s, t) for t in targets for s in sources if s != t][:n_jobs]
    frac = tr.TRAIN_FRACTION

    t0 = time.perf_counter()
    cache = {(s, d.task(t).input_key): tr.encode_for_transfers(nets[s].encoder, d, d.task(t).input_key)
             for s, t in jobs}
    for s, t in jobs:
        tr.train_transfer([cache[(s, d.task(t).input_key)]], d, t, sources=(s,), train_fraction=frac, epochs=5)
    cached = time.perf_counter() - t0

    t0 = time.perf_counter()
    for s, t in jobs:  # the naive pipeline: every job runs its frozen encoder over the whole dictionary
        feats = tr.encode(nets[s].encoder, d.input_of(t))
        tr.train_transfer([feats], d, t, sources=(s,), train_fraction=frac, epochs=5)
    naive = time.perf_counter() - t0
    encode_only = sum(
        _timed(lambda s=s, t=t: tr.encode(nets[s].encoder, d.input_of(t))) for s, t in jobs[: min(6, len(jobs))]
    ) / min(6, len(jobs))
    print(f"\n## feature caching ({len(jobs)} first-order jobs, {len(cache)} cached representations, "
          f"{n_images} images)")
    print(f"  cached: {cached:.1f}s   re-encoding in every job: {naive:.1f}s   speed-up {naive / cached:.2f}x")
    print(f"  one full encoder pass: {encode_only:.2f}s; the pipeline encodes each (source, input) once instead "
          f"of once per transfer (a source feeds up to {len(targets)} targets and all its higher-order sets)")


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="only the pipeline sections")
    parser.add_argument("--bip", action="store_true", help="only the decision-layer sections")
    parser.add_argument("--n-images", type=int, default=1600)
    parser.add_argument("--max-order", type=int, default=3)
    parser.add_argument("--executor", default="local:2")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if not args.build:
        data_checks()
        bip_timing()
        significance_test()
    if not args.bip:
        root = Path(tempfile.mkdtemp(prefix="taskonomy-bench-"))
        try:
            build_timing(root / "reg", n_images=args.n_images, max_order=args.max_order, executor=args.executor)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        caching_speedup()
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
