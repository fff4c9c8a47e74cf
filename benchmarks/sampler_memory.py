"""What opening a store for sampling costs, per process: the time to build the sampler graph and
the memory each extra process (a DataLoader worker, a DDP rank) adds.

    python benchmarks/sampler_memory.py [--store data/processed/nycflights13] [--workers 3]
        [--batches 50] [--mode both|mapped|copy]

Each of ``--workers`` processes (started with ``spawn``, as DDP ranks and loader workers are)
opens the store, builds its :class:`SamplerGraph` and samples ``--batches`` batches of 32 seeds
(L=1024, width 16), then holds. ``mapped``: the graph maps the store's ``sampler.bin`` (the
default since issue 19); ``copy``: the same store with that file left out, so the graph reads
its own copy of the arrays (as every store did before); ``both`` runs one set after the other.
Reported:
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


def _worker(store: str, copy: bool, batches: int, ready, release) -> None:
    import numpy as np

    from tributary_core.sampler import SamplerGraph, sample_batch
    from tributary_core.store import open_store
    from tributary_core.store.reader import Store

    s = open_store(store, verify=False)
    task = next(iter(s.tasks))
    warm = SamplerGraph(s)  # compile (or load) the kernel before measuring
    sample_batch(warm, warm.task(task), np.arange(2), context_len=64, width=4)
    del warm
    before = _memory()
    start = time.perf_counter()
    s = open_store(store, verify=False)
    if copy:
        s = Store(s.path, s.meta, {k: v for k, v in s.files.items() if k != "sampler.bin"})
    graph = SamplerGraph(s)
    built = time.perf_counter() - start
    view = graph.task(task)
    rng = np.random.default_rng(0)
    for k in range(batches):
        sample_batch(graph, view, rng.integers(0, len(view), 32), context_len=1024, width=16,
                     draw=k)
    ready.put((built, graph.nbytes, graph.mapped, before, _memory()))
    release.wait()


def run(store: Path, workers: int, batches: int, copy: bool) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Queue(), ctx.Event()
    procs = []
    print(f"{'copy' if copy else 'mapped'}: store {store}")
    for k in range(workers):
        p = ctx.Process(target=_worker, args=(str(store), copy, batches, ready, release))
        p.start()
        procs.append(p)
        built, nbytes, mapped, before, after = ready.get()
        pss = [_memory(str(q.pid))[0] for q in procs]
        print(f"  process {k + 1}: opened in {built:.3f} s ({nbytes / 1e6:,.0f} MB of arrays, "
              f"{'mapped' if mapped else 'copied'}); its PSS {before[0]:,.0f} -> {after[0]:,.0f} "
              f"MB, RSS {before[1]:,.0f} -> {after[1]:,.0f} MB; all {k + 1} processes' PSS now "
              f"{sum(pss):,.0f} MB", flush=True)
    release.set()
    for p in procs:
        p.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--mode", choices=("both", "mapped", "copy"), default="both")
    args = parser.parse_args()
    if args.store is None:
        from sampler import ensure_flights

        args.store = ensure_flights()
    for copy in {"both": (False, True), "mapped": (False,), "copy": (True,)}[args.mode]:
        run(args.store, args.workers, args.batches, copy)


if __name__ == "__main__":
    main()
