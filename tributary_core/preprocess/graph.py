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


@numba.njit(cache=True, nogil=True)
def build_csr(parent: np.ndarray, order: np.ndarray, child_time: np.ndarray, n_parent: int):
    """Counting sort of child rows by parent, stable in ``order`` (child rows by time).

    Args:
        parent: int32 (n_child,), the parent row of each child row, -1 for none.
        order: int64 (n_child,), a permutation of child rows in time order.
        child_time: int64 (n_child,), each child row's time.
        n_parent: rows in the parent table.

    Returns:
        ``(indptr int64 (n_parent + 1,), children int32 (E,), times int64 (E,))`` where E is the
        number of children with a parent.
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
    for k in range(order.shape[0]):
        c = order[k]
        p = parent[c]
        if p >= 0:
            j = fill[p]
            children[j] = c
            times[j] = child_time[c]
            fill[p] = j + 1
    return indptr, children, times


def time_order(time: np.ndarray | None, n: int) -> np.ndarray:
    """Row numbers sorted by time (stable); identity for untimed or already sorted tables."""
    if time is None or n == 0 or bool(np.all(time[1:] >= time[:-1])):
        return np.arange(n, dtype=np.int64)
    return np.argsort(time, kind="stable").astype(np.int64, copy=False)
