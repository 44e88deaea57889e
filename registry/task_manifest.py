"""Bulk registration: ``taskreg task add-many MANIFEST`` (issue 17).

A manifest lists tasks to register, one per row, as CSV (a header row naming the columns) or JSON Lines (one
object per line; blank lines are skipped). Columns / keys: ``name`` and ``source`` (required), ``domain`` (optional,
overrides the data source's domain) and ``seed`` (optional integer, default the command's ``--seed``).

Every row is checked before anything is embedded; a row that is wrong (a missing name, an unknown key, a seed
that is not an integer, a name used twice) is reported with its line number and skipped; the others go in. Each
task is registered by :meth:`TaskService.add_task`, one all-or-nothing step per row (its catalog rows, MLflow run
and index vectors), so a row that fails while loading or embedding leaves nothing of itself behind. All rows are
embedded in this one process: the probe, MLflow and DuckDB start once, not once per task.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.names import check_name
from taskreg.registry.tasks import TaskService

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
    """What ``add-many`` did: the tasks registered (in manifest order) and the rows refused."""

    added: list[catalog.TaskRecord]
    problems: list[RowProblem]


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
             max_samples: int | None, seed: int, device: str,
             progress: Callable[[int, int], None] | None = None) -> BulkReport:
    """Register each row with :meth:`TaskService.add_task` (each all-or-nothing); a row that fails is reported,
    the others go in. ``progress(done, total)`` after each row."""
    tasks.probes.resolve_probe(probe)  # an unknown probe is one error for the whole call, before any work
    report = BulkReport([], [])
    for i, row in enumerate(rows):
        try:
            ds = datasets.load(row.source)
            if row.domain is not None:
                ds = replace(ds, domain=row.domain)
            report.added.append(tasks.add_task(row.name, ds.source, probe=probe, method=method,
                                               max_samples=max_samples, seed=seed if row.seed is None else row.seed,
                                               device=device, dataset=ds))
        except TaskregError as exc:
            report.problems.append(RowProblem(row.line, row.name, str(exc)))
        if progress is not None:
            progress(i + 1, len(rows))
    report.problems.sort(key=lambda p: p.line)
    return report
