"""Expert-selection benchmark: the model-selection meta-task of Task2Vec (Achille et al. 2019, Sect. 4.2, Table 1).

Run:  .venv/bin/python benchmarks/selection_bench.py [--quick] [--registry DIR]

Everything goes through a real registry in ``--registry`` (default ``./bench-registry``, or
``./bench-registry-quick`` with ``--quick``; neither is git-ignored, so put it outside the repository or
delete it afterwards). The run is resumable: the probe, experts, library tasks and expert x task results
that already exist (by name) are reused, so a second run only re-does the analysis. Delete the directory to
rebuild from scratch (e.g. after changing epochs).

1. Probe ``default`` (cifar_resnet20) trained from scratch on the *train* splits of ``builtin:patches`` and
   ``builtin:mnist5k`` (27 classes), so no library image was ever seen by the probe or by any expert.
2. Experts: fine-tuned from the probe (``reg.train_expert(..., from_probe=True)``) on source tasks drawn only
   from the ``split=train`` side of MNIST, sklearn digits, photo patches and LFW faces, plain or transformed
   (invert, rot90, blur, noise); broad (10-17 classes) and narrow (2 classes) ones. Each expert's source task
   is registered (and embedded) first with the same ``max_samples`` as the queries.
3. Library: query tasks drawn only from the ``split=test`` side (disjoint images), 2-5 classes, 176-320
   images, over mnist / digits / patches and their inverted, rotated, blurred and noisy variants, embedded
   with ``reg.add_task`` (Monte Carlo Fisher).
4. Ground truth: ``reg.evaluate`` -- linear-probe test error of every expert on every library task.
5. Rankings of all experts per library task: asymmetric and symmetric Task2Vec and the domain embedding
   (stored vectors + ``selection.select.rerank``), Model2Vec (k-fold over library tasks: fitted without the
   held-out tasks), LogME / LEEP / NCE / H-score (from each expert's features / head on the query), the
   generic expert (broadest training task), chance (expectation over random rankings) and the oracle.
   Scored with ``selection.metrics.evaluate_rankings`` (Table 1's relative error increase, top-1/top-3 hit
   rates, weighted Kendall tau of the full ranking).
6. Seconds per query (median over a few library tasks, methods interleaved): ``reg.select`` end to end for
   the Task2Vec-based methods (probe pass over the query + index + exact re-rank; Model2Vec fitted on all
   library tasks with ``reg.fit_model2vec`` just for this); a forward pass of every (pre-loaded) expert plus
   the score for the transferability baselines; features + linear probe of every expert for the oracle
   (exhaustive search).

Prints the table (and a Markdown copy), a per-domain breakdown, diagnostics, and writes a bar chart to
``--plot`` (default benchmarks/selection_bench.png) and the raw numbers to ``<registry>/selection_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# OpenMP threads that spin while waiting are descheduled when other jobs share the cores, which made each
# torch call 5-20x slower in our runs; sleeping waits cost little on an idle machine. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from taskreg.data import Dataset  # noqa: E402
from taskreg.embedders.model2vec import fit_model2vec  # noqa: E402
from taskreg.embedders.model2vec import rank as model2vec_rank  # noqa: E402
from taskreg.plotting import pyplot  # noqa: E402
from taskreg.registry import Registry  # noqa: E402
from taskreg.registry.catalog import ExpertRecord, TaskRecord  # noqa: E402
from taskreg.selection import metrics  # noqa: E402
from taskreg.selection import select as sel  # noqa: E402
from taskreg.selection.selectors import SelectorInput, get_selector, list_selectors  # noqa: E402
from taskreg.trainers.experts import expert_logits, extract_features, linear_probe_error  # noqa: E402

PROBE = "default"
PROBE_ARCH = "cifar_resnet20"
PROBE_SOURCES = ("builtin:patches?split=train", "builtin:mnist5k?split=train")
EMBEDDING = "montecarlo"
LIBRARY_SEED = 2019

DIGITS = [str(d) for d in range(10)]
PHOTOS = ["astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "china", "flower"]
CLASSES = {"mnist5k": DIGITS, "digits": DIGITS, "patches": PHOTOS}
MIN_TEST_PER_CLASS = {"mnist5k": 125, "digits": 44, "patches": 50}  # smallest class on the split=test side

# (name, source): every expert sees only split=train images.
EXPERTS: list[tuple[str, str]] = [
    ("x-patches-all", "builtin:patches?split=train&n=1700"),
    ("x-mnist-all", "builtin:mnist5k?split=train&n=1500"),
    ("x-digits-all", "builtin:digits?split=train&n=1000"),
    ("x-mnist-invert", "builtin:mnist5k?split=train&n=1000&transform=invert"),
    ("x-mnist-rot90", "builtin:mnist5k?split=train&n=1000&transform=rot90"),
    ("x-mnist-blur", "builtin:mnist5k?split=train&classes=0,2,4,6,8&n=800&transform=blur"),
    ("x-mnist-noise", "builtin:mnist5k?split=train&classes=1,3,5,7,9&n=800&transform=noise"),
    ("x-mnist-3v8", "builtin:mnist5k?split=train&classes=3,8&n=500"),
    ("x-mnist-1v7", "builtin:mnist5k?split=train&classes=1,7&n=500"),
    ("x-digits-invert", "builtin:digits?split=train&n=1000&transform=invert"),
    ("x-digits-rot90", "builtin:digits?split=train&classes=0,1,2,3,4&transform=rot90"),
    ("x-digits-4v9", "builtin:digits?split=train&classes=4,9"),
    ("x-patches-texture", "builtin:patches?split=train&classes=brick,grass,gravel,coins,text,page&n=600"),
    ("x-patches-scenes", "builtin:patches?split=train&classes=astronaut,chelsea,coffee,rocket,china,flower&n=600"),
    ("x-patches-noise", "builtin:patches?split=train&classes=astronaut,brick,camera,coffee,grass,moon,rocket,text"
                        "&n=800&transform=noise"),
    ("x-patches-invert", "builtin:patches?split=train&classes=camera,moon,retina,hubble_deep_field,"
                         "immunohistochemistry&n=600&transform=invert"),
    ("x-faces", "builtin:faces?split=train"),
]
QUICK_EXPERTS = ["x-patches-all", "x-mnist-all", "x-digits-all", "x-mnist-rot90", "x-mnist-3v8", "x-faces"]

# (base, transform, number of tasks, fewest classes, most classes); every task uses split=test images.
LIBRARY: list[tuple[str, str, int, int, int]] = [
    ("mnist5k", "", 8, 2, 5), ("mnist5k", "invert", 6, 2, 5), ("mnist5k", "rot90", 6, 2, 5),
    ("mnist5k", "blur", 4, 2, 5), ("mnist5k", "noise", 4, 2, 5),
    ("digits", "", 7, 4, 5), ("digits", "invert", 5, 4, 5), ("digits", "rot90", 4, 4, 5),
    ("patches", "", 8, 4, 5), ("patches", "noise", 4, 4, 5), ("patches", "invert", 4, 4, 5),
    ("patches", "rot90", 4, 4, 5),
]
QUICK_LIBRARY = [("mnist5k", "", 4, 2, 5), ("mnist5k", "rot90", 3, 2, 5), ("digits", "", 3, 4, 5),
                 ("patches", "", 4, 4, 5)]

# the ranking methods come from the selector registry (a newly registered method is benchmarked too); the
# "random" selector is reported as "chance" (its expectation over many draws), "oracle" is the reference
INDEX_METHODS = tuple(list_selectors("index"))
FORWARD_METHODS = tuple(list_selectors("forward"))
ROW_ORDER = ("oracle", "asym", "model2vec", "sym", "domain", "logme", "leep", "nce", "hscore", "generic", "chance")
HOW = {
    "oracle": "features + linear probe of every expert (exhaustive search)",
    "asym": "reg.select: probe pass + index + re-rank",
    "model2vec": "reg.select: probe pass + index + re-rank",
    "sym": "reg.select: probe pass + index + re-rank",
    "domain": "reg.select: probe pass + index + re-rank",
    "logme": "forward pass of every expert + LogME",
    "leep": "forward pass of every expert + LEEP",
    "nce": "forward pass of every expert + NCE",
    "hscore": "forward pass of every expert + H-score",
    "generic": "none (broadest training task)",
    "chance": "none (expectation over random rankings)",
}
CHANCE_DRAWS = 200


@dataclass(frozen=True)
class Config:
    registry: Path
    quick: bool
    probe_epochs: int
    expert_epochs: int
    max_samples: int
    folds: int
    timing_queries: int
    alpha: float
    seed: int
    device: str
    threads: int | None
    plot: Path


@dataclass(frozen=True)
class Spec:
    """A task to register: its name and dataset source string."""

    name: str
    source: str


@dataclass(frozen=True)
class Row:
    """One line of the result table (errors and rates as fractions)."""

    method: str
    mean_error: float
    rel_increase: float  # Table 1: mean over tasks of (chosen - oracle) / max(oracle, 1e-3)
    rel_increase_hard: float  # the same over the tasks whose oracle error is > 0 only
    ratio_of_means: float  # mean(chosen) / mean(oracle) - 1: robust to tasks with a zero oracle error
    top1: float
    top3: float
    tau: float
    seconds: float


# ----------------------------------------------------------------------------------------- the meta-task
def expert_specs(quick: bool) -> list[Spec]:
    keep = set(QUICK_EXPERTS) if quick else {name for name, _ in EXPERTS}
    return [Spec(name, source) for name, source in EXPERTS if name in keep]


def library_specs(quick: bool) -> list[Spec]:
    """Deterministic query tasks: random class subsets of the split=test side, one seed per task."""
    rng = np.random.default_rng(LIBRARY_SEED)
    specs: list[Spec] = []
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for base, transform, count, k_lo, k_hi in QUICK_LIBRARY if quick else LIBRARY:
        names = CLASSES[base]
        made = 0
        while made < count:
            k = int(rng.integers(k_lo, k_hi + 1))
            classes = tuple(names[i] for i in sorted(rng.choice(len(names), size=k, replace=False)))
            n = min(k * MIN_TEST_PER_CLASS[base], int(rng.integers(180, 321)))
            if (base, transform, classes) in seen:
                continue
            seen.add((base, transform, classes))
            i = len(specs)
            domain = base + (f"+{transform}" if transform else "")
            name = f"q{i:02d}-{domain}-" + ".".join(c[:4] for c in classes)
            source = f"builtin:{base}?split=test&classes={','.join(classes)}&n={n}&seed={i + 1}"
            specs.append(Spec(name, source + (f"&transform={transform}" if transform else "")))
            made += 1
    return specs


# ---------------------------------------------------------------------------------------------- progress
class Bars:
    """rich progress bars handing out the ``progress(done, total)`` callbacks the registry accepts."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)

    @contextmanager
    def bar(self, description: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
        task = self.progress.add_task(description, total=total)

        def update(done: int, total: int) -> None:
            self.progress.update(task, completed=done, total=total)

        try:
            yield update
        finally:
            self.progress.remove_task(task)


# ---------------------------------------------------------------------------------------------- building
def build(reg: Registry, cfg: Config, bars: Bars, console: Console) -> tuple[list[ExpertRecord], list[TaskRecord]]:
    """Probe, experts, library tasks and ground truth in the registry; skips whatever already exists."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if PROBE not in {p.name for p in reg.list_probes()}:
        with bars.bar(f"probe ({cfg.probe_epochs} epochs)") as cb:
            reg.train_probe(PROBE, arch=PROBE_ARCH, sources=PROBE_SOURCES, epochs=cfg.probe_epochs, seed=cfg.seed,
                            device=cfg.device, progress=cb)
    seconds["probe"] = time.perf_counter() - t

    t = time.perf_counter()
    e_specs = expert_specs(cfg.quick)
    have = {e.name for e in reg.list_experts()}
    tasks = {x.name for x in reg.list_tasks()}
    with bars.bar("experts", total=len(e_specs)) as outer:
        for i, spec in enumerate(e_specs):
            if spec.name not in have:
                if f"{spec.name}.src" not in tasks:  # embed the source task like the queries (same max_samples)
                    reg.add_task(f"{spec.name}.src", spec.source, probe=PROBE, method=EMBEDDING,
                                 max_samples=cfg.max_samples, seed=0, device=cfg.device)
                with bars.bar(f"  fine-tune {spec.name}") as cb:
                    reg.train_expert(spec.name, spec.source, from_probe=True, probe=PROBE, task_name=f"{spec.name}.src",
                                     epochs=cfg.expert_epochs, seed=cfg.seed, device=cfg.device, progress=cb)
            outer(i + 1, len(e_specs))
    seconds["experts"] = time.perf_counter() - t

    t = time.perf_counter()
    l_specs = library_specs(cfg.quick)
    with bars.bar("library tasks", total=len(l_specs)) as outer:
        for i, spec in enumerate(l_specs):
            if spec.name not in tasks:
                reg.add_task(spec.name, spec.source, probe=PROBE, method=EMBEDDING, max_samples=cfg.max_samples,
                             seed=0, device=cfg.device)
            outer(i + 1, len(l_specs))
    seconds["library"] = time.perf_counter() - t

    t = time.perf_counter()
    e_names, l_names = [s.name for s in e_specs], [s.name for s in l_specs]
    with bars.bar(f"ground truth ({len(e_names)} x {len(l_names)})") as cb:
        measured, skipped = reg.evaluate(experts=e_names, tasks=l_names, device=cfg.device, progress=cb)
    seconds["ground_truth"] = time.perf_counter() - t
    console.print(f"build: probe {seconds['probe']:.0f} s, experts {seconds['experts']:.0f} s, library "
                  f"{seconds['library']:.0f} s, ground truth {seconds['ground_truth']:.0f} s "
                  f"({measured} pairs measured now, {skipped} reused)")
    return [reg.get_expert(n) for n in e_names], [reg.get_task(n) for n in l_names]


def error_matrix(reg: Registry, experts: Sequence[ExpertRecord], tasks: Sequence[TaskRecord]) -> np.ndarray:
    """(T, E) linear-probe test errors of the chosen experts on the chosen tasks (all must be measured)."""
    t_names, e_names, errors = reg.results_matrix()
    rows = [t_names.index(t.name) for t in tasks]
    cols = [e_names.index(e.name) for e in experts]
    out = errors[np.ix_(rows, cols)]
    if np.isnan(out).any():
        raise RuntimeError("some expert x task results are missing after reg.evaluate")
    return out


# ---------------------------------------------------------------------------------------------- rankings
def how(method: str) -> str:
    """The cost column of the table (for a method registered later: its cost class and description)."""
    if method in HOW:
        return HOW[method]
    return f"{get_selector(method).cost}: {get_selector(method).description}"


def row_position(method: str) -> int:
    return ROW_ORDER.index(method) if method in ROW_ORDER else ROW_ORDER.index("chance")  # new ones before chance


def index_rankings(query: np.ndarray, candidates: np.ndarray, method: str, t0: np.ndarray | None,
                   alpha: float) -> list[list[int]]:
    """Per query row (T, D) the expert indices ordered by ``rerank`` against candidate rows (E, D)."""
    return [[r.index for r in sel.rerank(q, candidates, method, t0=t0, alpha=alpha)] for q in query]


def model2vec_kfold(task_vecs: np.ndarray, base: np.ndarray, errors: np.ndarray, t0: np.ndarray, *, folds: int,
                    alpha: float, seed: int, l2: float | str = "auto", epochs: int = 300) -> list[list[int]]:
    """Rank each library task with a Model2Vec fitted on the other folds only. task_vecs (T, D), base (E, D)."""
    n = len(task_vecs)
    order = np.random.default_rng(seed).permutation(n)
    rankings: list[list[int]] = [[] for _ in range(n)]
    for f in range(folds):
        held = order[f::folds]
        train = np.setdiff1d(np.arange(n), held)
        fit = fit_model2vec(task_vecs[train], base, errors[train], t0=t0, alpha=alpha, seed=seed, l2=l2, epochs=epochs)
        for t in held:
            rankings[t] = model2vec_rank(task_vecs[t], fit, t0).tolist()
    return rankings


def transfer_scores(reg: Registry, experts: Sequence[ExpertRecord], data: Sequence[Dataset], device: str,
                    progress: Callable[[int, int], None]) -> dict[str, np.ndarray]:
    """(T, E) scores of every forward selector (LogME / LEEP / NCE / H-score ...) from each expert's cached
    features and its own head (the selector's ``better`` says which way they point)."""
    scores = {m: np.zeros((len(data), len(experts))) for m in FORWARD_METHODS}
    for j, erec in enumerate(experts):
        rec, model, spec = reg.load_expert(erec.name)
        for t, ds in enumerate(data):
            feats = reg.expert_features(rec, model, spec, ds, device=device)
            with torch.no_grad():  # expert_logits = fc(features): reuse the cached features
                logits = model.fc(torch.from_numpy(feats).to(next(model.parameters()).device)).cpu().numpy()
            for m in FORWARD_METHODS:
                selector = get_selector(m)
                values = feats if "features" in selector.needs else logits
                scores[m][t, j] = np.asarray(selector.score(SelectorInput(n=1, outputs=(values,), y=ds.y)))[0]
        progress(j + 1, len(experts))
    return scores


def generic_ranking(experts: Sequence[ExpertRecord]) -> list[int]:
    """The "generic" selector's ranking: the broadest training task (n_classes x n_train) first."""
    generic = get_selector("generic")
    inputs = SelectorInput(n=len(experts), sizes=[(e.n_classes or 0, e.n_train or 0) for e in experts])
    return [r.index for r in sel.rank(generic, generic.score(inputs), len(experts))]


def chance_row(errors: np.ndarray, seed: int) -> Row:
    """Expected figures of a uniformly random ranking (exact errors; hit rates and tau over random draws)."""
    n_tasks, n_experts = errors.shape
    rng = np.random.default_rng(seed)
    draws = {f"r{i}": [rng.permutation(n_experts).tolist() for _ in range(n_tasks)] for i in range(CHANCE_DRAWS)}
    reports = metrics.evaluate_rankings(draws, errors).values()
    oracle = errors.min(1)
    hard = oracle > 0
    return Row("chance", float(errors.mean()), metrics.chance_relative_error_increase(errors),
               metrics.chance_relative_error_increase(errors[hard]) if hard.any() else 0.0,
               ratio_of_means(errors.mean(1), oracle), float(np.mean([r.top1_rate for r in reports])),
               float(np.mean([r.top3_rate for r in reports])), float(np.mean([r.mean_weighted_tau for r in reports])),
               0.0)


def ratio_of_means(chosen: np.ndarray, oracle: np.ndarray) -> float:
    return float(np.mean(chosen) / max(float(np.mean(oracle)), metrics.MIN_ORACLE_ERROR) - 1.0)


# ----------------------------------------------------------------------------------------------- timings
def time_queries(reg: Registry, cfg: Config, queries: Sequence[tuple[TaskRecord, int]],
                 offline: dict[str, list[list[int]]], experts: Sequence[ExpertRecord],
                 progress: Callable[[int, int], None]) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds of one query per method, and whether ``reg.select`` agrees with the offline ranking.

    queries : (library task, its row in ``offline``). Methods are interleaved per query, so a burst of load
    from other jobs hits them alike. Task2Vec methods: ``reg.select`` end to end (loads the probe, embeds the
    query, searches the index, re-ranks). Transferability scores: forward pass of every expert (pre-loaded,
    as a server would keep them) over the query + the score. Oracle: features + linear probe of every expert.
    """
    pos = {e.name: j for j, e in enumerate(experts)}
    models = [reg.load_expert(e.name) for e in experts]
    reg.select(queries[0][0].source, top=len(experts), method="asym", probe=PROBE, max_samples=cfg.max_samples,
               alpha=cfg.alpha, device=cfg.device)  # warm-up: imports, first torch calls
    times: dict[str, list[float]] = {m: [] for m in (*INDEX_METHODS, *FORWARD_METHODS, "oracle", "generic", "chance")}
    same: Counter[str] = Counter()
    for i, (q, row) in enumerate(queries):
        for method in INDEX_METHODS:
            start = time.perf_counter()
            out = reg.select(q.source, top=len(experts), method=method, probe=PROBE, max_samples=cfg.max_samples,
                             alpha=cfg.alpha, device=cfg.device)
            times[method].append(time.perf_counter() - start)
            same[method] += method in offline and [pos[r.expert] for r in out.results] == offline[method][row]
        ds = reg.task_data(q)
        for method in (*FORWARD_METHODS, "oracle"):
            start = time.perf_counter()
            for _, model, spec in models:
                if method == "oracle":
                    linear_probe_error(extract_features(model, spec, ds.x, device=cfg.device), ds.y)
                    continue
                selector = get_selector(method)
                if "features" in selector.needs:
                    values = extract_features(model, spec, ds.x, device=cfg.device)
                else:
                    values = expert_logits(model, spec, ds.x, device=cfg.device)
                selector.score(SelectorInput(n=1, outputs=(values,), y=ds.y))
            times[method].append(time.perf_counter() - start)
        start = time.perf_counter()
        generic_ranking(experts)
        times["generic"].append(time.perf_counter() - start)
        start = time.perf_counter()
        sel.random_ranking(len(experts), i)
        times["chance"].append(time.perf_counter() - start)
        progress(i + 1, len(queries))
    return {m: float(np.median(v)) for m, v in times.items()}, {m: f"{same[m]}/{len(queries)}" for m in INDEX_METHODS}


# ----------------------------------------------------------------------------------------------- reports
def make_rows(rankings: dict[str, list[list[int]]], errors: np.ndarray, seconds: dict[str, float],
              seed: int) -> list[Row]:
    reports = metrics.evaluate_rankings(rankings, errors)
    oracle = errors.min(1)
    rows = []
    for method, rep in reports.items():
        chosen = np.array([errors[t, r[0]] for t, r in enumerate(rankings[method])])
        hard = metrics.relative_error_increase(chosen[oracle > 0], oracle[oracle > 0]) if (oracle > 0).any() else 0.0
        rows.append(Row(method, rep.mean_error, rep.relative_error_increase, hard, ratio_of_means(chosen, oracle),
                        rep.top1_rate, rep.top3_rate, rep.mean_weighted_tau, seconds.get(method, float("nan"))))
    chance = chance_row(errors, seed)
    rows.append(Row(**{**asdict(chance), "seconds": seconds.get("chance", 0.0)}))
    return sorted(rows, key=lambda r: row_position(r.method))


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def print_table(console: Console, rows: Sequence[Row], title: str) -> str:
    """Print the rich table; return the same table as Markdown."""
    head = ["method", "mean err", "rel. err. incr. (T1)", "T1 on tasks with oracle err > 0", "ratio of means",
            "top-1", "top-3", "w. Kendall tau",
            "s / query", "cost of one query"]
    table = Table(title=title, title_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h in ("method", "cost of one query") else "right")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [r.method, f"{100 * r.mean_error:.2f}%", "0 (reference)" if r.method == "oracle" else
                 pct(r.rel_increase), "0 (reference)" if r.method == "oracle" else pct(r.rel_increase_hard),
                 "0 (reference)" if r.method == "oracle" else pct(r.ratio_of_means),
                 f"{r.top1:.2f}", f"{r.top3:.2f}", f"{r.tau:+.3f}", f"{r.seconds:.3g}", how(r.method)]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines)


def per_domain(console: Console, tasks: Sequence[TaskRecord], errors: np.ndarray,
               rankings: dict[str, list[list[int]]]) -> str:
    """Mean error of the chosen expert per query domain; returns it as Markdown."""
    methods = ["asym", "model2vec", "domain", "logme", "generic"]
    head = ["query domain", "tasks", "oracle", *methods, "chance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    table = Table(title="Mean test error of the chosen expert, per query domain", title_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h == "query domain" else "right")
    for dom in sorted({t.domain for t in tasks}):
        idx = [i for i, t in enumerate(tasks) if t.domain == dom]
        cells = [dom, str(len(idx)), f"{100 * errors[idx].min(1).mean():.1f}"]
        cells += [f"{100 * np.mean([errors[i, rankings[m][i][0]] for i in idx]):.1f}" for m in methods]
        cells.append(f"{100 * errors[idx].mean():.1f}")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines)


def method_colour(method: str) -> str:
    """Bar colour of a method in the benchmarks' charts: red for Task2Vec/Model2Vec, grey for the baselines."""
    if method in ("asym", "model2vec"):
        return "tab:red"
    return "tab:grey" if method in ("generic", "chance") else "tab:blue"


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    plt = pyplot()
    shown = [r for r in rows if r.method != "oracle"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = [method_colour(r.method) for r in shown]
    for ax, key, label in ((axes[0], "rel_increase", "mean relative error increase over the oracle (Table 1)"),
                           (axes[1], "ratio_of_means", "mean error / oracle mean error - 1")):
        values = [100 * getattr(r, key) for r in shown]
        ax.barh([r.method for r in shown], values, color=colours)
        ax.invert_yaxis()
        ax.set_xlabel(f"{label} [%]")
        positive = [v for v in values if v > 0]
        if positive and max(positive) / max(min(positive), 1e-9) > 50:
            ax.set_xscale("symlog", linthresh=10)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.0f}%", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- main
def parse_args() -> Config:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 experts, 14 tasks, 1 epoch (a smoke run, ~6 min)")
    ap.add_argument("--registry", type=Path, default=None, help="registry directory (created if missing)")
    ap.add_argument("--probe-epochs", type=int, default=None)
    ap.add_argument("--expert-epochs", type=int, default=None)
    ap.add_argument("--max-samples", type=int, default=400, help="images per Task2Vec embedding of a query")
    ap.add_argument("--folds", type=int, default=None, help="Model2Vec folds over the library tasks")
    ap.add_argument("--timing-queries", type=int, default=None, help="library tasks used to time each method")
    ap.add_argument("--alpha", type=float, default=0.15, help="complexity weight of d_asym (paper: 0.15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own choice; 1 is faster when other jobs share "
                         "the cores)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "selection_bench.png")
    a = ap.parse_args()
    quick = a.quick
    return Config(
        registry=a.registry or Path("./bench-registry-quick" if quick else "./bench-registry"), quick=quick,
        probe_epochs=a.probe_epochs or (1 if quick else 6), expert_epochs=a.expert_epochs or (1 if quick else 4),
        max_samples=a.max_samples, folds=a.folds or (3 if quick else 5),
        timing_queries=a.timing_queries or (1 if quick else 3), alpha=a.alpha, seed=a.seed, device=a.device,
        threads=a.threads, plot=a.plot,
    )


def main() -> None:
    cfg = parse_args()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    console = Console(highlight=False, width=max(Console().width, 180))
    started = time.perf_counter()
    console.print(f"# Expert selection benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"registry {cfg.registry}{', --quick' if cfg.quick else ''})")
    reg = Registry.init(cfg.registry)
    bars = Bars(console)
    with bars.progress:
        experts, tasks = build(reg, cfg, bars, console)
        errors = error_matrix(reg, experts, tasks)
        n_tasks, n_experts = errors.shape

        # --- stored vectors: queries = library tasks, candidates = each expert's training task
        _, q_vecs = reg.task_vectors(PROBE, EMBEDDING, [t.name for t in tasks])
        _, e_vecs = reg.task_vectors(PROBE, EMBEDDING, [e.trained_on for e in experts])
        _, q_dom = reg.task_vectors(PROBE, "domain", [t.name for t in tasks])
        _, e_dom = reg.task_vectors(PROBE, "domain", [e.trained_on for e in experts])
        t0 = reg.trivial(PROBE, EMBEDDING)
        rankings: dict[str, list[list[int]]] = {"oracle": metrics.oracle_rankings(errors)}
        for m in INDEX_METHODS:
            needs = get_selector(m).needs
            if m == "model2vec":  # offline: fitted without the held-out tasks
                rankings[m] = model2vec_kfold(q_vecs, e_vecs, errors, t0, folds=cfg.folds, alpha=cfg.alpha,
                                              seed=cfg.seed)
            elif "model2vec" not in needs:  # (another Model2Vec method would need its own k-fold)
                qv, ev = (q_dom, e_dom) if "domain" in needs else (q_vecs, e_vecs)
                rankings[m] = index_rankings(qv, ev, m, t0 if "trivial" in needs else None, cfg.alpha)
        data = [reg.task_data(t) for t in tasks]
        with bars.bar("LogME / LEEP / NCE / H-score", total=n_experts) as cb:
            scores = transfer_scores(reg, experts, data, cfg.device, cb)
        for m in FORWARD_METHODS:
            rankings[m] = [[r.index for r in sel.rank(get_selector(m), s, n_experts)] for s in scores[m]]
        rankings["generic"] = [generic_ranking(experts)] * n_tasks

        # --- seconds per query; Model2Vec fitted on all tasks in the registry only to time reg.select
        reg.fit_model2vec(probe=PROBE, method=EMBEDDING, alpha=cfg.alpha, seed=cfg.seed)
        step = max(1, n_tasks // cfg.timing_queries)
        queries = [(tasks[i], i) for i in range(0, n_tasks, step)][: cfg.timing_queries]
        with bars.bar("seconds per query", total=len(queries)) as cb:
            seconds, agree = time_queries(reg, cfg, queries, rankings, experts, cb)

    # --- report
    title = (f"Expert selection: {n_tasks} library tasks x {n_experts} experts, "
             f"{len({t.domain for t in tasks})} query domains; Model2Vec {cfg.folds}-fold over tasks")
    rows = make_rows(rankings, errors, seconds, cfg.seed)
    md = print_table(console, rows, title)
    dom_md = per_domain(console, tasks, errors, rankings)
    generic = experts[rankings["generic"][0][0]].name
    winners = Counter(experts[j].name for t in range(n_tasks) for j in np.flatnonzero(errors[t] <= errors[t].min()))
    picks = {m: Counter(experts[r[0]].name for r in rankings[m]).most_common(3) for m in ("asym", "model2vec")}
    alpha_sweep = {}
    for a in (0.0, 0.15, 0.3, 0.5, 1.0):
        rep = metrics.evaluate_rankings({"a": index_rankings(q_vecs, e_vecs, "asym", t0, a)}, errors)["a"]
        alpha_sweep[a] = (rep.relative_error_increase, rep.top1_rate)
    console.print(f"generic expert: {generic}; tasks with a zero oracle error: {int((errors.min(1) == 0).sum())}"
                  f"/{n_tasks}; experts tied for best per task (mean): "
                  f"{np.mean((errors <= errors.min(1, keepdims=True)).sum(1)):.2f}")
    console.print("oracle winners (ties count for each): " + ", ".join(f"{n} {c}" for n, c in winners.most_common(8)))
    for m, top in picks.items():
        console.print(f"{m} picks most often: " + ", ".join(f"{n} {c}" for n, c in top))
    console.print("reg.select ranking == offline ranking on the timing queries: "
                  + ", ".join(f"{m} {v}" for m, v in agree.items()) + " (model2vec differs by design: the registry's "
                  "fit uses every library task)")
    console.print("diagnostic (alpha chosen on these very tasks, not a result): asym rel. incr. / top-1 by alpha: "
                  + ", ".join(f"{a:g}: {pct(v[0])} / {v[1]:.2f}" for a, v in alpha_sweep.items()))
    total = time.perf_counter() - started
    console.print(f"total wall time {total:.0f} s")
    print("\nMarkdown:\n")
    print(md)
    print()
    print(dom_md)

    plot(rows, cfg.plot, title)
    console.print(f"chart: {cfg.plot}")
    raw = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "rows": [asdict(r) for r in rows],
           "tasks": [t.name for t in tasks], "sources": [t.source for t in tasks], "experts": [e.name for e in experts],
           "errors": errors.tolist(), "rankings": rankings, "agree": agree,
           "alpha_sweep": {str(k): v for k, v in alpha_sweep.items()},
           "wall_seconds": total}
    (cfg.registry / "selection_bench.json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
