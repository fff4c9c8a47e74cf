"""JSON paths for error messages: ``$.tables.flights.columns['2B'].stype``."""

from __future__ import annotations

import re

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BRACKET = re.compile(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def jpath(*parts: str | int) -> str:
    """A JSON path from ``$``: identifiers as ``.name``, anything else as ``['na.me']``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


def tidy_cattrs_path(path: str) -> str:
    """Rewrite cattrs' ``$.tables['flights']`` into the ``$.tables.flights`` form of jpath."""

    def repl(match: re.Match[str]) -> str:
        key = match.group(1)[1:-1]
        return f".{key}" if _IDENT.match(key) else match.group(0)

    return _BRACKET.sub(repl, path)
