"""Which Faiss index at a million vectors: IVF-Flat (before issue 16) against quantised IVF with exact re-ranking,
IVF-PQ, and HNSW, by build time, memory, single-query latency and recall@10 (seen and unseen task families).

Run: OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/index_bench.py [--n 1000000]
     [--queries 500] [--hnsw-n 200000] [--only LABEL ...] [--no-results]

The vectors are ``scale_bench.FisherLike`` (montecarlo Task2Vec-like, dimension 784 = the filters of the
``cifar_resnet20`` probe), generated once, already normalised, into a ``np.memmap`` in a temporary folder so that
the benchmark never holds a second copy of the 3.1 GB in its own memory; each index is built from it, measured and
freed before the next. Queries: ``--queries`` held-out vectors, a fifth of them from task families absent from the
index ("unseen"); their exact top-10 (numpy, block by block) is the truth. Every search is one query at a time on
one Faiss thread (as ``taskreg.registry.index.search`` runs it, the way ``select`` asks). The baseline is the
IVF-Flat index that ``build_index`` made before this issue (nlist 500, nprobe 40 at 1M), measured in the same
process; each row reports its p99 as a ratio to it.

"index MB" is what the index holds in memory (codes + ids + refine vectors + centroids), "RSS +MB" the growth of
the process' resident memory while building it (the memmap'd source vectors excluded as far as the kernel allows:
they are file pages, counted in RSS once touched, so it is an upper bound).
Results go to the "## Issue 16: the index at a million vectors" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_bench import FisherLike, Table, exact_topk, peak_rss_gb, percentiles_ms, probe_layout, recall  # noqa: E402

K = 10
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Issue 16: the index at a million vectors"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Candidate:
    label: str
    build: Callable[[np.ndarray, np.ndarray], object]  # (ids (N,), normalised vectors (N, D)) -> index
    settings: list[tuple[str, Callable[[], object]]]  # (label, SearchParameters factory or None)


def _train_sample(n: int, per_list: int, nlist: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, per_list * nlist), replace=False))


_CENTROIDS: dict[int, tuple[np.ndarray, float]] = {}  # nlist -> (k-means centroids, seconds to train them)


def coarse_centroids(x: np.ndarray, nlist: int, train_per_list: int) -> tuple[np.ndarray, float]:
    """The IVF lists' k-means, trained once per nlist and shared by the candidates that use it (same sample, seed
    and settings as ``build_index``; the build time of each candidate includes it)."""
    import faiss

    if nlist not in _CENTROIDS:
        t0 = time.perf_counter()
        cp = faiss.ClusteringParameters()
        cp.niter, cp.seed, cp.max_points_per_centroid = 10, 0, train_per_list
        clus = faiss.Clustering(x.shape[1], nlist, cp)
        clus.train(np.ascontiguousarray(x[_train_sample(len(x), train_per_list, nlist)]), faiss.IndexFlatIP(x.shape[1]))
        _CENTROIDS[nlist] = faiss.vector_to_array(clus.centroids).reshape(nlist, -1), time.perf_counter() - t0
    return _CENTROIDS[nlist]


def ivf_quantised(nlist: int, code: str, refine: bool, *, train_per_list: int = 40) -> Callable:
    """IVF over ``code`` ('Flat', 'SQ8', 'SQfp16', 'PQ<m>') with an exact IndexRefineFlat on top when ``refine``.
    Returns a builder giving (index, seconds of k-means training to add to its build time)."""

    def build(ids: np.ndarray, x: np.ndarray) -> object:
        import faiss

        d = x.shape[1]
        shared = nlist in _CENTROIDS  # trained by an earlier candidate: add its time to this build's
        centroids, kmeans_s = coarse_centroids(x, nlist, train_per_list)
        kmeans_s = kmeans_s if shared else 0.0
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(centroids)  # trained: IndexIVF.train skips the k-means
        if code == "Flat":
            base = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        elif code.startswith("PQ"):
            base = faiss.IndexIVFPQ(quantizer, d, nlist, int(code[2:]), 8, faiss.METRIC_INNER_PRODUCT)
        else:
            qt = {"SQ8": faiss.ScalarQuantizer.QT_8bit, "SQfp16": faiss.ScalarQuantizer.QT_fp16}[code]
            base = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qt, faiss.METRIC_INNER_PRODUCT)
        base.train(np.ascontiguousarray(x[_train_sample(len(x), train_per_list, nlist)]))
        inner = faiss.IndexRefineFlat(base) if refine else base
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(x, ids)  # one call: the refine store is allocated once, not grown by doubling
        return index, kmeans_s

    return build


def hnsw(m: int, ef_construction: int, code: str | None) -> Callable:
    def build(ids: np.ndarray, x: np.ndarray) -> object:
        import faiss

        d = x.shape[1]
        if code == "SQ8":
            base = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
            base.train(np.ascontiguousarray(x[_train_sample(len(x), 100, 1000)]))
            inner = faiss.IndexRefineFlat(base)
        else:
            base = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            inner = base
        base.hnsw.efConstruction = ef_construction
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(x, ids)
        return index

    return build


def ivf_params(nprobe: int, k_factor: float | None = None) -> Callable[[], object]:
    def make() -> object:
        import faiss

        ivf = faiss.SearchParametersIVF(nprobe=nprobe)
        if k_factor is None:
            return ivf
        return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=ivf), ivf

    return make


def hnsw_params(ef: int, k_factor: float | None = None) -> Callable[[], object]:
    def make() -> object:
        import faiss

        h = faiss.SearchParametersHNSW(efSearch=ef)
        if k_factor is None:
            return h
        return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=h), h

    return make


def index_mb(index: object) -> float:
    """Bytes the index holds: inverted-list codes + ids, refine vectors, centroids, HNSW links, id maps."""
    import faiss

    total = index.ntotal * 8 * 2  # IndexIDMap2: id_map + reverse map (lower bound)
    inner = faiss.downcast_index(index.index)
    parts = [inner]
    if isinstance(inner, faiss.IndexRefine):
        parts = [faiss.downcast_index(inner.base_index), faiss.downcast_index(inner.refine_index)]
    for p in parts:
        if isinstance(p, faiss.IndexIVF):
            total += p.ntotal * (p.code_size + 8) + p.nlist * p.d * 4
        elif isinstance(p, faiss.IndexHNSW):
            total += p.hnsw.neighbors.size() * 4 + p.ntotal * faiss.downcast_index(p.storage).code_size
        elif isinstance(p, faiss.IndexFlatCodes):
            total += p.ntotal * p.code_size
    return total / 1e6


def candidates(n: int) -> list[Candidate]:
    from taskreg.registry import index as ix

    nl = ix.ivf_nlist(n)  # 500 at 1M: the registry's nlist before this issue
    nl2, nl4 = 2 * nl, 4 * nl

    def ivf(ps: tuple[int, ...], kfs: tuple[float | None, ...] = (None,)) -> list[tuple[str, Callable[[], object]]]:
        return [(f"nprobe={p}" + (f" k_factor={kf:g}" if kf else ""), ivf_params(p, kf)) for p in ps for kf in kfs]

    return [
        Candidate(f"IVF{nl}-Flat (baseline: build_index before issue 16)",
                  lambda ids, x: ix.build_index(ids, x, index_type="ivf"), ivf(tuple(sorted({24, ix.ivf_nprobe(nl)})))),
        Candidate(f"IVF{nl4}-Flat", ivf_quantised(nl4, "Flat", False), ivf((64,))),
        Candidate(f"IVF{nl4}-SQfp16", ivf_quantised(nl4, "SQfp16", False), ivf((48, 64, 100))),
        Candidate(f"IVF{nl4}-SQ8 + RefineFlat", ivf_quantised(nl4, "SQ8", True),
                  ivf((64,), (4, 8)) + ivf((100,), (8,))),
        Candidate(f"IVF{nl2}-SQfp16", ivf_quantised(nl2, "SQfp16", False), ivf((40, 64))),
        Candidate(f"IVF{nl}-PQ98 + RefineFlat", ivf_quantised(nl, "PQ98", True), ivf((40,), (32,))),
    ]


def measure(index: object, params: object, qs: np.ndarray, truth: np.ndarray, unseen: np.ndarray
            ) -> tuple[float, float, float, float]:
    from taskreg.registry.index import _one_thread

    if isinstance(params, tuple):  # (refine parameters, the base parameters they point to: kept alive here)
        params = params[0]
    with _one_thread():
        for q in qs[:5]:
            index.search(q[None], K, params=params)
        times, found = [], []
        for q in qs:
            t = time.perf_counter()
            _, ids = index.search(q[None], K, params=params)
            times.append(time.perf_counter() - t)
            found.append(ids[0])
    got = np.stack(found)
    p50, p99 = percentiles_ms(times)
    return p50, p99, recall(got[~unseen], truth[~unseen]), recall(got[unseen], truth[unseen])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--hnsw-n", type=int, default=200_000, help="HNSW is built on this prefix only (0: skip): "
                    "at 1M its build alone would take ~10 min on this machine")
    ap.add_argument("--hnsw-sq", action="store_true", help="also HNSW over SQ8 codes + exact refine")
    ap.add_argument("--only", nargs="*", default=None, help="candidate label prefixes to run")
    ap.add_argument("--registry", action="store_true", help="also time build_index()/search() as the registry "
                    "runs them (the chosen type)")
    ap.add_argument("--under", default="/work/wt/alone", help="how the run was scheduled (said in RESULTS.md)")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    from taskreg.registry import index as ix

    t_start, load_start = time.perf_counter(), os.getloadavg()
    gen = FisherLike(probe_layout())
    n, d = args.n, gen.dim
    tmp = tempfile.mkdtemp(prefix="index-bench-")
    db = np.memmap(Path(tmp) / "db.f32", dtype=np.float32, mode="w+", shape=(n, d))
    gen.sample(n, seed=1, normalise=True, out=db)
    n_unseen = args.queries // 5
    queries = np.concatenate([gen.sample(args.queries - n_unseen, seed=2, normalise=True),
                              gen.sample_novel(n_unseen, seed=3, normalise=True)])
    order = np.random.default_rng(4).permutation(args.queries)
    queries, unseen = queries[order], (np.arange(args.queries) >= args.queries - n_unseen)[order]
    ids = np.arange(n, dtype=np.int64)
    truth = exact_topk(db, queries, K)
    print(f"{n:,} x {d} vectors + truth in {time.perf_counter() - t_start:.0f} s; RSS {rss_mb():.0f} MB", flush=True)

    table = Table(f"Top-{K} of one query at {n:,} vectors (D = {d}; {args.queries} queries, {n_unseen} from unseen "
                  "task families; one Faiss thread)",
                  ["N", "index", "search", "build s", "index MB", "RSS +MB", "p50 ms", "p99 ms",
                   "p99 / baseline", "recall@10", "recall@10 unseen"])
    base_p99 = float("nan")
    runs = candidates(n)
    if args.hnsw_n:
        h = min(args.hnsw_n, n)
        runs += [Candidate(f"HNSW32-Flat efC=80 [first {h:,}]", hnsw(32, 80, None),
                           [(f"efSearch={e}", hnsw_params(e)) for e in (64, 256)])]
        if args.hnsw_sq:
            runs.append(Candidate(f"HNSW32-SQ8 + RefineFlat efC=80 [first {h:,}]", hnsw(32, 80, "SQ8"),
                                  [(f"efSearch={e} k_factor=4", hnsw_params(e, 4)) for e in (64, 256)]))
    for cand in runs:
        if args.only and not any(cand.label.startswith(o) for o in args.only):
            continue
        sub_n = min(args.hnsw_n, n) if cand.label.startswith("HNSW") else n
        sub_truth = truth if sub_n == n else exact_topk(db[:sub_n], queries, K)
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        built = cand.build(ids[:sub_n], db[:sub_n])
        index, extra_s = built if isinstance(built, tuple) else (built, 0.0)
        del built  # else the tuple keeps this index alive next to the next one
        build_s = time.perf_counter() - t0 + extra_s  # + the shared k-means, when it was trained earlier
        grown = rss_mb() - before
        mb = index_mb(index)
        for label, make in cand.settings:
            p50, p99, rec, rec_u = measure(index, make(), queries, sub_truth, unseen)
            if base_p99 != base_p99 and label.endswith(f"nprobe={ix.ivf_nprobe(ix.ivf_nlist(n))}"):
                base_p99 = p99
            table.add(sub_n, cand.label, label, build_s, mb, grown, p50, p99, p99 / base_p99, rec, rec_u)
            print(" | ".join(str(c) for c in table.rows[-1]), flush=True)
        del index
        gc.collect()
    if args.registry:
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        index = ix.build_index(ids, db)
        build_s = time.perf_counter() - t0
        grown = rss_mb() - before
        times, found = [], []
        for q in queries[:5]:
            ix.search(index, q, K)
        for q in queries:
            t = time.perf_counter()
            found.append(ix.search(index, q, K)[0][:K])
            times.append(time.perf_counter() - t)
        got = np.stack(found)
        p50, p99 = percentiles_ms(times)
        table.add(n, f"build_index(): {ix.describe(index)}", "search()", build_s, index_mb(index), grown, p50, p99,
                  p99 / base_p99, recall(got[~unseen], truth[~unseen]), recall(got[unseen], truth[unseen]))
        print(" | ".join(str(c) for c in table.rows[-1]), flush=True)
        del index
        gc.collect()
    del db
    os.unlink(Path(tmp) / "db.f32")
    os.rmdir(tmp)
    table.print()
    load_end = os.getloadavg()
    machine = (f"{os.cpu_count()} CPU cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB "
               f"RAM; run under {args.under}, load average {load_start[0]:.1f} at the start, "
               f"{load_end[0]:.1f} at the end; {time.perf_counter() - t_start:.0f} s in all; peak RSS "
               f"{peak_rss_gb():.1f} GB; {time.strftime('%Y-%m-%d')}")
    print(machine)
    if not args.no_results:
        command = "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/index_bench.py " + \
            " ".join(sys.argv[1:])
        write_section(f"### Choosing the index type (`benchmarks/index_bench.py`)\n\nCommand: `{command.strip()}`\n\n"
                      f"{machine}\n\n{table.markdown()}")


def write_section(body: str) -> None:
    """Replace (or append) the part of the issue-16 section that starts with ``body``'s first line."""
    text = RESULTS.read_text()
    head = body.splitlines()[0]
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n"
        start = text.find(SECTION)
    end_section = text.find("\n## ", start + 3)
    end_section = len(text) if end_section < 0 else end_section + 1
    sub = text.find(head, start, end_section)
    if sub >= 0:
        sub_end = text.find("\n### ", sub + 4)
        sub_end = end_section if sub_end < 0 or sub_end > end_section else sub_end + 1
        text = text[:sub] + body.rstrip("\n") + "\n\n" + text[sub_end:]
    else:
        text = text[:end_section].rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n\n" + text[end_section:]
    RESULTS.write_text(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
