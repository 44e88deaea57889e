"""`taskreg select` end to end on a 100,000-task / 10,000-expert registry, against its probe pass alone (issue 16).

Run: .venv/bin/python benchmarks/select_e2e_bench.py [--cache DIR] [--repeats 5] [--before DIR] [--no-results]
(--before DIR: also time DIR/taskreg, e.g. `git archive COMMIT | tar -x -C DIR/taskreg`, in the same rounds;
the table is appended to the "Issue 16" section of benchmarks/RESULTS.md)

The registry is the scale benchmark's (``scale_bench.build_catalog``: bulk Arrow inserts, real MLflow rows,
hard-linked weight files, the indexes rebuilt); with ``--cache DIR`` it is built once into DIR and reused.
Then, each in a fresh process, in rounds (one of each per round, so drift in the machine's state hits all alike):

- ``probe pass``: the baseline. Python + torch start-up, loading the query, loading the probe's weights and
  the Task2Vec montecarlo embedding of the query (``embed``: the Fisher pass, and the mean features that
  ``select`` uses as the domain vector) -- exactly the computation of select's probe pass, nothing of the registry;
- ``taskreg select --data Q --method M --top 10 --json`` COLD: the registry's query cache ``cache/task2vec``
  cleared first, so select runs the probe pass itself;
- the same WARM: the cache filled by the previous run, so select skips the Task2Vec computation.

Reported: medians of ``--repeats``; overhead = median(select COLD) - median(probe pass). The goal of issue 16
is overhead <= 1 s. The JSON answers of all runs of a method must agree (the benchmark checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_bench as sb  # noqa: E402  (the registry builder and table helpers)

QUERY = "builtin:digits?classes=0,1,2&n=300"


def probe_pass(weights: str, arch: str, query: str) -> None:
    """The probe pass alone (run with ``--probe-pass``, in a fresh process): what select computes for a query."""
    from taskreg import data as datasets
    from taskreg.embedders.probes import ProbeSpec, create_model
    from taskreg.embedders.task2vec import embed
    from taskreg.embedders.weight_files import load_state_dict_file, load_weights
    from taskreg.registry.weights import head_classes

    spec_args = json.loads(os.environ["PROBE_SPEC"])
    ds = datasets.load(query)
    state = load_state_dict_file(Path(weights))
    model = create_model(arch, num_classes=head_classes(state))
    load_weights(model, state, ignore_head=False)
    model.eval()
    spec = ProbeSpec(arch=arch, **spec_args)
    emb = embed(model, spec, ds.x, ds.y, method="montecarlo", max_samples=1000, seed=0, device="cpu")
    assert emb.mean_features is not None
    print(json.dumps({"norm": float((emb.vector ** 2).sum() ** 0.5)}))


def ensure_registry(cache: Path, tasks: int, experts: int) -> Path:
    """The registry in ``cache/catalog`` (built unless a previous run left a complete one there)."""
    from taskreg.registry import Registry

    root, marker = cache / "catalog", cache / "built.json"
    want = {"tasks": tasks, "experts": experts}
    if marker.exists() and json.loads(marker.read_text()) == want and root.exists():
        print(f"reusing the registry in {root}", flush=True)
        return root
    marker.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    template = cache / "template"
    if template.exists():
        shutil.rmtree(template)
    t0 = time.perf_counter()
    Registry.init(template)
    gen = sb.FisherLike(sb.probe_layout("cifar_resnet20"))
    cat = sb.build_catalog(root, template, tasks, experts, gen)
    shutil.rmtree(template)
    Registry.open(root)  # relocate the copy's MLflow paths once, outside the timings
    for step, s in cat.seconds.items():
        print(f"  {step}: {s:.1f} s", flush=True)
    print(f"built {tasks:,} tasks / {experts:,} experts in {time.perf_counter() - t0:.0f} s; peak RSS "
          f"{sb.peak_rss_gb():.2f} GB", flush=True)
    marker.write_text(json.dumps(want))
    return root


def run_timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    return wall, res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="build the registry here once and reuse it")
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--experts", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["asym", "model2vec"])
    ap.add_argument("--before", type=Path, default=None, help="also time the taskreg package in DIR/taskreg (an "
                    "older checkout, e.g. `git archive COMMIT | tar -x -C DIR/taskreg`) in the same rounds")
    ap.add_argument("--label", default="", help="what this run measures (e.g. 'before'), for RESULTS.md")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the registry and stop")
    ap.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--probe-pass", nargs=3, metavar=("WEIGHTS", "ARCH", "QUERY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_pass:
        probe_pass(*args.probe_pass)
        return

    import tempfile

    cache = args.cache or Path(tempfile.mkdtemp(prefix="taskreg-select-e2e-"))
    root = ensure_registry(cache, args.tasks, args.experts)
    if args.build_only:
        return
    from taskreg.registry import Registry

    probe = Registry.open(root).probes.resolve_probe(None)
    sb._PYCACHE.append(str(cache / "pycache"))
    env = sb.cli_env()
    env.update(OMP_WAIT_POLICY="PASSIVE", OPENBLAS_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="1", PROBE_SPEC=json.dumps({"input_size": probe.input_size, "in_chans": probe.in_chans,
                                                        "mean": list(probe.mean), "std": list(probe.std)}))
    cli = sb.taskreg_cli()
    probe_argv = [sys.executable, str(Path(__file__).resolve()), "--probe-pass", str(root / probe.weights),
                  probe.arch, QUERY]
    select_argv = {m: cli + ["--registry", str(root), "select", "--data", QUERY, "--method", m, "--top", "10",
                             "--json"] for m in args.methods}
    qcache = root / "cache" / "task2vec"

    # the taskreg code to time: this tree, and (--before DIR) an older checkout, DIR/taskreg, in the same rounds
    versions = {"": env}
    if args.before is not None:
        old = dict(env, PYTHONPATH=str(args.before.resolve()))
        old["PYTHONPYCACHEPREFIX"] = str(cache / "pycache-before")
        versions["before"] = old

    # untimed warm-up: bytecode caches, the page cache (indexes, duckdb), and the select answers to compare with
    answers: dict[str, str] = {}
    run_timed(probe_argv, env)
    for ver, venv in versions.items():
        for m, argv in select_argv.items():
            got = json.dumps(json.loads(run_timed(argv, venv)[1])["results"])
            assert answers.setdefault(m, got) == got, f"{m}: {ver or 'this tree'} answers differently"

    load0 = os.getloadavg()[0]
    times: dict[str, list[float]] = {"probe": []}
    for r in range(args.repeats):
        times["probe"].append(run_timed(probe_argv, env)[0])
        for ver, venv in versions.items():
            for m, argv in select_argv.items():
                shutil.rmtree(qcache, ignore_errors=True)
                for state in ("cold", "warm"):
                    wall, out = run_timed(argv, venv)
                    assert json.dumps(json.loads(out)["results"]) == answers[m], f"{m} {state}: the answer changed"
                    times.setdefault(f"{m} {state} {ver}".strip(), []).append(wall)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              flush=True)
    load1 = os.getloadavg()[0]

    med = {k: statistics.median(v) for k, v in times.items()}
    title = (f"`taskreg select` end to end on {args.tasks:,} tasks / {args.experts:,} experts, fresh process each, "
             f"median of {args.repeats}{' -- ' + args.label if args.label else ''}")
    table = sb.Table(title, ["command", "median s", "min s", "max s", "overhead vs probe pass s",
                             "vs before" if args.before else "-"])
    table.add("probe pass alone (python + torch + query + probe weights + Task2Vec montecarlo)", med["probe"],
              min(times["probe"]), max(times["probe"]), 0.0, None)
    for m in args.methods:
        for state in ("cold", "warm"):
            for ver in versions:
                k = f"{m} {state} {ver}".strip()
                note = ("query cache cleared: runs the probe pass" if state == "cold"
                        else "query cache filled: no Task2Vec computation")
                before = med.get(f"{m} {state} before")
                table.add(f"{'BEFORE: ' if ver else ''}taskreg select --method {m} --top 10 --json, {state.upper()} "
                          f"({note})", med[k], min(times[k]), max(times[k]), med[k] - med["probe"],
                          sb.ratio(med[k], before) if before and not ver else None)
    machine = (f"{os.cpu_count()} CPU cores; run under /work/wt/alone (no other benchmark); load average "
               f"{load0:.1f} at the start, {load1:.1f} at the end; OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1")
    if args.before:
        table.notes.append(f"BEFORE rows: the taskreg in {args.before}/taskreg, timed in the same rounds")
    table.notes.append(f"query {QUERY}; overhead = median select - median probe pass (issue 16's goal for COLD: "
                       "<= 1 s); WARM skips the Task2Vec computation, so it can be below the probe pass")
    table.notes.append(machine)
    table.print()
    if not args.no_results:
        command = " ".join(["python benchmarks/select_e2e_bench.py", *sys.argv[1:]])
        text = sb.RESULTS.read_text()
        head = "## Issue 16: select at 100,000 tasks / 10,000 experts"
        block = f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')})\n\n{table.markdown()}"
        if head not in text:
            text = text.rstrip() + f"\n\n{head}\n"
        start = text.index(head) + len(head)
        nxt = text.find("\n## ", start)  # the section ends at the next one (or the file's end)
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:end].rstrip() + "\n\n" + block + ("\n" + text[end:] if end < len(text) else "")
        sb.RESULTS.write_text(text)
        print(f"appended to {sb.RESULTS}")


if __name__ == "__main__":
    main()
