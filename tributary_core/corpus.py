"""Corpora: many databases handled as one (e.g. ``tributary datasets synth`` output).

A *raw corpus* is a folder of database folders, each holding its parquet files and its own
``metadata.json``; a *store corpus* is a folder of stores. :func:`preprocess_corpus` turns the
first into the second (resumable: a store already made from the same metadata with the same
embedder is kept; the embedding cache is shared, so values common to many databases are embedded
once), and :func:`find_stores` lists a store corpus for ``tributary run train --corpus``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tributary_core.errors import TributaryError

__all__ = ["find_stores", "find_databases", "preprocess_corpus"]


def _is_store(folder: Path) -> bool:
    """Whether ``folder`` holds a Tributary store (its metadata.json has a format version)."""
    try:
        with open(folder / "metadata.json", "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b'"format_version"' in head and head.lstrip().startswith(b'{\n "checksum"')


def find_stores(folder: str | Path) -> list[Path]:
    """The stores in ``folder`` (its sub-folders that are stores), sorted by name; a one-line
    error when it is not a folder or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TributaryError(f"{folder}: corpus folder not found")
    stores = sorted(p for p in folder.iterdir() if p.is_dir() and _is_store(p))
    if not stores:
        raise TributaryError(f"{folder}: no Tributary store in it (preprocess a raw corpus with "
                             f"`tributary run preprocess --corpus RAW --out {folder}`)")
    return stores


def find_databases(folder: str | Path) -> list[Path]:
    """The raw databases in ``folder``: sub-folders with a ``metadata.json`` that is not a
    store's, sorted by name; a one-line error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TributaryError(f"{folder}: raw corpus folder not found")
    found = sorted(p for p in folder.iterdir()
                   if p.is_dir() and (p / "metadata.json").is_file() and not _is_store(p))
    if not found:
        raise TributaryError(f"{folder}: no database folder in it (each needs its parquet files "
                             f"and a metadata.json; `tributary datasets synth` writes such folders)")
    return found


def _current(store_dir: Path, metadata: Path, embedder: Any) -> bool:
    """Whether ``store_dir`` is a store of ``metadata`` made with ``embedder``'s identity."""
    from tributary_core.metadata.io import dump_metadata, load_metadata
    from tributary_core.store import open_store

    if not _is_store(store_dir):
        return False
    try:
        store = open_store(store_dir, verify=False)
        wanted = json.loads(json.dumps(dump_metadata(load_metadata(metadata))))
        return store.meta.get("source_metadata") == wanted and store.embedder == embedder.identity
    except (TributaryError, OSError, ValueError):
        return False


def preprocess_corpus(raw: str | Path, out: str | Path, embedder: Any, *,
                      log: Callable[[str], None] | None = None,
                      cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Preprocess every database of the raw corpus ``raw`` into ``out/<database folder>``.

    A store that is already current (same source metadata, same embedder identity) is kept, so
    an interrupted run picks up where it stopped; any other existing store is replaced (never a
    folder that is not a store). Returns ``{"stores": [paths], "made": n, "kept": n,
    "seconds": s}``."""
    from tributary_core.preprocess import preprocess

    raw, out = Path(raw), Path(out)
    databases = find_databases(raw)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _text: None)
    stores, made, kept = [], 0, 0
    start = time.perf_counter()
    for i, db in enumerate(databases, 1):
        target = out / db.name
        if _current(target, db / "metadata.json", embedder):
            kept += 1
        else:
            began = time.perf_counter()
            try:
                preprocess(db / "metadata.json", db, target, embedder=embedder, force=True,
                           cache_dir=cache_dir)
            except TributaryError as exc:
                raise TributaryError(f"{db}: {exc}") from None
            made += 1
            say(f"[{i}/{len(databases)}] {target} ({time.perf_counter() - began:.1f} s)")
        stores.append(target)
    return {"stores": stores, "made": made, "kept": kept,
            "seconds": time.perf_counter() - start}
