"""The package's one progress-callback type, shared by every layer (dependency-free, like ``errors``).

Not named ``types.py``: the repository root is the package directory, so ``python -m pytest`` run from it puts the
root on ``sys.path``, where a ``types.py`` would shadow the standard library's ``types`` module.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress"]

Progress = Callable[[int, int], None] | None
"""An optional callback called with (done, total) work units; ``None`` reports nothing."""
