"""``identifier``: keys and other opaque ids. Only presence is encoded, never the value."""

from __future__ import annotations

import pyarrow as pa

from tributary_core.semantic_type import SemanticType

from ._arrow import base_type, is_number, is_stringish


class Identifier(SemanticType):
    name = "identifier"
    description = "keys and opaque ids: only present/absent is encoded"

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        t = base_type(arrow_type)
        if is_number(t) or is_stringish(t) or pa.types.is_binary(t) or pa.types.is_null(t):
            return None
        return f"expected an integer or string key, got {arrow_type}"
