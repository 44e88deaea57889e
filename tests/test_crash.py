"""Crash safety: real taskreg processes killed with SIGKILL at random points, many times.

After every kill: ``taskreg check`` finds no problem (leftovers of the dead process are notes only),
``check --fix`` clears the leftovers, the record is whole or absent (catalog row ⇔ MLflow run
committed ⇔ index holds the vector, and nothing of a half record survives anywhere), and running
the same command again completes it. Kills come at random delays and, so that the short windows
between the DuckDB commit and the MLflow / index updates get hit too (not only the long
computation), also the instant a state change becomes visible on disk (its MLflow run appears or is
marked for removal, the catalog file is written, the registered model appears or goes). Also: a fresh
``taskreg`` process killed mid-command, and backup / restore.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from taskreg.registry import Registry
from tests.conftest import snapshot
from tests.procs import (
    CHILD_ENV,
    ForkServer,
    assert_whole,
    catalog_rows,
    copy_registry,
    index_fresh,
    registered_models,
    run_state,
    runs_named,
    save_random_expert,
)

TASK = "t-crash"
TASK_DATA = "builtin:digits?classes=1,2&n=40"
EXPERT = "e-crash"
AFFINITY = "aff-crash"
AFFINITY_FILES = {"16k": "affinity_16k.csv", "1k": "affinity_1k.csv"}
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "taskonomy"
TASK_KIND = "task/default/montecarlo"
STATS: dict[str, Counter] = {}


@pytest.fixture(scope="module")
def base(probe_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_registry(probe_template, tmp_path_factory.mktemp("crash") / "base")


@pytest.fixture(scope="module")
def server(fork_server: ForkServer):  # noqa: ANN201
    yield fork_server
    total = sum(sum(c.values()) for c in STATS.values())
    print(f"\n{total} kills: " + "; ".join(f"{cmd}: {dict(c)}" for cmd, c in STATS.items()))


@pytest.fixture
def root(base: Path, tmp_path: Path) -> Path:
    """A copy of ``base``, opened once (which points its MLflow paths at the copy, under the lock)."""
    shutil.copytree(base, tmp_path / "reg")
    Registry.open(tmp_path / "reg")
    return tmp_path / "reg"


# --------------------------------------------------------------------------- phases, from raw state

def task_phase(root: Path) -> str:
    """How far `task add` / `task rm` of TASK got, read without repairing anything."""
    rows = catalog_rows(root, "SELECT e.run_id FROM tasks t JOIN task_embeddings e ON e.task_id = t.id "
                              "WHERE t.name = ? AND e.method = 'montecarlo'", [TASK])
    active = runs_named(root, f"task-{TASK}-montecarlo")
    fresh = index_fresh(root, TASK_KIND)
    if rows:
        state = run_state(root, rows[0][0])
        if state == "pending":
            return "catalog committed, run pending"
        if state == "removing":
            return "rm marked the runs, not committed"
        return "done (present)" if fresh else "run committed, index stale"
    if any(s == "pending" for _, s in active):
        return "run logged, not committed"
    if any(s in ("committed", "removing") for _, s in active):  # committed: only ever a failure of the test
        return "catalog row removed, runs left" if fresh else "catalog row removed, index stale"
    return "nothing yet / done (absent)"


def expert_phase(root: Path) -> str:
    rows = catalog_rows(root, "SELECT run_id FROM experts WHERE name = ?", [EXPERT])
    active = runs_named(root, f"expert-{EXPERT}")
    model = f"expert-{EXPERT}" in registered_models(root)
    if rows:
        state = run_state(root, rows[0][0])
        if state == "removing":
            return "rm marked the run, not committed"
        return "catalog committed, run pending" if state == "pending" else "done (present)"
    if any(s == "pending" for _, s in active):
        return "model registered, not committed" if model else "run logged, not committed"
    if model:
        return "catalog row removed, model left"
    if active:
        return "catalog row removed, run left"
    return "nothing yet / done (absent)"


def affinity_version(root: Path) -> str:
    """Which table the affinity set holds: '16k', '1k' or 'none'; anything else is a half-written set."""
    n, total = catalog_rows(root, "SELECT count(*), coalesce(sum(value), 0) FROM affinities WHERE name = ?",
                            [AFFINITY])[0]
    sets = catalog_rows(root, "SELECT count(*) FROM affinity_sets WHERE name = ?", [AFFINITY])[0][0]
    if n == 0 and sets == 0:
        return "none"
    for version, (rows, value) in affinity_tables().items():
        if sets == 1 and n == rows and abs(total - value) < 1e-6:
            return version
    raise AssertionError(f"affinity set {AFFINITY} is half written: {sets} set row(s), {n} affinities")


def affinity_tables() -> dict[str, tuple[int, float]]:
    out = {}
    for version, name in AFFINITY_FILES.items():
        lines = (DATA_DIR / name).read_text().splitlines()[1:]
        out[version] = (len(lines), sum(float(line.rsplit(",", 1)[1]) for line in lines))
    return out


# --------------------------------------------------------------------------- when to kill

Point = float | Callable[[Path], bool]  # seconds after the start, or: kill as soon as this holds


def pending_run(name: str) -> Callable[[Path], bool]:
    return lambda root: any(state == "pending" for _, state in runs_named(root, name))


def committed_run(name: str) -> Callable[[Path], bool]:
    return lambda root: any(state == "committed" for _, state in runs_named(root, name))


def marked_run(name: str) -> Callable[[Path], bool]:
    """As soon as `rm` tagged the run ``removing`` (before its catalog commit)."""
    return lambda root: any(state == "removing" for _, state in runs_named(root, name))


def model_exists(name: str, exists: bool = True) -> Callable[[Path], bool]:
    return lambda root: (name in registered_models(root)) == exists


def file_gone(rel: str) -> Callable[[Path], bool]:
    return lambda root: not (root / rel).exists()


def catalog_written() -> Callable[[Path], bool]:
    """True once the catalog file or its write-ahead log changes: a commit is being written.

    (Opening DuckDB to look takes tens of milliseconds, longer than the windows after a commit.)
    """
    def stat(root: Path) -> tuple:
        path = root / "catalog.duckdb"
        return path.stat().st_mtime_ns, path.stat().st_size, path.with_name("catalog.duckdb.wal").exists()

    start: dict[Path, tuple] = {}
    return lambda root: start.setdefault(root, stat(root)) != stat(root)


def schedule(triggers: list[Callable[[Path], bool]], randoms: int, duration: float, rng: random.Random) -> list[Point]:
    """Each state trigger once plus ``randoms`` uniform delays over the command's duration, shuffled."""
    points: list[Point] = [*triggers, *(rng.uniform(0.0, duration) for _ in range(randoms))]
    rng.shuffle(points)
    return points


def kill_and_check(server: ForkServer, root: Path, argv: list[str], point: Point,
                   phase_of: Callable[[Path], str], stats: Counter) -> str:
    """Start the command, SIGKILL it at ``point``, then: `check` finds no problem, `check --fix` clears the
    leftovers, and every record is whole or absent."""
    r = ["--registry", str(root)]
    if callable(point):
        point(root)  # a catalog trigger records the files' state before the command starts
    child = server.spawn(r + argv)
    if callable(point):
        deadline = time.monotonic() + 120
        while child.running() and not point(root) and time.monotonic() < deadline:
            time.sleep(0.01)  # the windows aimed at last 30 ms and more
    else:
        time.sleep(point)
    child.kill()
    child.wait()
    phase = phase_of(root)
    stats[phase] += 1
    # `check --fix` reports the problems it finds before it touches anything (it only ever removes leftovers)
    res = server.run(r + ["check", "--fix", "--json"])
    report = json.loads(res.stdout)
    assert res.code == 0 and report["ok"], (phase, report["problems"], res.stderr)
    leftovers = ("registered model", "MLflow run", "index temporary file")
    assert all(note.startswith(leftovers) for note in report["notes"]), report["notes"]
    assert_whole(root)
    return phase


def rerun(server: ForkServer, root: Path, argv: list[str], *, expect_done: bool, refusal: str) -> None:
    """Run the command again: it completes, or (when the killed run had already committed) refuses
    cleanly on one line because the record exists / is gone."""
    res = server.run(["--registry", str(root), *argv])
    if expect_done:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.code == 2 and len(lines) == 1 and refusal in lines[0], (res.code, res.stderr)
    else:
        assert res.code == 0, res.stderr
    assert_whole(root)


def timed(server: ForkServer, root: Path, argv: list[str]) -> float:
    """Seconds one unkilled run of the command takes."""
    t0 = time.perf_counter()
    res = server.run(["--registry", str(root), *argv])
    assert res.code == 0, res.stderr
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the kills

def test_task_add_and_rm_survive_sigkill(server: ForkServer, root: Path) -> None:
    add = ["task", "add", TASK, "--data", TASK_DATA, "--max-samples", "20"]
    rm = ["task", "rm", TASK]
    run = f"task-{TASK}-montecarlo"
    committed = ("catalog committed, run pending", "run committed, index stale", "done (present)")
    rng = random.Random(1)
    t_add, t_rm = timed(server, root, add), timed(server, root, rm)
    adds = schedule([pending_run(run), catalog_written(), committed_run(run)], 1, t_add, rng)
    rms = schedule([marked_run(run), catalog_written(), file_gone(f"index/{TASK_KIND.replace('/', '__')}.json")], 1,
                   t_rm, rng)
    add_stats, rm_stats = STATS.setdefault("task add", Counter()), STATS.setdefault("task rm", Counter())
    for add_at, rm_at in zip(adds, rms, strict=True):
        phase = kill_and_check(server, root, add, add_at, task_phase, add_stats)
        rerun(server, root, add, expect_done=phase in committed, refusal="already has")
        phase = kill_and_check(server, root, rm, rm_at, task_phase, rm_stats)
        rerun(server, root, rm, expect_done=phase.startswith(("catalog row removed", "nothing yet")),
              refusal="unknown task")
    assert len(add_stats) >= 3 and len(rm_stats) >= 2, STATS


def test_expert_add_and_rm_survive_sigkill(server: ForkServer, root: Path, tmp_path: Path) -> None:
    weights = save_random_expert(tmp_path / "w.pt")
    add = ["expert", "add", EXPERT, "--arch", "cifar_resnet8", "--weights", str(weights)]
    rm = ["expert", "rm", EXPERT]
    run, model = f"expert-{EXPERT}", f"expert-{EXPERT}"
    committed = ("catalog committed, run pending", "done (present)")
    rng = random.Random(2)
    t_add, t_rm = timed(server, root, add), timed(server, root, rm)
    adds = schedule([pending_run(run), model_exists(model), catalog_written()], 1, t_add, rng)
    rms = schedule([marked_run(run), catalog_written(), model_exists(model, False)], 1, t_rm, rng)
    add_stats, rm_stats = STATS.setdefault("expert add", Counter()), STATS.setdefault("expert rm", Counter())
    for add_at, rm_at in zip(adds, rms, strict=True):
        phase = kill_and_check(server, root, add, add_at, expert_phase, add_stats)
        rerun(server, root, add, expect_done=phase in committed, refusal="already exists")
        phase = kill_and_check(server, root, rm, rm_at, expert_phase, rm_stats)
        rerun(server, root, rm, expect_done=phase not in ("done (present)", "rm marked the run, not committed"),
              refusal="unknown expert")
    assert len(add_stats) >= 3 and len(rm_stats) >= 2, STATS


def test_affinity_import_is_all_or_nothing(server: ForkServer, root: Path) -> None:
    rng = random.Random(3)
    stats = STATS.setdefault("affinity import", Counter())
    t = timed(server, root, ["affinity", "import", str(DATA_DIR / AFFINITY_FILES["1k"]), "--name", AFFINITY])
    points = schedule([catalog_written(), catalog_written()], 2, t, rng)
    before = "1k"
    for i, point in enumerate(points):
        version = "16k" if i % 2 == 0 else "1k"
        argv = ["affinity", "import", str(DATA_DIR / AFFINITY_FILES[version]), "--name", AFFINITY, "--replace"]
        kill_and_check(server, root, argv, point,
                       lambda r, v=version, b=before: "replaced" if affinity_version(r) == v != b else "unchanged",
                       stats)
        assert affinity_version(root) in (before, version)
        assert server.run(["--registry", str(root), *argv]).code == 0  # the same command again completes it
        assert affinity_version(root) == version
        before = version


def test_fresh_taskreg_process_killed_mid_command(server: ForkServer, root: Path) -> None:
    """A `taskreg` started from its console script, killed as soon as its MLflow run exists."""
    exe = Path(sys.executable).with_name("taskreg")
    argv = [str(exe), "--registry", str(root), "task", "add", TASK, "--data", TASK_DATA, "--max-samples", "20"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **CHILD_ENV})
    deadline = time.monotonic() + 240
    while not runs_named(root, f"task-{TASK}-montecarlo") and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    phase = task_phase(root)
    STATS.setdefault("fresh task add", Counter())[phase] += 1
    res = server.run(["--registry", str(root), "check", "--json"])
    assert res.code == 0 and json.loads(res.stdout)["ok"], res.stdout
    res = server.run(["--registry", str(root), "check", "--fix"])
    assert res.code == 0, res.stdout
    assert_whole(root)
    rerun(server, root, argv[3:], expect_done=phase != "run logged, not committed", refusal="already has")


# --------------------------------------------------------------------------- backup and restore

def test_backup_restore_round_trip(server: ForkServer, root: Path, tmp_path: Path) -> None:
    r = ["--registry", str(root)]
    weights = save_random_expert(tmp_path / "w.pt")
    for argv in (["task", "add", TASK, "--data", TASK_DATA, "--max-samples", "20"],
                 ["expert", "add", EXPERT, "--arch", "cifar_resnet8", "--weights", str(weights)],
                 ["affinity", "import", str(DATA_DIR / AFFINITY_FILES["1k"]), "--name", AFFINITY]):
        assert server.run(r + argv).code == 0
    backup = tmp_path / "backup"
    res = server.run(r + ["backup", str(backup)])
    assert res.code == 0, res.stderr
    assert not (backup / ".lock").exists() and not list((backup / "cache").iterdir())
    source_files = {k for k in snapshot(root) if not k.startswith("cache/")}
    assert source_files - {"mlflow.db"} <= set(snapshot(backup))  # every file but the cache (sqlite is copied anew)

    restored = tmp_path / "restored"
    res = server.run(["--registry", str(restored), "restore", str(backup)])
    assert res.code == 0, res.stderr
    for argv in (["task", "list", "--json"], ["expert", "list", "--json"], ["affinity", "list", "--json"]):
        a, b = server.run(r + argv), server.run(["--registry", str(restored), *argv])
        assert a.code == b.code == 0 and json.loads(a.stdout) == json.loads(b.stdout)
    assert server.run(["--registry", str(restored), "check"]).code == 0
    assert server.run(["--registry", str(restored), "task", "neighbors", TASK, "-k", "1"]).code == 0
    assert_whole(restored)

    # an existing registry is replaced only with --force; a directory that is not a registry never
    before = snapshot(restored)
    res = server.run(["--registry", str(restored), "restore", str(backup)])
    assert res.code == 2 and res.stderr.startswith("error: ") and "--force" in res.stderr
    assert snapshot(restored) == before
    assert server.run(["--registry", str(restored), "task", "rm", TASK]).code == 0
    assert server.run(["--registry", str(restored), "restore", str(backup), "--force"]).code == 0
    assert [t["name"] for t in json.loads(server.run(["--registry", str(restored), "task", "list",
                                                      "--json"]).stdout)] == [TASK]
    other = tmp_path / "not-a-registry"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    res = server.run(["--registry", str(other), "restore", str(backup), "--force"])
    assert res.code == 2 and (other / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left behind


def test_backups_taken_during_writes_and_after_a_kill_restore_consistently(server: ForkServer, root: Path,
                                                                          tmp_path: Path) -> None:
    r = ["--registry", str(root)]
    writers = [server.spawn(r + ["task", "add", f"w{i}", "--data", f"builtin:digits?classes={i},{i + 1}&n=40",
                                 "--max-samples", "10"]) for i in range(2)]
    backups = []
    for i in range(2):  # while the writers compute and commit
        backups.append(tmp_path / f"during-{i}")
        res = server.run(r + ["backup", str(backups[-1])])
        assert res.code == 0, res.stderr
    assert all(w.wait().code == 0 for w in writers)
    written = catalog_written()
    written(root)
    killed = server.spawn(r + ["task", "add", TASK, "--data", TASK_DATA, "--max-samples", "20"])
    while killed.running() and not written(root):
        time.sleep(0.01)
    killed.kill()
    killed.wait()  # killed as it committed: the catalog may hold the commit in its write-ahead log only
    STATS.setdefault("task add, then backup", Counter())[task_phase(root)] += 1
    backups.append(tmp_path / "after-kill")
    assert server.run(r + ["backup", str(backups[-1])]).code == 0
    for backup in backups:
        target = tmp_path / f"restored-{backup.name}"
        res = server.run(["--registry", str(target), "restore", str(backup)])
        assert res.code == 0, res.stderr  # restore runs `check` and fails on any problem
        res = server.run(["--registry", str(target), "check", "--fix", "--json"])
        assert res.code == 0 and json.loads(res.stdout)["ok"], res.stdout
        assert_whole(target)
        names = {t["name"] for t in json.loads(server.run(["--registry", str(target), "task", "list",
                                                           "--json"]).stdout)}
        assert names <= {"w0", "w1", TASK}
    assert {"w0", "w1"} <= names  # the last backup was taken after both writers finished

