"""Errors that describe a user's mistake rather than a bug.

The CLI turns every :class:`TributaryError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TributaryError", "PluginError", "MetadataError", "Problem"]


class TributaryError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""


class PluginError(TributaryError):
    """A plugin could not be found, loaded, or clashes with another plugin."""


class Problem:
    """One finding of validation: where it is (a JSON path) and what is wrong."""

    __slots__ = ("path", "message", "severity")

    def __init__(self, path: str, message: str, *, severity: str = "error") -> None:
        assert severity in ("error", "warning"), severity
        self.path = path
        self.message = message
        self.severity = severity

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def __repr__(self) -> str:
        return f"Problem({self.path!r}, {self.message!r}, severity={self.severity!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.path, self.message, self.severity) == (
            other.path,
            other.message,
            other.severity,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.message, self.severity))


class MetadataError(TributaryError):
    """A metadata file is unreadable or invalid; carries every problem found, one per line."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))
