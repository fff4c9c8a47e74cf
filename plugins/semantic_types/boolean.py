"""``boolean``: true/false, from Arrow booleans, 0/1 integers or yes/no-like strings.

Stored as a bit plus validity. Statistics: the count of valid cells and the share that is true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.semantic_type import (
    ColumnEncoder,
    EncodedColumn,
    Prepared,
    SemanticType,
    Vocabulary,
)

from ._arrow import base_type, is_stringish, plain, validity

#: Strings read as booleans (compared case-insensitively, surrounding spaces ignored). The one
#: home of these words: the metadata draft proposes ``boolean`` for strings that are all one of
#: them (through :attr:`Boolean.true_strings` and :attr:`Boolean.false_strings`).
TRUE_STRINGS = ("true", "t", "yes", "y", "1")
FALSE_STRINGS = ("false", "f", "no", "n", "0")
_TRUTH = {**dict.fromkeys(TRUE_STRINGS, 1.0), **dict.fromkeys(FALSE_STRINGS, 0.0)}


def _truth(arr: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """``(is true, is a boolean at all)`` per cell of a plain array; the second is None for
    Arrow booleans, which are all booleans."""
    t = arr.type
    if pa.types.is_boolean(t):
        return arr, None
    if pa.types.is_integer(t):
        return pc.equal(arr, pa.scalar(1, t)), pc.is_in(arr, pa.array([0, 1], t))
    if is_stringish(t):
        normalized = pc.utf8_lower(pc.utf8_trim_whitespace(arr.cast(pa.string())))
        return (pc.is_in(normalized, pa.array(TRUE_STRINGS)),
                pc.is_in(normalized, pa.array(TRUE_STRINGS + FALSE_STRINGS)))
    raise TypeError(f"expected booleans, 0/1 integers or yes/no strings, got {t}")


def to_bool(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, int]:
    """``(value, valid, n_invalid)``: cells that are not a boolean are invalid (and counted)."""
    arr = plain(column)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.bool_), np.zeros(len(arr), np.bool_), 0
    present = validity(arr)
    truth, known = _truth(arr)
    value = np.asarray(truth.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.bool_)
    valid = present
    n_invalid = 0
    if known is not None:
        ok = np.asarray(known.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.bool_)
        n_invalid = int((present & ~ok).sum())
        valid = present & ok
    return value & valid, valid, n_invalid


class Boolean(SemanticType):
    name = "boolean"
    batch_slot = "boolean"
    description = "true/false: bit + validity"
    target_losses = ("bce",)
    #: The strings read as true and as false (:data:`TRUE_STRINGS`, :data:`FALSE_STRINGS`).
    true_strings = TRUE_STRINGS
    false_strings = FALSE_STRINGS

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        t = base_type(arrow_type)
        if pa.types.is_boolean(t) or pa.types.is_integer(t) or is_stringish(t) or pa.types.is_null(t):
            return None
        return f"expected booleans, 0/1 integers or yes/no strings, got {arrow_type}"

    def check_column(self, column: pa.ChunkedArray) -> str | None:
        arr = plain(column)
        if pa.types.is_null(arr.type):
            return None
        _, known = _truth(arr)
        if known is None:
            return None
        bad = pc.filter(arr, pc.invert(known)).drop_null()
        if len(bad):
            return f"{len(bad)} value(s) are not a boolean, e.g. {bad[0].as_py()!r}"
        return None

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        value, valid, n_invalid = to_bool(column)
        return Prepared(value, valid, n_invalid=n_invalid)

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        mask = prepared.valid if rows is None else prepared.valid & rows
        count = int(mask.sum())
        n_true = int((prepared.values & mask).sum())
        return {"count": count, "p_true": n_true / count if count else 0.0}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        return EncodedColumn({"value": prepared.values.copy()}, prepared.valid.copy())

    def column_encoder(self, column_name: str) -> ColumnEncoder:
        return _BooleanColumn(self)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        return bool(cell["value"])

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        """1.0 for true, 0.0 for false: booleans, the numbers 0 and 1, and the strings of
        :data:`TRUE_STRINGS` / :data:`FALSE_STRINGS` (any case, spaces ignored); NaN otherwise."""
        out = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            if isinstance(value, (bool, np.bool_)):
                out[i] = float(value)
            elif isinstance(value, str):
                out[i] = _TRUTH.get(value.strip().lower(), np.nan)
            elif isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
                out[i] = float(value)
        return out


class _BooleanColumn(ColumnEncoder):
    """One pass: counts of valid and true cells, each cell its own bit."""

    one_pass = True

    def __init__(self, stype: Boolean) -> None:
        super().__init__()
        self._stype = stype
        self._count = self._true = 0

    def fit(self, prepared: Prepared, rows: np.ndarray | None) -> None:
        super().fit(prepared, rows)
        mask = prepared.valid if rows is None else prepared.valid & rows
        self._count += int(mask.sum())
        self._true += int((prepared.values & mask).sum())

    def stats(self) -> dict[str, Any]:
        return {"count": self._count,
                "p_true": self._true / self._count if self._count else 0.0}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any] | None,
               vocab: Vocabulary) -> EncodedColumn:
        return self._stype.encode(prepared, {})
