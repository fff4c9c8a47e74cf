"""``timestamp``: points in time, from Arrow timestamps (any unit and zone), dates or ISO strings.

Each cell is stored as its int64 epoch microseconds (UTC). The model sees 15 float32 features
per cell (DESIGN §3: seven sin/cos pairs of second-of-minute ... day-of-year, then the z-scored
epoch), which the sampler computes from the stored microseconds as it writes a cell
(:mod:`tributary_core.timefeatures`, whose table lists them): a timestamp takes 8 bytes in the
store instead of 60.

The z-score uses the database-wide statistics from :meth:`Timestamp.combine`, so two timestamp
columns of one database share a scale and the model can compare them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tributary_core.semantic_type import (
    ColumnEncoder,
    EncodedColumn,
    Prepared,
    SemanticType,
)
from tributary_core.timeconv import format_epoch_us, is_time_like, to_epoch_us
from tributary_core.timefeatures import (  # noqa: F401 - re-exported: their home before issue 19
    MAX_DAY_TABLE,
    N_FEATURES,
    PERIODS,
    TABLES,
    US_PER_S,
    civil_fields,
    encode_times,
)

from .numerical import MomentColumn, MomentFold


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
        fold = MomentFold()
        fold.add(prepared.values, prepared.valid, rows)
        return _timestamp_stats(fold)

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
        """The epoch microseconds themselves (0 where not valid); the sampler computes the
        features with the database-wide statistics (``stats["database"]``)."""
        values = np.where(prepared.valid, np.asarray(prepared.values, dtype=np.int64), 0)
        return EncodedColumn({"value": values.astype(np.int64, copy=False)}, prepared.valid.copy())

    def column_encoder(self, column_name: str) -> ColumnEncoder:
        return _TimestampColumn(self, _timestamp_stats)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        """The stored time, exactly, as ISO-8601 UTC."""
        us = int(np.asarray(cell["value"]).reshape(-1)[0])
        return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
                + dt.timedelta(microseconds=us)).isoformat()

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


def _timestamp_stats(fold: MomentFold) -> dict[str, Any]:
    count, mean, m2, scale = fold.result()
    return {"count": count, "mean": mean * scale, "m2": m2 * scale * scale}


class _TimestampColumn(MomentColumn):
    """One pass: a cell stores its own microseconds; the statistics only feed
    :meth:`Timestamp.combine`."""

    one_pass = True
