"""A registry whose MLflow store is a shared tracking server (issue 17): a real PostgreSQL cluster and a real
``mlflow server --serve-artifacts`` over it, both started here on 127.0.0.1 (skipped in one line where they cannot
start: no PostgreSQL binaries, no psycopg, no server within the wait)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from tests.pg_server import TrackingServer, Unavailable, free_port, tracking_server
from tests.procs import save_random_expert

runner = CliRunner()


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    try:
        with tracking_server() as srv:
            yield srv
    except Unavailable as e:
        pytest.skip(f"tracking server: {e}")


@pytest.fixture(scope="module")
def team_root(server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry on the server with the tiny probe, one task and one expert (random cifar_resnet8 weights)."""
    from taskreg.registry import Registry

    root = tmp_path_factory.mktemp("team") / "reg"
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}  # must not override the registry's setting
    res = runner.invoke(app, ["--registry", str(root), "init", "--tracking-uri", server.uri + "/"], env=env)
    assert res.exit_code == 0, res.output
    assert server.uri in res.output
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        reg = Registry.open(root)
        reg.train_probe("default", arch="cifar_resnet8", epochs=1, sources=("builtin:digits?n=300",))
        reg.add_task("digits", "builtin:digits?n=200", max_samples=200)
        weights = save_random_expert(tmp_path_factory.mktemp("expert") / "e1.pt")
        reg.add_expert("e1", arch="cifar_resnet8", weights=weights, trained_on="digits")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return root


def test_registry_lives_on_the_server(team_root: Path, server: TrackingServer) -> None:
    from taskreg.registry import Registry

    reg = Registry.open(team_root)
    assert reg.tracker.remote and reg.tracker.uri == server.uri
    assert not (team_root / "mlflow.db").exists()
    rec = reg.get_expert("e1")
    assert rec.weights.startswith(f"runs:/{rec.run_id}/weights/")
    on_server = list(server.artifacts.rglob("e1.pt"))
    assert len(on_server) == 1
    assert "expert-e1" in reg.tracker.registered_models()
    assert reg.tracker.run_state(rec.run_id) == "committed"
    report = reg.check()
    assert report.ok, report.problems
    sel = reg.select("builtin:digits?n=200", method="logme", max_samples=200)
    assert [r.expert for r in sel.results] == ["e1"]


def test_weights_come_back_through_the_artifact_download(team_root: Path) -> None:
    from taskreg.registry import Registry

    reg = Registry.open(team_root)
    shutil.rmtree(team_root / "cache" / "artifacts")  # another machine, or a cleared cache
    rec, model, _ = reg.load_expert("e1")
    cached = team_root / "cache" / "artifacts" / rec.run_id / "weights" / "e1.pt"
    assert cached.is_file()
    cached.write_bytes(b"garbage")  # a damaged cached copy is fetched again and checked
    reg.load_expert("e1")
    from taskreg.registry.weights import file_sha256

    assert file_sha256(cached) == rec.sha256


def test_check_reports_an_artifact_lost_on_the_server(team_root: Path, server: TrackingServer,
                                                      tmp_path: Path) -> None:
    from taskreg.errors import TaskregError
    from taskreg.registry import Registry

    copy = tmp_path / "reg"
    shutil.copytree(team_root, copy)
    reg = Registry.open(copy)
    assert reg.resolve_probe("default").weights.startswith("runs:/")
    (stored,) = server.artifacts.rglob("default.pt")
    moved = tmp_path / "default.pt"
    shutil.move(stored, moved)
    try:
        shutil.rmtree(copy / "cache" / "artifacts")
        report = reg.check()
        assert any("default.pt is missing" in p for p in report.problems), report.problems
        with pytest.raises(TaskregError, match="cannot be copied from here"):
            reg.backup(tmp_path / "backup")
        assert not (tmp_path / "backup").exists()
    finally:
        shutil.move(moved, stored)


def test_an_unreachable_server_is_one_line(team_root: Path, tmp_path: Path) -> None:
    import duckdb

    dead = f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(app, ["--registry", str(tmp_path / "new"), "init", "--tracking-uri", dead])
    assert res.exit_code != 0 and "unreachable" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    copy = tmp_path / "moved"
    shutil.copytree(team_root, copy)
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:
        con.execute("UPDATE registry_info SET value = ? WHERE key = 'tracking_uri'", [dead])
    for argv in (["task", "list"], ["check"]):
        res = runner.invoke(app, ["--registry", str(copy), *argv])
        assert res.exit_code != 0 and res.output.strip().startswith("error: tracking server"), res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["--registry", str(team_root), "init", "--tracking-uri", dead])
    assert res.exit_code != 0 and "cannot move an existing registry" in res.output
