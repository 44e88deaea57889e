"""Shared fixtures: real registries (DuckDB + MLflow sqlite + Faiss) in temporary directories."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One freshly initialised registry per test session (MLflow's first open costs a few seconds)."""
    from taskreg.registry import Registry

    root = tmp_path_factory.mktemp("template") / "reg"
    Registry.init(root)
    return root


@pytest.fixture(scope="session")
def probe_template(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template registry plus the tiny default probe (tests.procs.make_probe_registry), trained once per
    session for every file that needs a registry with a probe: copy it with tests.procs.copy_registry."""
    from tests.procs import make_probe_registry

    return make_probe_registry(registry_template, tmp_path_factory.mktemp("probe-template") / "reg")


@pytest.fixture(scope="session")
def fork_server(probe_template: Path):  # noqa: ANN201
    """The fork server of the process tests (tests.procs.ForkServer: torch, MLflow, DuckDB and Faiss imported once,
    the builtin digits loaded), shared by test_crash and test_concurrency; its children are real taskreg processes."""
    from tests.procs import ForkServer

    srv = ForkServer(("builtin:digits",), probe_template)
    yield srv
    srv.close()


@pytest.fixture
def registry_root(registry_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template registry, opened once (the first open of a copy points MLflow's
    artifact paths at it, which would otherwise show up in 'registry unchanged' checks)."""
    from taskreg.registry import Registry

    root = tmp_path / "reg"
    shutil.copytree(registry_template, root)
    Registry.open(root)
    return root


@pytest.fixture
def registry(registry_root: Path):  # noqa: ANN201
    from taskreg.registry import Registry

    return Registry.open(registry_root)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the lock file excluded): 'byte-for-byte unchanged' checks."""
    out: dict[str, str] = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.name != ".lock":
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
