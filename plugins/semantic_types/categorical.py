"""``categorical``: a value from a set. Each distinct value is embedded once as the text
``"<column> is <value>"`` in the database's shared vocabulary; a cell stores its u32 index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tributary_core.semantic_type import EncodedColumn, Prepared, SemanticType

from . import _vocab
from ._arrow import is_nested


class Categorical(SemanticType):
    name = "categorical"
    description = "one of a set of values: u32 vocab index + validity"
    target_losses = ("infonce",)

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_nested(arrow_type):
            return f"expected scalar values, got {arrow_type}"
        return None

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        return _vocab.prepare_distinct(column)

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        return _vocab.fit_distinct(prepared, rows)

    def vocabulary(self, prepared: Prepared, column_name: str) -> tuple[list[str], list[str]]:
        values = prepared.extra["uniques"]
        return [f"{column_name} is {v}" for v in values], list(values)

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        return _vocab.encode_ids(prepared, vocab_ids)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        return _vocab.decode_id(cell, vocab_values)
