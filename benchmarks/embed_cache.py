"""The embedding cache at scale: lookups per second at millions of cached strings.

    python benchmarks/embed_cache.py [--strings 10000000] [--lookups 1000000] [--dim 4]

Writes ``--strings`` entries (keys of distinct texts, random vectors of width ``--dim``; the
width only sets the segments' size) in blocks of 256 (an embedder batch), as four writers would,
into a fresh cache under /tmp. Then times:

- the first lookup, which folds every entry into ``index.tix`` (a one-time cost);
- ``--lookups`` lookups of cached keys (random, with their vectors read and checked) and of
  keys not in the cache, through the index: medians of 3 lookup calls;
- 1,000 cached keys (what preprocessing one more database asks), through the index;
- the same through the scan the cache used before the index (``_scan`` over every block), on
  the same keys, once.

Peak RSS is printed too (the slots are memory-mapped, not read).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tributary_core.embed_cache import EmbeddingCache  # noqa: E402
from tributary_core.embedder import EmbedderIdentity  # noqa: E402


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """Keys as blake2b-128 gives them: uniform 128-bit values (hashing 10 M texts in Python
    would take the benchmark's time, not the cache's)."""
    return rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, size=(n, 2), dtype=np.uint64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strings", type=int, default=10_000_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--root", type=Path, default=Path("/tmp/tributary-bench-cache"))
    parser.add_argument("--skip-scan", action="store_true")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    ident = EmbedderIdentity(backend="bench", model="random", dimension=args.dim,
                             reduction="ortho-v1")
    rng = np.random.default_rng(0)
    keys = random_keys(rng, args.strings)
    start = time.perf_counter()
    block = 256  # an embedder batch: what one append writes
    writers = [EmbeddingCache(args.root, ident) for _ in range(4)]
    for i, a in enumerate(range(0, args.strings, block)):
        k = keys[a : a + block]
        writers[i % 4].append(k, rng.normal(size=(len(k), args.dim)).astype(np.float32) + 0.5)
    for w in writers:
        w.close()
    print(f"wrote {args.strings:,} entries in {time.perf_counter() - start:.1f} s "
          f"({sum(f.stat().st_size for f in writers[0].dir.glob('*.seg')) / 1e6:,.0f} MB)")
    cache = EmbeddingCache(args.root, ident)
    hits = keys[rng.integers(0, args.strings, args.lookups)]
    misses = random_keys(rng, args.lookups)
    start = time.perf_counter()
    found, _ = cache.lookup(hits[:1])
    fold = time.perf_counter() - start
    size = (cache.dir / "index.tix").stat().st_size
    print(f"first lookup (folds {args.strings:,} entries into index.tix, {size / 1e6:,.0f} MB): "
          f"{fold:.1f} s")
    for label, query in (("cached keys", hits), ("keys not cached", misses)):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            found, vectors = EmbeddingCache(args.root, ident).lookup(query)
            times.append(time.perf_counter() - t)
        rate = len(query) / statistics.median(times)
        print(f"index, {len(query):,} {label}: {statistics.median(times):.2f} s "
              f"({rate / 1e6:.2f} M lookups/s; found {found.mean():.0%})")
    few = hits[:1000]
    t = time.perf_counter()
    found, _ = EmbeddingCache(args.root, ident).lookup(few)
    print(f"index, 1,000 cached keys (a database's new strings): {(time.perf_counter() - t) * 1000:.0f} ms")
    if not args.skip_scan:
        t = time.perf_counter()
        cache._scan(few, None)
        print(f"scan, the same 1,000 keys: {(time.perf_counter() - t) * 1000:.0f} ms")
        t = time.perf_counter()
        found, _ = cache._scan(hits, None)
        scan = time.perf_counter() - t
        print(f"scan of every block (the cache before the index), {len(hits):,} cached keys: "
              f"{scan:.2f} s ({len(hits) / scan / 1e6:.2f} M lookups/s; found {found.mean():.0%})")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
