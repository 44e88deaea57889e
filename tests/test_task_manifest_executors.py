"""`taskreg task add-many MANIFEST --executor` (issue 17): rows embedded on local:N or Ray workers register the vectors
of the in-process run; a row that fails in a worker is reported with its line number and the in-process error text,
nothing of it written; an interrupted call resumes, skipping the rows already registered."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import Registry
from taskreg.registry.task_manifest import ManifestRow, add_many, read_manifest
from tests.conftest import snapshot
from tests.procs import copy_registry

runner = CliRunner()
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
GOOD = {"d12": "builtin:digits?classes=1,2&n=100", "d34": "builtin:digits?classes=3,4&n=100",
        "d567": "builtin:digits?classes=5,6,7&n=100", "d89": "builtin:digits?classes=8,9&n=100"}
SAMPLES = "40"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 good rows and 3 that fail only when a worker loads their data (lines 2, 4 and 6)."""
    d = tmp_path_factory.mktemp("manifest")
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.savez(d / "nan.npz", x=x, y=np.arange(20) % 2)
    m = d / "m.jsonl"
    rows = [("d12", GOOD["d12"]), ("gone", str(d / "missing.npz")), ("d34", GOOD["d34"]),
            ("one", "builtin:digits?classes=1&n=30"), ("d567", GOOD["d567"]), ("nan", str(d / "nan.npz")),
            ("d89", GOOD["d89"])]
    m.write_text("".join(json.dumps({"name": n, "source": s, "seed": 3}) + "\n" for n, s in rows))
    return m


def add(root: Path, manifest: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--registry", str(root), "task", "add-many", str(manifest), "--max-samples", SAMPLES,
                              *args])
    return res.exit_code, res.stdout, res.stderr


def vectors(root: Path) -> dict[str, np.ndarray]:
    reg = Registry.open(root)
    out = {}
    for method in ("montecarlo", "domain"):
        names, vecs = reg.tasks.task_vectors("default", method)
        out.update({f"{n}/{method}": v for n, v in zip(names, vecs, strict=True)})
    return out


@pytest.fixture(scope="module")
def serial(probe_template: Path, manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    """The in-process run (``--executor local``, the default): its vectors and its error lines."""
    root = copy_registry(probe_template, tmp_path_factory.mktemp("serial") / "reg")
    code, out, err = add(root, manifest)
    assert code == 1 and "registered 4 of 7 tasks" in out and "3 refused" in out, (out, err)
    return vectors(root), [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("executor", ["local:2", pytest.param("ray:2", marks=needs_ray)])
def test_workers_register_the_in_process_vectors_and_refuse_the_same_rows(
        executor: str, probe_template: Path, manifest: Path, serial: tuple, tmp_path: Path) -> None:
    want, want_errors = serial
    root = copy_registry(probe_template, tmp_path / "reg")
    code, out, err = add(root, manifest, "--executor", executor)
    assert code == 1 and "registered 4 of 7 tasks" in out and "3 refused" in out, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == want_errors  # same lines, same one-line texts as in-process
    assert [e.split(": ")[1] for e in errors] == [f"{manifest}:{n}" for n in (2, 4, 6)]
    assert "missing.npz" in errors[0] and "only one class" in errors[1] and "nan.npz" in errors[2]
    got = vectors(root)
    assert sorted(got) == sorted(want) and len(got) == 8  # 4 tasks x (Task2Vec, domain); nothing of the bad rows
    for key in want:  # same seeds and data; only the torch thread count may differ (bit-for-bit on 2 cores)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6 * np.abs(want[key]).max(), err_msg=key)
    reg = Registry.open(root)
    assert reg.check().ok  # no run, vector or index entry of the refused rows
    assert {t.name: t.domain for t in reg.list_tasks()} == dict.fromkeys(GOOD, "digits")


def test_an_interrupted_call_keeps_what_it_committed_and_the_rerun_does_the_rest(
        probe_template: Path, manifest: Path, serial: tuple, tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    reg = Registry.open(root)
    rows, _ = read_manifest(manifest)

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:  # rows 1-3 (lines 1, 2, 3) embedded; the third is not committed yet
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_many(reg.tasks, rows, probe=None, method="montecarlo", max_samples=int(SAMPLES), seed=0, device="cpu",
                 progress=stop_after_three)
    assert [t.name for t in reg.list_tasks()] == ["d12"] and reg.check().ok
    code, out, err = add(root, manifest, "--json")  # in-process: the resume is the driver's (workers cost ~15 s)
    assert code == 1, (out, err)
    res = json.loads(out)
    assert res["already_registered"] == ["d12"] and sorted(res["added"]) == ["d34", "d567", "d89"]
    assert [r["line"] for r in res["refused"]] == [2, 4, 6]  # the bad rows stay errors
    assert vectors(root).keys() == serial[0].keys()
    for key, vec in vectors(root).items():  # in-process both times: the same computation
        np.testing.assert_array_equal(vec, serial[0][key], err_msg=key)
    # a third run: nothing left to do, nothing written; a name taken by another source is an error, not skipped
    before = snapshot(root)
    code, out, _ = add(root, manifest)
    assert code == 1 and "registered 0 of 7 tasks" in out and "4 already registered; 3 refused" in out, out
    other = manifest.parent / "other.csv"
    other.write_text(f'name,source,domain\nd12,"{GOOD["d34"]}",\nd34,"{GOOD["d34"]}",mine\nd89,"{GOOD["d89"]}",\n')
    code, out, err = add(root, other, "--executor", "local:2")
    assert code == 1 and "registered 0 of 3 tasks" in out and "1 already registered; 2 refused" in out, out
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {other}:2: d12: task 'd12' is already registered from another source "
        "(builtin:digits?classes=1,2&n=100)",
        f"error: {other}:3: d34: task 'd34' is already registered with domain 'digits', not 'mine'"]
    assert snapshot(root) == before


def test_a_bad_executor_or_altered_probe_weights_stop_before_any_work(probe_template: Path, manifest: Path,
                                                                     tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    before = snapshot(root)
    code, out, err = add(root, manifest, "--executor", "dask")
    assert code != 0 and (out + err).strip().splitlines() == [
        "error: unknown executor 'dask'; use 'local', 'local:N', 'ray', 'ray:N' or 'ray:ADDRESS' (e.g. ray:auto)"]
    assert snapshot(root) == before
    weights = root / Registry.open(root).probes.resolve_probe(None).weights
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = snapshot(root)
    for executor in ("local", "local:2"):
        code, out, err = add(root, manifest, "--executor", executor)
        lines = (out + err).strip().splitlines()
        assert code != 0 and len(lines) == 1 and "probe default: weights file" in lines[0], lines
        assert "missing or altered" in lines[0]
    assert snapshot(root) == before


def test_a_name_taken_meanwhile_is_refused_and_the_rest_of_its_batch_goes_in(probe_template: Path,
                                                                           tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    reg, other_writer = Registry.open(root), Registry.open(root)
    rows = [ManifestRow(1, "a", GOOD["d12"]), ManifestRow(2, "b", GOOD["d34"]), ManifestRow(3, "c", GOOD["d89"])]

    def meanwhile(done: int, total: int) -> None:
        if done == 1:  # after the driver's checks, before its (single, batch_seconds) commit
            other_writer.add_task("b", GOOD["d567"], max_samples=20)

    report = add_many(reg.tasks, rows, probe=None, method="montecarlo", max_samples=20, seed=0, device="cpu",
                      batch_seconds=3600, progress=meanwhile)
    assert [t.name for t in report.added] == ["a", "c"] and not report.already
    assert [(p.line, p.error) for p in report.problems] == [
        (2, f"task 'b' already exists with different data ({GOOD['d567']})")]
    assert {t.name: t.source for t in reg.list_tasks()} == {"a": GOOD["d12"], "b": GOOD["d567"], "c": GOOD["d89"]}
    assert reg.check().ok  # the refused batch's runs are gone; the index holds a, b (the other writer's) and c
    assert reg.neighbors("a", k=2)[0].name in ("b", "c")
