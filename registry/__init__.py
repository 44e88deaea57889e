"""Persistence and the public facade: :class:`Registry` ties the catalog, MLflow and Faiss together.

``Registry`` (registry/facade.py) owns a core and one service per concern; see that module for the map::

    from taskreg.registry import Registry
    reg = Registry.init("./.taskreg")        # or Registry.open(...)
    reg.list_tasks()
"""

from __future__ import annotations

from taskreg.registry.core import default_root
from taskreg.registry.facade import Registry
from taskreg.registry.maintenance import CheckReport

__all__ = ["CheckReport", "Registry", "default_root"]
