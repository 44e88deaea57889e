"""Experts remember the input resolution they were trained at (issue 14): an expert fine-tuned from a probe runs
at the probe's input size, `expert add --input-size` records the weights' resolution, and every later use
(`expert eval` features, `select`'s scores and --verify) feeds the expert at that size, not the arch's default."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from taskreg import data as datasets
from taskreg.cli import app
from taskreg.embedders.probes import default_spec
from taskreg.registry import Registry
from taskreg.trainers.experts import extract_features
from tests.procs import save_random_expert

runner = CliRunner()
SOURCE = "builtin:digits?classes=1,2&n=40"
ARCH = "cifar_resnet8"  # default resolution 32 px


@pytest.fixture(scope="module")
def trained(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a 40-px probe and two experts trained on SOURCE: from that probe, and from scratch."""
    import shutil

    root = tmp_path_factory.mktemp("resolution") / "reg"
    shutil.copytree(registry_template, root)
    reg = Registry.open(root)
    reg.add_probe("p40", arch=ARCH, weights=save_random_expert(root.parent / "probe.pt"), input_size=40)
    reg.train_expert("from-probe", SOURCE, probe="p40", task_name="digits12", epochs=1, max_samples=20)
    reg.train_expert("from-scratch", SOURCE, from_probe=False, arch=ARCH, probe="p40", epochs=1)
    return root


def test_an_expert_trained_from_a_probe_runs_at_the_probes_resolution(trained: Path) -> None:
    reg = Registry.open(trained)
    rec, model, spec = reg.load_expert("from-probe")
    assert rec.input_size == 40
    assert spec == replace(default_spec(ARCH), input_size=40)
    ds = datasets.load(SOURCE)
    feats = reg.expert_features(rec, model, spec, ds)
    np.testing.assert_allclose(feats, extract_features(model, spec, ds.x), rtol=1e-5, atol=1e-6)
    at_default = extract_features(model, default_spec(ARCH), ds.x)
    assert not np.allclose(feats, at_default, atol=1e-4)  # the resolution matters: 32 px would be another answer
    # the run records it too (what `taskreg recover` reads back)
    assert reg.tracker.client.get_run(rec.run_id).data.params["input_size"] == "40"


def test_an_expert_trained_from_scratch_runs_at_the_arch_default(trained: Path) -> None:
    reg = Registry.open(trained)
    rec, _, spec = reg.load_expert("from-scratch")
    assert rec.input_size == 32 and spec == default_spec(ARCH)


def test_expert_add_input_size_is_stored_listed_and_shown(registry_root: Path, tmp_path: Path) -> None:
    weights = str(save_random_expert(tmp_path / "w.pt"))
    r = ["-r", str(registry_root)]
    res = runner.invoke(app, [*r, "expert", "add", "e48", "--arch", ARCH, "--weights", weights, "--input-size", "48"])
    assert res.exit_code == 0 and "registered expert e48 (cifar_resnet8, 48 px" in res.output, res.output
    res = runner.invoke(app, [*r, "expert", "add", "e-default", "--arch", ARCH, "--weights", weights])
    assert res.exit_code == 0 and "(cifar_resnet8, 32 px" in res.output, res.output
    res = runner.invoke(app, [*r, "expert", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert {e["name"]: e["input_size"] for e in json.loads(res.output)} == {"e48": 48, "e-default": 32}
    res = runner.invoke(app, [*r, "expert", "show", "e48"])
    assert res.exit_code == 0 and "input_size: 48" in res.output.splitlines(), res.output
    res = runner.invoke(app, [*r, "expert", "show", "e48", "--json"])
    assert json.loads(res.output)["input_size"] == 48
    reg = Registry.open(registry_root)
    assert reg.load_expert("e48")[2] == replace(default_spec(ARCH), input_size=48)
    # the same weights under the same name again, now at 48 px (removed and added back): the features are
    # computed at 48 px, not taken from the cache of the 32-px registration (same weights file, same hash)
    ds = datasets.load(SOURCE)
    rec, model, spec = reg.load_expert("e-default")
    at_32, sha_at_32 = reg.expert_features(rec, model, spec, ds), rec.sha256
    reg.remove_expert("e-default")
    reg.add_expert("e-default", arch=ARCH, weights=Path(weights), input_size=48)
    rec, model, spec = reg.load_expert("e-default")
    assert spec.input_size == 48 and rec.sha256 == sha_at_32  # the cache cannot tell them apart by the hash
    at_48 = reg.expert_features(rec, model, spec, ds)
    np.testing.assert_allclose(at_48, extract_features(model, spec, ds.x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(at_48, at_32, atol=1e-4)
    assert reg.check().ok
