"""Dataset sources, one module per kind, and the dispatch table :data:`KINDS`.

Modelled on the packaged builders of Hugging Face ``datasets`` (``datasets/packaged_modules``: one
module per format and a table from name/extension to module). A source string is matched against the
table in order: a kind with a ``scheme`` takes ``SCHEME:LOCATION`` strings, a kind with a ``suffix``
takes paths ending so, and the kind with neither (the image folder) takes any other path. The
built-in families have a table of their own, ``builtin.BUILTINS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from taskreg.data.dataset import RawData
from taskreg.data.sources import builtin, folder, npz


@dataclass(frozen=True)
class SourceKind:
    """One row of the dispatch table.

    load : (source string, location) -> the data before selectors; every problem is a ``fail(source, ...)``
    scheme : the kind takes ``SCHEME:LOCATION`` strings (case-insensitive scheme)
    resolve : for a scheme, (source, text after 'SCHEME:') -> the canonical location (raises if unknown)
    suffix : the kind takes paths whose name ends with this (case-insensitive); paths are made absolute
    """

    load: Callable[[str, str], RawData]
    scheme: str = ""
    resolve: Callable[[str, str], str] | None = None
    suffix: str = ""


KINDS: dict[str, SourceKind] = {
    "builtin": SourceKind(builtin.load, scheme=builtin.SCHEME, resolve=builtin.resolve),
    "npz": SourceKind(npz.load, suffix=".npz"),
    "folder": SourceKind(folder.load),  # any other path
}

IMAGE_EXTENSIONS = folder.IMAGE_EXTENSIONS
BUILTINS = builtin.BUILTINS
list_builtins = builtin.list_builtins

__all__ = ["BUILTINS", "IMAGE_EXTENSIONS", "KINDS", "SourceKind", "list_builtins"]
