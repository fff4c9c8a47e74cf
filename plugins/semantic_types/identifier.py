"""``identifier``: keys and other opaque ids. Only presence is encoded, never the value: the
relations a key makes are in the graph, and its raw value means nothing to the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tributary_core.semantic_type import (
    ColumnEncoder,
    EncodedColumn,
    Prepared,
    SemanticType,
    Vocabulary,
)

from ._arrow import base_type, is_number, is_stringish, plain, validity


class Identifier(SemanticType):
    name = "identifier"
    description = "keys and opaque ids: only present/absent is encoded"

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        t = base_type(arrow_type)
        if is_number(t) or is_stringish(t) or pa.types.is_binary(t) or pa.types.is_null(t):
            return None
        return f"expected an integer or string key, got {arrow_type}"

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        return Prepared(None, validity(plain(column)))

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        mask = prepared.valid if rows is None else prepared.valid & rows
        return {"count": int(mask.sum())}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        return EncodedColumn({}, prepared.valid.copy())

    def column_encoder(self, column_name: str) -> ColumnEncoder:
        return _IdentifierColumn(self)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        return "(present)"

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        """1.0 where a key is present, NaN where it is null: as in the model, only presence."""
        return np.array([np.nan if v is None else 1.0 for v in values], dtype=np.float64)


class _IdentifierColumn(ColumnEncoder):
    """One pass: the count of present keys, each cell its presence."""

    one_pass = True

    def __init__(self, stype: Identifier) -> None:
        super().__init__()
        self._stype = stype
        self._count = 0

    def fit(self, prepared: Prepared, rows: np.ndarray | None) -> None:
        super().fit(prepared, rows)
        mask = prepared.valid if rows is None else prepared.valid & rows
        self._count += int(mask.sum())

    def stats(self) -> dict[str, Any]:
        return {"count": self._count}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any] | None,
               vocab: Vocabulary) -> EncodedColumn:
        return self._stype.encode(prepared, {})
