"""``timestamp``: points in time, from Arrow timestamps (any unit and zone), dates or ISO strings.

Stored as 14 cyclic features (sin/cos of second-of-minute ... day-of-year) plus the epoch
z-scored over all timestamps of the database.
"""

from __future__ import annotations

import pyarrow as pa

from tributary_core.semantic_type import SemanticType
from tributary_core.timeconv import is_time_like, to_epoch_us


class Timestamp(SemanticType):
    name = "timestamp"
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
