"""A point in time as the model sees it: 15 float32 features computed from its epoch µs.

The store keeps a timestamp as its int64 epoch microseconds (UTC); the sampler computes the
features of each timestamp cell it writes (:func:`write_features`), and of labels and
baselines (:func:`features`), all with the same code:

====  ==========================================================================
0-1   sin, cos of 2π·second-of-minute / 60
2-3   sin, cos of 2π·minute-of-hour / 60
4-5   sin, cos of 2π·hour-of-day / 24
6-7   sin, cos of 2π·day-of-week / 7       (Monday = 0)
8-9   sin, cos of 2π·(day-of-month − 1) / 31
10-11 sin, cos of 2π·(month − 1) / 12
12-13 sin, cos of 2π·(day-of-year − 1) / 366
14    (epoch µs − mean) / std, mean and std over every timestamp cell of the database
====  ==========================================================================

The cyclic parts use whole seconds (sub-second digits are kept only in the epoch part).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numba
import numpy as np

from tributary_core.semantic_type import TIMESTAMP_WIDTH

__all__ = ["N_FEATURES", "PERIODS", "TABLES", "US_PER_S", "civil_fields", "encode_times",
           "features", "scale_of", "write_features"]

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


def scale_of(stats: Mapping[str, Any]) -> tuple[float, float]:
    """``(mean, std)`` of the epoch feature from a timestamp column's or task's statistics (the
    database-wide ones when present)."""
    shared = stats.get("database") or stats
    if "std" in shared:
        std = float(shared["std"])
    elif shared.get("count"):  # a column's own moments (count, mean, m2)
        std = float(np.sqrt(shared.get("m2", 0.0) / shared["count"]))
    else:
        std = 1.0
    return float(shared.get("mean", 0.0)), std if std > 0 else 1.0


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


@numba.njit(cache=True, nogil=True)
def write_features(x: np.int64, mean: float, inv_std: float, tables: np.ndarray,
                   out: np.ndarray, b: int, pos: int) -> None:
    """The 15 features of epoch µs ``x`` into ``out[b, pos, :]`` (the sampler's batch array).
    Compiled on its own (not inlined): the walk's cell loop stays as small as before."""
    s = x // US_PER_S  # floor division: correct before 1970 too
    days = s // 86400
    sec = s - days * 86400
    out[b, pos, 0] = tables[0, sec % 60, 0]
    out[b, pos, 1] = tables[0, sec % 60, 1]
    out[b, pos, 2] = tables[1, (sec // 60) % 60, 0]
    out[b, pos, 3] = tables[1, (sec // 60) % 60, 1]
    out[b, pos, 4] = tables[2, sec // 3600, 0]
    out[b, pos, 5] = tables[2, sec // 3600, 1]
    m, d, doy = civil_fields(days)
    dow = (days + 3) % 7
    out[b, pos, 6] = tables[3, dow, 0]
    out[b, pos, 7] = tables[3, dow, 1]
    out[b, pos, 8] = tables[4, d - 1, 0]
    out[b, pos, 9] = tables[4, d - 1, 1]
    out[b, pos, 10] = tables[5, m - 1, 0]
    out[b, pos, 11] = tables[5, m - 1, 1]
    out[b, pos, 12] = tables[6, doy - 1, 0]
    out[b, pos, 13] = tables[6, doy - 1, 1]
    out[b, pos, 14] = np.float32((x - mean) * inv_std)


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

    The day-level features are computed once per distinct day when the values span fewer than
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
            s = x // US_PER_S
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


def features(us: np.ndarray, valid: np.ndarray | None, stats: Mapping[str, Any],
             n_threads: int = 1) -> np.ndarray:
    """``(n, 15)`` float32 features of epoch µs ``us`` (zeros where not ``valid``), scaled by a
    timestamp column's or task's ``stats``."""
    us = np.ascontiguousarray(us, dtype=np.int64)
    valid = (np.ones(len(us), dtype=np.bool_) if valid is None
             else np.ascontiguousarray(valid, dtype=np.bool_))
    mean, std = scale_of(stats)
    out = np.empty((len(us), N_FEATURES), dtype=np.float32)
    if len(us):
        encode_times(us, valid, mean, std, TABLES, max(1, int(n_threads)), out)
    return out
