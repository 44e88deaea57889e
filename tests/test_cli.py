"""The CLI through Typer's runner, against a real registry; bad inputs leave it byte-for-byte unchanged."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import catalog
from tests.conftest import snapshot

runner = CliRunner()


def run(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


def test_init_list_check(tmp_path) -> None:
    root = tmp_path / "reg"
    res = run("--registry", str(root), "init")
    assert res.exit_code == 0, res.output
    assert (root / "catalog.duckdb").exists() and (root / "mlflow.db").exists()
    assert (root / "artifacts").is_dir() and (root / "index").is_dir()
    res = run("--registry", str(root), "task", "list", "--json")
    assert res.exit_code == 0 and json.loads(res.output) == []
    res = run("--registry", str(root), "expert", "list", "--json")
    assert res.exit_code == 0 and json.loads(res.output) == []
    res = run("--registry", str(root), "check", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["ok"] is True
    assert not (tmp_path / "mlruns").exists()
    # every MLflow experiment, MLflow's own Default included, keeps its artifacts inside the registry
    import sqlite3

    with sqlite3.connect(root / "mlflow.db") as con:
        locations = dict(con.execute("SELECT name, artifact_location FROM experiments").fetchall())
    assert locations["Default"] == (root.resolve() / "artifacts" / "0").as_uri(), locations
    assert all(loc.startswith((root.resolve() / "artifacts").as_uri() + "/") for loc in locations.values())


def test_sql_and_json(registry_root) -> None:
    res = run("--registry", str(registry_root), "sql", "SELECT max(version) AS v FROM schema_version", "--json")
    assert res.exit_code == 0
    assert json.loads(res.output) == [{"v": catalog.SCHEMA_VERSION}]


def test_task_list_table_is_limited_by_default_and_json_is_complete(registry_root) -> None:
    import duckdb

    from taskreg.cli import TASK_LIST_LIMIT

    n = TASK_LIST_LIMIT + 5
    con = duckdb.connect(str(registry_root / "catalog.duckdb"))
    con.executemany("INSERT INTO tasks (name, source, domain, n_samples, n_classes, fingerprint) "
                    "VALUES (?, 's', 'd', 1, 2, 'f')", [[f"t{i:03d}"] for i in range(n)])
    con.close()
    r = ("--registry", str(registry_root), "task", "list")
    res = run(*r)
    assert res.exit_code == 0 and f"{n} task(s), first {TASK_LIST_LIMIT} shown" in res.output
    assert f"t{TASK_LIST_LIMIT - 1:03d}" in res.output and f"t{TASK_LIST_LIMIT:03d}" not in res.output
    assert f"t{n - 1:03d}" in run(*r, "--limit", "0").output
    assert len(json.loads(run(*r, "--json").output)) == n
    assert len(json.loads(run(*r, "--json", "--limit", "3").output)) == 3
    res = run(*r, "--limit", "-1")
    assert res.exit_code == 2 and "--limit must be >= 0" in res.output
    assert run("--registry", str(registry_root), "check", "--deep").exit_code == 0


def test_data_inspect_json() -> None:
    res = run("data", "inspect", "builtin:digits?classes=1,7&split=test", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["n_classes"] == 2


def test_check_exits_1_on_problems(registry_root) -> None:
    import duckdb

    con = duckdb.connect(str(registry_root / "catalog.duckdb"))
    con.execute("INSERT INTO task_embeddings (task_id, probe, method, vector, norm, n_samples, seed) "
                "VALUES (42, 'p', 'montecarlo', [1.0, 2.0], 0, 1, 0)")
    con.close()
    res = run("--registry", str(registry_root), "check")
    assert res.exit_code == 1
    assert "task_embeddings without task" in res.output


def _bad_npz(tmp_path, name: str, **arrays: np.ndarray) -> str:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return str(path)


BAD_SOURCES = {
    "missing file": lambda p: str(p / "nope.npz"),
    "unknown builtin": lambda p: "builtin:cifar100",
    "unknown selector": lambda p: "builtin:digits?colour=red",
    "one class": lambda p: "builtin:digits?classes=3",
    "bad class": lambda p: "builtin:digits?classes=3,42",
    "nan pixels": lambda p: _bad_npz(p, "nan", x=np.full((10, 8, 8), np.nan), y=np.arange(10) % 2),
    "length mismatch": lambda p: _bad_npz(p, "len", x=np.zeros((10, 8, 8)), y=np.arange(9) % 2),
    "wrong rank": lambda p: _bad_npz(p, "rank", x=np.zeros((10, 8)), y=np.arange(10) % 2),
    "empty": lambda p: _bad_npz(p, "empty", x=np.zeros((0, 8, 8)), y=np.zeros(0, dtype=int)),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_data_is_one_line_exit_2_and_leaves_registry_unchanged(case, tmp_path, registry_root) -> None:
    source = BAD_SOURCES[case](tmp_path)
    before = snapshot(registry_root)
    res = run("--registry", str(registry_root), "data", "inspect", source)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert snapshot(registry_root) == before


def test_unknown_names_exit_2(registry_root) -> None:
    before = snapshot(registry_root)
    for args in (("task", "show", "ghost"), ("task", "rm", "ghost"), ("expert", "show", "ghost"),
                 ("expert", "rm", "ghost")):
        res = run("--registry", str(registry_root), *args)
        assert res.exit_code == 2 and "unknown" in res.output
    for l2 in ("strong", "-1", "nan"):
        res = run("--registry", str(registry_root), "model2vec", "fit", "--l2", l2)
        assert res.exit_code == 2 and "l2" in res.output and len(res.output.strip().splitlines()) == 1
    assert snapshot(registry_root) == before


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, time; t = time.perf_counter(); from taskreg.cli import app; "
            "heavy = [m for m in ('torch', 'mlflow', 'faiss', 'duckdb', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "taskreg.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t0 < 5.0  # 0.6 s on an idle machine; slack for a heavily loaded box


def test_select_help_lists_the_registered_methods_by_cost_class_without_importing_torch() -> None:
    """The list in `select --help` is the selector registry's (issue 13 item 4), and building it stays light."""
    from taskreg.selection.selectors import COSTS, get_selector, list_selectors

    code = ("import sys\nfrom taskreg.cli import main\ntry:\n    main(['select', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint([m for m in ('torch', 'mlflow', 'faiss', 'duckdb', 'matplotlib') if m in sys.modules])")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert time.perf_counter() - t0 < 5.0
    assert out.strip().splitlines()[-1] == "[]"
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())  # rich's panel borders and line wrapping out
    for cost in COSTS:
        assert f"{cost} ({COSTS[cost]}): {', '.join(list_selectors(cost))}" in text, text
    for name in list_selectors():
        s = get_selector(name)
        assert f"{name} ({s.cost}; {s.better} score is better; needs {s.needs_text()}): {s.description}" in text
    assert "--estimator" in text and "--embedding" not in text  # the old spelling works but is not advertised


@pytest.mark.parametrize("command", [("task", "add"), ("task", "distance"), ("task", "neighbors"), ("task", "plot"),
                                     ("model2vec", "fit")])
def test_the_estimator_is_spelled_estimator(command: tuple[str, ...]) -> None:
    res = run(*command, "--help")
    assert res.exit_code == 0 and "--estimator" in res.output and "--method" not in res.output


def test_importing_the_cli_changes_no_thread_setting_and_loads_neither_torch_nor_numpy() -> None:
    """The thread budget (OMP_WAIT_POLICY=PASSIVE, thread counts) is applied when a command runs, before torch or
    numpy load (tests/test_threads.py), not at import: an importing process (the test suite) keeps its environment."""
    import os

    code = ("import os, sys, taskreg.cli; print(os.environ.get('OMP_WAIT_POLICY', '-'), "
            "os.environ.get('OPENBLAS_NUM_THREADS', '-'), 'numpy' in sys.modules, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["-", "-", "False", "False"]
