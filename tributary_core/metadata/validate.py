"""Validation of metadata.json, alone and against the parquet files it describes.

Every finding is a :class:`~tributary_core.errors.Problem` with the JSON path of the field at
fault. Errors make the file unusable; warnings (e.g. dangling foreign keys, which real
databases have) are reported and counted but do not fail validation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tributary_core.errors import MetadataError, Problem
from tributary_core.keys import KeyIndex, as_key, key_kind
from tributary_core.metadata.io import load_metadata
from tributary_core.metadata.model import Metadata, split_ref
from tributary_core.metadata.paths import jpath
from tributary_core.registry import Registry, get_registry
from tributary_core.semantic_type import SemanticType
from tributary_core.sql import (
    DEFAULT_QUERY_TIMEOUT_S,
    QueryTimeout,
    query_datasets,
    run_interruptible,
    sandboxed,
)
from tributary_core.timeconv import parse_duration

__all__ = ["ValidationReport", "validate_metadata"]

_DB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENTIFIER = "identifier"
_TIMESTAMP = "timestamp"
#: Rows per batch when the values of a column are checked (``SemanticType.check_column``).
CHECK_BATCH_ROWS = 1 << 20


@attrs.define
class ValidationReport:
    """What :func:`validate_metadata` found."""

    source: str
    metadata: Metadata | None
    problems: list[Problem] = attrs.field(factory=list)
    #: Row counts per table, filled when the data was checked.
    rows: dict[str, int] = attrs.field(factory=dict)
    #: With ``keep_results``: each task whose query ran to the end -> its result, an Arrow IPC
    #: file in that folder.
    task_results: dict[str, Path] = attrs.field(factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> Metadata:
        """The metadata if valid; else :class:`MetadataError` listing every error."""
        if self.errors or self.metadata is None:
            raise MetadataError(self.source, self.errors)
        return self.metadata


def validate_metadata(
    metadata: Metadata | str | Path,
    *,
    raw_dir: str | Path | None = None,
    registry: Registry | None = None,
    query_timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S,
    query_memory: str | None = None,
    query_threads: int | None = None,
    keep_results: str | Path | None = None,
    foreign_key_values: bool = True,
) -> ValidationReport:
    """Check a metadata file (or loaded :class:`Metadata`) and, with ``raw_dir``, its data.

    Alone: names, stypes, keys, temporal columns, task fields and that task SQL parses.
    With ``raw_dir`` (one ``<table>.parquet`` per table): every parquet column annotated,
    Arrow types fit their stypes, primary keys unique and non-null, foreign keys of matching
    type (dangling values are warnings), values parse (times, booleans), and each task's SQL
    runs in the same sandboxed DuckDB connection preprocessing uses (run to the end, so an
    error that only shows on the data is caught here, not after the tables are encoded) and
    returns its anchor key, target and observation time. A query running past
    ``query_timeout_s`` seconds (``--query-timeout``; None: no limit) is interrupted and
    reported as a problem of that task; Ctrl-C interrupts it too. ``query_memory`` caps
    DuckDB's memory for the queries (``"2GB"``; ``--query-memory``; None: DuckDB's default),
    spilling to a temporary folder past it. ``query_threads``: DuckDB's threads for them
    (None: all cores). ``keep_results``: a folder where each query's result is written as it
    streams by (an Arrow IPC file, listed in ``report.task_results``), so that preprocessing
    reads it back instead of running the query a second time. ``foreign_key_values=False``
    leaves out looking every foreign-key value up among its parent's keys (the warnings about
    values with no parent row; the values are still read and checked as keys): preprocessing
    matches them anyway in its graph stage and warns there, with the same words
    (:func:`dangling_warning`).
    """
    registry = registry or get_registry()
    if isinstance(metadata, Metadata):
        report = ValidationReport(source="<metadata>", metadata=metadata)
    else:
        try:
            report = ValidationReport(source=str(metadata), metadata=load_metadata(metadata))
        except MetadataError as exc:
            return ValidationReport(source=exc.source, metadata=None, problems=exc.problems)
    assert report.metadata is not None
    _StaticChecks(report.metadata, registry, report.problems).run()
    if raw_dir is not None and report.ok:
        _DataChecks(report.metadata, Path(raw_dir), registry, report,
                    query_timeout_s=query_timeout_s, query_memory=query_memory,
                    query_threads=query_threads,
                    keep_results=Path(keep_results) if keep_results is not None else None,
                    foreign_key_values=foreign_key_values).run()
    return report


def run_task_query(con: duckdb.DuckDBPyConnection, query: str, *,
                   timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S,
                   keep: Path | None = None) -> pa.Schema:
    """Run task SQL to the end on ``con`` (a :func:`~tributary_core.sql.sandbox_connection`, as
    preprocessing uses), streaming its result away (or, with ``keep``, into that Arrow IPC
    file), and return the result's schema: an error that needs the data (a failed cast,
    ``error()``) is raised here as a ``duckdb.Error``, a query past ``timeout_s`` as
    :class:`~tributary_core.sql.QueryTimeout`; a kept file is then removed."""
    def drain() -> pa.Schema:
        relation = con.sql(query)
        reader = (getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch)(65536)
        if keep is None:
            for _batch in reader:
                pass
            return reader.schema
        try:
            with pa.ipc.new_file(str(keep), reader.schema) as sink:
                for batch in reader:
                    sink.write_batch(batch)
        except BaseException:
            keep.unlink(missing_ok=True)
            raise
        return reader.schema

    return run_interruptible(con, drain, timeout_s=timeout_s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _StaticChecks:
    """Rules that need only the metadata file and the installed plugins."""

    def __init__(self, md: Metadata, registry: Registry, problems: list[Problem]) -> None:
        self.md = md
        self.registry = registry
        self.problems = problems

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def stype(self, name: str, path: str) -> SemanticType | None:
        cls = self.registry.semantic_types.get(name)
        if cls is None:
            known = ", ".join(sorted(self.registry.semantic_types))
            self.error(path, f"unknown stype {name!r}; registered: {known} (a plugin's type needs its "
                             f"package installed: see `tributary plugins list`)")
            return None
        return cls()

    def run(self) -> None:
        md = self.md
        if not _DB_NAME.match(md.name):
            self.error(jpath("name"), f"name {md.name!r} must start with a letter or digit and "
                                      "contain only letters, digits, '_', '-' and '.'")
        if not md.tables:
            self.error(jpath("tables"), "a database needs at least one table")
        for tname, table in md.tables.items():
            self.check_table(tname, table)
        for task_name, task in md.tasks.items():
            self.check_task(task_name, task)

    def check_table(self, tname: str, table: Any) -> None:
        tpath = ("tables", tname)
        if "/" in tname or "\\" in tname or tname.startswith(".") or not tname.strip():
            self.error(jpath(*tpath), f"table name {tname!r} cannot be a file name")
        if not table.columns:
            self.error(jpath(*tpath, "columns"), "a table needs at least one column")
        for cname, col in table.columns.items():
            cpath = (*tpath, "columns", cname)
            self.stype(col.stype, jpath(*cpath, "stype"))
            if col.foreign_key is not None:
                self.check_foreign_key(col.foreign_key, col.stype, cpath)
        if table.primary_key is not None:
            pk = table.columns.get(table.primary_key)
            if pk is None:
                self.error(jpath(*tpath, "primary_key"),
                           f"no column {table.primary_key!r} in table {tname!r}")
            elif pk.stype != _IDENTIFIER:
                self.error(jpath(*tpath, "columns", table.primary_key, "stype"),
                           f"primary key must have stype \"identifier\", not {pk.stype!r}")
        if table.temporal_column is not None and table.temporal_from is not None:
            self.error(jpath(*tpath, "temporal_from"),
                       "give temporal_column or temporal_from, not both")
        if table.temporal_column is not None:
            tc = table.columns.get(table.temporal_column)
            if tc is None:
                self.error(jpath(*tpath, "temporal_column"),
                           f"no column {table.temporal_column!r} in table {tname!r}")
            elif tc.stype != _TIMESTAMP:
                self.error(jpath(*tpath, "columns", table.temporal_column, "stype"),
                           f"temporal column must have stype \"timestamp\", not {tc.stype!r}")
        if table.temporal_from is not None:
            self.check_temporal_from(tname, table)

    def check_foreign_key(self, ref: str, stype: str, cpath: tuple[str, ...]) -> None:
        path = jpath(*cpath, "foreign_key")
        parts = split_ref(ref)
        if parts is None:
            self.error(path, f"foreign key {ref!r} must be written \"table.column\"")
            return
        ptable, pcol = parts
        parent = self.md.tables.get(ptable)
        if parent is None:
            self.error(path, f"table {ptable!r} does not exist; tables: "
                             f"{', '.join(self.md.tables)}")
        elif pcol not in parent.columns:
            self.error(path, f"table {ptable!r} has no column {pcol!r}")
        elif parent.primary_key != pcol:
            self.error(path, f"{ref!r} is not the primary key of table {ptable!r} "
                             f"(primary key: {parent.primary_key or 'none'})")
        if stype != _IDENTIFIER:
            self.error(jpath(*cpath, "stype"),
                       f"a foreign-key column must have stype \"identifier\", not {stype!r}")

    def check_temporal_from(self, tname: str, table: Any) -> None:
        path = jpath("tables", tname, "temporal_from")
        seen = {tname}
        current_name, current = tname, table
        while current is not None and current.temporal_from is not None:
            col = current.columns.get(current.temporal_from)
            parts = split_ref(col.foreign_key) if col is not None and col.foreign_key else None
            if parts is None:
                self.error(path, f"temporal_from {current.temporal_from!r} of table "
                                 f"{current_name!r} must be one of its foreign-key columns")
                return
            current_name, current = parts[0], self.md.tables.get(parts[0])
            if current_name in seen:
                self.error(path, f"temporal_from goes round in a cycle through {current_name!r}")
                return
            seen.add(current_name)
        if current is not None and current.temporal_column is None:
            self.error(path, f"parent table {current_name!r} has no temporal_column to take "
                             "time from")

    def check_task(self, name: str, task: Any) -> None:
        tpath = ("tasks", name)
        anchor = self.md.tables.get(task.anchor_table)
        if anchor is None:
            self.error(jpath(*tpath, "anchor_table"),
                       f"table {task.anchor_table!r} does not exist; tables: "
                       f"{', '.join(self.md.tables)}")
        elif task.anchor_key not in anchor.columns:
            self.error(jpath(*tpath, "anchor_key"),
                       f"table {task.anchor_table!r} has no column {task.anchor_key!r}")
        elif anchor.primary_key != task.anchor_key:
            self.error(jpath(*tpath, "anchor_key"),
                       f"anchor_key must be the primary key of {task.anchor_table!r} "
                       f"(primary key: {anchor.primary_key or 'none'})")
        stype = self.stype(task.target_stype, jpath(*tpath, "target_stype"))
        if stype is not None and not stype.can_be_target:
            targets = sorted(n for n, c in self.registry.semantic_types.items() if c.target_losses)
            self.error(jpath(*tpath, "target_stype"),
                       f"stype {task.target_stype!r} cannot be a prediction target; "
                       f"targets: {', '.join(targets)}")
        for i, ref in enumerate(task.hidden_columns):
            if self.md.column(ref) is None:
                self.error(jpath(*tpath, "hidden_columns", i),
                           f"{ref!r} is not a \"table.column\" of this database")
            elif anchor is not None and split_ref(ref)[0] != task.anchor_table:  # type: ignore[index]
                # the sampler hides cells of the anchor table only: refuse what it would ignore
                self.error(jpath(*tpath, "hidden_columns", i),
                           f"{ref!r} is not a column of the anchor table {task.anchor_table!r}: "
                           "hidden_columns hide the anchor table's own columns only")
        if task.horizon is not None:
            try:
                parse_duration(task.horizon)
            except ValueError as exc:
                self.error(jpath(*tpath, "horizon"), str(exc))
        self.check_query(task.query, jpath(*tpath, "query"))

    def check_query(self, query: str, path: str) -> None:
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            self.error(path, f"SQL does not parse: {_first_line(exc)}")
            return
        if len(statements) != 1:
            self.error(path, f"expected one SQL statement, found {len(statements)}")
        elif statements[0].type != duckdb.StatementType.SELECT:
            self.error(path, f"expected a SELECT query, found {statements[0].type.name}")


def column_batches(path: Path, column: str, batch_rows: int | None = None, *,
                   dictionary: bool = False) -> Iterator[pa.ChunkedArray]:
    """Column ``column`` of a parquet file in row batches of at most ``batch_rows`` rows
    (None: :data:`CHECK_BATCH_ROWS`), in order: one row group's pages decoded at a time, never
    the whole column. Validation and preprocessing both read columns through it.

    ``dictionary``: a string or binary column comes dictionary-encoded (Arrow keeps the
    file's dictionary pages instead of decoding every value: a tenth of the time or less for a
    column of few distinct strings), where every row group fits in a batch; other columns are
    read as they are. (Each batch carries its row group's whole dictionary, and where a writer
    fell back from a dictionary Arrow builds one as it goes: with batches smaller than a row
    group, a column of many distinct values would cost far more than a plain read.)"""
    size = CHECK_BATCH_ROWS if batch_rows is None else batch_rows
    read_dictionary = None
    if dictionary:
        meta = pq.read_metadata(path)
        t = meta.schema.to_arrow_schema().field(column).type
        largest = max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)),
                      default=0)
        if largest <= size and (pa.types.is_string(t) or pa.types.is_large_string(t)
                                or pa.types.is_string_view(t) or pa.types.is_binary(t)
                                or pa.types.is_large_binary(t)):
            read_dictionary = [column]
    with pq.ParquetFile(path, read_dictionary=read_dictionary) as file:
        for batch in file.iter_batches(batch_size=size, columns=[column], use_threads=False):
            yield pa.chunked_array([batch.column(0)])


def dangling_values(batch: pa.ChunkedArray, found: np.ndarray) -> pa.ChunkedArray | None:
    """The values of a foreign-key ``batch`` with no parent row (``found``: the parent row per
    value, -1 for none), nulls left out, as keys; None when every value has one."""
    missing = (found < 0) & np.asarray(pc.is_valid(batch).to_numpy(zero_copy_only=False),
                                       dtype=bool)
    return as_key(batch.filter(pa.array(missing))) if missing.any() else None


def dangling_warning(tname: str, cname: str, ptable: str, pcol: str,
                     parts: list[pa.ChunkedArray]) -> Problem:
    """The warning about foreign key ``tname.cname``'s values that have no row in
    ``ptable.pcol``: ``parts`` (:func:`dangling_values` of each batch) holds each such value,
    in row order (validation and preprocessing's graph stage both word it so)."""
    dangling = pa.chunked_array([c for p in parts for c in p.chunks])
    distinct = pc.count_distinct(dangling).as_py()
    return Problem(jpath("tables", tname, "columns", cname, "foreign_key"),
                   f"{len(dangling)} value(s) ({distinct} distinct) of {tname}.{cname} have no "
                   f"row in {ptable}.{pcol}, e.g. {dangling[0].as_py()!r}; they load as missing "
                   "parents", severity="warning")


def _overrides(stype: SemanticType, method: str) -> bool:
    return getattr(type(stype), method) is not getattr(SemanticType, method)


class _DataChecks:
    """Rules that read the parquet files (schemas first, then only the columns needed)."""

    def __init__(self, md: Metadata, raw: Path, registry: Registry, report: ValidationReport, *,
                 query_timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S,
                 query_memory: str | None = None, query_threads: int | None = None,
                 keep_results: Path | None = None, foreign_key_values: bool = True):
        self.query_timeout_s = query_timeout_s
        self.foreign_key_values = foreign_key_values
        self.query_memory = query_memory
        self.query_threads = query_threads
        self.keep_results = keep_results
        self.md = md
        self.raw = raw
        self.registry = registry
        self.report = report
        self.paths: dict[str, Path] = {}
        self.schemas: dict[str, pa.Schema] = {}
        self._parent_keys: dict[tuple[str, str], KeyIndex] = {}
        #: (table, column) of every key a foreign key references
        self._referenced = {split_ref(col.foreign_key) for table in md.tables.values()
                            for col in table.columns.values() if col.foreign_key}

    def error(self, path: str, message: str) -> None:
        self.report.problems.append(Problem(path, message))

    def warning(self, path: str, message: str) -> None:
        self.report.problems.append(Problem(path, message, severity="warning"))

    def column(self, table: str, name: str) -> pa.ChunkedArray:
        """One column, read for one check and not kept: holding every column a check read
        (keys, timestamps) until the task queries ran held most of a large database at once."""
        return pq.read_table(self.paths[table], columns=[name]).column(0)

    def parent_keys(self, table: str, name: str) -> KeyIndex | None:
        """The distinct non-null values of a referenced key, indexed, kept for the other foreign
        keys that reference it; None for keys that are no 64-bit signed integers (uint64 past
        its range: the primary key's own check says so)."""
        key = (table, name)
        if key not in self._parent_keys:
            try:
                values = as_key(self.column(table, name))
            except pa.ArrowInvalid:
                return None
            if key_kind(values.type) != "integer":  # Arrow's lookup: its value set distinct
                values = values.drop_null().unique()
            self._parent_keys[key] = KeyIndex(values)
        return self._parent_keys[key]

    def run(self) -> None:
        if not self.raw.is_dir():
            self.error("$", f"raw data directory {self.raw} does not exist")
            return
        self.check_files()
        for check in (self.check_columns, self.check_keys):
            for tname, table in self.md.tables.items():
                if tname not in self.schemas:
                    continue
                try:
                    check(tname, table)
                except (pa.ArrowException, OSError) as exc:  # a footer that reads, data that not
                    self.error(jpath("tables", tname), f"{self.paths[tname]} is not a readable "
                                                       f"parquet file: {_first_line(exc)}")
                    del self.schemas[tname]
                pa.default_memory_pool().release_unused()  # what Arrow keeps for reuse
        self._parent_keys.clear()
        pa.default_memory_pool().release_unused()  # before DuckDB runs the task queries
        if self.md.tasks and len(self.schemas) == len(self.md.tables):
            self.check_tasks()

    def check_files(self) -> None:
        for extra in sorted(p.name for p in self.raw.glob("*.parquet")
                            if p.stem not in self.md.tables):
            self.error(jpath("tables"), f"{self.raw / extra} has no table in the metadata")
        for tname in self.md.tables:
            path = self.raw / f"{tname}.parquet"
            if not path.is_file():
                self.error(jpath("tables", tname), f"{path} not found")
                continue
            try:
                meta = pq.read_metadata(path)
            except (pa.ArrowException, OSError) as exc:
                self.error(jpath("tables", tname), f"{path} is not a readable parquet file: "
                                                   f"{_first_line(exc)}")
                continue
            self.paths[tname] = path
            self.schemas[tname] = meta.schema.to_arrow_schema()
            self.report.rows[tname] = meta.num_rows

    def check_columns(self, tname: str, table: Any) -> None:
        path, schema = self.paths[tname], self.schemas[tname]
        for name in schema.names:
            if name not in table.columns:
                self.error(jpath("tables", tname, "columns"),
                           f"column {name!r} of {path.name} is not annotated (give it an stype; "
                           "\"ignored\" skips it)")
        for cname, col in table.columns.items():
            cpath = ("tables", tname, "columns", cname)
            if cname not in schema.names:
                self.error(jpath(*cpath), f"{path.name} has no column {cname!r}")
                continue
            stype = self.registry.semantic_type(col.stype)
            arrow_type = schema.field(cname).type
            reason = stype.check_arrow_type(arrow_type)
            if reason is None and _overrides(stype, "check_column"):
                reason = self.check_values(tname, cname, stype)
            if reason is not None:
                self.error(jpath(*cpath, "stype"),
                           f"{path.name} column {cname!r} is not {col.stype}: {reason}")

    def check_values(self, tname: str, cname: str, stype: SemanticType) -> str | None:
        """``stype.check_column`` on the column's row batches, in order, never the whole column
        at once; the first batch with a problem gives the reason (its rows named when the table
        has more than one batch)."""
        n = self.report.rows[tname]
        lo = 0
        for batch in column_batches(self.paths[tname], cname):
            reason = stype.check_column(batch)
            if reason is not None:
                if n > len(batch):
                    reason = f"in rows {lo}-{lo + len(batch) - 1}, {reason}"
                return reason
            lo += len(batch)
        return None

    def check_keys(self, tname: str, table: Any) -> None:
        fname = self.paths[tname].name
        pk = table.primary_key
        if pk is not None and pk in self.schemas[tname].names:
            values = self.column(tname, pk)
            if values.null_count:
                self.error(jpath("tables", tname, "primary_key"),
                           f"primary key {pk!r} of {fname} has {values.null_count} null value(s)")
            try:
                index: KeyIndex | None = KeyIndex(values)  # integers: no hash table of every key
            except pa.ArrowInvalid as exc:  # uint64 keys past int64
                index = None
                self.error(jpath("tables", tname, "primary_key"),
                           f"primary key {pk!r} of {fname} does not fit a 64-bit signed integer: "
                           f"{_first_line(exc)}")
            del values
            n_repeated, example = index.repeats() if index is not None else (0, None)
            if n_repeated:
                self.error(jpath("tables", tname, "primary_key"),
                           f"primary key {pk!r} of {fname} is not unique: {n_repeated} value(s) "
                           f"repeat, e.g. {example!r}")
            if (self.foreign_key_values and index is not None and index.kind == "integer"
                    and (tname, pk) in self._referenced):
                self._parent_keys.setdefault((tname, pk), index)  # for the foreign keys
            del index
        for cname, col in table.columns.items():
            if col.foreign_key is None or cname not in self.schemas[tname].names:
                continue
            ptable, pcol = split_ref(col.foreign_key)  # type: ignore[misc]  (checked statically)
            if ptable not in self.schemas or pcol not in self.schemas[ptable].names:
                continue
            self.check_foreign_key(tname, cname, ptable, pcol)

    def check_foreign_key(self, tname: str, cname: str, ptable: str, pcol: str) -> None:
        path = jpath("tables", tname, "columns", cname, "foreign_key")
        child_t = self.schemas[tname].field(cname).type
        parent_t = self.schemas[ptable].field(pcol).type
        if key_kind(child_t) != key_kind(parent_t):
            self.error(path, f"{tname}.{cname} is {child_t} but {ptable}.{pcol} is {parent_t}: "
                             "keys must both be integers or both strings")
            return
        if not self.foreign_key_values:
            # the values are still read and made keys (int64, string), batch by batch, so that
            # data that does not read, or a uint64 past int64, is this report's error as when
            # they are looked up; only the lookups are left to the caller
            for batch in column_batches(self.paths[tname], cname):
                as_key(batch)
            return
        parent = self.parent_keys(ptable, pcol)
        if parent is None:
            return
        if parent.batched(CHECK_BATCH_ROWS):  # the child column batch by batch
            batches: Any = column_batches(self.paths[tname], cname)
        else:
            batches = [self.column(tname, cname)]
        parts = [part for batch in batches
                 if (part := dangling_values(batch, parent.lookup(batch))) is not None]
        if parts:
            self.report.problems.append(dangling_warning(tname, cname, ptable, pcol, parts))

    def check_tasks(self) -> None:
        tables = query_datasets(self.paths, threads=self.query_threads,
                                memory_limit=self.query_memory)
        with sandboxed(tables, threads=self.query_threads, memory_limit=self.query_memory) as con:
            for i, (name, task) in enumerate(self.md.tasks.items()):
                keep = None if self.keep_results is None else self.keep_results / f"{i}.arrow"
                self.check_task(con, name, task, keep)

    def check_task(self, con: duckdb.DuckDBPyConnection, name: str, task: Any,
                   keep: Path | None = None) -> None:
        qpath = jpath("tasks", name, "query")
        try:
            schema = run_task_query(con, task.query, timeout_s=self.query_timeout_s, keep=keep)
        except duckdb.Error as exc:
            self.error(qpath, f"SQL fails in DuckDB: {_first_line(exc)}")
            return
        except QueryTimeout as exc:
            self.error(qpath, f"the query ran past the {exc.seconds:g} s limit and was stopped "
                              f"(raise it with --query-timeout)")
            return
        if keep is not None:
            self.report.task_results[name] = keep
        columns = ", ".join(schema.names)
        checks: list[tuple[str, str | None, Callable[[pa.DataType], str | None]]] = [
            ("anchor_key", task.anchor_key, lambda t: self.anchor_type_problem(task, t)),
            ("target_column", task.target_column,
             lambda t: self.registry.semantic_type(task.target_stype).check_arrow_type(t)),
            ("observation_time_column", task.observation_time_column,
             lambda t: None if pa.types.is_timestamp(t) or pa.types.is_date(t)
             else f"expected a TIMESTAMP or DATE, got {t}"),
        ]
        for field, col, check in checks:
            if col is None:
                continue
            path = jpath("tasks", name, field)
            if col not in schema.names:
                self.error(path, f"the query returns no column {col!r}; it returns: {columns}")
                continue
            reason = check(schema.field(col).type)
            if reason is not None:
                self.error(path, f"query column {col!r}: {reason}")

    def anchor_type_problem(self, task: Any, t: pa.DataType) -> str | None:
        anchor_t = self.schemas[task.anchor_table].field(task.anchor_key).type
        if key_kind(t) != key_kind(anchor_t):
            return f"is {t} but {task.anchor_table}.{task.anchor_key} is {anchor_t}"
        return None
