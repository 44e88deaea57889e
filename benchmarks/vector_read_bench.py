"""Peak memory and time of reading N x 784 float32 vectors out of DuckDB (what `rebuild` does first, issue 16).

Run: .venv/bin/python benchmarks/vector_read_bench.py MODE N [--db DIR], with MODE
  old      the read before issue 16: DB-API result -> to_arrow_table() -> combine_chunks(), ORDER BY id;
  new      catalog.rows.vectors_to_numpy (a streamed relation copied batch by batch into one array), ORDER BY id;
  noorder  the same without ORDER BY, as catalog.kind_vectors reads now (it sorts ids itself when needed);
  create   make DIR/db<N>.duckdb with N random vectors (run once first).
Each mode runs in a fresh process, so ru_maxrss is that read's peak.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

D = 784


def create(path: Path, n: int) -> None:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (id INT, v FLOAT[])")
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = np.random.default_rng(s).random((m, D), dtype=np.float32)
        offsets = pa.array((np.arange(m + 1) * D).astype(np.int32))
        batch = pa.table({"id": np.arange(s, s + m, dtype=np.int32),
                          "v": pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))})
        con.register("batch", batch)
        con.execute("INSERT INTO t SELECT * FROM batch")
        con.unregister("batch")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["old", "new", "noorder", "create"])
    ap.add_argument("n", type=int)
    ap.add_argument("--db", default="/tmp/vector-read-bench")
    args = ap.parse_args()
    path = Path(args.db) / f"db{args.n}.duckdb"
    if args.mode == "create":
        path.parent.mkdir(parents=True, exist_ok=True)
        create(path, args.n)
        return
    import duckdb

    from taskreg.registry.catalog.rows import vectors_to_numpy

    con = duckdb.connect(str(path), read_only=True)
    t0 = time.perf_counter()
    if args.mode == "old":
        table = con.execute("SELECT id, v FROM t ORDER BY id").to_arrow_table()
        col = table.column(1).combine_chunks()
        out = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(table.num_rows, D)
    else:
        _, out = vectors_to_numpy(con, "SELECT id, v FROM t" + (" ORDER BY id" if args.mode == "new" else ""))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.mode}: {out.shape[0]:,} x {out.shape[1]} in {seconds:.1f} s, peak RSS {peak:.2f} GB "
          f"({peak * 2**30 / out.nbytes:.1f}x the vectors)")


if __name__ == "__main__":
    main()
