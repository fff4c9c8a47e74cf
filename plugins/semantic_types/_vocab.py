"""Shared by the two embedded types: distinct values -> vocabulary ids -> per-cell u32 index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.semantic_type import EncodedColumn, Prepared, SemanticType

from ._arrow import distinct, plain, validity


@numba.njit(cache=True, nogil=True)
def gather_ids(codes: np.ndarray, valid: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = ids[codes[i]]`` where valid, else 0."""
    for i in range(codes.shape[0]):
        out[i] = ids[codes[i]] if valid[i] else np.uint32(0)


def prepare_distinct(column: pa.ChunkedArray, *, max_chars: int | None = None) -> Prepared:
    """Distinct values as strings (``extra["uniques"]``), per-cell codes as ``values``."""
    # a dictionary-typed column is decoded first; a plain one stays in its chunks
    arr = plain(column) if pa.types.is_dictionary(column.type) else column
    if pa.types.is_null(arr.type):
        n = len(arr)
        return Prepared(np.zeros(n, np.int64), np.zeros(n, np.bool_), extra={"uniques": []})
    valid = validity(arr)
    uniques, codes = distinct(arr)
    strings = uniques if pa.types.is_string(uniques.type) else pc.cast(uniques, pa.string())
    if max_chars is not None:
        strings = pc.utf8_slice_codeunits(strings, 0, max_chars)
    return Prepared(codes, valid, extra={"uniques": strings.to_pylist()})


class EmbeddedType(SemanticType):
    """A type whose distinct values are embedded in the shared vocabulary and whose cells store
    a u32 index into it. Subclasses choose the embedded text of a value and a length cap."""

    #: Values are cut to this many characters before embedding (None: no cap).
    max_chars: ClassVar[int | None] = None

    def text_for(self, column_name: str, value: str) -> str:
        """The string embedded for ``value`` of column ``column_name``."""
        raise NotImplementedError

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        return prepare_distinct(column, max_chars=self.max_chars)

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        n_uniques = len(prepared.extra["uniques"])
        if rows is None:  # every distinct value occurs in some valid cell
            return {"count": int(prepared.valid.sum()), "n_distinct": n_uniques}
        mask = prepared.valid & rows
        seen = np.bincount(prepared.values[mask], minlength=n_uniques)
        return {"count": int(mask.sum()), "n_distinct": int(np.count_nonzero(seen))}

    def vocabulary(self, prepared: Prepared, column_name: str) -> tuple[list[str], list[str]]:
        values = prepared.extra["uniques"]
        return [self.text_for(column_name, v) for v in values], list(values)

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        if vocab_ids is None:
            raise ValueError("an embedded type needs the vocabulary ids of its distinct values")
        out = np.empty(len(prepared), dtype=np.uint32)
        ids = vocab_ids if len(vocab_ids) else np.zeros(1, np.uint32)
        gather_ids(prepared.values, prepared.valid, ids, out)
        return EncodedColumn({"index": out}, prepared.valid.copy())

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        return vocab_values[int(cell["index"])]

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        """Class codes: the position of ``str(value)`` among the sorted distinct values given
        (so codes compare only within one call); NaN for None."""
        strings = [None if v is None else str(v) for v in values]
        codes = {v: float(i) for i, v in enumerate(sorted({v for v in strings if v is not None}))}
        return np.array([np.nan if v is None else codes[v] for v in strings], dtype=np.float64)
