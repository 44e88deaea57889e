"""The Taskonomy pipeline end to end on the tiny built-in dictionary, through the CLI and a real registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import Registry, catalog
from taskreg.registry.taskonomy_pipeline import AddTargetReport
from taskreg.selection.ahp import winrate_matrix_from_losses
from tests.conftest import snapshot

runner = CliRunner()
# the module fixture trains a probe/experts or a whole tiny Taskonomy build: minutes on a busy 2-core box
pytestmark = pytest.mark.timeout(1200)
TASKS = "edges2d,denoising,autoencoding,photo,category,random,jigsaw"
BUILD = ["taskonomy", "build", "--dictionary", "builtin-tiny", "--max-order", "2", "--self-epochs", "2",
         "--transfer-epochs", "3", "--tasks", TASKS]


@pytest.fixture(scope="module")
def built(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("taskonomy") / "reg"
    shutil.copytree(registry_template, root)
    res = runner.invoke(app, ["--registry", str(root), *BUILD, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["jobs_run"]["task networks"] == 6  # 'random' is never trained
    assert rep["jobs_run"]["first order"] == 5 * 6 + 5  # 5 targets x 6 other sources, + scratch per target
    assert rep["jobs_run"]["higher order"] == 5 * 10  # C(5, 2) pairs of the beam per target
    return root


def test_build_is_resumable_and_consistent(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(built, root)
    res = runner.invoke(app, ["--registry", str(root), *BUILD, "--json"])
    rep = json.loads(res.stdout)
    assert sum(rep["jobs_run"].values()) == 0  # everything reused
    assert rep["jobs_skipped"]["first order"] == 35
    reg = Registry.open(root)
    assert reg.check().ok
    models = reg.tracker.registered_models()
    assert sum(1 for t in models.values() if t.get("kind") == "task_network") == 6
    assert len([e for e in reg.list_experts() if e.origin == "task_network"]) == 6


def test_winrates_in_sql_match_numpy(built: Path) -> None:
    reg = Registry.open(built)
    with reg.read() as con:
        rows = con.execute("SELECT t.key, CASE WHEN t.kind IN ('self', 'scratch') THEN t.kind ELSE "
                           "array_to_string(t.sources, '+') END, l.image, l.loss FROM transfers t JOIN "
                           "transfer_losses l USING (dictionary, key) WHERE t.dictionary = 'builtin-tiny' AND "
                           "t.target = 'photo' ORDER BY 2, 3").fetchall()
        sql = {(a, b): v for a, b, v in con.execute(
            "SELECT a, b, value FROM winrates WHERE dictionary = 'builtin-tiny' AND target = 'photo'").fetchall()}
    labels = sorted({r[1] for r in rows})
    losses = np.array([[r[3] for r in rows if r[1] == lab] for lab in labels])
    expected = winrate_matrix_from_losses(losses)
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            if i != j:
                assert sql[(a, b)] == pytest.approx(expected[i, j])


def test_affinities_and_policies(built: Path, tmp_path: Path) -> None:
    r = str(built)
    aff = Registry.open(built).affinity("builtin-tiny")
    for target in aff.targets:
        assert sum(t.value for t in aff.options_for(target)) == pytest.approx(1.0)
    for budget, free in ((0, True), (1, False), (1, True), (2, False), (5, False)):
        res = runner.invoke(app, ["--registry", r, "policy", "--affinity", "builtin-tiny", "--budget", str(budget),
                                  "--json", *(["--free-source-only"] if free else [])])
        assert res.exit_code == 0, res.output
        pol = json.loads(res.stdout)
        targets = [t["target"] for t in pol["transfers"]]
        assert sorted(targets + [s for s in pol["supervised"] if s in aff.targets]) == sorted(aff.targets)
        # the paper's budget counts the source-only tasks a policy trains; --free-source-only does not
        assert pol["cost"] == len(pol["supervised"]) + (0 if free else len(pol["source_only_used"])) <= budget
    res = runner.invoke(app, ["--registry", r, "policy", "--affinity", "builtin-tiny", "--budget", "0"])
    assert res.exit_code == 2 and "needs a budget of at least 1" in res.output  # nothing is free by default
    png = tmp_path / "policy.png"
    res = runner.invoke(app, ["--registry", r, "policy", "--affinity", "builtin-tiny", "--budget", "2", "--plot",
                              str(png)])
    assert res.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    for cmd in (["tree", "builtin-tiny", "--plot", str(tmp_path / "tree.png")],
                ["affinity", "show", "builtin-tiny", "--plot", str(tmp_path / "aff.png")],
                ["winrate", "--dictionary", "builtin-tiny", "--target", "photo", "--vs", "self"]):
        res = runner.invoke(app, ["--registry", r, *cmd])
        assert res.exit_code == 0, (cmd, res.output)


def test_add_target_extends_the_affinity_set(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(built, root)
    r = str(root)
    res = runner.invoke(app, ["--registry", r, "taskonomy", "add-target", "digits17", "--dictionary", "builtin-tiny",
                              "--data", "builtin:digits?classes=1,7&n=120", "--epochs", "3", "--max-order", "2"])
    assert res.exit_code == 0, res.output
    assert "added target digits17 to builtin-tiny: " in res.output and "best first-order source " in res.output
    res = runner.invoke(app, ["--registry", r, "policy", "--affinity", "builtin-tiny", "--budget", "1",
                              "--targets", "digits17", "--json"])
    pol = json.loads(res.stdout)
    assert [t["target"] for t in pol["transfers"]] + pol["supervised"]
    aff = Registry.open(root).affinity("builtin-tiny")
    assert "digits17" in aff.targets
    assert sum(t.value for t in aff.options_for("digits17")) == pytest.approx(1.0)
    # the Python API answers with a typed report: first order only here (6 sources + scratch), one epoch each
    rep = Registry.open(root).taskonomy_add_target("digits23", "builtin:digits?classes=2,3&n=80",
                                                   dictionary="builtin-tiny", max_order=1, epochs=1)
    assert isinstance(rep, AddTargetReport)
    assert (rep.target, rep.dictionary, rep.jobs) == ("digits23", "builtin-tiny", rep.sources + 1)
    reg = Registry.open(root)
    with reg.read() as con:
        first = [t for t in catalog.transfers_by_keys(con, "builtin-tiny", sorted(catalog.transfer_keys(
            con, "builtin-tiny"))) if t.target == "digits23" and t.kind == "transfer"]
    assert len(first) == rep.sources
    best = min(first, key=lambda t: t.mean_loss)
    assert (rep.best_first_order, rep.best_loss) == (best.sources, pytest.approx(best.mean_loss))
    assert {"digits17", "digits23"} <= set(reg.affinity("builtin-tiny").targets)
    assert reg.check().ok


def test_bad_taskonomy_inputs(built: Path, tmp_path: Path) -> None:
    before = snapshot(built)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("sources,target\nedges2d,photo\n")
    cases = [
        ["policy", "--affinity", "builtin-tiny", "--budget", "-1"],
        ["policy", "--affinity", "builtin-tiny", "--budget", "nan"],
        ["policy", "--affinity", "builtin-tiny", "--budget", "1", "--targets", "ghost"],
        ["policy", "--affinity", "nope", "--budget", "1"],
        ["policy", "--affinity", "builtin-tiny", "--budget", "1", "--importance", "photo=abc"],
        ["policy", "--affinity", "builtin-tiny", "--budget", "1", "--max-order", "0"],
        ["affinity", "import", str(bad_csv), "--name", "x"],
        ["affinity", "import", str(tmp_path / "missing.csv"), "--name", "x"],
        ["taskonomy", "build", "--dictionary", "nowhere.npz"],
        ["taskonomy", "build", "--dictionary", "builtin-tiny", "--tasks", "ghost"],
        ["taskonomy", "build", "--dictionary", "builtin-tiny", "--executor", "cluster9"],
        ["taskonomy", "add-target", "photo", "--dictionary", "builtin-tiny", "--data", "builtin:digits?classes=1,7"],
        ["taskonomy", "add-target", "x", "--dictionary", "builtin-tiny", "--data", "builtin:digits?classes=1"],
        ["winrate", "--dictionary", "builtin-tiny", "--target", "ghost"],
    ]
    for args in cases:
        res = runner.invoke(app, ["--registry", str(built), *args])
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
    assert snapshot(built) == before
