"""A registry whose MLflow store is a shared tracking server (issue 17): a real PostgreSQL cluster and a real
``mlflow server --serve-artifacts`` over it, both started here on 127.0.0.1 (skipped in one line where they cannot
start: no PostgreSQL binaries, no psycopg, no server within the wait)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from tests.procs import save_random_expert

runner = CliRunner()
SERVER_WAIT = 90.0  # seconds: the first start runs MLflow's migrations on the empty database


@dataclass(frozen=True)
class TrackingServer:
    uri: str
    artifacts: Path  # the server's --artifacts-destination


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, run it as the ``postgres`` user of Debian's package."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    try:
        import psycopg  # noqa: F401  (the backend store's driver, the `team` extra)
    except ImportError:
        pytest.skip("tracking server: psycopg is not installed (pip install 'taskreg[team]')")
    tools = {name: _pg_bin(name) for name in ("initdb", "pg_ctl", "createdb")}
    if None in tools.values():
        missing = ", ".join(k for k, v in tools.items() if not v)
        pytest.skip(f"tracking server: PostgreSQL binaries not found ({missing})")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("tracking server: running as root without runuser to start PostgreSQL as another user")
    base = Path(tempfile.mkdtemp(prefix="taskreg-pg-"))  # not pytest's tmp dir: the postgres user must reach it
    data, sock, pg_port, ml_port = base / "data", base / "sock", _free_port(), _free_port()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    pg_started, mlflow = False, None
    try:
        init = subprocess.run(_as_postgres([str(tools["initdb"]), "-D", str(data), "-A", "trust", "-U", "taskreg",
                                            "--no-sync"]), capture_output=True, text=True)
        if init.returncode:
            pytest.skip(f"tracking server: initdb failed: {init.stderr.strip().splitlines()[-1:]}")
        start = subprocess.run(_as_postgres([str(tools["pg_ctl"]), "-D", str(data), "-l", str(base / "pg.log"), "-w",
                                             "-o", f"-h 127.0.0.1 -p {pg_port} -k {sock} -F", "start"]),
                               capture_output=True, text=True)
        if start.returncode:
            pytest.skip(f"tracking server: PostgreSQL did not start: {start.stderr.strip().splitlines()[-1:]}")
        pg_started = True
        subprocess.run([str(tools["createdb"]), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "taskreg", "mlflow"],
                       check=True, capture_output=True)
        artifacts = base / "artifacts"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        log = open(base / "mlflow.log", "wb")  # noqa: SIM115 (closed with the server)
        mlflow = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"postgresql+psycopg://taskreg@127.0.0.1:{pg_port}/mlflow", "--serve-artifacts",
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(ml_port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        uri = f"http://127.0.0.1:{ml_port}"
        deadline = time.monotonic() + SERVER_WAIT
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if mlflow.poll() is not None or time.monotonic() > deadline:
                tail = (base / "mlflow.log").read_text(errors="replace").strip().splitlines()[-1:]
                pytest.skip(f"tracking server: mlflow server did not come up: {tail}")
            time.sleep(0.5)
        yield TrackingServer(uri, artifacts)
    finally:
        if mlflow is not None:
            os.killpg(mlflow.pid, signal.SIGTERM)
            try:
                mlflow.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(mlflow.pid, signal.SIGKILL)
                mlflow.wait()
        if pg_started:
            subprocess.run(_as_postgres([str(tools["pg_ctl"]), "-D", str(data), "-m", "immediate", "stop"]),
                           capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


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

    dead = f"http://127.0.0.1:{_free_port()}"
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
