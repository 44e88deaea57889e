"""A registry whose catalog was lost: told apart from an interrupted `rm`, never "fixed" by deleting what
MLflow still holds, and recovered either from a backup (`restore --force`) or by rebuilding the probes,
tasks and experts from their MLflow runs (`recover`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import Registry
from taskreg.registry.experts import Reference
from tests.conftest import snapshot
from tests.procs import assert_whole, copy_registry, mlflow_rows, run_state, save_random_expert

runner = CliRunner()
VECTORS = ("SELECT t.name, e.probe, e.method, e.vector, e.n_samples, e.seed, e.run_id FROM task_embeddings e "
           "JOIN tasks t ON t.id = e.task_id ORDER BY 1, 2, 3")


@pytest.fixture(scope="module")
def base(probe_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_registry(probe_template, tmp_path_factory.mktemp("recovery") / "base")
    reg = Registry.open(root)
    reg.add_task("t1", "builtin:digits?classes=1,2&n=40", max_samples=20)
    reg.add_task("t2", "builtin:digits?classes=3,4&n=40", max_samples=20)
    reg.add_task("t2", "builtin:digits?classes=3,4&n=40", max_samples=20, method="variational")
    # at a resolution other than the arch's default (32 px), with a reference accuracy: the recovered record keeps both
    reg.add_expert("e1", arch="cifar_resnet8", weights=save_random_expert(root.parent / "w.pt"), trained_on="t1",
                   input_size=40, reference=Reference(0.9, "a user's benchmark"))
    return root


@pytest.fixture
def root(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base, tmp_path / "reg")
    Registry.open(tmp_path / "reg")
    return tmp_path / "reg"


def cli(root: Path, *argv: str) -> tuple[int, str]:
    res = runner.invoke(app, ["--registry", str(root), *argv])
    return res.exit_code, res.output


def listing(root: Path) -> dict[str, list]:
    """What the catalog holds, as the CLI lists it (creation times aside) plus every vector."""
    out = {}
    for what in ("task", "expert", "probe"):
        code, text = cli(root, what, "list", "--json")
        assert code == 0, text
        out[what] = [{k: v for k, v in row.items() if k not in ("created_at", "id")} for row in json.loads(text)]
    code, text = cli(root, "sql", VECTORS, "--json")
    assert code == 0, text
    out["vectors"] = json.loads(text)
    code, text = cli(root, "sql", "SELECT probe, method, vector FROM trivial_embeddings ORDER BY 1, 2", "--json")
    out["trivial"] = json.loads(text)
    return out


def test_lost_catalog_restored_from_a_backup_or_rebuilt_from_mlflow(root: Path, tmp_path: Path) -> None:
    before = listing(root)
    assert [(e["reference_accuracy"], e["reference"]) for e in before["expert"]] == [(0.9, "a user's benchmark")]
    assert len(before["vectors"]) == 5  # t1 montecarlo + domain, t2 montecarlo + variational + domain
    assert cli(root, "backup", str(tmp_path / "backup"))[0] == 0
    runs = mlflow_rows(root, "SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' ORDER BY 1")

    (root / "catalog.duckdb").unlink()
    damaged = snapshot(root)
    code, text = cli(root, "init")
    assert code == 2 and "damaged registry" in text and "5 committed record runs" in text, text
    code, text = cli(root, "check", "--fix")
    assert code == 1 and "problem: catalog.duckdb is missing" in text, text
    assert snapshot(root) == damaged

    # 1. from the backup: restore --force accepts the damaged registry (its mlflow.db makes it one)
    code, text = cli(root, "restore", str(tmp_path / "backup"), "--force")
    assert code == 0, text
    assert listing(root) == before and cli(root, "check")[0] == 0
    assert_whole(root)

    # 2. without a backup: recover rebuilds probes, tasks (with every vector) and experts from their runs
    (root / "catalog.duckdb").unlink()
    code, text = cli(root, "recover")
    assert code == 0 and "recovered 1 probe(s), 2 task(s) (5 embeddings), 1 expert(s)" in text, text
    assert "expert evaluations" in text  # says what MLflow never held
    assert listing(root) == before
    assert mlflow_rows(root, "SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' ORDER BY 1") == runs
    code, text = cli(root, "check", "--json")
    assert code == 0 and json.loads(text)["notes"] == [], text
    assert_whole(root)
    code, text = cli(root, "task", "neighbors", "t1", "-k", "1", "--json")
    assert code == 0 and json.loads(text)["neighbors"][0]["name"] == "t2", text
    assert cli(root, "recover")[1].startswith("nothing to recover")


def test_lost_expert_model_is_registered_again(root: Path) -> None:
    """The registered model went too (as `check --fix` used to delete it): recover registers the run's weights."""
    reg = Registry.open(root)
    weights = reg.get_expert("e1").weights
    reg.tracker.delete_registered_model("expert-e1")
    (root / "catalog.duckdb").unlink()
    code, text = cli(root, "recover")
    assert code == 0, text
    expert = reg.get_expert("e1")
    assert expert.weights == weights and expert.model_version == "1"
    assert cli(root, "check")[0] == 0


def test_interrupted_rm_is_told_apart_from_a_lost_record(root: Path) -> None:
    """Rows deleted after `rm` marked the run: a leftover that `check --fix` removes. Rows deleted without the
    mark (the catalog lost them): a problem, and the run stays."""
    reg = Registry.open(root)
    t1 = reg.show_task("t1")["embeddings"][0]["run_id"]
    t2 = [e["run_id"] for e in reg.show_task("t2")["embeddings"]]
    reg.tracker.mark_removing(t1)  # what `task rm` does before its commit; killed after it
    with reg.write() as con:
        for name in ("t1", "t2"):
            con.execute("DELETE FROM task_embeddings WHERE task_id = (SELECT id FROM tasks WHERE name = ?)", [name])
            con.execute("DELETE FROM tasks WHERE name = ?", [name])
    report = reg.check(fix=True)
    assert any(f"MLflow run {t1} belongs to a removed record (interrupted rm)" == n for n in report.notes)
    lost = [p for p in report.problems if "no catalog row and no removal mark" in p]
    assert len(lost) == len(set(t2)) == 2 and all(any(r in p for p in lost) for r in t2), report.problems
    assert run_state(root, t1) == "deleted" and all(run_state(root, r) == "committed" for r in t2)
    code, text = cli(root, "recover")  # brings back t2 only: t1 was removed
    assert code == 0 and "2 task" not in text and "1 task(s) (3 embeddings)" in text, text
    assert [t.name for t in reg.list_tasks()] == ["t2"] and reg.check().ok


def test_rm_marks_before_its_commit_and_a_failed_rm_unmarks(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry.open(root)
    run = reg.get_expert("e1").run_id
    seen = []
    mark = reg.tracker.mark_removing

    def mark_then_fail(run_id: str) -> None:
        mark(run_id)
        seen.append(run_state(root, run_id))
        raise RuntimeError("killed between the mark and the commit")

    monkeypatch.setattr(reg.tracker, "mark_removing", mark_then_fail)
    before = snapshot(root)
    with pytest.raises(RuntimeError):
        reg.remove_expert("e1")
    assert seen == ["removing"] and run_state(root, run) == "committed"
    assert reg.get_expert("e1").run_id == run and reg.check().ok
    assert {k for k, v in snapshot(root).items() if before.get(k) != v} <= {"mlflow.db"}
    monkeypatch.undo()
    reg.remove_expert("e1")
    assert run_state(root, run) == "deleted" and reg.check().ok
