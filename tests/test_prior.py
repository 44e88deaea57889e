"""The `prior` selection method (issue 15): each expert's recorded accuracy on its own reference task — measured on a
held-out split by `expert train`, given by the user to `expert add`, published ImageNet top-1 for zoo models — ranks
the experts without looking at the query (arXiv 2503.18528's "model accuracy" baseline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from taskreg import data as datasets
from taskreg.cli import app
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from taskreg.registry.experts import Reference
from taskreg.selection.selectors import SelectorInput, get_selector
from taskreg.trainers.experts import expert_logits, stratified_split
from tests.conftest import snapshot
from tests.procs import save_random_expert

runner = CliRunner()
SOURCE = "builtin:digits?classes=1,2,3&n=60"
ARCH = "cifar_resnet8"


def test_the_prior_scorer_returns_the_recorded_accuracies() -> None:
    sel = get_selector("prior")
    assert (sel.cost, sel.better, sel.needs) == ("none", "higher", ("prior",))
    assert list(sel.score(SelectorInput(n=3, priors=[0.5, 0.9, 0.7]))) == [0.5, 0.9, 0.7]


@pytest.mark.parametrize(("accuracy", "task", "message"), [
    (1.5, None, "in \\[0, 1\\]"), (-0.1, "x", "in \\[0, 1\\]"), (float("nan"), "x", "in \\[0, 1\\]"),
    (True, "x", "in \\[0, 1\\]"), (None, "ImageNet", "needs --reference-accuracy"), (0.5, "", "one line"),
    (0.5, "two\nlines", "one line"), (0.5, "x" * 201, "one line"),
])
def test_a_bad_reference_is_one_line(accuracy: float | None, task: str | None, message: str) -> None:
    with pytest.raises(TaskregError, match=message) as err:
        Reference.checked(accuracy, task)
    assert "\n" not in str(err.value)


def test_reference_checked_keeps_good_values() -> None:
    assert Reference.checked(None, None) is None
    assert Reference.checked(0.75, " ImageNet-1k top-1 ") == Reference(0.75, "ImageNet-1k top-1")
    assert Reference.checked(1, None) == Reference(1.0, "reference task given by the user")


@pytest.fixture(scope="module")
def trained(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a probe, an expert trained with the default 10% hold-out, one trained with none, and one added
    with a user-given reference accuracy."""
    root = tmp_path_factory.mktemp("prior") / "reg"
    shutil.copytree(registry_template, root)
    reg = Registry.open(root)
    reg.add_probe("default", arch=ARCH, weights=save_random_expert(root.parent / "probe.pt"))
    reg.train_expert("held", SOURCE, task_name="digits123", epochs=1, max_samples=20, seed=3)
    reg.train_expert("all-in", SOURCE, task_name="digits123", epochs=1, max_samples=20, holdout=0)
    reg.add_expert("user", arch=ARCH, weights=save_random_expert(root.parent / "user.pt", seed=1),
                   reference=Reference(0.99, "their own benchmark"))
    return root


def test_expert_train_measures_its_accuracy_on_a_held_out_split(trained: Path) -> None:
    reg = Registry.open(trained)
    rec, model, spec = reg.load_expert("held")
    ds = datasets.load(SOURCE)
    train_idx, held_idx = stratified_split(ds.y, 0.1, seed=3)
    assert rec.n_train == train_idx.size == ds.n - held_idx.size and held_idx.size == 6  # 2 of each of 3 classes
    direct = float(np.mean(expert_logits(model, spec, ds.x[held_idx]).argmax(1) == ds.y[held_idx]))
    assert rec.reference_accuracy == pytest.approx(direct)
    assert rec.reference == f"held-out 6 of {ds.n} images of its training data (digits123)"
    all_in = reg.get_expert("all-in")
    assert all_in.reference_accuracy is None and all_in.reference is None and all_in.n_train == ds.n


def test_select_prior_ranks_by_reference_and_leaves_the_unknown_unscored(trained: Path) -> None:
    reg = Registry.open(trained)
    held = reg.get_expert("held").reference_accuracy
    res = runner.invoke(app, ["select", "--registry", str(trained), "--data", SOURCE, "--method", "prior",
                              "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    scored = [r for r in rows if r["score"] is not None]
    assert [r["expert"] for r in scored] == sorted(["user", "held"], key=lambda e: -{"user": 0.99, "held": held}[e])
    scores = {r["expert"]: r["score"] for r in scored}
    assert scores == {"user": pytest.approx(0.99), "held": pytest.approx(held)}
    [last] = [r for r in rows if r["score"] is None]  # after every scored expert, with the reason
    assert last["expert"] == "all-in" and last["rank"] == 3
    assert last["unscored_reason"].startswith("no reference accuracy recorded")
    assert {r["basis"] for r in scored} == {"its accuracy on their own benchmark",
                                            "its accuracy on held-out 6 of 60 images of its training data (digits123)"}


def test_expert_add_records_a_reference_and_refuses_a_bad_one(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(trained, root)
    weights = save_random_expert(tmp_path / "w.pt", seed=2)
    before = snapshot(root)
    bad = runner.invoke(app, ["expert", "add", "x", "--registry", str(root), "--arch", ARCH, "--weights",
                              str(weights), "--reference-accuracy", "75"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines() == [
        "error: --reference-accuracy must be a number in [0, 1], got 75.0"]
    assert snapshot(root) == before
    ok = runner.invoke(app, ["expert", "add", "x", "--registry", str(root), "--arch", ARCH, "--weights",
                             str(weights), "--reference-accuracy", "0.751", "--reference", "ImageNet-1k top-1"])
    assert ok.exit_code == 0, ok.output
    shown = runner.invoke(app, ["expert", "show", "x", "--registry", str(root), "--json"])
    info = json.loads(shown.stdout)
    assert (info["reference_accuracy"], info["reference"]) == (0.751, "ImageNet-1k top-1")
