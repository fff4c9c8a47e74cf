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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tributary_core.errors import TributaryError

if TYPE_CHECKING:
    from tributary_core.store import Store

__all__ = ["find_stores", "find_databases", "preprocess_corpus", "check_stores", "is_store",
           "raise_open_file_limit", "store_is_current"]


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (never above the hard
    limit; never lowered) and return it. Every store file a run reads holds one descriptor for
    its memory map, so a run over hundreds of stores can pass the common soft limit of 1,024."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft


def is_store(folder: Path) -> bool:
    """Whether ``folder`` holds a Tributary store (its metadata.json has a format version)."""
    try:
        with open(folder / "metadata.json", "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b'"format_version"' in head and head.lstrip().startswith(b'{\n "checksum"')


def _entries(folder: Path) -> list[Path]:
    """The sub-folders of ``folder``, sorted, leaving out hidden ones: the temporary and
    moved-aside folders an interrupted write leaves (``.NAME.PID.….tmp``, ``.NAME.old-PID``)
    may hold a whole store or database, a second copy of one that is already there."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


def find_stores(folder: str | Path) -> list[Path]:
    """The stores in ``folder`` (its sub-folders that are stores), sorted by name; a one-line
    error when it is not a folder or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TributaryError(f"{folder}: corpus folder not found")
    if is_store(folder):
        raise TributaryError(f"{folder}: is a store, not a folder of stores; pass it with --db, "
                             f"or pass the folder that holds it as --corpus")
    if (folder / "metadata.json").is_file():
        raise TributaryError(f"{folder}: is one raw database (not preprocessed), not a folder of "
                             f"stores; preprocess the folder that holds it with `tributary run "
                             f"preprocess --corpus RAW --out STORES` and pass STORES")
    entries = _entries(folder)
    stores = [p for p in entries if is_store(p)]
    if not stores:
        if any((p / "metadata.json").is_file() for p in entries):
            raise TributaryError(f"{folder}: a raw corpus (databases not preprocessed), not a "
                                 f"folder of stores; preprocess it with `tributary run preprocess "
                                 f"--corpus {folder} --out STORES` and pass STORES")
        raise TributaryError(f"{folder}: no Tributary store in it (preprocess a raw corpus with "
                             f"`tributary run preprocess --corpus RAW --out {folder}`)")
    return stores


def find_databases(folder: str | Path) -> list[Path]:
    """The raw databases in ``folder``: sub-folders with a ``metadata.json`` that is not a
    store's, sorted by name; a one-line error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TributaryError(f"{folder}: raw corpus folder not found")
    if (folder / "metadata.json").is_file():
        what = "a store" if is_store(folder) else "one database"
        raise TributaryError(f"{folder}: is {what} (it holds a metadata.json), not a folder of "
                             f"databases; pass the folder that holds it as --corpus")
    found = [p for p in _entries(folder) if (p / "metadata.json").is_file() and not is_store(p)]
    if not found:
        raise TributaryError(f"{folder}: no database folder in it (each needs its parquet files "
                             f"and a metadata.json; `tributary datasets synth` writes such folders)")
    return found


def store_is_current(store_dir: Path, metadata: Path, embedder: Any) -> bool:
    """Whether ``store_dir`` is a store of ``metadata`` (as it reads now) made with
    ``embedder``'s identity, holding its primary keys' values and the sampler's flat arrays
    (stores made before either was stored are made again): a store to keep rather than
    preprocess again."""
    from tributary_core.metadata.io import dump_metadata, load_metadata
    from tributary_core.sampler.graph import SAMPLER_FILE
    from tributary_core.store import open_store

    if not is_store(store_dir):
        return False
    try:
        store = open_store(store_dir, verify=False)
        wanted = json.loads(json.dumps(dump_metadata(load_metadata(metadata))))
        keyed = all(t.has_keys for t in store.tables.values() if t.meta.get("primary_key"))
        return (store.meta.get("source_metadata") == wanted and store.embedder == embedder.identity
                and keyed and SAMPLER_FILE in store.files)
    except (TributaryError, OSError, ValueError):
        return False


def _check_names(databases: list[Path]) -> None:
    """Read every database's metadata.json before anything is written: a broken one is an
    error naming it, and so are two databases of the same name (their stores could not be
    trained together)."""
    from tributary_core.metadata.io import load_metadata

    seen: dict[str, Path] = {}
    for db in databases:
        name = load_metadata(db / "metadata.json").name
        if name in seen:
            raise TributaryError(f"{db / 'metadata.json'}: $.name: database {name!r} is also "
                                 f"{seen[name] / 'metadata.json'}'s; the databases of a corpus "
                                 f"need names of their own")
        seen[name] = db


def preprocess_corpus(raw: str | Path, out: str | Path, embedder: Any, *,
                      log: Callable[[str], None] | None = None,
                      cache_dir: str | Path | None = None,
                      databases: list[Path] | None = None,
                      query_timeout_s: float | None = None,
                      query_memory: str | None = None,
                      batch_rows: int | None = None) -> dict[str, Any]:
    """Preprocess every database of the raw corpus ``raw`` (or just ``databases``, folders of
    it) into ``out/<database folder>``.

    Every metadata.json is read first (an unreadable one, or two databases of one name, fail
    before anything is written). A store that is already current (same source metadata, same
    embedder identity) is kept, so an interrupted run picks up where it stopped; any other
    existing store is replaced (never a folder that is not a store). ``query_memory`` and
    ``batch_rows`` apply to each database as :func:`~tributary_core.preprocess.preprocess`
    takes them (they change no store's bytes, so a current store is kept whatever they were).
    Returns ``{"stores": [paths], "made": n, "kept": n, "seconds": s}``."""
    from tributary_core.preprocess import preprocess
    from tributary_core.preprocess.pipeline import check_batch_rows
    from tributary_core.sql import check_memory_limit

    raw, out = Path(raw), Path(out)
    databases = find_databases(raw) if databases is None else [Path(d) for d in databases]
    if out.exists() and not out.is_dir():
        raise TributaryError(f"--out {out}: is a file, not a folder")
    if out.resolve() == raw.resolve():
        raise TributaryError(f"--out {out}: is the raw corpus itself; name another folder for "
                             f"its stores")
    if (out / "metadata.json").is_file():
        what = "a store" if is_store(out) else "a database folder"
        raise TributaryError(f"--out {out}: is {what} (it holds a metadata.json), not a folder "
                             f"of stores; name another folder")
    _check_names(databases)
    check_memory_limit(query_memory)  # before anything is written
    options: dict[str, Any] = {"query_memory": query_memory}
    if query_timeout_s is not None:
        options["query_timeout_s"] = query_timeout_s
    if batch_rows is not None:
        check_batch_rows(batch_rows)
        options["batch_rows"] = batch_rows
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _text: None)
    stores, made, kept = [], 0, 0
    start = time.perf_counter()
    try:
        for i, db in enumerate(databases, 1):
            target = out / db.name
            if store_is_current(target, db / "metadata.json", embedder):
                kept += 1
            else:
                began = time.perf_counter()
                try:
                    preprocess(db / "metadata.json", db, target, embedder=embedder, force=True,
                               cache_dir=cache_dir, **options)
                except TributaryError as exc:
                    text = str(exc)  # name the database unless the message already does
                    raise TributaryError(text if str(db) in text or str(target) in text
                                         else f"{db}: {text}") from None
                made += 1
                say(f"[{i}/{len(databases)}] {target} ({time.perf_counter() - began:.1f} s)")
            stores.append(target)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the folder this call made, still empty: leave nothing behind
        raise
    return {"stores": stores, "made": made, "kept": kept,
            "seconds": time.perf_counter() - start}


def check_stores(stores: Sequence[Store], val_stores: Sequence[Store] = ()) -> None:
    """Refuse stores that cannot train together, naming them: a store listed twice (``--db``
    and a ``--corpus`` holding it), two stores of one database name, stores embedded with
    different embedders, and ``val_stores`` (``--val-corpus``) that share a name with a training
    store or were embedded otherwise. Called by the trainer before anything is written."""
    def once(opened: Sequence[Store]) -> None:
        seen: set[Path] = set()
        for store in opened:
            key = Path(store.path).resolve()
            if key in seen:
                raise TributaryError(f"{store.path}: the store is given twice (by --db or "
                                     f"--corpus); name each store once")
            seen.add(key)

    once(stores)
    names: dict[str, Any] = {}
    first = stores[0] if stores else None
    for store in stores:
        if store.name in names:
            raise TributaryError(f"{store.path}: database {store.name!r} is also the store "
                                 f"{names[store.name].path}; the stores of a run need names of "
                                 f"their own")
        names[store.name] = store
        if store.embedder != first.embedder:
            raise TributaryError(f"{store.path}: embedded with {store.embedder.describe()}, but "
                                 f"{first.path} with {first.embedder.describe()}; the stores of a "
                                 f"run need one embedder (preprocess them again with one)")
    once(val_stores)
    for store in val_stores:
        if store.name in names:
            raise TributaryError(f"--val-corpus: {store.path}: database {store.name!r} is also "
                                 f"the training store {names[store.name].path}; validate on "
                                 f"held-out databases")
        if first is not None and store.embedder != first.embedder:
            raise TributaryError(f"--val-corpus: {store.path}: embedded with "
                                 f"{store.embedder.describe()}, the training stores with "
                                 f"{first.embedder.describe()}")
