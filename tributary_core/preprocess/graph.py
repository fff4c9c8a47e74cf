"""The foreign-key graph: for every FK column, child -> parent and a CSR parent -> children.

Children of one parent are ordered by their row's time (untimed rows first, then oldest
first, ties by row number), and ``child_time`` holds each entry's time beside ``children`` so the
sampler can find "children at or before t" by binary search in a parent's slice.
"""

from __future__ import annotations

import numba
import numpy as np

#: Time of a row that has none (a table without a temporal column, or a null time): it sorts
#: first and passes every cut-off.
NO_TIME = np.iinfo(np.int64).min


#: Segments up to this long are sorted by insertion sort; longer ones by a stable merge sort.
_SHORT = 32


@numba.njit(cache=True, nogil=True)
def build_csr(parent: np.ndarray, child_time: np.ndarray, n_parent: int):
    """Counting sort of child rows by parent, then each parent's children sorted by time.

    Args:
        parent: int32 (n_child,), the parent row of each child row, -1 for none.
        child_time: int64 (n_child,), each child row's time (``NO_TIME`` for none).
        n_parent: rows in the parent table.

    Returns:
        ``(indptr int64 (n_parent + 1,), children int32 (E,), times int64 (E,))`` where E is the
        number of children with a parent; within a parent, children are ordered by time and
        ties by row number.

    Children are placed in row order (reads of ``parent`` and ``child_time`` are sequential),
    and a parent's slice is sorted only if it is not already in time order.
    """
    counts = np.zeros(n_parent + 1, dtype=np.int64)
    for i in range(parent.shape[0]):
        p = parent[i]
        if p >= 0:
            counts[p + 1] += 1
    for p in range(n_parent):
        counts[p + 1] += counts[p]
    indptr = counts.copy()
    n_edges = indptr[n_parent]
    children = np.empty(n_edges, dtype=np.int32)
    times = np.empty(n_edges, dtype=np.int64)
    fill = counts  # reused as the write cursor of each parent
    for c in range(parent.shape[0]):
        p = parent[c]
        if p >= 0:
            j = fill[p]
            children[j] = c
            times[j] = child_time[c]
            fill[p] = j + 1
    for p in range(n_parent):
        lo, hi = indptr[p], indptr[p + 1]
        ordered = True
        for j in range(lo + 1, hi):
            if times[j] < times[j - 1]:
                ordered = False
                break
        if ordered:
            continue
        if hi - lo <= _SHORT:
            for j in range(lo + 1, hi):  # stable insertion sort on (time), rows already ascending
                t, c = times[j], children[j]
                k = j - 1
                while k >= lo and times[k] > t:
                    times[k + 1] = times[k]
                    children[k + 1] = children[k]
                    k -= 1
                times[k + 1] = t
                children[k + 1] = c
        else:
            perm = np.argsort(times[lo:hi], kind="mergesort")  # stable: ties keep row order
            seg_t = times[lo:hi][perm]
            seg_c = children[lo:hi][perm]
            times[lo:hi] = seg_t
            children[lo:hi] = seg_c
    return indptr, children, times
