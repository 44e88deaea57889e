"""Which torch devices exist here: one validator shared by every ``--device`` option.

``check_device("cuda")`` on a CPU-only build raises a one-line :class:`TaskregError` instead of the
64-line traceback torch produces at the first ``.to("cuda")``. ``cpu`` is accepted without importing
torch, so the CLI's default costs nothing.
"""

from __future__ import annotations

from typing import Any

from taskreg.errors import TaskregError

SUGGESTION = "use --device cpu"


def check_device(name: str) -> str:
    """Return ``name`` when torch can run on that device here; raise TaskregError saying why not.

    Accepts ``cpu``, ``cuda``, ``cuda:N``, ``mps`` and any other device type whose torch backend
    reports itself available (``xpu`` ...); an unparsable name (``banana``) or an unavailable device
    (``cuda`` on a CPU build, ``cuda:3`` on a one-GPU machine) is refused.
    """
    if name in ("cpu", "cpu:0"):
        return name
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise TaskregError(f"device {name!r} is not a torch device (cpu, cuda, cuda:N, mps); {SUGGESTION}") from None
    reason = _unavailable(torch, dev)
    if reason:
        raise TaskregError(f"device {name!r} is not available here ({reason}); {SUGGESTION}")
    return name


def device_type(name: str) -> str:
    """The type of a ``--device`` argument (``"cpu"``, ``"cuda"``, ...), as ``torch.device(name).type``; ``cpu``
    without importing torch (a cached query needs no torch at all)."""
    if name in ("cpu", "cpu:0"):
        return "cpu"
    from taskreg.embedders.probes import to_device

    return to_device(name).type


def _unavailable(torch: Any, dev: Any) -> str | None:  # torch module and torch.device, imported lazily
    """Why ``dev`` cannot be used (None when it can)."""
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            return "torch built without CUDA"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"{count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        return None
    if dev.type == "mps":
        if not torch.backends.mps.is_built():
            return "torch built without MPS"
        return None if torch.backends.mps.is_available() else "no Apple GPU (MPS) is available"
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and available():
        count = getattr(backend, "device_count", lambda: 1)()
        if dev.index is not None and dev.index >= count:
            return f"{count} {dev.type} device(s)"
        return None
    return f"no {dev.type} device is available to this torch build"
