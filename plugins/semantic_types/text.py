"""``text``: free text. Each distinct value is embedded itself (cut to :data:`MAX_CHARS`
characters) in the database's shared vocabulary; a cell stores its u32 index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tributary_core.semantic_type import EncodedColumn, Prepared, SemanticType

from . import _vocab
from ._arrow import is_stringish

#: Longer values are cut to this many characters before embedding (and for display).
MAX_CHARS = 512


class Text(SemanticType):
    name = "text"
    description = "free text: u32 vocab index + validity"

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_stringish(arrow_type) or pa.types.is_null(arrow_type):
            return None
        return f"expected strings, got {arrow_type}"

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        return _vocab.prepare_distinct(column, max_chars=MAX_CHARS)

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        return _vocab.fit_distinct(prepared, rows)

    def vocabulary(self, prepared: Prepared, column_name: str) -> tuple[list[str], list[str]]:
        values = prepared.extra["uniques"]
        return list(values), list(values)

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        return _vocab.encode_ids(prepared, vocab_ids)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        return _vocab.decode_id(cell, vocab_values)
