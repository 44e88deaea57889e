"""Tables of task transfers in the published Taskonomy CSV format, loaded into small dataclasses.

A table has one row per transfer, with the columns ``sources,target,order,value``:

* ``sources``: space-separated source task names (``order`` of them); a higher-order transfer reads
  several source representations at once. Two names are reserved and are not tasks:
  ``self`` (the target's own fully supervised network: choosing it means the target is labelled and
  trained) and ``pixels`` (a network trained from scratch on images; only in some win-rate tables).
* ``target``: the task the transfer solves.
* ``order``: the number of sources (must equal ``len(sources)``).
* ``value``: an affinity p (AHP-normalised, each target's values sum to 1 over its candidates) or a
  win rate in [0, 1], depending on the table.

The same format is used for affinities (input of the BIP, :mod:`taskreg.selection.bip`) and for win
rates (Quality / Gain used to evaluate a policy). Source sets are stored sorted, so ``"b a"`` and
``"a b"`` are the same transfer (the CSVs list them in beam-search order, which carries no meaning).
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import IO

from taskreg.errors import TaskregError

SELF = "self"
PIXELS = "pixels"
RESERVED_SOURCES = (SELF, PIXELS)
COLUMNS = ("sources", "target", "order", "value")

#: The paper's source-only tasks (Sec. 4): self-supervised or random, never targets.
TASKONOMY_SOURCE_ONLY: tuple[str, ...] = ("colorization", "jigsaw", "impainting_whole", "random")

#: Built-in affinity sets -> the setting suffix of the packaged CSV files.
BUILTIN_SETTINGS: dict[str, str] = {"taskonomy": "full", "taskonomy-16k": "16k", "taskonomy-1k": "1k"}


@dataclass(frozen=True)
class Transfer:
    """One way of solving ``target``: a transfer from ``sources`` (or ``("self",)`` = supervise it)."""

    sources: tuple[str, ...]
    target: str
    order: int
    value: float

    @property
    def is_self(self) -> bool:
        """True for the target's own fully supervised network."""
        return self.sources == (SELF,)


@dataclass
class AffinitySet:
    """A named table of transfers plus the tasks that may only act as sources.

    ``transfers`` holds one :class:`Transfer` per (sources, target) pair; ``source_only`` names tasks
    that need no labels (self-supervised or random) and are never targets (names absent from the
    table are allowed and ignored). Treat an instance as immutable: a per-target index is built once.
    """

    name: str
    transfers: list[Transfer]
    source_only: tuple[str, ...] = TASKONOMY_SOURCE_ONLY
    _by_target: dict[str, list[Transfer]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_target: dict[str, list[Transfer]] = {}
        for tr in self.transfers:
            by_target.setdefault(tr.target, []).append(tr)
        self._by_target = by_target

    @property
    def targets(self) -> list[str]:
        """Sorted names of the tasks that have at least one row as a target."""
        return sorted(self._by_target)

    @property
    def tasks(self) -> list[str]:
        """Sorted names of all tasks in the table: targets and sources (not ``self``/``pixels``).

        Source-only tasks are included when the table uses them as sources.
        """
        names = set(self._by_target)
        for tr in self.transfers:
            names.update(s for s in tr.sources if s not in RESERVED_SOURCES)
        return sorted(names)

    @property
    def max_order(self) -> int:
        """Highest transfer order in the table (0 if it is empty)."""
        return max((tr.order for tr in self.transfers), default=0)

    def options_for(self, target: str, max_order: int | None = None) -> list[Transfer]:
        """All rows solving ``target`` with order <= ``max_order`` (all orders if None), incl. ``self``."""
        self.check_tasks([target], what="target", allowed=self._by_target)
        rows = self._by_target[target]
        if max_order is None:
            return list(rows)
        return [tr for tr in rows if tr.order <= max_order]

    def value(self, sources: Iterable[str], target: str) -> float | None:
        """The value of the transfer ``sources -> target`` (source order ignored), or None if absent."""
        key = tuple(sorted(sources))
        for tr in self._by_target.get(target, ()):
            if tr.sources == key:
                return tr.value
        return None

    def first_order_matrix(
        self, sources: Sequence[str] | None = None, targets: Sequence[str] | None = None, fill: float = 0.0
    ) -> tuple[list[str], list[str], list[list[float]]]:
        """First-order values as a targets x sources table.

        Returns ``(targets, sources, rows)`` where ``rows[i][j]`` is the value of ``sources[j] ->
        targets[i]`` (``fill`` where the table has no such row). By default ``sources`` are all tasks
        with a first-order row (``self`` excluded) and ``targets`` all targets, both sorted.
        """
        if targets is None:
            targets = self.targets
        if sources is None:
            sources = sorted({tr.sources[0] for tr in self.transfers if tr.order == 1} - {SELF, PIXELS})
        col = {s: j for j, s in enumerate(sources)}
        rows = [[fill] * len(sources) for _ in targets]
        for i, t in enumerate(targets):
            for tr in self._by_target.get(t, ()):
                if tr.order == 1 and tr.sources[0] in col:
                    rows[i][col[tr.sources[0]]] = tr.value
        return list(targets), list(sources), rows

    def check_tasks(self, names: Iterable[str], what: str, allowed: Iterable[str] | None = None) -> None:
        """Raise TaskregError naming the first unknown name in ``names`` (with close matches)."""
        pool = sorted(allowed) if allowed is not None else self.tasks
        known = set(pool)
        for n in names:
            if n not in known:
                close = difflib.get_close_matches(str(n), pool, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(pool)}"
                raise TaskregError(f"unknown {what} '{n}' in affinity set '{self.name}'{hint}")


def _parse_rows(reader: csv.DictReader, name: str) -> list[Transfer]:
    if reader.fieldnames is None:
        raise TaskregError(f"affinity table '{name}' is empty (expected a header {','.join(COLUMNS)})")
    header = [h.strip() for h in reader.fieldnames]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise TaskregError(
            f"affinity table '{name}' lacks column(s) {', '.join(missing)} (has: {', '.join(header)})"
        )
    transfers: list[Transfer] = []
    seen: dict[tuple[tuple[str, ...], str], int] = {}
    for line_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"affinity table '{name}' line {line_no}"
        sources = tuple(sorted(row["sources"].split()))
        target = row["target"]
        if not sources or not target:
            raise TaskregError(f"{where}: empty sources or target")
        if len(set(sources)) != len(sources):
            raise TaskregError(f"{where}: repeated source in '{row['sources']}'")
        if any(s in RESERVED_SOURCES for s in sources) and len(sources) > 1:
            raise TaskregError(f"{where}: 'self'/'pixels' cannot be combined with other sources")
        if target in RESERVED_SOURCES:
            raise TaskregError(f"{where}: '{target}' is reserved and cannot be a target")
        try:
            order = int(row["order"])
        except ValueError:
            raise TaskregError(f"{where}: order '{row['order']}' is not an integer") from None
        if order != len(sources):
            raise TaskregError(f"{where}: order {order} but {len(sources)} source(s) '{row['sources']}'")
        try:
            value = float(row["value"])
        except ValueError:
            raise TaskregError(f"{where}: value '{row['value']}' is not a number") from None
        if not math.isfinite(value):
            raise TaskregError(f"{where}: value is {row['value']} (must be a finite number)")
        key = (sources, target)
        if key in seen:
            raise TaskregError(
                f"{where}: duplicate transfer {' '.join(sources)} -> {target} (first on line {seen[key]})"
            )
        seen[key] = line_no
        transfers.append(Transfer(sources=sources, target=target, order=order, value=value))
    if not transfers:
        raise TaskregError(f"affinity table '{name}' has a header but no rows")
    return transfers


def read_affinity_csv(
    path_or_fileobj: str | os.PathLike[str] | IO[str],
    name: str | None = None,
    source_only: Sequence[str] = TASKONOMY_SOURCE_ONLY,
) -> AffinitySet:
    """Read and validate a ``sources,target,order,value`` table.

    Raises TaskregError (one line) for: an empty file, missing columns, a non-integer order or an
    order not equal to the number of sources, non-numeric / NaN / infinite values, duplicate
    (sources, target) rows (source order ignored), and a source-only task used as a target.
    """
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        path = os.fspath(path_or_fileobj)
        label = name or os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                transfers = _parse_rows(csv.DictReader(fh), label)
        except FileNotFoundError:
            raise TaskregError(f"affinity table file not found: {path}") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise TaskregError(f"affinity table '{label}' is not a CSV text file ({exc})") from None
    else:
        label = name or getattr(path_or_fileobj, "name", None) or "affinities"
        transfers = _parse_rows(csv.DictReader(path_or_fileobj), str(label))
    aff = AffinitySet(name=str(label), transfers=transfers, source_only=tuple(source_only))
    bad = sorted(set(aff.targets) & set(aff.source_only))
    if bad:
        raise TaskregError(f"affinity table '{label}': source-only task(s) {', '.join(bad)} appear as targets")
    return aff


def write_affinity_csv(aff: AffinitySet, path_or_fileobj: str | os.PathLike[str] | IO[str]) -> None:
    """Write ``aff`` in the ``sources,target,order,value`` format (values with full precision)."""

    def _write(fh: IO[str]) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for tr in aff.transfers:
            w.writerow([" ".join(tr.sources), tr.target, tr.order, repr(float(tr.value))])

    if isinstance(path_or_fileobj, (str, os.PathLike)):
        with open(path_or_fileobj, "w", newline="", encoding="utf-8") as fh:
            _write(fh)
    else:
        _write(path_or_fileobj)


def _builtin_setting(name: str) -> str:
    if name not in BUILTIN_SETTINGS:
        close = difflib.get_close_matches(name, list(BUILTIN_SETTINGS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TaskregError(
            f"unknown built-in affinity set '{name}' (choose from {', '.join(BUILTIN_SETTINGS)}){hint}"
        )
    return BUILTIN_SETTINGS[name]


def _read_packaged(filename: str, name: str) -> AffinitySet:
    resource = resources.files("taskreg.data") / "taskonomy" / filename
    text = resource.read_text(encoding="utf-8")
    return read_affinity_csv(io.StringIO(text), name=name, source_only=TASKONOMY_SOURCE_ONLY)


def builtin_affinity(name: str) -> AffinitySet:
    """The published AHP affinities: 'taskonomy' (full), 'taskonomy-16k' or 'taskonomy-1k'."""
    return _read_packaged(f"affinity_{_builtin_setting(name)}.csv", name)


def builtin_winrates(name: str, vs: str = "task") -> AffinitySet:
    """The published win rates for the same settings as :func:`builtin_affinity`.

    ``vs="task"``: Quality, fraction of test images on which the transfer beat the fully supervised
    network (``self`` rows are 0.5). ``vs="pixels"``: Gain, against a network trained from scratch on
    the same little data.
    """
    if vs not in ("task", "pixels"):
        raise TaskregError(f"vs must be 'task' or 'pixels', got '{vs}'")
    return _read_packaged(f"winrate_vs_{vs}_{_builtin_setting(name)}.csv", f"{name}-winrate-vs-{vs}")
