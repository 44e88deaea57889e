"""`taskreg task add-many MANIFEST` (issue 17): bulk registration from CSV or JSON Lines; a bad row is reported with
its line number and nothing of it is written; the others go in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from taskreg.registry.task_manifest import ManifestRow, read_manifest
from tests.conftest import snapshot
from tests.procs import copy_registry

runner = CliRunner()
A = "builtin:digits?classes=1,2&n=30"
B = "builtin:digits?classes=3,4&n=30"
C = "builtin:digits?classes=5,6&n=30"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_csv_manifest_reports_each_bad_row_with_its_line(tmp_path: Path) -> None:
    m = write(tmp_path / "m.csv", "name,source,domain,seed\n"
                                  f"a,{A.replace(',', ';')},,\n"  # line 2: the source's commas are a CSV problem
                                  f'b,"{B}",digits-b,7\n'  # 3
                                  f'b,"{C}",,\n'  # 4: name used on line 3
                                  f',"{C}",,\n'  # 5: no name
                                  f'c,"{C}",,seven\n'  # 6
                                  "\n"  # 7: blank, skipped
                                  f'd/e,"{C}",,\n'  # 8: not a valid name
                                  f'f,"{C}",,1,extra\n')  # 9: a cell too many
    rows, problems = read_manifest(m)
    assert rows == [ManifestRow(2, "a", A.replace(",", ";")), ManifestRow(3, "b", B, "digits-b", 7)]
    assert [(p.line, p.name) for p in problems] == [(4, "b"), (5, ""), (6, "c"), (8, "d/e"), (9, "f")]
    assert "already used on line 3" in problems[0].error and "no task name" in problems[1].error
    assert "seed must be an integer, got 'seven'" in problems[2].error and "5 cells" in problems[4].error
    assert all("\n" not in p.error for p in problems)
    assert problems[0].text(m) == f"{m}:4: b: task name 'b' is already used on line 3"


def test_a_jsonl_manifest_and_files_that_are_not_manifests(tmp_path: Path) -> None:
    m = write(tmp_path / "m.jsonl", json.dumps({"name": "a", "source": A, "seed": 3}) + "\n\n"
              + "[1, 2]\n" + "{not json\n" + json.dumps({"name": "x", "source": A, "colour": "red"}) + "\n"
              + json.dumps({"name": "y", "source": A, "seed": 1.5}) + "\n")
    rows, problems = read_manifest(m)
    assert rows == [ManifestRow(1, "a", A, None, 3)]
    assert [(p.line, p.error.split(" (")[0]) for p in problems] == [
        (3, "not a JSON object"), (4, "not a JSON object"), (5, "unknown key(s) colour; known: name, source, domain, "
                                                               "seed"), (6, "seed must be an integer, got 1.5")]
    for bad, message in [(tmp_path / "missing.csv", "not found"),
                         (write(tmp_path / "empty.csv", "name,source\n"), "lists no tasks"),
                         (write(tmp_path / "nohead.csv", f"a,{A}\n"), "must be a CSV header"),
                         (write(tmp_path / "cols.csv", "name,source,colour\n"), "unknown column"),
                         (tmp_path, "not found")]:
        with pytest.raises(TaskregError, match=message) as err:
            read_manifest(bad)
        assert "\n" not in str(err.value)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(TaskregError, match="UTF-8"):
        read_manifest(tmp_path / "bin.csv")


def test_add_many_registers_the_good_rows_and_nothing_of_the_bad(probe_template: Path, tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    m = write(tmp_path / "m.csv", "name,source,domain,seed\n"
                                  f'a,"{A}",,\n'
                                  f'b,"{B}",my-digits,5\n'
                                  f'gone,"{tmp_path}/missing.npz",,\n'  # fails when loaded: nothing of it written
                                  f'c,"{C}",,\n'
                                  f'bad name,"{C}",,\n')
    res = runner.invoke(app, ["--registry", str(root), "task", "add-many", str(m), "--max-samples", "20"])
    assert res.exit_code == 1, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(": ")[1] for e in errors] == [f"{m}:4", f"{m}:6"], errors
    assert "missing.npz" in errors[0] and "no such file" in errors[0]
    assert "registered 3 of 5 tasks" in res.stdout and "2 refused" in res.stdout
    reg = Registry.open(root)
    tasks = {t.name: t for t in reg.list_tasks()}
    assert sorted(tasks) == ["a", "b", "c"] and tasks["b"].domain == "my-digits" and tasks["a"].domain == "digits"
    assert reg.check().ok  # no run, vector or index entry of the failed rows
    # the seed of row b was used: the same task added alone with seed 5 embeds identically
    alone = copy_registry(probe_template, tmp_path / "alone")
    Registry.open(alone).add_task("b", B, max_samples=20, seed=5)
    assert (Registry.open(alone).task_vector("b") == reg.task_vector("b")).all()
    # again: the registered rows are skipped (already registered), the bad ones refused again, nothing changes
    before = snapshot(root)
    again = runner.invoke(app, ["--registry", str(root), "task", "add-many", str(m), "--max-samples", "20", "--json"])
    assert again.exit_code == 1
    out = json.loads(again.stdout)
    assert out["added"] == [] and out["already_registered"] == ["a", "b", "c"]
    assert [r["line"] for r in out["refused"]] == [4, 6]
    assert snapshot(root) == before


def test_add_many_with_an_unknown_probe_or_no_manifest_changes_nothing(probe_template: Path, tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    m = write(tmp_path / "m.csv", f'name,source\na,"{A}"\n')
    before = snapshot(root)
    for argv, message in [([str(m), "--probe", "nope"], "unknown probe"),
                          ([str(tmp_path / "none.csv")], "not found"),
                          ([str(m), "--max-samples", "0"], "--max-samples must be >= 1")]:
        res = runner.invoke(app, ["--registry", str(root), "task", "add-many", *argv])
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert snapshot(root) == before
