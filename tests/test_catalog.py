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


def test_a_version_3_catalog_migrates_and_its_experts_keep_the_arch_default(registry_root, tmp_path) -> None:
    from taskreg.embedders.probes import default_spec
    from tests.procs import save_random_expert

    reg = Registry.open(registry_root)
    reg.add_expert("old", arch="cifar_resnet8", weights=save_random_expert(tmp_path / "w.pt"))
    # the catalog as taskreg wrote it before migration 4 (experts without input_size, nor migration 5's columns)
    con = duckdb.connect(str(registry_root / "catalog.duckdb"))
    for column in ("input_size", "reference_accuracy", "reference"):
        con.execute(f"ALTER TABLE experts DROP COLUMN {column}")
    con.execute("DELETE FROM schema_version WHERE version > 3")
    assert catalog.schema_version(con) == 3
    con.close()

    reg = Registry.open(registry_root)
    with reg.read() as con:
        assert catalog.schema_version(con) == catalog.SCHEMA_VERSION == 5
    [rec] = reg.list_experts()
    assert rec.name == "old" and rec.input_size is None and rec.reference_accuracy is None and rec.reference is None
    assert reg.load_expert("old")[2] == default_spec("cifar_resnet8")  # exactly what it answered before
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


def test_reads_in_a_session_share_one_connection_and_a_write_inside_still_commits(registry: Registry) -> None:
    """issue 16: ``select`` groups its catalog reads in a session (one DuckDB connect instead of a dozen); a write
    inside closes the shared read-only connection first (DuckDB refuses both modes on one file in one process)."""
    core = registry.core
    with core.session():
        with core.read() as a, core.read() as b:
            assert a is b
        with core.write() as con:
            con.execute("INSERT INTO registry_info VALUES ('session-test', 'x')")
        with core.read() as c:
            assert c.execute("SELECT value FROM registry_info WHERE key = 'session-test'").fetchone() == ("x",)
    with core.read() as d:
        assert d is not c
        assert d.execute("SELECT count(*) FROM registry_info WHERE key = 'session-test'").fetchone() == (1,)
    with pytest.raises(duckdb.ConnectionException):
        c.execute("SELECT 1")  # closed with the session


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


@pytest.mark.parametrize("path", ["arrow", "numpy"])
def test_kind_vectors_stream_in_batches_and_come_back_in_id_order(registry: Registry, monkeypatch, path: str) -> None:
    """vectors_to_numpy copies record batch after record batch into one array (bounded memory at 1M), or, for a
    few rows, takes DuckDB's numpy fetch (no pyarrow import); both give the same arrays. kind_vectors reads without
    ORDER BY and sorts ids itself when storage order is not id order."""
    from taskreg.registry.catalog import rows

    monkeypatch.setattr(rows, "VECTOR_BATCH_ROWS", 4)  # 30 rows: eight batches
    monkeypatch.setattr(rows, "SMALL_VECTOR_ROWS", 0 if path == "arrow" else 30)
    vecs = np.random.default_rng(1).random((30, 5), dtype=np.float32)
    with registry.write() as con:
        tids = [catalog.insert_task(con, name=f"t{i}", source="s", domain="d", n_samples=1, n_classes=2,
                                    fingerprint="f") for i in range(30)]
        for i in np.random.default_rng(2).permutation(30):  # embeddings stored out of id order
            con.execute("INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed) "
                        "VALUES (?, 'p', 'montecarlo', ?, 0, 1, 0)", [tids[i], catalog.vector_param(vecs[i])])
    with registry.read() as con:
        ids, got = catalog.kind_vectors(con, "task/p/montecarlo")
        assert ids.tolist() == tids
        np.testing.assert_array_equal(got, vecs)
        none_ids, none = catalog.kind_vectors(con, "task/q/montecarlo")
        assert none_ids.shape == (0,) and none.shape == (0, 0)
    with registry.write() as con:
        con.execute("UPDATE task_embeddings SET vector = [1.0, 2.0] WHERE task_id = ?", [tids[17]])
    with registry.read() as con, pytest.raises(TaskregError, match="different lengths"):
        catalog.kind_vectors(con, "task/p/montecarlo")


def test_sql_is_read_only(registry: Registry) -> None:
    with pytest.raises(TaskregError, match="SQL refused"):
        registry.sql("DELETE FROM tasks")
    cols, rows = registry.sql("SELECT count(*) AS n FROM tasks")
    assert cols == ["n"] and rows == [(0,)]


def test_missing_registry_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TaskregError, match="no registry at"):
        Registry.open(tmp_path / "nowhere")


# ---- issue 13: the SQL of affinity sets, policies and the Taskonomy pipeline lives in the catalog, typed

def _transfer(key: str, kind: str, sources: tuple[str, ...], target: str = "t") -> catalog.TransferRecord:
    return catalog.TransferRecord(dictionary="d", key=key, kind=kind, sources=sources, target=target,
                                  order=len(sources) if kind == "transfer" else 0, mean_loss=float(len(key)),
                                  train_size=10, seconds=None, run_id="r1" if kind == "self" else None)


def test_transfers_and_their_winrates_round_trip(registry: Registry) -> None:
    from taskreg.selection.ahp import winrate_matrix_from_losses

    rng = np.random.default_rng(0)
    records = [_transfer("self->t", "self", ("t",)), _transfer("scratch->t", "scratch", ()),
               _transfer("a->t", "transfer", ("a",)), _transfer("a+b->t", "transfer", ("a", "b")),
               _transfer("a->u", "transfer", ("a",), target="u"), _transfer("scratch->u", "scratch", (), target="u")]
    losses = {r.key: rng.integers(0, 4, 50).astype(np.float64) for r in records}  # integers: ties happen
    with registry.write() as con:
        for r in records:
            catalog.insert_transfer(con, r, losses[r.key])
        assert catalog.compute_winrates(con, "d", [r.key for r in records if r.target == "t"]) == 4 * 3
        n = catalog.compute_winrates(con, "d", ["a->u", "scratch->u"], targets=["u"])  # a novel target joins
    with registry.read() as con:
        assert catalog.transfer_keys(con, "d") == set(losses) and catalog.transfer_keys(con, "other") == set()
        assert catalog.get_transfer(con, "d", "a+b->t") == records[3]  # sources come back as a tuple
        assert catalog.get_transfer(con, "d", "nope") is None
        assert [r.key for r in catalog.transfers_by_keys(con, "d", ["a->u", "a+b->t", "self->t", "zz"])] == [
            "self->t", "a+b->t", "a->u"]  # by target, order, key
        assert catalog.task_network_keys(con, "d") == {"t": "self->t"}
        assert catalog.is_transfer_target(con, "d", "u") and not catalog.is_transfer_target(con, "d", "v")
        assert n == 4 * 3 + 2 * 1 and len(catalog.dictionary_winrates(con, "d")) == n
        assert catalog.winrate_targets(con, "d") == ["t", "u"]
        rows = catalog.target_winrates(con, "d", "t", "scratch")
        assert all(isinstance(w, catalog.WinRate) and w.n_images == 50 for w in rows)
        assert [w.value for w in rows] == sorted((w.value for w in rows), reverse=True)
        first = catalog.first_order_winrates(con, "d")
        assert {(w.target, w.a) for w in first} == {("t", "self"), ("t", "a"), ("u", "a")}
        labels = ["a", "a+b", "scratch", "self"]
        keys = ["a->t", "a+b->t", "scratch->t", "self->t"]
        expected = winrate_matrix_from_losses(np.array([losses[k] for k in keys]))
        got = {(w.a, w.b): w.value for w in catalog.dictionary_winrates(con, "d") if w.target == "t"}
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                if i != j:
                    assert got[(a, b)] == pytest.approx(expected[i, j])
    with registry.write() as con:  # the named targets' rows are replaced, not added twice; all of them without
        assert catalog.compute_winrates(con, "d", ["a->u", "scratch->u"], targets=["u"]) == n
        assert catalog.compute_winrates(con, "d", ["a->u", "scratch->u"]) == 2
        assert catalog.winrate_targets(con, "d") == ["u"]
        catalog.insert_winrates(con, "pub", [catalog.WinRate("t", "a", "pixels", 0.25)])
    with registry.read() as con:
        assert catalog.target_winrates(con, "pub", "t", "pixels") == [catalog.WinRate("t", "a", "pixels", 0.25)]
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_keys'").fetchone()[0] == 0


def test_affinity_sets_round_trip(registry: Registry) -> None:
    from taskreg.selection.affinity_sets import AffinitySet, Transfer

    aff = AffinitySet("s", [Transfer(("b",), "a", 1, 0.75), Transfer(("self",), "a", 1, 0.25),
                            Transfer(("a", "c"), "b", 2, 1.0)], source_only=("c",))
    with registry.write() as con:
        assert not catalog.affinity_set_exists(con, "s") and catalog.get_affinity_set(con, "s") is None
        catalog.insert_affinity_set(con, aff, "import:x.csv")
    with registry.read() as con:
        back = catalog.get_affinity_set(con, "s")
        assert back is not None and back.source_only == ("c",) and catalog.affinity_source_only(con, "s") == ("c",)
        assert back.transfers == sorted(aff.transfers, key=lambda t: (t.target, t.order, t.sources))
        assert catalog.affinity_set_summaries(con) == [catalog.AffinitySetSummary("s", "import:x.csv", 3, 2, 2)]
    with registry.write() as con:
        catalog.delete_affinity_set(con, "s")
        assert catalog.affinity_source_only(con, "s") is None and catalog.affinity_set_summaries(con) == []


def test_policies_and_affinity_names_are_typed(registry: Registry) -> None:
    import dataclasses

    pol = registry.policy("taskonomy-1k", 3, max_order=1, importance={"rgb2depth": 2.0})
    with registry.read() as con:
        (rec,) = catalog.list_policies(con)
    assert isinstance(rec, catalog.PolicyRecord) and dataclasses.is_dataclass(rec)
    assert (rec.affinity, rec.budget, rec.max_order, rec.objective) == ("taskonomy-1k", 3.0, 1, pol.objective)
    assert rec.supervised == tuple(pol.supervised) and rec.transfers == tuple(pol.transfers)
    assert '"importance": {"rgb2depth": 2.0}' in rec.options
    names = registry.affinity_names()
    assert all(isinstance(s, catalog.AffinitySetSummary) for s in names)
    stored = next(s for s in names if s.name == "taskonomy-1k")
    assert (stored.origin, stored.max_order) == ("builtin", 4) and stored.targets and stored.transfers
    assert next(s for s in names if s.name == "taskonomy-16k").transfers is None  # not stored yet
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.name = "x"  # type: ignore[misc]


# ---- issue 13: the expert services' statements, now catalog functions --------------------------------------------

def _experts_and_tasks(con: duckdb.DuckDBPyConnection) -> tuple[list[int], list[int]]:
    """Three experts (the first two trained on tasks t0 and t1) and three tasks with a 'p'/'montecarlo' embedding."""
    tasks = [catalog.insert_task(con, name=f"t{i}", source="s", domain="d", n_samples=10, n_classes=2,
                                 fingerprint=f"f{i % 2}") for i in range(3)]
    for i, tid in enumerate(tasks):
        catalog.insert_embedding(con, tid, "p", "montecarlo", np.full(4, i, dtype=np.float32), 10, 0, None, "r")
    experts = [catalog.insert_expert(con, name=f"e{i}", arch="a", sha256="0", weights="w", origin="added",
                                     trained_on=f"t{i}" if i < 2 else None) for i in range(3)]
    return experts, tasks


def test_expert_task_results_round_trip_and_skip_removed_records(registry: Registry) -> None:
    with registry.write() as con:
        (e0, e1, e2), (t0, t1, t2) = _experts_and_tasks(con)
        for e, t, err in [(e0, t1, 0.3), (e0, t0, 0.1), (e1, t2, 0.2), (99, t0, 0.5), (e1, 99, 0.5)]:
            catalog.insert_expert_task_result(con, expert_id=e, task_id=t, test_error=err, train_error=None,
                                              protocol="{}", seconds=None)
        catalog.insert_expert_task_result(con, expert_id=e0, task_id=t0, test_error=0.9, train_error=None,
                                          protocol="{}", seconds=None)  # already measured: kept as it was
    with registry.read() as con:
        assert catalog.expert_task_errors(con, e0) == [catalog.ExpertTaskError("t0", 0.1),
                                                       catalog.ExpertTaskError("t1", 0.3)]  # best first
        assert sorted(catalog.expert_task_results(con), key=lambda r: r.test_error) == [
            catalog.ExpertTaskResult(e0, t0, 0.1), catalog.ExpertTaskResult(e1, t2, 0.2),
            catalog.ExpertTaskResult(e0, t1, 0.3)]  # nothing for the unknown expert 99 or task 99
        assert catalog.measured_errors_by_fingerprint(con, "f0") == {e0: 0.1, e1: 0.2}  # t0 and t2 hold f0
        assert catalog.task_name_by_fingerprint(con, "f0") == "t0"  # the oldest of the two
        assert catalog.task_name_by_fingerprint(con, "x") is None
        assert catalog.embedded_task_names(con, "p", "montecarlo") == {"t0", "t1", "t2"}
        assert catalog.embedded_task_names(con, "p", "variational") == set()
        ids, vecs = catalog.expert_task_vectors(con, "p", "montecarlo", [t1, t2, -1])
        assert ids.tolist() == [e1] and vecs.tolist() == [[1.0] * 4]  # e2 has no training task


def test_model2vec_rows_replace_skip_removed_experts_and_go_with_their_expert(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    vectors, biases = rng.random((4, 5), dtype=np.float32), rng.random((4, 5), dtype=np.float32)
    with registry.write() as con:
        (e0, e1, e2), _ = _experts_and_tasks(con)
        assert catalog.replace_model2vec(con, "p", "montecarlo", [e0, e1, e2], vectors[:3], biases[:3], 0.5) == 3
        # a new fit replaces the old one; an expert removed since the fit (id 99) is skipped
        assert catalog.replace_model2vec(con, "p", "montecarlo", [e2, 99, e0], vectors[1:], biases[1:], 0.25) == 2
        catalog.replace_model2vec(con, "p", "variational", [e1], vectors[:1], biases[:1], 0.5)
    with registry.read() as con:
        assert catalog.model2vec_count(con, "p", "montecarlo") == 2 and catalog.model2vec_count(con, "q", "x") == 0
        assert catalog.model2vec_expert_ids(con, "p", "montecarlo") == {e0, e2}
        ids, got = catalog.model2vec_vectors(con, "p", "montecarlo", [e0, e1, e2])
        assert dict(zip(ids.tolist(), got.tolist(), strict=True)) == {e2: vectors[1].tolist(),
                                                                      e0: vectors[3].tolist()}
        bias, loss = con.execute("SELECT bias, fit_loss FROM model2vec WHERE expert_id = ? AND method = 'montecarlo'",
                                 [e0]).fetchone()
        assert np.asarray(bias, dtype=np.float32).tolist() == biases[3].tolist() and loss == 0.25
        assert catalog.model2vec_kinds_of_expert(con, e1) == ["model2vec/p/variational"]
    with registry.write() as con:
        assert catalog.expert_exists(con, e1)
        catalog.insert_expert_task_result(con, expert_id=e1, task_id=1, test_error=0.1, train_error=None,
                                          protocol="{}", seconds=None)
        catalog.delete_expert(con, e1)
        assert not catalog.expert_exists(con, e1) and catalog.expert_ids(con) == {e0, e2}
        assert catalog.model2vec_kinds_of_expert(con, e1) == [] and catalog.expert_task_errors(con, e1) == []
        assert catalog.model2vec_count(con, "p", "montecarlo") == 2  # the other experts' vectors stay
