"""Opening a preprocessed store: ``open_store(path)`` -> :class:`Store` of memory-mapped arrays."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tributary_core.embedder import EmbedderIdentity
from tributary_core.store.format import (
    METADATA,
    StoreFile,
    StoreFileError,
    load_store_metadata,
)

__all__ = ["open_store", "Store", "StoreTable", "StoreTask", "ForeignKey"]


class StoreTable:
    """One table: ``rows``, per-column ``field(column, name)`` / ``valid(column)`` arrays, ``time``."""

    def __init__(self, name: str, meta: Mapping[str, Any], file: StoreFile) -> None:
        self.name = name
        self.meta = meta
        self.file = file
        self.rows: int = meta["rows"]
        self.columns: dict[str, Any] = meta["columns"]
        if file.meta.get("rows") != self.rows:
            raise StoreFileError(f"{file.path}: holds {file.meta.get('rows')} rows, metadata.json "
                                 f"says {self.rows}: the store was modified")

    def field(self, column: str, field: str) -> np.ndarray:
        return self.file.array(self.columns[column]["fields"][field])

    def valid(self, column: str) -> np.ndarray:
        return self.file.array(self.columns[column]["valid"])

    @property
    def time(self) -> np.ndarray | None:
        """int64 epoch µs per row (``NO_TIME`` where a row has none), or None if untimed."""
        return self.file.array("time") if self.meta["timed"] else None

    @property
    def has_keys(self) -> bool:
        """Whether the store holds this table's primary-key values (a table with a primary key,
        in a store made since keys were stored)."""
        return bool(self.meta.get("key"))

    def keys(self) -> pa.Array:
        """The primary key's value of every row, in its own type: int64 or (large) string,
        read from the memory map without a copy."""
        key = self.meta.get("key")
        if not key:
            why = ("has no primary key" if not self.meta.get("primary_key") else
                   "has no stored key values (a store made before keys were stored: preprocess "
                   "the database again)")
            raise StoreFileError(f"{self.file.path}: table {self.name!r} {why}")
        if key["kind"] == "integer":
            return pa.array(self.file.array(key["values"]))
        offsets = self.file.array(key["offsets"])
        data = self.file.array(key["data"])
        return pa.LargeStringArray.from_buffers(self.rows, pa.py_buffer(offsets),
                                                pa.py_buffer(data))


class ForeignKey:
    """One FK column: ``parent`` (child row -> parent row, -1 none) and the CSR parent -> children
    (``indptr``, ``children``, ``child_time`` sorted by time within each parent)."""

    def __init__(self, meta: Mapping[str, Any], file: StoreFile) -> None:
        self.meta = meta
        self.child_table: str = meta["child_table"]
        self.column: str = meta["column"]
        self.parent_table: str = meta["parent_table"]
        s = meta["sections"]
        self.parent = file.array(s["parent"])
        self.indptr = file.array(s["indptr"])
        self.children = file.array(s["children"])
        self.child_time = file.array(s["child_time"])


class StoreTask:
    """One task: ``anchor_row``, ``observation_time``, ``target(field)``, ``target_valid``."""

    def __init__(self, name: str, meta: Mapping[str, Any], file: StoreFile) -> None:
        self.name = name
        self.meta = meta
        self.file = file
        self.anchor_row = file.array("anchor_row")
        self.observation_time = file.array("observation_time")
        self.target_valid = file.array("target_valid")
        self.candidates = file.array("candidates") if meta.get("candidates") else None

    def target(self, field: str) -> np.ndarray:
        return self.file.array(self.meta["fields"][field])

    def __len__(self) -> int:
        return len(self.anchor_row)


class Store:
    """A preprocessed database, opened read-only. Arrays are memory maps: nothing is copied
    until read (bitmaps are unpacked on access)."""

    def __init__(self, path: Path, meta: dict[str, Any], files: dict[str, StoreFile]) -> None:
        self.path = path
        self.meta = meta
        self.files = files
        self.name: str = meta["name"]
        self.tables = {name: StoreTable(name, m, files[m["file"]])
                       for name, m in meta["tables"].items()}
        self.tasks = {name: StoreTask(name, m, files[m["file"]]) for name, m in meta["tasks"].items()}
        graph = files["graph.bin"]
        self.foreign_keys = [ForeignKey(m, graph) for m in meta["foreign_keys"]]

    @property
    def embedder(self) -> EmbedderIdentity:
        return EmbedderIdentity(**self.meta["embedder"])

    @property
    def column_embeddings(self) -> np.ndarray:
        """(C, D) float16, row ``column_id`` for each column (and derived task target)."""
        return self.files["column_embeddings.bin"].array("embeddings")

    @property
    def vocab_embeddings(self) -> np.ndarray:
        """(V, D) float16, one row per vocabulary entry."""
        return self.files["vocab_embeddings.bin"].array("embeddings")

    @cached_property
    def _vocab(self) -> tuple[list[str], list[str]]:
        f = self.files["vocab_embeddings.bin"]
        return (_decode_strings(f.array("text_offsets"), f.array("text_utf8")),
                _decode_strings(f.array("value_offsets"), f.array("value_utf8")))

    @property
    def vocab_texts(self) -> list[str]:
        """The embedded text of each vocabulary entry (``"carrier is AA"``)."""
        return self._vocab[0]

    @property
    def vocab_values(self) -> list[str]:
        """The raw value of each vocabulary entry (``"AA"``)."""
        return self._vocab[1]

    def decode_row(self, table: str, row: int) -> dict[str, Any]:
        """Row ``row`` of ``table`` as readable values (None for null cells)."""
        from tributary_core.registry import get_registry

        t = self.tables[table]
        if not 0 <= row < t.rows:
            raise StoreFileError(f"{table} has {t.rows} rows; row {row} does not exist")
        registry = get_registry()
        links = {fk.column: fk for fk in self.foreign_keys if fk.child_table == table}
        out: dict[str, Any] = {}
        for cname, cmeta in t.columns.items():
            if not t.valid(cname)[row]:
                out[cname] = None
                continue
            if cname in links:
                parent = int(links[cname].parent[row])
                out[cname] = (f"-> {links[cname].parent_table} row {parent}" if parent >= 0
                              else "(dangling: no parent row)")
                continue
            cell = {f: t.file.array(sec)[row] for f, sec in cmeta["fields"].items()}
            out[cname] = registry.semantic_type(cmeta["stype"]).decode(
                cell, cmeta["stats"], self.vocab_values)
        return out


def _decode_strings(offsets: np.ndarray, utf8: np.ndarray) -> list[str]:
    data = bytes(utf8)
    return [data[offsets[i] : offsets[i + 1]].decode() for i in range(len(offsets) - 1)]


def open_store(path: str | Path, *, verify: bool = True) -> Store:
    """Open the store at ``path``; refuses a missing, truncated, corrupted, edited or
    wrong-version file, naming it. ``metadata.json`` is always checked against its own
    checksum; ``verify`` also checks every section's checksum (reads the store once)."""
    path = Path(path)
    meta_path = path / METADATA
    if not meta_path.is_file():
        what = "is not a preprocessed store (no metadata.json)" if path.is_dir() else "does not exist"
        raise StoreFileError(f"{path} {what}")
    meta = load_store_metadata(meta_path)
    files = {}
    for rel, info in meta["files"].items():
        f = StoreFile(path / rel)
        if f.size != info["bytes"] or f.header_crc != info["crc32"]:
            raise StoreFileError(f"{path / rel}: does not match metadata.json (size or header "
                                 "checksum): the store was modified")
        if verify:
            f.verify()
        files[rel] = f
    return Store(path, meta, files)
