"""Affinity sets, win rates and transfer policies in the catalog.

Affinity sets are rows of ``affinities`` under a name in ``affinity_sets``. The published Taskonomy
tables ship inside the package and are loaded into the catalog the first time they are asked for
(``taskonomy``, ``taskonomy-16k``, ``taskonomy-1k``), together with their published win rates
(Quality: b = 'self'; Gain: b = 'pixels') in ``winrates``. Policies are solved on demand by the BIP
and recorded in ``policies``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.catalog import AffinitySetSummary, WinRate
from taskreg.registry.core import Core
from taskreg.registry.names import check_name

if TYPE_CHECKING:
    from taskreg.selection.affinity_sets import AffinitySet
    from taskreg.selection.bip import Policy


class PolicyService:
    """Affinity sets, win rates and transfer policies of one registry."""

    def __init__(self, core: Core) -> None:
        self.core = core

    # ------------------------------------------------------------------ affinity sets
    def affinity_names(self) -> list[AffinitySetSummary]:
        """Every stored affinity set by name, then the built-in sets not stored yet (their sizes unknown: None)."""
        from taskreg.selection.affinity_sets import BUILTIN_SETTINGS

        with self.core.read() as con:
            out = catalog.affinity_set_summaries(con)
        stored = {s.name for s in out}
        out += [AffinitySetSummary(name=n, origin="builtin (not loaded yet)", transfers=None, targets=None,
                                   max_order=None) for n in BUILTIN_SETTINGS if n not in stored]
        return out

    def affinity(self, name: str, *, load: bool = True) -> AffinitySet:
        """An affinity set from the catalog. A built-in set not stored yet is loaded into the catalog on first
        use; with ``load=False``, or on a registry this user cannot write, it is read from the package's
        tables without writing anything."""
        from taskreg.selection.affinity_sets import BUILTIN_SETTINGS, AffinitySet, builtin_affinity

        with self.core.read() as con:
            stored = catalog.get_affinity_set(con, name)
        if stored is None:
            if name in BUILTIN_SETTINGS:
                if not load or self.core.read_only:  # the same order as the catalog query below: identical BIP input
                    packaged = builtin_affinity(name)
                    ordered = sorted(packaged.transfers, key=lambda t: (t.target, t.order, list(t.sources)))
                    return AffinitySet(name=name, transfers=ordered, source_only=packaged.source_only)
                self._load_builtin(name)
                return self.affinity(name)
            known = ", ".join(sorted({s.name for s in self.affinity_names()}))
            raise TaskregError(f"unknown affinity set {name!r} (known: {known})")
        return stored

    def _load_builtin(self, name: str) -> None:
        from taskreg.selection.affinity_sets import builtin_affinity, builtin_winrates

        aff = builtin_affinity(name)
        quality, gain = builtin_winrates(name, vs="task"), builtin_winrates(name, vs="pixels")
        with self.core.write() as con:
            if catalog.affinity_set_exists(con, name):
                return  # another process loaded it meanwhile
            catalog.insert_affinity_set(con, aff, "builtin")
            for table, b in ((quality, "self"), (gain, "pixels")):
                rows = {(tr.target, _key(tr.sources)): tr.value for tr in table.transfers}
                catalog.insert_winrates(con, name, [WinRate(target=t, a=a, b=b, value=v) for (t, a), v in rows.items()])

    def import_affinity(self, path: Path, name: str, *, source_only: Sequence[str] | None = None,
                        replace: bool = False) -> AffinitySet:
        """Load a table in the published format (sources,target,order,value) under ``name``."""
        from taskreg.selection.affinity_sets import BUILTIN_SETTINGS, TASKONOMY_SOURCE_ONLY, read_affinity_csv

        check_name(name, "affinity set name")
        if name in BUILTIN_SETTINGS:
            raise TaskregError(f"{name!r} is the name of a built-in affinity set; choose another name")
        if not Path(path).is_file():
            raise TaskregError(f"affinity file {path} not found")
        aff = read_affinity_csv(path, name)
        if source_only is not None:
            aff.source_only = tuple(source_only)
        elif not set(TASKONOMY_SOURCE_ONLY) & set(aff.tasks):
            aff.source_only = ()
        with self.core.write() as con:
            if catalog.affinity_set_exists(con, name) and not replace:
                raise TaskregError(f"affinity set {name!r} already exists (use --replace)")
            catalog.delete_affinity_set(con, name)
            catalog.insert_affinity_set(con, aff, f"import:{Path(path).name}")
        return aff

    def remove_affinity(self, name: str) -> None:
        self.affinity(name)
        with self.core.write() as con:
            catalog.delete_affinity_set(con, name)

    # ------------------------------------------------------------------ policies
    def policy(
        self, affinity: str, budget: float, *, max_order: int | None = None, targets: Sequence[str] | None = None,
        source_only: Sequence[str] | None = None, importance: Mapping[str, float] | None = None,
        cost: Mapping[str, float] | None = None, pin_supervised: bool = True, free_source_only: bool = False,
        record: bool = True,
    ) -> Policy:
        """Solve the transfer policy with the BIP and record it in ``policies`` (unless ``record`` is False or
        this user cannot write the registry: a shared read-only registry still answers).

        Every task trained from scratch costs 1 (source-only ones included, as in the paper) unless ``cost``
        says otherwise; ``free_source_only`` makes the source-only tasks free (the budget counts labels)."""
        from taskreg.selection.bip import solve_policy

        if not isinstance(budget, int | float) or not math.isfinite(budget) or budget < 0:
            raise TaskregError(f"budget must be a finite number >= 0, got {budget}")
        # Solve before writing anything: a refused request (bad --max-order, unknown target, budget too small)
        # leaves the catalog as it was, even for a built-in set that is not stored yet.
        aff = self.affinity(affinity, load=False)
        pol = solve_policy(aff, float(budget), max_order=max_order, targets=targets, source_only=source_only,
                           importance=importance, cost=cost, pin_supervised=pin_supervised,
                           free_source_only=free_source_only)
        if record and not self.core.read_only:
            request: dict[str, object] = {
                "targets": list(targets) if targets else None, "source_only": list(source_only or []) or None,
                "importance": dict(importance or {}), "cost": dict(cost or {}),
                "pin_supervised": pin_supervised, "free_source_only": free_source_only}
            with self.core.write() as con:
                self.affinity(affinity)  # a built-in set is stored in the same transaction as the policy
                catalog.insert_policy(con, affinity, float(budget), pol, request)
        return pol

    # ------------------------------------------------------------------ win rates
    def winrates(self, dictionary: str, target: str, vs: str = "scratch") -> list[WinRate]:
        """Win rate of every option (``a``) against ``vs`` (``b``) for one target, best first."""
        if vs not in ("scratch", "self", "pixels"):
            raise TaskregError(f"--vs must be scratch or self, got {vs!r}")
        with self.core.read() as con:
            rows = catalog.target_winrates(con, dictionary, target, vs)
            if not rows and vs == "scratch":  # the published tables call the scratch baseline 'pixels'
                rows = catalog.target_winrates(con, dictionary, target, "pixels")
            if not rows:
                targets = catalog.winrate_targets(con, dictionary)
                if not targets:
                    raise TaskregError(f"no win rates for {dictionary!r} (build it or use a built-in affinity set)")
                raise TaskregError(f"no win rates for target {target!r} in {dictionary!r}; targets: "
                                   f"{', '.join(targets)}")
        return rows

    def first_order_winrates(self, dictionary: str, targets: Sequence[str], sources: Sequence[str]) -> np.ndarray:
        """(T, S) first-order win rates against scratch/pixels: the matrix before AHP (NaN where absent)."""
        with self.core.read() as con:
            rows = catalog.first_order_winrates(con, dictionary)
        t_pos = {t: i for i, t in enumerate(targets)}
        s_pos = {s: j for j, s in enumerate(sources)}
        out = np.full((len(targets), len(sources)), np.nan)
        for w in rows:
            if w.target in t_pos and w.a in s_pos:
                out[t_pos[w.target], s_pos[w.a]] = w.value
        return out


def _key(sources: Sequence[str]) -> str:
    return "+".join(sources)
