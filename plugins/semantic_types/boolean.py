"""``boolean``: true/false, from Arrow booleans, 0/1 integers or yes/no-like strings."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.semantic_type import SemanticType

from ._arrow import base_type, is_stringish

#: Strings read as booleans (compared case-insensitively, surrounding spaces ignored).
TRUE_STRINGS = ("true", "t", "yes", "y", "1")
FALSE_STRINGS = ("false", "f", "no", "n", "0")


class Boolean(SemanticType):
    name = "boolean"
    description = "true/false: bit + validity"
    target_losses = ("bce",)

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        t = base_type(arrow_type)
        if pa.types.is_boolean(t) or pa.types.is_integer(t) or is_stringish(t) or pa.types.is_null(t):
            return None
        return f"expected booleans, 0/1 integers or yes/no strings, got {arrow_type}"

    def check_column(self, column: pa.ChunkedArray) -> str | None:
        t = base_type(column.type)
        if pa.types.is_integer(t):
            bad = pc.filter(column, pc.invert(pc.is_in(column, pa.array([0, 1], t))))
        elif is_stringish(t):
            normalized = pc.utf8_lower(pc.utf8_trim_whitespace(column.cast(pa.string())))
            known = pa.array(TRUE_STRINGS + FALSE_STRINGS)
            bad = pc.filter(column, pc.invert(pc.is_in(normalized, known)))
        else:
            return None
        bad = bad.drop_null()
        if len(bad):
            return f"{len(bad)} value(s) are not a boolean, e.g. {bad[0].as_py()!r}"
        return None
