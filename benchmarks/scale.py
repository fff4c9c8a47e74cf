"""TPC-H end to end at a scale factor, each stage in its own process: wall time and peak RSS.

    python benchmarks/scale.py --scale 10 [--root /tmp/tpch-sf10] [--steps 50] [--keep]

Stages (each a fresh subprocess, so each peak RSS is that stage's alone, read with ``wait4``):
1. fetch: ``tributary datasets fetch tpch --scale S`` (tpchgen-cli writes the parquet files);
2. preprocess: ``tributary run preprocess --embedder hashing`` (all TPC-H tasks);
3. open + sample: open the store, build the sampler graph (maps ``sampler.bin``), sample
   batches of 32 seeds of ``customer_spend_next_90d`` and of every lineitem row at L=1024,
   width 16, one thread; seeds/s;
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = r"""
import json, sys, time
import numpy as np
from tributary_core.sampler import SamplerGraph, TaskView, sample_batch
from tributary_core.store import open_store

start = time.perf_counter()
store = open_store(sys.argv[1], verify=False)
graph = SamplerGraph(store)
opened = time.perf_counter() - start
out = {"open_s": opened, "mapped": graph.mapped, "graph_bytes": graph.nbytes}
views = {"customer_spend_next_90d": graph.task("customer_spend_next_90d"),
         "lineitem rows": TaskView.for_rows(graph, "lineitem")}
rng = np.random.default_rng(0)
for name, view in views.items():
    sample_batch(graph, view, np.arange(32), context_len=1024, width=16)  # compile / load
    times = []
    for k in range(int(sys.argv[2])):
        seeds = rng.integers(0, len(view), 32)
        t = time.perf_counter()
        sample_batch(graph, view, seeds, context_len=1024, width=16, draw=k)
        times.append(time.perf_counter() - t)
    out[name] = 32 / float(np.median(times))
print(json.dumps(out))
"""


def run_stage(name: str, argv: list[str], log: Path) -> dict:
    """Run ``argv``; its wall time, peak RSS (wait4) and stdout's last line."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=out, text=True, cwd=ROOT)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{name} failed (exit {code}); see {log}")
    lines = [x for x in stdout.strip().splitlines() if x.strip()]
    return {"seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20,
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
        ("preprocess", store / "metadata.json",
         [*exe, "run", "preprocess", "--db", "tpch", "--raw", str(raw / "tpch"),
          "--metadata", str(ROOT / "data" / "metadata" / "tpch.json"), "--out", str(store),
          "--embedder", "hashing", "--force"]),
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
    print(f"{'stage':<16}{'seconds':>10}{'peak RSS GB':>13}  size / result")
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
        print(f"{name:<16}{r['seconds']:>10.1f}{r['peak_rss_gb']:>13.2f}  {extra}")
    if shutil.disk_usage(root).free < 5e9:
        print("note: under 5 GB of disk left under", root)


if __name__ == "__main__":
    main()
