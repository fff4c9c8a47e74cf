"""TPC-H from ``tpchgen-cli`` (a PyPI package shipping the generator binary), for scale work.

Scale 1 is about 8.7M rows (lineitem 6M); the files are written as the generator makes them:
decimal and date32 columns, string_view strings.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from tributary_core.errors import TributaryError

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")


def write(out: Path, *, scale: float = 1.0) -> tuple[dict[str, int], str]:
    if not scale > 0:
        raise TributaryError(f"TPC-H scale must be positive, got {scale}")
    exe = shutil.which("tpchgen-cli")
    if exe is None:
        raise TributaryError("tpchgen-cli is not installed; run: pip install tpchgen-cli")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    proc = subprocess.run([exe, "parquet", "-s", repr(scale), "--output-dir", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TributaryError(f"tpchgen-cli failed (exit {proc.returncode}): {last}")
    rows = {t: pq.read_metadata(out / f"{t}.parquet").num_rows for t in TABLES}
    return rows, f"{version} scale {scale}"
