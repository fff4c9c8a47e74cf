"""Raw database (parquet + metadata.json) -> the store of DESIGN §3.

Stages, each timed and reported:

1. ``validate``: the metadata against the data (``tributary metadata validate --raw``).
2. ``keys``: primary keys and row times of every table (``temporal_from`` followed through its
   foreign keys), and the database-wide timestamp statistics.
3. ``graph``: per foreign-key column, its values matched to parent rows and a CSR both ways;
   ``graph.bin``.
4. ``encode``: every table, one at a time, each column in row batches through its semantic
   type; ``tables/<table>.bin``.
5. ``tasks``: each task's SQL in a sandboxed DuckDB, anchors matched to rows, observation times
   resolved, targets encoded; ``tasks/<task>.bin``.
6. ``embed``: column names and the shared vocabulary through the embedder; the two
   ``*_embeddings.bin`` files.

Each stage from 2 on is a function that takes what it reads and returns what it produces
(:class:`Keys`, :class:`Graph`, :class:`EncodedTables`, :class:`Tasks`, the embedding
statistics), and :func:`preprocess` passes the products along. Besides its inputs, a stage may
write files through the one ``_StoreWriter`` (which keeps the table of files for
``metadata.json``), and ``encode`` and ``tasks`` add strings to the one shared
:class:`~tributary_core.semantic_type.Vocabulary`, whose ids both stages' files hold.

Everything is written into a temporary folder beside the output and renamed into place at the
end, so a crash or Ctrl-C never leaves a half store that looks whole. The same inputs give the
same bytes (no times, paths or thread-order effects are stored; task seeds are sorted).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import duckdb
import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tributary_core.atomic import scratch_folder, staged_folder
from tributary_core.embed_cache import EmbeddingCache, EmbedStats, default_cache_dir, embed_texts
from tributary_core.embedder import Embedder
from tributary_core.errors import TributaryError
from tributary_core.folders import is_protected
from tributary_core.keys import KeyIndex, KeyMatch, as_key, key_kind
from tributary_core.metadata import Metadata, dump_metadata, validate_metadata
from tributary_core.metadata.model import split_ref
from tributary_core.metadata.validate import (
    column_batches,
    dangling_values,
    dangling_warning,
)
from tributary_core.preprocess.graph import NO_TIME, csr_fill, csr_offsets
from tributary_core.registry import Registry, get_registry
from tributary_core.sampler.graph import write_sampler_file
from tributary_core.semantic_type import ColumnEncoder, Prepared, SemanticType, Vocabulary
from tributary_core.sql import (
    DEFAULT_QUERY_TIMEOUT_S,
    QueryTimeout,
    check_memory_limit,
    query_datasets,
    run_query,
    sandboxed,
)
from tributary_core.store.format import (
    FORMAT_VERSION,
    METADATA,
    FileWriter,
    MappedSection,
    SectionWriter,
    StoreFile,
    Syncer,
    drop_cached,
    dump_store_metadata,
    replace_problem,
    reserve_bytes,
    write_file,
)
from tributary_core.store.reader import Store
from tributary_core.timeconv import format_epoch_us, parse_duration, to_epoch_us

__all__ = ["preprocess", "PreprocessResult", "NO_CUTOFF", "Progress"]

#: Rows per batch when a column is read in pieces (``--batch-rows``): with a few tens of
#: bytes of working set per row, some tens of MB a batch.
DEFAULT_BATCH_ROWS = 1 << 20
#: Row times and primary keys of at least this many bytes are kept in mapped scratch files
#: (512 Ki rows of 8 bytes), smaller ones in memory.
SPILL_MIN_BYTES = 1 << 22
#: Observation time of a seed with no cut-off: every row is visible.
NO_CUTOFF = np.iinfo(np.int64).max
#: ``progress(stage, done, total)``: called as work advances; ``total`` may be 0 if unknown.
#: ``progress(stage, done, total, note)``; ``note`` is a short status such as a rate.
Progress = Callable[[str, int, int, str], None]


@attrs.define
class PreprocessResult:
    """What :func:`preprocess` wrote and what it found."""

    path: Path
    rows: dict[str, int] = attrs.field(factory=dict)
    cells: int = 0
    edges: int = 0
    dangling: dict[str, int] = attrs.field(factory=dict)  # "table.column" -> values with no parent
    null_keys: dict[str, int] = attrs.field(factory=dict)
    vocab_size: int = 0
    tasks: dict[str, dict[str, int]] = attrs.field(factory=dict)  # seeds, unmatched, null targets
    seconds: dict[str, float] = attrs.field(factory=dict)
    store_bytes: int = 0
    warnings: list[str] = attrs.field(factory=list)
    embedding: EmbedStats = attrs.field(factory=EmbedStats)


def _noop(stage: str, done: int, total: int, note: str = "") -> None:
    pass


def preprocess(
    metadata: Metadata | str | Path,
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    embedder: Embedder,
    force: bool = False,
    stats_cutoff_us: int | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    query_timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S,
    query_threads: int | None = 1,
    query_memory: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> PreprocessResult:
    """Preprocess the database described by ``metadata`` with parquet files in ``raw_dir``.

    Args:
        embedder: embeds column names and vocabulary (its identity is recorded in the store).
        force: replace an existing store at ``out_dir``; without it an existing one is an error.
        stats_cutoff_us: fit normalization statistics only on rows whose time is at or before
            this (epoch µs); untimed rows always count. None: all rows.
        progress: called as each stage advances (the CLI draws bars from it).
        cache_dir: the embedding cache shared by all databases [default:
            :func:`~tributary_core.embed_cache.default_cache_dir`].
        use_cache: False embeds everything again and caches nothing.
        query_timeout_s: time limit of each task's SQL in seconds (None: none); a query past
            it is interrupted and the run fails naming the task (``--query-timeout``).
        query_threads: DuckDB threads for the task SQL. 1 (the default) makes floating-point
            aggregates add up in one order, so the store's bytes do not depend on timing;
            None uses every core.
        query_memory: DuckDB's memory limit for the task SQL, e.g. ``"2GB"`` (None: DuckDB's
            default, 80% of the machine's memory); past it joins, aggregates and sorts spill to
            a temporary folder (``--query-memory``).
        batch_rows: rows per batch when a column is read, fitted and encoded in pieces
            (``--batch-rows``); the working set of the encode stage grows with it, not with
            the tables. The store's bytes do not depend on it.

    Raises:
        TributaryError: invalid metadata or data, an unusable task, a failing or too slow
            query, an ``out_dir`` that exists (without ``force``) or is not a store (with it),
            or a write that fails; nothing is left behind.
    """
    registry = registry or get_registry()
    progress = progress or _noop
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if query_timeout_s is not None and not query_timeout_s > 0:
        raise TributaryError(f"--query-timeout: must be a positive number of seconds, got "
                             f"{query_timeout_s}")
    if is_protected(out_dir):
        raise TributaryError(f"{out_dir}: is the working directory or a folder above it; a store "
                             f"needs a folder of its own, e.g. data/processed/NAME")
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise TributaryError(f"{out_dir} already exists; use --force to replace it")
        problem = replace_problem(out_dir)
        if problem is not None:
            raise TributaryError(f"{out_dir}: {problem}")
    check_memory_limit(query_memory)
    check_batch_rows(batch_rows)
    # each task query's result, kept by validation (which runs it to the end anyway) for the
    # tasks stage to read back instead of running it again
    with scratch_folder("tributary-task-results") as kept:
        clock = _Clock()
        with clock("validate"):
            progress("validate", 0, 1)
            report = validate_metadata(metadata, raw_dir=raw_dir, registry=registry,
                                       query_timeout_s=query_timeout_s, query_memory=query_memory,
                                       query_threads=query_threads, keep_results=kept,
                                       foreign_key_values=False)  # the graph stage matches them
            md = report.raise_for_errors()
            _release_memory()
            progress("validate", 1, 1)
        with (staged_folder(out_dir, replace=force, may_replace=replace_problem) as tmp,
              Syncer() as syncer):  # fsyncs the store's files while the stages go on
            cache = None
            if use_cache and embedder.cacheable:
                cache = EmbeddingCache(cache_dir or default_cache_dir(), embedder.identity)
            db = _Database.of(md, raw_dir, registry)
            writer = _StoreWriter(tmp, out_dir, syncer)
            spill = _Spill(tmp / ".spill", out_dir)  # row times and keys; removed before publishing
            vocab = Vocabulary()  # the shared vocabulary: encode and tasks add to it
            cutoff = stats_cutoff_us  # the statistics window's end (None: all rows)
            with clock("keys"):
                keys = load_keys(db, cutoff, progress, batch_rows=batch_rows, spill=spill)
                _release_memory()
            with clock("graph"):
                graph = build_graph(db, keys, writer, progress, batch_rows=batch_rows)
                _release_memory()
            with clock("encode"):
                tables = encode_tables(db, keys, vocab, cutoff, writer, progress,
                                       batch_rows=batch_rows)
            with clock("tasks"):
                tasks = materialize_tasks(db, keys, tables, vocab, cutoff, writer, progress,
                                          query_timeout_s=query_timeout_s,
                                          query_threads=query_threads, query_memory=query_memory,
                                          kept=report.task_results)
                _release_memory()
            columns = tables.columns + tasks.columns  # the column-embedding table
            with clock("embed"):
                embedding = embed(embedder, cache, columns, vocab, writer, progress)
            warnings = (graph.warnings + keys.warnings + tables.warnings + tasks.warnings
                        + _unfitted_warning(tables.unfitted + tasks.unfitted))
            meta = _store_metadata(db, embedder, cutoff, keys, tables, graph, tasks, columns, vocab,
                                   writer.files)
            with clock("sampler"):
                progress("sampler", 0, 1)
                write_sampler_file(writer.opened(meta), writer.write_copied, registry)
                writer.durable()  # every file fsynced, sampler.bin included
                # its pages, cached in small folios by the writes, go: samplers read them back in
                # huge pages, as random reads across it need (store/format.py, _advise_huge)
                drop_cached(writer.folder / "sampler.bin")
                progress("sampler", 1, 1)
            spill.remove()
            writer.write_metadata(meta)  # its "files" is writer.files: sampler.bin included
            result = PreprocessResult(
                path=out_dir, rows=dict(keys.rows), cells=tables.cells, edges=graph.edges,
                dangling={f"{t}.{c}": link.n_dangling for (t, c), link in graph.links.items()},
                null_keys={f"{t}.{c}": link.n_null for (t, c), link in graph.links.items()},
                vocab_size=len(vocab), tasks=tasks.report, seconds=dict(clock.seconds),
                store_bytes=sum(f["bytes"] for f in writer.files.values()),
                warnings=[str(p) for p in report.warnings] + warnings, embedding=embedding)
    return result


def check_batch_rows(batch_rows: Any) -> None:
    """Refuse a batch size that is not a whole number of rows >= 1 (one line)."""
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise TributaryError(f"--batch-rows: must be a whole number of rows >= 1, got "
                             f"{batch_rows!r}")


class _Clock:
    """Seconds spent per stage: ``with clock("encode"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _read(path: Path, columns: list[str]) -> pa.Table:
    return pq.read_table(path, columns=columns)


# -- what the stages share: the database they read and the store they write -------------------


class _SemanticTypes:
    """The registry's semantic types by name, each made once."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._made: dict[str, SemanticType] = {}

    def __call__(self, name: str) -> SemanticType:
        if name not in self._made:
            self._made[name] = self._registry.semantic_type(name)
        return self._made[name]


@attrs.frozen
class _Database:
    """The validated database every stage reads: its metadata, its parquet files, and the
    semantic types of its columns."""

    md: Metadata
    paths: dict[str, Path]  # table -> its parquet file
    stype: _SemanticTypes

    @classmethod
    def of(cls, md: Metadata, raw: Path, registry: Registry) -> _Database:
        return cls(md, {t: raw / f"{t}.parquet" for t in md.tables}, _SemanticTypes(registry))


class _StoreWriter:
    """Writes the store's files into the temporary ``folder`` and keeps their table
    (``files``: relative path -> what :func:`write_file` reports) for ``metadata.json``;
    ``final`` is where the store will be published (for messages). The files are fsynced by
    ``syncer``'s thread as the stages go on (:meth:`durable` waits for it)."""

    def __init__(self, folder: Path, final: Path, syncer: Syncer) -> None:
        self.folder, self.final = folder, final
        self.syncer = syncer
        self.files: dict[str, dict[str, Any]] = {}

    def write(self, rel: str, kind: str, sections: dict[str, np.ndarray],
              meta: dict[str, Any] | None = None) -> None:
        path = self.folder / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[rel] = write_file(path, kind, sections, meta, syncer=self.syncer)
        except OSError as exc:
            raise self.error(rel, exc) from None

    def open(self, rel: str, kind: str) -> FileWriter:
        """A file to write one section at a time (:meth:`add`, then :meth:`close`); a failed
        run removes the whole temporary folder, this file included."""
        path = self.folder / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return FileWriter(path, kind, reserve=4096, syncer=self.syncer)
        except OSError as exc:
            raise self.error(rel, exc) from None

    def add(self, file: FileWriter, name: str, array: np.ndarray) -> None:
        try:
            file.add(name, array)
        except OSError as exc:
            raise self.error(file.path.relative_to(self.folder).as_posix(), exc) from None

    def map(self, file: FileWriter, name: str, dtype: Any,
            shape: tuple[int, ...]) -> MappedSection:
        try:
            return file.map_section(name, dtype, shape)
        except OSError as exc:
            raise self.error(file.path.relative_to(self.folder).as_posix(), exc) from None

    def finish(self, file: FileWriter, section: MappedSection) -> None:
        try:
            section.finish()
        except OSError as exc:
            raise self.error(file.path.relative_to(self.folder).as_posix(), exc) from None

    def close(self, rel: str, file: FileWriter, meta: dict[str, Any] | None = None) -> None:
        try:
            self.files[rel] = file.close(meta)
        except OSError as exc:
            raise self.error(rel, exc) from None

    def write_copied(self, rel: str, kind: str,
                     sections: dict[str, tuple[Any, tuple[int, ...],
                                               Iterable[tuple[Path, int, int, int]]]],
                     meta: dict[str, Any] | None = None) -> None:
        """Write a file whose sections are each given as ``(dtype, shape, ranges)``: byte
        ranges of the files already written, concatenated (:meth:`FileWriter.add_copy`: copied
        by the kernel, their checksums combined)."""
        path = self.folder / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileWriter(path, kind, syncer=self.syncer) as out:
                for name, (dtype, shape, ranges) in sections.items():
                    out.add_copy(name, dtype, shape, ranges)
                self.files[rel] = out.close(meta)
        except (OSError, ValueError) as exc:  # ValueError: a file that changed under the copy
            raise self.error(rel, exc) from None

    def durable(self) -> None:
        """Wait until every file written is fsynced and closed (a failed fsync: the error
        naming its file)."""
        try:
            self.syncer.wait()
        except OSError as exc:
            rel = exc.filename or ""
            with contextlib.suppress(ValueError):
                rel = Path(rel).relative_to(self.folder).as_posix()
            raise self.error(rel, exc) from None

    def opened(self, meta: dict[str, Any]) -> Store:
        """The store written so far, opened from the temporary folder with ``meta`` as its
        metadata (not yet written)."""
        return Store(self.folder, meta, {rel: StoreFile(self.folder / rel) for rel in self.files})

    def write_metadata(self, meta: dict[str, Any]) -> None:
        """Write ``metadata.json``, fsynced like the store's other files."""
        try:
            with open(self.folder / METADATA, "wb") as f:
                f.write(dump_store_metadata(meta))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise self.error(METADATA, exc) from None

    def error(self, rel: str, exc: OSError) -> TributaryError:
        return TributaryError(f"{self.final}: cannot write {rel} (in the temporary folder "
                              f"{self.folder.name}): {exc.strerror or exc}")


def _window(cutoff: int | None, times: np.ndarray | None) -> np.ndarray | None:
    """Rows inside the statistics window, given a table's row ``times`` (None: all rows)."""
    if cutoff is None or times is None:
        return None
    return (times <= cutoff) | (times == NO_TIME)


def _fit(stype: SemanticType, prepared: Any, rows: np.ndarray | None,
         where: str) -> tuple[dict[str, Any], bool]:
    """``stype.fit`` with its statistics checked (finite numbers only), and whether the column
    has values but none inside the statistics window (noted for a warning)."""
    stats = stype.fit(prepared, rows=rows)
    return stats, _checked(stype, stats, rows is not None, bool(prepared.valid.any()), where)


def _checked(stype: SemanticType, stats: dict[str, Any], windowed: bool, any_valid: bool,
             where: str) -> bool:
    """Refuse statistics that are not finite; return whether the column has values but none
    inside the statistics window (noted for a warning)."""
    bad = _non_finite(stats)
    if bad is not None:
        raise TributaryError(f"{where}: the {stype.name} statistics are not finite "
                             f"({bad}); the column cannot be encoded")
    return windowed and stats.get("count") == 0 and "mean" in stats and any_valid


def _match_parents(db: _Database, primary_keys: dict[str, pa.Array], tname: str, cname: str,
                   n: int, batch_rows: int, spill: _Spill) -> KeyMatch:
    """Foreign-key column ``tname.cname`` (``n`` rows) matched to its parent table's rows, read
    in row batches where the parent's key index allows, the rows kept in ``spill``."""
    ptable, _ = split_ref(db.md.tables[tname].columns[cname].foreign_key)  # type: ignore[arg-type,misc]
    return _match_column(KeyIndex(primary_keys[ptable]), db.paths[tname], cname, n, batch_rows,
                         spill.empty(n, np.int32))


def _match_column(index: KeyIndex, path: Path, cname: str, n: int, batch_rows: int,
                  out: np.ndarray) -> KeyMatch:
    """Column ``cname`` of ``path`` (``n`` rows) matched against ``index`` into ``out``: in row
    batches where :meth:`KeyIndex.batched` allows, else read whole."""
    if index.batched(batch_rows):
        batches: Iterable[pa.ChunkedArray] = column_batches(path, cname, batch_rows)
    else:
        batches = [_read(path, [cname]).column(cname)]
    return index.match(batches, n, out=out)


# -- stage 2: keys -------------------------------------------------------------------------


def _release_memory() -> None:
    """Hand what Arrow's allocator (mimalloc or jemalloc) holds free back to the system.
    It keeps freed pages for its own reuse, which numpy's allocations cannot use: between two
    columns, or two stages, what one left retained added to the next one's peak (a third of
    the anonymous RSS after validation at TPC-H SF1)."""
    pa.default_memory_pool().release_unused()


class _Spill:
    """Arrays kept through the run (row times, integer primary keys) in files of the staged
    folder instead of the process's own memory. Their pages belong to the page cache, which
    the kernel writes back and drops under pressure, so they do not add to the anonymous memory
    preprocessing needs. The files are reserved whole before they are mapped
    (:func:`reserve_bytes`), so a full disk is an error naming the store (``final``), not a
    bus error on a later write. Arrays under ``min_bytes`` stay plain arrays: each map holds a
    file open, and small tables gain nothing from it. ``folder`` None: plain arrays."""

    def __init__(self, folder: Path | None, final: Path | None = None, *,
                 min_bytes: int | None = None) -> None:
        self.folder, self.final = folder, final
        self.min_bytes = SPILL_MIN_BYTES if min_bytes is None else min_bytes
        self._count = 0

    def empty(self, n: int, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = n * dtype.itemsize
        if self.folder is None or n == 0 or nbytes < self.min_bytes:
            return np.empty(n, dtype=dtype)
        path = self.folder / f"{self._count}.bin"
        self._count += 1
        try:
            self.folder.mkdir(exist_ok=True)
            with open(path, "wb") as f:
                reserve_bytes(f.fileno(), 0, nbytes)
            return np.asarray(np.memmap(path, dtype=dtype, mode="r+", shape=(n,)))
        except OSError as exc:
            raise TributaryError(
                f"{self.final or self.folder}: cannot keep {nbytes:,} bytes of row times or "
                f"keys in a scratch file: {exc.strerror or exc}") from None

    def remove(self) -> None:
        """Remove the files (arrays still mapped stay readable until dropped)."""
        if self.folder is None or not self.folder.exists():
            return
        try:
            shutil.rmtree(self.folder)
        except OSError as exc:
            raise TributaryError(f"{self.final or self.folder}: cannot remove the scratch files "
                                 f"of row times and keys: {exc.strerror or exc}") from None


@attrs.frozen
class Keys:
    """Stage 2's product: what the later stages need to know of every table's rows."""

    rows: dict[str, int]  # table -> number of rows (every table, in metadata order)
    primary_keys: dict[str, pa.Array]  # table -> its primary-key column
    times: dict[str, np.ndarray]  # timed table -> int64 row times (NO_TIME = none)
    links: dict[tuple[str, str], KeyMatch]  # the temporal_from columns, matched to parent rows
    database_stats: dict[str, dict[str, Any]]  # stype name -> combined statistics
    warnings: list[str]


def load_keys(db: _Database, cutoff: int | None, progress: Progress, *,
              batch_rows: int = DEFAULT_BATCH_ROWS, spill: _Spill | None = None) -> Keys:
    """Primary keys and row times of every table (``temporal_from`` followed through its
    foreign keys), and the database-wide statistics of the types that ask for them. Row times
    and integer primary keys are read in row batches into ``spill``'s arrays."""
    spill = spill or _Spill(None)
    md = db.md
    rows: dict[str, int] = {}
    primary_keys: dict[str, pa.Array] = {}
    times: dict[str, np.ndarray] = {}
    links: dict[tuple[str, str], KeyMatch] = {}
    for i, (tname, table) in enumerate(md.tables.items()):
        progress("keys", i, len(md.tables))
        rows[tname] = pq.ParquetFile(db.paths[tname]).metadata.num_rows
        if table.primary_key:
            primary_keys[tname] = _primary_key(db.paths[tname], table.primary_key,
                                               rows[tname], batch_rows, spill)
        if table.temporal_column:  # converted batch by batch into the kept array
            times[tname] = _row_times(db.paths[tname], table.temporal_column, rows[tname],
                                      batch_rows, spill)
        _release_memory()

    def time_of(tname: str) -> np.ndarray | None:
        # Validation refuses temporal_from cycles, so this recursion ends.
        table = md.tables[tname]
        if tname in times or not table.temporal_from:
            return times.get(tname)
        ptable, _ = split_ref(table.columns[table.temporal_from].foreign_key)  # type: ignore[arg-type,misc]
        ptime = time_of(ptable)
        key = (tname, table.temporal_from)
        if key not in links:
            links[key] = _match_parents(db, primary_keys, tname, table.temporal_from,
                                        rows[tname], batch_rows, spill)
        parent = links[key].rows
        assert ptime is not None
        out = spill.empty(len(parent), np.int64)
        for lo in range(0, len(parent), batch_rows):
            part = parent[lo:lo + batch_rows]
            out[lo:lo + len(part)] = np.where(part >= 0, ptime[np.maximum(part, 0)], NO_TIME)
        times[tname] = out
        return out

    for tname in md.tables:
        time_of(tname)
    # Database-wide statistics for types that ask for them (timestamps).
    per_type: dict[str, list[dict[str, Any]]] = {}
    for tname, table in md.tables.items():
        cols = [c for c, col in table.columns.items()
                if db.stype(col.stype).combine([]) is not None]
        if not cols:
            continue
        window = _window(cutoff, times.get(tname))
        for cname in cols:  # one column at a time, in row batches, as the encode stage reads them
            stype = db.stype(table.columns[cname].stype)
            per_type.setdefault(stype.name, []).append(
                _column_stats(db, stype, tname, cname, window, rows[tname], batch_rows))
            _release_memory()
    warnings = _check_cutoff(cutoff, times)
    database_stats: dict[str, dict[str, Any]] = {}
    for name, stats in per_type.items():
        combined = db.stype(name).combine(stats)
        if combined is not None:
            bad = _non_finite(combined)
            if bad is not None:
                raise TributaryError(f"the database-wide {name} statistics are not finite "
                                     f"({bad})")
            database_stats[name] = combined
    progress("keys", len(md.tables), len(md.tables))
    return Keys(rows, primary_keys, times, links, database_stats, warnings)


def _row_times(path: Path, column: str, n: int, batch_rows: int, spill: _Spill) -> np.ndarray:
    """A table's row times (int64 epoch µs, :data:`NO_TIME` where null or not a time), the
    time column read in row batches."""
    where = f"{path.stem}.{column}"
    out = spill.empty(n, np.int64)
    lo = 0
    for data in column_batches(path, column, batch_rows):
        hi = lo + len(data)
        if hi > n:
            _check_rows(where, hi, n)
        conv = to_epoch_us(data)
        out[lo:hi] = np.where(conv.valid, conv.values, NO_TIME)
        lo = hi
    _check_rows(where, lo, n)
    return out


def _primary_key(path: Path, column: str, n: int, batch_rows: int,
                 spill: _Spill) -> pa.Array:
    """A table's primary-key column. An integer key without nulls is read in row batches into
    a spilled int64 array (Arrow wraps it without a copy); any other is read whole."""
    if key_kind(pq.read_schema(path).field(column).type) == "integer":
        out = spill.empty(n, np.int64)
        lo = 0
        for data in column_batches(path, column, batch_rows):
            data = as_key(data)
            if data.null_count:  # validation refuses these; read whole, as before
                break
            hi = lo + len(data)
            if hi > n:
                _check_rows(f"{path.stem}.{column}", hi, n)
            out[lo:hi] = data.to_numpy()
            lo = hi
        else:
            _check_rows(f"{path.stem}.{column}", lo, n)
            return pa.array(out)
    return _read(path, [column]).column(column).combine_chunks()


def _column_stats(db: _Database, stype: SemanticType, tname: str, cname: str,
                  window: np.ndarray | None, n: int, batch_rows: int) -> dict[str, Any]:
    """A column's statistics, fitted in row batches where its type has a column encoder."""
    encoder = stype.column_encoder(cname) if n else None
    if encoder is None:
        return stype.fit(stype.prepare(_read(db.paths[tname], [cname]).column(cname)),
                         rows=window)
    lo = 0
    for data in column_batches(db.paths[tname], cname, batch_rows):
        prepared = stype.prepare(data)
        encoder.fit(prepared, None if window is None else window[lo:lo + len(prepared)])
        lo += len(prepared)
        del data, prepared
    _check_rows(f"{tname}.{cname}", lo, n)
    return encoder.stats()


def _check_cutoff(cutoff: int | None, times: dict[str, np.ndarray]) -> list[str]:
    """A statistics cut-off before every row time would fit the statistics on nothing:
    refuse it (a typo in the year, most likely). Returns the warnings."""
    if cutoff is None:
        return []
    none = np.iinfo(np.int64).max
    earliest = min((int(np.min(t, where=t != NO_TIME, initial=none)) for t in times.values()),
                   default=none)  # no copy of the times
    if earliest == none:
        return ["--stats-cutoff has no effect: no row of the database has a time, so "
                "statistics are fitted on every row"]
    if earliest > cutoff:
        raise TributaryError(f"--stats-cutoff {format_epoch_us(cutoff)} is before every "
                             f"row time of the database (the earliest is "
                             f"{format_epoch_us(earliest)}): no statistics could be fitted")
    return []


# -- stage 3: graph ------------------------------------------------------------------------


@attrs.frozen
class Graph:
    """The graph stage's product; the CSRs themselves are in ``graph.bin``."""

    foreign_keys: list[dict[str, Any]]  # their entries in metadata.json
    edges: int
    links: dict[tuple[str, str], KeyMatch]  # per foreign key its counts (its rows let go)
    warnings: list[str]  # foreign keys with values that have no parent row


def build_graph(db: _Database, keys: Keys, writer: _StoreWriter, progress: Progress, *,
                batch_rows: int = DEFAULT_BATCH_ROWS) -> Graph:
    """A CSR both ways per foreign-key column: the column matched to its parent's rows (in row
    batches against a :class:`KeyIndex` of the parent's keys where :meth:`KeyIndex.batched`
    allows, else whole; the ``temporal_from`` columns ``keys`` matched already), written with
    the CSR in place into mapped sections of ``graph.bin``, one foreign key after another.
    A foreign key with values that have no parent row gets validation's warning about them
    (which preprocessing's validation leaves to this stage: the match is made here anyway)."""
    fks = [(t, c, col.foreign_key) for t, table in db.md.tables.items()
           for c, col in table.columns.items() if col.foreign_key]
    file = writer.open("graph.bin", "graph")
    out = []
    links: dict[tuple[str, str], KeyMatch] = {}
    indexes: dict[str, KeyIndex] = {}  # parent table -> its keys, indexed once
    edges = 0
    warnings: list[str] = []
    for i, (tname, cname, ref) in enumerate(fks):
        progress("graph", i, len(fks))
        ptable, pcol = split_ref(ref)  # type: ignore[misc]
        n_child = keys.rows[tname]
        # the match and the CSR are written in place into mapped sections of graph.bin: page
        # cache, not the process's own memory (sections in the order they always had)
        parent = writer.map(file, f"fk{i}.parent", np.int32, (n_child,))
        link = keys.links.get((tname, cname))
        if link is None:
            if ptable not in indexes:
                indexes[ptable] = KeyIndex(keys.primary_keys[ptable])
            link = _match_column(indexes[ptable], db.paths[tname], cname, n_child, batch_rows,
                                 parent.array)
        else:
            parent.array[:] = link.rows
        if link.n_dangling:
            warnings.append(_dangling_warning(db, tname, cname, ptable, pcol, parent.array,
                                              batch_rows))
        child_time = keys.times.get(tname)
        if child_time is None:
            child_time = np.full(n_child, NO_TIME, dtype=np.int64)
        indptr = csr_offsets(parent.array, keys.rows[ptable])
        writer.add(file, f"fk{i}.indptr", indptr)
        n_edges = int(indptr[-1])
        children = writer.map(file, f"fk{i}.children", np.int32, (n_edges,))
        times = writer.map(file, f"fk{i}.child_time", np.int64, (n_edges,))
        csr_fill(parent.array, child_time, indptr, children.array, times.array,
                 numba.get_num_threads())
        for section in (parent, children, times):
            writer.finish(file, section)
        out.append({"id": i, "child_table": tname, "column": cname, "parent_table": ptable,
                    "parent_column": pcol, "edges": n_edges,
                    "dangling": link.n_dangling, "null": link.n_null,
                    "sections": {k: f"fk{i}.{k}" for k in
                                 ("parent", "indptr", "children", "child_time")}})
        edges += n_edges
        links[(tname, cname)] = attrs.evolve(link, rows=np.zeros(0, dtype=np.int32))
        del parent, child_time, indptr, children, times, link
        _release_memory()
    keys.links.clear()  # the temporal_from matches, in graph.bin now
    progress("graph", len(fks), len(fks))
    writer.close("graph.bin", file, {"foreign_keys": len(fks)})
    return Graph(out, edges, links, warnings)


def _dangling_warning(db: _Database, tname: str, cname: str, ptable: str, pcol: str,
                      rows: np.ndarray, batch_rows: int) -> str:
    """Validation's warning (:func:`dangling_warning`) for foreign key ``tname.cname``, whose
    ``rows`` (the parent row per value, -1 for none) the graph stage matched: the column is
    read again in batches for the values with no parent row, kept in row order."""
    parts, lo = [], 0
    for batch in column_batches(db.paths[tname], cname, batch_rows):
        part = dangling_values(batch, rows[lo:lo + len(batch)])
        if part is not None:
            parts.append(part)
        lo += len(batch)
    return str(dangling_warning(tname, cname, ptable, pcol, parts))


# -- stage 4: encode -----------------------------------------------------------------------


@attrs.frozen
class EncodedTables:
    """Stage 4's product; the tables themselves are in ``tables/<table>.bin``."""

    meta: dict[str, Any]  # table -> its entry in metadata.json
    columns: list[dict[str, Any]]  # the column-embedding table: one entry per encoded column
    cells: int  # non-null encoded cells
    warnings: list[str]
    unfitted: list[str]  # columns with values but none inside the statistics window


def encode_tables(db: _Database, keys: Keys, vocab: Vocabulary, cutoff: int | None,
                  writer: _StoreWriter, progress: Progress, *,
                  batch_rows: int = DEFAULT_BATCH_ROWS) -> EncodedTables:
    """Every table, one at a time, one column at a time, each column in row batches of
    ``batch_rows`` (types with a :meth:`~SemanticType.column_encoder`; a type without one is
    read whole): a batch is read from the parquet file, encoded and written into the column's
    sections of the table's file before the next is read, so memory holds one batch's working
    set (plus the keys and row times of stage 2), not a column's. Categorical and text values
    are added to ``vocab``."""
    tables_meta: dict[str, Any] = {}
    columns: list[dict[str, Any]] = []
    cells = 0
    warnings: list[str] = []
    unfitted: list[str] = []
    total = len(db.md.tables)
    for i, (tname, table) in enumerate(db.md.tables.items()):
        progress("encode", i, total)
        names = [c for c, col in table.columns.items() if not db.stype(col.stype).is_ignored]
        mask = _window(cutoff, keys.times.get(tname))
        cols_meta: dict[str, Any] = {}
        rel = f"tables/{tname}.bin"
        out = writer.open(rel, "table")
        for j, cname in enumerate(names):
            col = table.columns[cname]
            stype = db.stype(col.stype)
            where = f"{tname}.{cname}"
            encoder = stype.column_encoder(cname) if keys.rows[tname] else None
            if encoder is None:
                column = _encode_whole(db, keys, vocab, stype, tname, cname, mask, writer, out,
                                       f"c{j}")
            else:
                column = _encode_batches(db, keys, vocab, stype, encoder, tname, cname, mask,
                                         writer, out, f"c{j}", batch_rows)
            if column.unfitted:
                unfitted.append(where)
            if column.note:
                warnings.append(f"{where}: {column.note}")
            column_id = len(columns)
            text = f"{cname} : {col.description}" if col.description else cname
            columns.append({"table": tname, "column": cname, "text": text})
            cols_meta[cname] = {"stype": stype.name, "column_id": column_id,
                                "stats": column.stats, "fields": column.fields,
                                "valid": f"c{j}.valid", "n_invalid": column.n_invalid}
            cells += column.cells
        timed = tname in keys.times
        if timed:
            writer.add(out, "time", keys.times[tname])
        key_meta = None
        if tname in keys.primary_keys:
            sections: dict[str, np.ndarray] = {}
            key_meta = _key_sections(keys.primary_keys[tname], sections)
            for name, arr in sections.items():
                writer.add(out, name, arr)
        writer.close(rel, out, {"table": tname, "rows": keys.rows[tname]})
        tables_meta[tname] = {
            "rows": keys.rows[tname], "file": rel, "primary_key": table.primary_key,
            "key": key_meta,
            "timed": timed, "time": "time" if timed else None,
            "temporal_column": table.temporal_column, "temporal_from": table.temporal_from,
            "columns": cols_meta,
        }
    progress("encode", total, total)
    return EncodedTables(tables_meta, columns, cells, warnings, unfitted)


@attrs.frozen
class _Column:
    """What encoding one column gave, besides the sections it wrote."""

    stats: dict[str, Any]
    fields: dict[str, str]  # field -> its section's name
    n_invalid: int
    cells: int  # valid encoded cells
    note: str | None  # check_encoded's warning
    unfitted: bool  # values, but none inside the statistics window


def _encode_whole(db: _Database, keys: Keys, vocab: Vocabulary, stype: SemanticType,
                  tname: str, cname: str, mask: np.ndarray | None, writer: _StoreWriter,
                  out: FileWriter, prefix: str) -> _Column:
    """A column read whole, through the type's whole-column methods (a type without a
    column encoder, or a table without rows)."""
    prepared = stype.prepare(_read(db.paths[tname], [cname]).column(cname))
    stats, empty = _fit(stype, prepared, mask, f"{tname}.{cname}")
    if stype.name in keys.database_stats:
        stats["database"] = keys.database_stats[stype.name]
    ids = None
    values = stype.vocabulary(prepared, cname)
    if values is not None:
        ids = vocab.add(*values)
    encoded = stype.encode(prepared, stats, ids)
    note = stype.check_encoded(prepared, stats, encoded)
    fields = {}
    for field, arr in encoded.arrays.items():
        writer.add(out, f"{prefix}.{field}", arr)
        fields[field] = f"{prefix}.{field}"
    writer.add(out, f"{prefix}.valid", encoded.valid)
    column = _Column(stats, fields, prepared.n_invalid, int(encoded.valid.sum()), note, empty)
    del prepared, encoded
    _release_memory()
    return column


def _encode_batches(db: _Database, keys: Keys, vocab: Vocabulary, stype: SemanticType,
                    encoder: ColumnEncoder, tname: str, cname: str, mask: np.ndarray | None,
                    writer: _StoreWriter, out: FileWriter, prefix: str,
                    batch_rows: int) -> _Column:
    """A column in row batches through its :class:`ColumnEncoder`: read once when the encoding
    needs no statistics (``one_pass``), else once to fit and once to encode. Each batch's cells
    go straight into the column's sections, reserved whole when the first batch is encoded."""
    where = f"{tname}.{cname}"
    path = db.paths[tname]
    n = keys.rows[tname]
    sinks: dict[str, SectionWriter] = {}
    fields: dict[str, str] = {}
    notes: list[tuple[int, int, str]] = []
    any_valid = False
    cells = 0

    def window(lo: int, hi: int) -> np.ndarray | None:
        return None if mask is None else mask[lo:hi]

    def put(prepared: Prepared, stats: dict[str, Any] | None, lo: int) -> None:
        nonlocal cells
        encoded = encoder.encode(prepared, stats, vocab)
        hi = lo + len(prepared)
        if not sinks:  # the first batch tells each field's dtype and cell shape
            for field, arr in encoded.arrays.items():
                name = f"{prefix}.{field}"
                sinks[name] = _begin(writer, out, name, arr.dtype, (n, *arr.shape[1:]))
                fields[field] = name
            sinks[f"{prefix}.valid"] = _begin(writer, out, f"{prefix}.valid", np.bool_, (n,))
        for field, arr in encoded.arrays.items():
            _write(writer, out, sinks[f"{prefix}.{field}"], arr)
        _write(writer, out, sinks[f"{prefix}.valid"], encoded.valid)
        cells += int(encoded.valid.sum())
        if stats is not None:
            note = stype.check_encoded(prepared, stats, encoded)
            if note:
                notes.append((lo, hi, note))

    dictionary = stype.reads_dictionary  # string columns as the file's dictionary pages
    lo = 0
    for data in column_batches(path, cname, batch_rows, dictionary=dictionary):
        prepared = stype.prepare(data)
        encoder.fit(prepared, window(lo, lo + len(prepared)))
        any_valid = any_valid or bool(prepared.valid.any())
        if encoder.one_pass:
            put(prepared, None, lo)
        lo += len(prepared)
        del data, prepared
        _release_memory()
    _check_rows(where, lo, n)
    stats = encoder.stats()
    empty = _checked(stype, stats, mask is not None, any_valid, where)
    if stype.name in keys.database_stats:
        stats["database"] = keys.database_stats[stype.name]
    if not encoder.one_pass:
        lo = 0
        for data in column_batches(path, cname, batch_rows, dictionary=dictionary):
            prepared = stype.prepare(data)
            put(prepared, stats, lo)
            lo += len(prepared)
            del data, prepared
            _release_memory()
        _check_rows(where, lo, n)
    for sink in sinks.values():
        _finish(writer, out, sink)
    note = None
    if notes:
        first_lo, first_hi, note = notes[0]
        if lo > batch_rows:  # more than one batch: say which rows
            note = f"in rows {first_lo}-{first_hi - 1}: {note}"
            if len(notes) > 1:
                note += (f" ({len(notes) - 1} more batch(es) of {batch_rows} rows warn "
                         "likewise)")
    return _Column(stats, fields, encoder.n_invalid, cells, note, empty)


def _check_rows(where: str, got: int, expected: int) -> None:
    if got != expected:
        raise TributaryError(f"{where}: read {got} rows, the parquet file's metadata says "
                             f"{expected}")


def _begin(writer: _StoreWriter, out: FileWriter, name: str, dtype: Any,
           shape: tuple[int, ...]) -> SectionWriter:
    try:
        return out.begin_section(name, dtype, shape)
    except OSError as exc:
        raise writer.error(out.path.relative_to(writer.folder).as_posix(), exc) from None


def _write(writer: _StoreWriter, out: FileWriter, sink: SectionWriter, arr: np.ndarray) -> None:
    try:
        sink.write(arr)
    except OSError as exc:
        raise writer.error(out.path.relative_to(writer.folder).as_posix(), exc) from None


def _finish(writer: _StoreWriter, out: FileWriter, sink: SectionWriter) -> None:
    try:
        sink.finish()
    except OSError as exc:
        raise writer.error(out.path.relative_to(writer.folder).as_posix(), exc) from None


# -- stage 5: tasks ------------------------------------------------------------------------


@attrs.frozen
class Tasks:
    """Stage 5's product; the seeds themselves are in ``tasks/<task>.bin``."""

    meta: dict[str, Any]  # task -> its entry in metadata.json
    report: dict[str, dict[str, int]]  # task -> seeds, unmatched, null targets, null times
    columns: list[dict[str, Any]]  # targets that are no column of their anchor table: more
    # entries of the column-embedding table, after EncodedTables.columns
    warnings: list[str]
    unfitted: list[str]  # targets with values but none inside the statistics window


@attrs.frozen
class _Task:
    """One task, materialized."""

    meta: dict[str, Any]
    report: dict[str, int]
    column: dict[str, Any] | None  # its column-embedding entry, if its target is new
    warnings: list[str]
    unfitted: str | None  # its target, if it has values but none inside the statistics window


def materialize_tasks(db: _Database, keys: Keys, tables: EncodedTables, vocab: Vocabulary,
                      cutoff: int | None, writer: _StoreWriter, progress: Progress, *,
                      query_timeout_s: float | None, query_threads: int | None,
                      query_memory: str | None = None,
                      kept: Mapping[str, Path] | None = None) -> Tasks:
    """Each task's SQL in a sandboxed DuckDB, anchors matched to rows, observation times
    resolved, targets encoded (categorical labels added to ``vocab``)."""
    meta: dict[str, Any] = {}
    report: dict[str, dict[str, int]] = {}
    columns: list[dict[str, Any]] = []
    warnings: list[str] = []
    unfitted: list[str] = []
    if not db.md.tasks:
        return Tasks(meta, report, columns, warnings, unfitted)
    datasets = query_datasets(db.paths, threads=query_threads, memory_limit=query_memory)
    with sandboxed(datasets, threads=query_threads, memory_limit=query_memory) as con:
        for i, (name, task) in enumerate(db.md.tasks.items()):
            progress("tasks", i, len(db.md.tasks))
            done = _materialize_task(db, keys, tables, vocab, cutoff, writer, con, name, task,
                                     column_id=len(tables.columns) + len(columns),
                                     query_timeout_s=query_timeout_s,
                                     kept=(kept or {}).get(name))
            meta[name], report[name] = done.meta, done.report
            if done.column is not None:
                columns.append(done.column)
            warnings.extend(done.warnings)
            if done.unfitted is not None:
                unfitted.append(done.unfitted)
    progress("tasks", len(db.md.tasks), len(db.md.tasks))
    return Tasks(meta, report, columns, warnings, unfitted)


def _run_task_query(con: duckdb.DuckDBPyConnection, name: str, task: Any,
                    timeout_s: float | None, kept: Path | None = None) -> pa.Table:
    """The task query's result: the one validation kept (``kept``, an Arrow IPC file, mapped
    rather than read) if there is one, else the query run again."""
    if kept is not None and kept.is_file():
        return pa.ipc.open_file(pa.memory_map(str(kept))).read_all()
    try:
        return run_query(con, task.query, timeout_s=timeout_s)
    except QueryTimeout as exc:
        raise TributaryError(f"task {name!r}: the query ran longer than {exc.seconds:g} s and "
                             "was stopped; make it cheaper or raise the limit with "
                             "--query-timeout") from None
    except duckdb.Error as exc:  # validation ran it already, but the data can differ
        first = str(exc).strip().splitlines()
        raise TributaryError(f"task {name!r}: SQL fails in DuckDB: "
                             f"{first[0] if first else type(exc).__name__}") from None


def _materialize_task(db: _Database, keys: Keys, tables: EncodedTables, vocab: Vocabulary,
                      cutoff: int | None, writer: _StoreWriter, con: duckdb.DuckDBPyConnection,
                      name: str, task: Any, *, column_id: int,
                      query_timeout_s: float | None, kept: Path | None = None) -> _Task:
    """Task ``name``: its seeds written to ``tasks/<name>.bin``; ``column_id`` is the id its
    target gets in the column-embedding table if it is no column of the anchor table."""
    result = _run_task_query(con, name, task, query_timeout_s, kept)
    if result.num_rows == 0:
        raise TributaryError(f"task {name!r}: the query returns no rows, so the task has no "
                             "seeds")
    anchor_keys = result.column(task.anchor_key)
    rows = KeyIndex(keys.primary_keys[task.anchor_table]).match(
        [anchor_keys], len(anchor_keys)).rows
    keep = rows >= 0
    n_unmatched = len(keep) - int(np.count_nonzero(keep))
    if n_unmatched == len(keep):
        example = next((v for v in anchor_keys.to_pylist() if v is not None), None)
        pk = db.md.tables[task.anchor_table].primary_key
        raise TributaryError(
            f"task {name!r}: none of the query's {result.num_rows:,} anchor keys "
            f"({task.anchor_key}) is a key of {task.anchor_table}.{pk}"
            + (f", e.g. {example!r}" if example is not None else " (all are null)"))
    if task.observation_time_column:
        conv = to_epoch_us(result.column(task.observation_time_column))
        obs_all = np.where(conv.valid, conv.values, NO_CUTOFF)
        n_null_obs = int((~conv.valid & keep).sum())
        del conv
    elif task.anchor_table in keys.times:
        obs_all = keys.times[task.anchor_table][np.maximum(rows, 0)]
        obs_all[obs_all == NO_TIME] = NO_CUTOFF
        n_null_obs = 0
    else:
        obs_all = np.full(result.num_rows, NO_CUTOFF, dtype=np.int64)
        n_null_obs = 0
    # Seeds in a fixed order whatever order DuckDB returned the rows in: by anchor row,
    # then observation time, then label (ties are identical seeds). Each array is let go as
    # soon as the next is made: a task's seeds are the tasks stage's memory.
    matched = None if n_unmatched == 0 else np.flatnonzero(keep)
    del keep
    if matched is not None:
        rows, obs_all = rows[matched], obs_all[matched]
    order = _unique_order(rows, keys.rows[task.anchor_table])
    several = order is None  # an anchor row with several seeds
    if several:
        order = np.lexsort((obs_all, rows))
    anchor = rows[order]
    del rows
    obs = obs_all[order]
    del obs_all
    repeats = None  # the warning about repeated (anchor, time) pairs: none if rows are unique
    same = (anchor[1:] == anchor[:-1]) & (obs[1:] == obs[:-1]) if several else None
    if same is not None and same.any():
        # an (anchor row, time) pair repeats: the labels break its ties. (Ranking every label
        # only then: where no pair repeats, they never decide the order.) The sort moves seeds
        # only within their pair's run, so anchor, obs and same stay as they are.
        label_rank = _rank(result.column(task.target_column))
        if matched is not None:
            label_rank = label_rank[matched]
        label_rank = label_rank[order]
        within = np.lexsort((label_rank, obs, anchor))  # stable: as one sort by all three
        order, label_rank = order[within], label_rank[within]
        del within
        repeats = _check_repeats(name, same, label_rank)
        del label_rank
    del same
    if matched is not None:
        order = matched[order]  # among the query's rows
        del matched
    stype = db.stype(task.target_stype)
    target = result.column(task.target_column).take(pa.array(order))
    del order
    prepared = stype.prepare(target)
    reason = stype.check_column(target)
    # with a statistics window, the target's own normalisation sees only seeds observed in it
    window = None if cutoff is None else obs <= cutoff
    where = f"task {name!r} target {task.target_column!r}"
    stats, empty = _fit(stype, prepared, window, where)
    if stype.name in keys.database_stats:
        stats["database"] = keys.database_stats[stype.name]
    ids = None
    values = stype.vocabulary(prepared, task.target_column)
    if values is not None:
        ids = vocab.add(*values)
    encoded = stype.encode(prepared, stats, ids)
    warnings = [w for w in (_check_labels(name, task, stype, target, encoded, reason),
                            repeats) if w is not None]
    del prepared, target  # the encoded target is what is written
    sections: dict[str, np.ndarray] = {
        "anchor_row": anchor.astype(np.int32, copy=False),
        "observation_time": obs.astype(np.int64, copy=False),
        "target_valid": encoded.valid,
    }
    fields = {}
    for field, arr in encoded.arrays.items():
        sections[f"target.{field}"] = arr
        fields[field] = f"target.{field}"
    if ids is not None:
        sections["candidates"] = np.unique(ids).astype(np.uint32)
    anchor_cols = tables.meta[task.anchor_table]["columns"]
    on_anchor = task.target_column in anchor_cols
    column = None
    if on_anchor:
        column_id = anchor_cols[task.target_column]["column_id"]
    else:
        column = {"table": task.anchor_table, "column": task.target_column,
                  "text": task.target_column, "task": name}
    rel = f"tasks/{name}.bin"
    writer.write(rel, "task", sections, {"task": name, "seeds": int(len(anchor))})
    n_null_target = int((~encoded.valid).sum())
    report = {"seeds": int(len(anchor)), "unmatched": n_unmatched,
              "null_targets": n_null_target, "null_observation_times": n_null_obs}
    meta = {
        "file": rel, "anchor_table": task.anchor_table, "anchor_key": task.anchor_key,
        "target_column": task.target_column, "target_stype": stype.name,
        "target_column_id": column_id, "target_is_anchor_column": on_anchor,
        "observation_time_column": task.observation_time_column,
        "hidden_columns": list(task.hidden_columns), "stats": stats, "fields": fields,
        "horizon": task.horizon,
        "horizon_us": parse_duration(task.horizon) if task.horizon is not None else 0,
        "valid": "target_valid", "seeds": int(len(anchor)),
        "unmatched_anchor_keys": n_unmatched,
        "candidates": "candidates" if ids is not None else None,
    }
    return _Task(meta, report, column, warnings, where if empty else None)


def _check_labels(name: str, task: Any, stype: SemanticType, target: pa.ChunkedArray,
                  encoded: Any, reason: str | None) -> str | None:
    """Refuse labels that are not values of the target type and a task with no label at
    all; the warning about null labels, if any."""
    n = len(encoded.valid)
    present = np.asarray(target.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    unusable = present & ~encoded.valid
    where = f"task {name!r}: target column {task.target_column!r} ({stype.name})"
    if reason is not None:
        examples = pc.unique(target.filter(pa.array(unusable))).to_pylist()[:5]
        shown = ", ".join(repr(v) for v in examples) or "none shown"
        raise TributaryError(f"{where}: {reason}; distinct bad values: {shown}")
    n_null = n - int(encoded.valid.sum())
    if n_null == n:
        what = ("every label is null" if not unusable.any() else
                f"no label is a usable {stype.name} value ({int(unusable.sum()):,} are not, "
                f"e.g. {target.filter(pa.array(unusable))[0].as_py()!r})")
        raise TributaryError(f"{where}: {what}; the task cannot be trained or evaluated")
    if not n_null:
        return None
    extra = (f", {int(unusable.sum()):,} of them non-null values that are not usable "
             "(NaN, ±inf, out of range)" if unusable.any() else "")
    return f"{where}: {n_null:,} of {n:,} labels are null{extra}; those seeds have no target"


def _check_repeats(name: str, same: np.ndarray, label_rank: np.ndarray) -> str | None:
    """The warning when seeds repeat an (anchor row, observation time) pair (with different
    labels the task asks for two answers to one question), if any. ``same[i]``: seed i + 1 has
    seed i's pair (seeds sorted by pair, then label)."""
    if not same.any():
        return None
    group = np.concatenate([[0], np.cumsum(~same)])
    differ = same & (label_rank[1:] != label_rank[:-1])
    n_conflict = len(np.unique(group[1:][differ]))
    n_repeat = int(same.sum())
    message = (f"task {name!r}: {n_repeat:,} seed(s) repeat an (anchor key, observation "
               "time) pair of an earlier seed")
    if n_conflict:
        message += f"; {n_conflict:,} such pair(s) have different labels"
    return message + " (check the query's joins and GROUP BY)"


# -- stage 6: embed ------------------------------------------------------------------------


def embed(embedder: Embedder, cache: EmbeddingCache | None, columns: list[dict[str, Any]],
          vocab: Vocabulary, writer: _StoreWriter, progress: Progress) -> EmbedStats:
    """The column texts and the vocabulary through the embedder (and its cache), written as
    ``column_embeddings.bin`` and ``vocab_embeddings.bin``."""
    texts = [c["text"] for c in columns]
    vocab_texts = vocab.texts

    def tick(done: int, total: int, stats: EmbedStats) -> None:
        rate = stats.embedded / stats.seconds if stats.seconds > 0 else 0.0
        progress("embed", done, total, f"{stats.cache_hits:,} cached, {rate:,.0f} strings/s")

    vectors, stats = embed_texts(embedder, texts + vocab_texts, cache=cache, progress=tick,
                                 dtype=np.float16)
    column_vectors, vocab_vectors = vectors[: len(texts)], vectors[len(texts):]
    writer.write("column_embeddings.bin", "column_embeddings", {"embeddings": column_vectors})
    text_off, text_utf8 = _strings(vocab_texts)
    value_off, value_utf8 = _strings(vocab.values)
    writer.write("vocab_embeddings.bin", "vocab_embeddings", {
        "embeddings": vocab_vectors, "text_offsets": text_off, "text_utf8": text_utf8,
        "value_offsets": value_off, "value_utf8": value_utf8})
    return stats


# -- metadata.json -------------------------------------------------------------------------


def _store_metadata(db: _Database, embedder: Embedder, cutoff: int | None, keys: Keys,
                    tables: EncodedTables, graph: Graph, tasks: Tasks,
                    columns: list[dict[str, Any]], vocab: Vocabulary,
                    files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from tributary_core import __version__

    return {
        "format_version": FORMAT_VERSION,
        "tributary_version": __version__,
        "name": db.md.name,
        "embedder": attrs.asdict(embedder.identity),
        "stats_window": None if cutoff is None else {"to_us": int(cutoff)},
        "tables": tables.meta,
        "foreign_keys": graph.foreign_keys,
        "tasks": tasks.meta,
        "columns": columns,
        "vocab_size": len(vocab),
        "database_stats": keys.database_stats,
        "source_metadata": dump_metadata(db.md),
        "files": files,
    }


def _unfitted_warning(unfitted: list[str]) -> list[str]:
    if not unfitted:
        return []
    return [f"no value inside the statistics window (--stats-cutoff) for {', '.join(unfitted)}: "
            "their statistics are the defaults (mean 0, std 1), so their values are not "
            "normalized"]


def _key_sections(values: pa.Array, sections: dict[str, np.ndarray]) -> dict[str, Any]:
    """The primary key's values in their own type, added to a table file's ``sections``: an
    integer key as ``key`` (int64), a string key as ``key.offsets`` (int64, rows + 1) and
    ``key.data`` (UTF-8). Returns the table's ``key`` entry for metadata.json."""
    values = as_key(values)
    if pa.types.is_integer(values.type):
        sections["key"] = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        return {"kind": "integer", "values": "key"}
    arr = values.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
    sections["key.offsets"] = (offsets - offsets[0]).astype(np.int64)
    sections["key.data"] = data[offsets[0] : offsets[-1]].copy()
    return {"kind": "string", "offsets": "key.offsets", "data": "key.data"}


def _strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as (offsets int64 (n + 1,), UTF-8 bytes u8)."""
    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()


def _non_finite(stats: Any, path: str = "") -> str | None:
    """``"key=value"`` of the first NaN or infinite number in ``stats`` (nested), else None."""
    if isinstance(stats, dict):
        for key, value in stats.items():
            found = _non_finite(value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(stats, list | tuple):
        for i, value in enumerate(stats):
            found = _non_finite(value, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(stats, float | np.floating) and not math.isfinite(stats):
        return f"{path}={stats}"
    return None


def _unique_order(rows: np.ndarray, n_anchor_rows: int) -> np.ndarray | None:
    """Where no anchor row has two seeds (a task asked once per entity), the seeds' order by
    anchor row (what ``np.lexsort`` by row, time and label gives, as no tie is left), found in
    one pass over a table of the anchor's rows instead of a sort; None where a row repeats."""
    if len(rows) > n_anchor_rows:
        return None
    # int32 indices: no more seeds than anchor rows, which row numbers (int32) count
    slot = np.full(n_anchor_rows, -1, dtype=np.int32)
    slot[rows] = np.arange(len(rows), dtype=np.int32)  # a repeated row keeps one seed
    order = slot[slot >= 0]
    return order if len(order) == len(rows) else None


def _rank(column: pa.ChunkedArray) -> np.ndarray:
    """A dense rank of each value (equal values share one; nulls last), to order seeds by
    label deterministically; all zeros for a type Arrow cannot sort."""
    arr = column.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    for candidate in (arr, None):
        try:
            if candidate is None:
                candidate = arr.cast(pa.string())
            ranks = pc.rank(candidate, sort_keys="ascending", tiebreaker="dense")
            # ranks are 1..n (uint64): read as int64 in place rather than copied
            return ranks.to_numpy(zero_copy_only=False).view(np.int64)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            continue
    return np.zeros(len(arr), dtype=np.int64)
