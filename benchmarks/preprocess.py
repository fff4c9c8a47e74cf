"""Preprocessing speed on TPC-H (issue 3's figures). Prints medians of several runs, measured in
one process run so the ratios compare like with like.

    python benchmarks/preprocess.py --scale 1 [--repeats 3] [--raw DIR] [--against CHECKOUT]

Figures:
- read: pyarrow reads every stored (non-ignored) column of every table into numpy;
- preprocess: the whole pipeline minus the embedding stage (embedding is timed apart), in a
  fresh subprocess per run, with that subprocess's peak RSS;
- kernels on lineitem: CSR build (edges/s, all Numba threads and one), numerical z-score and timestamp
  encoding (values/s, all Numba threads and one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
METADATA = REPO / "data" / "metadata" / "tpch.json"

CHILD = """
import json, os, resource, sys, threading, time
from tributary_core import get_registry
from tributary_core.preprocess import preprocess
emb = get_registry().create_embedder("hashing")
page = os.sysconf("SC_PAGE_SIZE")
stage, peaks, anon, stop = ["start"], {}, {}, threading.Event()
def poll():  # each stage's peak RSS and peak anonymous RSS (RSS less file-backed), every 10 ms
    while not stop.is_set():
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        rss, shared = int(fields[1]) * page, int(fields[2]) * page
        peaks[stage[0]] = max(peaks.get(stage[0], 0), rss)
        anon[stage[0]] = max(anon.get(stage[0], 0), rss - shared)
        stop.wait(0.01)
def progress(name, done, total, note=""):
    stage[0] = name
threading.Thread(target=poll, daemon=True).start()
start = time.perf_counter()
memory = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None  # --query-memory
batch = {"batch_rows": int(sys.argv[5])} if len(sys.argv) > 5 and sys.argv[5] else {}  # --batch-rows
r = preprocess(sys.argv[1], sys.argv[2], sys.argv[3], embedder=emb, force=True, progress=progress,
               query_memory=memory, **batch)
total = time.perf_counter() - start
stop.set()
print(json.dumps({"total": total, "seconds": r.seconds, "store_bytes": r.store_bytes,
                  "rows": sum(r.rows.values()), "edges": r.edges, "stage_rss": peaks, "stage_anon": anon,
                  "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "sampler_bytes": os.path.getsize(os.path.join(sys.argv[3], "sampler.bin"))}))
"""


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_numpy(raw: Path) -> None:
    """Every stored column into numpy: numbers (decimals cast to float64, as any user would)
    and dates natively, strings as object arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc

    md = json.loads(METADATA.read_text())
    for name, table in md["tables"].items():
        cols = [c for c, col in table["columns"].items() if col["stype"] != "ignored"]
        data = pq.read_table(raw / f"{name}.parquet", columns=cols)
        for col in data.columns:
            if pa.types.is_decimal(col.type):
                col = pc.cast(col, pa.float64())
            col.to_numpy()


def code_env(code: Path, scratch: Path) -> dict[str, str]:
    """The environment that makes a child import Tributary from checkout ``code``: its
    ``tributary_core`` (the child runs there) and its ``plugins`` as ``tributary_plugins``
    (the editable install maps that name to this checkout's folder; a link in ``scratch``
    comes first on the path)."""
    links = scratch / f"path-{abs(hash(str(code)))}"
    links.mkdir(exist_ok=True)
    if not (links / "tributary_plugins").exists():
        (links / "tributary_plugins").symlink_to(Path(code).resolve() / "plugins")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(links), str(code)]))


def write_floor(n_bytes: int) -> None:
    """Write and fsync ``n_bytes`` of zeros: the disk's floor for writing the store."""
    block = np.zeros(1 << 24, dtype=np.uint8)
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as f:
        for _ in range(0, n_bytes, block.nbytes):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", type=Path, help="TPC-H parquet folder [default: generate one]")
    parser.add_argument("--batch-rows", type=int, default=None,
                        help="preprocess's rows per batch [default: preprocess's own]")
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout of Tributary (e.g. a git worktree of an older "
                             "commit): its preprocessing runs alternate with this one's")
    args = parser.parse_args()

    from tributary_core.datasets import fetch_dataset

    raw = (args.raw or Path(tempfile.gettempdir()) / f"tributary-bench-tpch-{args.scale:g}").resolve()
    if not raw.exists():
        fetch_dataset("tpch", raw, scale=args.scale)
    print(f"TPC-H scale {args.scale:g} at {raw}; {os.cpu_count()} CPUs, "
          f"{numba.get_num_threads()} Numba threads")

    read_numpy(raw)  # warm the page cache, as preprocessing will find it
    t_read = median_time(lambda: read_numpy(raw), args.repeats)

    runs, others = [], []
    with tempfile.TemporaryDirectory() as out:
        # One warm-up run compiles (or loads from cache) the Numba kernels. Each run writes a
        # new store, the previous one removed before it starts: replacing a store (--force)
        # also deletes the old one's gigabytes, which is not preprocessing's own work. With
        # --against, runs of the other code alternate with this code's.
        for i in range(args.repeats + 1):
            pairs = [(REPO, runs), *([(args.against.resolve(), others)] if args.against else [])]
            for code, into in pairs[:: 1 if i % 2 else -1]:  # each side goes first in turn
                shutil.rmtree(Path(out) / "tpch", ignore_errors=True)
                proc = subprocess.run([sys.executable, "-c", CHILD, str(METADATA), str(raw),
                                       str(Path(out) / "tpch"), "", str(args.batch_rows or "")],
                                      capture_output=True, text=True, check=True, cwd=code,
                                      env=code_env(code, Path(out)))
                if i:
                    into.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if others:
        def no_embed_of(r: dict) -> float:
            return r["total"] - r["seconds"]["embed"]
        ratios = [no_embed_of(a) / no_embed_of(b) for a, b in zip(runs, others, strict=True)]
        print(f"against {args.against}: preprocess (no embedding) "
              f"{statistics.median(no_embed_of(r) for r in others):.2f} s there, "
              f"{statistics.median(no_embed_of(r) for r in runs):.2f} s here; per pair here / "
              f"there {', '.join(f'{x:.3f}' for x in ratios)} (median "
              f"{statistics.median(ratios):.3f})")
        print("  stages there: " + ", ".join(
            f"{k} {statistics.median(r['seconds'][k] for r in others):.2f}s"
            for k in others[0]["seconds"]))
    no_embed = statistics.median(r["total"] - r["seconds"]["embed"] for r in runs)
    stages = {k: statistics.median(r["seconds"][k] for r in runs) for k in runs[0]["seconds"]}
    rss = statistics.median(r["max_rss_bytes"] for r in runs)
    store = runs[0]["store_bytes"]

    sampler = runs[0]["sampler_bytes"]
    print(f"rows {runs[0]['rows']:,}, edges {runs[0]['edges']:,}, store {store / 1e6:,.0f} MB "
          f"(of which sampler.bin {sampler / 1e6:,.0f} MB)")
    print(f"read into numpy           {t_read:8.2f} s")
    print(f"preprocess (no embedding) {no_embed:8.2f} s   ratio {no_embed / t_read:.2f}x  "
          "(target <= 3x)")
    print("  stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in stages.items()))
    t_write = median_time(lambda: write_floor(store), 1)
    print(f"  of which the disk alone: writing {store / 1e6:,.0f} MB with fsync takes {t_write:.2f} s "
          f"on this machine")
    print("  peak anonymous RSS by stage (RSS less the mapped files' pages): " + ", ".join(
        f"{k} {statistics.median(r['stage_anon'].get(k, 0) for r in runs) / 1e6:,.0f} MB"
        for k in runs[0]["stage_anon"]))
    print("  peak RSS by stage: " + ", ".join(
        f"{k} {statistics.median(r['stage_rss'].get(k, 0) for r in runs) / 1e6:,.0f} MB"
        for k in runs[0]["stage_rss"]))
    print(f"peak RSS                  {rss / 1e6:8.0f} MB  ratio {rss / store:.2f}x store, "
          f"{rss / (store - sampler):.2f}x the store without sampler.bin  (target <= 2.5x)")

    # -- kernels ----------------------------------------------------------------------------
    from tributary_plugins.semantic_types.numerical import to_float64, zscore
    from tributary_plugins.semantic_types.timestamp import TABLES, encode_times

    from tributary_core.keys import match_keys
    from tributary_core.preprocess.graph import build_csr
    from tributary_core.timeconv import to_epoch_us

    line = pq.read_table(raw / "lineitem.parquet",
                         columns=["l_orderkey", "l_extendedprice", "l_receiptdate"])
    orders = pq.read_table(raw / "orders.parquet", columns=["o_orderkey"]).column(0)
    parent = match_keys(line.column("l_orderkey"), orders).rows
    conv = to_epoch_us(line.column("l_receiptdate"))
    n = len(parent)
    threads = numba.get_num_threads()
    for k in sorted({threads, 1}, reverse=True):
        build_csr(parent, conv.values, len(orders), k)
        t_csr = median_time(lambda k=k: build_csr(parent, conv.values, len(orders), k), 5)
        print(f"CSR build, time-sorted (lineitem -> orders, {n:,} edges), {k} thread(s)  "
              f"{n / t_csr / 1e6:8.1f} M edges/s (target >= 100)")
    part = match_keys(line.column("l_partkey") if "l_partkey" in line.column_names else
                      pq.read_table(raw / "lineitem.parquet", columns=["l_partkey"]).column(0),
                      pq.read_table(raw / "part.parquet", columns=["p_partkey"]).column(0)).rows
    n_part = int(part.max()) + 1
    for k in sorted({threads, 1}, reverse=True):
        build_csr(part, conv.values, n_part, k)
        t_part = median_time(lambda k=k: build_csr(part, conv.values, n_part, k), 5)
        print(f"CSR build, time-sorted (lineitem -> part, ~30 children each), {k} thread(s)  "
              f"{n / t_part / 1e6:8.1f} M edges/s")

    values, valid = to_float64(line.column("l_extendedprice"))
    out = np.empty(n, np.float32)
    ok = np.empty(n, np.bool_)
    ts = np.empty((n, 15), np.float32)
    for threads in sorted({numba.get_num_threads(), 1}, reverse=True):
        zscore(values, valid, 1.0, 2.0, threads, out, ok)
        t_num = median_time(lambda t=threads: zscore(values, valid, 1.0, 2.0, t, out, ok), 7)
        encode_times(conv.values, conv.valid, 1.0, 2.0, TABLES, threads, ts)
        t_ts = median_time(
            lambda t=threads: encode_times(conv.values, conv.valid, 1.0, 2.0, TABLES, t, ts), 5)
        print(f"numerical z-score, {threads} thread(s)   {n / t_num / 1e9:8.2f} G values/s "
              "(target >= 1)")
        print(f"timestamp encoding, {threads} thread(s)  {n / t_ts / 1e6:8.1f} M values/s "
              "(target >= 50)")


if __name__ == "__main__":
    main()
