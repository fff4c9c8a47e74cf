"""What opening a store for sampling costs, per process: the time to build the sampler graph and
the memory each extra process (a DataLoader worker, a DDP rank) adds.

    python benchmarks/sampler_memory.py [--store data/processed/nycflights13] [--workers 3]

Each of ``--workers`` processes (started with ``spawn``, as DDP ranks and loader workers are)
opens the store, builds its :class:`SamplerGraph` and samples one batch, then holds. Reported:
the build time in each process, the graph's bytes (``SamplerGraph.nbytes``), and each process's
PSS (proportional set size, from ``/proc/PID/smaps_rollup``: pages shared by k processes count
1/k in each) and RSS before and after the build. Memory shared through the page cache (memory
maps) shows as PSS falling with more processes; per-process copies do not.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _memory(pid: str = "self") -> tuple[float, float]:
    """(PSS, RSS) in MB of a process."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in ("Pss:", "Rss:"):
                values[parts[0]] = int(parts[1]) / 1024
    return values.get("Pss:", 0.0), values.get("Rss:", 0.0)


def _worker(store: str, ready, release) -> None:
    import numpy as np

    from tributary_core.sampler import SamplerGraph, sample_batch
    from tributary_core.store import open_store

    before = _memory()
    start = time.perf_counter()
    s = open_store(store, verify=False)
    graph = SamplerGraph(s)
    built = time.perf_counter() - start
    task = next(iter(s.tasks))
    sample_batch(graph, graph.task(task), np.arange(8), context_len=256, width=8)
    ready.put((built, graph.nbytes, before, _memory()))
    release.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    if args.store is None:
        from sampler import ensure_flights

        args.store = ensure_flights()
    ctx = mp.get_context("spawn")
    ready, release = ctx.Queue(), ctx.Event()
    procs = []
    print(f"store {args.store}")
    for k in range(args.workers):
        p = ctx.Process(target=_worker, args=(str(args.store), ready, release))
        p.start()
        procs.append(p)
        built, nbytes, before, after = ready.get()
        pss = [_memory(str(q.pid))[0] for q in procs]
        print(f"process {k + 1}: graph built in {built:.2f} s ({nbytes / 1e6:,.0f} MB of arrays); "
              f"its PSS {before[0]:,.0f} -> {after[0]:,.0f} MB, RSS {before[1]:,.0f} -> "
              f"{after[1]:,.0f} MB; all {k + 1} processes' PSS now {sum(pss):,.0f} MB")
    release.set()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
