"""DuckDB access to a database's tables, and nothing else.

Task SQL is user input. It runs on a connection that sees the database's tables (registered as
Arrow datasets, read lazily) and has file-system access switched off and the configuration
locked, so ``read_csv('/etc/passwd')``, ``COPY ... TO``, ``ATTACH`` and reading any other path
fail with a permission error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa

__all__ = ["sandbox_connection", "fetch_arrow", "quote_identifier"]


def quote_identifier(name: str) -> str:
    """``name`` as a DuckDB identifier that survives dots, spaces and digits."""
    return '"' + name.replace('"', '""') + '"'


def fetch_arrow(relation: Any) -> pa.Table:
    """A DuckDB relation (``con.sql(query)``) as an Arrow table, on DuckDB 1.x and 2.x."""
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def sandbox_connection(tables: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    """An in-memory connection where each of ``tables`` (name -> Arrow table or dataset) is a
    relation of that name, also reachable as ``'<name>.parquet'`` (a view, not the file), time
    zone UTC, and no other data can be reached."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    for name, data in tables.items():
        con.register(name, data)
        con.execute(f"CREATE VIEW {quote_identifier(name + '.parquet')} AS "
                    f"SELECT * FROM {quote_identifier(name)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con
