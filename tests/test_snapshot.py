"""`taskreg export DIR` (issue 17): a Parquet snapshot of the catalog (+ indexes and probe weights) that
`--registry DIR` opens read-only on another machine: it answers select, policy, sql and task list the way the
registry it came from does, and refuses every write on one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import Registry
from tests.conftest import snapshot
from tests.procs import copy_registry, save_random_expert

runner = CliRunner()
QUERY = "builtin:digits?classes=1,7&n=40"
AFFINITY = Path(__file__).resolve().parents[1] / "data" / "taskonomy" / "affinity_1k.csv"


def cli(*argv: str) -> tuple[int, str]:
    res = runner.invoke(app, list(argv))
    return res.exit_code, res.stdout


@pytest.fixture(scope="module")
def source(probe_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("snap")
    root = copy_registry(probe_template, d / "reg")
    reg = Registry.open(root)
    reg.add_task("d12", "builtin:digits?classes=1,2&n=40", max_samples=20)
    reg.add_task("d34", "builtin:digits?classes=3,4&n=40", max_samples=20)
    reg.add_expert("e12", arch="cifar_resnet8", weights=save_random_expert(d / "w1.pt", 1), trained_on="d12")
    reg.add_expert("e34", arch="cifar_resnet8", weights=save_random_expert(d / "w2.pt", 2), trained_on="d34")
    code, out = cli("--registry", str(root), "affinity", "import", str(AFFINITY), "--name", "mine")
    assert code == 0, out
    return root


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: None) -> Path:
    dest = tmp_path_factory.mktemp("exp") / "snapshot"
    before = snapshot(source)
    code, out = cli("--registry", str(source), "export", str(dest), "--with-experts")
    assert code == 0 and f"to {dest}" in out, out
    assert snapshot(source) == before  # exporting writes nothing in the registry
    dest.chmod(0o555)  # a reader may only read it
    return dest


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The snapshot's catalog is built in $XDG_CACHE_HOME: a private one for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    yield None
    mp.undo()


def test_the_snapshot_answers_reads_like_its_registry(source: Path, exported: Path) -> None:
    manifest = json.loads((exported / "SNAPSHOT.json").read_text())
    assert manifest["rows"]["tasks"] == 2 and manifest["rows"]["experts"] == 2 and manifest["with_experts"]
    assert sorted(p.name for p in (exported / "catalog").glob("*.parquet"))[:2] == ["affinities.parquet",
                                                                                  "affinity_sets.parquet"]
    for argv in (["task", "list", "--json"], ["expert", "list", "--json"],
                 ["sql", "SELECT name, domain, n_samples FROM tasks ORDER BY name", "--json"],
                 ["select", "--data", QUERY, "--method", "asym", "--json"],
                 ["select", "--data", QUERY, "--method", "logme", "--json"],
                 ["policy", "--affinity", "mine", "--budget", "4", "--json"]):
        mine = cli("--registry", str(source), *argv)
        theirs = cli("--registry", str(exported), *argv)
        assert mine[0] == theirs[0] == 0, (argv, theirs[1])
        a, b = json.loads(mine[1]), json.loads(theirs[1])
        for d in (a, b):  # timings differ (also in select's cost text); everything else is the same answer
            if isinstance(d, dict):
                d.pop("seconds", None)
                if argv[0] == "select":
                    d.pop("cost")
        assert a == b, argv


def test_the_snapshot_refuses_writes_on_one_line(exported: Path, tmp_path: Path) -> None:
    before = snapshot(exported)
    weights = save_random_expert(tmp_path / "w.pt")
    for argv in (["task", "add", "x", "--data", QUERY], ["expert", "add", "x", "--arch", "cifar_resnet8",
                                                          "--weights", str(weights)],
                 ["task", "rm", "d12"], ["init"], ["export", str(tmp_path / "again")],
                 ["backup", str(tmp_path / "b")]):
        res = runner.invoke(app, ["--registry", str(exported), *argv])
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and "snapshot" in lines[0], (argv, res.output)
    assert snapshot(exported) == before
    res = runner.invoke(app, ["--registry", str(exported), "check"])  # its tables, weights and indexes; no MLflow
    assert res.exit_code == 0 and "note: a snapshot (taskreg export)" in res.output and "ok (" in res.output


def test_a_damaged_snapshot_is_one_line(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # not the catalog built from the good copy
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    bad.chmod(0o755)
    experts = bad / "catalog" / "experts.parquet"
    experts.write_bytes(experts.read_bytes()[:-8])
    code = runner.invoke(app, ["--registry", str(bad), "task", "list"])
    assert code.exit_code != 0 and code.output.strip().splitlines() == [
        f"error: snapshot {bad}: catalog/experts.parquet is damaged (its SHA-256 is not the one SNAPSHOT.json "
        "records)"], code.output
    (bad / "catalog" / "tasks.parquet").unlink()
    code = runner.invoke(app, ["--registry", str(bad), "task", "list"])
    assert code.exit_code != 0 and code.output.strip().splitlines() == [
        f"error: snapshot {bad} is incomplete: no tasks.parquet"], code.output
    assert not list((tmp_path / "cache").rglob("*.duckdb"))  # no catalog built from a damaged snapshot
    (bad / "SNAPSHOT.json").write_text("{")
    code = runner.invoke(app, ["--registry", str(bad), "task", "list"])
    assert code.exit_code != 0 and "SNAPSHOT.json cannot be read" in code.output
