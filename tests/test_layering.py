"""The package's layering and module size, checked statically (``ast``, nothing is imported).

Layers (docs/ARCHITECTURE.md): cli -> registry -> embedders / trainers / selection / data. The pure layers never
import the registry or the CLI (at module level, inside functions or under TYPE_CHECKING alike), and the registry
never imports the CLI. Modules of those layers stay at most ``MAX_LINES`` lines unless the first lines of their
docstring say why (a line starting ``Size:`` or ``Reason:``).

Inside the registry, SQL runs only in the catalog layer (registry/catalog/: no ``execute(`` elsewhere), and MLflow is
reached only through registry/tracking.py, the one importer of ``mlflow`` and of registry/catalog/mlflow_store.py
(the SQL on MLflow's own sqlite schema, the one importer of ``sqlite3``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the package ``taskreg``
PURE = ("embedders", "trainers", "selection", "data")
FORBIDDEN = {layer: ("taskreg.registry", "taskreg.cli") for layer in PURE} | {"registry": ("taskreg.cli",)}
MAX_LINES = 500
SIZE_LAYERS = ("registry", "embedders", "trainers", "selection", "data")
SIZE_REASON_LINES = 10  # a ``Size:`` line must sit within the docstring's first lines
# Modules that may import a name (the name or any submodule of it); every other package module must not.
ONLY_IMPORTED_BY = {
    "mlflow": ("registry/tracking.py",),
    "taskreg.registry.catalog.mlflow_store": ("registry/tracking.py",),
    "sqlite3": ("registry/catalog/mlflow_store.py",),
}

# Modules over MAX_LINES today without a written reason, each with why it is allowed for now. The test fails when an
# entry is no longer needed (the module shrank, gained a ``Size:`` line, or is gone): delete it then, so the list only
# ever shrinks.
SIZE_ALLOWANCE: dict[str, str] = {}


def package_modules() -> list[Path]:
    """The package's own modules: the root's and those of its subpackages (tests and benchmarks excluded)."""
    subpackages = [d for d in ROOT.iterdir() if (d / "__init__.py").is_file() and d.name not in ("tests", "benchmarks")]
    return sorted([*ROOT.glob("*.py"), *(p for d in subpackages for p in d.rglob("*.py"))])


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["taskreg", *parts])


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved; ``from a import b`` gives
    both ``a`` and ``a.b`` (b may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def layering_violations(files: list[Path], root: Path = ROOT) -> list[str]:
    """``file:line imports module`` for every import that crosses the layering the wrong way."""
    bad = []
    for path in files:
        rel = path.relative_to(root)
        banned = FORBIDDEN.get(rel.parts[0]) if len(rel.parts) > 1 else None
        for line, name in imported_modules(path, root) if banned else []:
            if any(name == b or name.startswith(b + ".") for b in banned):
                bad.append(f"{rel}:{line} imports {name}")
    return bad


def test_modules_are_found() -> None:
    names = {module_name(p) for p in package_modules()}
    assert {"taskreg.cli", "taskreg.errors", "taskreg.registry", "taskreg.embedders.task2vec",
            "taskreg.selection.select", "taskreg.data.sources"} <= names


def test_pure_layers_import_neither_registry_nor_cli_and_registry_not_cli() -> None:
    bad = layering_violations(package_modules())
    assert bad == [], "layering broken (see docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def test_layering_check_catches_every_import_form(tmp_path: Path) -> None:
    """The checker itself: each spelling of a forbidden import, placed in a pure layer, is reported."""
    forms = ["import taskreg.registry.core", "from taskreg.registry import Registry", "from taskreg import registry",
             "from taskreg import cli", "from ..registry.catalog import x", "from .. import cli",
             "def f():\n    from taskreg.registry.index import search"]
    files = []
    for i, form in enumerate(forms):
        f = tmp_path / "selection" / f"m{i}.py"
        f.parent.mkdir(exist_ok=True)
        f.write_text(form + "\n")
        files.append(f)
    ok = tmp_path / "registry" / "ok.py"
    ok.parent.mkdir()
    ok.write_text("from taskreg.embedders import task2vec\nfrom ..errors import TaskregError\nimport taskreg.cli_x\n")
    bad = tmp_path / "registry" / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from taskreg.cli import app\n")
    found = layering_violations([*files, ok, bad], root=tmp_path)
    assert sorted({v.split(":")[0] for v in found}) == sorted([*(f"selection/m{i}.py" for i in range(len(forms))),
                                                                "registry/bad.py"])
    assert "registry/bad.py:3 imports taskreg.cli" in found
    assert "selection/m6.py:2 imports taskreg.registry.index" in found


def size_reason(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    lines = doc.splitlines()[:SIZE_REASON_LINES]
    return next((ln for ln in lines if ln.strip().startswith(("Size:", "Reason:"))), None)


def oversized() -> dict[str, int]:
    out = {}
    for path in package_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in SIZE_LAYERS or rel == "cli.py":
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES and size_reason(path) is None:
                out[rel] = n
    return out


def test_no_oversized_module_without_a_written_reason() -> None:
    unexplained = {f: n for f, n in oversized().items() if f not in SIZE_ALLOWANCE}
    assert unexplained == {}, (f"modules over {MAX_LINES} lines: split them or put a line starting 'Size:' with the "
                               f"reason in the first {SIZE_REASON_LINES} lines of the module docstring")


def test_size_allowances_are_still_needed() -> None:
    stale = sorted(set(SIZE_ALLOWANCE) - set(oversized()))
    assert stale == [], f"remove from SIZE_ALLOWANCE in tests/test_layering.py (now short or explained): {stale}"


# ---- issue 13: one home for SQL. Outside registry/catalog/ no module runs a statement or holds SQL text.
SQL_CALLS = {"execute", "executemany"}
SQL_TEXT = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+(OR\s+REPLACE\s+)?"
                      r"(TEMP\s+)?TABLE|DROP\s+TABLE)\b", re.DOTALL)
# Modules that still hold SQL, each with why; the list only shrinks (the test below fails on a stale entry).
SQL_ALLOWANCE: dict[str, str] = {}


def sql_outside_catalog(files: list[Path], root: Path = ROOT) -> dict[str, list[int]]:
    """``file -> lines`` of every ``.execute(...)`` call and SQL string outside registry/catalog/ (tests excluded)."""
    found: dict[str, list[int]] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel.startswith("registry/catalog/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            call = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_CALLS)
            text = isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.search(node.value)
            if call or text:
                found.setdefault(rel, []).append(node.lineno)
    return found


def test_sql_lives_in_the_catalog_only() -> None:
    bad = {f: lines for f, lines in sql_outside_catalog(package_modules()).items() if f not in SQL_ALLOWANCE}
    assert bad == {}, f"SQL outside registry/catalog/ (move it into a catalog function): {bad}"


def test_sql_allowances_are_still_needed() -> None:
    stale = sorted(set(SQL_ALLOWANCE) - set(sql_outside_catalog(package_modules())))
    assert stale == [], f"remove from SQL_ALLOWANCE in tests/test_layering.py (no SQL left there): {stale}"


def test_sql_check_catches_calls_and_statements(tmp_path: Path) -> None:
    (tmp_path / "registry" / "catalog").mkdir(parents=True)
    (tmp_path / "registry" / "catalog" / "ok.py").write_text('con.execute("SELECT 1 FROM t")\n')
    (tmp_path / "registry" / "a.py").write_text('rows = con.execute(q).fetchall()\n')
    (tmp_path / "registry" / "b.py").write_text('Q = (\n    "DELETE FROM winrates "\n    "WHERE x = ?")\n')
    (tmp_path / "registry" / "c.py").write_text('"""Select a policy from the catalog."""\nx = "insert into"\n')
    files = sorted((tmp_path / "registry").rglob("*.py"))
    assert sql_outside_catalog(files, root=tmp_path) == {"registry/a.py": [1], "registry/b.py": [2]}


def restricted_imports(files: list[Path], root: Path = ROOT) -> list[str]:
    """``file:line imports module`` for every import of a name of ``ONLY_IMPORTED_BY`` by a module not listed."""
    bad = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        for line, name in imported_modules(path, root):
            for restricted, allowed in ONLY_IMPORTED_BY.items():
                if (name == restricted or name.startswith(restricted + ".")) and rel not in allowed:
                    bad.append(f"{rel}:{line} imports {name}")
    return bad


def test_mlflow_is_reached_only_through_the_tracking_layer() -> None:
    bad = restricted_imports(package_modules())
    assert bad == [], "MLflow or its sqlite store reached outside registry/tracking.py:\n" + "\n".join(bad)


def test_import_check_catches_its_forms(tmp_path: Path) -> None:
    """The checker itself: each spelling of a restricted import is reported; the allowed importers are not."""
    files = {
        "registry/tracking.py": "import mlflow\nfrom taskreg.registry.catalog import mlflow_store\n",
        "registry/catalog/mlflow_store.py": "import sqlite3\n",
        "registry/core.py": "from taskreg.registry.catalog import mlflow_store\nimport mlflow.entities\n",
        "registry/backup.py": "def f():\n    from .catalog.mlflow_store import copy_database\n",
        "registry/recovery.py": "from mlflow.exceptions import MlflowException\nimport sqlite3\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    paths = [tmp_path / rel for rel in files]
    found = restricted_imports(paths, root=tmp_path)
    assert sorted({b.split(" imports ")[0] for b in found}) == [
        "registry/backup.py:2", "registry/core.py:1", "registry/core.py:2", "registry/recovery.py:1",
        "registry/recovery.py:2"]
