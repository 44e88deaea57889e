"""`taskreg expert eval --executor` (issue 17): (expert, task) jobs on local, local:N and Ray workers give the results
of the in-process run; the driver commits them; an interrupted run resumes; bad weights are refused before any job."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from tests.conftest import snapshot
from tests.procs import copy_registry, save_random_expert

runner = CliRunner()
TASKS = {"d12": "builtin:digits?classes=1,2&n=40", "d34": "builtin:digits?classes=3,4&n=40",
         "d56": "builtin:digits?classes=5,6&n=40"}
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")


@pytest.fixture(scope="module")
def lab(probe_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 tasks and 3 experts (random cifar_resnet8 weights, distinct), nothing measured, no features cached."""
    d = tmp_path_factory.mktemp("eval-exec")
    root = copy_registry(probe_template, d / "reg")
    reg = Registry.open(root)
    for name, source in TASKS.items():
        reg.add_task(name, source, max_samples=20)
    for seed in range(3):
        reg.add_expert(f"e{seed}", arch="cifar_resnet8", weights=save_random_expert(d / f"w{seed}.pt", seed))
    shutil.rmtree(root / "cache" / "features", ignore_errors=True)
    return root


def fresh(lab: Path, tmp_path: Path, name: str) -> Registry:
    shutil.copytree(lab, tmp_path / name)
    return Registry.open(tmp_path / name)


def features(reg: Registry) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted((reg.root / "cache" / "features").glob("*.npy"))}


@pytest.fixture(scope="module")
def serial(lab: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    reg = fresh(lab, tmp_path_factory.mktemp("serial"), "reg")
    assert reg.evaluate() == (9, 0)
    return reg.results_matrix()[2], features(reg)


@pytest.mark.parametrize("executor", ["local:2", pytest.param("ray:2", marks=needs_ray)])
def test_workers_give_the_in_process_results(executor: str, lab: Path, serial: tuple, tmp_path: Path) -> None:
    errors, feats = serial
    reg = fresh(lab, tmp_path, "reg")
    seen: list[tuple[int, int]] = []
    assert reg.evaluate(executor=executor, progress=lambda a, b: seen.append((a, b))) == (9, 0)
    assert seen[0] == (0, 9) and seen[-1] == (9, 9)
    got = features(reg)  # the workers cached each expert's features of each task where the registry keeps them
    assert sorted(got) == sorted(feats) and len(got) == 9
    for name in feats:  # only the torch thread count differs: float sums in another order
        np.testing.assert_allclose(got[name], feats[name], rtol=1e-4, atol=1e-5)
    # a linear probe on features equal to ~1e-5 gives the same test error, or one test image more or less
    assert np.abs(reg.results_matrix()[2] - errors).max() <= 1 / 20 + 1e-9
    assert reg.evaluate(executor=executor) == (0, 9)  # everything measured: no job runs
    assert reg.check().ok


def test_an_interrupted_run_keeps_what_finished_and_the_rerun_does_the_rest(lab: Path, serial: tuple,
                                                                          tmp_path: Path) -> None:
    reg = fresh(lab, tmp_path, "reg")

    def stop_after_four(done: int, total: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reg.evaluate(progress=stop_after_four, batch_seconds=0.0)
    measured = np.isfinite(reg.results_matrix()[2]).sum()
    assert 3 <= measured <= 4  # committed as they came (the 4th may be lost with the interrupt)
    res = runner.invoke(app, ["--registry", str(reg.root), "expert", "eval", "--executor", "local:2"])
    assert res.exit_code == 0, res.output
    assert f"measured {9 - measured} expert/task pair(s); {measured} already measured" in res.output
    np.testing.assert_array_equal(np.isfinite(reg.results_matrix()[2]), True)
    # in-process jobs read the features the interrupted run cached: the same errors as the serial run
    np.testing.assert_array_equal(reg.results_matrix()[2][:, :2], serial[0][:, :2])


def test_altered_weights_or_a_bad_executor_stop_before_any_job(lab: Path, tmp_path: Path) -> None:
    reg = fresh(lab, tmp_path, "reg")
    weights = reg.root / reg.get_expert("e2").weights
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = snapshot(reg.root)
    for executor in ("local", "local:2"):
        with pytest.raises(TaskregError, match="expert e2: weights file .* is missing or altered"):
            reg.evaluate(executor=executor)
    assert snapshot(reg.root) == before  # nothing measured, nothing cached
    res = runner.invoke(app, ["--registry", str(reg.root), "expert", "eval", "--executor", "dask"])
    assert res.exit_code != 0 and res.output.strip().splitlines() == [
        "error: unknown executor 'dask'; use 'local', 'local:N', 'ray', 'ray:N' or 'ray:ADDRESS' (e.g. ray:auto)"
    ], res.output
    assert snapshot(reg.root) == before
