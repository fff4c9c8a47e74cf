"""Raw database (parquet + metadata.json) -> the store of DESIGN §3.

Stages, each timed and reported:

1. ``validate``: the metadata against the data (``tributary metadata validate --raw``).
2. ``keys``: primary keys and row times of every table (``temporal_from`` followed through its
   foreign keys), and the database-wide timestamp statistics.
3. ``encode``: every table, one at a time: each column through its semantic type, foreign keys
   matched to parent rows; ``tables/<table>.bin``.
4. ``graph``: a CSR both ways per foreign-key column; ``graph.bin``.
5. ``tasks``: each task's SQL in a sandboxed DuckDB, anchors matched to rows, observation times
   resolved, targets encoded; ``tasks/<task>.bin``.
6. ``embed``: column names and the shared vocabulary through the embedder; the two
   ``*_embeddings.bin`` files.

Everything is written into a temporary folder beside the output and renamed into place at the
end, so a crash or Ctrl-C never leaves a half store that looks whole. The same inputs give the
same bytes (no times, paths or thread-order effects are stored; task seeds are sorted).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tributary_core.atomic import staged_folder
from tributary_core.embed_cache import EmbeddingCache, EmbedStats, default_cache_dir, embed_texts
from tributary_core.embedder import Embedder
from tributary_core.errors import TributaryError
from tributary_core.keys import match_keys
from tributary_core.metadata import Metadata, dump_metadata, validate_metadata
from tributary_core.metadata.model import split_ref
from tributary_core.preprocess.graph import NO_TIME, build_csr
from tributary_core.registry import Registry, get_registry
from tributary_core.semantic_type import SemanticType, Vocabulary
from tributary_core.sql import DEFAULT_QUERY_TIMEOUT_S, QueryTimeout, run_query, sandbox_connection
from tributary_core.store.format import (
    FORMAT_VERSION,
    METADATA,
    dump_store_metadata,
    replace_problem,
    write_file,
)
from tributary_core.timeconv import format_epoch_us, to_epoch_us

__all__ = ["preprocess", "PreprocessResult", "NO_CUTOFF", "Progress"]

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
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise TributaryError(f"{out_dir} already exists; use --force to replace it")
        problem = replace_problem(out_dir)
        if problem is not None:
            raise TributaryError(f"{out_dir}: {problem}")
    clock = _Clock()
    with clock("validate"):
        progress("validate", 0, 1)
        report = validate_metadata(metadata, raw_dir=raw_dir, registry=registry,
                                   query_timeout_s=query_timeout_s)
        md = report.raise_for_errors()
        progress("validate", 1, 1)
    with staged_folder(out_dir, replace=force, may_replace=replace_problem) as tmp:
        cache = None
        if use_cache and embedder.cacheable:
            cache = EmbeddingCache(cache_dir or default_cache_dir(), embedder.identity)
        builder = _Builder(md, raw_dir, tmp, registry, embedder, stats_cutoff_us, progress, clock,
                           cache)
        builder.final = out_dir
        builder.query_timeout_s, builder.query_threads = query_timeout_s, query_threads
        result = builder.run()
    result.warnings = [str(p) for p in report.warnings] + builder.warnings
    result.path = out_dir
    return result


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


class _Builder:
    def __init__(self, md: Metadata, raw: Path, out: Path, registry: Registry, embedder: Embedder,
                 cutoff: int | None, progress: Progress, clock: _Clock,
                 cache: EmbeddingCache | None) -> None:
        self.cache = cache
        self.md, self.raw, self.out = md, raw, out
        self.registry, self.embedder = registry, embedder
        self.cutoff, self.progress, self.clock = cutoff, progress, clock
        self.paths = {t: raw / f"{t}.parquet" for t in md.tables}
        self.stypes: dict[str, SemanticType] = {}
        self.keys: dict[str, pa.Array] = {}  # table -> primary-key column
        self.times: dict[str, np.ndarray] = {}  # timed table -> int64 row times (NO_TIME = none)
        self.n_rows: dict[str, int] = {}
        self.parents: dict[tuple[str, str], np.ndarray] = {}  # (table, fk column) -> parent rows
        self.vocab = Vocabulary()
        self.columns: list[dict[str, Any]] = []  # the column-embedding table
        self.db_stats: dict[str, dict[str, Any]] = {}  # stype name -> combined statistics
        self.files: dict[str, dict[str, Any]] = {}
        self.result = PreprocessResult(path=out)
        self.warnings: list[str] = []
        self.final = out  # where the store will be published (for messages)
        self.query_timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S
        self.query_threads: int | None = 1
        self.unfitted: list[str] = []  # columns with values but none inside the stats window

    def stype(self, name: str) -> SemanticType:
        if name not in self.stypes:
            self.stypes[name] = self.registry.semantic_type(name)
        return self.stypes[name]

    def write(self, rel: str, kind: str, sections: dict[str, np.ndarray],
              meta: dict[str, Any] | None = None) -> None:
        path = self.out / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[rel] = write_file(path, kind, sections, meta)
        except OSError as exc:
            raise self.write_error(rel, exc) from None

    def write_error(self, rel: str, exc: OSError) -> TributaryError:
        return TributaryError(f"{self.final}: cannot write {rel} (in the temporary folder "
                              f"{self.out.name}): {exc.strerror or exc}")

    def fit(self, stype: SemanticType, prepared: Any, rows: np.ndarray | None,
            where: str) -> dict[str, Any]:
        """``stype.fit`` with its statistics checked: finite numbers only, and a column with
        values but none inside the statistics window is noted for a warning."""
        stats = stype.fit(prepared, rows=rows)
        bad = _non_finite(stats)
        if bad is not None:
            raise TributaryError(f"{where}: the {stype.name} statistics are not finite "
                                 f"({bad}); the column cannot be encoded")
        if (rows is not None and stats.get("count") == 0 and "mean" in stats
                and bool(prepared.valid.any())):
            self.unfitted.append(where)
        return stats

    def rows_mask(self, table: str) -> np.ndarray | None:
        """Rows inside the statistics window (None: all rows)."""
        if self.cutoff is None or table not in self.times:
            return None
        t = self.times[table]
        return (t <= self.cutoff) | (t == NO_TIME)

    # -- stage 2 ---------------------------------------------------------------------------

    def load_keys_and_times(self) -> None:
        md = self.md
        links: dict[str, pa.ChunkedArray] = {}  # table -> its temporal_from key column
        for i, (tname, table) in enumerate(md.tables.items()):
            self.progress("keys", i, len(md.tables))
            self.n_rows[tname] = pq.ParquetFile(self.paths[tname]).metadata.num_rows
            wanted = [c for c in (table.primary_key, table.temporal_column, table.temporal_from)
                      if c]
            if not wanted:
                continue
            data = _read(self.paths[tname], list(dict.fromkeys(wanted)))
            if table.primary_key:
                self.keys[tname] = data.column(table.primary_key).combine_chunks()
            if table.temporal_column:
                conv = to_epoch_us(data.column(table.temporal_column))
                self.times[tname] = np.where(conv.valid, conv.values, NO_TIME)
            if table.temporal_from:
                links[tname] = data.column(table.temporal_from)

        def time_of(tname: str) -> np.ndarray | None:
            # Validation refuses temporal_from cycles, so this recursion ends.
            table = md.tables[tname]
            if tname in self.times or not table.temporal_from:
                return self.times.get(tname)
            ptable, _ = split_ref(table.columns[table.temporal_from].foreign_key)  # type: ignore[arg-type,misc]
            ptime = time_of(ptable)
            rows = self.parent_rows(tname, table.temporal_from, links[tname])
            assert ptime is not None
            self.times[tname] = np.where(rows >= 0, ptime[np.maximum(rows, 0)], NO_TIME)
            return self.times[tname]

        for tname in md.tables:
            time_of(tname)
        # Database-wide statistics for types that ask for them (timestamps).
        per_type: dict[str, list[dict[str, Any]]] = {}
        for tname, table in md.tables.items():
            cols = [c for c, col in table.columns.items()
                    if self.stype(col.stype).combine([]) is not None]
            if not cols:
                continue
            data = _read(self.paths[tname], cols)
            for cname in cols:
                stype = self.stype(table.columns[cname].stype)
                prepared = stype.prepare(data.column(cname))
                per_type.setdefault(stype.name, []).append(
                    stype.fit(prepared, rows=self.rows_mask(tname)))
        self.check_cutoff()
        for name, stats in per_type.items():
            combined = self.stype(name).combine(stats)
            if combined is not None:
                bad = _non_finite(combined)
                if bad is not None:
                    raise TributaryError(f"the database-wide {name} statistics are not finite "
                                         f"({bad})")
                self.db_stats[name] = combined
        self.progress("keys", len(md.tables), len(md.tables))

    def check_cutoff(self) -> None:
        """A statistics cut-off before every row time would fit the statistics on nothing:
        refuse it (a typo in the year, most likely)."""
        if self.cutoff is None:
            return
        times = [t[t != NO_TIME] for t in self.times.values()]
        times = [t for t in times if len(t)]
        if not times:
            self.warnings.append("--stats-cutoff has no effect: no row of the database has a "
                                 "time, so statistics are fitted on every row")
            return
        earliest = min(int(t.min()) for t in times)
        if earliest > self.cutoff:
            raise TributaryError(f"--stats-cutoff {format_epoch_us(self.cutoff)} is before every "
                                 f"row time of the database (the earliest is "
                                 f"{format_epoch_us(earliest)}): no statistics could be fitted")

    def parent_rows(self, tname: str, cname: str, values: pa.ChunkedArray) -> np.ndarray:
        """Parent row per row of foreign-key column ``tname.cname`` (``values``; -1: null or
        dangling), matched once: by ``temporal_from`` in stage 2 or else in stage 3."""
        key = (tname, cname)
        if key not in self.parents:
            fk = self.md.tables[tname].columns[cname].foreign_key
            ptable, _ = split_ref(fk)  # type: ignore[misc]
            match = match_keys(values, self.keys[ptable])
            self.parents[key] = match.rows
            ref = f"{tname}.{cname}"
            self.result.dangling[ref] = match.n_dangling
            self.result.null_keys[ref] = match.n_null
        return self.parents[key]

    # -- stage 3 ---------------------------------------------------------------------------

    def encode_tables(self) -> dict[str, Any]:
        tables_meta: dict[str, Any] = {}
        total = len(self.md.tables)
        for i, (tname, table) in enumerate(self.md.tables.items()):
            self.progress("encode", i, total)
            names = [c for c, col in table.columns.items() if not self.stype(col.stype).is_ignored]
            data = _read(self.paths[tname], names)
            mask = self.rows_mask(tname)
            sections: dict[str, np.ndarray] = {}
            cols_meta: dict[str, Any] = {}
            for j, cname in enumerate(names):
                col = table.columns[cname]
                stype = self.stype(col.stype)
                prepared = stype.prepare(data.column(cname))
                stats = self.fit(stype, prepared, mask, f"{tname}.{cname}")
                if stype.name in self.db_stats:
                    stats["database"] = self.db_stats[stype.name]
                ids = None
                vocab = stype.vocabulary(prepared, cname)
                if vocab is not None:
                    ids = self.vocab.add(*vocab)
                encoded = stype.encode(prepared, stats, ids)
                note = stype.check_encoded(prepared, stats, encoded)
                if note:
                    self.warnings.append(f"{tname}.{cname}: {note}")
                prefix = f"c{j}"
                fields = {}
                for field, arr in encoded.arrays.items():
                    sections[f"{prefix}.{field}"] = arr
                    fields[field] = f"{prefix}.{field}"
                sections[f"{prefix}.valid"] = encoded.valid
                column_id = len(self.columns)
                text = f"{cname} : {col.description}" if col.description else cname
                self.columns.append({"table": tname, "column": cname, "text": text})
                cols_meta[cname] = {"stype": stype.name, "column_id": column_id, "stats": stats,
                                    "fields": fields, "valid": f"{prefix}.valid",
                                    "n_invalid": prepared.n_invalid}
                if col.foreign_key:
                    self.parent_rows(tname, cname, data.column(cname))
                self.result.cells += int(encoded.valid.sum())
                del prepared, encoded
            if tname in self.times:
                sections["time"] = self.times[tname]
            del data
            rel = f"tables/{tname}.bin"
            self.write(rel, "table", sections, {"table": tname, "rows": self.n_rows[tname]})
            tables_meta[tname] = {
                "rows": self.n_rows[tname], "file": rel, "primary_key": table.primary_key,
                "timed": tname in self.times, "time": "time" if tname in self.times else None,
                "temporal_column": table.temporal_column, "temporal_from": table.temporal_from,
                "columns": cols_meta,
            }
            self.result.rows[tname] = self.n_rows[tname]
        self.progress("encode", total, total)
        return tables_meta

    # -- stage 4 ---------------------------------------------------------------------------

    def build_graph(self) -> list[dict[str, Any]]:
        fks = [(t, c, col.foreign_key) for t, table in self.md.tables.items()
               for c, col in table.columns.items() if col.foreign_key]
        sections: dict[str, np.ndarray] = {}
        out = []
        for i, (tname, cname, ref) in enumerate(fks):
            self.progress("graph", i, len(fks))
            ptable, pcol = split_ref(ref)  # type: ignore[misc]
            parent = self.parents[(tname, cname)]  # matched while encoding (FKs are identifiers)
            n = self.n_rows[tname]
            child_time = self.times.get(tname)
            if child_time is None:
                child_time = np.full(n, NO_TIME, dtype=np.int64)
            indptr, children, times = build_csr(parent, child_time, self.n_rows[ptable])
            sections[f"fk{i}.parent"] = parent
            sections[f"fk{i}.indptr"] = indptr
            sections[f"fk{i}.children"] = children
            sections[f"fk{i}.child_time"] = times
            ref_name = f"{tname}.{cname}"
            out.append({"id": i, "child_table": tname, "column": cname, "parent_table": ptable,
                        "parent_column": pcol, "edges": int(len(children)),
                        "dangling": self.result.dangling[ref_name],
                        "null": self.result.null_keys[ref_name],
                        "sections": {k: f"fk{i}.{k}" for k in
                                     ("parent", "indptr", "children", "child_time")}})
            self.result.edges += int(len(children))
        self.progress("graph", len(fks), len(fks))
        self.write("graph.bin", "graph", sections, {"foreign_keys": len(fks)})
        return out

    # -- stage 5 ---------------------------------------------------------------------------

    def materialize_tasks(self, tables_meta: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.md.tasks:
            return out
        datasets = {name: pads.dataset(path) for name, path in self.paths.items()}
        con = sandbox_connection(datasets, threads=self.query_threads)
        try:
            for i, (name, task) in enumerate(self.md.tasks.items()):
                self.progress("tasks", i, len(self.md.tasks))
                out[name] = self.materialize_task(con, name, task, tables_meta)
        finally:
            con.close()
        self.progress("tasks", len(self.md.tasks), len(self.md.tasks))
        return out

    def run_task_query(self, con: Any, name: str, task: Any) -> pa.Table:
        try:
            return run_query(con, task.query, timeout_s=self.query_timeout_s)
        except QueryTimeout as exc:
            raise TributaryError(f"task {name!r}: the query ran longer than {exc.seconds:g} s and "
                                 "was stopped; make it cheaper or raise the limit with "
                                 "--query-timeout") from None
        except Exception as exc:  # duckdb.Error: validation ran it already, but data can differ
            raise TributaryError(f"task {name!r}: SQL fails in DuckDB: "
                                 f"{str(exc).splitlines()[0]}") from None

    def materialize_task(self, con: Any, name: str, task: Any,
                         tables_meta: dict[str, Any]) -> dict[str, Any]:
        result = self.run_task_query(con, name, task)
        if result.num_rows == 0:
            raise TributaryError(f"task {name!r}: the query returns no rows, so the task has no "
                                 "seeds")
        keys = result.column(task.anchor_key)
        match = match_keys(keys, self.keys[task.anchor_table])
        keep = match.rows >= 0
        if not keep.any():
            example = next((v for v in keys.to_pylist() if v is not None), None)
            pk = self.md.tables[task.anchor_table].primary_key
            raise TributaryError(
                f"task {name!r}: none of the query's {result.num_rows:,} anchor keys "
                f"({task.anchor_key}) is a key of {task.anchor_table}.{pk}"
                + (f", e.g. {example!r}" if example is not None else " (all are null)"))
        if task.observation_time_column:
            conv = to_epoch_us(result.column(task.observation_time_column))
            obs_all = np.where(conv.valid, conv.values, NO_CUTOFF)
            n_null_obs = int((~conv.valid & keep).sum())
        elif task.anchor_table in self.times:
            obs_all = self.times[task.anchor_table][np.maximum(match.rows, 0)]
            obs_all = np.where(obs_all == NO_TIME, NO_CUTOFF, obs_all)
            n_null_obs = 0
        else:
            obs_all = np.full(result.num_rows, NO_CUTOFF, dtype=np.int64)
            n_null_obs = 0
        # Seeds in a fixed order whatever order DuckDB returned the rows in: by anchor row,
        # then observation time, then label (ties are identical seeds).
        label_rank = _rank(result.column(task.target_column))
        matched = np.flatnonzero(keep)
        order = matched[np.lexsort((label_rank[matched], obs_all[matched],
                                    match.rows[matched]))]
        anchor = match.rows[order]
        obs = obs_all[order]
        label_rank = label_rank[order]
        stype = self.stype(task.target_stype)
        target = result.column(task.target_column).take(pa.array(order))
        prepared = stype.prepare(target)
        reason = stype.check_column(target)
        # with a statistics window, the target's own normalisation sees only seeds observed in it
        window = None if self.cutoff is None else obs <= self.cutoff
        stats = self.fit(stype, prepared, window, f"task {name!r} target {task.target_column!r}")
        if stype.name in self.db_stats:
            stats["database"] = self.db_stats[stype.name]
        ids = None
        vocab = stype.vocabulary(prepared, task.target_column)
        if vocab is not None:
            ids = self.vocab.add(*vocab)
        encoded = stype.encode(prepared, stats, ids)
        self.check_labels(name, task, stype, target, encoded, reason)
        self.check_repeats(name, anchor, obs, label_rank)
        sections: dict[str, np.ndarray] = {
            "anchor_row": anchor.astype(np.int32),
            "observation_time": obs.astype(np.int64),
            "target_valid": encoded.valid,
        }
        fields = {}
        for field, arr in encoded.arrays.items():
            sections[f"target.{field}"] = arr
            fields[field] = f"target.{field}"
        if ids is not None:
            sections["candidates"] = np.unique(ids).astype(np.uint32)
        anchor_cols = tables_meta[task.anchor_table]["columns"]
        on_anchor = task.target_column in anchor_cols
        if on_anchor:
            column_id = anchor_cols[task.target_column]["column_id"]
        else:
            column_id = len(self.columns)
            self.columns.append({"table": task.anchor_table, "column": task.target_column,
                                 "text": task.target_column, "task": name})
        rel = f"tasks/{name}.bin"
        self.write(rel, "task", sections, {"task": name, "seeds": int(len(anchor))})
        n_null_target = int((~encoded.valid).sum())
        self.result.tasks[name] = {"seeds": int(len(anchor)), "unmatched": int((~keep).sum()),
                                   "null_targets": n_null_target,
                                   "null_observation_times": n_null_obs}
        return {
            "file": rel, "anchor_table": task.anchor_table, "anchor_key": task.anchor_key,
            "target_column": task.target_column, "target_stype": stype.name,
            "target_column_id": column_id, "target_is_anchor_column": on_anchor,
            "observation_time_column": task.observation_time_column,
            "hidden_columns": list(task.hidden_columns), "stats": stats, "fields": fields,
            "valid": "target_valid", "seeds": int(len(anchor)),
            "unmatched_anchor_keys": int((~keep).sum()),
            "candidates": "candidates" if ids is not None else None,
        }

    def check_labels(self, name: str, task: Any, stype: SemanticType, target: pa.ChunkedArray,
                     encoded: Any, reason: str | None) -> None:
        """Refuse labels that are not values of the target type and a task with no label at
        all; warn about null labels."""
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
        if n_null:
            extra = (f", {int(unusable.sum()):,} of them non-null values that are not usable "
                     "(NaN, ±inf, out of range)" if unusable.any() else "")
            self.warnings.append(f"{where}: {n_null:,} of {n:,} labels are null{extra}; those "
                                 "seeds have no target")

    def check_repeats(self, name: str, anchor: np.ndarray, obs: np.ndarray,
                      label_rank: np.ndarray) -> None:
        """Warn when seeds repeat an (anchor row, observation time) pair: with different labels
        the task asks for two answers to one question. ``anchor``, ``obs`` are sorted."""
        if len(anchor) < 2:
            return
        same = (anchor[1:] == anchor[:-1]) & (obs[1:] == obs[:-1])
        if not same.any():
            return
        group = np.concatenate([[0], np.cumsum(~same)])
        differ = same & (label_rank[1:] != label_rank[:-1])
        n_conflict = len(np.unique(group[1:][differ]))
        n_repeat = int(same.sum())
        message = (f"task {name!r}: {n_repeat:,} seed(s) repeat an (anchor key, observation "
                   "time) pair of an earlier seed")
        if n_conflict:
            message += f"; {n_conflict:,} such pair(s) have different labels"
        self.warnings.append(message + " (check the query's joins and GROUP BY)")

    # -- stage 6 ---------------------------------------------------------------------------

    def embed(self) -> None:
        texts = [c["text"] for c in self.columns]
        vocab_texts = self.vocab.texts

        def tick(done: int, total: int, stats: EmbedStats) -> None:
            rate = stats.embedded / stats.seconds if stats.seconds > 0 else 0.0
            self.progress("embed", done, total,
                          f"{stats.cache_hits:,} cached, {rate:,.0f} strings/s")

        vectors, stats = embed_texts(self.embedder, texts + vocab_texts, cache=self.cache,
                                     progress=tick, dtype=np.float16)
        self.result.embedding = stats
        column_vectors, vocab_vectors = vectors[: len(texts)], vectors[len(texts):]
        self.write("column_embeddings.bin", "column_embeddings", {"embeddings": column_vectors})
        text_off, text_utf8 = _strings(vocab_texts)
        value_off, value_utf8 = _strings(self.vocab.values)
        self.write("vocab_embeddings.bin", "vocab_embeddings", {
            "embeddings": vocab_vectors, "text_offsets": text_off, "text_utf8": text_utf8,
            "value_offsets": value_off, "value_utf8": value_utf8})

    # -- all -------------------------------------------------------------------------------

    def run(self) -> PreprocessResult:
        clock = self.clock
        with clock("keys"):
            self.load_keys_and_times()
        with clock("encode"):
            tables_meta = self.encode_tables()
        with clock("graph"):
            fks = self.build_graph()
        with clock("tasks"):
            tasks_meta = self.materialize_tasks(tables_meta)
        with clock("embed"):
            self.embed()
        from tributary_core import __version__

        window = None
        if self.cutoff is not None:
            window = {"to_us": int(self.cutoff)}
        if self.unfitted:
            self.warnings.append(
                f"no value inside the statistics window (--stats-cutoff) for "
                f"{', '.join(self.unfitted)}: their statistics are the defaults (mean 0, std 1), "
                "so their values are not normalized")
        meta = {
            "format_version": FORMAT_VERSION,
            "tributary_version": __version__,
            "name": self.md.name,
            "embedder": attrs.asdict(self.embedder.identity),
            "stats_window": window,
            "tables": tables_meta,
            "foreign_keys": fks,
            "tasks": tasks_meta,
            "columns": self.columns,
            "vocab_size": len(self.vocab),
            "database_stats": self.db_stats,
            "source_metadata": dump_metadata(self.md),
            "files": self.files,
        }
        try:
            (self.out / METADATA).write_bytes(dump_store_metadata(meta))
        except OSError as exc:
            raise self.write_error(METADATA, exc) from None
        self.result.vocab_size = len(self.vocab)
        self.result.seconds = dict(clock.seconds)
        self.result.store_bytes = sum(f["bytes"] for f in self.files.values())
        return self.result


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
            return np.asarray(ranks.to_numpy(zero_copy_only=False), dtype=np.int64)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            continue
    return np.zeros(len(arr), dtype=np.int64)
