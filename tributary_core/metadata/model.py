"""The metadata.json model (DESIGN §2): frozen, keyword-only attrs classes.

Names in a metadata file are case-sensitive and must match the parquet files and columns
exactly. References between tables are written ``"table.column"``.
"""

from __future__ import annotations

import attrs

__all__ = ["Column", "Table", "Task", "Metadata", "split_ref"]


@attrs.frozen(kw_only=True)
class Column:
    """One parquet column."""

    #: A registered semantic type name (built-ins: identifier, numerical, timestamp, boolean,
    #: categorical, text, ignored).
    stype: str
    #: ``"table.column"`` of the parent row's primary key this column refers to.
    foreign_key: str | None = None
    #: Joined to the column name before embedding: ``"<column> : <description>"``.
    description: str | None = None


@attrs.frozen(kw_only=True)
class Table:
    """One parquet file, ``<table>.parquet``."""

    #: Every parquet column, including ignored ones, in file order.
    columns: dict[str, Column]
    #: A unique, non-null column identifying a row; tables without one (link tables) are fine.
    primary_key: str | None = None
    #: The column giving each row's time; rows later than an observation time stay hidden.
    temporal_column: str | None = None
    #: Extension: take each row's time from its parent through this foreign-key column.
    temporal_from: str | None = None
    #: What the table holds, for people reading the file (not embedded: column descriptions are).
    description: str | None = None


@attrs.frozen(kw_only=True)
class Task:
    """A prediction task written as SQL over the database's tables."""

    #: DuckDB SQL returning one row per seed: ``anchor_key``, ``target_column`` and, if
    #: given, ``observation_time_column``.
    query: str
    #: Table whose rows the seeds are.
    anchor_table: str
    #: The anchor table's primary key, also a column of the query's result.
    anchor_key: str
    #: Column of the query's result holding the label.
    target_column: str
    #: Semantic type of the label (numerical, categorical, boolean, timestamp, or a plugin's).
    target_stype: str
    #: Column of the query's result giving each seed's observation time; without it the
    #: anchor row's own time is used, and without that there is no cut-off.
    observation_time_column: str | None = None
    #: Extension: ``"table.column"`` cells masked in this task's contexts.
    hidden_columns: tuple[str, ...] = ()
    #: Extension: how long after its observation time a seed's label is known, e.g.
    #: ``"7 days"`` for a count over the next 7 days (months count 31 days, years 366). A
    #: labelled example is shown in a context only once its label is known. Omitted: the
    #: label is known at the observation time.
    horizon: str | None = None


@attrs.frozen(kw_only=True)
class Metadata:
    """A database: its tables and its tasks."""

    name: str
    tables: dict[str, Table]
    tasks: dict[str, Task] = attrs.field(factory=dict)

    def column(self, ref: str) -> Column | None:
        """The column named by ``"table.column"``, or None."""
        parts = split_ref(ref)
        if parts is None:
            return None
        table = self.tables.get(parts[0])
        return None if table is None else table.columns.get(parts[1])


def split_ref(ref: str) -> tuple[str, str] | None:
    """``"table.column"`` -> ``("table", "column")``; None when it has no dot.

    The table name is everything before the first dot, so column names may contain dots.
    """
    table, dot, column = ref.partition(".")
    if not dot or not table or not column:
        return None
    return table, column
