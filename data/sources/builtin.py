"""The ``builtin:NAME`` scheme: real data that ships inside installed packages, one module per family.

Each family module has a ``DESCRIPTION`` and a ``load() -> RawData`` (cached in-process; ``load`` of the
package copies before selectors run). A new built-in family is one module plus one entry in
:data:`BUILTINS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from taskreg.data.dataset import RawData
from taskreg.data.sources import animals, digits, faces, mnist5k, patches
from taskreg.data.validation import fail

SCHEME = "builtin"


@dataclass(frozen=True)
class Builtin:
    """One built-in source: what ``taskreg data builtins`` says about it and how to load it."""

    description: str
    load: Callable[[], RawData]


BUILTINS: dict[str, Builtin] = {
    "animals": Builtin(animals.DESCRIPTION, animals.load),
    "digits": Builtin(digits.DESCRIPTION, digits.load),
    "faces": Builtin(faces.DESCRIPTION, faces.load),
    "mnist5k": Builtin(mnist5k.DESCRIPTION, mnist5k.load),
    "patches": Builtin(patches.DESCRIPTION, patches.load),
}


def list_builtins() -> list[str]:
    """All built-in sources, as full source strings (e.g. 'builtin:digits'), sorted."""
    return [f"{SCHEME}:{name}" for name in sorted(BUILTINS)]


def resolve(source: str, name: str) -> str:
    """The canonical (lower-case) builtin name; TaskregError for an unknown one."""
    name = name.strip().lower()
    if name not in BUILTINS:
        fail(source, f"unknown builtin {name!r}; known: {', '.join(list_builtins())}")
    return name


def load(source: str, name: str) -> RawData:
    """The data of builtin ``name`` (already resolved by :func:`resolve`)."""
    return BUILTINS[name].load()
