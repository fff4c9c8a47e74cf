"""``count``: non-negative integer counts (visits, items, goals), stored as ``log1p(count)``.

A count column is often heavy-tailed: a z-score of the raw value lets a few huge counts squash
the rest. ``log1p`` keeps small counts apart and large ones in range, and needs no statistics.
Negative, fractional and non-finite values are not counts: validation reports them, and
preprocessing stores them as nulls (counted as invalid); as task labels (the leakage check) they
read as NaN. A prediction in the stored scale (``log1p``) is shown as a count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core import EncodedColumn, Prepared, SemanticType


class Count(SemanticType):
    name = "count"
    description = "non-negative integer counts: f32 log1p(count) + validity"
    target_losses = ("poisson",)
    batch_slot = "number"

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        t = arrow_type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t):
            return None
        return f"expected integer counts, got {arrow_type}"

    def check_column(self, column: pa.ChunkedArray) -> str | None:
        values, valid = _read(column)
        bad = valid & ~_is_count(values)
        if bad.any():
            return f"{int(bad.sum())} value(s) are not non-negative integers, e.g. {float(values[bad][0])!r}"
        return None

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        values, valid = _read(column)
        ok = valid & _is_count(values)
        return Prepared(np.where(ok, values, 0.0), ok, n_invalid=int((valid & ~ok).sum()))

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        keep = prepared.valid if rows is None else prepared.valid & rows
        counts = prepared.values[keep]
        return {"count": int(keep.sum()), "mean": float(counts.mean()) if len(counts) else 0.0,
                "max": float(counts.max()) if len(counts) else 0.0}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        value = np.log1p(prepared.values).astype(np.float32)
        return EncodedColumn({"value": np.where(prepared.valid, value, np.float32(0))}, prepared.valid.copy())

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any], vocab_values: Sequence[str]) -> Any:
        return int(round(math.expm1(float(cell["value"]))))

    def decode_prediction(self, values: np.ndarray, stats: Mapping[str, Any]) -> pa.Array:
        # a head predicting the stored log1p(count): back to a (fractional) count
        return pa.array(np.expm1(np.asarray(values, dtype=np.float64)))

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        numbers = super().label_values(values)  # float(), NaN where unreadable
        return np.where(_is_count(numbers), numbers, np.nan)


def _read(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    if pa.types.is_null(column.type):
        return np.zeros(len(column)), np.zeros(len(column), dtype=np.bool_)
    as_float = pc.cast(column, pa.float64(), safe=False)
    valid = np.asarray(pc.is_valid(as_float).to_numpy(zero_copy_only=False), dtype=np.bool_)
    values = np.asarray(pc.fill_null(as_float, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, valid & ~np.isnan(values)


def _is_count(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (np.floor(values) == values)
