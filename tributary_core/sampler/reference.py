"""A plain-Python sampler that follows the kernel's algorithm and random draws step by step.

It reads the store's own arrays (not the sampler graph's flattened copies), so comparing it
with the kernel checks both the traversal and the flattening. It is slow and exists for tests
and for the benchmark's ratio.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from tributary_core.registry import get_registry
from tributary_core.sampler.kernel import NO_TIME
from tributary_core.store import Store

__all__ = ["reference_context"]

_M64 = (1 << 64) - 1


class _Rng:
    def __init__(self, seed: int) -> None:
        self.state = int(seed) & _M64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n


def _key(cls: int, hops: int, rand: int, counter: int) -> int:
    return (cls << 62) | (min(hops, 1023) << 52) | ((rand >> 32) << 20) | (counter & 0xFFFFF)


def reference_context(store: Store, task: str, anchor_row: int, obs: int, seed: int, *,
                      context_len: int, width: int) -> dict[str, Any]:
    """One context: ``rows`` [(table, row, hops)], ``cells`` [(table, column or None for a
    derived target, local row, is_target)], ``parents`` [[local rows each row references]]."""
    registry = get_registry()
    tables = list(store.tables)
    fks = store.foreign_keys
    meta = store.tasks[task].meta
    anchor_table = meta["anchor_table"]
    target_column = meta["target_column"] if meta["target_is_anchor_column"] else None
    derived = not meta["target_is_anchor_column"]
    hidden = {tuple(ref.split(".", 1)) for ref in meta.get("hidden_columns") or ()}
    # foreign keys whose anchor-table column is hidden: their edges hide with their cells
    hidden_fk = {id(fk) for fk in fks if fk.child_table == anchor_table
                 and (anchor_table, fk.column) in hidden}
    columns = {t: [c for c, m in store.tables[t].columns.items()
                   if not registry.semantic_type(m["stype"]).is_ignored] for t in tables}

    def row_time(t: str, r: int) -> int:
        times = store.tables[t].time
        return int(times[r]) if times is not None else NO_TIME

    def hides(t: str, r: int, local: int) -> bool:
        """Whether row ``r`` of ``t`` (context row ``local``) has its hidden cells left out."""
        rt = row_time(t, r)
        return t == anchor_table and (local == 0 or rt == NO_TIME or rt >= obs)

    out_fks = {t: [fk for fk in fks if fk.child_table == t] for t in tables}
    in_fks = {t: [fk for fk in fks if fk.parent_table == t] for t in tables}
    rng = _Rng(seed)
    seen: set[tuple[str, int]] = {(anchor_table, anchor_row)}
    heap: list[tuple[int, Any]] = [(0, (anchor_table, anchor_row))]
    counter = 1
    rows: list[tuple[str, int, int]] = []
    cells: list[tuple[str, str | None, int, bool]] = []
    groups: dict[int, dict[str, Any]] = {}
    while heap and len(cells) < context_len and len(rows) < context_len:
        key, val = heapq.heappop(heap)
        hops = (key >> 52) & 1023
        if isinstance(val, int):  # a children group of visited row `val`
            g = groups[val]
            while True:
                idx = rng.below(g["total"])
                if idx not in g["chosen"]:
                    break
            g["chosen"].append(idx)
            if len(g["chosen"]) < g["limit"]:
                heapq.heappush(heap, (_key(1, hops, rng.next(), counter), val))
                counter += 1
            for fk, lo, cnt in g["slices"]:
                if idx < cnt:
                    node = (fk.child_table, int(fk.children[lo + idx]))
                    break
                idx -= cnt
            if node in seen:
                continue
            seen.add(node)
        else:
            node = val
        t, r = node
        local = len(rows)
        rows.append((t, r, hops))
        is_anchor = local == 0
        if is_anchor and derived:
            cells.append((t, None, local, True))
        elif is_anchor and target_column is not None:
            cells.append((t, target_column, local, True))
        hide = hides(t, r, local)
        for c in columns[t]:
            if len(cells) >= context_len:
                break
            if (is_anchor and c == target_column) or (hide and (t, c) in hidden):
                continue
            cells.append((t, c, local, False))
        for fk in out_fks[t]:
            if hide and id(fk) in hidden_fk:
                continue
            p = int(fk.parent[r])
            if p < 0:
                continue
            pt = row_time(fk.parent_table, p)
            if pt != NO_TIME and pt > obs:
                continue
            pnode = (fk.parent_table, p)
            if pnode not in seen:
                seen.add(pnode)
                heapq.heappush(heap, (_key(0, hops + 1, rng.next(), counter), pnode))
                counter += 1
        slices = []
        pre: list[int] = []  # children that must not be drawn: the anchor through a hidden key
        total = 0
        for fk in in_fks[t]:
            lo, hi = int(fk.indptr[r]), int(fk.indptr[r + 1])
            times = fk.child_time[lo:hi]
            if id(fk) in hidden_fk:
                # only the children whose hidden key cell shows: a known time before obs
                start = int(np.searchsorted(times, NO_TIME, side="right"))
                cnt = int(np.searchsorted(times, obs, side="left")) - start
                lo += start
                kids = [int(x) for x in fk.children[lo:lo + cnt]]
                if int(fk.parent[anchor_row]) == r and anchor_row in kids:
                    pre.append(total + kids.index(anchor_row))
            else:
                cnt = int(np.searchsorted(times, obs, side="right"))
            slices.append((fk, lo, cnt))
            total += cnt
        limit = min(total - len(pre), width) + len(pre)
        if limit > len(pre):
            groups[local] = {"total": total, "limit": limit, "chosen": pre, "slices": slices}
            heapq.heappush(heap, (_key(1, hops + 1, rng.next(), counter), local))
            counter += 1
    index = {(t, r): i for i, (t, r, _h) in enumerate(rows)}
    parents = []
    for local, (t, r, _h) in enumerate(rows):
        mine = []
        hide = hides(t, r, local)
        for fk in out_fks[t]:
            if hide and id(fk) in hidden_fk:
                continue
            p = int(fk.parent[r])
            if p >= 0 and (fk.parent_table, p) in index:
                mine.append(index[(fk.parent_table, p)])
        parents.append(mine)
    return {"rows": rows, "cells": cells, "parents": parents}
