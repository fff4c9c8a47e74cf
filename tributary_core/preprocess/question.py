"""New questions for a preprocessed database: a task defined after preprocessing (the same
fields as a task of metadata.json), materialised on the database's parquet files against an
existing store, in memory, without preprocessing the database again.

The task's SQL runs in the same sandboxed DuckDB connection preprocessing uses, its seeds are
matched to the store's rows by the anchor table's stored keys, and its labels are encoded
exactly as preprocessing would (statistics fitted on its own labels, inside the store's
statistics window). What the store's embeddings lack (the target's name when it is not a
column of the anchor table, label values the store never saw) is embedded with the store's own
embedder identity, through the shared embedding cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import duckdb
import numpy as np
import pyarrow.dataset as pads

from tributary_core.errors import TributaryError
from tributary_core.registry import Registry, get_registry
from tributary_core.semantic_type import Vocabulary
from tributary_core.sql import DEFAULT_QUERY_TIMEOUT_S, sandbox_connection
from tributary_core.store import Store

__all__ = ["Question", "materialize_question", "TASK_FIELDS"]

#: The fields a question gives, as a task of metadata.json has them.
TASK_FIELDS = ("query", "anchor_table", "anchor_key", "target_column", "target_stype",
               "observation_time_column", "horizon", "hidden_columns", "description")


class _Arrays:
    """A task file's sections, in memory (what :class:`~tributary_core.store.StoreTask` reads)."""

    def __init__(self, sections: dict[str, np.ndarray]) -> None:
        self.sections = sections

    def array(self, name: str) -> np.ndarray:
        return self.sections[name]


class _MemoryWriter:
    def __init__(self) -> None:
        self.sections: dict[str, np.ndarray] = {}

    def write(self, rel: str, kind: str, sections: dict[str, np.ndarray],
              meta: dict[str, Any] | None = None) -> None:
        self.sections = dict(sections)


@attrs.frozen
class Question:
    """A materialised question: ``task`` (a :class:`~tributary_core.store.StoreTask` whose
    arrays are in memory), and the embedding rows the store lacks: ``column_vectors`` for
    column ids from ``len(store column embeddings)`` on, ``vocab_vectors`` (and their raw
    values ``vocab_values``) for vocabulary ids from ``len(store vocabulary)`` on."""

    name: str
    task: Any
    column_vectors: np.ndarray
    vocab_vectors: np.ndarray
    vocab_values: list[str]
    warnings: list[str]


def materialize_question(store: Store, name: str, spec: dict[str, Any], raw_dir: str | Path, *,
                         registry: Registry | None = None, embedder: Any = None,
                         query_timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S) -> Question:
    """Materialise the task ``spec`` (metadata.json's task fields) named ``name`` on the parquet
    files in ``raw_dir`` of the database ``store`` was made from. ``embedder``: the backend to
    embed what the store lacks (default: one made from the store's embedder identity)."""
    from tributary_core.metadata import validate_metadata
    from tributary_core.metadata.io import MetadataError, parse_metadata
    from tributary_core.preprocess.pipeline import (
        EncodedTables,
        Keys,
        _Database,
        _materialize_task,
    )
    from tributary_core.store.reader import StoreTask

    registry = registry or get_registry()
    if not isinstance(name, str) or not name.strip():
        raise TributaryError(f"a question's name must be a non-empty string; got {name!r}")
    if not isinstance(spec, dict):
        raise TributaryError("a question is a task: an object with the fields of a task of "
                             "metadata.json (query, anchor_table, anchor_key, target_column, "
                             "target_stype, ...)")
    unknown = sorted(set(spec) - set(TASK_FIELDS))
    if unknown:
        raise TributaryError(f"question {name!r}: unknown field(s) {', '.join(unknown)} (fields: "
                             f"{', '.join(TASK_FIELDS)})")
    if name in store.tasks:
        raise TributaryError(f"{store.name} has a task {name!r} already: predict it with --task "
                             f"{name}, or name the question otherwise")
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise TributaryError(f"a question runs its SQL on the database's parquet files: {raw_dir} "
                             f"does not exist (give the folder with --raw)")
    source = dict(store.meta["source_metadata"])
    source["tasks"] = {name: {k: v for k, v in spec.items() if v is not None}}
    try:
        md = parse_metadata(source, source="the question")
    except MetadataError as exc:  # name the question's own field, as the checks below do
        first = exc.problems[0]
        where = first.path.replace(f"$.tasks.{name}", "$", 1)
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise TributaryError(f"question {name!r}: {where}: {_one_line(first.message)}{more}") from None
    report = validate_metadata(md, raw_dir=raw_dir, registry=registry,
                               query_timeout_s=query_timeout_s)
    errors = report.errors
    task_problems = [p for p in errors if p.path.startswith("$.tasks")]
    other = [p for p in errors if p not in task_problems]
    if task_problems:
        first = task_problems[0]
        where = first.path.replace(f"$.tasks.{name}", "$", 1)
        raise TributaryError(f"question {name!r}: {where}: {first.message}")
    if other:  # the database's files changed since preprocessing
        first = other[0]
        raise TributaryError(f"{raw_dir}: {first.path}: {first.message} (the files the store was "
                             f"made from have changed?)")
    db = _Database.of(md, raw_dir, registry)
    for table in md.tables:
        if store.tables[table].rows != _rows(db.paths[table]):
            raise TributaryError(f"{db.paths[table]}: holds {_rows(db.paths[table]):,} rows, the "
                                 f"store {store.tables[table].rows:,}: not the files the store "
                                 f"was made from")
    anchor = md.tasks[name].anchor_table
    if not store.tables[anchor].has_keys:
        raise TributaryError(f"{store.path}: made before keys were stored: preprocess the "
                             f"database again to ask it new questions")
    keys = Keys(rows={t: store.tables[t].rows for t in md.tables},
                primary_keys={t: store.tables[t].keys() for t in md.tables
                              if store.tables[t].has_keys},
                times={t: np.asarray(store.tables[t].time) for t in md.tables
                       if store.tables[t].time is not None},
                links={}, database_stats=store.meta.get("database_stats") or {}, warnings=[])
    tables = EncodedTables(meta=store.meta["tables"], columns=store.meta["columns"],
                           cells=0, warnings=[], unfitted=[])
    vocab = Vocabulary()
    known = len(store.vocab_texts)
    vocab.add(store.vocab_texts, store.vocab_values)
    cutoff = (store.meta.get("stats_window") or {}).get("to_us")
    writer = _MemoryWriter()
    con = sandbox_connection({t: pads.dataset(p) for t, p in db.paths.items()}, threads=1)
    try:
        done = _materialize_task(db, keys, tables, vocab, cutoff, writer, con, name,
                                 md.tasks[name], column_id=len(store.meta["columns"]),
                                 query_timeout_s=query_timeout_s)
    except duckdb.Error as exc:
        raise TributaryError(f"question {name!r}: SQL fails in DuckDB: {_one_line(str(exc))}") from None
    finally:
        con.close()
    texts = ([done.column["text"]] if done.column is not None else []) + vocab.texts[known:]
    dim = int(np.asarray(store.column_embeddings).shape[1])
    vectors = np.zeros((0, dim), dtype=np.float32)
    if texts:
        vectors = _embed(store, texts, registry, embedder)
    n_col = 1 if done.column is not None else 0
    task = StoreTask(name, done.meta, _Arrays(writer.sections))
    return Question(name=name, task=task, column_vectors=vectors[:n_col],
                    vocab_vectors=vectors[n_col:], vocab_values=vocab.values[known:],
                    warnings=list(done.warnings))


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _embed(store: Store, texts: list[str], registry: Registry, embedder: Any) -> np.ndarray:
    from tributary_core.embed_cache import EmbeddingCache, default_cache_dir, embed_texts

    identity = store.embedder
    own = embedder is None
    if own:
        try:
            embedder = registry.create_embedder(identity.backend, model=identity.model,
                                                dimension=identity.dimension)
        except TributaryError as exc:
            raise TributaryError(f"the question needs {len(texts)} new string(s) embedded with "
                                 f"{identity.describe()}, and that embedder cannot be made here: "
                                 f"{exc}") from None
    try:
        if embedder.identity != identity:
            raise TributaryError(f"the embedder given is {embedder.identity.describe()}; the store "
                                 f"was embedded with {identity.describe()}")
        cache = EmbeddingCache(default_cache_dir(), identity) if embedder.cacheable else None
        vectors, _ = embed_texts(embedder, texts, cache=cache, dtype=np.float16)
    finally:
        if own:
            embedder.close()
    return np.asarray(vectors, dtype=np.float32)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else "unknown error"
