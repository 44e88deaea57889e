"""Which probe should be the default (issue 14, item 6): Task2Vec on the ImageNet Lite0 vs the trained small probe.

Run:  .venv/bin/python benchmarks/probe_choice.py --zoo-cache DIR [--cache DIR] [--quick]

Works on ``benchmarks/zoo_bench.py``'s library (100 tasks over 10 domains, 23 experts) and its measured ground
truth, read from the zoo benchmark's cache (``--zoo-cache``, read only: the error matrix, and the Lite0@64 Task2Vec
vectors of the library, which are reused when they were made with the same settings). Probes:

- ``lite0@32``, ``lite0@64`` (zoo_bench's), ``lite0@96``: the ImageNet EfficientNet-Lite0 of the zoo wheel;
- ``small``: the probe ``taskreg demo`` trains (cifar_resnet8 on builtin:patches?split=train +
  builtin:mnist5k?n=2000&split=train, 4 epochs, seed 0, classes kept apart) at its own 32 px.

For each probe, with Task2Vec Monte Carlo and zoo_bench's ``--max-samples`` (300) on every library task and on the
expert training sets (F_i: a domain's expert side, embedded with the same probe):
1. stability: d_sym between the seed-0 and seed-1 embeddings of one task per domain vs the mean d_sym between
   different tasks;
2. triple orderings (task2vec_bench's ``triple_accuracy``): (a, b same domain, c another domain), and the harder
   ones where c is another shift of the same base set (mnist5k vs mnist5k+invert);
3. Spearman of ||e||_1 with the task's difficulty (oracle error, mean expert error; also within domains);
4. seconds per task and per 1,000 images (the seed-1 embeddings, all made in this run);
5. selection quality with zoo_bench's rankings and bootstrap (asym, sym, Model2Vec 5-fold), overall and split into
   the 28-px domains (mnist*, animals*, and digits at 8 px) and the photo domains (patches*).
A speed-only part times Task2Vec Monte Carlo on Lite0 at 128 / 160 / 224 px (200 images, 2 rounds, median) next to a
plain forward+backward of Lite0 over the same images (task2vec_bench's ``plain_pass``).

Every embedding is cached in ``--cache`` (default /work/bench/probe-choice) so a rerun redoes only the analysis.
Markdown on stdout, raw numbers in ``<cache>/probe_choice.json``, a PNG at ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see selection_bench.py; must precede `import torch`
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zoo_bench as zb  # noqa: E402
from rich.console import Console  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from selection_bench import index_rankings, model2vec_kfold  # noqa: E402
from task2vec_bench import plain_pass, speed_probe, triple_accuracy  # noqa: E402

from taskreg import data  # noqa: E402
from taskreg.data.images import batch_to_size  # noqa: E402
from taskreg.embedders.distances import d_sym_many  # noqa: E402
from taskreg.embedders.probes import ProbeSpec, create_model, default_spec, train_probe  # noqa: E402
from taskreg.embedders.task2vec import embed, trivial_embedding  # noqa: E402
from taskreg.plotting import pyplot  # noqa: E402

# taskreg demo's default probe (registry/demo.py -> Registry.train_probe -> embedders.probes.train_probe)
SMALL_ARCH = "cifar_resnet8"
SMALL_SOURCES = ("builtin:patches?split=train", "builtin:mnist5k?n=2000&split=train")
SMALL_EPOCHS = 4
PROBES = ("lite0@32", "lite0@64", "lite0@96", "small")
RUN_ORDER = {"lite0@64": 0, "small": 1, "lite0@32": 2, "lite0@96": 3}  # by cost (lite0@64 is mostly in the zoo cache)
SPLITS = {"all": lambda d: True, "28-px (mnist*, animals*, digits)": lambda d: not d.startswith("patches"),
          "photos (patches*)": lambda d: d.startswith("patches")}
METHODS = ("asym", "sym", "model2vec")


@dataclass
class Args:
    cache: Path
    zoo_cache: Path
    plot: Path
    probes: tuple[str, ...]
    max_samples: int
    tasks_per_domain: int
    domains: list[zb.Domain]
    small_epochs: int
    m2v_epochs: int
    folds: int
    l2: float
    speed_sizes: tuple[int, ...]
    speed_images: int
    speed_repeats: int
    model2vec: bool
    device: str = "cpu"
    seed: int = 0


# ---------------------------------------------------------------------------------------------- probes
def small_probe(args: Args, console: Console) -> tuple[torch.nn.Module, ProbeSpec, float]:
    """The demo's default probe, trained as ``Registry.train_probe`` does (cached as a state_dict)."""
    spec = default_spec(SMALL_ARCH)
    path = args.cache / f"small-probe-e{args.small_epochs}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model = create_model(SMALL_ARCH, num_classes=int(saved["classes"]))
        model.load_state_dict(saved["state_dict"])
        return model.eval(), spec, float(saved["seconds"])
    xs, ys, offset = [], [], 0
    for src in SMALL_SOURCES:
        ds = data.load(src)
        xs.append(batch_to_size(ds.x, spec.input_size))
        ys.append(ds.y + offset)
        offset += ds.n_classes
    started = time.perf_counter()
    model = train_probe(SMALL_ARCH, np.concatenate(xs), np.concatenate(ys), epochs=args.small_epochs,
                        seed=args.seed, device=args.device, spec=spec)
    seconds = time.perf_counter() - started
    console.print(f"small probe trained: {sum(len(y) for y in ys)} images, {offset} classes, "
                  f"{args.small_epochs} epochs, {seconds:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "classes": offset, "seconds": seconds}, path)
    return model.eval(), spec, seconds


def load_probe(key: str, args: Args, console: Console) -> tuple[torch.nn.Module, ProbeSpec]:
    if key == "small":
        model, spec, _ = small_probe(args, console)
        return model, spec
    arch, _, size = key.partition("@")
    return zb.imagenet_model(f"efficientnet_{arch}"), zb.spec_for(f"efficientnet_{arch}", int(size))


# ---------------------------------------------------------------------------------------------- embeddings
class Embedder:
    """Task2Vec of one probe with a per-probe cache; Lite0@64 seed-0 vectors come from the zoo cache if there."""

    def __init__(self, key: str, args: Args, console: Console) -> None:
        self.key, self.args, self.console = key, args, console
        self.model, self.spec = load_probe(key, args, console)
        self.dir = args.cache / key.replace("@", "-") / f"m{args.max_samples}"
        self.reused = 0

    def _reuse(self, zoo_key: str, path: Path, seed: int) -> None:
        """zoo_bench embedded the library with this very probe, seed and max_samples: copy its vector."""
        src = self.args.zoo_cache / "task2vec" / f"{zoo_key}.npz"
        if (self.key == f"lite0@{64}" and seed == 0 and self.args.max_samples == 300 and src.exists()
                and not path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)
            self.reused += 1

    def vector(self, zoo_key: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
        path = self.dir / f"{zoo_key}-s{seed}.npz"
        self._reuse(zoo_key, path, seed)

        def compute() -> dict[str, np.ndarray]:
            s = time.perf_counter()
            e = embed(self.model, self.spec, x, y, method="montecarlo", max_samples=self.args.max_samples, seed=seed,
                      device=self.args.device)
            return {"v": e.vector, "seconds": np.array(time.perf_counter() - s)}

        z = zb.cached(path, compute)
        return z["v"], float(z["seconds"])

    def t0(self) -> np.ndarray:
        path = self.dir / "t0-s0.npz"
        self._reuse("t0", path, 0)
        return zb.cached(path, lambda: {"v": trivial_embedding(self.model, "montecarlo", spec=self.spec,
                                                               seed=self.args.seed, device=self.args.device)})["v"]


# ---------------------------------------------------------------------------------------------- analysis
def quality(tv: np.ndarray, stab0: np.ndarray, stab1: np.ndarray, tasks: list[zb.Task], errors: np.ndarray,
            seconds: list[float], images: list[int]) -> dict[str, float]:
    """Stability, triple orderings, Spearman with difficulty, seconds of one probe's vectors."""
    n = len(tasks)
    dist = np.stack([d_sym_many(tv[i], tv) for i in range(n)])
    doms = [t.domain for t in tasks]
    same = float(np.mean([d_sym_many(a, b[None])[0] for a, b in zip(stab0, stab1, strict=True)]))
    diff = float(dist[~np.eye(n, dtype=bool)].mean())
    families: dict[str, list[int]] = {}
    for i, d in enumerate(doms):
        families.setdefault(d.partition("+")[0], []).append(i)
    shift = [triple_accuracy(dist[np.ix_(rows, rows)], [doms[i] for i in rows]) for rows in families.values()
             if len({doms[i] for i in rows}) > 1]
    norm = np.abs(tv).sum(1)
    oracle, mean_err = errors.min(1), errors.mean(1)
    within = [spearmanr(norm[rows], oracle[rows]).statistic for rows in
              ([i for i, d in enumerate(doms) if d == dom] for dom in dict.fromkeys(doms)) if len(rows) > 2]
    out = {"d_seed": same, "d_diff": diff, "separation": diff / max(same, 1e-12),
           "triples": triple_accuracy(dist, doms), "triples_shift": float(np.mean(shift)) if shift else float("nan"),
           "rho_oracle": float(spearmanr(norm, oracle).statistic),
           "rho_mean_expert": float(spearmanr(norm, mean_err).statistic),
           "rho_oracle_within_domain": float(np.nanmean(within)) if within else float("nan"),
           "s_per_task": float(statistics.median(seconds)),
           "s_per_1000_images": float(statistics.median(1000 * s / k for s, k in zip(seconds, images, strict=True))),
           "dims": int(tv.shape[1])}
    for split, keep in list(SPLITS.items())[1:]:
        rows = [i for i, d in enumerate(doms) if keep(d)]
        if len(rows) > 2:
            out[f"rho_oracle {split}"] = float(spearmanr(norm[rows], oracle[rows]).statistic)
    return out


def selection_rows(rankings: dict[str, list[list[int]]], errors: np.ndarray, rows: list[int],
                   seed: int) -> list[zb.Row]:
    sub = {m: [r[i] for i in rows] for m, r in rankings.items()}
    return zb.score_rows(sub, errors[rows], {}, {}, seed)


# ---------------------------------------------------------------------------------------------- speed
def speed(args: Args, x: np.ndarray, y: np.ndarray, console: Console) -> list[dict[str, float]]:
    """Task2Vec Monte Carlo vs a plain forward+backward of Lite0 (ImageNet body, fresh head) per input size."""
    out = []
    for size in args.speed_sizes:
        model, spec, _ = speed_probe(argparse.Namespace(arch="efficientnet_lite0", zoo_weights=True, size=size))
        floors, embeds = [], []
        for _ in range(args.speed_repeats):
            s = time.perf_counter()
            plain_pass(model, spec, x, y, 64)
            floors.append(time.perf_counter() - s)
            s = time.perf_counter()
            embed(model, spec, x, y, method="montecarlo", batch_size=64, device=args.device)
            embeds.append(time.perf_counter() - s)
        row = {"size": size, "images": len(x), "embed_s": statistics.median(embeds),
               "floor_s": statistics.median(floors),
               "ratio": statistics.median(e / f for e, f in zip(embeds, floors, strict=True))}
        row["embed_s_per_1000"] = 1000 * row["embed_s"] / len(x)
        row["floor_s_per_1000"] = 1000 * row["floor_s"] / len(x)
        console.print(f"  speed lite0@{size}: embed {row['embed_s']:.1f} s, fwd+bwd {row['floor_s']:.1f} s, "
                      f"ratio {row['ratio']:.2f}")
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- output
def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|",
                      *("| " + " | ".join(r) + " |" for r in rows)])


def quality_md(q: dict[str, dict[str, float]]) -> str:
    head = ["probe", "dims", "d_sym(seed 0, seed 1)", "mean d_sym(different tasks)", "ratio", "triples: other domain",
            "triples: other shift of the same base", "Spearman(‖e‖₁, oracle err)", "Spearman(‖e‖₁, mean expert err)",
            "same, within a domain (mean)", "same, 28-px tasks", "same, photo tasks", "s / task",
            "s / 1,000 images"]
    rows = [[k, str(v["dims"]), f"{v['d_seed']:.3f}", f"{v['d_diff']:.3f}", f"{v['separation']:.1f}×",
             f"{v['triples']:.3f}", f"{v['triples_shift']:.3f}", f"{v['rho_oracle']:+.2f}",
             f"{v['rho_mean_expert']:+.2f}", f"{v['rho_oracle_within_domain']:+.2f}",
             f"{v.get('rho_oracle ' + list(SPLITS)[1], float('nan')):+.2f}",
             f"{v.get('rho_oracle ' + list(SPLITS)[2], float('nan')):+.2f}", f"{v['s_per_task']:.2f}",
             f"{v['s_per_1000_images']:.1f}"] for k, v in q.items()]
    return md_table(head, rows)


def selection_md(sel: dict[str, dict[str, list[zb.Row]]], base: dict[str, list[zb.Row]], split: str) -> str:
    head = ["probe", "method", "mean test error", "ratio of means vs oracle", "top-1", "top-3", "weighted Kendall tau"]
    rows = []
    for r in base[split]:
        if r.method in ("oracle", "generic", "chance"):
            rows.append(["–", r.method, zb.fmt(r.mean_error, signed=False),
                         "0 (reference)" if r.method == "oracle" else zb.fmt(r.ratio_of_means),
                         zb.fmt(r.top1, signed=False), zb.fmt(r.top3, signed=False),
                         zb.fmt(r.tau, pct=False) if r.method != "chance" else "0"])
    for probe, by_split in sel.items():
        for r in by_split[split]:
            if r.method in METHODS:
                rows.append([probe, r.method, zb.fmt(r.mean_error, signed=False), zb.fmt(r.ratio_of_means),
                             zb.fmt(r.top1, signed=False), zb.fmt(r.top3, signed=False), zb.fmt(r.tau, pct=False)])
    return md_table(head, rows)


def plot(sel: dict[str, dict[str, list[zb.Row]]], base: dict[str, list[zb.Row]], counts: dict[str, int],
         path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(5 * len(SPLITS), 0.9 + 0.28 * len(sel) * len(METHODS)),
                             sharey=True)
    colours = {"asym": "tab:red", "sym": "tab:orange", "model2vec": "tab:purple"}
    for ax, split in zip(np.atleast_1d(axes), SPLITS, strict=True):
        labels, values, lows, highs, cols = [], [], [], [], []
        for probe, by_split in sel.items():
            for r in by_split[split]:
                if r.method in METHODS:
                    labels.append(f"{probe} {r.method}")
                    iv = r.ratio_of_means
                    values.append(100 * iv.value)
                    lows.append(100 * (iv.value - iv.low))
                    highs.append(100 * (iv.high - iv.value))
                    cols.append(colours[r.method])
        ax.barh(labels, values, xerr=[lows, highs], color=cols, capsize=2)
        for r in base[split]:
            if r.method in ("generic", "chance"):
                ax.axvline(100 * r.ratio_of_means.value, color="grey", ls="--" if r.method == "generic" else ":")
                ax.text(100 * r.ratio_of_means.value, -0.7, f" {r.method}", fontsize=7, color="grey")
        ax.invert_yaxis()
        ax.set_title(f"{split}: {counts[split]} tasks", fontsize=9)
        ax.set_xlabel("ratio of means vs oracle [%] (lower is better)")
    fig.suptitle("Task2Vec probe choice: selection quality on the zoo library (whiskers: 95% bootstrap CI)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo-cache", type=Path, required=True, help="zoo_bench's cache (read only)")
    p.add_argument("--cache", type=Path, default=None, help="this benchmark's cache (default /work/bench/probe-choice)")
    p.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "probe_choice.png")
    p.add_argument("--probes", default=",".join(PROBES))
    p.add_argument("--quick", action="store_true", help="2 domains, 3 tasks each, 60 images per embedding")
    p.add_argument("--max-samples", type=int, default=None, help="images per Task2Vec embedding (zoo_bench: 300)")
    p.add_argument("--no-model2vec", action="store_true")
    p.add_argument("--speed-sizes", default="128,160,224", help="Lite0 input sizes of the speed part ('' to skip)")
    a = p.parse_args()
    domains = [d for d in zb.DOMAINS if d.name in ("mnist5k", "patches")] if a.quick else zb.DOMAINS
    return Args(cache=a.cache or Path(f"/work/bench/probe-choice{'-quick' if a.quick else ''}"),
                zoo_cache=a.zoo_cache, plot=a.plot, probes=tuple(a.probes.split(",")),
                max_samples=a.max_samples or (60 if a.quick else 300), tasks_per_domain=3 if a.quick else 10,
                domains=domains, small_epochs=1 if a.quick else SMALL_EPOCHS, m2v_epochs=10 if a.quick else 150,
                folds=2 if a.quick else 5, l2=10.0,
                speed_sizes=tuple(int(s) for s in a.speed_sizes.split(",") if s),
                speed_images=16 if a.quick else 200, speed_repeats=1 if a.quick else 2,
                model2vec=not a.no_model2vec)


def main() -> None:
    args = parse_args()
    console = Console()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    # the zoo library (all 10 domains, as zoo_bench builds it) and its measured error matrix
    loaded = {d.name: zb.sides(d) for d in zb.DOMAINS}
    labels = {n: ds.y[lib] for n, (ds, _, lib) in loaded.items()}
    full = zb.library(zb.DOMAINS, labels, 10)
    all_experts = ([f"imagenet-{a.removeprefix('efficientnet_')}" for a in zb.GENERIC]
                   + [f"ft-{d.name}" for d in zb.DOMAINS] + [f"small-{d.name}" for d in zb.DOMAINS])
    with np.load(args.zoo_cache / f"errors-{len(full)}x{len(all_experts)}.npz") as z:
        if z["task_names"].tolist() != [t.name for t in full]:
            raise SystemExit(f"{args.zoo_cache}: its error matrix is for another library")
        all_errors = z["errors"]
    names = {d.name for d in args.domains}
    keep_t = [i for i, t in enumerate(full) if t.domain in names
              and sum(u.domain == t.domain for u in full[:i]) < args.tasks_per_domain]
    experts = [e for e in all_experts if e.startswith("imagenet-") or e.split("-", 1)[1] in names]
    tasks = [full[i] for i in keep_t]
    errors = all_errors[np.ix_(keep_t, [all_experts.index(e) for e in experts])]
    stab = [next(i for i, t in enumerate(tasks) if t.domain == d.name) for d in args.domains]
    console.print(f"{len(tasks)} tasks x {len(experts)} experts, {len(args.domains)} domains; probes "
                  f"{', '.join(args.probes)}; Task2Vec Monte Carlo, {args.max_samples} images per embedding")

    n_generic = len(zb.GENERIC)
    known = np.arange(n_generic, len(experts))
    base_rankings = {"oracle": [np.argsort(r, kind="stable").tolist() for r in errors],
                     "generic": [list(range(len(experts)))] * len(tasks)}
    split_rows = {s: [i for i, t in enumerate(tasks) if keep(t.domain)] for s, keep in SPLITS.items()}
    split_rows = {s: r for s, r in split_rows.items() if r}
    base = {s: selection_rows(base_rankings, errors, r, args.seed) for s, r in split_rows.items()}

    # speed only (first, so that it is not lost if the slow Lite0@96 pass is cut short): Lite0 at larger input
    # sizes, on the images of the first photo task (else the first task); cached like everything else
    speed_rows: list[dict[str, float]] = []
    if args.speed_sizes:
        first = next((t for t in tasks if t.domain.startswith("patches")), tasks[0])
        ds, _, lib = loaded[first.domain]
        rows = first.idx[:args.speed_images]
        path = args.cache / (f"speed-{'-'.join(map(str, args.speed_sizes))}px-{len(rows)}img-"
                             f"{args.speed_repeats}rounds.json")
        if path.exists():
            speed_rows = json.loads(path.read_text())
        else:
            speed_rows = speed(args, ds.x[lib][rows], ds.y[lib][rows], console)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(speed_rows, indent=1))

    q: dict[str, dict[str, float]] = {}
    sel: dict[str, dict[str, list[zb.Row]]] = {}
    timings: dict[str, dict[str, float]] = {}
    for key in sorted(args.probes, key=lambda k: RUN_ORDER.get(k, len(RUN_ORDER))):  # cheapest first
        t = time.perf_counter()
        emb = Embedder(key, args, console)
        vecs, stab1, secs, imgs = [], [], [], []
        with zb.bar(console) as prog:
            job = prog.add_task(f"Task2Vec on {key}", total=len(tasks) + 2 * len(args.domains))
            for task in tasks:
                ds, _, lib = loaded[task.domain]
                vecs.append(emb.vector(task.name.replace("/", "__"), ds.x[lib][task.idx], ds.y[lib][task.idx])[0])
                prog.advance(job)
            base_v = np.zeros((len(experts), len(vecs[0])), dtype=np.float32)  # F_i; zero = unknown (ImageNet)
            for dom in args.domains:
                ds, exp_idx, _ = loaded[dom.name]
                f_i = emb.vector(f"expert--{dom.name}", ds.x[exp_idx], ds.y[exp_idx])[0]
                base_v[experts.index(f"ft-{dom.name}")] = base_v[experts.index(f"small-{dom.name}")] = f_i
                prog.advance(job)
            for i in stab:
                ds, _, lib = loaded[tasks[i].domain]
                v, s = emb.vector(tasks[i].name.replace("/", "__"), ds.x[lib][tasks[i].idx],
                                  ds.y[lib][tasks[i].idx], seed=1)
                stab1.append(v)
                secs.append(s)
                imgs.append(min(args.max_samples, tasks[i].idx.size))
                prog.advance(job)
            t0 = emb.t0()
        timings[key] = {"task2vec_stage_s": time.perf_counter() - t, "reused_from_zoo_cache": emb.reused}
        tv = np.stack(vecs)
        q[key] = quality(tv, tv[stab], np.stack(stab1), tasks, errors, secs, imgs)

        t = time.perf_counter()
        rankings: dict[str, list[list[int]]] = {}
        for method in ("asym", "sym"):
            ranked = index_rankings(tv, base_v[known], method, t0, zb.ALPHA)
            rankings[method] = [[int(known[j]) for j in r] + list(range(n_generic)) for r in ranked]
        if args.model2vec:
            m2v_key = f"model2vec-l2_{args.l2}-e{args.m2v_epochs}-f{args.folds}-{len(tasks)}x{len(experts)}"
            zoo_m2v = args.zoo_cache / f"{m2v_key}.npz"
            mine = emb.dir / f"{m2v_key}.npz"
            if key == "lite0@64" and args.max_samples == 300 and zoo_m2v.exists() and not mine.exists():
                shutil.copyfile(zoo_m2v, mine)  # zoo_bench's own fit: the same vectors, settings and library
            rankings["model2vec"] = zb.cached(mine, lambda tv=tv, b=base_v, t0=t0: {"r": np.array(model2vec_kfold(
                tv, b, errors, t0, folds=args.folds, alpha=zb.ALPHA, seed=args.seed, l2=args.l2,
                epochs=args.m2v_epochs))})["r"].tolist()
        timings[key]["rankings_s"] = time.perf_counter() - t
        sel[key] = {s: selection_rows(rankings, errors, r, args.seed) for s, r in split_rows.items()}
        console.print(f"{key}: Task2Vec stage {timings[key]['task2vec_stage_s']:.0f} s ({emb.reused} vectors reused "
                      f"from {args.zoo_cache}), rankings {timings[key]['rankings_s']:.0f} s")

    q = {k: q[k] for k in args.probes}  # back to the order asked for
    sel = {k: sel[k] for k in args.probes}

    # output
    parts = [f"### Task2Vec quality per probe ({len(tasks)} tasks, {len(args.domains)} domains; stability on "
             f"{len(stab)} tasks, one per domain)", quality_md(q)]
    for split, rows in split_rows.items():
        parts += [f"### Selection, {split}: {len(rows)} tasks x {len(experts)} experts "
                  "(95% bootstrap CIs over tasks)", selection_md(sel, base, split)]
    if speed_rows:
        parts += [f"### Speed: Lite0 (ImageNet body), {speed_rows[0]['images']:.0f} images, median of "
                  f"{args.speed_repeats} rounds",
                  md_table(["input px", "Task2Vec s", "fwd+bwd s", "ratio (median of rounds)",
                            "Task2Vec s / 1,000 images", "fwd+bwd s / 1,000 images"],
                           [[f"{r['size']:.0f}", f"{r['embed_s']:.2f}", f"{r['floor_s']:.2f}", f"{r['ratio']:.2f}×",
                             f"{r['embed_s_per_1000']:.1f}", f"{r['floor_s_per_1000']:.1f}"] for r in speed_rows])]
    md = "\n\n".join(parts)
    print("\n" + md + "\n")
    counts = {s: len(r) for s, r in split_rows.items()}
    plot(sel, base, counts, args.plot)
    total = time.perf_counter() - started
    out = {"args": {k: str(v) for k, v in asdict(args).items() if k != "domains"},
           "domains": [d.name for d in args.domains], "tasks": [t.name for t in tasks], "experts": experts,
           "quality": q, "selection": {p: {s: [asdict(r) for r in rows] for s, rows in by.items()}
                                       for p, by in sel.items()},
           "baselines": {s: [asdict(r) for r in rows] for s, rows in base.items()}, "speed": speed_rows,
           "timings": timings, "total_s": total, "markdown": md}
    args.cache.mkdir(parents=True, exist_ok=True)
    (args.cache / "probe_choice.json").write_text(json.dumps(out, indent=1))
    console.print(f"wrote {args.plot} and {args.cache / 'probe_choice.json'}; total {total:.0f} s")


if __name__ == "__main__":
    main()
