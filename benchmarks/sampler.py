"""Sampler throughput: seeds/s with full batch output (cells, values, adjacency, targets).

    python benchmarks/sampler.py [--scale 1] [--batches 8] [--repeats 3] [--copy]

Databases: TPC-H at ``--scale`` (generated with tpchgen-cli and preprocessed with the
``hashing`` embedder into /tmp/tributary-bench-tpch-SCALE-store if missing; seeds: every
lineitem row, and the customer_spend_next_90d task), and nycflights13 (data/processed, made
with the hashing embedder if missing; seeds: the flight_delayed task). L=1024, width 16,
B=256. For each: seeds/s on 1 and 2 threads (medians of ``--repeats`` runs of ``--batches``
batches each, the same seeds for both), and the plain-Python reference's seeds/s on a few seeds.

``--store PATH --task NAME`` (repeatable task) measures an existing store instead, so a small
store made for a test can be timed without preprocessing a bundled database.

``--store PATH --task NAME --interleave`` compares, in one process, the graph that maps the
store's ``sampler.bin`` with one that copies the arrays into memory: 12 alternating timings of
``--batches`` batches on one thread, their medians and the median of the per-pair ratios (the
machine's drift cancels within a pair). Also prints how much of ``sampler.bin`` the process
maps in 2 MB pages (``FilePmdMapped``, Linux).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tributary_core import get_registry  # noqa: E402
from tributary_core.preprocess import preprocess  # noqa: E402
from tributary_core.sampler import HashSplit, SamplerGraph, TaskView, context_seeds, sample_batch  # noqa: E402
from tributary_core.sampler.reference import reference_context  # noqa: E402
from tributary_core.store import open_store  # noqa: E402


def ensure_store(raw: Path, metadata: Path, out: Path) -> Path:
    if not (out / "metadata.json").exists():
        print(f"preprocessing {raw} -> {out} (hashing embedder)", flush=True)
        preprocess(metadata, raw, out, embedder=get_registry().create_embedder("hashing"), force=True)
    return out


def ensure_tpch(scale: float) -> Path:
    raw = Path(f"/tmp/tributary-bench-tpch-{scale:g}")
    if not (raw / "lineitem.parquet").exists():
        from tributary_core.datasets import fetch_dataset

        fetch_dataset("tpch", raw, scale=scale)
    return ensure_store(raw, ROOT / "data/metadata/tpch.json", Path(f"{raw}-store"))


def graph_of(path: Path, copy: bool) -> SamplerGraph:
    """The store's sampler graph: mapping its sampler.bin, or with ``copy`` reading the arrays
    into this process's memory (as stores without sampler.bin are)."""
    from tributary_core.store.reader import Store

    store = open_store(path, verify=False)
    if copy:
        store = Store(store.path, store.meta,
                      {k: v for k, v in store.files.items() if k != "sampler.bin"})
    return SamplerGraph(store)


def ensure_flights() -> Path:
    out = ROOT / "data/processed/nycflights13"
    raw = ROOT / "data/raw/nycflights13"
    if not (out / "metadata.json").exists():
        if not raw.exists():
            from tributary_core.datasets import fetch_dataset

            fetch_dataset("nycflights13", raw)
        ensure_store(raw, ROOT / "data/metadata/nycflights13.json", out)
    return out


def measure(graph: SamplerGraph, view: TaskView, args: argparse.Namespace,
            icl_share: float = 0.0) -> dict[str, float]:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(view), args.batch_size) for _ in range(args.batches)]
    examples = view.examples(HashSplit()) if icl_share > 0 else None
    kw = {"context_len": args.context_len, "width": args.width, "examples": examples,
          "icl_share": icl_share}
    sample_batch(graph, view, batches[0][:4], **kw)
    out: dict[str, float] = {}
    runs: dict[int, list[float]] = {1: [], 2: []}
    cells, labels = [], []
    for _ in range(args.repeats):
        for threads in (1, 2):
            start = time.perf_counter()
            for seeds in batches:
                b = sample_batch(graph, view, seeds, n_threads=threads, **kw)
                cells.append(b.n_cells.mean())
                labels.append(b.is_label.sum(1).mean())
            runs[threads].append(args.batches * args.batch_size / (time.perf_counter() - start))
    out["1 thread"] = statistics.median(runs[1])
    out["2 threads"] = statistics.median(runs[2])
    out["mean cells"] = float(np.mean(cells))
    out["mean examples"] = float(np.mean(labels))
    few = batches[0][: args.reference_seeds]
    seeds = context_seeds(0, view.name, view.anchor_rows[few])
    start = time.perf_counter()
    task_name = view.name
    if task_name.endswith(":rows") or icl_share > 0:  # (the reference's examples are O(seeds))
        return out | {"reference": float("nan")}
    for i, s in enumerate(few):
        reference_context(graph.store, task_name, int(view.anchor_rows[s]),
                          int(view.observation_time[s]), int(seeds[i]),
                          context_len=args.context_len, width=args.width)
    out["reference"] = len(few) / (time.perf_counter() - start)
    return out


def interleave(path: Path, task: str, args: argparse.Namespace) -> None:
    mapped, copied = graph_of(path, False), graph_of(path, True)
    if not mapped.mapped:
        sys.exit(f"{path}: the sampler graph does not map sampler.bin (made before issue 19?)")
    views = {id(g): g.task(task) for g in (mapped, copied)}
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(views[id(mapped)]), args.batch_size) for _ in range(args.batches)]
    kw = {"context_len": args.context_len, "width": args.width, "n_threads": 1}

    def rate(g: SamplerGraph) -> float:
        start = time.perf_counter()
        for seeds in batches:
            sample_batch(g, views[id(g)], seeds, **kw)
        return len(batches) * args.batch_size / (time.perf_counter() - start)

    rate(mapped), rate(copied)  # compile, fault the pages in
    runs: dict[str, list[float]] = {"mapped": [], "copy": []}
    for k in range(12):
        order = [("mapped", mapped), ("copy", copied)]
        for name, g in order if k % 2 == 0 else order[::-1]:
            runs[name].append(rate(g))
    huge = 0
    with open("/proc/self/smaps") as f:  # FilePmdMapped of sampler.bin's map
        inside = False
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                inside = line.rstrip().endswith("sampler.bin")
            elif inside and line.startswith("FilePmdMapped:"):
                huge += int(head[1]) * 1024
    m, c = statistics.median(runs["mapped"]), statistics.median(runs["copy"])
    pairs = statistics.median(a / b for a, b in zip(runs["mapped"], runs["copy"], strict=True))
    print(f"{path} {task}, one thread: mapped {m:,.0f} seeds/s, copy {c:,.0f} seeds/s (medians "
          f"of 12); mapped / copy {pairs:.3f} (median of pairs); sampler.bin in 2 MB pages: "
          f"{huge / 1e6:,.0f} of {mapped.nbytes / 1e6:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--context-len", type=int, default=1024)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--reference-seeds", type=int, default=16)
    parser.add_argument("--skip-tpch", action="store_true")
    parser.add_argument("--copy", action="store_true",
                        help="read the arrays into memory instead of mapping sampler.bin")
    parser.add_argument("--icl-share", type=float, default=0.25,
                        help="Also measure each task with this share of labelled examples (0: not).")
    parser.add_argument("--store", type=Path, default=None,
                        help="Measure this store's --task(s) instead of the bundled databases.")
    parser.add_argument("--task", action="append", default=[],
                        help="With --store: a task to measure (repeatable).")
    parser.add_argument("--interleave", action="store_true",
                        help="With --store and one --task: the mapped graph against a copy, "
                             "alternating in one process.")
    args = parser.parse_args()
    if args.task and args.store is None:
        parser.error("--task needs --store")
    if args.interleave:
        if args.store is None or len(args.task) != 1:
            parser.error("--interleave needs --store and one --task")
        interleave(args.store, args.task[0], args)
        return
    print(f"L={args.context_len}, width={args.width}, B={args.batch_size}; {os.cpu_count()} CPUs")
    cases = []
    if args.store is not None:
        graph = graph_of(args.store, args.copy)
        for task in args.task or list(graph.store.tasks):
            cases.append((f"{graph.name} {task}", graph, graph.task(task)))
    else:
        flights = graph_of(ensure_flights(), args.copy)
        cases.append(("nycflights13 flight_delayed", flights, flights.task("flight_delayed")))
    if not args.skip_tpch and args.store is None:
        path = ensure_tpch(args.scale)
        start = time.perf_counter()
        tpch = graph_of(path, args.copy)
        print(f"TPC-H sampler graph: {time.perf_counter() - start:.2f} s, {tpch.nbytes / 1e6:,.0f} MB "
              f"{'mapped' if tpch.mapped else 'copied'}")
        cases.append(("TPC-H lineitem rows", tpch, TaskView.for_rows(tpch, "lineitem")))
        cases.append(("TPC-H customer_spend_next_90d", tpch, tpch.task("customer_spend_next_90d")))
    print(f"{'seeds':<44} {'1 thread':>10} {'2 threads':>10} {'2/1':>6} {'reference':>10} "
          f"{'kernel/ref':>10} {'cells':>6} {'examples':>8}")
    for name, graph, view in cases:
        shares = [0.0] + ([args.icl_share] if args.icl_share > 0 and view.target is not None else [])
        for share in shares:
            r = measure(graph, view, args, share)
            ratio = r["1 thread"] / r["reference"] if r["reference"] == r["reference"] else float("nan")
            label = f"{name} + examples {share:.0%}" if share else name
            print(f"{label:<44} {r['1 thread']:>10,.0f} {r['2 threads']:>10,.0f} "
                  f"{r['2 threads'] / r['1 thread']:>6.2f} {r['reference']:>10,.1f} {ratio:>10,.0f} "
                  f"{r['mean cells']:>6,.0f} {r['mean examples']:>8,.1f}")


if __name__ == "__main__":
    main()
