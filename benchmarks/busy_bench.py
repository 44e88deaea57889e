"""Issue 16: `taskreg select` on a shared machine — idle, next to one busy core, next to a second `taskreg select`.

Usage (run it alone on the machine: it measures wall time)::

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 /work/wt/alone .venv/bin/python benchmarks/busy_bench.py \
        [--repeats 5] [--registry DIR]

Builds (once, in DIR, default a temporary directory) a small real registry: the cifar_resnet8 probe trained one
epoch on 500 MNIST digits, four 2-class MNIST tasks and five experts (random-init cifar_resnet8, trained_on a task).
Each measurement is one `python -m taskreg.cli select --data builtin:mnist5k?n=350 --top 3 --json --method asym`
process, from start to exit (interpreter start, imports, the query's Task2Vec probe pass, the index search); the
Task2Vec cache of the query is deleted before every run, so every run does the probe pass.

Two configurations, measured in the same invocation:

* ``new``  — today's CLI with the user's environment free of thread settings: the CLI's thread budget applies
  (passive waiting, intra-op threads = CPUs available, OpenBLAS 1 thread);
* ``old``  — the behaviour before issue 16 (the baseline): ``OMP_WAIT_POLICY=ACTIVE`` (spinning OpenMP threads) and
  no thread cap (OMP/MKL/OpenBLAS threads = ``os.cpu_count()``), set in the environment, which the CLI keeps.

Three scenarios each: ``idle``; ``busy`` (one pure-Python ``while True`` loop in a subprocess); ``two`` (a second
`taskreg select` of the same configuration, on its own copy of the registry, run back to back for the whole
measurement). Medians of ``--repeats`` runs; ratios to the idle median of the same configuration. Goal (issue 16):
busy <= 1.5x and two <= 2.2x idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
QUERY = "builtin:mnist5k?n=350"
TASKS = {"m01": "0,1", "m23": "2,3", "m45": "4,5", "m67": "6,7"}
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TASKREG_THREADS")


def build(root: Path) -> None:
    """The small registry (see the module docstring); nothing if ``root`` already holds one."""
    if (root / "catalog.duckdb").exists() or (root / "done").exists():
        return
    import torch

    from taskreg.embedders.probes import create_model
    from taskreg.registry import Registry

    Registry.init(root)
    reg = Registry.open(root)
    reg.train_probe("default", arch="cifar_resnet8", epochs=1, sources=("builtin:mnist5k?n=500",))
    for name, classes in TASKS.items():
        reg.add_task(name, f"builtin:mnist5k?classes={classes}&n=200", max_samples=200)
    for i in range(5):
        torch.manual_seed(i + 1)
        path = root.parent / f"expert{i}.pt"
        torch.save(create_model("cifar_resnet8", num_classes=10).state_dict(), path)
        reg.add_expert(f"e{i}", arch="cifar_resnet8", weights=path, trained_on=list(TASKS)[i % len(TASKS)])
    (root / "done").write_text("built\n")


def environment(config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = PACKAGE_PARENT
    if config == "old":
        n = str(os.cpu_count() or 1)
        env.update(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    return env


def select_command(root: Path) -> list[str]:
    return [sys.executable, "-m", "taskreg.cli", "--registry", str(root), "select", "--data", QUERY, "--top", "3",
            "--json", "--method", "asym"]


def run_select(root: Path, env: dict[str, str]) -> float:
    """Wall seconds of one select process (the query's cached embedding deleted first)."""
    shutil.rmtree(root / "cache" / "task2vec", ignore_errors=True)
    t0 = time.perf_counter()
    out = subprocess.run(select_command(root), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"select failed: {out.stderr.strip()[-500:]}")
    return seconds


COMPETITOR = """
import shutil, subprocess, sys
root, cmd = sys.argv[1], sys.argv[2:]
while True:
    shutil.rmtree(root + '/cache/task2vec', ignore_errors=True)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


def start_load(scenario: str, other: Path, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    if scenario == "busy":
        return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    if scenario == "two":
        return subprocess.Popen([sys.executable, "-c", COMPETITOR, str(other), *select_command(other)], env=env,
                                start_new_session=True)
    return None


def stop_load(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the loop, or the competitor and the select it is running
    except ProcessLookupError:
        pass
    proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--registry", type=Path, default=None, help="where to build (or reuse) the registry")
    args = ap.parse_args()
    base = args.registry or Path(tempfile.mkdtemp(prefix="busy-bench-")) / "reg"
    base.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build(base)
    other = base.parent / "reg-competitor"
    if not other.exists():
        shutil.copytree(base, other)
    print(f"registry {base} ready in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs, affinity "
          f"{len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}",
          flush=True)
    for config in ("new", "old"):  # a warm-up run each (page cache, first MLflow/duckdb open of the copies)
        run_select(base, environment(config))
        run_select(other, environment(config))
    medians: dict[tuple[str, str], float] = {}
    for scenario in ("idle", "busy", "two"):
        for config in ("new", "old"):
            env = environment(config)
            load = start_load(scenario, other, env)
            try:
                if load is not None:
                    time.sleep(2.0)  # the competitor is past its imports
                times = [run_select(base, env) for _ in range(args.repeats)]
            finally:
                stop_load(load)
            medians[config, scenario] = statistics.median(times)
            print(f"{config:>3} {scenario:>4}: median {medians[config, scenario]:6.2f} s  "
                  f"runs {' '.join(f'{t:.2f}' for t in times)}", flush=True)
    print("\nratio to idle (goal: busy <= 1.5x, two <= 2.2x)")
    for config in ("new", "old"):
        idle = medians[config, "idle"]
        print(f"{config:>3}: busy {medians[config, 'busy'] / idle:.2f}x  two {medians[config, 'two'] / idle:.2f}x  "
              f"(idle {idle:.2f} s)")
    for scenario in ("idle", "busy", "two"):
        print(f"old / new, {scenario}: {medians['old', scenario] / medians['new', scenario]:.2f}x")


if __name__ == "__main__":
    main()
