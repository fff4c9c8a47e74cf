"""Shared by the two embedded types: distinct values -> vocabulary ids -> per-cell u32 index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow.types import is_dictionary

from tributary_core.semantic_type import (
    ColumnEncoder,
    EncodedColumn,
    Prepared,
    SemanticType,
    Vocabulary,
)

from ._arrow import distinct, has_null_entries, plain, validity


@numba.njit(cache=True, nogil=True)
def gather_ids(codes: np.ndarray, valid: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = ids[codes[i]]`` where valid, else 0."""
    for i in range(codes.shape[0]):
        out[i] = ids[codes[i]] if valid[i] else np.uint32(0)


def prepare_distinct(column: pa.ChunkedArray, *, max_chars: int | None = None) -> Prepared:
    """Distinct values as strings (``extra["uniques"]``), per-cell codes as ``values``."""
    # a dictionary-typed column is numbered through its codes, unless a dictionary holds a
    # null (then decoded first); a plain one stays in its chunks
    arr = plain(column) if is_dictionary(column.type) and has_null_entries(column) else column
    if pa.types.is_null(arr.type):
        n = len(arr)
        return Prepared(np.zeros(n, np.int64), np.zeros(n, np.bool_),
                        extra={"uniques": [], "keys": None})
    valid = validity(arr)
    uniques, codes = distinct(arr)
    keys = uniques if pa.types.is_string(uniques.type) else pc.cast(uniques, pa.string())
    strings = keys
    if max_chars is not None:
        strings = pc.utf8_slice_codeunits(strings, 0, max_chars)
    # "keys": the distinct values as strings before the cut to max_chars (None: no cut), which
    # number a column's values across its batches (_EmbeddedColumn)
    return Prepared(codes, valid, extra={"uniques": strings.to_pylist(),
                                         "keys": None if max_chars is None else keys})


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

    def column_encoder(self, column_name: str) -> ColumnEncoder:
        return _EmbeddedColumn(self, column_name)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        return vocab_values[int(cell["index"])]

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        """Class codes: the position of ``str(value)`` among the sorted distinct values given
        (so codes compare only within one call); NaN for None."""
        strings = [None if v is None else str(v) for v in values]
        codes = {v: float(i) for i, v in enumerate(sorted({v for v in strings if v is not None}))}
        return np.array([np.nan if v is None else codes[v] for v in strings], dtype=np.float64)


class _EmbeddedColumn(ColumnEncoder):
    """One pass. The column's distinct values are numbered in order of first occurrence across
    the batches (a dict from each value to its number, so memory grows with the distinct
    values, as the vocabulary's does, not with the rows); each batch adds its new ones to the
    shared vocabulary, in that order, which gives the ids the whole column would get."""

    one_pass = True

    def __init__(self, stype: EmbeddedType, column_name: str) -> None:
        super().__init__()
        self._stype = stype
        self._column = column_name
        self._numbers: dict[str, int] = {}  # distinct value -> its number in the column
        self._strings: list[str] = []  # per number: the value as a string (cut to max_chars)
        self._ids = np.zeros(0, dtype=np.uint32)  # per number: its vocabulary id, once added
        self._seen = np.zeros(0, dtype=np.bool_)  # per number: in a valid cell of the window
        self._count = 0
        self._windowed = False
        self._last: tuple[Prepared, np.ndarray] | None = None

    def _numbered(self, prepared: Prepared) -> np.ndarray:
        """Per distinct value of the batch, its number in the column (new ones numbered)."""
        if self._last is not None and self._last[0] is prepared:
            return self._last[1]
        strings = prepared.extra["uniques"]
        keys = prepared.extra.get("keys")
        keys = strings if keys is None else keys.to_pylist()
        numbers = self._numbers
        out = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            found = numbers.get(key)
            if found is None:
                found = numbers[key] = len(self._strings)
                self._strings.append(strings[i])
            out[i] = found
        self._last = (prepared, out)
        return out

    def fit(self, prepared: Prepared, rows: np.ndarray | None) -> None:
        super().fit(prepared, rows)
        numbered = self._numbered(prepared)
        mask = prepared.valid if rows is None else prepared.valid & rows
        self._count += int(mask.sum())
        if rows is not None:
            self._windowed = True
            if len(self._seen) < len(self._strings):
                self._seen = np.concatenate(
                    [self._seen, np.zeros(len(self._strings) - len(self._seen), np.bool_)])
            self._seen[numbered[np.unique(prepared.values[mask])]] = True

    def stats(self) -> dict[str, Any]:
        n_distinct = int(self._seen.sum()) if self._windowed else len(self._strings)
        return {"count": self._count, "n_distinct": n_distinct}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any] | None,
               vocab: Vocabulary) -> EncodedColumn:
        numbered = self._numbered(prepared)
        done = len(self._ids)
        if done < len(self._strings):
            values = self._strings[done:]
            texts = [self._stype.text_for(self._column, v) for v in values]
            self._ids = np.concatenate([self._ids, vocab.add(texts, values)])
        ids = self._ids[numbered] if len(numbered) else np.zeros(1, np.uint32)
        out = np.empty(len(prepared), dtype=np.uint32)
        gather_ids(prepared.values, prepared.valid, ids, out)
        return EncodedColumn({"index": out}, prepared.valid.copy())
