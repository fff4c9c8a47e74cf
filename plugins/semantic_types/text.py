"""``text``: free text; each distinct value is embedded (long values truncated)."""

from __future__ import annotations

import pyarrow as pa

from tributary_core.semantic_type import SemanticType

from ._arrow import is_stringish


class Text(SemanticType):
    name = "text"
    description = "free text: u32 vocab index + validity"

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_stringish(arrow_type) or pa.types.is_null(arrow_type):
            return None
        return f"expected strings, got {arrow_type}"
