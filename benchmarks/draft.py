"""Agreement of the offline metadata draft with the committed, hand-checked metadata.

    python benchmarks/draft.py [--db nycflights13 --db lahman]

For each database (fetched into data/raw if missing): ``tributary metadata draft`` on its parquet
files, compared with data/metadata/<db>.json: semantic types (share of columns), primary keys
and temporal columns (share of tables, "none" counting as a value), foreign keys (precision and
recall of the (table.column -> table.key) edges). Prints a Markdown table and the disagreements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def agreement(draft: dict, truth: dict) -> dict:
    cols = same_stype = 0
    keys = temporal = 0
    mistakes: list[str] = []
    fk_draft, fk_true = set(), set()
    for tname, t in truth["tables"].items():
        d = draft["tables"].get(tname, {"columns": {}})
        if d.get("primary_key") == t.get("primary_key"):
            keys += 1
        else:
            mistakes.append(f"{tname}: primary key {d.get('primary_key')} (true {t.get('primary_key')})")
        if d.get("temporal_column") == t.get("temporal_column"):
            temporal += 1
        else:
            mistakes.append(f"{tname}: temporal column {d.get('temporal_column')} "
                            f"(true {t.get('temporal_column')})")
        for cname, c in t["columns"].items():
            dc = d["columns"].get(cname, {})
            cols += 1
            if dc.get("stype") == c["stype"]:
                same_stype += 1
            else:
                mistakes.append(f"{tname}.{cname}: {dc.get('stype')} (true {c['stype']})")
            if c.get("foreign_key"):
                fk_true.add((f"{tname}.{cname}", c["foreign_key"]))
            if dc.get("foreign_key"):
                fk_draft.add((f"{tname}.{cname}", dc["foreign_key"]))
    hit = len(fk_draft & fk_true)
    mistakes += [f"extra foreign key {a} -> {b}" for a, b in sorted(fk_draft - fk_true)]
    mistakes += [f"missed foreign key {a} -> {b}" for a, b in sorted(fk_true - fk_draft)]
    n_tables = len(truth["tables"])
    return {"stypes": same_stype / cols, "columns": cols, "primary_keys": keys / n_tables,
            "temporal": temporal / n_tables, "tables": n_tables,
            "fk_precision": hit / len(fk_draft) if fk_draft else 1.0,
            "fk_recall": hit / len(fk_true) if fk_true else 1.0, "fk_true": len(fk_true),
            "mistakes": mistakes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", default=None,
                        help="nycflights13, lahman or tpch (repeatable) [default: the first two]")
    args = parser.parse_args()
    from tributary_core.datasets import fetch_dataset
    from tributary_core.draft import draft_metadata

    rows = []
    for db in args.db or ["nycflights13", "lahman"]:
        raw = ROOT / "data" / "raw" / db
        if not (raw / "_manifest.json").exists():
            fetch_dataset(db, raw)
        start = time.perf_counter()
        draft = draft_metadata(raw, name=db)
        seconds = time.perf_counter() - start
        truth = json.loads((ROOT / "data" / "metadata" / f"{db}.json").read_text())
        a = agreement(draft, truth)
        rows.append((db, a, seconds))
        print(f"\n{db}: {len(a['mistakes'])} disagreements", file=sys.stderr)
        for m in a["mistakes"]:
            print(f"  {m}", file=sys.stderr)
    print("| database | stypes | primary keys | foreign keys: precision / recall | temporal columns "
          "| draft time |")
    print("|---|---:|---:|---:|---:|---:|")
    for db, a, seconds in rows:
        print(f"| {db} | {a['stypes']:.0%} of {a['columns']} columns | {a['primary_keys']:.0%} of "
              f"{a['tables']} tables | {a['fk_precision']:.0%} / {a['fk_recall']:.0%} of {a['fk_true']} | "
              f"{a['temporal']:.0%} of {a['tables']} tables | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
