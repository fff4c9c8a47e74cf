"""``categorical``: a value from a set. Each distinct value is embedded once as the text
``"<column> is <value>"`` in the database's shared vocabulary; a cell stores its u32 index."""

from __future__ import annotations

import pyarrow as pa

from ._arrow import is_nested
from ._vocab import EmbeddedType


class Categorical(EmbeddedType):
    name = "categorical"
    batch_slot = "vocab"
    description = "one of a set of values: u32 vocab index + validity"
    target_losses = ("infonce",)
    # A set's values repeat: a string column is read with its parquet dictionary pages and
    # numbered through the codes. (Not text: free text rarely repeats, its writer falls back
    # from a dictionary, and reading it as one would make Arrow hash every value.)
    reads_dictionary = True

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_nested(arrow_type):
            return f"expected scalar values, got {arrow_type}"
        return None

    def text_for(self, column_name: str, value: str) -> str:
        return f"{column_name} is {value}"
