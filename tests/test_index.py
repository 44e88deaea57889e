"""Faiss indexes derived from the catalog: search, persistence, staleness, rebuild."""

from __future__ import annotations

import numpy as np
import pytest

from taskreg.registry import Registry, catalog
from taskreg.registry import index as ix
from taskreg.registry.index import build_index, normalise, search

KIND = "task/p/montecarlo"


def add_vectors(reg: Registry, vectors: np.ndarray, prefix: str = "t") -> list[int]:
    ids = []
    with reg.write() as con:
        for i, v in enumerate(vectors):
            tid = catalog.insert_task(con, name=f"{prefix}{i}", source="s", domain="d", n_samples=1, n_classes=2,
                                      fingerprint="f")
            con.execute("INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed) "
                        "VALUES (?, 'p', 'montecarlo', ?, 0, 1, 0)", [tid, catalog.vector_param(v)])
            ids.append(tid)
        catalog.bump_generation(con, KIND)
    return ids


def test_search_matches_numpy_cosine() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.random((200, 32), dtype=np.float32)
    ids = np.arange(1000, 1200)
    index = build_index(ids, vecs)
    q = rng.random(32, dtype=np.float32)
    got_ids, got_sims = search(index, q, 10)
    sims = normalise(vecs) @ normalise(q[None])[0]
    order = np.argsort(-sims)[:10]
    assert got_ids.tolist() == (ids[order]).tolist()
    np.testing.assert_allclose(got_sims, sims[order], rtol=1e-5)
    assert len(search(index, q, 500)[0]) == 200  # k larger than the index means all of it


def test_index_is_rebuilt_after_deleting_its_files(registry: Registry) -> None:
    rng = np.random.default_rng(2)
    ids = add_vectors(registry, rng.random((20, 16), dtype=np.float32))
    assert registry.index_problems() == {KIND: "missing"}
    registry.rebuild_indexes()
    assert registry.index_problems() == {}
    for f in registry.indexes.folder.iterdir():
        f.unlink()
    reopened = Registry.open(registry.root)  # opening detects the missing index and rebuilds it
    assert reopened.index_problems() == {}
    index = reopened.index(KIND)
    import faiss

    assert index is not None and index.ntotal == 20
    assert sorted(faiss.vector_to_array(index.id_map).tolist()) == ids


def test_stale_and_truncated_indexes_are_detected(registry: Registry) -> None:
    rng = np.random.default_rng(3)
    add_vectors(registry, rng.random((10, 8), dtype=np.float32))
    registry.rebuild_indexes()
    add_vectors(registry, rng.random((5, 8), dtype=np.float32), prefix="u")
    assert "stale" in registry.index_problems()[KIND]
    assert registry.index(KIND).ntotal == 15  # index() rebuilds a stale index on demand
    ipath, _ = registry.indexes.paths(KIND)
    ipath.write_bytes(ipath.read_bytes()[:100])
    assert registry.index_problems()[KIND] == "truncated or modified file"
    registry.repair_indexes()
    assert registry.index_problems() == {}
    fresh = Registry.open(registry.root)
    q = rng.random(8, dtype=np.float32)
    assert len(search(fresh.index(KIND), q, 3)[0]) == 3


def test_add_to_index_appends_when_current_and_rebuilds_otherwise(registry: Registry, monkeypatch) -> None:
    rng = np.random.default_rng(5)
    add_vectors(registry, rng.random((30, 8), dtype=np.float32))
    registry.rebuild_indexes()
    rebuilds: list[str] = []
    real_rebuild = registry.index_manager.rebuild
    monkeypatch.setattr(registry.index_manager, "rebuild", lambda kind: rebuilds.append(kind) or real_rebuild(kind))
    new = rng.random((2, 8), dtype=np.float32)
    ids = add_vectors(registry, new, prefix="u")  # one commit, one generation bump
    assert registry.add_to_index(KIND, np.array(ids), new) == 32
    assert rebuilds == [] and registry.index_problems() == {}
    fresh = Registry.open(registry.root)  # the appended index on disk is current: nothing rebuilt on open
    got, _ = search(fresh.index(KIND), new[1], 1)
    assert got.tolist() == [ids[1]]
    # two commits since the index was saved: appending the last one alone would lose the first
    add_vectors(registry, rng.random((1, 8), dtype=np.float32), prefix="v")
    last = rng.random((1, 8), dtype=np.float32)
    ids = add_vectors(registry, last, prefix="w")
    assert registry.add_to_index(KIND, np.array(ids), last) == 34
    assert rebuilds == [KIND] and registry.index_problems() == {}
    # removal: one commit that deletes a task, then the vector is dropped from the saved index
    with registry.write() as con:
        con.execute("DELETE FROM task_embeddings WHERE task_id = ?", [ids[0]])
        con.execute("DELETE FROM tasks WHERE id = ?", [ids[0]])
        catalog.bump_generation(con, KIND)
    assert registry.remove_from_index(KIND, np.array(ids)) == 33
    assert rebuilds == [KIND] and registry.index_problems() == {}
    got, _ = search(Registry.open(registry.root).index(KIND), last[0], 1)
    assert got.tolist() != ids


def test_check_reports_a_stale_index_and_a_dangling_row(registry: Registry) -> None:
    rng = np.random.default_rng(4)
    add_vectors(registry, rng.random((4, 8), dtype=np.float32))
    report = registry.check()
    assert not report.ok and any("index task/p/montecarlo" in p for p in report.problems)
    registry.rebuild_indexes()
    with registry.write() as con:
        con.execute("DELETE FROM tasks WHERE name = 't0'")
    report = registry.check()
    assert any("task_embeddings without task" in p for p in report.problems)


# --------------------------------------------------------------------------- scale: IVF, mmap, bulk inserts, check


def clustered(n: int, dim: int, seed: int, centres: int = 20) -> np.ndarray:
    """Non-negative, heavy-tailed, clustered vectors (log-normal around a few centres), like Fisher embeddings."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).normal(0, 1.5, (centres, dim))
    return np.exp(c[rng.integers(0, centres, n)] + rng.normal(0, 0.3, (n, dim))).astype(np.float32)


def test_ivf_index_finds_the_exact_neighbours_and_survives_a_memory_mapped_reload(tmp_path) -> None:
    from taskreg.registry import index as ix

    vecs, queries = clustered(4000, 24, seed=0), clustered(50, 24, seed=1)
    ids = np.arange(4000, dtype=np.int64) * 3 + 7  # catalog ids are not positions
    assert ix.choose_index_type(99_999, 784) == "flat" and ix.choose_index_type(100_000, 784) == "ivf16"
    assert ix.choose_index_type(20_000, 4800) == "ivf16" and ix.choose_index_type(1_000_000, 64) == "flat"
    assert ix.ivf_nlist(1_000_000) == 500 and ix.ivf_nprobe(500) == 40 and ix.ivf_nprobe(100) == 24
    index = build_index(ids, vecs, index_type="ivf")
    assert ix._ivf(index) is not None and index.ntotal == 4000
    exact = normalise(queries) @ normalise(vecs).T
    hits = [len(set(search(index, q, 10)[0].tolist()) & set(ids[np.argsort(-e)[:10]].tolist())) / 10
            for q, e in zip(queries, exact, strict=True)]
    assert np.mean(hits) >= 0.95
    store = ix.IndexStore(tmp_path)
    manifest = store.save(KIND, index, generation=3)
    assert manifest.index_type == "IndexIVFFlat" and store.problem(KIND, 3, 4000) is None
    loaded = store.load(KIND)  # memory-mapped
    for q in queries[:5]:
        a, b = search(index, q, 10), search(loaded, q, 10)
        assert a[0].tolist() == b[0].tolist()
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    got, sims = search(loaded, queries[0], 1500)  # more than the default lists hold: nprobe grows with k
    assert len(got) == 1500 and len(set(got.tolist())) == 1500 and np.all(np.diff(sims) <= 1e-6)


def test_ivf_fp16_finds_the_exact_neighbours_with_near_exact_similarities(tmp_path) -> None:
    """The type above the threshold: IVF over float16 codes, more and smaller lists than IVF-Flat."""
    import faiss

    vecs, queries = clustered(4000, 24, seed=0), clustered(50, 24, seed=1)
    ids = np.arange(4000, dtype=np.int64) * 3 + 7
    assert ix.ivf_nlist(1_000_000, "ivf16") == 2000 and ix.ivf_nprobe(2000, "ivf16") == 64
    assert ix.ivf_nlist(100_000, "ivf16") == 632 and ix.ivf_nprobe(632, "ivf16") == 32
    index = build_index(ids, vecs, index_type="ivf16")
    ivf = faiss.downcast_index(ix._ivf(index))
    assert isinstance(ivf, faiss.IndexIVFScalarQuantizer) and ivf.nlist == 100  # 4000 / 40 vectors per list
    assert ix.describe(index) == "IVF100-SQfp16, nprobe 32"
    exact = normalise(queries) @ normalise(vecs).T
    by_id = dict(zip(ids.tolist(), range(4000), strict=True))
    hits = []
    for q, e in zip(queries, exact, strict=True):
        got, sims = search(index, q, 10)
        hits.append(len(set(got.tolist()) & set(ids[np.argsort(-e)[:10]].tolist())) / 10)
        np.testing.assert_allclose(sims, e[[by_id[i] for i in got.tolist()]], atol=2e-3)  # float16 codes
    assert np.mean(hits) >= 0.95
    again = build_index(ids, vecs, index_type="ivf16")  # deterministic given the seed
    assert faiss.serialize_index(again).tobytes() == faiss.serialize_index(index).tobytes()
    store = ix.IndexStore(tmp_path)
    assert store.save(KIND, index, generation=2).index_type == ix.INDEX_CLASSES["ivf16"]
    loaded = store.load(KIND)  # memory-mapped
    for q in queries[:5]:
        a, b = search(index, q, 10), search(loaded, q, 10)
        assert a[0].tolist() == b[0].tolist()
    got, sims = search(loaded, queries[0], 1500)  # more than the default lists hold: nprobe grows with k
    assert len(set(got.tolist())) == 1500 and np.all(np.diff(sims) <= 1e-6)
    assert again.remove_ids(faiss.IDSelectorBatch(ids[:2])) == 2  # compaction can drop logged removals


def test_chunked_build_equals_exact_search_and_bad_shapes_are_refused(monkeypatch) -> None:
    import pytest

    from taskreg.errors import TaskregError
    from taskreg.registry import index as ix

    monkeypatch.setattr(ix, "ADD_CHUNK", 7)  # many chunks: every row normalised and added exactly once
    vecs = clustered(100, 12, seed=2)
    index = build_index(np.arange(100) + 1, vecs)
    assert index.ntotal == 100
    q = clustered(1, 12, seed=3)[0]
    sims = normalise(vecs) @ normalise(q[None])[0]
    assert search(index, q, 5)[0].tolist() == (np.argsort(-sims)[:5] + 1).tolist()
    with pytest.raises(TaskregError, match="dimension"):
        search(index, np.ones(5, dtype=np.float32), 3)
    with pytest.raises(TaskregError, match="expected vectors of shape"):
        build_index(np.arange(3), vecs)
    with pytest.raises(TaskregError, match="unknown index type"):
        build_index(np.arange(100), vecs, index_type="hnsw")


def test_insert_columns_round_trips_vectors_after_a_half_read_result(registry: Registry) -> None:
    import pytest

    from taskreg.errors import TaskregError

    vecs = clustered(300, 16, seed=4)
    with registry.write() as con:
        catalog.insert_columns(con, "tasks", {"name": [f"b{i}" for i in range(300)], "source": ["s"] * 300,
                                              "domain": ["d"] * 300, "n_samples": np.ones(300, np.int32),
                                              "n_classes": np.full(300, 2, np.int32), "fingerprint": ["f"] * 300})
        ids = np.array([r[0] for r in con.execute("SELECT id FROM tasks ORDER BY name").fetchall()])
        con.execute("SELECT count(*) FROM tasks").fetchone()  # leaves a result unfinished (DuckDB 2)
        order = np.argsort([f"b{i}" for i in range(300)])
        catalog.insert_columns(con, "task_embeddings", {
            "task_id": ids, "probe": ["p"] * 300, "method": ["montecarlo"] * 300, "vector": vecs[order],
            "norm": np.zeros(300), "n_samples": np.ones(300, np.int32), "seed": np.zeros(300, np.int32),
            "run_id": [None] * 300})
        catalog.bump_generation(con, KIND)
        with pytest.raises(TaskregError, match="different lengths"):
            catalog.insert_columns(con, "tasks", {"name": ["x", "y"], "source": ["s"]})
    with registry.read() as con:
        got_ids, got = catalog.kind_vectors(con, "task/p/montecarlo")
    np.testing.assert_array_equal(got, vecs[order][np.argsort(ids)])
    assert registry.index(KIND).ntotal == 300


def test_hash_cache_rehashes_a_file_rewritten_with_the_same_size_and_mtime(tmp_path, monkeypatch) -> None:
    import hashlib
    import os

    from taskreg.registry.maintenance import HashCache

    monkeypatch.setattr(HashCache, "RACY_SECONDS", 0.0)  # the file is written just now
    path, store = tmp_path / "w.pt", tmp_path / "cache" / "sha.json"
    path.write_bytes(b"weights" * 1000)
    cache = HashCache(store)
    assert cache.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    cache.save()
    reloaded = HashCache(store)
    assert reloaded.entries == cache.entries and not reloaded.dirty
    before = path.stat()
    path.write_bytes(b"WEIGHTS" * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: only the ctime tells
    assert reloaded.sha256(path) == hashlib.sha256(b"WEIGHTS" * 1000).hexdigest()
    store.write_text("{not json")
    assert HashCache(store).entries == {}  # a damaged cache is ignored, never trusted


def test_check_finds_a_deleted_run_and_an_altered_weights_file(registry: Registry) -> None:
    import hashlib

    rel = "artifacts/probes/p.pt"
    path = registry.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"state" * 100)
    run = registry.tracker.start_run("probes", "probe-p")
    registry.tracker.commit(run.run_id)
    rec = catalog.ProbeRecord(name="p", arch="cifar_resnet8", input_size=32, in_chans=3, mean=(0.5,) * 3,
                              std=(0.5,) * 3, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), weights=rel,
                              origin="added", run_id=run.run_id)
    with registry.write() as con:
        catalog.insert_probe(con, rec)
    pending = registry.tracker.start_run("tasks", "interrupted")
    report = registry.check()
    assert report.ok and any(pending.run_id in n for n in report.notes)  # an uncommitted run is a note
    path.write_bytes(b"STATE" * 100)
    assert any("p.pt does not match its sha256" in p for p in registry.check().problems)
    path.write_bytes(b"state" * 100)
    assert registry.check(deep=True).ok
    registry.tracker.delete_run(run.run_id)
    assert any(f"MLflow run {run.run_id} is deleted" in p for p in registry.check().problems)


# --------------------------------------------------------------------------- the append log (issue 16)


def exact_top(registry: Registry, q: np.ndarray, k: int) -> list[int]:
    with registry.read() as con:
        ids, vecs = catalog.kind_vectors(con, KIND)
    return ids[np.argsort(-(normalise(vecs) @ normalise(q[None])[0]), kind="stable")[:k]].tolist()


def logged_registry(registry: Registry, n: int = 200) -> tuple[list[int], np.ndarray]:
    """A registry whose index file is saved and whose commits go to the append log (any size counts as large)."""
    vecs = clustered(n, 16, seed=6)
    ids = add_vectors(registry, vecs)
    registry.rebuild_indexes()
    registry.index_manager.log_min_bytes = 0
    return ids, vecs


def test_append_log_takes_commits_in_constant_time_and_compact_merges_it(registry: Registry, monkeypatch) -> None:
    ids, vecs = logged_registry(registry)
    ipath, mpath = registry.indexes.paths(KIND)
    saved = ipath.read_bytes(), mpath.read_bytes()
    monkeypatch.setattr(registry.index_manager, "rebuild", lambda kind: pytest.fail("rebuilt instead of logged"))
    new = clustered(3, 16, seed=7) * 5.0
    new_ids = add_vectors(registry, new, prefix="u")
    assert registry.add_to_index(KIND, np.array(new_ids), new) == 203
    assert (ipath.read_bytes(), mpath.read_bytes()) == saved  # the index file is not rewritten
    log = registry.indexes.log_path(KIND)
    assert log.exists() and registry.index_problems() == {}
    with registry.write() as con:  # a removal is logged too
        con.execute("DELETE FROM task_embeddings WHERE task_id = ?", [ids[0]])
        con.execute("DELETE FROM tasks WHERE id = ?", [ids[0]])
        catalog.bump_generation(con, KIND)
    assert registry.remove_from_index(KIND, np.array([ids[0]])) == 202
    assert (ipath.read_bytes(), mpath.read_bytes()) == saved and registry.index_problems() == {}
    fresh = Registry.open(registry.root)  # another process: file + log, nothing rebuilt
    index = fresh.index(KIND)
    assert isinstance(index, ix.LoggedIndex) and index.ntotal == 202
    queries = [new[1], vecs[0], vecs[5], clustered(1, 16, seed=8)[0]]
    before = [search(index, q, 12) for q in queries]
    assert before[0][0][0] == new_ids[1]  # the logged vector is found
    for q, (got, _) in zip(queries, before, strict=True):
        assert got.tolist() == exact_top(registry, q, 12) and ids[0] not in got.tolist()
    monkeypatch.undo()
    from typer.testing import CliRunner

    from taskreg.cli import app

    res = CliRunner().invoke(app, ["--registry", str(registry.root), "index", "compact"])
    assert res.exit_code == 0 and f"{KIND}: 4 logged vectors merged, 202 in the index" in res.output, res.output
    assert not log.exists() and fresh.index_problems() == {}
    assert fresh.indexes.manifest(KIND).ntotal == 202
    compacted = Registry.open(registry.root).index(KIND)
    assert not isinstance(compacted, ix.LoggedIndex)
    for q, (got, sims) in zip(queries, before, strict=True):
        again = search(compacted, q, 12)
        assert again[0].tolist() == got.tolist()
        np.testing.assert_allclose(again[1], sims, rtol=1e-5)


def test_a_torn_or_stale_append_log_is_detected_and_the_index_rebuilt(registry: Registry) -> None:
    ids, vecs = logged_registry(registry)
    new = clustered(2, 16, seed=9)
    new_ids = add_vectors(registry, new, prefix="u")
    registry.add_to_index(KIND, np.array(new_ids), new)
    log = registry.indexes.log_path(KIND)
    whole = log.read_bytes()
    log.write_bytes(whole[:-5])  # a crash in the middle of the append
    assert registry.index_problems()[KIND].startswith("torn append log")
    fresh = Registry.open(registry.root)  # opening repairs it from DuckDB, the source of truth
    assert fresh.index_problems() == {} and not log.exists()
    assert search(fresh.index(KIND), new[0], 1)[0].tolist() == [new_ids[0]]
    fresh.index_manager.log_min_bytes = 0
    # a flipped byte fails the checksum
    more = clustered(1, 16, seed=10)
    more_ids = add_vectors(fresh, more, prefix="v")
    fresh.add_to_index(KIND, np.array(more_ids), more)
    data = bytearray(log.read_bytes())
    data[-3] ^= 0xFF
    log.write_bytes(bytes(data))
    assert fresh.index_problems()[KIND] == "corrupt append log (checksum)"
    fresh.repair_indexes()
    # a commit that never reached the log (killed after the catalog commit): stale, as without a log
    later = add_vectors(fresh, clustered(1, 16, seed=11), prefix="w")
    assert "stale" in fresh.index_problems()[KIND] and later
    # a log from before the index file was last saved is a leftover: ignored, then replaced by the next append
    fresh.repair_indexes()
    log.write_bytes(whole)
    assert fresh.index_problems() == {}
    last = clustered(1, 16, seed=12)
    last_ids = add_vectors(fresh, last, prefix="x")
    fresh.add_to_index(KIND, np.array(last_ids), last)
    assert fresh.index_problems() == {} and log.read_bytes() != whole
    assert search(Registry.open(fresh.root).index(KIND), last[0], 1)[0].tolist() == last_ids


def test_a_long_log_is_merged_by_the_next_commit(registry: Registry) -> None:
    logged_registry(registry)
    registry.index_manager.log_max_vectors = 2
    for i in range(3):
        v = clustered(1, 16, seed=20 + i)
        registry.add_to_index(KIND, np.array(add_vectors(registry, v, prefix=f"u{i}-")), v)
        assert registry.indexes.log_path(KIND).exists() == (i < 2)
    assert registry.index_problems() == {} and registry.indexes.manifest(KIND).ntotal == 203
