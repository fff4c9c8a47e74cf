"""Time conversion (every Arrow time type and ISO strings) and the task-SQL sandbox."""

from __future__ import annotations

from datetime import date, datetime, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tributary_core.sql import fetch_arrow, quote_identifier, sandbox_connection
from tributary_core.timeconv import is_time_like, to_epoch_us

NOON = int(datetime(2013, 1, 1, 12, tzinfo=timezone.utc).timestamp() * 1_000_000)
DAY = 86_400_000_000


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "America/New_York"])
def test_timestamps_any_unit_and_zone(unit, tz):
    moment = datetime(2013, 1, 1, 12, tzinfo=timezone.utc)
    value = moment if tz else moment.replace(tzinfo=None)
    arr = pa.array([value, None], pa.timestamp(unit, tz=tz))
    out = to_epoch_us(arr)
    assert out.values[0] == NOON and out.valid.tolist() == [True, False]


@pytest.mark.parametrize("kind", [pa.date32(), pa.date64()])
def test_dates(kind):
    out = to_epoch_us(pa.array([date(2013, 1, 2), None], kind))
    assert out.values[0] == NOON - 12 * 3_600_000_000 + DAY
    assert out.valid.tolist() == [True, False]


def test_iso_strings_with_and_without_zone():
    arr = pa.array(["2013-01-01 12:00:00", "2013-01-01T07:00:00-05:00", "2013-01-01",
                    "  2013-01-01 12:00  ", "tomorrow", None, "2013-01-01 12:00:00"])
    out = to_epoch_us(arr)
    assert out.values[[0, 1, 6]].tolist() == [NOON] * 3
    assert out.values[2] == NOON - 12 * 3_600_000_000
    assert out.valid.tolist() == [True, True, True, True, False, False, True]
    assert out.n_unparsed == 1 and out.example_unparsed == "tomorrow"


def test_empty_all_null_and_dictionary_columns():
    assert to_epoch_us(pa.array([], pa.string())).values.shape == (0,)
    nulls = to_epoch_us(pa.array([None, None], pa.null()))
    assert not nulls.valid.any()
    all_null_strings = to_epoch_us(pa.array([None, None], pa.string()))
    assert not all_null_strings.valid.any() and all_null_strings.n_unparsed == 0
    dictionary = pa.array(["2013-01-01 12:00:00"] * 3).dictionary_encode()
    assert (to_epoch_us(dictionary).values == NOON).all()
    chunked = pa.chunked_array([["2013-01-01 12:00:00"], ["2013-01-02 12:00:00"]])
    assert np.diff(to_epoch_us(chunked).values).tolist() == [DAY]


def test_non_time_types_refused():
    assert not is_time_like(pa.float64())
    with pytest.raises(TypeError, match="expected a timestamp"):
        to_epoch_us(pa.array([1.5]))


TABLES = {"flights": pa.table({"id": [1, 2, 3], "delay": [5.0, -1.0, 30.0]})}


def test_sandbox_reads_registered_tables():
    con = sandbox_connection(TABLES)
    result = fetch_arrow(con.sql("SELECT count(*) AS n, max(delay) AS worst FROM flights"))
    assert result.to_pylist() == [{"n": 3, "worst": 30.0}]
    assert con.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "COPY flights TO '/tmp/tributary-leak.csv'",
    "ATTACH '/tmp/tributary-other.db' AS other",
    "SET enable_external_access = true",
    "INSTALL httpfs",
])
def test_sandbox_refuses_files_and_reconfiguration(query, tmp_path):
    con = sandbox_connection(TABLES)
    with pytest.raises(duckdb.Error):
        con.execute(query).fetchall()


def test_quote_identifier():
    con = duckdb.connect()
    name = 'odd "name".x'
    assert con.sql(f"SELECT 1 AS {quote_identifier(name)}").columns == [name]


@pytest.mark.parametrize(("text", "us"), [
    ("7 days", 7 * 86_400_000_000), ("1 day", 86_400_000_000), ("36 hours", 36 * 3_600_000_000),
    ("0 days", 0), ("1 year", 366 * 86_400_000_000), ("2 months", 62 * 86_400_000_000),
    (" 1.5 Seconds ", 1_500_000)])
def test_parse_duration(text, us):
    from tributary_core.timeconv import parse_duration

    assert parse_duration(text) == us


@pytest.mark.parametrize("text", ["7", "days", "-1 day", "7 fortnights", "", "1e400 days"])
def test_parse_duration_refuses(text):
    from tributary_core.timeconv import parse_duration

    with pytest.raises(ValueError, match="duration|longer"):
        parse_duration(text)


def test_a_sequential_dataset_is_scanned_by_duckdb_through_it_with_the_same_rows(tmp_path):
    """Under --query-memory the task queries read parquet through parquet_dataset(sequential=
    True): DuckDB asks it for scanners (its columns and filter pushed down), which decode on
    the reading thread, and the query's rows are those of the plain dataset."""
    import pyarrow.dataset  # noqa: F401 - pa.dataset
    import pyarrow.parquet as pq

    from tributary_core import sql

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": np.arange(5000), "v": np.arange(5000) % 7 * 1.5,
                             "s": [f"x{i % 3}" for i in range(5000)]}), path, row_group_size=512)
    calls: list[dict] = []

    class Arrow(pa.dataset.FileSystemDataset):  # records what reaches Arrow's scanner
        def scanner(self, *args, **kwargs):
            calls.append(kwargs)
            return super().scanner(*args, **kwargs)

    class Recording(sql._SequentialDataset, Arrow):
        pass

    plain = sql.parquet_dataset(path)
    sequential = sql.parquet_dataset(path, sequential=True)
    assert type(sequential) is sql._SequentialDataset and type(plain) is not type(sequential)
    # task queries: sequential scans under a memory limit or for one DuckDB thread
    for threads, limit, kind in ((1, None, sql._SequentialDataset),
                                 (None, "64MB", sql._SequentialDataset),
                                 (None, None, type(plain))):
        got = sql.query_datasets({"t": path}, threads=threads, memory_limit=limit)
        assert type(got["t"]) is kind, (threads, limit)
    recording = Recording(list(plain.get_fragments()), plain.schema, plain.format,
                          plain.filesystem)
    query = "SELECT s, count(*) AS n, sum(v) AS total FROM t WHERE k >= 100 GROUP BY s ORDER BY s"
    results = []
    for data in (plain, sequential, recording):
        con = sandbox_connection({"t": data}, threads=1, memory_limit="64MB")
        try:
            results.append(con.execute(query).fetchall())
        finally:
            con.close()
    assert results[0] == results[1] == results[2] and len(results[0]) == 3
    assert calls  # DuckDB scanned through the dataset's own scanner()
    for kwargs in calls:
        assert set(kwargs.get("columns") or ()) <= {"k", "v", "s"}  # pushed down
        assert (kwargs["use_threads"], kwargs["batch_readahead"],
                kwargs["fragment_readahead"]) == (False, 1, 1)
