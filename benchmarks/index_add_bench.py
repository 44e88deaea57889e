"""Index upkeep after `task add`: the append log (issue 16) vs rewriting the saved index vs rebuilding it.

Run: OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/index_add_bench.py
     [--sizes 10000 100000 1000000] [--no-results]

For each size N: a registry whose catalog holds N synthetic Task2Vec-like vectors (dimension 784, the
``cifar_resnet20`` probe; the generator of ``scale_bench.py``), its index built (``build_index``'s choice) and
saved. Then tasks are committed one at a time the way ``add_task`` commits them (catalog row + vector + one
generation bump), and after each the index is brought up to date, in the same process, by:

* ``add_to_index`` with the append log: one batch appended (O_APPEND + fsync) next to the untouched index file
  (what ``task add`` does for an index file of at least LOG_MIN_BYTES);
* ``add_to_index`` rewriting the index file (the path before issue 16, and still for small files): load it,
  add the log and the vector, save it whole with fsync;
* ``taskreg index compact``: merge a log of 5 commits into the index file;
* the baseline, ``rebuild_index``: read every vector from DuckDB, build, save.

Each ends with a saved, current index (checked: ``index_problems()`` is empty and the new task is its own nearest
neighbour in a freshly opened registry). Results go to the issue-16 section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_bench import FisherLike, probe_layout  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
KIND = "task/p/montecarlo"
FILL_CHUNK = 200_000  # vectors generated and inserted at a time (bounded memory at 1M)


def fill(reg: object, gen: FisherLike, n: int, start: int, seed: int, *, novel: bool = False) -> tuple[
        np.ndarray, np.ndarray]:
    """Insert ``n`` tasks + montecarlo vectors (bulk, Arrow, in chunks) in one transaction and bump the generation
    once; returns (ids, the vectors of the last chunk)."""
    from taskreg.registry import catalog

    all_ids = []
    with reg.write() as con:
        for c0 in range(0, n, FILL_CHUNK):
            m = min(FILL_CHUNK, n - c0)
            vectors = gen.sample_novel(m, seed=seed + c0) if novel else gen.sample(m, seed=seed + c0)
            names = [f"t{start + c0 + i:07d}" for i in range(m)]
            catalog.insert_columns(con, "tasks", {
                "name": names, "source": ["s"] * m, "domain": ["d"] * m, "n_samples": np.ones(m, np.int32),
                "n_classes": np.full(m, 2, np.int32), "fingerprint": ["f"] * m})
            ids = np.array([r[0] for r in con.execute(
                "SELECT id FROM tasks WHERE name >= ? ORDER BY name", [names[0]]).fetchall()], dtype=np.int64)
            catalog.insert_columns(con, "task_embeddings", {
                "task_id": ids.astype(np.int32), "probe": ["p"] * m, "method": ["montecarlo"] * m,
                "vector": vectors, "norm": np.linalg.norm(vectors, axis=1).astype(np.float64),
                "n_samples": np.ones(m, np.int32), "seed": np.zeros(m, np.int32), "seconds": np.zeros(m),
                "run_id": [None] * m})
            all_ids.append(ids)
        catalog.bump_generation(con, KIND)
    return np.concatenate(all_ids), vectors


def timed(fn: object) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - t0, out


def one_size(n: int, gen: FisherLike, workdir: Path) -> dict[str, object]:
    from taskreg.registry import Registry
    from taskreg.registry.index import LOG_MIN_BYTES, search

    root = workdir / f"reg-{n}"
    reg = Registry.init(root)
    fill(reg, gen, n, 0, seed=1)
    gc.collect()
    reg.rebuild_index(KIND)
    gc.collect()
    m = reg.indexes.manifest(KIND)
    out: dict[str, object] = {"n": n, "type": m.index_type, "MB": m.file_size / 1e6,
                              "default": "log" if m.file_size >= LOG_MIN_BYTES else "rewrite"}
    manager, total, serial = reg.index_manager, n, 0

    def commit_and_add(path: str) -> float:
        nonlocal total, serial
        serial += 1
        new_id, new = fill(reg, gen, 1, n + serial, seed=100 + serial, novel=True)
        manager.log_min_bytes = 0 if path == "log" else 2**62
        seconds, count = timed(lambda: reg.add_to_index(KIND, new_id, new))
        total += 1
        assert count == total and reg.index_problems() == {}, (count, total, reg.index_problems())
        logged = reg.indexes.log_path(KIND).exists()
        assert logged == (path == "log"), (path, logged)
        ids, _ = search(Registry.open(root).index(KIND), new[0], 1)
        assert ids.tolist() == new_id.tolist(), (ids, new_id)
        return seconds

    out["log"] = float(np.median([commit_and_add("log") for _ in range(5)]))
    out["rewrite"] = commit_and_add("rewrite")  # merges the log's 5 vectors too
    for _ in range(5):
        commit_and_add("log")
    out["compact"], done = timed(reg.compact_indexes)
    assert done == {KIND: (5, total)} and not reg.indexes.log_path(KIND).exists(), done
    assert reg.index_problems() == {}
    gc.collect()
    out["rebuild"], _ = timed(lambda: reg.rebuild_index(KIND))
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(out, flush=True)
    shutil.rmtree(root)
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--under", default="/work/wt/alone", help="how the run was scheduled (said in RESULTS.md)")
    ap.add_argument("--no-results", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args()
    gen = FisherLike(probe_layout())
    rows = []
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="index-add-bench-") as tmp:
        for n in args.sizes:
            r = one_size(n, gen, Path(tmp))
            rows.append(f"| {n:,} | {r['type']} | {r['MB']:,.0f} | {r['default']} | {r['log']:.4f} | "
                        f"{r['rewrite']:.2f} | {r['compact']:.2f} | {r['rebuild']:.2f} | "
                        f"{r['rewrite'] / r['log']:,.0f}x | {r['rss']:.1f} |")
            print(rows[-1], flush=True)
    command = ("OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/index_add_bench.py "
               + " ".join(sys.argv[1:]))
    machine = (f"{os.cpu_count()} CPU cores, run under {args.under}, load average {load_start:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end; {time.perf_counter() - t_start:.0f} s in all; "
               f"{time.strftime('%Y-%m-%d')}")
    section = "\n".join([
        "### Index upkeep after `task add` (`benchmarks/index_add_bench.py`)", "",
        f"Command: `{command.strip()}` (dimension {gen.dim}; seconds to make the index current after one new "
        "task; every path ends with the index saved and checked).", "", machine, "",
        "| vectors | index | file MB | `task add` uses | append to the log (s, median of 5) | rewrite the index "
        "file (s) | compact a 5-commit log (s) | rebuild from DuckDB (s) | rewrite / log | peak RSS so far (GB) |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|", *rows, ""])
    print(section)
    if not args.no_results:
        from index_bench import write_section

        write_section(section)


if __name__ == "__main__":
    main()
