"""A registry whose MLflow store is a shared tracking server (issue 17): a real PostgreSQL cluster and a real
``mlflow server --serve-artifacts`` over it, both started here on 127.0.0.1 (skipped in one line where they cannot
start: no PostgreSQL binaries, no psycopg, no server within the wait)."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from tests.pg_server import TrackingServer, Unavailable, free_port, tracking_server
from tests.procs import ForkServer, save_random_expert

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
        with pytest.raises(TaskregError, match="cannot copy or put back"):
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


def test_backup_and_restore_say_what_a_remote_store_cannot_do(team_root: Path, server: TrackingServer,
                                                              tmp_path: Path) -> None:
    """A backup would need the server's database and artifacts: refused on one line naming what to back up instead,
    before anything is created; a copied directory of such a registry is not restored either."""
    dest = tmp_path / "new" / "backup"
    res = runner.invoke(app, ["--registry", str(team_root), "backup", str(dest)])
    line = one_error_line(res.output)
    assert res.exit_code == 2 and line.startswith(f"error: backup: this registry's runs, weights and registered "
                                                  f"models live on the tracking server {server.uri}"), res.output
    assert "pg_dump" in line and "catalog.duckdb" in line
    assert not (tmp_path / "new").exists()
    copy = tmp_path / "copy"
    shutil.copytree(team_root, copy)
    target = tmp_path / "restored"
    res = runner.invoke(app, ["--registry", str(target), "restore", str(copy)])
    line = one_error_line(res.output)
    assert res.exit_code == 2 and line.startswith("error: restore: this registry's runs"), res.output
    assert not target.exists()


# --------------------------------------------------------------------------- the server stops mid-command
# The failing commands run as real taskreg processes (the session's fork server: tests/procs.py), so the process
# that created a pending run is dead afterwards, as after a crash, and `check --fix` may clear what it left. The
# server is killed from inside the command by a hook on one Tracker method (the prelude below), at that point.

KILL_HOOK = """
import os, signal, socket, time
from taskreg.registry.tracking import Tracker

_original = Tracker.{method}

def _kill_server():
    os.killpg({pgid}, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until nothing listens on the port any more
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
        except OSError:
            return
        time.sleep(0.02)

def _hooked(self, *args, **kwargs):
    if {after}:
        out = _original(self, *args, **kwargs)
        _kill_server()
        return out
    _kill_server()
    return _original(self, *args, **kwargs)

Tracker.{method} = _hooked
"""


def kill_hook(server: TrackingServer, method: str, *, after: bool) -> str:
    """Prelude for a fork-server child: SIGKILL the tracking server before (or right after) ``Tracker.method``."""
    assert server.proc is not None
    port = int(server.uri.rsplit(":", 1)[1])
    return KILL_HOOK.format(method=method, pgid=server.proc.pid, port=port, after=after)


def server_runs(uri: str) -> dict[str, tuple[str, str, str]]:
    """run id -> (taskreg.state, taskreg.kind, run name) of the active runs of the taskreg experiments on the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith("taskreg-")]
    return {r.info.run_id: (r.data.tags.get("taskreg.state", "committed"), r.data.tags.get("taskreg.kind", ""),
                            r.info.run_name or "")
            for r in client.search_runs(ids, max_results=5000)}


def server_models(uri: str) -> set[str]:
    from mlflow.tracking import MlflowClient

    return {m.name for m in MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()}


def assert_whole_on_server(root: Path, uri: str) -> None:
    """Catalog rows <-> server: every run the catalog references is committed, every active run is committed and
    (a record's run) referenced, the registered expert models are exactly the catalog's experts, indexes current."""
    from tests.procs import RECORD_RUN_KINDS, catalog_rows, index_fresh

    referenced = {r[0] for r in catalog_rows(
        root, "SELECT run_id FROM task_embeddings UNION ALL SELECT run_id FROM experts UNION ALL "
              "SELECT run_id FROM probes") if r[0]}
    runs = server_runs(uri)
    for run_id in referenced:
        assert run_id in runs and runs[run_id][0] == "committed", (run_id, runs.get(run_id))
    for run_id, (state, kind, name) in runs.items():
        assert state == "committed", f"run {run_id} ({name}) is {state}"
        assert run_id in referenced or kind not in RECORD_RUN_KINDS, f"run {run_id} ({name}) has no catalog row"
    experts = {f"expert-{r[0]}" for r in catalog_rows(root, "SELECT name FROM experts")}
    assert {m for m in server_models(uri) if m.startswith("expert-")} == experts
    for (kind,) in catalog_rows(root, "SELECT kind FROM index_state"):
        assert index_fresh(root, kind), f"index {kind} is stale"


def catalog_view(root: Path) -> list[tuple]:
    from tests.procs import catalog_rows

    return catalog_rows(root, "SELECT 'expert', name, run_id FROM experts UNION ALL SELECT 'task', t.name, e.run_id "
                              "FROM tasks t JOIN task_embeddings e ON e.task_id = t.id ORDER BY 1, 2, 3")


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def check_notes(fork_server: ForkServer, root: Path, *, fix: bool) -> list[str]:
    res = fork_server.run(["--registry", str(root), "check", "--json", *(["--fix"] if fix else [])])
    report = json.loads(res.stdout)
    assert res.code == 0 and report["ok"], (report["problems"], res.stderr)
    return list(report["notes"])


@pytest.mark.parametrize(("command", "method", "after"), [
    ("expert add", "log_artifact", False),  # the weights upload (its pending run exists on the server)
    ("expert add", "commit", False),  # after the catalog commit, before the run is tagged committed
    ("task add", "start_run", True),  # right after its pending run is created
])
def test_the_server_stops_mid_command(team_root: Path, server: TrackingServer, fork_server: ForkServer,
                                      tmp_path: Path, command: str, method: str, after: bool) -> None:
    r = ["--registry", str(team_root)]
    argv = (["expert", "add", "e-down", "--arch", "cifar_resnet8", "--weights",
             str(save_random_expert(tmp_path / "w.pt", seed=3)), "--trained-on", "digits"] if command == "expert add"
            else ["task", "add", "t-down", "--data", "builtin:digits?classes=1,2&n=40", "--max-samples", "20"])
    before = catalog_view(team_root)
    try:
        res = fork_server.run(r + argv, prelude=kill_hook(server, method, after=after))
    finally:
        server.stop()  # reap the killed server, then bring it back on its port (PostgreSQL and artifacts kept)
        server.start()
    line = one_error_line(res.stderr)
    assert res.code == 2 and f"tracking server {server.uri} stopped answering" in line, res.stderr
    committed = method == "commit"
    if committed:  # the record is whole in the catalog and the error says so
        assert "e-down is registered in the catalog, but" in line
        assert {row[1] for row in catalog_view(team_root)} - {row[1] for row in before} == {"e-down"}
    else:
        assert catalog_view(team_root) == before  # nothing half-registered is visible
    notes = check_notes(fork_server, team_root, fix=False)
    expected = ("is committed in the catalog but still tagged pending" if committed
                else "was never committed (interrupted command)")
    assert any(expected in n for n in notes), notes
    check_notes(fork_server, team_root, fix=True)
    assert_whole_on_server(team_root, server.uri)
    again = fork_server.run(r + argv)  # the same command again completes it (or finds it done)
    assert again.code == (2 if committed else 0), again.stderr
    assert_whole_on_server(team_root, server.uri)
    rm = ["expert", "rm", "e-down"] if command == "expert add" else ["task", "rm", "t-down"]
    assert fork_server.run(r + rm).code == 0
    assert catalog_view(team_root) == before
    assert_whole_on_server(team_root, server.uri)



def test_recover_rebuilds_lost_records_from_the_server(team_root: Path, server: TrackingServer) -> None:
    """A catalog that lost the rows of an expert and of the probe (e.g. restored alone, older than the server): `check`
    reports the records the server holds, `recover` rebuilds them from the server's runs, models and weights."""
    import duckdb

    from tests.procs import catalog_rows

    probes = "SELECT name, arch, sha256, weights, run_id FROM probes ORDER BY name"
    before, probes_before = catalog_view(team_root), catalog_rows(team_root, probes)
    with duckdb.connect(str(team_root / "catalog.duckdb")) as con:
        (expert_id,) = con.execute("SELECT id FROM experts WHERE name = 'e1'").fetchone()
        con.execute("DELETE FROM expert_task_results WHERE expert_id = ?", [expert_id])
        con.execute("DELETE FROM experts WHERE id = ?", [expert_id])
        con.execute("DELETE FROM trivial_embeddings WHERE probe = 'default'")
        con.execute("DELETE FROM probes WHERE name = 'default'")
    shutil.rmtree(team_root / "cache" / "artifacts")
    res = runner.invoke(app, ["--registry", str(team_root), "check"])
    assert res.exit_code != 0 and "the catalog lost this record" in res.output, res.output
    res = runner.invoke(app, ["--registry", str(team_root), "recover"])
    assert res.exit_code == 0 and "recovered 1 probe(s), 0 task(s) (0 embeddings), 1 expert(s)" in res.output, \
        res.output
    assert catalog_view(team_root) == before and catalog_rows(team_root, probes) == probes_before
    assert_whole_on_server(team_root, server.uri)
    res = runner.invoke(app, ["--registry", str(team_root), "check"])
    assert res.exit_code == 0, res.output


def test_recover_a_lost_catalog_from_the_server(team_root: Path, server: TrackingServer, tmp_path: Path) -> None:
    """The registry directory is gone (only its catalog named the server): `recover --tracking-uri` on a new directory
    rebuilds the catalog from the server (probe, task, experts, same runs) and binds it to that server."""
    from tests.procs import catalog_rows

    lost = tmp_path / "lost"
    res = runner.invoke(app, ["--registry", str(lost), "recover"])  # no catalog, no mlflow.db: nothing known here
    assert res.exit_code == 2 and "no registry at" in one_error_line(res.output), res.output
    res = runner.invoke(app, ["--registry", str(lost), "recover", "--tracking-uri", server.uri])
    assert res.exit_code == 0 and "recovered 1 probe(s), 1 task(s)" in res.output, res.output
    assert catalog_view(lost) == catalog_view(team_root)
    uri = "SELECT value FROM registry_info WHERE key = 'tracking_uri'"
    assert catalog_rows(lost, uri) == catalog_rows(team_root, uri)
    assert not (lost / "mlflow.db").exists()
    res = runner.invoke(app, ["--registry", str(lost), "check"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--registry", str(lost), "recover", "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert res.exit_code == 2 and "not on http://127.0.0.1:" in one_error_line(res.output), res.output


# --------------------------------------------------------------------------- a writer killed (SIGKILL)

Point = Callable[[], bool] | float  # kill as soon as this holds, or after that many seconds


def catalog_written(root: Path) -> Callable[[], bool]:
    """True once the catalog file or its write-ahead log changes from now on (a commit is being written)."""
    def stat() -> tuple:
        path = root / "catalog.duckdb"
        return path.stat().st_mtime_ns, path.stat().st_size, path.with_name("catalog.duckdb.wal").exists()

    start = stat()
    return lambda: stat() != start


def kill_at(fork_server: ForkServer, root: Path, uri: str, argv: list[str], point: Point) -> list[str]:
    """Run ``taskreg argv`` as its own process and SIGKILL it as soon as ``point`` holds (or after that many seconds),
    then: `check` finds no problem (leftovers are notes), `check --fix` clears them, the catalog and the server
    agree. Returns the leftovers `check` noted."""
    child = fork_server.spawn(["--registry", str(root), *argv])
    if callable(point):
        deadline = time.monotonic() + 120
        while child.running() and not point() and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(point)
    child.kill()
    child.wait()
    notes = check_notes(fork_server, root, fix=True)
    assert all(n.startswith(("registered model", "MLflow run")) for n in notes), notes
    assert_whole_on_server(root, uri)
    return notes


def test_a_writer_killed_mid_command_leaves_a_consistent_registry(team_root: Path, server: TrackingServer,
                                                                  fork_server: ForkServer, tmp_path: Path) -> None:
    """`expert add` and `expert rm` on a server registry, SIGKILLed the moment one of their steps becomes visible on
    the server or in the catalog (and once at a random delay); the same command again then completes."""
    r = ["--registry", str(team_root)]
    name = "e-kill"
    add = ["expert", "add", name, "--arch", "cifar_resnet8", "--weights",
           str(save_random_expert(tmp_path / "w.pt", seed=4)), "--trained-on", "digits"]
    rm = ["expert", "rm", name]

    def present() -> bool:
        return name in {row[1] for row in catalog_view(team_root)}

    def run_is(state: str) -> Callable[[], bool]:
        return lambda: any(n == f"expert-{name}" and s == state for s, _, n in server_runs(server.uri).values())

    def model(exists: bool) -> Callable[[], bool]:
        return lambda: (f"expert-{name}" in server_models(server.uri)) == exists

    def uploaded() -> Callable[[], bool]:  # a new copy of the weights in the server's artifact store (a removed
        def count() -> int:               # record's artifacts stay there: MLflow deletes runs softly)
            return len(list(server.artifacts.rglob(f"{name}.pt")))

        start = count()
        return lambda: count() > start

    t0 = time.monotonic()
    assert fork_server.run(r + add).code == 0  # one whole run: how long the command takes
    duration = time.monotonic() - t0
    assert fork_server.run(r + rm).code == 0
    delay = random.Random(17).uniform(0.0, duration)
    add_points: list[Callable[[], Point]] = [lambda: run_is("pending"), uploaded, lambda: model(True),
                                             lambda: catalog_written(team_root), lambda: delay]
    leftovers: list[list[str]] = []
    for make_point in add_points:
        leftovers.append(kill_at(fork_server, team_root, server.uri, add, make_point()))
        again = fork_server.run(r + add)  # completes the record, or finds it whole
        assert again.code == 0 or "already exists" in again.stderr, again.stderr
        assert present()
        assert_whole_on_server(team_root, server.uri)
        assert fork_server.run(r + rm).code == 0
    rm_points: list[Callable[[], Point]] = [lambda: run_is("removing"), lambda: model(False)]
    for make_point in rm_points:
        assert fork_server.run(r + add).code == 0
        leftovers.append(kill_at(fork_server, team_root, server.uri, rm, make_point()))
        again = fork_server.run(r + rm)
        assert again.code == 0 or "unknown expert" in again.stderr, again.stderr
        assert not present()
        assert_whole_on_server(team_root, server.uri)
    print(f"\nkills on a server registry, leftovers check --fix cleared: {leftovers}")
    assert sum(bool(notes) for notes in leftovers) >= 3, leftovers  # most kills landed mid-command


# --------------------------------------------------------------------------- last: it leaves the server stopped

def test_reading_commands_when_the_server_stops_after_open(team_root: Path, server: TrackingServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog is opened (which asks the server for the registry's identity), then the server dies: a command
    that reads the catalog only still answers; one that needs weights not in the local cache fails on one line."""
    from taskreg.registry import Registry

    opened = Registry.open.__func__  # type: ignore[attr-defined]

    def open_then_stop(cls: type[Registry], *args: object, **kwargs: object) -> Registry:
        reg = opened(cls, *args, **kwargs)
        server.stop()
        return reg

    monkeypatch.setattr(Registry, "open", classmethod(open_then_stop))
    res = runner.invoke(app, ["--registry", str(team_root), "task", "list"])
    assert res.exit_code == 0 and "digits" in res.output, res.output
    server.start()
    shutil.rmtree(team_root / "cache" / "artifacts")  # the weights must come from the server
    res = runner.invoke(app, ["--registry", str(team_root), "select", "--data", "builtin:digits?n=200",
                              "--method", "logme"])
    assert res.exit_code == 2, res.output
    line = one_error_line(res.output)
    assert f"tracking server {server.uri} stopped answering" in line
    assert not server.running  # the module's last test: the fixture's teardown has nothing left to stop
