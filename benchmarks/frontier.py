"""Every selection score, the two-stage selector and the cost-accuracy frontier on the model zoo (issue 15).

Run:  .venv/bin/python benchmarks/frontier.py --cache DIR [--subset 5] [--scale]

Works on ``benchmarks/zoo_bench.py``'s library (100 tasks, 23 experts) and reuses its cache (``--cache``: the
experts, their features of every library side, the error matrix, Task2Vec, Model2Vec rankings; see zoo_bench.build):

1. Every forward method of the selector registry (``list_selectors("forward")``), each Selector's scorer called
   through ``SelectorInput`` as ``registry/expert_selection.py`` ``_rank_by_forward`` calls it (one expert at a
   time, a ``pooled`` one once per task over every expert), on each expert's cached features of the task (logits
   for the "logits" methods: the expert's own head on its features, ``trainers.experts.head_logits``). Scores and
   the scoring seconds of every (task, expert) are cached as ``<cache>/frontier/<method>-<tasks>.npz``.
2. Two-stage: zoo_bench's held-out asym and Model2Vec rankings shortlist K = 3, 5, 10 experts, LogME and the best
   forward score (by ratio of means here) re-rank only those; the other experts follow in the shortlist order.
   The ``prior`` row ranks by each expert's reference accuracy, as the registry records it (published ImageNet
   top-1 of the zoo models; a trained expert's own head on held-out images of its domain): one ranking for all.
3. zoo_bench's figures (``score_rows``: ratio of means vs the oracle, Table 1, top-1, top-3, weighted tau, 95%
   bootstrap CIs over tasks) and seconds per query: a forward method costs the forward pass of every expert over
   the query (zoo_bench's measured ms per image x the mean task size) + its median scoring seconds per task; a
   two-stage one costs Task2Vec of the query (median) + the forward pass of its K shortlisted experts + the score
   on those K. Markdown on stdout, a PNG (``--plot``, default benchmarks/zoo_frontier.png): x = seconds per query
   (log), y = ratio of means with CI whiskers, two-stage points joined per (shortlist, re-rank) pair.
4. ``--scale``: the real ``Registry.select`` timed on a registry of 15 experts, then of 120: random-weight
   cifar_resnet8 checkpoints registered under 5 training tasks (a timing of the library size only, not a selection
   benchmark; each checkpoint is distinct, since the registry caches features per checkpoint hash, so one file
   under several names would be run once), one query of 300 images: ``--method logme`` vs ``--method two-stage
   --shortlist 5``, each COLD (the registry's feature and Task2Vec caches cleared before every timed call).

Scoring seconds are CPU seconds of the process (``time.process_time``; run with OPENBLAS_NUM_THREADS=1 and
OMP_NUM_THREADS=1, so one core's time), which other jobs on the machine do not inflate, nor a SIGSTOP.

``--subset N``: N tasks per domain (a fixed seeded subset) for ALL methods, when scoring all 100 tasks costs too much
time (SFDA ~0.5 s per task and expert); 0 = every task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede `import torch` (via zoo_bench)

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_bench as zb  # noqa: E402

from taskreg.embedders.zoo import ZOO  # noqa: E402
from taskreg.selection.plots import FrontierPoint, plot_frontier  # noqa: E402
from taskreg.selection.selectors import Selector, SelectorInput, get_selector, list_selectors  # noqa: E402
from taskreg.trainers.experts import head_logits  # noqa: E402

SUBSET_SEED = 15
KS = (3, 5, 10)
SHORTLISTERS = ("asym", "model2vec")


# ---------------------------------------------------------------------------------------------- scoring
def task_subset(z: zb.Zoo, per_domain: int) -> list[int]:
    """Indices of ``per_domain`` tasks of each domain (seeded, fixed), or every task when ``per_domain`` is 0."""
    if per_domain <= 0:
        return list(range(len(z.tasks)))
    rng = np.random.default_rng(SUBSET_SEED)
    out: list[int] = []
    for dom in dict.fromkeys(t.domain for t in z.tasks):
        rows = [i for i, t in enumerate(z.tasks) if t.domain == dom]
        out += sorted(rng.choice(rows, size=min(per_domain, len(rows)), replace=False).tolist())
    return out


def outputs(z: zb.Zoo, sel: Selector, t: int) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Every expert's features (or its head's logits) of task ``t``, its labels, and the seconds the heads took."""
    task = z.tasks[t]
    feats = [z.feats[name, task.domain][task.idx] for name in z.names]
    started = time.process_time()
    if "logits" in sel.needs:
        feats = [head_logits(z.models[name], f) for name, f in zip(z.names, feats, strict=True)]
    return feats, z.labels[task.domain][task.idx], time.process_time() - started


def reference_accuracies(z: zb.Zoo) -> tuple[np.ndarray, list[str]]:
    """What the ``prior`` selector ranks by, per expert, as the registry records it: a zoo model's published
    ImageNet-1k top-1 (``embedders.zoo.ZOO``), a trained expert's accuracy on images of its own training task it did
    not train on (its head on the domain's library side: the same classes, the other half of the base set)."""
    acc, what = np.zeros(len(z.names)), []
    for j, name in enumerate(z.names):
        if name.startswith("imagenet-"):
            top1 = ZOO[f"efficientnet_{name.removeprefix('imagenet-')}"].top1
            assert top1 is not None
            acc[j] = top1
            what.append("ImageNet-1k top-1 (published)")
        else:
            dom = name.split("-", 1)[1]
            pred = head_logits(z.models[name], z.feats[name, dom]).argmax(1)
            acc[j] = float(np.mean(pred == z.labels[dom]))
            what.append(f"held-out {dom} ({z.labels[dom].size} images)")
    return acc, what


def first_value(result: object) -> float:
    return float(np.asarray(result, dtype=np.float64).reshape(-1)[0])


def score_experts(sel: Selector, outs: list[np.ndarray], y: np.ndarray, experts: list[int]) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """(scores, seconds) of ``experts``, as ``_rank_by_forward`` scores them: a pooled selector in one call over
    them all (its seconds split evenly), the others one expert at a time."""
    if sel.pooled:
        started = time.process_time()
        values = np.asarray(sel.score(SelectorInput(n=len(experts), outputs=[outs[j] for j in experts], y=y)),
                            dtype=np.float64).reshape(-1)
        return values, np.full(len(experts), (time.process_time() - started) / len(experts))
    scores, seconds = np.zeros(len(experts)), np.zeros(len(experts))
    for i, j in enumerate(experts):
        started = time.process_time()
        scores[i] = first_value(sel.score(SelectorInput(n=1, outputs=(outs[j],), y=y)))
        seconds[i] = time.process_time() - started
    return scores, seconds


def score_all(z: zb.Zoo, method: str, subset: list[int], console: Console) -> dict[str, np.ndarray]:
    """One forward method's (subset tasks x experts) scores and scoring seconds, cached in the zoo cache."""
    sel = get_selector(method)
    everyone = list(range(len(z.names)))

    def compute() -> dict[str, np.ndarray]:
        s, sec = np.zeros((len(subset), len(everyone))), np.zeros((len(subset), len(everyone)))
        with zb.bar(console) as prog:
            job = prog.add_task(f"{method} on every (task, expert)", total=len(subset))
            for row, t in enumerate(subset):
                outs, y, head_seconds = outputs(z, sel, t)
                s[row], sec[row] = score_experts(sel, outs, y, everyone)
                sec[row] += head_seconds / len(everyone)
                prog.advance(job)
        return {"s": s, "seconds": sec, "task_names": np.array([z.tasks[t].name for t in subset])}

    out = zb.cached(z.cfg.cache / "frontier" / f"{method}-{len(subset)}of{len(z.tasks)}.npz", compute)
    if out["task_names"].tolist() != [z.tasks[t].name for t in subset]:
        raise SystemExit(f"{z.cfg.cache}/frontier: cached {method} scores are for other tasks; delete them")
    return out


def rank(scores: np.ndarray, higher_is_better: bool, order: list[int]) -> list[int]:
    """``order``'s experts by score, best first; ties keep ``order``'s order; a non-finite score comes last."""
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isfinite(s), -s if higher_is_better else s, np.inf)
    return [order[i] for i in np.argsort(key, kind="stable")]


# ---------------------------------------------------------------------------------------------- plot
def plot(rows: list[zb.Row], series: dict[str, list[str]], path: Path, title: str) -> None:
    """Seconds per query (log) against ratio of means vs the oracle, CI whiskers, two-stage series joined."""
    in_series = {m: name for name, ms in series.items() for m in ms}
    points = [FrontierPoint(r.method, r.seconds, r.ratio_of_means.value, r.ratio_of_means.low,
                            r.ratio_of_means.high, in_series.get(r.method)) for r in rows if r.method != "oracle"]
    plot_frontier(points, path, title=title + "\n(whiskers: 95% bootstrap CI over tasks; orange: two-stage, "
                                              "joined over K = 3, 5, 10)")


# ---------------------------------------------------------------------------------------------- frontier
def frontier(z: zb.Zoo, per_domain: int, plot_path: Path, console: Console, methods: list[str]) -> dict:
    """Score ``methods`` (forward selectors), then the two-stage selectors; the table, the PNG, the raw numbers."""
    subset = task_subset(z, per_domain)
    errors = z.errors[subset]
    n_experts = len(z.names)
    everyone = list(range(n_experts))
    forward_ms = np.array([z.feat_seconds[n] for n in z.names])  # ms per image of each expert's forward pass
    fwd_all = float(forward_ms.sum() * z.task_images / 1000)
    t2v = float(np.median([z.t2v_seconds[t] for t in subset]))
    rankings = {m: [z.rankings[m][t] for t in subset] for m in ("oracle", "model2vec", "asym", "sym", "generic")}
    seconds = {m: z.seconds[m] for m in rankings}
    how = {m: z.how[m] for m in rankings}
    scored: dict[str, dict[str, np.ndarray]] = {}
    score_median: dict[str, float] = {}
    for method in methods:
        sel = get_selector(method)
        started = time.process_time()
        scored[method] = out = score_all(z, method, subset, console)
        score_median[method] = float(np.median(out["seconds"].sum(1)))
        rankings[method] = [rank(r, sel.higher_is_better, everyone) for r in out["s"]]
        seconds[method] = fwd_all + score_median[method]
        how[method] = (f"forward pass of all {n_experts} experts ({fwd_all:.2f} s) + {method} on each "
                       f"({score_median[method]:.3g} s)" + (", pooled" if sel.pooled else ""))
        console.print(f"{method}: median {score_median[method]:.3g} s per task of scoring, "
                      f"{np.mean(~np.isfinite(out['s'])):.1%} non-finite ({time.process_time() - started:.0f} s)")
    forward_rows = zb.score_rows({m: rankings[m] for m in scored}, errors, seconds, how, z.cfg.seed)
    best = min((r for r in forward_rows if r.method in scored), key=lambda r: r.ratio_of_means.value).method
    console.print(f"best forward score by ratio of means on these tasks: {best}")

    series: dict[str, list[str]] = {}
    for by in SHORTLISTERS:
        for rerank in dict.fromkeys(("logme", best)):
            sel = get_selector(rerank)
            for k in KS:
                name = f"{by}>{rerank}@{k}"
                series.setdefault(f"{by}>{rerank}", []).append(name)
                ranked, fwd, score_sec = [], [], []
                for row, t in enumerate(subset):
                    short = rankings[by][row][:k]
                    if sel.pooled:  # relative to the shortlist only, as the registry scores it
                        outs, y, head_seconds = outputs(z, sel, t)
                        s, sec = score_experts(sel, outs, y, short)
                        sec = sec + head_seconds / n_experts
                    else:
                        s, sec = scored[rerank]["s"][row, short], scored[rerank]["seconds"][row, short]
                    ranked.append(rank(s, sel.higher_is_better, short) + [j for j in rankings[by][row] if
                                                                          j not in short])
                    fwd.append(float(forward_ms[short].sum() * z.task_images / 1000))
                    score_sec.append(float(sec.sum()))
                rankings[name] = ranked
                seconds[name] = t2v + float(np.mean(fwd)) + float(np.median(score_sec))
                how[name] = (f"Task2Vec ({t2v:.2f} s) + forward pass of {k} shortlisted ({np.mean(fwd):.2f} s) + "
                             f"{rerank} on them ({np.median(score_sec):.3g} s)")
    prior, prior_on = reference_accuracies(z)  # query-independent: one ranking for every task
    rankings["prior"] = [rank(prior, True, everyone) for _ in subset]
    seconds["prior"], how["prior"] = 0.0, "none (each expert's recorded reference accuracy)"
    console.print("prior (reference accuracy): " + ", ".join(f"{n} {a:.3f}" for n, a in zip(z.names, prior,
                                                                                          strict=True)))
    order = ["oracle", "model2vec", "asym", "sym", *scored, *[m for ms in series.values() for m in ms], "generic",
             "prior"]
    rows = zb.score_rows({m: rankings[m] for m in order}, errors, seconds, how, z.cfg.seed)
    title = (f"Every score and the two-stage selector on the zoo: {len(subset)} of {len(z.tasks)} tasks "
             f"({'all' if per_domain <= 0 else f'{per_domain} per domain, seeded'}) x {n_experts} experts")
    md = zb.print_table(console, rows, title)
    print("\n" + md + "\n")
    plot(rows, series, plot_path, title)
    console.print(f"forward pass of all experts over a mean task ({z.task_images:.0f} images): {fwd_all:.2f} s; "
                  f"Task2Vec of a query: median {t2v:.2f} s; wrote {plot_path}")
    return {"tasks": [z.tasks[t].name for t in subset], "best_forward": best, "score_seconds_median": score_median,
            "forward_seconds_all": fwd_all, "task2vec_seconds": t2v, "rows": [asdict(r) for r in rows],
            "reference_accuracy": dict(zip(z.names, prior.tolist(), strict=True)),
            "reference": dict(zip(z.names, prior_on, strict=True)),
            "markdown": md}


# ---------------------------------------------------------------------------------------------- scale
def scale_timing(console: Console, sizes: tuple[int, ...] = (15, 120), repeats: int = 3) -> dict:
    """Wall seconds of the real ``Registry.select`` (logme vs two-stage, shortlist 5), cold, at each library size.

    One registry: a tiny cifar_resnet8 probe (tests/procs.py's), 5 training tasks, cifar_resnet8 checkpoints with
    random weights (this measures cost, not selection quality), each registered with one of the training tasks.
    Not one file under many names: the registry caches features per (checkpoint hash, dataset), so a reused file
    would run once per call however many names it has. The query: 300 MNIST test images, not a registered task."""
    from taskreg.registry import Registry

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from procs import make_probe_registry, save_random_expert

    query = "builtin:mnist5k?n=300&split=test"
    sources = {f"train-{i}": f"builtin:{src}" for i, src in enumerate(
        ("digits?split=train", "mnist5k?classes=0,1,2,3,4&n=500&split=train",
         "mnist5k?classes=5,6,7,8,9&n=500&split=train", "patches?n=500&split=train", "animals?n=500&split=train"))}
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="frontier-scale-") as tmp:
        tmp_path = Path(tmp)
        template = tmp_path / "template"
        Registry.init(template)
        root = make_probe_registry(template, tmp_path / "reg")
        reg = Registry.open(root)
        for name, source in sources.items():
            reg.add_task(name, source, max_samples=300)
        added = 0
        for size in sizes:
            while added < size:
                weights = save_random_expert(tmp_path / f"w{added}.pt", seed=added)
                reg.add_expert(f"e{added:03d}", arch="cifar_resnet8", weights=weights,
                               trained_on=f"train-{added % len(sources)}")
                added += 1
            timings: dict[str, list[float]] = {"logme": [], "two-stage": [], "logme cpu": [], "two-stage cpu": []}
            for _ in range(repeats):
                for method, kw in (("logme", {}), ("two-stage", {"shortlist": 5, "rerank": "logme",
                                                                 "shortlist_by": "asym"})):
                    for sub in ("features", "task2vec"):  # cold: no expert's features, no query embedding
                        shutil.rmtree(root / "cache" / sub, ignore_errors=True)
                    wall, cpu = time.perf_counter(), time.process_time()
                    sel = reg.select(query, method=method, top=5, max_samples=300, **kw)
                    timings[method].append(time.perf_counter() - wall)
                    timings[f"{method} cpu"].append(time.process_time() - cpu)
                    assert sel.n_experts == size
            out[str(size)] = timings
            console.print(f"{size} experts: logme median {np.median(timings['logme']):.2f} s, two-stage (asym "
                          f"shortlist 5, logme) median {np.median(timings['two-stage']):.2f} s "
                          f"(of {repeats} cold calls each)")
    lines = ["| registered experts | select --method logme: wall s (CPU s) | select --method two-stage --shortlist 5: "
             "wall s (CPU s) | each call, wall s (logme; two-stage) |", "|---|---|---|---|"]
    for size, t in out.items():
        lines.append(f"| {size} | {np.median(t['logme']):.2f} ({np.median(t['logme cpu']):.2f}) | "
                     f"{np.median(t['two-stage']):.2f} ({np.median(t['two-stage cpu']):.2f}) | "
                     f"{', '.join(f'{v:.2f}' for v in t['logme'])}; {', '.join(f'{v:.2f}' for v in t['two-stage'])} |")
    md = "\n".join(lines)
    print("\n" + md + "\n")
    return {"seconds": out, "markdown": md}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="zoo_bench's cache (its full, 64 px run)")
    p.add_argument("--subset", type=int, default=5, help="tasks per domain, seeded (0: every task)")
    p.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "zoo_frontier.png")
    p.add_argument("--scale", action="store_true", help="also time Registry.select at 15 and 120 experts")
    p.add_argument("--scale-only", action="store_true", help="only the Registry.select timing")
    p.add_argument("--methods", default=",".join(list_selectors("forward")),
                   help="forward methods to score, comma-separated (default: every one)")
    p.add_argument("--score-only", action="store_true", help="only fill the score caches of --methods")
    a = p.parse_args()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if any(get_selector(m).cost != "forward" for m in methods):
        raise SystemExit(f"--methods: forward methods only ({', '.join(list_selectors('forward'))})")
    console = Console()
    result: dict = {}
    if not a.scale_only:
        sys.argv = [sys.argv[0], "--cache", str(a.cache)]  # zoo_bench's defaults: its full 64 px run
        cfg = replace(zb.parse_args(), plot=a.plot)
        z = zb.build(cfg, console)
        if a.score_only:
            for method in methods:
                score_all(z, method, task_subset(z, a.subset), console)
            return
        result["frontier"] = frontier(z, a.subset, a.plot, console, methods)
        (a.cache / "frontier.json").write_text(json.dumps(result["frontier"], indent=1))
    if a.scale or a.scale_only:
        result["scale"] = scale_timing(console)
        if not a.scale_only:
            (a.cache / "frontier.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
