"""Index upkeep after `task add`: appending the new vector to the index on disk vs rebuilding it.

Run: .venv/bin/python benchmarks/index_add_bench.py [--sizes 10000 100000 1000000] [--no-results]

For each size N: a registry whose catalog holds N synthetic Task2Vec-like vectors (dimension 784, the
``cifar_resnet20`` probe; the generator of ``scale_bench.py``), its index built and saved. Then one
more task is committed the way ``add_task`` commits it (catalog row + vector + one generation bump),
and the index is brought up to date twice from that same state, in the same process:

* baseline: ``rebuild_index`` -- read every vector from DuckDB, build (exact below the size
  threshold, IVF-Flat with k-means training above), save;
* ``add_to_index`` -- what ``task add`` does now: load the saved index, append one vector, save.

Both end with a saved, current index (checked: ``index_problems()`` is empty and the new task is its
own nearest neighbour). Results go to the "## Index upkeep" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
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
NOTE = """At a million vectors the append is bounded by I/O: the saved index (3.1 GB) is read whole and written
whole (with fsync) for one new vector. An append-only delta file next to the index would make it
constant-time; not done. The benchmark holds the vectors, the catalog's Arrow copy and two indexes at
once: peak RSS {rss:.1f} GB."""


def fill(reg: object, vectors: np.ndarray, start: int) -> np.ndarray:
    """Insert one task + montecarlo vector per row (bulk, Arrow) and bump the generation once; returns ids."""
    from taskreg.registry import catalog

    n = len(vectors)
    names = [f"t{start + i:07d}" for i in range(n)]
    with reg.write() as con:
        catalog.insert_columns(con, "tasks", {
            "name": names, "source": ["s"] * n, "domain": ["d"] * n, "n_samples": np.ones(n, np.int32),
            "n_classes": np.full(n, 2, np.int32), "fingerprint": ["f"] * n})
        ids = np.array([r[0] for r in con.execute(
            "SELECT id FROM tasks WHERE name >= ? ORDER BY name", [names[0]]).fetchall()], dtype=np.int64)
        catalog.insert_columns(con, "task_embeddings", {
            "task_id": ids.astype(np.int32), "probe": ["p"] * n, "method": ["montecarlo"] * n, "vector": vectors,
            "norm": np.linalg.norm(vectors, axis=1).astype(np.float64), "n_samples": np.ones(n, np.int32),
            "seed": np.zeros(n, np.int32), "seconds": np.zeros(n), "run_id": [None] * n})
        catalog.bump_generation(con, KIND)
    return ids


def one_size(n: int, gen: FisherLike, workdir: Path) -> tuple[float, float, str]:
    from taskreg.registry import Registry
    from taskreg.registry.index import search

    root = workdir / f"reg-{n}"
    reg = Registry.init(root)
    fill(reg, gen.sample(n, seed=1), 0)
    reg.rebuild_index(KIND)
    index_type = reg.indexes.manifest(KIND).index_type
    new = gen.sample_novel(1, seed=2)
    new_id = fill(reg, new, n)
    saved = reg.indexes.paths(KIND)[0].read_bytes(), reg.indexes.paths(KIND)[1].read_bytes()

    t0 = time.perf_counter()
    reg.rebuild_index(KIND)
    rebuild = time.perf_counter() - t0
    assert reg.index_problems() == {}
    for path, data in zip(reg.indexes.paths(KIND), saved, strict=True):  # back to the pre-commit index
        path.write_bytes(data)
    reg.index_manager.cache.clear()

    t0 = time.perf_counter()
    total = reg.add_to_index(KIND, new_id, new)
    append = time.perf_counter() - t0
    assert total == n + 1 and reg.index_problems() == {}
    ids, _ = search(Registry.open(root).index(KIND), new[0], 1)
    assert ids.tolist() == new_id.tolist(), (ids, new_id)
    shutil.rmtree(root)
    return rebuild, append, index_type


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--no-results", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args()
    gen = FisherLike(probe_layout())
    rows = []
    with tempfile.TemporaryDirectory(prefix="index-add-bench-") as tmp:
        for n in args.sizes:
            rebuild, append, kind = one_size(n, gen, Path(tmp))
            rows.append(f"| {n:,} | {kind} | {rebuild:.2f} | {append:.2f} | {rebuild / append:.1f}x |")
            print(rows[-1], flush=True)
    command = ".venv/bin/python benchmarks/index_add_bench.py " + " ".join(sys.argv[1:])
    section = "\n".join([
        "## Index upkeep after `task add`", "",
        f"Command: `{command.strip()}` (dimension {gen.dim}; seconds to make the index current after one "
        "new task; both paths end with the index saved and checked).", "",
        "| vectors | index | rebuild from DuckDB (s) | append to saved index (s) | speed-up |",
        "|---:|---|---:|---:|---:|", *rows, "",
        NOTE.format(rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20), ""])
    print(section)
    if not args.no_results:
        text = RESULTS.read_text()
        start = text.find("## Index upkeep")
        if start >= 0:
            end = text.find("\n## ", start + 3)
            text = text[:start] + section + ("" if end < 0 else text[end + 1:])
        else:
            text = text.rstrip("\n") + "\n\n" + section
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
