"""Key columns: which kind of key a column holds, and key values -> row indices."""

from __future__ import annotations

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["key_kind", "as_key", "KeyMatch", "match_keys"]


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
