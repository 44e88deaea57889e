"""End to end on a real registry (DuckDB + MLflow + Faiss in a temp dir) with small built-in data:
probe → tasks → experts → expert×task results → Model2Vec → select, plus the bad inputs of these commands."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.embedders.model2vec import L2_GRID
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from taskreg.registry.expert_selection import RankedExpert, Selection, VerifiedExpert
from taskreg.registry.experts import ExpertDetails
from taskreg.registry.model2vec_fitting import Model2VecFit
from taskreg.selection.selectors import get_selector, list_selectors
from tests.conftest import snapshot

runner = CliRunner()
# the module fixture trains a probe/experts or a whole tiny Taskonomy build: minutes on a busy 2-core box
pytestmark = pytest.mark.timeout(1200)

SOURCES = {
    "mnist-low": "builtin:mnist5k?classes=0,1,2,3,4&n=250&split=train",
    "patches-a": "builtin:patches?classes=astronaut,coffee,chelsea,rocket,brick&n=250&split=train",
    "faces": "builtin:faces?split=train",
}
QUERIES = {
    "mnist-low": "builtin:mnist5k?classes=0,1,2,3,4&n=150&split=test",
    "patches-a": "builtin:patches?classes=astronaut,coffee,chelsea,rocket,brick&n=150&split=test",
}


@pytest.fixture(scope="module")
def built(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a tiny probe, three experts (one per domain), their tasks, results and Model2Vec."""
    root = tmp_path_factory.mktemp("workflow") / "reg"
    shutil.copytree(registry_template, root)
    reg = Registry.open(root)
    reg.train_probe("default", arch="cifar_resnet8", epochs=2,
                    sources=("builtin:digits?split=train", "builtin:patches?n=1000&split=train"))
    for task, source in SOURCES.items():
        reg.train_expert(f"exp-{task}", source, task_name=task, epochs=2)
    for task, source in QUERIES.items():
        reg.add_task(f"{task}-q", source, max_samples=150)
    done, skipped = reg.evaluate()
    assert (done, skipped) == (15, 0)
    assert reg.fit_model2vec(epochs=50).l2 in L2_GRID  # the default: penalty chosen by cross-validation
    # a weak fixed penalty, so the fit reproduces what it is fitted to predict (checked by the select test below)
    info = reg.fit_model2vec(epochs=200, l2=1e-3)
    assert isinstance(info, Model2VecFit) and info.final_loss < info.initial_loss  # Model2Vec reduces its loss
    (root / "model2vec-run.txt").write_text(info.run_id)
    return root


def test_model2vec_fit_is_logged_to_mlflow(built: Path) -> None:
    """Each fit is an MLflow run with its settings, losses and the fitted vectors by expert name."""
    import numpy as np

    reg = Registry.open(built)
    run = reg.tracker.client.get_run((built / "model2vec-run.txt").read_text())
    assert run.data.tags["taskreg.state"] == "committed" and run.data.params["l2"] == "0.001"
    assert run.data.params["experts"] == "3" and run.data.metrics["final_loss"] < run.data.metrics["initial_loss"]
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "model2vec.npz"
    with np.load(stored, allow_pickle=False) as z:
        assert sorted(z["experts"].tolist()) == [f"exp-{t}" for t in sorted(SOURCES)]
        assert z["vectors"].shape[0] == 3 and np.isfinite(z["vectors"]).all()
    assert reg.check().ok


@pytest.fixture
def reg_copy(built: Path, tmp_path: Path) -> Registry:
    root = tmp_path / "reg"
    shutil.copytree(built, root)
    return Registry.open(root)


def test_registry_is_consistent_and_resumes_evaluation(reg_copy: Registry) -> None:
    assert reg_copy.check().ok
    assert reg_copy.evaluate() == (0, 15)  # everything already measured: nothing recomputed
    names = [e.name for e in reg_copy.list_experts()]
    models = reg_copy.tracker.registered_models()
    for name in names:
        assert models[f"expert-{name}"]["taskreg.kind"] == "expert"
        assert models[f"expert-{name}"]["trained_on"] == name.removeprefix("exp-")


@pytest.mark.parametrize("method", ["asym", "model2vec"])
@pytest.mark.parametrize("task", sorted(QUERIES))
def test_expert_of_the_query_source_ranks_first(built: Path, task: str, method: str) -> None:
    res = runner.invoke(app, ["--registry", str(built), "select", "--data", QUERIES[task], "--method", method,
                              "--top", "10", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["method"] == method and out["query"] == QUERIES[task]
    assert [r["rank"] for r in out["results"]] == [1, 2, 3]  # --top larger than the experts means all
    assert out["results"][0]["measured_error"] is not None  # the query is a registered task
    if method == "asym":  # Task2Vec: the expert trained on the query's own source comes first
        assert out["results"][0]["expert"] == f"exp-{task}"
        assert out["results"][0]["trained_on"] == task
    else:  # Model2Vec was fitted on the measured results (this query included): it ranks the measured best first
        best = min(out["results"], key=lambda r: r["measured_error"])["measured_error"]
        assert out["results"][0]["measured_error"] == best
    assert set(out["results"][0]) == {"rank", "expert", "score", "trained_on", "measured_error", "basis"}
    form = ("Model2Vec m_i = F_i + b_i: Task2Vec of its training task" if method == "model2vec"
            else "Task2Vec (montecarlo) of its training task")
    assert all(r["basis"].startswith(form) for r in out["results"])  # what each score rests on


def test_select_baselines_and_verify(built: Path) -> None:
    reg = Registry.open(built)
    q = QUERIES["mnist-low"]
    for method in list_selectors():  # every registered method answers on a real registry
        out = reg.select(q, method=method, top=3)
        assert len(out.results) == 3 and out.cost and out.better == get_selector(method).better
    out = reg.select(q, method="asym", top=1, verify=5)
    assert len(out.verified) == 3 and out.measured_winner is not None
    errors = [v.test_error for v in out.verified]
    assert errors == sorted(errors)
    # issue 13: the answer and its rows are frozen dataclasses; to_json() is the CLI's JSON shape
    assert isinstance(out, Selection) and isinstance(out.results[0], RankedExpert)
    assert all(isinstance(v, VerifiedExpert) for v in out.verified)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.results[0].score = 0.0  # type: ignore[misc]
    payload = out.to_json()
    assert list(payload) == ["query", "method", "better", "results", "seconds", "cost", "candidates_scored",
                             "n_experts", "verified", "measured_winner"]
    assert payload["results"] == [{"rank": 1, "expert": out.results[0].expert, "score": out.results[0].score,
                                   "trained_on": out.results[0].trained_on,
                                   "measured_error": out.results[0].measured_error, "basis": out.results[0].basis}]
    assert out.results[0].basis == f"Task2Vec (montecarlo) of its training task {out.results[0].trained_on}"
    assert payload["verified"] == [{"expert": v.expert, "test_error": v.test_error} for v in out.verified]


def test_a_query_is_embedded_once_and_every_forward_score_shares_one_pass_per_expert(
        built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranking one query with every method embeds it once and runs each expert over it once (issue 15's cache):
    the second round of methods computes nothing, and answers exactly as the first; a damaged entry is a miss."""
    import taskreg.embedders.task2vec as t2v
    import taskreg.trainers.experts as texp

    root = tmp_path / "reg"
    shutil.copytree(built, root)
    reg = Registry.open(root)
    q = "builtin:mnist5k?classes=5,6&n=120&split=test"  # not seen by the fixture
    calls = {"embed": 0, "features": 0}
    real_embed, real_features = t2v.embed, texp.extract_features

    def counting(name: str, fn):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(t2v, "embed", counting("embed", real_embed))
    monkeypatch.setattr(texp, "extract_features", counting("features", real_features))
    first = {m: reg.select(q, method=m, top=3).to_json()["results"] for m in ("asym", "sym", "leep", "nce", "logme")}
    assert calls == {"embed": 1, "features": 3}  # 1 query embedding, 1 pass of each of the 3 experts
    again = {m: reg.select(q, method=m, top=3).to_json()["results"] for m in first}
    assert calls == {"embed": 1, "features": 3} and again == first
    for f in (root / "cache" / "task2vec").iterdir():
        f.write_bytes(b"not an npz")  # damaged: recomputed, same answer
    assert reg.select(q, method="asym", top=3).to_json()["results"] == first["asym"] and calls["embed"] == 2


def test_a_cached_query_is_ranked_without_torch(built: Path, tmp_path: Path) -> None:
    """issue 16: a query select has seen is ranked from ``cache/task2vec`` without importing torch or loading the
    probe's network (2 s of a fresh process's start-up), with the same answer; the probe's weights are still checked."""
    import subprocess
    import sys

    root = tmp_path / "reg"
    shutil.copytree(built, root)
    q = "builtin:mnist5k?classes=5,6&n=120&split=test"
    first = [r.to_json() for r in Registry.open(root).select(q, method="asym", top=3).results]
    code = ("import json, sys\nfrom taskreg.registry import Registry\n"
            f"out = Registry.open({str(root)!r}).select({q!r}, method='asym', top=3)\n"
            "print(json.dumps(['torch' in sys.modules, [r.to_json() for r in out.results]]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [False, first]
    probe = Registry.open(root).list_probes()[0]
    (root / probe.weights).write_bytes(b"altered")
    with pytest.raises(TaskregError, match="missing or altered"):
        Registry.open(root).select(q, method="asym", top=3)


def test_two_stage_scores_only_the_shortlist_and_says_what_each_stage_cost(
        built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 15: asym shortlists 2 of the 3 experts, LogME scores those 2 only (one forward pass each), with the
    scores LogME alone gives them; the third follows unscored with its asym rank; JSON lists both stages."""
    import taskreg.trainers.experts as texp

    root = tmp_path / "reg"
    shutil.copytree(built, root)
    reg = Registry.open(root)
    q = "builtin:mnist5k?classes=2,9&n=120&split=test"
    passes: list[int] = []
    real = texp.extract_features
    monkeypatch.setattr(texp, "extract_features", lambda *a, **k: passes.append(1) or real(*a, **k))
    out = reg.select(q, method="two-stage", shortlist=2, rerank="logme", shortlist_by="asym", top=3)
    assert len(passes) == 2  # the expert outside the shortlist never ran over the query
    asym = [r.expert for r in reg.select(q, method="asym", top=3).results]
    logme = {r.expert: r.score for r in reg.select(q, method="logme", top=3).results}
    scored = [r for r in out.results if r.score is not None]
    assert {r.expert for r in scored} == set(asym[:2])
    assert [r.score for r in scored] == sorted((logme[r.expert] for r in scored), reverse=True)
    assert all(r.score == logme[r.expert] for r in scored)
    last = out.results[2]
    assert last.expert == asym[2] and last.score is None
    assert last.unscored_reason == "not in the 2-expert shortlist of asym (rank 3 there)"
    payload = out.to_json()
    assert payload["method"] == "two-stage" and payload["better"] == "higher"
    assert [st["method"] for st in payload["stages"]] == ["asym", "logme"]
    assert payload["stages"][1]["experts_scored"] == asym[:2]
    assert all(st["seconds"] >= 0 and st["cost"] for st in payload["stages"])
    res = runner.invoke(app, ["--registry", str(root), "select", "--data", q, "--method", "two-stage",
                              "--shortlist", "2", "--shortlist-by", "asym", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["expert"] for r in json.loads(res.stdout)["results"]] == [r.expert for r in out.results]


def test_expert_show_is_a_frozen_record_with_the_same_json(built: Path) -> None:
    """issue 13: ``show_expert`` returns a frozen dataclass; ``expert show --json`` keeps its keys and values."""
    reg = Registry.open(built)
    info = reg.show_expert("exp-mnist-low")
    assert isinstance(info, ExpertDetails) and info.expert == reg.get_expert("exp-mnist-low")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.task_errors = ()  # type: ignore[misc]
    errors = [e.test_error for e in info.task_errors]
    assert len(errors) == 5 and errors == sorted(errors)  # every task measured, best first
    res = runner.invoke(app, ["--registry", str(built), "expert", "show", "exp-mnist-low", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert list(out) == ["id", "name", "arch", "sha256", "weights", "trained_on", "origin", "n_train", "n_classes",
                         "run_id", "model_version", "created_at", "input_size", "reference_accuracy", "reference",
                         "task_errors", "model2vec"]
    assert out["name"] == "exp-mnist-low" and out["trained_on"] == "mnist-low" and out["origin"] == "trained"
    assert out["task_errors"] == [{"task": e.task, "test_error": e.test_error} for e in info.task_errors]
    assert out["model2vec"] == [dataclasses.asdict(f) for f in info.model2vec]  # the form of each Model2Vec vector
    assert [f.form for f in info.model2vec] == ["m_i = F_i + b_i"]  # trained on a task and measured
    res = runner.invoke(app, ["--registry", str(built), "expert", "show", "exp-mnist-low"])
    assert res.exit_code == 0 and "name: exp-mnist-low" in res.stdout
    assert f"  task={info.task_errors[0].task}, test_error=" in res.stdout


def test_task_commands(built: Path, tmp_path: Path) -> None:
    r = str(built)
    res = runner.invoke(app, ["--registry", r, "task", "distance", "mnist-low", "mnist-low-q", "--json"])
    near = json.loads(res.stdout)
    assert near["method"] == "sym" and 0 <= near["distance"] <= 1
    far = json.loads(runner.invoke(app, ["--registry", r, "task", "distance", "mnist-low", "patches-a-q",
                                         "--json"]).stdout)
    assert near["distance"] < far["distance"]
    asym = json.loads(runner.invoke(app, ["--registry", r, "task", "distance", "mnist-low", "mnist-low-q",
                                          "--asym", "--json"]).stdout)
    assert asym["method"] == "asym" and asym["distance"] < near["distance"]
    nb = json.loads(runner.invoke(app, ["--registry", r, "task", "neighbors", "mnist-low-q", "-k", "2",
                                        "--json"]).stdout)
    assert nb["neighbors"][0]["name"] == "mnist-low"
    png = tmp_path / "tasks.png"
    res = runner.invoke(app, ["--registry", r, "task", "plot", str(png)])
    assert res.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.mkdir, (self.marker,))


def test_bad_expert_inputs_leave_the_registry_unchanged(reg_copy: Registry, tmp_path: Path) -> None:
    root = str(reg_copy.root)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.weight": _Exploit(marker)}))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    _, model, _ = reg_copy.load_expert("exp-faces")
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    before = snapshot(reg_copy.root)
    cases = [
        ["expert", "add", "x", "--arch", "cifar_resnet8", "--weights", str(evil)],
        ["expert", "add", "x", "--arch", "cifar_resnet8", "--weights", str(wrong)],
        ["expert", "add", "x", "--arch", "resnet18", "--weights", str(good)],
        ["expert", "add", "x", "--arch", "no_such_arch", "--weights", str(good)],
        ["expert", "add", "x", "--arch", "cifar_resnet8", "--weights", str(tmp_path / "missing.pt")],
        ["expert", "add", "exp-faces", "--arch", "cifar_resnet8", "--weights", str(good)],
        ["expert", "add", "a/b", "--arch", "cifar_resnet8", "--weights", str(good)],
        ["expert", "add", "x", "--arch", "cifar_resnet8", "--weights", str(good), "--trained-on", "ghost"],
        ["expert", "show", "ghost"],
        ["expert", "eval", "--experts", "ghost"],
        ["select", "--data", QUERIES["mnist-low"], "--method", "nope"],
        ["select", "--data", "builtin:digits?classes=4"],
        ["task", "add", "mnist-low", "--data", "builtin:digits?classes=1,2"],
        ["task", "add", "t'; DROP TABLE tasks; --", "--data", "builtin:digits?classes=1,2"],
        ["task", "add", "x" * 10000, "--data", "builtin:digits?classes=1,2"],
        ["task", "add", "x", "--data", "builtin:digits?classes=1,2", "--probe", "ghost"],
        ["task", "add", "x", "--data", "builtin:digits?classes=1,2", "--estimator", "magic"],
    ]
    for args in cases:
        res = runner.invoke(app, ["--registry", root, *args])
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
    assert not marker.exists()  # the pickle's code never ran
    assert snapshot(reg_copy.root) == before


def test_add_expert_from_weights_and_remove(reg_copy: Registry, tmp_path: Path) -> None:
    _, model, _ = reg_copy.load_expert("exp-faces")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    rec = reg_copy.add_expert("user-expert", arch="cifar_resnet8", weights=path, trained_on="faces")
    assert rec.trained_on == "faces" and rec.origin == "added"
    assert reg_copy.check().ok
    reg_copy.remove_expert("user-expert")
    reg_copy.remove_task("patches-a-q")
    assert reg_copy.check().ok
    with pytest.raises(TaskregError, match="unknown expert"):
        reg_copy.get_expert("user-expert")
