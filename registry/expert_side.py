"""The expert side of a registry: the collaborators that fitting Model2Vec and selecting experts both work with.

:class:`ExpertSide` is built once by the facade (registry/facade.py) and given to
:class:`~taskreg.registry.model2vec_fitting.Model2VecFitter` and
:class:`~taskreg.registry.expert_selection.SelectionService` in their constructors: each service still receives its
collaborators explicitly, and the six they share are declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskreg.registry.core import Core
from taskreg.registry.expert_evaluation import ExpertEvaluator
from taskreg.registry.experts import ExpertService
from taskreg.registry.index import IndexManager
from taskreg.registry.probes import ProbeService
from taskreg.registry.tasks import TaskService


@dataclass(frozen=True)
class ExpertSide:
    """Core, index manager, probes, tasks, experts and the evaluator of one registry (see the module docstring)."""

    core: Core
    index_manager: IndexManager
    probes: ProbeService
    tasks: TaskService
    experts: ExpertService
    evaluator: ExpertEvaluator
