"""``categorical``: a value from a small set; each distinct value is embedded as
``"<column> is <value>"`` once, and cells store its index in the shared vocabulary."""

from __future__ import annotations

import pyarrow as pa

from tributary_core.semantic_type import SemanticType

from ._arrow import is_nested


class Categorical(SemanticType):
    name = "categorical"
    description = "one of a set of values: u32 vocab index + validity"
    target_losses = ("infonce",)

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_nested(arrow_type):
            return f"expected scalar values, got {arrow_type}"
        return None
