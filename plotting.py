"""The one lazy pyplot import of the package.

matplotlib takes a noticeable fraction of a second to import, and ``taskreg --help`` must not load it,
so every module that draws calls :func:`pyplot` inside the drawing function instead of importing
``matplotlib.pyplot`` at the top. The Agg backend writes files and never opens a window, so figures
work on headless machines and in worker processes alike.
"""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` with the non-interactive Agg backend selected (imported on first call)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
