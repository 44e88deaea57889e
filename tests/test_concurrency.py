"""Concurrent use: real parallel taskreg processes against one registry.

DuckDB allows one writing process per file; taskreg serialises commits with a registry-level lock
(bounded wait, one-line message on timeout) and computes outside it, so parallel writers all
succeed, and readers keep working while a long job runs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from taskreg.registry import Registry
from tests.procs import ForkServer, assert_whole, copy_registry, run_state, runs_named, save_random_expert

PAIRS = ["0,1", "2,3", "4,5", "6,7", "8,9", "0,9", "1,8", "2,7"]
QUERY = "builtin:digits?classes=3,4&n=40"


@pytest.fixture(scope="module")
def base(probe_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny probe, a task and an expert trained on it (so `select` has something to rank)."""
    root = copy_registry(probe_template, tmp_path_factory.mktemp("concurrency") / "base")
    reg = Registry.open(root)
    reg.add_task("anchor", "builtin:digits?classes=1,2&n=40", max_samples=20)
    reg.add_expert("anchor-expert", arch="cifar_resnet8", weights=save_random_expert(root.parent / "w.pt"),
                   trained_on="anchor")
    return root


@pytest.fixture(scope="module")
def server(fork_server: ForkServer) -> ForkServer:
    return fork_server


@pytest.fixture
def root(base: Path, tmp_path: Path) -> Path:
    """A copy of ``base``, opened once (which points its MLflow paths at the copy, under the lock)."""
    shutil.copytree(base, tmp_path / "reg")
    Registry.open(tmp_path / "reg")
    return tmp_path / "reg"


def test_eight_parallel_task_adds_all_succeed(server: ForkServer, root: Path) -> None:
    r = ["--registry", str(root)]
    children = [server.spawn(r + ["task", "add", f"par-{i}", "--data", f"builtin:digits?classes={pair}",
                                  "--max-samples", "10"]) for i, pair in enumerate(PAIRS)]
    results = [c.wait(timeout=240) for c in children]
    for res in results:
        assert res.code == 0, res.stderr
    listed = json.loads(server.run(r + ["task", "list", "--json"]).stdout)
    assert sorted(t["name"] for t in listed) == sorted(["anchor", *[f"par-{i}" for i in range(len(PAIRS))]])
    check = server.run(r + ["check", "--json"])
    report = json.loads(check.stdout)
    assert check.code == 0 and report["ok"] and report["notes"] == [], report
    assert_whole(root)


def test_readers_and_short_writers_proceed_while_a_long_job_runs(server: ForkServer, root: Path) -> None:
    r = ["--registry", str(root)]
    long_job = server.spawn(r + ["task", "add", "long", "--data", "builtin:digits", "--max-samples", "1000"])
    listed = server.run(r + ["task", "list", "--json"])
    selected = server.run(r + ["select", "--data", QUERY, "--method", "asym", "--json"])
    added = server.run(r + ["task", "add", "short", "--data", "builtin:digits?classes=5,6&n=40", "--max-samples",
                            "10"])
    # all three finished before the long job even logged its MLflow run (it does so after computing)
    assert not runs_named(root, "task-long-montecarlo"), "the long job finished first: make it longer"
    assert listed.code == 0 and [t["name"] for t in json.loads(listed.stdout)] == ["anchor"], listed.stderr
    assert selected.code == 0 and json.loads(selected.stdout)["results"][0]["expert"] == "anchor-expert"
    assert added.code == 0, added.stderr
    done = long_job.wait(timeout=300)
    assert done.code == 0, done.stderr
    names = sorted(t["name"] for t in json.loads(server.run(r + ["task", "list", "--json"]).stdout))
    assert names == ["anchor", "long", "short"]
    assert_whole(root)


def test_lock_timeout_is_one_clear_line(server: ForkServer, root: Path) -> None:
    r = ["--registry", str(root)]
    add = r + ["task", "add", "blocked", "--data", "builtin:digits?classes=5,6&n=40", "--max-samples", "10"]
    with Registry(root).lock():  # this test process holds the registry lock
        t0 = time.perf_counter()
        res = server.run(add, env={"TASKREG_LOCK_TIMEOUT": "1"})
        waited = time.perf_counter() - t0
        reads = server.run(r + ["task", "list", "--json"])  # readers never need the lock
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.code == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: registry ") and "is busy" in lines[0] and "TASKREG_LOCK_TIMEOUT" in lines[0]
    assert waited >= 1.0
    assert reads.code == 0 and [t["name"] for t in json.loads(reads.stdout)] == ["anchor"]
    # the blocked command removed its MLflow run; the registry is consistent and the command now succeeds
    assert all(run_state(root, run_id) != "pending" for run_id, _ in runs_named(root, "task-blocked-montecarlo"))
    assert json.loads(server.run(r + ["check", "--json"]).stdout)["notes"] == []
    assert server.run(add, env={"TASKREG_LOCK_TIMEOUT": "1"}).code == 0
    csv = Path(__file__).resolve().parents[1] / "data" / "taskonomy" / "affinity_1k.csv"
    bad = server.run(r + ["affinity", "import", str(csv), "--name", "x"], env={"TASKREG_LOCK_TIMEOUT": "soon"})
    assert bad.code == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: TASKREG_LOCK_TIMEOUT")
