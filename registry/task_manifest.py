"""Bulk registration: ``taskreg task add-many MANIFEST [--executor SPEC]`` (issue 17).

A manifest lists tasks to register, one per row, as CSV (a header row naming the columns) or JSON Lines (one
object per line; blank lines are skipped). Columns / keys: ``name`` and ``source`` (required), ``domain`` (optional,
overrides the data source's domain) and ``seed`` (optional integer, default the command's ``--seed``).

Every row is checked before anything is embedded; a row that is wrong (a missing name, an unknown key, a seed
that is not an integer, a name used twice) is reported with its line number and skipped; the others go in. A row
whose task is already registered from the same source with this probe and method is skipped as *already
registered* (not an error): a rerun of an interrupted call does only what is missing. A name registered from
another source (or with another domain) is an error.

The other rows run as jobs on an executor (``local``: in this process, the default; ``local:N``; ``ray[:N|:ADDRESS]``;
:func:`taskreg.embedders.task_jobs.run_embed_job`): a worker loads the row's data and computes its Task2Vec and
domain embeddings from the probe's weight file, and never opens the catalog. This process (the single writer)
commits the outcomes in batches as they arrive (every 2 s) through :meth:`TaskService.commit_tasks`, the commit of
``task add`` (per task an MLflow run, catalog rows and index vectors; one transaction and one index update per
batch), so an interrupted call keeps what was embedded before the interruption (a kill loses at most one batch).
A row that fails while loading, embedding or committing is reported with its line number and the one-line error
``task add`` would give, and leaves nothing of itself behind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from taskreg import data as datasets
from taskreg.embedders.task_jobs import EmbedJob, embedding_arrays, run_embed_job
from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.array_cache import save_arrays
from taskreg.registry.names import check_name
from taskreg.registry.probes import probe_spec
from taskreg.registry.runs import verified_weights
from taskreg.registry.tasks import METHODS, TaskCommit, TaskService

KEYS = ("name", "source", "domain", "seed")
MAX_ROWS = 100_000


@dataclass(frozen=True)
class ManifestRow:
    """One task of a manifest: ``line`` is its 1-based line number in the file."""

    line: int
    name: str
    source: str
    domain: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class RowProblem:
    """A row that was not registered, and why (one line)."""

    line: int
    name: str
    error: str

    def text(self, manifest: Path) -> str:
        return f"{manifest}:{self.line}: {self.name or '(no name)'}: {self.error}"


@dataclass
class BulkReport:
    """What ``add-many`` did: the tasks registered (in manifest order), the rows refused, and the rows skipped
    because their task is already registered (same source, probe and method)."""

    added: list[catalog.TaskRecord]
    problems: list[RowProblem]
    already: list[ManifestRow] = field(default_factory=list)


def read_manifest(path: Path) -> tuple[list[ManifestRow], list[RowProblem]]:
    """Parse a CSV or JSONL manifest into rows and per-row problems. A file that cannot be read at all (missing,
    not UTF-8, no header, no rows) is one TaskregError."""
    path = Path(path)
    if not path.is_file():
        raise TaskregError(f"manifest {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskregError(f"manifest {path}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip().startswith("{")
    raw = _jsonl_rows(text) if jsonl else _csv_rows(path, text)
    if not raw:
        raise TaskregError(f"manifest {path} lists no tasks")
    if len(raw) > MAX_ROWS:
        raise TaskregError(f"manifest {path} lists {len(raw)} tasks; at most {MAX_ROWS} per call")
    rows: list[ManifestRow] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    for line, fields, error in raw:
        name = str(fields.get("name") or "").strip()
        if error is not None:  # a line that did not parse
            problems.append(RowProblem(line, name, error))
            continue
        try:
            row = _row(line, fields)
            if row.name in seen:
                raise TaskregError(f"task name {row.name!r} is already used on line {seen[row.name]}")
        except TaskregError as exc:
            problems.append(RowProblem(line, name, str(exc)))
            continue
        seen[row.name] = line
        rows.append(row)
    return rows, problems


#: a raw manifest line: its number, its fields, and why it does not parse (None: it does)
RawRow = tuple[int, dict[str, object], str | None]


def _jsonl_rows(text: str) -> list[RawRow]:
    out: list[RawRow] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((i, {}, f"not a JSON object ({exc.msg})"))
            continue
        if isinstance(value, dict):
            out.append((i, value, None))
        else:
            out.append((i, {}, f"not a JSON object (a {type(value).__name__})"))
    return out


def _csv_rows(path: Path, text: str) -> list[RawRow]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "name" not in header or "source" not in header:
        raise TaskregError(f"manifest {path}: the first line must be a CSV header with at least 'name' and 'source' "
                           f"(or use a .jsonl file), got {header}")
    unknown = [h for h in header if h not in KEYS]
    if unknown:
        raise TaskregError(f"manifest {path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    reader.fieldnames = header
    out: list[RawRow] = []
    for record in reader:
        extra = record.pop(None, None)  # cells beyond the header's
        fields: dict[str, object] = {k: v.strip() for k, v in record.items() if v is not None and v.strip()}
        if extra:
            out.append((reader.line_num, fields, f"{len(header) + len(extra)} cells where the header has "
                                                 f"{len(header)}"))
        elif fields:
            out.append((reader.line_num, fields, None))
    return out


def _row(line: int, fields: dict[str, object]) -> ManifestRow:
    unknown = sorted(set(fields) - set(KEYS))
    if unknown:
        raise TaskregError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    name, source = fields.get("name"), fields.get("source")
    if not isinstance(name, str) or not name.strip():
        raise TaskregError("no task name")
    if not isinstance(source, str) or not source.strip():
        raise TaskregError("no data source")
    check_name(name.strip(), "task name")
    domain = fields.get("domain")
    if domain is not None:
        if not isinstance(domain, str) or not domain.strip():
            raise TaskregError("domain must be a non-empty string")
        check_name(domain.strip(), "domain")
    seed = fields.get("seed")
    if seed is not None:
        try:
            if isinstance(seed, bool) or (isinstance(seed, float) and not seed.is_integer()):
                raise ValueError
            seed = int(str(seed).strip()) if isinstance(seed, str) else int(seed)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise TaskregError(f"seed must be an integer, got {fields.get('seed')!r}") from None
        if not 0 <= seed < 2**32:
            raise TaskregError(f"seed must lie in 0..2**32-1, got {seed}")
    return ManifestRow(line, name.strip(), source.strip(), domain.strip() if isinstance(domain, str) else None,
                       seed)


def add_many(tasks: TaskService, rows: list[ManifestRow], *, probe: str | None, method: str,
             max_samples: int | None, seed: int, device: str, executor: str = "local", batch_seconds: float = 2.0,
             progress: Callable[[int, int], None] | None = None) -> BulkReport:
    """Register each row (each all-or-nothing): rows already registered are skipped, the others are embedded on
    ``executor`` and committed here in batches (every ``batch_seconds``, and what is pending when the call ends or
    is interrupted); a row that fails is reported, the others go in. ``progress(done, total)`` after each embedded
    row. The executor spec, the method, the probe and its weights are checked first: a problem there is one
    TaskregError for the whole call, before any work."""
    from taskreg.trainers.executors import RayExecutor, get_executor

    core = tasks.core
    core.require_write_access("task add-many")
    if method not in METHODS:
        raise TaskregError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    run_on = get_executor(executor)
    prec = tasks.probes.resolve_probe(probe)
    weights = verified_weights(core, prec.weights, prec.sha256, f"probe {prec.name}")
    report = BulkReport([], [])
    jobs = _jobs(tasks, rows, report, prec, str(weights), method=method, max_samples=max_samples, seed=seed,
                 device=device)
    added: dict[int, catalog.TaskRecord] = {}  # line -> the task its row registered
    pending: dict[int, TaskCommit] = {}  # line -> an embedding to commit
    last_commit = time.monotonic()

    def commit() -> None:
        batch = dict(pending)
        pending.clear()
        try:
            added.update(zip(batch, tasks.commit_tasks(prec, list(batch.values())), strict=True))
        except TaskregError:  # a row of the batch conflicts (e.g. its name taken meanwhile): one row at a time
            for line, item in batch.items():
                try:
                    added[line] = tasks.commit_tasks(prec, [item])[0]
                except TaskregError as exc:
                    report.problems.append(RowProblem(line, item.name, str(exc)))

    with contextlib.ExitStack() as stack:
        if isinstance(run_on, RayExecutor):
            stack.enter_context(run_on)  # a Ray runtime this call started is shut down after it
        try:
            for job, out in run_on.map(run_embed_job, jobs, progress=progress):
                if out.error is not None or out.data is None or out.embedding is None:
                    report.problems.append(RowProblem(out.line, out.name, out.error or "not embedded"))
                    continue
                if out.cache_path is not None and not out.cached:  # workers only read the cache
                    save_arrays(core, Path(out.cache_path), embedding_arrays(out.embedding))
                pending[out.line] = TaskCommit(out.name, out.data, method, max_samples, job.seed, out.embedding)
                if time.monotonic() - last_commit >= batch_seconds:
                    commit()
                    last_commit = time.monotonic()
        finally:  # what was embedded before an error or Ctrl-C is kept: the rerun skips it
            commit()
    report.added = [added[line] for line in sorted(added)]
    report.problems.sort(key=lambda p: p.line)
    return report


def _jobs(tasks: TaskService, rows: list[ManifestRow], report: BulkReport, prec: catalog.ProbeRecord, weights: str,
          *, method: str, max_samples: int | None, seed: int, device: str) -> list[EmbedJob]:
    """One job per row still to embed; rows already registered go to ``report.already``, rows whose name is taken
    by other data (or another domain), or whose source does not parse, to ``report.problems``."""
    cache_dir = str(tasks.core.cache_dir / "task2vec")
    spec = probe_spec(prec)
    jobs = []
    with tasks.core.read() as con:
        for row in rows:
            try:
                source = datasets.canonical_source(row.source)  # absolute paths: a worker may run elsewhere
                existing = catalog.get_task(con, row.name)
                registered = None
                if existing is not None:
                    if existing.source != source:
                        raise TaskregError(f"task {row.name!r} is already registered from another source "
                                           f"({existing.source})")
                    if row.domain is not None and row.domain != existing.domain:
                        raise TaskregError(f"task {row.name!r} is already registered with domain "
                                           f"{existing.domain!r}, not {row.domain!r}")
                    if catalog.has_embedding(con, existing.id, prec.name, method):
                        report.already.append(row)
                        continue
                    registered = (existing.source, existing.fingerprint)  # add this embedding to the same data
            except TaskregError as exc:
                report.problems.append(RowProblem(row.line, row.name, str(exc)))
                continue
            jobs.append(EmbedJob(row.line, row.name, source, row.domain, registered, prec.name, weights, prec.sha256,
                                 spec, method, max_samples, seed if row.seed is None else row.seed, device, cache_dir))
    return jobs
