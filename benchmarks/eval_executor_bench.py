"""`expert eval` on executors (issue 17): 10 experts x 40 tasks with local, local:2 and ray:2 — wall time, same results.

Run: .venv/bin/python benchmarks/eval_executor_bench.py [--experts 10] [--tasks 40] [--executors local local:2 ray:2]

One template registry: a cifar_resnet8 probe and E experts (random weights, each distinct: the timing of the
expert x task matrix does not depend on what the experts learned), T tasks from the built-in digits (class pairs
and triples, 60-120 images). For each executor, a fresh copy of the template (no cached features) runs
``Registry.evaluate(executor=...)``: every (expert, task) pair = features of the expert on the task's images + the
linear probe. Wall seconds in the same invocation; the result matrices are compared with the first executor's
(equal up to one test image per pair: workers run torch with another thread count, so float sums differ in order).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--executors", nargs="+", default=["local", "local:2", "ray:2"])
    a = ap.parse_args()

    import torch
    from bulk_bench import random_probe_registry

    from taskreg.embedders.probes import create_model
    from taskreg.registry import Registry

    groups = [*itertools.combinations(range(10), 2), *itertools.combinations(range(10), 3)]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        template = d / "template"
        reg = random_probe_registry(template)
        for i in range(a.tasks):
            classes = ",".join(map(str, groups[i % len(groups)]))
            reg.add_task(f"t{i:02d}", f"builtin:digits?classes={classes}&n={60 + 20 * (i % 4)}", max_samples=30)
        for j in range(a.experts):
            torch.manual_seed(100 + j)
            torch.save(create_model("cifar_resnet8", num_classes=10).state_dict(), d / f"e{j}.pt")
            reg.add_expert(f"e{j:02d}", arch="cifar_resnet8", weights=d / f"e{j}.pt")
        shutil.rmtree(template / "cache" / "features", ignore_errors=True)

        rows, first = [], None
        for spec in a.executors:
            root = d / spec.replace(":", "-")
            shutil.copytree(template, root)
            copy = Registry.open(root)
            started = time.perf_counter()
            measured, _ = copy.evaluate(executor=spec)
            wall = time.perf_counter() - started
            errors = copy.results_matrix()[2]
            first = errors if first is None else first
            diff = float(np.abs(errors - first).max())
            rows.append((spec, measured, wall, diff))
        base = rows[0][2]
        print(f"| executor | pairs | wall s | speed-up vs {rows[0][0]} | max abs error difference vs {rows[0][0]} |")
        print("|---|---:|---:|---:|---:|")
        for spec, measured, wall, diff in rows:
            print(f"| {spec} | {measured} | {wall:.1f} | {base / wall:.2f}x | {diff:.4f} |")


if __name__ == "__main__":
    main()
