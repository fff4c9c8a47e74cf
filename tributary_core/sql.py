"""DuckDB access to a database's tables, and nothing else.

Task SQL is user input. It runs on a connection that sees the database's tables (registered as
Arrow datasets, read lazily) and has file-system access switched off and the configuration
locked, so ``read_csv('/etc/passwd')``, ``COPY ... TO``, ``ATTACH`` and reading any other path
fail with a permission error.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from tributary_core.atomic import scratch_folder
from tributary_core.errors import TributaryError

__all__ = ["sandbox_connection", "sandboxed", "check_memory_limit", "fetch_arrow",
           "quote_identifier", "run_query", "run_interruptible", "QueryTimeout",
           "DEFAULT_QUERY_TIMEOUT_S"]

T = TypeVar("T")

#: Default time limit of one task query, in seconds (``--query-timeout``).
DEFAULT_QUERY_TIMEOUT_S = 600.0
#: How often the waiting thread wakes to check the clock (and to re-send an interrupt).
_POLL_S = 0.05


class QueryTimeout(Exception):
    """A query ran past its time limit and was interrupted; ``seconds`` is the limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"interrupted after the {seconds:g} s limit")
        self.seconds = seconds


def quote_identifier(name: str) -> str:
    """``name`` as a DuckDB identifier that survives dots, spaces and digits."""
    return '"' + name.replace('"', '""') + '"'


def fetch_arrow(relation: Any) -> pa.Table:
    """A DuckDB relation (``con.sql(query)``) as an Arrow table, on DuckDB 1.x and 2.x."""
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def _literal(value: Any) -> str:
    """``value`` as a DuckDB string literal (SET takes no parameters)."""
    return "'" + str(value).replace("'", "''") + "'"


def _set_memory_limit(con: duckdb.DuckDBPyConnection, memory_limit: str) -> None:
    try:
        con.execute(f"SET memory_limit = {_literal(memory_limit)}")
    except duckdb.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TributaryError(f"--query-memory: {memory_limit!r} is not a memory size such as "
                             f"2GB or 500MB ({message})") from None


def check_memory_limit(memory_limit: str | None) -> None:
    """Raise :class:`TributaryError` (naming ``--query-memory``) unless ``memory_limit`` is
    None or a size DuckDB accepts (``2GB``, ``500MB``, ``1GiB``)."""
    if memory_limit is not None:
        con = duckdb.connect(":memory:")
        try:
            _set_memory_limit(con, memory_limit)
        finally:
            con.close()


class _SequentialDataset(pads.FileSystemDataset):
    """A parquet dataset whose scans decode one batch at a time, ahead of the reader by one,
    on the reading thread. A scan of Arrow's defaults decodes many row groups ahead on its
    thread pool; DuckDB's memory limit does not count those buffers (TPC-H SF10, a join of
    lineitem and orders under a 1 GB limit: 2.5 GB of the process's memory with the defaults,
    1.3 GB with this). DuckDB calls :meth:`scanner` with the columns and filter it pushes down."""

    def scanner(self, *args: Any, **kwargs: Any) -> pads.Scanner:
        kwargs.setdefault("use_threads", False)
        kwargs.setdefault("batch_readahead", 1)
        kwargs.setdefault("fragment_readahead", 1)
        return super().scanner(*args, **kwargs)


def parquet_dataset(path: str | Path, *, sequential: bool = False) -> pads.Dataset:
    """The parquet file at ``path`` as a dataset for :func:`sandbox_connection`;
    ``sequential``: scanned one batch at a time (what a memory limit needs, see
    :class:`_SequentialDataset`) instead of decoding ahead on all cores."""
    dataset = pads.dataset(path)
    if not sequential or not isinstance(dataset, pads.FileSystemDataset):
        return dataset
    return _SequentialDataset(list(dataset.get_fragments()), dataset.schema, dataset.format,
                              dataset.filesystem)


def query_datasets(paths: Mapping[str, str | Path], *, threads: int | None,
                   memory_limit: str | None) -> dict[str, pads.Dataset]:
    """The parquet files ``paths`` (name -> file) as datasets for task queries run with
    ``threads`` and ``memory_limit`` (as :func:`sandbox_connection` takes them): scanned one
    batch at a time under a memory limit (which does not count Arrow's read-ahead) or for one
    DuckDB thread (which cannot outrun it); Arrow's default scan otherwise."""
    sequential = memory_limit is not None or threads == 1
    return {name: parquet_dataset(path, sequential=sequential) for name, path in paths.items()}


def sandbox_connection(tables: Mapping[str, Any], *, threads: int | None = None,
                       memory_limit: str | None = None,
                       temp_directory: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection where each of ``tables`` (name -> Arrow table or dataset) is a
    relation of that name, also reachable as ``'<name>.parquet'`` (a view, not the file), time
    zone UTC, and no other data can be reached.

    ``threads``: DuckDB's worker threads (None: its default, all cores). One thread makes a
    query's floating-point aggregates (``sum``, ``avg`` of DOUBLE) add up in the same order on
    every run, so the same data gives the same bits.

    ``memory_limit``: DuckDB's memory limit (``"2GB"``; None: DuckDB's default, 80% of the
    machine's memory). Joins, aggregates and sorts past it spill to ``temp_directory``, which
    the caller creates and removes; a query that cannot spill fails with DuckDB's
    out-of-memory error."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit is not None:
        _set_memory_limit(con, memory_limit)
        if temp_directory is not None:
            con.execute(f"SET temp_directory = {_literal(temp_directory)}")
    for name, data in tables.items():
        con.register(name, data)
        con.execute(f"CREATE VIEW {quote_identifier(name + '.parquet')} AS "
                    f"SELECT * FROM {quote_identifier(name)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


@contextlib.contextmanager
def sandboxed(tables: Mapping[str, Any], *, threads: int | None = None,
              memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A :func:`sandbox_connection` whose spill files (past ``memory_limit``) go to a scratch
    folder of its own; the connection is closed and the folder removed when the block ends."""
    with scratch_folder("tributary-duckdb") as spill:
        con = sandbox_connection(tables, threads=threads, memory_limit=memory_limit,
                                 temp_directory=spill)
        try:
            yield con
        finally:
            con.close()


def run_query(con: duckdb.DuckDBPyConnection, query: str, *,
              timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S) -> pa.Table:
    """Run ``query`` on ``con`` and return its result as an Arrow table, interrupting DuckDB
    when it runs past ``timeout_s`` seconds (None: no limit; raises :class:`QueryTimeout`) or
    on Ctrl-C, after which KeyboardInterrupt is raised.

    The query runs in a worker thread while the calling thread waits in short steps and calls
    ``con.interrupt()`` when time is up. DuckDB does not stop for Ctrl-C by itself, and a
    KeyboardInterrupt raised while it runs can leave the connection unusable, so from the main
    thread SIGINT is caught for the duration of the query: it interrupts DuckDB, and once the
    query has stopped KeyboardInterrupt is raised as usual. DuckDB errors are re-raised as they
    are. ``con`` must not be used by another thread meanwhile.
    """
    return run_interruptible(con, lambda: fetch_arrow(con.sql(query)), timeout_s=timeout_s)


def run_interruptible(con: duckdb.DuckDBPyConnection, call: Callable[[], T], *,
                      timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S) -> T:
    """``call()``, which runs queries on ``con``, with :func:`run_query`'s time limit and Ctrl-C
    handling (for example a loop that streams a result away in batches)."""
    outcome: dict[str, Any] = {}
    ctrl_c: list[int] = []

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc

    def on_sigint(signum: int, frame: Any) -> None:
        ctrl_c.append(signum)
        con.interrupt()

    worker = threading.Thread(target=work, name="tributary-query", daemon=True)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    start = time.monotonic()
    try:
        worker.start()
        timed_out = False
        while worker.is_alive():
            worker.join(_POLL_S)
            if ctrl_c or (timeout_s is not None and time.monotonic() - start > timeout_s):
                timed_out = not ctrl_c
                _stop(con, worker)
    except KeyboardInterrupt:  # not the main thread, or a handler of our caller's raised it
        _stop(con, worker)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if ctrl_c:
        raise KeyboardInterrupt
    if timed_out and "value" not in outcome:  # a query that finished at the limit counts
        raise QueryTimeout(timeout_s)  # type: ignore[arg-type]
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _stop(con: duckdb.DuckDBPyConnection, worker: threading.Thread) -> None:
    """Interrupt the query until its thread ends (an interrupt sent before DuckDB started the
    query would be lost, so it is repeated). A KeyboardInterrupt while waiting is held back
    until the worker has stopped, so the connection is never closed under a running query."""
    pending: KeyboardInterrupt | None = None
    while worker.is_alive():
        try:
            con.interrupt()
            worker.join(_POLL_S)
        except KeyboardInterrupt as exc:
            pending = exc
    if pending is not None:
        raise pending
