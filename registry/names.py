"""Validation of the names users give to tasks, experts, probes and affinity sets."""

from __future__ import annotations

import re

from taskreg.errors import TaskregError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe identifier (letters, digits, ``._+=-``; at most 128 characters).

    Names become MLflow model names and file names, so path separators, whitespace, quotes and other
    SQL or shell metacharacters are refused.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 40 else f"{str(name)[:40]}…"
        raise TaskregError(
            f"invalid {what} {shown!r}: use 1-128 letters, digits or . _ + = - (starting with a letter or digit)"
        )
    return name
