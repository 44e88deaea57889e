"""taskreg: a database-backed meta-learning model registry.

Task2Vec / Model2Vec pick the best feature extractor for a dataset; Taskonomy transfer
tables and a Binary Integer Program choose which tasks to supervise under a budget.

The Python API is the :class:`~taskreg.registry.Registry` facade::

    from taskreg import Registry
    reg = Registry.open("./.taskreg")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskreg.errors import TaskregError

__version__ = "0.1.0"
__all__ = ["Registry", "TaskregError", "__version__"]

if TYPE_CHECKING:
    from taskreg.registry import Registry


def __getattr__(name: str) -> Any:
    # Lazy, so `import taskreg` (and `taskreg --help`) does not pull in duckdb/mlflow/torch.
    if name == "Registry":
        from taskreg.registry import Registry

        return Registry
    raise AttributeError(name)
