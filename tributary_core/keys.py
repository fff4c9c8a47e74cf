"""Key columns: which kind of key a column holds, and key values -> row indices."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["key_kind", "as_key", "KeyMatch", "match_keys", "KeyIndex"]


def key_kind(t: pa.DataType) -> str:
    """``"integer"``, ``"string"``, or the type's name for anything else."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return str(t)


def as_key(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Integers as int64, strings as string, so keys of one kind compare equal."""
    kind = key_kind(col.type)
    if kind == "integer":
        return col.cast(pa.int64())
    if kind == "string":
        return col.cast(pa.string())
    return col


@attrs.frozen
class KeyMatch:
    """Row index in the referenced table per value (-1 where null or not found)."""

    rows: np.ndarray  # int32 (n,)
    n_null: int
    n_dangling: int
    example_dangling: object = None


def match_keys(values: pa.ChunkedArray | pa.Array, keys: pa.ChunkedArray | pa.Array) -> KeyMatch:
    """Look each of ``values`` up among ``keys`` (a unique key column) with Arrow's hash join."""
    values, keys = as_key(values), as_key(keys)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    found = pc.index_in(values, value_set=keys)
    rows = np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int32)
    n_null = values.null_count
    missing = rows < 0
    n_dangling = int(missing.sum()) - n_null
    example = None
    if n_dangling:
        present = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
        example = values[int(np.argmax(missing & present))].as_py()
    return KeyMatch(rows, n_null, n_dangling, example)


#: An integer key column whose values span at most this many times its length (plus a little)
#: is indexed by a table of one row number per value in the span; a sparser one is sorted.
_DENSE_SPAN = 4


#: A string key index is looked up batch by batch only if it has at most this many keys per
#: batch row: rebuilding Arrow's hash table for each batch then adds at most about a quarter.
STRING_KEYS_PER_ROW = 0.25

#: Keys put in a table this many at a time (bounds the temporary arrays of a build).
_PIECE = 1 << 20


class KeyIndex:
    """The row of each value of a unique key column, built once and looked up batch by batch,
    so a foreign-key column of any length is matched one batch at a time against it.

    Integer keys: a direct table over the keys' span (4 bytes a value of the span) when the
    keys are dense, as numbered keys are, else the keys sorted (12 bytes a key) and a binary
    search. String keys keep Arrow's hash lookup, whose table is built anew for each call:
    :meth:`lookup` a string column whole. Lookups give what :func:`match_keys` gives."""

    def __init__(self, keys: pa.ChunkedArray | pa.Array) -> None:
        self.kind = key_kind(keys.type)
        keys = as_key(keys)
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        self._keys = keys
        self._table: np.ndarray | None = None
        self._sorted: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._low = 0
        if self.kind != "integer":
            return
        # without nulls (primary keys) the values are not copied: they may be a spilled map
        values, rows = self._keys_values(), self._rows()
        if not len(values):
            self._sorted, self._order = values, rows
            return
        low, high = int(values.min()), int(values.max())
        if high - low < _DENSE_SPAN * len(values) + 1024:
            table = np.full(high - low + 1, -1, dtype=np.int32)
            # last piece first, each reversed: a repeated key keeps its first row, as Arrow's
            for stop in range(len(values), 0, -_PIECE):
                start = max(stop - _PIECE, 0)
                table[(values[start:stop] - low)[::-1]] = rows[start:stop][::-1]
            self._table, self._low = table, low
        else:
            order = np.argsort(values, kind="stable")
            self._sorted, self._order = values[order], rows[order]

    def batched(self, batch_rows: int) -> bool:
        """Whether a column is best looked up in batches of ``batch_rows`` values: always for
        integer keys; for string keys, whose hash table Arrow builds anew for every lookup,
        only while that table is small beside a batch (at most :data:`STRING_KEYS_PER_ROW`
        keys a batch row), as a dimension table's codes are."""
        return self.kind == "integer" or len(self._keys) <= batch_rows * STRING_KEYS_PER_ROW

    def repeats(self) -> tuple[int, object]:
        """How many distinct non-null keys occur more than once, and the one whose first row
        comes first (None if none): what ``pc.value_counts`` finds, for integer keys without
        its hash table of every key (a primary key's uniqueness check at any size)."""
        if self.kind != "integer":
            counts = pc.value_counts(self._keys.drop_null())
            dupes = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
            return len(dupes), (dupes[0].as_py() if len(dupes) else None)
        values = self._keys_values()
        later: list[np.ndarray] = []  # per piece, the values of rows that are not their key's first
        if self._table is not None:
            rows = self._rows()
            for start in range(0, len(values), _PIECE):
                piece = values[start:start + _PIECE]
                first = self._table[piece - self._low]
                later.append(piece[first != rows[start:start + len(piece)]])
        else:
            assert self._sorted is not None
            same = self._sorted[1:] == self._sorted[:-1]
            later.append(self._sorted[1:][same])
        repeated = np.unique(np.concatenate(later)) if later else np.zeros(0, np.int64)
        if not len(repeated):
            return 0, None
        first_rows = self.lookup(pa.array(repeated))
        return len(repeated), int(repeated[int(np.argmin(first_rows))])

    def _keys_values(self) -> np.ndarray:
        """The non-null keys in row order (int64; no copy where the keys have no nulls)."""
        keys = self._keys
        if keys.null_count:
            return np.asarray(keys.drop_null().to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.asarray(keys.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _rows(self) -> np.ndarray:
        """The row of each of :meth:`_keys_values`."""
        keys = self._keys
        if keys.null_count:
            valid = np.asarray(pc.is_valid(keys).to_numpy(zero_copy_only=False), dtype=bool)
            return np.flatnonzero(valid).astype(np.int32)
        return np.arange(len(keys), dtype=np.int32)

    def lookup(self, values: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Per value, the row of the equal key (int32), -1 where null or not found."""
        values = as_key(values)
        if self.kind != "integer" or key_kind(values.type) != "integer":
            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks()
            found = pc.index_in(values, value_set=self._keys)
            return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int32)
        valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
        ints = np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        out = np.full(len(ints), -1, dtype=np.int32)
        if self._table is not None:
            table = self._table
            inside = valid & (ints >= self._low) & (ints <= self._low + len(table) - 1)
            out[inside] = table[ints[inside] - self._low]
            return out
        assert self._sorted is not None and self._order is not None
        if not len(self._sorted):
            return out
        pos = np.minimum(np.searchsorted(self._sorted, ints), len(self._sorted) - 1)
        hit = valid & (self._sorted[pos] == ints)
        out[hit] = self._order[pos[hit]]
        return out

    def match(self, batches: Iterable[pa.ChunkedArray | pa.Array], n: int,
              out: np.ndarray | None = None) -> KeyMatch:
        """:func:`match_keys` of the ``n`` values given in ``batches``, in order; the rows
        written into ``out`` (int32, ``n``; e.g. a mapped store section) if given."""
        if out is not None and (out.dtype != np.int32 or out.shape != (n,)):
            raise ValueError(f"out must be int32 of shape ({n},), not {out.dtype} {out.shape}")
        rows = np.empty(n, dtype=np.int32) if out is None else out
        n_null = n_dangling = 0
        example = None
        pos = 0
        for batch in batches:
            found = self.lookup(batch)
            end = pos + len(found)
            if end > n:
                raise ValueError(f"the batches hold more than the {n} values announced")
            rows[pos:end] = found
            nulls = batch.null_count
            missing = int((found < 0).sum()) - nulls
            if missing and example is None:
                present = np.asarray(pc.is_valid(batch).to_numpy(zero_copy_only=False), dtype=bool)
                example = batch[int(np.argmax((found < 0) & present))].as_py()
            n_null += nulls
            n_dangling += missing
            pos = end
        if pos != n:
            raise ValueError(f"the batches hold {pos} values, not the {n} announced")
        return KeyMatch(rows, n_null, n_dangling, example)
