"""Issue 14 item 3 end to end: experts whose training data the registry does not have (F_i unknown).

A small real registry (a random-init cifar_resnet8 probe, four 32-px digit tasks): two "blind" experts
registered with --trained-on (their first convolution is zero, so their features are constant and a
linear probe on them is at chance), one random-init expert registered without it (a third-party
checkpoint: the best expert here, with no training task to embed), and one such expert added after
`expert eval` (never measured). `model2vec fit` places the third-party expert by its measured errors
(m_i = b_i) and skips the unmeasured one with its reason; `select --method model2vec` scores it and ranks
it first; asym/sym/domain leave it unscored and say what to use instead; every scored row of the JSON says
what its score rests on. (The same path with the zoo's real ImageNet EfficientNet-Lite0 instead of the
third-party network passes too, but its `expert eval` at 224 px takes 25 s per task on 2 busy cores: too
slow for the suite, so it is not here; tests/test_zoo.py checks that `zoo add` registers it with
trained_on None, which is all this module needs of it.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from tests.conftest import snapshot
from tests.procs import save_random_expert

runner = CliRunner()
TASKS = {"d01": "0,1", "d23": "2,3", "d89": "8,9"}
QUERY = "builtin:digits?classes=6,7&n=40"  # not a registered task
REASONED = ("use --method model2vec (its Model2Vec vector m_i = b_i comes from its measured errors), "
            "or register it with --trained-on TASK if its training data is a registered task")


def save_blind_expert(path: Path, seed: int) -> Path:
    """A cifar_resnet8 whose first convolution is zero: finite, constant features (a linear probe is at chance)."""
    state = torch.load(save_random_expert(path, seed), weights_only=True)
    state["conv1.weight"].zero_()
    torch.save(state, path)
    return path


def cli(root: Path, *args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["--registry", str(root), *args])
    return res.exit_code, res.stdout if res.exit_code == 0 else res.output


@pytest.fixture(scope="module")
def zoo_lab(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("unknown-f")
    root = d / "reg"
    shutil.copytree(registry_template, root)
    reg = Registry.open(root)
    reg.add_probe("default", arch="cifar_resnet8", weights=save_random_expert(d / "probe.pt", 0))
    for name, classes in TASKS.items():
        reg.add_task(name, f"builtin:digits?classes={classes}&n=60", max_samples=40)
    reg.add_expert("blind-a", arch="cifar_resnet8", weights=save_blind_expert(d / "a.pt", 1), trained_on="d01")
    reg.add_expert("blind-b", arch="cifar_resnet8", weights=save_blind_expert(d / "b.pt", 2), trained_on="d23")
    code, out = cli(root, "expert", "add", "third-party", "--arch", "cifar_resnet8", "--weights",
                    str(save_random_expert(d / "t.pt", 4)))
    assert code == 0, out
    code, out = cli(root, "expert", "eval")
    assert code == 0, out
    reg.add_expert("unmeasured", arch="cifar_resnet8", weights=save_random_expert(d / "u.pt", 3))
    code, fit_out = cli(root, "model2vec", "fit", "--l2", "0.1")
    assert code == 0, fit_out
    return {"root": root, "fit_out": fit_out}


def test_the_third_party_expert_is_measured_best(zoo_lab: dict) -> None:
    _, names, errors = Registry.open(zoo_lab["root"]).evaluator.results_matrix()
    best = names.index("third-party")
    assert np.isnan(errors[:, names.index("unmeasured")]).all()
    others = np.delete(errors[:, :3], best, axis=1)
    assert (errors[:, best] < others.min(axis=1)).all(), errors  # the premise of the select test below


def test_model2vec_fit_places_it_by_its_errors_and_skips_the_unmeasured_one(zoo_lab: dict) -> None:
    text = " ".join(zoo_lab["fit_out"].split())
    assert "vectors: 2 m_i = F_i + b_i (training task + measured errors), 1 m_i = b_i (no training task: " \
           "measured errors only)" in text, text
    assert "skipped unmeasured: no training task and no measured test error on the tasks used: nothing places it " \
           "(run `taskreg expert eval`); it has no vector" in text, text
    reg = Registry.open(zoo_lab["root"])
    assert reg.check().ok
    with reg.core.read() as con:
        fitted = {r[0] for r in con.execute("SELECT x.name FROM model2vec m JOIN experts x ON x.id = m.expert_id")
                  .fetchall()}
    assert fitted == {"blind-a", "blind-b", "third-party"}


@pytest.mark.parametrize("name, form, words", [
    ("third-party", "m_i = b_i", "no training task: placed by its measured errors alone"),
    ("blind-a", "m_i = F_i + b_i", "Task2Vec of its training task d01 plus a bias fitted on its measured errors"),
])
def test_expert_show_says_the_form_of_its_model2vec_vector(zoo_lab: dict, name: str, form: str, words: str) -> None:
    code, out = cli(zoo_lab["root"], "expert", "show", name, "--json")
    assert code == 0, out
    assert json.loads(out)["model2vec"] == [{"probe": "default", "estimator": "montecarlo", "form": form,
                                             "basis": words}]
    code, out = cli(zoo_lab["root"], "expert", "show", name)
    assert f"probe=default, estimator=montecarlo, form={form}, basis={words}" in out, out
    code, out = cli(zoo_lab["root"], "expert", "show", "unmeasured")
    assert code == 0 and "model2vec: none" in out, out


def test_select_model2vec_scores_it_and_ranks_it_first(zoo_lab: dict) -> None:
    code, out = cli(zoo_lab["root"], "select", "--data", QUERY, "--method", "model2vec", "--top", "10", "--json")
    assert code == 0, out
    rows = json.loads(out)["results"]
    assert [r["expert"] for r in rows][0] == "third-party" and rows[0]["score"] is not None
    basis = {r["expert"]: r["basis"] for r in rows}
    assert basis["third-party"] == "Model2Vec m_i = b_i: no training task: placed by its measured errors alone"
    assert basis["blind-a"].startswith("Model2Vec m_i = F_i + b_i: Task2Vec of its training task d01")
    assert rows[-1]["expert"] == "unmeasured" and rows[-1]["score"] is None and rows[-1]["basis"] is None
    assert rows[-1]["unscored_reason"].startswith("no Model2Vec vector: no training task and no measured test error")
    code, out = cli(zoo_lab["root"], "select", "--data", QUERY, "--method", "model2vec")
    table = " ".join(out.split())
    assert "vector" in table and "m_i = b_i" in table and "m_i = F_i + b_i" in table, out


@pytest.mark.parametrize("method", ["asym", "sym", "domain"])
def test_select_by_training_task_says_why_it_is_unscored_and_what_to_use(zoo_lab: dict, method: str) -> None:
    root = zoo_lab["root"]
    code, out = cli(root, "select", "--data", QUERY, "--method", method, "--top", "10", "--json")
    assert code == 0, out
    rows = {r["expert"]: r for r in json.loads(out)["results"]}
    for name in ("blind-a", "blind-b"):
        assert rows[name]["score"] is not None and "unscored_reason" not in rows[name]
        assert f"of its training task {rows[name]['trained_on']}" in rows[name]["basis"]
    assert rows["third-party"]["score"] is None and rows["third-party"]["basis"] is None
    assert rows["third-party"]["unscored_reason"] == f"no training task to embed (registered without --trained-on): " \
                                                     f"{REASONED}"
    assert rows["unmeasured"]["unscored_reason"] == (
        "no training task to embed (registered without --trained-on): use --method model2vec after "
        "`taskreg expert eval`, then `taskreg model2vec fit`, or register it with --trained-on TASK if its "
        "training data is a registered task")
    code, out = cli(root, "select", "--data", QUERY, "--method", method, "--top", "10")
    text = " ".join(out.split())
    assert f"note: third-party is not scored by {method}: no training task to embed (registered without " \
           f"--trained-on): {REASONED}" in text, out


def test_every_method_says_what_each_score_rests_on(zoo_lab: dict) -> None:
    from taskreg.selection.selectors import list_selectors

    reg = Registry.open(zoo_lab["root"])
    for method in list_selectors():
        rows = reg.select(QUERY, method=method, top=10).results
        for r in rows:
            assert (r.basis is None) == (r.score is None), (method, r)


def test_refit_after_measuring_gives_the_skipped_expert_a_vector(zoo_lab: dict, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(zoo_lab["root"], root)
    Registry.open(root)
    before = snapshot(root)
    code, out = cli(root, "select", "--data", QUERY, "--method", "model2vec", "--json")
    assert code == 0 and snapshot(root) == before  # select writes nothing
    assert cli(root, "expert", "eval")[0] == 0
    code, out = cli(root, "model2vec", "fit", "--l2", "0.1")
    assert code == 0 and "skipped" not in out and "2 m_i = b_i" in " ".join(out.split()), out
    code, out = cli(root, "expert", "show", "unmeasured", "--json")
    assert json.loads(out)["model2vec"][0]["form"] == "m_i = b_i"



def test_a_scorer_refusing_one_experts_features_leaves_it_unscored_not_the_query(
        zoo_lab: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 15: SFDA (and pooled NCTI) refuse features without within-class variation (the blind experts here:
    their features collapse); those experts come last with the scorer's reason and the others are still ranked.
    When every expert is refused alike, the query is the problem: one line."""
    import taskreg.selection.sfda as sfda_mod

    reg = Registry.open(zoo_lab["root"])
    for method in ("sfda", "ncti"):
        rows = reg.select(QUERY, method=method, top=10).results
        refused = [r for r in rows if r.score is None and r.unscored_reason.startswith(
            f"{method} cannot score its features on the query: {method.upper()} needs within-class variation")]
        assert refused and all(r.expert.startswith("blind") for r in refused), rows
        assert any(r.score is not None for r in rows)

    def never(features, y, **kw):  # noqa: ANN001, ANN003, ANN202
        raise TaskregError("SFDA needs at least 2 images per class")

    monkeypatch.setattr(sfda_mod, "sfda", never)
    with pytest.raises(TaskregError, match="^SFDA needs at least 2 images per class$"):
        reg.select(QUERY, method="sfda", top=10)
