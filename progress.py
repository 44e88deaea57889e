"""The package's one progress-callback type, shared by every layer (dependency-free, like ``errors``).

Not named ``types.py``: the repository root is the package directory, so ``python -m pytest`` run from it puts the
root on ``sys.path``, where a ``types.py`` would shadow the standard library's ``types`` module.

Honest progress (issue 16): a callback is called with real units of work and their total (``total >= 1``), never
an unknown total. A step whose amount of work is not known says what it does instead: :func:`stage` hands a
description to a callback that has a ``describe(text)`` method (the CLI's bar shows it as a spinner until the next
count arrives); plain callables ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "stage"]

Progress = Callable[[int, int], None] | None
"""An optional callback called with (done, total) work units; ``None`` reports nothing."""


def stage(progress: Progress, text: str) -> None:
    """Tell ``progress`` what runs now (``progress.describe(text)`` when it has that method, else nothing)."""
    describe = getattr(progress, "describe", None)
    if callable(describe):
        describe(text)
