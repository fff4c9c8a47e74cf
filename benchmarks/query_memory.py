"""How much of the process's own memory a task query takes under DuckDB's memory limit, by
how the parquet files reach DuckDB. DuckDB's cap counts its own buffers, not what Arrow's
scan decodes ahead of it.

    python benchmarks/query_memory.py [--raw /tmp/tpch-sf10/raw/tpch] [--memory 1GB]

Runs TPC-H's ``order_has_return`` query (orders joined with lineitem, grouped by order; one
DuckDB thread), each way in a fresh process, and prints the peak anonymous RSS (RSS less
file-backed pages, polled every 10 ms) and the time:
- ``dataset``: ``pyarrow.dataset`` as registered before (Arrow's default scan: threads, 16
  batches ahead);
- ``sequential``: :func:`tributary_core.sql.parquet_dataset` with ``sequential=True``, as
  preprocessing registers the tables under ``--query-memory``;
- ``threads``: one batch ahead, but decoded on Arrow's thread pool;
- ``read_parquet``: DuckDB's own parquet reader (not usable in the sandbox, which refuses file
  access from SQL; here for reference).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import os, sys, threading, time
import duckdb, pyarrow.dataset as pads
from tributary_core.sql import parquet_dataset
raw, memory, mode = sys.argv[1], sys.argv[2], sys.argv[3]
page = os.sysconf("SC_PAGE_SIZE")
peak, stop = [0], threading.Event()
def poll():
    while not stop.is_set():
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        peak[0] = max(peak[0], (int(fields[1]) - int(fields[2])) * page)
        stop.wait(0.01)
threading.Thread(target=poll, daemon=True).start()
con = duckdb.connect()
con.execute("SET threads = 1")
con.execute("SET enable_progress_bar = false")
con.execute(f"SET memory_limit = '{memory}'")
con.execute(f"SET temp_directory = '{sys.argv[4]}'")
for t in ("orders", "lineitem"):
    path = os.path.join(raw, t + ".parquet")
    if mode == "dataset":
        con.register(t, pads.dataset(path))
    elif mode == "sequential":
        con.register(t, parquet_dataset(path, sequential=True))
    elif mode == "threads":
        class Threaded(type(parquet_dataset(path, sequential=True))):
            def scanner(self, *args, **kwargs):
                kwargs["use_threads"] = True
                return super().scanner(*args, **kwargs)
        ds = pads.dataset(path)
        con.register(t, Threaded(list(ds.get_fragments()), ds.schema, ds.format, ds.filesystem))
    else:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
query = ("SELECT o_orderkey, bool_or(l_returnflag = 'R') AS has_return FROM orders "
         "JOIN lineitem ON l_orderkey = o_orderkey GROUP BY o_orderkey")
start = time.perf_counter()
rows = sum(len(b) for b in con.sql(query).to_arrow_reader(65536))
seconds = time.perf_counter() - start
stop.set()
print(rows, peak[0], seconds)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("/tmp/tpch-sf10/raw/tpch"),
                        help="a TPC-H parquet folder [default: benchmarks/scale.py's SF10]")
    parser.add_argument("--memory", default="1GB", help="DuckDB's memory limit")
    args = parser.parse_args()
    import tempfile

    print(f"order_has_return on {args.raw}, DuckDB memory limit {args.memory}, one thread")
    print(f"{'scan':14s} {'rows':>12s} {'peak anon GB':>13s} {'seconds':>8s}")
    for mode in ("dataset", "sequential", "threads", "read_parquet"):
        with tempfile.TemporaryDirectory() as spill:
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.raw), args.memory, mode,
                                  spill], capture_output=True, text=True, check=True)
        rows, peak, seconds = out.stdout.strip().splitlines()[-1].split()
        print(f"{mode:14s} {int(rows):12,d} {int(peak) / 1e9:13.2f} {float(seconds):8.1f}")


if __name__ == "__main__":
    main()
