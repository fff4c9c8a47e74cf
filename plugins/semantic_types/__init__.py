"""The built-in semantic types, one module each."""

from __future__ import annotations

from tributary_core import hookimpl
from tributary_core.semantic_type import SemanticType

from .boolean import Boolean
from .categorical import Categorical
from .identifier import Identifier
from .ignored import Ignored
from .numerical import Numerical
from .text import Text
from .timestamp import Timestamp

__all__ = ["Identifier", "Numerical", "Timestamp", "Boolean", "Categorical", "Text", "Ignored"]


@hookimpl
def tributary_semantic_types() -> list[type[SemanticType]]:
    return [Identifier, Numerical, Timestamp, Boolean, Categorical, Text, Ignored]
