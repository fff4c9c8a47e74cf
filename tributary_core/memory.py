"""Process memory: keeping a long training run's heap from growing, and reading RSS.

A training step allocates many tensors whose sizes change from step to step (a batch's
labelled targets, the cells of a context). glibc serves allocations below its *mmap threshold*
from the heap, and it raises that threshold on its own every time a large block is freed, up to
32 MiB; after that, multi-megabyte activations and gradients come from the heap, where blocks of
changing sizes leave holes that are never returned. RSS then climbs by megabytes a step for
hours. Fixing the threshold (64 KiB here) keeps large blocks in their own mappings, returned to
the system when freed, and turns off the dynamic raise; this is what
``MALLOC_MMAP_THRESHOLD_=65536`` does, set from inside the process so that no user needs to know
the variable. ``benchmarks/memory.py`` shows RSS over thousands of steps with and without it.

Set ``TRIBUTARY_MALLOC_TUNING=0`` to leave the allocator alone (e.g. to compare, or under
another allocator such as jemalloc loaded with ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator", "rss_bytes", "MMAP_THRESHOLD"]

#: Allocations of at least this many bytes get their own mapping (glibc ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD = 64 * 1024
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold for this process (once; later calls do nothing). Returns
    whether the allocator is tuned: False off glibc (macOS, musl), when
    ``TRIBUTARY_MALLOC_TUNING=0``, or when the user already set ``MALLOC_MMAP_THRESHOLD_``."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("TRIBUTARY_MALLOC_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _tuned


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; elsewhere the peak from
    ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
