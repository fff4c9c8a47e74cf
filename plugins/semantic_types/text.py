"""``text``: free text. Each distinct value is embedded itself (cut to :data:`MAX_CHARS`
characters) in the database's shared vocabulary; a cell stores its u32 index."""

from __future__ import annotations

import pyarrow as pa

from ._arrow import is_stringish
from ._vocab import EmbeddedType

#: Longer values are cut to this many characters before embedding (and for display).
MAX_CHARS = 512


class Text(EmbeddedType):
    name = "text"
    batch_slot = "vocab"
    tabular_feature = False  # free text: its vocabulary ids are not categories
    description = "free text: u32 vocab index + validity"
    max_chars = MAX_CHARS

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_stringish(arrow_type) or pa.types.is_null(arrow_type):
            return None
        return f"expected strings, got {arrow_type}"

    def text_for(self, column_name: str, value: str) -> str:
        return value
