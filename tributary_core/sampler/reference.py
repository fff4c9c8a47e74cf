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


_EXAMPLE_STREAM = 0xA0761D6478BD642F
_SIBLING_PROBES = 64
_NO_CUTOFF = (1 << 63) - 1


def reference_context(store: Store, task: str, anchor_row: int, obs: int, seed: int, *,
                      context_len: int, width: int, icl_share: float = 0.0,
                      train: np.ndarray | None = None) -> dict[str, Any]:
    """One context: ``rows`` [(table, row, hops)] (hops -1: a labelled example's row),
    ``cells`` [(table, column or None for a derived target, local row, is_target, is_label)],
    ``parents`` [[local rows each row references]] and ``labels`` [(local row, seed whose
    label the row's label cell shows)].

    With ``icl_share`` > 0 and ``train`` (bool per seed of the task: its training split), the
    walk keeps ``1 - icl_share`` of the cells and labelled examples fill the rest."""
    registry = get_registry()
    stored = store.tasks[task]
    examples = _Examples(stored, train) if icl_share > 0 and train is not None else None
    walk_cells = context_len
    if examples is not None and examples.any:
        walk_cells = context_len - min(context_len - 1, max(0, round(context_len * icl_share)))
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
    while heap and len(cells) < walk_cells and len(rows) < context_len:
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
            cells.append((t, None, local, True, False))
        elif is_anchor and target_column is not None:
            cells.append((t, target_column, local, True, False))
        hide = hides(t, r, local)
        for c in columns[t]:
            if len(cells) >= walk_cells:
                break
            if (is_anchor and c == target_column) or (hide and (t, c) in hidden):
                continue
            cells.append((t, c, local, False, False))
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
    labels: list[tuple[int, int]] = []
    if examples is not None and examples.any and len(cells) < context_len and len(rows) < context_len:
        _add_examples(store, examples, meta, anchor_row, obs, seed, context_len, rows, cells, labels,
                      columns[anchor_table], hidden, hidden_fk, row_time)
    index = {(t, r): i for i, (t, r, _h) in enumerate(rows)}
    parents = []
    for local, (t, r, h) in enumerate(rows):
        mine = []
        hide = hides(t, r, local) or (t == anchor_table and h == -1)
        for fk in out_fks[t]:
            if hide and id(fk) in hidden_fk:
                continue
            p = int(fk.parent[r])
            if p >= 0 and (fk.parent_table, p) in index:
                mine.append(index[(fk.parent_table, p)])
        parents.append(mine)
    return {"rows": rows, "cells": cells, "parents": parents, "labels": labels}


class _Examples:
    """A task's labelled examples, straight from the task file: the training split's seeds
    with a valid label and an observation time, and when each label is known."""

    def __init__(self, stored: Any, train: np.ndarray) -> None:
        horizon = int(stored.meta.get("horizon_us") or 0)
        anchor = np.asarray(stored.anchor_row, dtype=np.int64)
        obs = np.asarray(stored.observation_time, dtype=np.int64)
        valid = np.asarray(stored.target_valid, dtype=bool)
        self.seeds = [i for i in range(len(anchor)) if train[i] and valid[i] and obs[i] != NO_TIME]
        self.anchor = {i: int(anchor[i]) for i in self.seeds}
        self.known = {i: min(int(obs[i]) + horizon, _NO_CUTOFF) for i in self.seeds}
        self.by_time = sorted(self.seeds, key=lambda i: (self.known[i], i))
        self.any = bool(self.seeds)

    def latest(self, row: int, t: int) -> int:
        """The seed of ``row`` whose label is the latest known at ``t``, or -1."""
        mine = [i for i in self.seeds if self.anchor[i] == row and self.known[i] <= t]
        return max(mine, key=lambda i: (self.known[i], i)) if mine else -1


def _add_examples(store: Store, ex: _Examples, meta: dict[str, Any], anchor_row: int, obs: int,
                  seed: int, L: int, rows: list, cells: list, labels: list, anchor_columns: list[str],
                  hidden: set, hidden_fk: set, row_time: Any) -> None:
    """The kernel's three tiers of labelled examples (see ``kernel._examples``)."""
    anchor_table = meta["anchor_table"]
    target = meta["target_column"] if meta["target_is_anchor_column"] else None
    visited = {(t, r) for t, r, _h in rows}

    def label(local: int, e: int) -> None:
        cells.append((anchor_table, target, local, False, True))
        labels.append((local, e))

    def example_row(r: int, e: int) -> None:
        local = len(rows)
        rows.append((anchor_table, r, -1))
        visited.add((anchor_table, r))
        label(local, e)
        for c in anchor_columns:
            if len(cells) >= L:
                break
            if c == target or (anchor_table, c) in hidden:
                continue
            cells.append((anchor_table, c, local, False, False))

    for i in range(1, len(rows)):
        if len(cells) >= L:
            return
        t, r, _h = rows[i]
        if t != anchor_table:
            continue
        if target is not None:
            rt = row_time(t, r)
            if not ((rt == NO_TIME or rt >= obs) and (t, target) in hidden):
                continue
        e = ex.latest(r, obs)
        if e >= 0:
            label(i, e)
    keys = []  # per foreign key of the anchor row: its siblings' range, latest last
    for fk in store.foreign_keys:
        if fk.child_table != anchor_table or id(fk) in hidden_fk:
            continue
        p = int(fk.parent[anchor_row])
        if p < 0:
            continue
        pt = row_time(fk.parent_table, p)
        if pt != NO_TIME and pt > obs:
            continue
        lo, hi = int(fk.indptr[p]), int(fk.indptr[p + 1])
        keys.append((fk, lo, lo + int(np.searchsorted(fk.child_time[lo:hi], obs, side="right"))))
    for probe in range(_SIBLING_PROBES):  # the keys take turns, latest sibling first
        live = False
        for fk, lo, end in keys:
            j = end - 1 - probe
            if j < lo:
                continue
            live = True
            if len(cells) >= L or len(rows) >= L:
                return
            r = int(fk.children[j])
            if r == anchor_row or (anchor_table, r) in visited:
                continue
            e = ex.latest(r, obs)
            if e >= 0:
                example_row(r, e)
        if not live:
            break
    n_known = sum(1 for i in ex.by_time if ex.known[i] <= obs)
    if n_known == 0:
        return
    rng = _Rng(seed ^ _EXAMPLE_STREAM)
    tries = 2 * (L - len(cells)) + 8
    while tries > 0 and len(cells) < L and len(rows) < L:
        tries -= 1
        r = ex.anchor[ex.by_time[rng.below(n_known)]]
        rt = row_time(anchor_table, r)
        if r == anchor_row or (anchor_table, r) in visited or (rt != NO_TIME and rt > obs):
            continue
        example_row(r, ex.latest(r, obs))
