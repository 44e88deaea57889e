"""Executor benchmark: one small Taskonomy build with local:1, local:2 and a local Ray runtime with 1 and 2 workers.

Run: ``.venv/bin/python benchmarks/executor_bench.py`` (the Ray rows need ``pip install 'taskreg[ray]'``;
``--help`` lists the knobs). One round of the defaults took about 10 minutes on 2 cores shared with other
jobs (load average ~10); ``--threads 1`` about 3 minutes.

The build uses the trainers only (no registry, no MLflow), as ``taskonomy build`` runs its first stages:
the task networks (``plan_self``, 14 jobs), frozen features encoded in this process for every
(source, input key), then the first-order transfers and scratch baselines (``plan_first_order``,
165 jobs) of ``DictionaryRef(n_images=400)``, with short schedules (``--self-epochs 1
--transfer-epochs 3``) so one build takes minutes. Each configuration runs the same build, in turn,
in this process, ``--rounds`` times (interleaved, so a change of machine load hits every
configuration, and each round starts with the next configuration); the table gives wall times per
stage, the total (Ray start-up and shut-down included) and its ratio to local:1 of the same round,
with the 1-minute load average before and after: the machine may be shared, and a load above the
core count slows everything. The encoding stage does the same work in this process in every
configuration, so its time shows how busy the machine was. The mean losses of every job are
compared with local:1 (only the torch thread count differs).

Configurations: ``local:1`` runs in this process (2 torch threads on 2 cores); ``local:2`` is a pool of 2
spawned processes (1 thread each, a new pool per stage); ``ray:1`` is a local Ray runtime with one
worker (2 threads), ``ray:2`` one with two workers (1 thread each); each Ray runtime is started and
stopped inside its timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from taskreg.trainers import transfer as T
from taskreg.trainers.executors import LocalExecutor, RayExecutor, get_executor
from taskreg.trainers.taskonomy_dictionary import DictionaryRef

STAGES = ("start", "task networks", "encoding", "first order", "stop")


@dataclass
class BuildTiming:
    """Seconds per stage of one build and the mean test loss of every job (by job key)."""

    spec: str
    seconds: dict[str, float] = field(default_factory=dict)
    mean_loss: dict[str, float] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def make_executor(spec: str, threads: int | None) -> LocalExecutor | RayExecutor:
    """``get_executor(spec)``, or with ``threads`` torch threads per job (local:1: this process's setting)."""
    ex = get_executor(spec)
    if threads is None:
        return ex
    if isinstance(ex, RayExecutor):
        return RayExecutor(ex.address, workers=ex.workers, threads=threads)
    if ex.workers == 1:
        torch.set_num_threads(threads)
        return ex
    return LocalExecutor(ex.workers, threads=threads)


def build(
    spec: str, ref: DictionaryRef, self_epochs: int, transfer_epochs: int, threads: int | None = None
) -> BuildTiming:
    """Task networks + encoding + first-order transfers of ``ref`` through the executor ``spec``."""
    timing = BuildTiming(spec, load_before=os.getloadavg()[0])
    d = ref.load()  # cached in this process: in-process jobs (local:1) do not rebuild it, workers do
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing.seconds[stage] = now - clock
        clock = now

    ex = make_executor(spec, threads)
    try:
        if isinstance(ex, RayExecutor):
            ex.start()
        lap("start")
        nets: dict[str, T.TaskNetwork] = {}
        for job, net in ex.map(T.run_job, T.plan_self(d, ref=ref, epochs=self_epochs)):
            nets[job.target] = net
            timing.mean_loss[job.key] = net.mean_loss
        lap("task networks")
        with tempfile.TemporaryDirectory(prefix="executor-bench-") as tmp:

            def feature_path(source: str, key: str) -> str:
                return str(Path(tmp) / f"{source}__{key}.npy")

            for source in d.source_names:
                encoder = T.source_encoder(d, source, nets)
                for key in d.input_keys:
                    np.save(feature_path(source, key), T.encode_for_transfers(encoder, d, key))
            lap("encoding")
            jobs = T.plan_first_order(d, feature_path, ref=ref, epochs=transfer_epochs)
            for job, result in ex.map(T.run_job, jobs):
                timing.mean_loss[job.key] = result.mean_loss
            lap("first order")
    finally:
        if isinstance(ex, RayExecutor):
            ex.close()
    lap("stop")
    timing.load_after = os.getloadavg()[0]
    return timing


def print_round(index: int, timings: list[BuildTiming]) -> None:
    base = timings[0]
    print(f"\n== round {index}: wall seconds per stage (ratio = total / total of {base.spec}) ==")
    print(f"{'executor':>9} " + "".join(f"{s:>14}" for s in STAGES) + f"{'total':>9}{'ratio':>7}"
          f"{'load 1m before/after':>22}{'max |dloss|':>13}")
    for t in timings:
        diff = max((abs(t.mean_loss[k] - base.mean_loss[k]) for k in base.mean_loss if k in t.mean_loss),
                   default=0.0)
        ratio = t.total / base.total if base.total > 0 else float("nan")
        print(f"{t.spec:>9} " + "".join(f"{t.seconds.get(s, 0.0):14.1f}" for s in STAGES)
              + f"{t.total:9.1f}{ratio:7.2f}{t.load_before:13.2f} / {t.load_after:5.2f}{diff:13.2e}")
        missing = set(base.mean_loss) ^ set(t.mean_loss)
        if missing:
            print(f"          ! {len(missing)} job keys differ from {base.spec}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--tiny", action="store_true", help="the 160-image 16x16 test dictionary instead")
    parser.add_argument("--self-epochs", type=int, default=1)
    parser.add_argument("--transfer-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per job in every configuration (default: each executor's own)")
    parser.add_argument("--configs", default="local:1,local:2,ray:1,ray:2",
                        help="comma-separated executor specs; the first is the baseline")
    args = parser.parse_args()

    specs = [s.strip() for s in args.configs.split(",") if s.strip()]
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the encoding stage (in this process) too, in every configuration
    if importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install 'taskreg[ray]'): skipping the Ray configurations")
        specs = [s for s in specs if not s.lower().startswith("ray")]
    ref = DictionaryRef(tiny=True) if args.tiny else DictionaryRef(n_images=args.n_images)
    d = ref.load()
    n_self = len(T.plan_self(d, ref=ref))
    n_first = len(T.plan_first_order(d, lambda s, k: "", ref=ref))
    ray_version = "not installed"
    if any(s.lower().startswith("ray") for s in specs):
        RayExecutor(workers=1)  # sets Ray's environment (quiet, loopback) before the first import of ray
        import ray

        ray_version = ray.__version__
    print(f"dictionary {ref}: {d.n_images} images {d.image_shape}, {len(d.tasks)} tasks; "
          f"{n_self} task-network jobs ({args.self_epochs} epochs), {n_first} first-order jobs "
          f"({args.transfer_epochs} epochs), {len(d.source_names) * len(d.input_keys)} encodings; "
          f"torch threads per job: {args.threads or 'each executor default'}")
    print(f"cores {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads in this process), "
          f"ray {ray_version}; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    rounds: list[list[BuildTiming]] = []
    for r in range(1, args.rounds + 1):
        by_spec: dict[str, BuildTiming] = {}
        shift = (r - 1) % len(specs)
        for spec in specs[shift:] + specs[:shift]:  # each round starts with another configuration
            t = by_spec[spec] = build(spec, ref, args.self_epochs, args.transfer_epochs, args.threads)
            print(f"  round {r} {spec}: {t.total:.1f}s (load {t.load_before:.2f} -> {t.load_after:.2f})", flush=True)
        timings = [by_spec[spec] for spec in specs]
        rounds.append(timings)
        print_round(r, timings)
    if len(rounds) > 1:
        print(f"\n== median over {len(rounds)} rounds ==")
        for i, spec in enumerate(specs):
            totals = [rd[i].total for rd in rounds]
            ratios = [rd[i].total / rd[0].total for rd in rounds if rd[0].total > 0]
            print(f"{spec:>9}  total {statistics.median(totals):8.1f}s  ratio {statistics.median(ratios):5.2f}  "
                  f"(totals {', '.join(f'{x:.1f}' for x in totals)})")


if __name__ == "__main__":  # required: the local:N pool and Ray workers spawn fresh interpreters
    main()
