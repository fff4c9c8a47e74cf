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
_SHORT = 64


def build_csr(parent: np.ndarray, child_time: np.ndarray, n_parent: int,
              n_threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counting sort of child rows by parent, then each parent's children sorted by time.

    Args:
        parent: int32 (n_child,), the parent row of each child row, -1 for none.
        child_time: int64 (n_child,), each child row's time (``NO_TIME`` for none).
        n_parent: rows in the parent table.
        n_threads: threads to place and sort with. The result does not depend on it.

    Returns:
        ``(indptr int64 (n_parent + 1,), children int32 (E,), times int64 (E,))`` where E is the
        number of children with a parent; within a parent, children are ordered by time and
        ties by row number.

    Each thread owns a range of parents holding about E / n_threads edges: it scans every
    child row in order (reads of ``parent`` and ``child_time`` are sequential), places those of
    its parents, then sorts its parents' slices. No thread writes another's slice, and no
    per-thread copy of the counts is needed. The arrays are allocated by numpy, which advises the
    kernel to back large arrays with huge pages: first touching pages that Numba allocated
    cost about half the build (TPC-H SF1, lineitem -> orders).
    """
    indptr = csr_offsets(parent, n_parent)
    n_edges = int(indptr[n_parent])
    children = np.empty(n_edges, dtype=np.int32)
    times = np.empty(n_edges, dtype=np.int64)
    csr_fill(parent, child_time, indptr, children, times, n_threads)
    return indptr, children, times


def csr_offsets(parent: np.ndarray, n_parent: int) -> np.ndarray:
    """The CSR's ``indptr`` (int64, ``n_parent + 1``): where each parent's children start."""
    indptr = np.zeros(n_parent + 1, dtype=np.int64)
    _count(parent, indptr)
    return indptr


def csr_fill(parent: np.ndarray, child_time: np.ndarray, indptr: np.ndarray,
             children: np.ndarray, times: np.ndarray, n_threads: int = 1) -> None:
    """Fill ``children`` (int32) and ``times`` (int64), each ``indptr[-1]`` long and possibly
    mapped store sections, as :func:`build_csr` returns them."""
    n_parent = len(indptr) - 1
    n_edges = int(indptr[n_parent])
    if len(children) != n_edges or len(times) != n_edges:
        raise ValueError(f"children and times must hold {n_edges} edges")
    n_threads = max(1, int(n_threads))
    bounds = np.searchsorted(indptr, np.arange(n_threads + 1, dtype=np.int64) * n_edges // n_threads)
    bounds[0], bounds[n_threads] = 0, n_parent
    fill = indptr[:-1].copy()  # each parent's write cursor
    _fill(parent, child_time, indptr, fill, children, times, bounds)


@numba.njit(cache=True, nogil=True)
def _count(parent, indptr):
    """``indptr[p + 1]`` = children of parent p, then the running sum: the CSR's offsets."""
    for i in range(parent.shape[0]):
        p = parent[i]
        if p >= 0:
            indptr[p + 1] += 1
    for p in range(indptr.shape[0] - 1):
        indptr[p + 1] += indptr[p]


@numba.njit(cache=True, nogil=True, parallel=True)
def _fill(parent, child_time, indptr, fill, children, times, bounds):
    """One thread a parent range ``bounds[k]:bounds[k + 1]``: place its children, sort them."""
    for k in numba.prange(bounds.shape[0] - 1):
        _place(parent, child_time, fill, children, times, bounds[k], bounds[k + 1])
        _sort_slices(indptr, children, times, bounds[k], bounds[k + 1])


@numba.njit(cache=True, nogil=True)
def _place(parent, child_time, fill, children, times, first, stop):
    """Place, in row order, every child whose parent is in ``[first, stop)``."""
    for c in range(parent.shape[0]):
        p = parent[c]
        if p >= first and p < stop:
            j = fill[p]
            children[j] = c
            times[j] = child_time[c]
            fill[p] = j + 1


@numba.njit(cache=True, nogil=True)
def _sort_slices(indptr, children, times, first, stop):
    """Sort the slices of parents ``[first, stop)`` by time, stably (rows are ascending).

    Works on slices that start at 0, so the compiled loops carry no negative-index checks.
    """
    for p in range(first, stop):
        lo, hi = indptr[p], indptr[p + 1]
        n = hi - lo
        if n < 2:
            continue
        ts = times[lo:hi]
        cs = children[lo:hi]
        if n <= _SHORT:  # insertion sort; on slices already in order, one comparison a child
            for j in range(1, n):
                t = ts[j]
                if t >= ts[j - 1]:
                    continue
                c = cs[j]
                k = j
                while k > 0 and ts[k - 1] > t:
                    ts[k] = ts[k - 1]
                    cs[k] = cs[k - 1]
                    k -= 1
                ts[k] = t
                cs[k] = c
            continue
        ordered = True
        for j in range(1, n):
            if ts[j] < ts[j - 1]:
                ordered = False
                break
        if ordered:
            continue
        perm = np.argsort(ts, kind="mergesort")  # stable: ties keep row order
        seg_t = ts[perm]
        seg_c = cs[perm]
        ts[:] = seg_t
        cs[:] = seg_c
