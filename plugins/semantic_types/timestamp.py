"""``timestamp``: points in time, from Arrow timestamps (any unit and zone), dates or ISO strings.

Each cell becomes 15 float32 (DESIGN §3), all in UTC:

====  ==========================================================================
0-1   sin, cos of 2π·second-of-minute / 60
2-3   sin, cos of 2π·minute-of-hour / 60
4-5   sin, cos of 2π·hour-of-day / 24
6-7   sin, cos of 2π·day-of-week / 7       (Monday = 0)
8-9   sin, cos of 2π·(day-of-month − 1) / 31
10-11 sin, cos of 2π·(month − 1) / 12
12-13 sin, cos of 2π·(day-of-year − 1) / 366
14    (epoch µs − mean) / std, mean and std over *every* timestamp cell of the database
====  ==========================================================================

The cyclic parts use whole seconds (sub-second digits are kept only in the epoch part). The
database-wide statistics come from :meth:`Timestamp.combine`, so two timestamp columns of one
database share a scale and the model can compare them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
import pyarrow as pa

from tributary_core.semantic_type import TIMESTAMP_WIDTH, EncodedColumn, Prepared, SemanticType
from tributary_core.timeconv import format_epoch_us, is_time_like, to_epoch_us

from .numerical import moments, n_threads

N_FEATURES = TIMESTAMP_WIDTH  # the table above
#: Periods of the seven cyclic features, in the order of the table above.
PERIODS = np.array([60, 60, 24, 7, 31, 12, 366], dtype=np.int64)
US_PER_S = 1_000_000


def _tables() -> np.ndarray:
    """``(7, 366, 2)`` float32: sin and cos of 2π·k/period for every k < period."""
    out = np.zeros((7, 366, 2), dtype=np.float32)
    for f, period in enumerate(PERIODS):
        k = np.arange(period)
        out[f, :period, 0] = np.sin(2 * np.pi * k / period)
        out[f, :period, 1] = np.cos(2 * np.pi * k / period)
    return out


TABLES = _tables()


@numba.njit(cache=True, nogil=True, inline="always")
def civil_fields(days: int) -> tuple[int, int, int]:
    """``(month 1-12, day-of-month 1-31, day-of-year 1-366)`` of ``days`` since 1970-01-01
    (proleptic Gregorian; H. Hinnant's civil_from_days)."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy_mar = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the year starting 1 March
    mp = (5 * doy_mar + 2) // 153
    d = doy_mar - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    leap = 1 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 0
    before = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
    doy = before[m - 1] + d + (leap if m > 2 else 0)
    return m, d, doy


#: Largest span of days for which per-day features are tabulated once per call (~2,900 years).
MAX_DAY_TABLE = 1 << 20


@numba.njit(cache=True, nogil=True, inline="always")
def _day_features(days: int, tables: np.ndarray, row: np.ndarray) -> None:
    """The 8 day-level features (day-of-week ... day-of-year) of ``days`` into ``row``."""
    m, d, doy = civil_fields(days)
    idx = ((days + 3) % 7, d - 1, m - 1, doy - 1)
    for f in range(4):
        row[2 * f] = tables[3 + f, idx[f], 0]
        row[2 * f + 1] = tables[3 + f, idx[f], 1]


@numba.njit(cache=True, nogil=True, parallel=True)
def encode_times(us: np.ndarray, valid: np.ndarray, mean: float, std: float,
                 tables: np.ndarray, n_threads: int, out: np.ndarray) -> None:
    """Fill ``out`` (n, 15) with the features of the table above; zeros where not valid.

    The day-level features are computed once per distinct day when the column spans fewer than
    :data:`MAX_DAY_TABLE` days (always, in practice), else per cell."""
    n = us.shape[0]
    inv = 1.0 / std
    lo_day, hi_day = np.int64(0), np.int64(-1)
    first = True
    for i in range(n):
        if valid[i]:
            day = (us[i] // US_PER_S) // 86400
            if first or day < lo_day:
                lo_day = day
            if first or day > hi_day:
                hi_day = day
            first = False
    n_days = hi_day - lo_day + 1
    tabulate = 0 < n_days <= MAX_DAY_TABLE
    day_table = np.zeros((n_days if tabulate else 1, 8), dtype=np.float32)
    if tabulate:
        for k in range(n_days):
            _day_features(lo_day + k, tables, day_table[k])
    step = (n + n_threads - 1) // n_threads
    for t in numba.prange(n_threads):
        row = np.empty(8, dtype=np.float32)
        for i in range(t * step, min(n, (t + 1) * step)):
            if not valid[i]:
                for j in range(N_FEATURES):
                    out[i, j] = 0.0
                continue
            x = us[i]
            s = x // US_PER_S  # floor division: correct before 1970 too
            days = s // 86400
            sec_of_day = s - days * 86400
            out[i, 0] = tables[0, sec_of_day % 60, 0]
            out[i, 1] = tables[0, sec_of_day % 60, 1]
            out[i, 2] = tables[1, (sec_of_day // 60) % 60, 0]
            out[i, 3] = tables[1, (sec_of_day // 60) % 60, 1]
            out[i, 4] = tables[2, sec_of_day // 3600, 0]
            out[i, 5] = tables[2, sec_of_day // 3600, 1]
            if tabulate:
                src = day_table[days - lo_day]
                for j in range(8):
                    out[i, 6 + j] = src[j]
            else:
                _day_features(days, tables, row)
                for j in range(8):
                    out[i, 6 + j] = row[j]
            out[i, 14] = np.float32((x - mean) * inv)


class Timestamp(SemanticType):
    name = "timestamp"
    batch_slot = "timestamp"
    description = "points in time: 14 cyclic features + z-scored epoch"
    target_losses = ("huber",)

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_time_like(arrow_type):
            return None
        return f"expected a timestamp, date or ISO-8601 string, got {arrow_type}"

    def check_column(self, column: pa.ChunkedArray) -> str | None:
        result = to_epoch_us(column)
        if result.n_unparsed:
            return (f"{result.n_unparsed} value(s) are not a time, e.g. "
                    f"{result.example_unparsed!r}")
        return None

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        result = to_epoch_us(column)
        return Prepared(result.values, result.valid, n_invalid=result.n_unparsed)

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        use_rows = rows is not None
        values = prepared.values.astype(np.float64)
        count, mean, m2 = moments(values, prepared.valid,
                                  rows if use_rows else prepared.valid, use_rows)
        return {"count": int(count), "mean": float(mean), "m2": float(m2)}

    def combine(self, stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Pooled mean and std of all timestamp cells (Chan et al.'s parallel update)."""
        count, mean, m2 = 0, 0.0, 0.0
        for s in stats:
            n_b = s["count"]
            if n_b == 0:
                continue
            delta = s["mean"] - mean
            total = count + n_b
            mean += delta * n_b / total
            m2 += s["m2"] + delta * delta * count * n_b / total
            count = total
        std = float(np.sqrt(m2 / count)) if count else 0.0
        return {"count": count, "mean": mean, "std": std if std > 0 else 1.0}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        shared = stats.get("database") or self.combine([stats])
        out = np.empty((len(prepared), N_FEATURES), dtype=np.float32)
        encode_times(prepared.values, prepared.valid, float(shared["mean"]), float(shared["std"]),
                     TABLES, n_threads(), out)
        return EncodedColumn({"value": out}, prepared.valid.copy())

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        """The time to the second: the f32 epoch feature places the day (its error is far below
        12 hours for any real span), the cyclic features give the exact second of that day."""
        shared = stats.get("database") or self.combine([stats])
        v = np.asarray(cell["value"], dtype=np.float64)
        approx_s = (v[14] * shared["std"] + shared["mean"]) / US_PER_S

        def phase(f: int) -> int:
            period = int(PERIODS[f])
            turn = np.arctan2(v[2 * f], v[2 * f + 1]) / (2 * np.pi)
            return int(round(turn * period)) % period

        sec_of_day = phase(2) * 3600 + phase(1) * 60 + phase(0)
        day = int(np.floor((approx_s - sec_of_day) / 86400 + 0.5))
        return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
                + dt.timedelta(seconds=day * 86400 + sec_of_day)).isoformat()

    def decode_prediction(self, values: np.ndarray, stats: Mapping[str, Any]) -> pa.Array:
        """Predicted epoch features (the z-scored time, feature 14) as ISO-8601 UTC strings."""
        shared = stats.get("database") or stats
        us = np.asarray(values, dtype=np.float64) * float(shared.get("std", 1.0)) \
            + float(shared.get("mean", 0.0))
        return pa.array([format_epoch_us(int(u)) for u in us], pa.string())

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        """Times as float64 epoch microseconds (UTC): ``datetime`` (naive taken as UTC),
        ``date`` (midnight UTC) and ISO-8601 strings; NaN for anything else."""
        out = np.full(len(values), np.nan)
        strings: dict[int, str] = {}
        for i, value in enumerate(values):
            if isinstance(value, dt.datetime):
                aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
                out[i] = (aware - _EPOCH) // dt.timedelta(microseconds=1)
            elif isinstance(value, dt.date):
                out[i] = (value - _EPOCH.date()).days * 86_400 * US_PER_S
            elif isinstance(value, str):
                strings[i] = value
        if strings:
            parsed = to_epoch_us(pa.chunked_array([pa.array(list(strings.values()), pa.string())]))
            rows = np.fromiter(strings, dtype=np.int64, count=len(strings))
            out[rows] = np.where(parsed.valid, parsed.values.astype(np.float64), np.nan)
        return out


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
