"""The ``taskreg`` command line: thin Typer commands that parse, call the Registry and print.

Heavy libraries (torch, mlflow, faiss, duckdb, matplotlib) are imported inside the commands so
``taskreg --help`` starts instantly. A ``TaskregError`` is printed on one line and exits with 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from taskreg.errors import TaskregError

if TYPE_CHECKING:
    from taskreg.registry import Registry

app = typer.Typer(
    name="taskreg",
    help="A database-backed meta-learning model registry: Task2Vec/Model2Vec expert selection and "
    "Taskonomy transfer policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
task_app = typer.Typer(help="Register, embed and compare tasks (labelled datasets).", no_args_is_help=True)
expert_app = typer.Typer(help="Register, train and evaluate experts (feature extractors).", no_args_is_help=True)
data_app = typer.Typer(help="Inspect dataset sources.", no_args_is_help=True)
index_app = typer.Typer(help="Faiss indexes derived from the catalog.", no_args_is_help=True)
app.add_typer(task_app, name="task")
app.add_typer(expert_app, name="expert")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")

F = TypeVar("F", bound=Callable[..., Any])

RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", "-r", help="Registry directory (env TASKREG_HOME, default ./.taskreg).",
                 envvar="TASKREG_HOME", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

_state: dict[str, Path | None] = {"registry": None}


@app.callback()
def _main(registry: RegistryOpt = None) -> None:
    _state["registry"] = registry


# --------------------------------------------------------------------------- helpers

def handle_errors(fn: F) -> F:
    """Turn a TaskregError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TaskregError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def root(registry: Path | None) -> Path | None:
    return registry if registry is not None else _state["registry"]


def open_registry(registry: Path | None) -> Registry:
    from taskreg.registry import Registry

    return Registry.open(root(registry))


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console().print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields the ``progress(done, total)`` callback the pure layers accept."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console_err(), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def console_err() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def parse_mapping(text: str | None, what: str) -> dict[str, float]:
    """Parse ``a=1,b=2.5`` into a dict; bad syntax is a one-line error."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise TaskregError(f"bad {what} {part!r}: expected TASK=NUMBER[,TASK=NUMBER...]") from None
    return out


def parse_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


# --------------------------------------------------------------------------- registry

@app.command()
@handle_errors
def init(registry: RegistryOpt = None) -> None:
    """Create a registry (catalog.duckdb, mlflow.db, artifacts/, index/, cache/)."""
    from taskreg.registry import Registry

    reg = Registry.init(root(registry))
    typer.echo(f"registry ready at {reg.root}")


@app.command()
@handle_errors
def check(
    registry: RegistryOpt = None,
    fix: Annotated[bool, typer.Option("--fix", help="Remove harmless leftovers of interrupted commands.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check catalog ↔ MLflow ↔ index consistency; exit 1 with the list of problems."""
    reg = open_registry(registry)
    report = reg.check(fix=fix)
    if as_json:
        print_json({"ok": report.ok, "problems": report.problems, "notes": report.notes, "counts": report.counts})
    else:
        for note in report.notes:
            typer.echo(f"note: {note}")
        for problem in report.problems:
            typer.echo(f"problem: {problem}")
        counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
        typer.echo(("ok" if report.ok else f"{len(report.problems)} problem(s)") + (f" ({counts})" if counts else ""))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@handle_errors
def sql(query: str, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Run a read-only SQL query against the catalog (DuckDB)."""
    reg = open_registry(registry)
    cols, rows = reg.sql(query)
    if as_json:
        print_json([dict(zip(cols, row, strict=True)) for row in rows])
    else:
        print_table(query, cols, rows)


@index_app.command("rebuild")
@handle_errors
def index_rebuild(registry: RegistryOpt = None) -> None:
    """Recreate every Faiss index from the catalog."""
    from taskreg.registry import Registry

    reg = Registry.open(root(registry), repair_indexes=False)
    t0 = time.perf_counter()
    built = reg.rebuild_indexes()
    for kind, n in built.items():
        typer.echo(f"{kind}: {n} vectors")
    typer.echo(f"rebuilt {len(built)} index(es) in {time.perf_counter() - t0:.2f} s")


# --------------------------------------------------------------------------- data

@data_app.command("inspect")
@handle_errors
def data_inspect(source: str, as_json: JsonOpt = False) -> None:
    """Load a dataset source and print its shape, classes and counts."""
    from taskreg.registry import datasets

    summary = datasets.describe(datasets.load(source))
    if as_json:
        from dataclasses import asdict

        print_json(asdict(summary))
    else:
        typer.echo(summary.as_text())


@data_app.command("builtins")
def data_builtins() -> None:
    """List the built-in dataset sources."""
    from taskreg.registry import datasets

    for name in datasets.list_builtins():
        typer.echo(name)


# --------------------------------------------------------------------------- tasks and experts

@task_app.command("list")
@handle_errors
def task_list(registry: RegistryOpt = None, as_json: JsonOpt = False,
              limit: Annotated[int | None, typer.Option(help="Show at most this many.")] = None) -> None:
    """List registered tasks."""
    from dataclasses import asdict

    tasks = open_registry(registry).list_tasks(limit=limit)
    if as_json:
        print_json([asdict(t) for t in tasks])
    else:
        print_table(f"{len(tasks)} task(s)", ["id", "name", "domain", "n", "classes", "source"],
                    [(t.id, t.name, t.domain, t.n_samples, t.n_classes, t.source) for t in tasks])


@task_app.command("show")
@handle_errors
def task_show(name: str, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Show one task: its source, embeddings and measured expert errors."""
    info = open_registry(registry).show_task(name)
    if as_json:
        print_json(info)
    else:
        _print_record(info)


@task_app.command("rm")
@handle_errors
def task_rm(name: str, registry: RegistryOpt = None) -> None:
    """Remove a task, its embeddings and its results."""
    open_registry(registry).remove_task(name)
    typer.echo(f"removed task {name}")


@expert_app.command("list")
@handle_errors
def expert_list(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """List registered experts."""
    from dataclasses import asdict

    experts = open_registry(registry).list_experts()
    if as_json:
        print_json([asdict(e) for e in experts])
    else:
        print_table(f"{len(experts)} expert(s)", ["id", "name", "arch", "trained_on", "origin", "version"],
                    [(e.id, e.name, e.arch, e.trained_on, e.origin, e.model_version) for e in experts])


@expert_app.command("show")
@handle_errors
def expert_show(name: str, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Show one expert and its measured errors."""
    info = open_registry(registry).show_expert(name)
    if as_json:
        print_json(info)
    else:
        _print_record(info)


@expert_app.command("rm")
@handle_errors
def expert_rm(name: str, registry: RegistryOpt = None) -> None:
    """Remove an expert, its results and its registered model."""
    open_registry(registry).remove_expert(name)
    typer.echo(f"removed expert {name}")


def _print_record(info: dict[str, Any]) -> None:
    for key, value in info.items():
        if isinstance(value, list):
            typer.echo(f"{key}:")
            for item in value:
                typer.echo("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in item.items()))
        else:
            typer.echo(f"{key}: {_fmt(value)}")


# --------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="taskreg")


if __name__ == "__main__":
    main()
