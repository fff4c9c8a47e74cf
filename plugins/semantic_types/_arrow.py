"""Arrow helpers shared by the built-in semantic types."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def base_type(t: pa.DataType) -> pa.DataType:
    """The value type of a dictionary-encoded column, else ``t`` itself."""
    return t.value_type if pa.types.is_dictionary(t) else t


def is_stringish(t: pa.DataType) -> bool:
    t = base_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_number(t: pa.DataType) -> bool:
    t = base_type(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(base_type(t))


def plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array, dictionary encoding undone."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    return arr


def validity(arr: pa.Array) -> np.ndarray:
    """True where ``arr`` is not null, as a numpy bool array."""
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=np.bool_)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), dtype=np.bool_)
    return np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=np.bool_)


def distinct(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``(uniques, codes)``: the distinct non-null values and, per cell, its index in them
    (0 where null; mask with :func:`validity`)."""
    encoded = pc.dictionary_encode(arr)
    codes = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return encoded.dictionary, np.asarray(codes, dtype=np.int64)
