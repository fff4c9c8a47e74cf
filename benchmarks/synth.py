"""Synthetic database generation speed (issue 17): how long a pre-training corpus takes.

    python benchmarks/synth.py [--count 100] [--seed 0] [--out DIR] [--check K]

Writes COUNT databases with ``generate_corpus`` (into a temporary folder unless --out) and
prints the median and slowest seconds per database (drawing, the task checks in DuckDB and the
parquet writes, in this one process), the total time and rows, and how the schemas spread
(tables, tasks, themes). ``--check K`` also runs ``metadata validate --raw`` and
``metadata check-leakage`` on the first K databases and says how many pass (slower: the
leakage check reads every visible column once per task).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the corpus here")
    parser.add_argument("--check", type=int, default=0, metavar="K",
                        help="validate and leakage-check the first K databases")
    args = parser.parse_args(argv)
    from tributary_core.datasets.synth import generate_corpus

    seconds: list[float] = []
    manifests: list[dict[str, Any]] = []

    def progress(path: Path, manifest: dict[str, Any] | None, took: float) -> None:
        if manifest is not None:
            seconds.append(took)
            manifests.append(manifest)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "corpus"
        import tributary_core.sql  # noqa: F401 - DuckDB's import is not the first database's cost

        start = time.perf_counter()
        paths = generate_corpus(args.count, args.seed, out, force=args.out is not None,
                                progress=progress)
        total = time.perf_counter() - start
        rows = [sum(m["rows"].values()) for m in manifests]
        tables = [len(m["rows"]) for m in manifests]
        tasks = [len(m["tasks"]) for m in manifests]
        print(f"{len(seconds)} databases in {total:.1f} s: median {statistics.median(seconds):.3f} s "
              f"per database, slowest {max(seconds):.3f} s")
        print(f"rows: {sum(rows):,} in all, median {statistics.median(rows):,.0f} per database "
              f"(min {min(rows):,}, max {max(rows):,})")
        print(f"tables per database: {min(tables)}-{max(tables)} (median "
              f"{statistics.median(tables):g}); tasks: {min(tasks)}-{max(tasks)} "
              f"({sum(tasks)} in all)")
        themes = collections.Counter(m["theme"] for m in manifests)
        print("themes: " + ", ".join(f"{t} {n}" for t, n in sorted(themes.items())))
        if args.check:
            _check(paths[: args.check])


def _check(paths: list[Path]) -> None:
    from tributary_core.leakage import check_leakage
    from tributary_core.metadata import validate_metadata

    start, bad = time.perf_counter(), 0
    for path in paths:
        report = validate_metadata(path / "metadata.json", raw_dir=path)
        findings = check_leakage(path / "metadata.json", path) if report.ok else []
        if not report.ok or report.warnings or findings:
            bad += 1
            problems = [str(p) for p in report.problems] + [f.message for f in findings]
            print(f"  {path.name}: {problems[:3]}", file=sys.stderr)
    print(f"validate + check-leakage: {len(paths) - bad} of {len(paths)} pass "
          f"({(time.perf_counter() - start) / len(paths):.2f} s per database)")


if __name__ == "__main__":
    main()
