"""Persistence and the public facade: :class:`Registry` ties the catalog, MLflow and Faiss together.

Each group of operations lives in its own module as a mixin; ``Registry`` is their union::

    from taskreg.registry import Registry
    reg = Registry.init("./.taskreg")        # or Registry.open(...)
    reg.list_tasks()
"""

from __future__ import annotations

from taskreg.registry.core import CheckReport, default_root
from taskreg.registry.recovery import RecoveryOps


class Registry(RecoveryOps):
    """The registry facade used by the CLI and by Python callers."""


__all__ = ["CheckReport", "Registry", "default_root"]
