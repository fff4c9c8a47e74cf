"""TPC-H end to end at a scale factor, each stage in its own process: wall time and peak RSS.

    python benchmarks/scale.py --scale 10 [--root /tmp/tpch-sf10] [--steps 50] [--keep]

Stages (each a fresh subprocess, so each peak RSS is that stage's alone, read with ``wait4``):
1. fetch: ``tributary datasets fetch tpch --scale S`` (tpchgen-cli writes the parquet files);
2. preprocess: the pipeline with the ``hashing`` embedder (all TPC-H tasks), as
   ``benchmarks/preprocess.py`` runs it, with each stage's peak RSS (``--query-memory 1GB``
   caps DuckDB's memory for the task queries);
3. open + sample: open the store, build the sampler graph (maps ``sampler.bin``), sample
   three rounds of ``--batches`` batches of 32 random seeds of ``customer_spend_next_90d`` and
   of lineitem rows at L=1024, width 16, one thread; seeds/s per round (median batch), and the
   process's anonymous and file-backed RSS at the end (the mapped store's pages are the
   file-backed part: page cache, shared with every other process); then sampler.bin is read
   once whole (as ``open_store``'s checksum check does) and one more round measures the
   sampler with the store in the page cache;
4. train: ``tributary run train`` for ``--steps`` steps (L 256, batch 32, the quality report's
   model size) on all tasks.

Finished stages are kept (a folder per stage under ``--root``; ``--force`` redoes them). Prints
one table; the figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from preprocess import CHILD as PREPROCESS_CHILD  # noqa: E402

SAMPLE = r"""
import json, sys, time
import numpy as np
from tributary_core import get_registry
from tributary_core.sampler import SamplerGraph, TaskView, sample_batch
from tributary_core.store import open_store

start = time.perf_counter()
get_registry()  # the plugins' imports (torch among them): once per process, not the store's
imports = time.perf_counter() - start
start = time.perf_counter()
store = open_store(sys.argv[1], verify=False)
graph = SamplerGraph(store)
opened = time.perf_counter() - start
out = {"imports_s": imports, "open_s": opened, "mapped": graph.mapped, "graph_bytes": graph.nbytes}
views = {"customer_spend_next_90d": graph.task("customer_spend_next_90d"),
         "lineitem rows": TaskView.for_rows(graph, "lineitem")}
rng = np.random.default_rng(0)
def round_of(view):  # seeds/s of the median batch over a round of random batches of 32
    times = []
    for k in range(int(sys.argv[2])):
        seeds = rng.integers(0, len(view), 32)
        t = time.perf_counter()
        sample_batch(graph, view, seeds, context_len=1024, width=16, draw=k)
        times.append(time.perf_counter() - t)
    return round(32 / float(np.median(times)))
for name, view in views.items():
    sample_batch(graph, view, np.arange(32), context_len=1024, width=16)  # compile / load
    # rounds: the first faults the store's pages in, later ones less
    out[name] = [round_of(view) for _ in range(3)]
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
out["rss_anon_gb"] = int(status["RssAnon"].split()[0]) / 2**20
out["rss_file_gb"] = int(status["RssFile"].split()[0]) / 2**20
start = time.perf_counter()  # warm: the whole sampler.bin read once (as open_store's check does)
store.files["sampler.bin"].verify()
out["read_sampler_bin_s"] = time.perf_counter() - start
for name, view in views.items():
    out[name + " warm"] = round_of(view)
print(json.dumps(out))
"""


def _anon_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Poll the process's anonymous RSS (its own memory, not the page cache of mapped files)."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        stop.wait(0.05)


def run_stage(name: str, argv: list[str], log: Path) -> dict:
    """Run ``argv``; its wall time, peak RSS (wait4: anonymous and file-backed pages together),
    peak anonymous RSS (polled) and stdout's last line."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=out, text=True, cwd=ROOT)
        stop, peak = threading.Event(), [0]
        poller = threading.Thread(target=_anon_peak, args=(proc.pid, stop, peak), daemon=True)
        poller.start()
        stdout = proc.stdout.read()
        stop.set()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{name} failed (exit {code}); see {log}")
    lines = [x for x in stdout.strip().splitlines() if x.strip()]
    return {"seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "peak_anon_gb": peak[0] / 2**30,
            "last": lines[-1] if lines else ""}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--query-memory", default="",
                        help="preprocess with this DuckDB memory limit (e.g. 1GB) [default: none]")
    parser.add_argument("--batch-rows", default="",
                        help="preprocess's rows per batch [default: preprocess's own]")
    parser.add_argument("--only", default="", help="comma-separated stages to run now "
                        "(fetch, preprocess, open, train) [default: every stage not done]")
    args = parser.parse_args()
    root = args.root or Path(f"/tmp/tpch-sf{args.scale:g}")
    root.mkdir(parents=True, exist_ok=True)
    raw, store, run = root / "raw", root / "store", root / "run"
    done_file = root / "stages.json"
    done = json.loads(done_file.read_text()) if done_file.exists() and not args.force else {}
    exe = [sys.executable, "-m", "tributary_core.cli"]
    stages = [
        ("fetch", raw / "tpch" / "lineitem.parquet",
         [*exe, "datasets", "fetch", "tpch", "--scale", repr(args.scale), "--out", str(raw),
          "--force"]),
        ("preprocess", store / "metadata.json",  # the pipeline, each stage's peak RSS polled
         [sys.executable, "-c", PREPROCESS_CHILD, str(ROOT / "data" / "metadata" / "tpch.json"),
          str(raw / "tpch"), str(store), args.query_memory, args.batch_rows]),
        ("open + sample", None,
         [sys.executable, "-c", SAMPLE, str(store), str(args.batches)]),
        ("train", None,
         [*exe, "run", "train", "--db", str(store), "--out", str(run), "--force",
          "--steps", str(args.steps), "--batch-size", "32", "--seq-len", "256",
          "--d-model", "96", "--layers", "4", "--heads", "6", "--val-every", str(args.steps),
          "--ckpt-every", str(args.steps)]),
    ]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    for name, product, argv in stages:
        if only and name.split()[0] not in only:
            continue
        if name in done and (product is None or product.exists()) and not only:
            continue
        print(f"{name} ...", flush=True)
        done[name] = run_stage(name, argv, root / f"{name.split()[0]}.log")
        if name == "fetch":
            done[name]["bytes"] = du(raw)
        if name == "preprocess":
            done[name]["bytes"] = du(store)
            done[name]["sampler_bytes"] = (store / "sampler.bin").stat().st_size
        done_file.write_text(json.dumps(done, indent=1))
    print(f"TPC-H scale {args.scale:g} ({root})")
    print(f"{'stage':<16}{'seconds':>10}{'peak RSS GB':>13}{'of it anon':>12}  size / result")
    for name, _, _ in stages:
        if name not in done:
            continue
        r = done[name]
        extra = ""
        if "bytes" in r:
            extra = f"{r['bytes'] / 1e9:.2f} GB"
            if "sampler_bytes" in r:
                extra += f" (sampler.bin {r['sampler_bytes'] / 1e9:.2f} GB)"
        elif name == "open + sample":
            extra = r["last"]
        if name == "preprocess" and r["last"].startswith("{"):
            got = json.loads(r["last"])
            extra += "; stages " + ", ".join(f"{k} {v:.1f} s" for k, v in got["seconds"].items())
            extra += "; peak RSS by stage " + ", ".join(
                f"{k} {v / 2**30:.2f} GB" for k, v in got["stage_rss"].items())
            if "stage_anon" in got:
                extra += "; of it anonymous " + ", ".join(
                    f"{k} {v / 2**30:.2f} GB" for k, v in got["stage_anon"].items())
        print(f"{name:<16}{r['seconds']:>10.1f}{r['peak_rss_gb']:>13.2f}"
              f"{r.get('peak_anon_gb', float('nan')):>12.2f}  {extra}")
    if shutil.disk_usage(root).free < 5e9:
        print("note: under 5 GB of disk left under", root)


if __name__ == "__main__":
    main()
