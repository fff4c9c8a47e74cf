"""Embedder throughput: the local model on short strings, and the HTTP client's overhead.

    python benchmarks/embedders.py [--strings 4000] [--repeats 3] [--concurrency 2]

1. ``local``: strings/s for short distinct strings ("<column> is <value>", as preprocessing
   embeds them) at D=256, through the same path as preprocessing (no cache).
2. HTTP overhead: ``tributary serve embedder --backend local`` runs as a separate process;
   the same strings are embedded (a) by that server's model called in-process in this process
   (same batches) and (b) by the ``baseten`` backend pointed at the server
   (``BASETEN_EMBEDDER_URL``). The figure is (b) / (a). Repeats alternate (a) and (b); medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from tributary_core import get_registry
from tributary_core.embed_cache import embed_texts

COLUMNS = ["carrier", "origin", "dest", "tailnum", "model", "manufacturer", "teamID", "lgID"]


def short_strings(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        col = COLUMNS[i % len(COLUMNS)]
        value = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), size=rng.integers(2, 7)))
        out.append(f"{col} is {value}")
    return out


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tributary_core.cli", "serve", "embedder", "--backend", "local",
           "--port", "0", "--quiet"]
    if threads:
        cmd += ["-E", f"threads={threads}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if " at " not in line:
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" at ")[1].split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strings", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    texts = short_strings(args.strings)
    reg = get_registry()
    print(f"{len(texts):,} distinct short strings, e.g. {texts[:3]}; {os.cpu_count()} CPUs")

    local = reg.create_embedder("local", dimension=256)
    t = time.perf_counter()
    local.load()
    print(f"local model load: {time.perf_counter() - t:.2f} s, precision {local.precision}")
    embed_texts(local, texts[:256])  # warm-up

    proc, url = start_server(threads=0)
    os.environ["BASETEN_EMBEDDER_URL"] = url
    os.environ.setdefault("BASETEN_API_KEY", "benchmark-key-not-secret")
    try:
        remote = reg.create_embedder("baseten", dimension=256, concurrency=args.concurrency,
                                     batch_size=local.batch_size)
        embed_texts(remote, texts[:256])  # warm-up: the server loads its model lazily
        in_process, over_http, check = [], [], None
        for _ in range(args.repeats):
            _, stats = embed_texts(local, texts)
            in_process.append(stats.strings_per_second)
            vectors_http, stats = embed_texts(remote, texts)
            over_http.append(stats.strings_per_second)
            check = vectors_http
        remote.close()
    finally:
        proc.terminate()
        proc.wait()
    direct, _ = embed_texts(local, texts)
    max_diff = float(np.abs(direct - check).max())
    med_local, med_http = statistics.median(in_process), statistics.median(over_http)
    print(f"local, in-process      : {med_local:8,.0f} strings/s  (runs: "
          f"{', '.join(f'{x:,.0f}' for x in in_process)})")
    print(f"baseten -> local server: {med_http:8,.0f} strings/s  (runs: "
          f"{', '.join(f'{x:,.0f}' for x in over_http)}; concurrency {args.concurrency})")
    print(f"HTTP / in-process      : {med_http / med_local:8.2f}   (target >= 0.90)")
    print(f"max |difference| of the vectors, HTTP vs in-process: {max_diff:.2e}")


if __name__ == "__main__":
    main()
