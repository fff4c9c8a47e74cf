"""``ignored``: a column that is read by nothing: not encoded, not embedded, not sampled."""

from __future__ import annotations

from tributary_core.semantic_type import SemanticType


class Ignored(SemanticType):
    name = "ignored"
    description = "skipped entirely"
    is_ignored = True
