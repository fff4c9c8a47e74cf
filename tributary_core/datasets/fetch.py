"""Dispatch and atomic publishing of bundled datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from tributary_core.atomic import staged_folder
from tributary_core.errors import TributaryError
from tributary_core.folders import check_output_folder

__all__ = ["DATASETS", "FetchResult", "fetch_dataset", "prepare_store"]

MANIFEST = "_manifest.json"


@attrs.frozen(kw_only=True)
class FetchResult:
    name: str
    path: Path
    rows: dict[str, int]
    source: str
    #: False when a complete copy was already there and nothing was written.
    written: bool


def _nycflights13(out: Path, **_: Any) -> tuple[dict[str, int], str]:
    from tributary_core.datasets import nycflights13

    return nycflights13.write(out)


def _lahman(out: Path, **_: Any) -> tuple[dict[str, int], str]:
    from tributary_core.datasets import lahman

    return lahman.write(out)


def _tpch(out: Path, *, scale: float = 1.0, **_: Any) -> tuple[dict[str, int], str]:
    from tributary_core.datasets import tpch

    return tpch.write(out, scale=scale)


#: name -> writer(out_dir, **options) returning (rows per table, source description)
DATASETS: dict[str, Callable[..., tuple[dict[str, int], str]]] = {
    "nycflights13": _nycflights13,
    "lahman": _lahman,
    "tpch": _tpch,
}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def fetch_dataset(name: str, out: str | Path, *, force: bool = False,
                  **options: Any) -> FetchResult:
    """Write dataset ``name`` into ``out`` (see module docs).

    A complete earlier fetch with the same options is kept as is unless ``force``; a folder
    that holds anything but a fetch is never replaced, with or without ``force``.
    """
    if name not in DATASETS:
        raise TributaryError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    out = Path(out)
    def is_fetch(path: Path) -> bool:
        found = _read_manifest(path)
        return isinstance(found, dict) and "dataset" in found

    held = check_output_folder(out, force=force, is_ours=is_fetch, kind="fetched dataset",
                               option="fetch into")
    manifest = _read_manifest(out) if held else None
    if held and not force:
        if manifest and manifest.get("dataset") == name and manifest.get("options") == options:
            return FetchResult(name=name, path=out, rows=manifest["rows"],
                               source=manifest["source"], written=False)
        raise TributaryError(f"{out} already exists and is not a complete {name} fetch with "
                             "these options; use --force to replace it")
    def may_replace(path: Path) -> str | None:  # checked again at publish time
        if not path.is_dir() or path.is_symlink():
            return "is not a folder; remove it yourself or choose another --out"
        if any(path.iterdir()) and not is_fetch(path):
            return "now holds other files; remove them yourself or choose another --out"
        return None

    with staged_folder(out, may_replace=may_replace) as tmp:
        rows, source = DATASETS[name](tmp, **options)
        (tmp / MANIFEST).write_text(json.dumps(
            {"dataset": name, "options": options, "source": source, "rows": rows}, indent=2))
    return FetchResult(name=name, path=out, rows=rows, source=source, written=True)


def prepare_store(name: str, embedder: Any, *, root: str | Path = "data",
                  progress: Any = None, log: Callable[[str], None] | None = None) -> Path:
    """The store of a bundled database, made if missing: fetch ``root/raw/NAME``, then
    preprocess it with ``root/metadata/NAME.json`` into ``root/processed/NAME`` with the embedder
    backend ``embedder``. A store already made with that embedder identity is kept as it is."""
    from tributary_core.corpus import store_is_current
    from tributary_core.preprocess import preprocess

    root = Path(root)
    raw, store_dir = root / "raw" / name, root / "processed" / name
    metadata = root / "metadata" / f"{name}.json"
    if not metadata.exists():
        raise TributaryError(f"{metadata} not found: run from the repository root")
    say = log or (lambda _text: None)
    say(f"fetching {name} into {raw}")
    fetch_dataset(name, raw)
    # a store of an older metadata.json (a task added, a horizon changed), of another
    # embedder, or damaged, is rebuilt
    if not store_is_current(store_dir, metadata, embedder):
        say(f"preprocessing into {store_dir} with {embedder.identity.describe()}")
        preprocess(metadata, raw, store_dir, embedder=embedder, force=True, progress=progress)
    else:
        say(f"{store_dir} is up to date ({embedder.identity.describe()})")
    return store_dir
