"""Faiss indexes derived from the catalog: search, persistence, staleness, rebuild."""

from __future__ import annotations

import numpy as np

from taskreg.registry import Registry, catalog
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
