"""`select` and `expert add` latency on a registry whose MLflow store is a tracking server vs the local sqlite store
(issue 17).

Run: .venv/bin/python benchmarks/tracking_server_bench.py [--repeats 5] [--experts 3]

Starts a real PostgreSQL and `mlflow server --serve-artifacts` on 127.0.0.1 (tests/pg_server.py), then builds two
registries in this process the same way (tiny cifar_resnet8 probe, one builtin digits task, ``--experts`` experts of
random weights): one with the local `mlflow.db`, one with `init --tracking-uri`. Each operation is timed as one command
would do it (a fresh `Registry.open`, then the call), `--repeats` times on each registry, interleaved; prints
medians and the server/local ratio as a Markdown table for benchmarks/RESULTS.md.

* select: `select --data builtin:digits?n=200 --method logme` (loads the probe's and every expert's weights: from the
  server, through the local artifact cache after the first call);
* select, empty weights cache: the same after removing `<root>/cache/artifacts` (a reader's first query on another
  machine: the probe's and the experts' weights are downloaded from the server; the local store reads its files);
* expert add: a new expert each time (a pending run, a weights upload, a registered model, the catalog commit).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg_server, tests.procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--experts", type=int, default=3, help="experts registered before timing (select ranks them)")
    args = parser.parse_args()
    from taskreg.registry import Registry
    from tests.pg_server import tracking_server
    from tests.procs import save_random_expert

    with tempfile.TemporaryDirectory(prefix="taskreg-tsbench-") as tmp, tracking_server() as server:
        base = Path(tmp)
        weights = save_random_expert(base / "e.pt")
        roots = {"local sqlite": base / "local", "tracking server": base / "team"}
        for label, root in roots.items():
            reg = Registry.init(root, tracking_uri=server.uri if label == "tracking server" else None)
            reg.train_probe("default", arch="cifar_resnet8", epochs=1, sources=("builtin:digits?n=300",))
            reg.add_task("digits", "builtin:digits?n=200", max_samples=200)
            for k in range(args.experts):
                reg.add_expert(f"base{k}", arch="cifar_resnet8", weights=weights, trained_on="digits")

        def select(root: Path, i: int) -> None:
            Registry.open(root).select("builtin:digits?n=200", method="logme", max_samples=200)

        def select_cold(root: Path, i: int) -> None:  # another machine's first query: nothing in the weights cache
            shutil.rmtree(root / "cache" / "artifacts", ignore_errors=True)  # (the local store has no such cache)
            select(root, i)

        def expert_add(root: Path, i: int) -> None:
            Registry.open(root).add_expert(f"e{i + 1}", arch="cifar_resnet8", weights=weights, trained_on="digits")

        ops: dict[str, Callable[[Path, int], None]] = {
            "select (logme, 200 images)": select, "select, empty weights cache": select_cold, "expert add": expert_add}
        times: dict[tuple[str, str], list[float]] = {}
        for root in roots.values():
            select(root, -1)  # warm: imports, dataset cache, the server's first artifact download
        for op, fn in ops.items():
            for i in range(args.repeats):
                for label, root in roots.items():
                    t0 = time.perf_counter()
                    fn(root, i)
                    times.setdefault((op, label), []).append(time.perf_counter() - t0)
        print(f"| operation (median of {args.repeats}, [min, max]) | local sqlite | tracking server | server / local |")
        print("|---|---|---|---|")
        for op in ops:
            cells = []
            for label in roots:
                ts = times[(op, label)]
                cells.append(f"{statistics.median(ts):.3f} s [{min(ts):.3f}, {max(ts):.3f}]")
            local = statistics.median(times[(op, "local sqlite")])
            remote = statistics.median(times[(op, "tracking server")])
            print(f"| {op} | {cells[0]} | {cells[1]} | {remote / local:.2f}x |")


if __name__ == "__main__":
    main()
