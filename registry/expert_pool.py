"""What a ranking of ``select`` draws its experts from (:class:`ListedExperts`, :class:`CatalogExperts`) and what an
index method searches (:class:`IndexPlan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskreg.registry import catalog

if TYPE_CHECKING:
    import faiss

    from taskreg.registry.core import Core
    from taskreg.registry.index import LoggedIndex

__all__ = ["CatalogExperts", "ExpertPool", "IndexPlan", "ListedExperts"]


@dataclass(frozen=True)
class IndexPlan:
    """What an index method searches, settled (and its Faiss index loaded) before the query's probe pass, inside
    the prelude's catalog session: the probe (weights checked), the vectors the index holds ("model2vec": the
    experts' own, "task": their training tasks') and their method ("domain" or the Task2Vec estimator)."""

    probe: catalog.ProbeRecord
    vectors: str
    vec_method: str
    index: faiss.Index | LoggedIndex | None


class ListedExperts:
    """The experts a ranking may name, all listed up front (forward methods, two-stage): ``by_id`` is every one."""

    def __init__(self, experts: list[catalog.ExpertRecord]) -> None:
        self.by_id = {e.id: e for e in experts}

    def __len__(self) -> int:
        return len(self.by_id)

    def records(self, ids: list[int]) -> dict[int, catalog.ExpertRecord]:
        return {i: self.by_id[i] for i in ids if i in self.by_id}

    def others(self, exclude: set[int], limit: int | None) -> list[catalog.ExpertRecord]:
        rest = [e for e in self.by_id.values() if e.id not in exclude]
        return rest if limit is None else rest[:max(0, limit)]


class CatalogExperts:
    """The experts a ranking may name, read from the catalog as needed: an index method names the few the index
    proposes (of 10,000: listing them all cost 0.1-0.2 s of a select). Call inside a catalog session."""

    def __init__(self, core: Core, count: int) -> None:
        self.core = core
        self.count = count

    def __len__(self) -> int:
        return self.count

    def records(self, ids: list[int]) -> dict[int, catalog.ExpertRecord]:
        with self.core.read() as con:
            return {e.id: e for e in catalog.experts_by_ids(con, ids)}

    def others(self, exclude: set[int], limit: int | None) -> list[catalog.ExpertRecord]:
        with self.core.read() as con:
            if limit is None:
                return [e for e in catalog.list_experts(con) if e.id not in exclude]
            return catalog.experts_except(con, sorted(exclude), limit) if limit > 0 else []


ExpertPool = ListedExperts | CatalogExperts
