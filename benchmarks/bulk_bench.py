"""Bulk registration (issue 17): `taskreg task add-many MANIFEST` of N tasks vs N separate `taskreg task add`,
or (``--executors``) `task add-many` on several executors.

Run: .venv/bin/python benchmarks/bulk_bench.py [--tasks 50] [--max-samples 100]
     .venv/bin/python benchmarks/bulk_bench.py --executors local,local:2,ray:2 [--tasks 50] [--max-samples 100]

One template registry with a cifar_resnet8 probe (random weights: the timing does not depend on what the probe
learned); N tasks from the built-in digits (class pairs x sizes, distinct data each). Two copies of the template
register the same N tasks with the same seeds:

* baseline: N fresh `taskreg task add NAME --data SOURCE` processes, one after the other (what a shell loop does);
* `taskreg task add-many MANIFEST`: one process.

Both are timed as wall seconds of the child processes, in the same invocation, and must end with identical
Task2Vec vectors (checked). Prints a Markdown table for benchmarks/RESULTS.md.

With ``--executors A,B,...`` one `taskreg task add-many MANIFEST --executor E` process per executor registers the
same N tasks into its own copy of the template (the first executor is the baseline of the ratios); the table gives
each one's wall seconds, its speed-up over the first, and the largest absolute difference of its Task2Vec and domain
vectors from the first's (0 = bit-for-bit).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TASKREG = str(Path(sys.executable).with_name("taskreg"))


def sources(n: int) -> list[tuple[str, str]]:
    """``n`` (name, source) pairs of distinct built-in digit tasks."""
    pairs = list(itertools.combinations(range(10), 2))
    out = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        size = 40 + 10 * (i // len(pairs))
        out.append((f"t{i:03d}", f"builtin:digits?classes={a},{b}&n={size}"))
    return out


def random_probe_registry(root: Path, seed: int = 0) -> object:
    """A new registry at ``root`` whose default probe is a cifar_resnet8 with seeded random weights (a timing of
    the registry's work does not depend on what the probe learned); returns the opened Registry."""
    import torch

    from taskreg.embedders.probes import create_model
    from taskreg.registry import Registry

    reg = Registry.init(root)
    torch.manual_seed(seed)
    torch.save(create_model("cifar_resnet8", num_classes=10).state_dict(), root.parent / "probe.pt")
    reg.add_probe("default", arch="cifar_resnet8", weights=root.parent / "probe.pt")
    return reg


def run(argv: list[str]) -> float:
    started = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {res.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--max-samples", type=int, default=100)
    ap.add_argument("--executors", help="comma-separated executor specs: time `task add-many` on each instead")
    a = ap.parse_args()
    if a.executors:
        executors(a.tasks, a.max_samples, [e.strip() for e in a.executors.split(",") if e.strip()])
        return

    from taskreg.registry import Registry

    tasks = sources(a.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        template = d / "template"
        random_probe_registry(template)
        manifest = d / "tasks.csv"
        manifest.write_text("name,source\n" + "".join(f'{n},"{s}"\n' for n, s in tasks))
        one, many = d / "one-by-one", d / "add-many"
        for root in (one, many):
            shutil.copytree(template, root)
            Registry.open(root)

        started = time.perf_counter()
        per_task = [run([TASKREG, "--registry", str(one), "task", "add", n, "--data", s, "--max-samples",
                         str(a.max_samples)]) for n, s in tasks]
        separate = time.perf_counter() - started
        bulk = run([TASKREG, "--registry", str(many), "task", "add-many", str(manifest), "--max-samples",
                    str(a.max_samples)])

        va = Registry.open(one).task_vectors("default", "montecarlo")
        vb = Registry.open(many).task_vectors("default", "montecarlo")
        same = va[0] == vb[0] and np.array_equal(va[1], vb[1])
        print(f"| tasks | {a.tasks} separate `task add` processes (s) | one `task add-many` (s) | speed-up | "
              f"identical vectors |")
        print("|---:|---:|---:|---:|---|")
        print(f"| {a.tasks} | {separate:.1f} (median {np.median(per_task):.2f} per task) | {bulk:.1f} | "
              f"{separate / bulk:.1f}x | {'yes' if same else 'NO'} |")
        if not same:
            raise SystemExit("the two registries differ")


def all_vectors(root: Path) -> dict[str, np.ndarray]:
    """Every registered Task2Vec (montecarlo) and domain vector, by "task/method"."""
    from taskreg.registry import Registry

    reg = Registry.open(root)
    out = {}
    for method in ("montecarlo", "domain"):
        names, vecs = reg.tasks.task_vectors("default", method)
        out.update({f"{n}/{method}": v for n, v in zip(names, vecs, strict=True)})
    return out


def executors(n_tasks: int, max_samples: int, specs: list[str]) -> None:
    """`task add-many` of the same manifest on each executor, each into a fresh copy of one template registry."""
    from taskreg.registry import Registry

    tasks = sources(n_tasks)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        template = d / "template"
        random_probe_registry(template)
        manifest = d / "tasks.csv"
        manifest.write_text("name,source\n" + "".join(f'{n},"{s}"\n' for n, s in tasks))
        rows = []
        for i, spec in enumerate(specs):
            root = d / f"run{i}"
            shutil.copytree(template, root)
            Registry.open(root)
            seconds = run([TASKREG, "--registry", str(root), "task", "add-many", str(manifest), "--max-samples",
                           str(max_samples), "--executor", spec])
            rows.append((spec, seconds, all_vectors(root)))
        base_seconds, base = rows[0][1], rows[0][2]
        print(f"| executor | tasks | wall s | speed-up vs {specs[0]} | max abs vector difference vs {specs[0]} |")
        print("|---|---:|---:|---:|---:|")
        for spec, seconds, vecs in rows:
            if sorted(vecs) != sorted(base) or len(vecs) != 2 * n_tasks:
                raise SystemExit(f"{spec}: registered {len(vecs)} vectors, {specs[0]} {len(base)}")
            diff = max(float(np.abs(vecs[k] - base[k]).max()) for k in base)
            print(f"| {spec} | {n_tasks} | {seconds:.1f} | {base_seconds / seconds:.2f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
