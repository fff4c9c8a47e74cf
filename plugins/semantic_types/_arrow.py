"""Small Arrow type predicates shared by the built-in semantic types."""

from __future__ import annotations

import pyarrow as pa


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
