"""``numerical``: numbers, stored as a z-score (mean/std over non-null, finite values)."""

from __future__ import annotations

import pyarrow as pa

from tributary_core.semantic_type import SemanticType

from ._arrow import is_number


class Numerical(SemanticType):
    name = "numerical"
    description = "numbers: f32 z-score + validity"
    target_losses = ("huber",)

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_number(arrow_type) or pa.types.is_null(arrow_type):
            return None
        return f"expected a number, got {arrow_type}"
