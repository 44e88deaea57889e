"""The DuckDB catalog: migrations, transactions, vectors through Arrow."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from taskreg.errors import TaskregError
from taskreg.registry import Registry, catalog


def test_fresh_catalog_has_every_table(registry: Registry) -> None:
    with registry.read() as con:
        assert catalog.schema_version(con) == catalog.SCHEMA_VERSION
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert set(catalog.TABLES) <= tables
    for needed in ("probes", "tasks", "task_embeddings", "experts", "expert_task_results", "model2vec",
                   "transfers", "transfer_losses", "winrates", "affinities", "policies"):
        assert needed in tables


def test_opening_an_older_catalog_migrates_it(tmp_path, registry_template) -> None:
    import shutil

    root = tmp_path / "old"
    shutil.copytree(registry_template, root)
    (root / "catalog.duckdb").unlink()
    con = duckdb.connect(str(root / "catalog.duckdb"))
    assert catalog.migrate(con, target=1) == [1]
    con.execute("INSERT INTO tasks (name, source, domain, n_samples, n_classes, fingerprint) "
                "VALUES ('kept', 'builtin:digits', 'digits', 10, 2, 'abc')")
    con.close()

    reg = Registry.open(root)
    with reg.read() as con:
        assert catalog.schema_version(con) == catalog.SCHEMA_VERSION
        assert con.execute("SELECT name FROM tasks").fetchall() == [("kept",)]
        assert con.execute("SELECT count(*) FROM index_state").fetchone()[0] == 0
    assert reg.check().ok


def test_newer_catalog_is_refused(registry_root) -> None:
    con = duckdb.connect(str(registry_root / "catalog.duckdb"))
    con.execute("INSERT INTO schema_version(version) VALUES (99)")
    con.close()
    with pytest.raises(TaskregError, match="newer than this taskreg"):
        Registry.open(registry_root)


def test_write_rolls_back_on_error(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.write() as con:
        catalog.insert_task(con, name="t", source="s", domain="d", n_samples=1, n_classes=2, fingerprint="f")
        raise RuntimeError("boom")
    assert registry.list_tasks() == []


def test_vectors_round_trip_through_arrow(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.random((7, 13), dtype=np.float32)
    with registry.write() as con:
        for i, v in enumerate(vecs):
            tid = catalog.insert_task(con, name=f"t{i}", source="s", domain="d", n_samples=1, n_classes=2,
                                      fingerprint="f")
            con.execute("INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed) "
                        "VALUES (?, 'p', 'montecarlo', ?, 0, 1, 0)", [tid, catalog.vector_param(v)])
    with registry.read() as con:
        ids, got = catalog.vectors_to_numpy(con, "SELECT task_id, vector FROM task_embeddings ORDER BY task_id")
    assert ids.tolist() == list(range(1, 8))
    np.testing.assert_array_equal(got, vecs)


def test_sql_is_read_only(registry: Registry) -> None:
    with pytest.raises(TaskregError, match="SQL refused"):
        registry.sql("DELETE FROM tasks")
    cols, rows = registry.sql("SELECT count(*) AS n FROM tasks")
    assert cols == ["n"] and rows == [(0,)]


def test_missing_registry_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TaskregError, match="no registry at"):
        Registry.open(tmp_path / "nowhere")
