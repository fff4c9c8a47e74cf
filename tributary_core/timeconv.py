"""Turn Arrow time-like columns into UTC microseconds since the Unix epoch.

Accepted: ``timestamp`` of any unit, with or without a time zone (naive values are taken as
UTC), ``date32``/``date64`` (midnight UTC), and ISO-8601 strings such as ``2013-01-01``,
``2013-01-01 05:00:00``, ``2013-01-01T10:00:00Z`` or ``2013-01-02T05:00:00+02:00``.
Strings are parsed once per distinct value with DuckDB's ``TRY_CAST(... AS TIMESTAMPTZ)``.
"""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.sql import fetch_arrow

__all__ = ["to_epoch_us", "is_time_like", "TimeConversion", "parse_duration", "DURATION_UNITS"]

_US = pa.timestamp("us")


class TimeConversion:
    """Result of :func:`to_epoch_us`.

    Attributes:
        values: int64 microseconds since 1970-01-01 UTC; 0 where not ``valid``.
        valid: False for null cells and for strings that are not a time.
        n_unparsed: non-null cells that could not be read as a time.
        example_unparsed: one such value, for error messages.
    """

    __slots__ = ("values", "valid", "n_unparsed", "example_unparsed")

    def __init__(self, values: np.ndarray, valid: np.ndarray, n_unparsed: int = 0,
                 example_unparsed: str | None = None) -> None:
        self.values = values
        self.valid = valid
        self.n_unparsed = n_unparsed
        self.example_unparsed = example_unparsed


def is_time_like(arrow_type: pa.DataType) -> bool:
    """Whether :func:`to_epoch_us` accepts columns of this type."""
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_null(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_string_view(t))


def _numpy(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    return values, valid


#: Microseconds per unit of the time types coarser than µs.
_PER_UNIT = {"s": 1_000_000, "ms": 1_000}
_INT64 = np.iinfo(np.int64)


def _scale_up(arr: pa.Array, factor: int) -> TimeConversion:
    """Seconds or milliseconds (timestamps, date64) to µs. A value whose µs do not fit in
    int64 (beyond about ±292,000 years) is not a usable time: invalid and counted, never
    wrapped around into another date (as an unchecked cast would)."""
    values, valid = _numpy(arr)
    limit = _INT64.max // factor
    out_of_range = valid & ((values > limit) | (values < -limit))
    n_bad = int(out_of_range.sum())
    example = None
    if n_bad:
        raw = int(values[int(np.argmax(out_of_range))])
        example = f"{raw} {'ms' if factor == 1000 else 's'} since 1970 (out of range)"
        valid = valid & ~out_of_range
    return TimeConversion(np.where(valid, values * factor, 0).astype(np.int64), valid, n_bad,
                          example)


def to_epoch_us(column: pa.Array | pa.ChunkedArray) -> TimeConversion:
    """Convert a time-like Arrow column to UTC epoch microseconds (see module docs)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    if pa.types.is_null(t):
        n = len(arr)
        return TimeConversion(np.zeros(n, np.int64), np.zeros(n, bool))
    if pa.types.is_timestamp(t) and t.unit in ("s", "ms"):
        return _scale_up(arr, _PER_UNIT[t.unit])
    if pa.types.is_timestamp(t):
        # safe=False: nanoseconds are truncated to microseconds, the store's resolution.
        return TimeConversion(*_numpy(pc.cast(arr, pa.timestamp("us", tz=t.tz), safe=False)))
    if pa.types.is_date64(t):
        return _scale_up(arr, 1000)
    if pa.types.is_date(t):
        return TimeConversion(*_numpy(pc.cast(arr, _US)))
    if not is_time_like(t):
        raise TypeError(f"expected a timestamp, date or ISO-8601 string column, got {t}")
    return _parse_strings(arr.cast(pa.string()))


def _parse_strings(arr: pa.Array) -> TimeConversion:
    encoded = pc.dictionary_encode(arr)
    uniques = encoded.dictionary
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("uniques", pa.table({"v": uniques}))
        parsed = fetch_arrow(
            con.sql("SELECT epoch_us(TRY_CAST(trim(v) AS TIMESTAMPTZ)) AS us FROM uniques")
        ).column("us").combine_chunks()
    finally:
        con.close()
    # A plain projection keeps the order of the registered table's rows.
    parsed_values, parsed_valid = _numpy(parsed)
    indices = encoded.indices
    present = ~np.asarray(indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    idx = np.asarray(indices.fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    if len(uniques) == 0:
        return TimeConversion(np.zeros(len(arr), np.int64), np.zeros(len(arr), bool))
    values = np.where(present, parsed_values[idx], 0)
    valid = present & parsed_valid[idx]
    bad = present & ~valid
    n_bad = int(bad.sum())
    example = arr[int(np.argmax(bad))].as_py() if n_bad else None
    return TimeConversion(values.astype(np.int64), valid, n_bad, example)


def format_epoch_us(us: int) -> str:
    """Epoch microseconds as ISO 8601 (UTC, no zone suffix)."""
    import datetime as _dt

    return (_dt.datetime(1970, 1, 1) + _dt.timedelta(microseconds=int(us))).isoformat(sep=" ")


#: Microseconds per unit of a duration (``parse_duration``). A month and a year count as the
#: longest they can be (31 and 366 days): a task's label horizon is an upper bound on when its
#: label is known, so rounding up never shows a label before it was known.
DURATION_UNITS = {
    "microsecond": 1, "millisecond": 1_000, "second": 1_000_000, "minute": 60_000_000,
    "hour": 3_600_000_000, "day": 86_400_000_000, "week": 7 * 86_400_000_000,
    "month": 31 * 86_400_000_000, "year": 366 * 86_400_000_000,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$")


def parse_duration(text: str) -> int:
    """``"7 days"``, ``"1 year"``, ``"36 hours"``, ``"0 days"`` as whole microseconds (rounded
    up). Raises ``ValueError`` with the accepted units for anything else."""
    match = _DURATION.match(str(text).lower())
    unit = match.group(2) if match else None
    if match is None or unit not in DURATION_UNITS:
        units = ", ".join(DURATION_UNITS)
        raise ValueError(f"{text!r} is not a duration such as \"7 days\" (a number and one of: "
                         f"{units}; plural allowed)")
    value = float(match.group(1)) * DURATION_UNITS[unit]
    if value >= 2**62:
        raise ValueError(f"{text!r} is longer than any timestamp range")
    return int(-(-value // 1))
