"""Hostile and malformed input through the CLI: one clear error line, exit status 2, the registry
byte-for-byte unchanged, and no code from the input ever executed.

Each case is run by every command it can reach that writes (``task add``, ``probe add``,
``affinity import``, ``policy`` ...), against a registry that already holds a probe, a task, an
expert and an affinity set. Cases already covered elsewhere for another command (``data inspect``
in test_cli.py, ``expert add`` in test_registry_workflow.py) are exercised here on the mutating ones.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.registry import Registry
from tests.conftest import snapshot
from tests.procs import make_probe_registry, save_random_expert

runner = CliRunner()
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "taskonomy"


class Exploit:
    """Unpickling this creates ``marker``: the proof that code from the input ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def lab(registry_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_probe_registry(registry_template, tmp_path_factory.mktemp("hostile") / "reg")
    reg = Registry.open(root)
    reg.add_task("good", "builtin:digits?classes=1,2&n=40", max_samples=20)
    reg.add_expert("good-expert", arch="cifar_resnet8", weights=save_random_expert(root.parent / "w.pt"))
    reg.import_affinity(DATA_DIR / "affinity_1k.csv", "mine")
    return root


def npz(d: Path, name: str, **arrays: np.ndarray) -> str:
    np.savez(d / f"{name}.npz", **arrays)
    return str(d / f"{name}.npz")


def good_arrays(n: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, 8, 8), dtype=np.float32), "y": np.arange(n) % 2}


def truncated_npz(d: Path) -> str:
    path = Path(npz(d, "full", **good_arrays(200)))
    data = path.read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    return str(d / "truncated.npz")


def pickled_npz(d: Path) -> str:
    x = np.empty(2, dtype=object)
    x[0] = x[1] = Exploit(d / "pwned-npz")
    return npz(d, "pickled", x=x, y=np.array([0, 1]))


def folder(d: Path, name: str, files: dict[str, bytes | None]) -> str:
    """An image folder; ``None`` makes a directory. A good PNG goes in class ``ok``."""
    from PIL import Image

    root = d / name
    (root / "ok").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(root / "ok" / f"{i}.png")
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return str(root)


def zero_png() -> bytes:
    """A PNG whose header declares a 0x0 image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def symlink_loop(d: Path) -> str:
    root = Path(folder(d, "loops", {}))
    (root / "up").symlink_to(root, target_is_directory=True)  # a class directory pointing at the root
    (root / "self").symlink_to(root / "self")                  # a link to itself
    (root / "ok" / "2.png").symlink_to(root / "ok" / "2.png")   # an image that is a link to itself
    return str(root)


def evil_weights(d: Path) -> str:
    (d / "evil.pt").write_bytes(pickle.dumps({"conv1.weight": Exploit(d / "pwned-pt")}))
    return str(d / "evil.pt")


def evil_torch_zip(d: Path) -> str:
    """torch.save's zip format carrying a pickle with a __reduce__ payload."""
    torch.save({"conv1.weight": Exploit(d / "pwned-zip")}, d / "evil-zip.pt")
    return str(d / "evil-zip.pt")


def truncated_weights(d: Path) -> str:
    data = Path(save_random_expert(d / "full.pt")).read_bytes()
    (d / "cut.pt").write_bytes(data[: len(data) // 3])
    return str(d / "cut.pt")


def raw(d: Path, name: str, content: bytes) -> str:
    (d / name).write_bytes(content)
    return str(d / name)


def csv(d: Path, name: str, text: str | bytes) -> str:
    return raw(d, f"{name}.csv", text if isinstance(text, bytes) else text.encode())


def add(source: str, *extra: str) -> list[str]:
    return ["task", "add", "hostile", "--data", source, *extra]


def probe_add(weights: str, arch: str = "cifar_resnet8", name: str = "p2") -> list[str]:
    return ["probe", "add", name, "--arch", arch, "--weights", weights]


def aff(path: str, name: str = "aff2") -> list[str]:
    return ["affinity", "import", path, "--name", name]


# name -> builder(tmp dir) -> CLI arguments
CASES: dict[str, Callable[[Path], list[str]]] = {
    # ---- .npz files
    "truncated npz": lambda d: add(truncated_npz(d)),
    "npz that is not a zip": lambda d: add(raw(d, "fake.npz", b"x,y\n1,2\n")),
    "x of dtype str": lambda d: add(npz(d, "str", x=np.full((4, 8, 8), "a"), y=np.arange(4) % 2)),
    "x complex": lambda d: add(npz(d, "cplx", x=np.ones((4, 8, 8), np.complex64), y=np.arange(4) % 2)),
    "x of rank 2": lambda d: add(npz(d, "rank2", x=np.zeros((10, 64)), y=np.arange(10) % 2)),
    "x of rank 5": lambda d: add(npz(d, "rank5", x=np.zeros((10, 1, 1, 8, 8)), y=np.arange(10) % 2)),
    "y of rank 2": lambda d: add(npz(d, "yrank", x=np.zeros((10, 8, 8)), y=np.zeros((10, 2), int))),
    "fractional labels": lambda d: add(npz(d, "frac", x=np.zeros((10, 8, 8)), y=np.arange(10) / 4)),
    "NaN labels": lambda d: add(npz(d, "nanlab", x=np.zeros((10, 8, 8)), y=np.full(10, np.nan))),
    "labels out of range (1e30)": lambda d: add(npz(d, "huge", x=np.zeros((10, 8, 8)), y=np.arange(10) % 2 * 1e30)),
    "negative label selected that does not exist": lambda d: add(
        npz(d, "neg", x=np.zeros((10, 8, 8)), y=np.arange(10) % 2) + "?classes=-1,0"),
    "NaN pixels": lambda d: add(npz(d, "nan", x=np.full((10, 8, 8), np.nan), y=np.arange(10) % 2)),
    "inf pixels": lambda d: add(npz(d, "inf", x=np.full((10, 8, 8), np.inf), y=np.arange(10) % 2)),
    "0x0 images": lambda d: add(npz(d, "zero", x=np.zeros((10, 0, 0)), y=np.arange(10) % 2)),
    "100,000-class label vector": lambda d: add(npz(d, "classes", x=np.zeros((100_000, 1, 1), np.uint8),
                                                    y=np.arange(100_000))),
    "object array (pickle) in npz": lambda d: add(pickled_npz(d)),
    # ---- image folders
    "unreadable image": lambda d: add(folder(d, "garbage", {"bad/x.png": b"\x89PNG not really"})),
    "empty image file": lambda d: add(folder(d, "empty-file", {"bad/x.png": b""})),
    "0x0 PNG in a folder": lambda d: add(folder(d, "zero-png", {"bad/x.png": zero_png()})),
    "empty class directory": lambda d: add(folder(d, "empty-dir", {"bad": None})),
    "only non-image files": lambda d: add(folder(d, "text", {"bad/readme.txt": b"hello", "bad/x.py": b"1/0"})),
    "symlink loops": lambda d: add(symlink_loop(d)),
    # ---- names
    "name with a path separator": lambda d: probe_add(str(d / "w.pt"), name="../escape"),
    "name with SQL metacharacters": lambda d: aff(str(DATA_DIR / "affinity_1k.csv"), "x'); DROP TABLE tasks; --"),
    "SQL metacharacters in a lookup": lambda d: ["task", "rm", "good' OR '1'='1"],
    "name of 10,000 characters": lambda d: probe_add(str(d / "w.pt"), name="p" * 10_000),
    "source of 10,000 characters": lambda d: add("builtin:digits?classes=" + ",".join(["1"] * 5_000)),
    "lookup of a 10,000-character name": lambda d: ["task", "rm", "t" * 10_000],
    "path with a newline": lambda d: add(str(d / "two\nlines.npz")),
    # ---- weight files
    "pickle executing code as weights": lambda d: probe_add(evil_weights(d)),
    "torch zip with a code-executing pickle": lambda d: probe_add(evil_torch_zip(d)),
    "truncated weight file": lambda d: probe_add(truncated_weights(d)),
    "weights of the wrong architecture": lambda d: probe_add(str(d / "w.pt"), arch="resnet18"),
    # ---- budgets
    "negative budget": lambda d: ["policy", "--affinity", "taskonomy", "--budget", "-1"],
    "NaN budget": lambda d: ["policy", "--affinity", "mine", "--budget", "nan"],
    "infinite budget": lambda d: ["policy", "--affinity", "mine", "--budget", "inf"],
    # ---- affinity tables
    "affinity CSV with missing columns": lambda d: aff(csv(d, "cols", "sources,target,value\na,b,0.5\n")),
    "empty affinity CSV": lambda d: aff(csv(d, "empty", "")),
    "non-numeric affinity": lambda d: aff(csv(d, "text", "sources,target,order,value\na,b,1,high\n")),
    "binary affinity file": lambda d: aff(csv(d, "binary", bytes(range(256)) * 4)),
    # ---- other arguments
    "negative --max-samples": lambda d: add("builtin:digits?classes=3,4&n=40", "--max-samples", "-5"),
    "expert train with --max-samples 0": lambda d: ["expert", "train", "e0", "--data", "builtin:digits?n=40",
                                                    "--max-samples", "0"],
    "Model2Vec penalty that is not a number": lambda d: ["model2vec", "fit", "--l2", "strong"],
    "Model2Vec with a single expert": lambda d: ["model2vec", "fit"],
    "backup into the registry itself": lambda d: ["backup", "{REG}/artifacts/b"],
    "restore from a directory that is not a backup": lambda d: ["restore", str(d), "--force"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_refused_cleanly(case: str, lab: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    save_random_expert(d / "w.pt")
    args = [a.replace("{REG}", str(lab)) for a in CASES[case](d)]
    before = snapshot(lab)
    res = runner.invoke(app, ["--registry", str(lab), *args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, (case, res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, res.output)
    assert len(lines[0]) < 400, lines[0]  # clear, not a dump of the input
    assert snapshot(lab) == before, case
    assert not [p for p in d.iterdir() if p.name.startswith("pwned")], f"{case}: code from the input ran"


def test_at_least_25_cases() -> None:
    assert len(CASES) >= 25


# ---- issue 12 item 3: a lost catalog is a damaged registry, not a new one -----------------------------
# `init` refuses it, every command names the recovery, `check` reports it, `check --fix` deletes nothing.

def lost_catalog(lab: Path, dest: Path, catalog_from: Path | None = None) -> Path:
    """A copy of ``lab`` whose catalog.duckdb is gone, or replaced by ``catalog_from``'s."""
    import shutil

    shutil.copytree(lab, dest)
    Registry.open(dest)  # points the copy's MLflow paths at it (done once, before any snapshot)
    (dest / "catalog.duckdb").unlink()
    if catalog_from is not None:
        shutil.copy(catalog_from / "catalog.duckdb", dest / "catalog.duckdb")
    return dest


def mlflow_records(root: Path) -> tuple[list, list]:
    """(active runs with their state, registered models) of a registry's MLflow store."""
    from tests.procs import mlflow_rows

    runs = mlflow_rows(root, "SELECT r.name, coalesce(t.value, 'committed') FROM runs r LEFT JOIN tags t ON "
                             "t.run_uuid = r.run_uuid AND t.key = 'taskreg.state' WHERE r.lifecycle_stage = 'active' "
                             "ORDER BY r.name")
    return runs, mlflow_rows(root, "SELECT name FROM registered_models ORDER BY name")


def one_error(res: object) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (res.exit_code, res.output)
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def test_init_refuses_a_registry_whose_catalog_is_missing(lab: Path, tmp_path: Path) -> None:
    root = lost_catalog(lab, tmp_path / "reg")
    before = snapshot(root)
    line = one_error(runner.invoke(app, ["--registry", str(root), "init"]))
    assert "catalog.duckdb is missing" in line and "damaged registry" in line, line
    assert "3 committed record runs (1 expert, 1 probe, 1 task_embedding) and 1 registered model" in line, line
    assert "taskreg restore BACKUP --force" in line and "taskreg recover" in line, line
    assert snapshot(root) == before and not (root / "catalog.duckdb").exists()
    for argv in (["task", "list"], ["expert", "add", "x", "--arch", "cifar_resnet8", "--weights", str(lab.parent /
                                                                                                        "w.pt")]):
        assert "damaged registry" in one_error(runner.invoke(app, ["--registry", str(root), *argv]))
    for argv in (["check"], ["check", "--fix"]):
        res = runner.invoke(app, ["--registry", str(root), *argv])
        assert res.exit_code == 1 and "problem: catalog.duckdb is missing" in res.output, res.output
    assert snapshot(root) == before


def test_check_fix_keeps_the_records_of_a_catalog_created_anew(lab: Path, tmp_path: Path,
                                                              registry_template: Path) -> None:
    """What `init` used to make of a lost catalog: an empty catalog beside the MLflow store of the records."""
    root = lost_catalog(lab, tmp_path / "reg", catalog_from=registry_template)  # empty, same registry id
    records = mlflow_records(root)
    assert len(records[0]) == 3 and records[1] == [("expert-good-expert",)]
    import json

    for argv in (["check", "--json"], ["check", "--fix", "--json"]):
        res = runner.invoke(app, ["--registry", str(root), *argv])
        report = json.loads(res.output)
        assert res.exit_code == 1 and not report["ok"], res.output
        lost = [p for p in report["problems"] if "has no catalog row and no removal mark" in p]
        assert len(lost) == 3 and any("registered model expert-good-expert" in p for p in report["problems"])
        assert not [n for n in report["notes"] if "removed record" in n or "registered model" in n], report["notes"]
        assert mlflow_records(root) == records  # --fix deleted nothing
    before = snapshot(root)
    line = one_error(runner.invoke(app, ["--registry", str(root), "init"]))
    assert "the catalog lost records" in line and "damaged registry" in line, line
    # adding an expert of a lost expert's name would have replaced its registered model: refused
    line = one_error(runner.invoke(app, ["--registry", str(root), "expert", "add", "good-expert", "--arch",
                                         "cifar_resnet8", "--weights", str(lab.parent / "w.pt")]))
    assert "catalog lost records" in line, line
    assert snapshot(root) == before


def test_a_catalog_of_another_registry_is_refused(lab: Path, tmp_path: Path) -> None:
    import duckdb

    root = lost_catalog(lab, tmp_path / "reg", catalog_from=lab)
    con = duckdb.connect(str(root / "catalog.duckdb"))
    con.execute("UPDATE registry_info SET value = 'another-registry' WHERE key = 'registry_id'")
    con.close()
    before = snapshot(root)
    for argv in (["init"], ["task", "list"], ["recover"]):
        line = one_error(runner.invoke(app, ["--registry", str(root), *argv]))
        assert "belongs to registry another-registry" in line, line
    res = runner.invoke(app, ["--registry", str(root), "check", "--fix"])
    assert res.exit_code == 1 and "problem: catalog.duckdb belongs to registry another-registry" in res.output
    assert snapshot(root) == before
