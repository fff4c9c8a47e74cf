"""The binary file format of every ``*.bin`` file in a store.

A file is a fixed 32-byte preamble, a JSON header, and 64-byte-aligned sections of raw
little-endian arrays, so any section can be mapped with ``numpy.memmap`` without a copy::

    offset  size  field
    0       8     magic b"TRIBSTOR"
    8       4     format version (u32, little-endian)
    12      4     header length H in bytes (u32)
    16      4     CRC-32 of the header bytes (u32)
    20      12    zero
    32      H     header: UTF-8 JSON {"kind": ..., "sections": [...], "meta": {...}}
    ...           zero padding to a multiple of 64, then the sections

Each section in the header is ``{"name", "dtype", "shape", "offset", "nbytes", "crc32"}``:
``dtype`` is a numpy type string (``"<f4"``, ``"<u4"``, ``"<i8"``, ``"|u1"``) or ``"bits"``, a
bitmap of ``shape[0]`` booleans packed little-endian (bit i of byte i // 8, numpy's
``packbits(bitorder="little")``); ``crc32`` is the CRC-32 (zlib) of the section's bytes. The file
ends where its last section ends. See docs/format.md.

The store's ``metadata.json`` carries its own SHA-256 (:func:`dump_store_metadata`,
:func:`load_store_metadata`), so an edited metadata file is refused like a modified ``.bin``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import queue
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tributary_core.errors import TributaryError

__all__ = ["MAGIC", "FORMAT_VERSION", "METADATA", "StoreFileError", "write_file", "FileWriter",
           "StoreFile", "SectionWriter", "Syncer", "crc32_combine",
           "pack_bits", "unpack_bits", "dump_store_metadata", "load_store_metadata",
           "replace_problem", "drop_cached"]

MAGIC = b"TRIBSTOR"
#: 2: metadata.json carries its own checksum; task seeds are sorted (anchor row, time, label).
#: 3: timestamps are stored as int64 epoch µs (the sampler computes their features).
FORMAT_VERSION = 3
METADATA = "metadata.json"
_CHECKSUM_PREFIX = "sha256:"
_PLACEHOLDER = "0" * 64
PREAMBLE = struct.Struct("<8sIII12x")
ALIGN = 64
BITS = "bits"
_CRC_BLOCK = 1 << 24
#: Files from this size on are mapped with transparent huge pages asked for (see _advise_huge).
_HUGE_FROM = 4 << 20


def _advise_huge(m: mmap.mmap) -> None:
    """Ask the kernel for transparent huge pages on map ``m`` (``MADV_HUGEPAGE``, Linux).

    The sampler reads a mapped ``sampler.bin`` at random, a few cells per row across hundreds of
    MB: with 4 KB pages nearly every read is a TLB miss, which cost TPC-H SF1's sampling about
    a fifth of its speed against an in-memory copy (numpy asks for huge pages for its own large
    arrays). On a map so advised, pages not yet cached are read in as 2 MB folios and mapped
    as such; pages already cached in small folios stay small (hence :func:`drop_cached`).
    Where the advice is unknown or refused, nothing changes."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and len(m) >= _HUGE_FROM:
        with contextlib.suppress(OSError):
            m.madvise(advice)


def drop_cached(path: str | Path) -> None:
    """Drop the written, fsynced file ``path`` from the page cache (``POSIX_FADV_DONTNEED``),
    so that its first reader through a map reads it back in huge pages (:func:`_advise_huge`)
    rather than keeping the small ones the writes left. A no-op where unsupported."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class StoreFileError(TributaryError):
    """A store file that is missing, truncated, corrupted or of another format version."""


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Bool array -> little-endian bitmap (``ceil(n / 8)`` bytes)."""
    return np.packbits(np.ascontiguousarray(mask, dtype=np.bool_), bitorder="little")


def unpack_bits(bits: np.ndarray, n: int) -> np.ndarray:
    """Bitmap of ``n`` booleans -> bool array."""
    return np.unpackbits(np.asarray(bits), count=n, bitorder="little").view(np.bool_)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _crc(data: memoryview | bytes) -> int:
    crc = 0
    view = memoryview(data)
    if view.nbytes == 0:
        return crc
    view = view.cast("B")
    for start in range(0, len(view), _CRC_BLOCK):
        crc = zlib.crc32(view[start : start + _CRC_BLOCK], crc)
    return crc


def _as_section(array: np.ndarray) -> tuple[str, list[int], np.ndarray]:
    """``(dtype string, shape, contiguous payload)`` of an array to store."""
    if array.dtype == np.bool_:
        if array.ndim != 1:
            raise ValueError("only 1-d bool arrays are stored as bitmaps")
        return BITS, [int(array.shape[0])], pack_bits(array)
    payload = np.ascontiguousarray(array)
    if payload.dtype.byteorder == ">" or (payload.dtype.byteorder == "=" and not _LITTLE):
        payload = payload.astype(payload.dtype.newbyteorder("<"))
    if payload.dtype.hasobject:
        raise ValueError(f"cannot store an object array ({payload.dtype})")
    return payload.dtype.str, [int(s) for s in payload.shape], payload


_LITTLE = np.little_endian


def write_file(path: str | Path, kind: str, sections: Mapping[str, np.ndarray],
               meta: Mapping[str, Any] | None = None, *,
               syncer: Syncer | None = None) -> dict[str, Any]:
    """Write ``sections`` (name -> array) to ``path``; returns ``{"bytes", "crc32"}`` of the file's
    header, which the store's metadata.json records per file.

    A :class:`FileWriter` with a 4096-byte reserve: every array is checked before the file is
    opened, so an unstorable array leaves ``path`` untouched. With a ``syncer`` the fsync runs
    on its thread (:class:`Syncer`)."""
    prepared = [(name, *_as_section(arr)) for name, arr in sections.items()]
    with FileWriter(path, kind, reserve=_WRITE_FILE_RESERVE, syncer=syncer) as writer:
        for name, dtype, shape, payload in prepared:
            writer._check_new(name)
            writer._add_section(name, dtype, shape, payload)
        return writer.close(meta)


_WRITE_FILE_RESERVE = 4096
#: Bytes moved at a time when the header outgrows its reserved space.
_MOVE_BLOCK = 1 << 24


#: Zeros written at a time where the file system cannot allocate space without writing it.
_ZEROS = 1 << 24


def reserve_bytes(fd: int, offset: int, nbytes: int) -> None:
    """Give the file ``fd`` real disk blocks for ``[offset, offset + nbytes)`` before it is
    mapped, so that a full disk is an OSError here rather than a bus error on a later write
    through the map: ``posix_fallocate``, or where the system or file system lacks it, zeros
    written over the range (bytes already there are overwritten: only for new space)."""
    if nbytes <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, nbytes)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    zeros = bytes(min(nbytes, _ZEROS))
    done = 0
    while done < nbytes:
        done += os.pwrite(fd, zeros[: min(len(zeros), nbytes - done)], offset + done)


#: Bytes a copy moves at a time where the kernel cannot copy (:func:`_copy_range`).
_COPY_BLOCK = 1 << 24


def _copy_range(path: str | Path, offset: int, nbytes: int, out_fd: int, out_offset: int) -> None:
    """Copy ``nbytes`` of file ``path`` from ``offset`` to ``out_fd`` at ``out_offset``:
    ``os.copy_file_range`` (in the kernel, page cache to page cache) where it works, else
    reads and writes; a source that ends early raises ValueError."""
    with open(path, "rb", buffering=0) as src:
        fd, done = src.fileno(), 0
        kernel = hasattr(os, "copy_file_range")
        while done < nbytes:
            n = None
            if kernel:
                try:
                    n = os.copy_file_range(fd, out_fd, nbytes - done, offset + done,
                                           out_offset + done)
                except OSError as exc:  # not across these file systems, or not at all
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                         errno.EPERM, errno.ETXTBSY):
                        raise
                    kernel = False
            if n is None:
                block = os.pread(fd, min(_COPY_BLOCK, nbytes - done), offset + done)
                n = len(block)
                view = memoryview(block)
                while view.nbytes:
                    view = view[os.pwrite(out_fd, view, out_offset + done + n - view.nbytes):]
            if n == 0:
                raise ValueError(f"{path}: ends before byte {offset + nbytes} (copying "
                                 f"{nbytes} bytes from {offset})")
            done += n


_CRC_POLY = 0xEDB88320  # CRC-32 (zlib's), bits reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected: bit 31 is x^0)."""
    m, p = 1 << 31, 0
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()  # x^(2^k) modulo the polynomial, k = 0..31


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc1`` (of A), ``crc2`` (of B) and ``len2`` (B's length in
    bytes), as zlib's ``crc32_combine`` (which Python's zlib does not offer): A's CRC is
    moved past B's ``8 * len2`` bits by multiplying it by x^(8 len2) modulo the polynomial,
    a few dozen multiplications whatever the lengths."""
    p, n, k = 1 << 31, len2, 3  # p = x^0; x^(8 len2) = product of x^(2^k) over len2's bits << 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


#: Bytes written to a file between two background flushes (:meth:`Syncer.flush`).
FLUSH_BYTES = 64 << 20


class Syncer:
    """Makes written store files durable on one background thread, while the caller goes on
    computing.

    A store's files are fsynced before it is published. Fsyncing each file as it closes made
    the writer wait for the disk at every file, and the kernel starts writing dirty pages back
    on its own only past a share of memory (10% by default: gigabytes), so nearly all of a
    store's bytes reached the disk inside those waits. With a syncer, a :class:`FileWriter`
    hands the thread a flush of every :data:`FLUSH_BYTES` it writes (``fdatasync``: the disk
    works while the next bytes are computed) and, on close, the final fsync and the close
    itself. :meth:`wait` returns once every file handed over is durable and closed, and raises
    the first error any of it met (an ``OSError`` naming the file): call it before publishing.

    Every operation on a handed-over file runs on the thread, in order, so a file is never
    closed while a flush of it is pending. Used as a context manager: leaving the block
    normally waits (and raises); leaving it with an exception closes what is left without
    syncing it (the files are being thrown away)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[str, Any, Path] | None] = queue.Queue()
        self._error: BaseException | None = None  # set by the thread only, read after join
        self._discard = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="tributary-fsync", daemon=True)
        self._thread.start()

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.wait()
        else:
            self._discard = True
            self._stop()

    def flush(self, file: Any, path: Path) -> None:
        """Start writing ``file``'s dirty pages to disk, in the background."""
        self._put(("flush", file, path))

    def close(self, file: Any, path: Path) -> None:
        """Fsync and close ``file`` in the background; the file belongs to the syncer from now
        on."""
        self._put(("close", file, path))

    def discard(self, file: Any, path: Path) -> None:
        """Close ``file`` in the background without syncing it (an aborted file)."""
        self._put(("discard", file, path))

    @property
    def stopped(self) -> bool:
        """Whether :meth:`wait` (or leaving the block) has stopped the thread."""
        return self._stopped

    def _put(self, job: tuple[str, Any, Path]) -> None:
        if self._stopped:
            raise ValueError("the syncer has stopped: no file can be handed to it now")
        self._jobs.put(job)

    def wait(self) -> None:
        """Block until everything handed over is done; raise the first error met. The syncer
        takes no more files after it."""
        self._stop()
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        self._stopped = True
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            op, file, path = job
            try:
                if op == "flush":
                    if not self._discard and self._error is None and not file.closed:
                        _datasync(file.fileno())
                elif op == "close":
                    try:
                        if not self._discard and self._error is None:
                            os.fsync(file.fileno())
                    finally:
                        file.close()
                else:
                    file.close()
            except Exception as exc:  # kept for wait(), which raises it in the writer's thread
                if isinstance(exc, OSError) and not exc.filename:
                    exc = OSError(exc.errno, exc.strerror, str(path))
                if self._error is None:
                    self._error = exc


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


class FileWriter:
    """Write a store file one section at a time (bounded memory).

    Each :meth:`add` writes its section's bytes at once, so the caller may free the array; the
    sections start at ``_align(32 + reserve)``. :meth:`close` writes the header (offsets, CRCs)
    and the preamble at the front. A header longer than ``reserve`` is handled like
    :func:`write_file` does: the reserve grows to ``_align(len(header) + 1024)`` until the header
    fits, and the section bytes already written are moved forward (in 16 MiB blocks, from the end
    backwards). With ``reserve=4096`` the file is byte-identical to :func:`write_file`'s.

    Like :func:`write_file`, the file is written in place at ``path`` and fsynced on close (a
    store is built in a temporary folder and published whole); with a ``syncer``, the flushes
    and the final fsync and close run on its thread (:class:`Syncer`). :meth:`abort` closes
    and removes the partial file; used as a context manager, an exception inside the block aborts, a block
    left normally closes the file (without meta) unless :meth:`close` was already called.
    """

    def __init__(self, path: str | Path, kind: str, *, reserve: int = 65536,
                 syncer: Syncer | None = None) -> None:
        if reserve < 0:
            raise ValueError(f"reserve must be >= 0, not {reserve}")
        self.path = Path(path)
        self.kind = kind
        self._reserve = int(reserve)
        self._start = _align(PREAMBLE.size + self._reserve)
        self._offset = self._start  # where the next section goes
        self._entries: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._closed = False
        self._open_sections: set[str] = set()  # begun with begin_section, not yet finished
        self._syncer = syncer
        self._unflushed = 0  # bytes written since the syncer last flushed the file
        self._file = open(self.path, "w+b")  # noqa: SIM115 - closed by close() / abort()

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the store file writer is closed")

    def _syncing(self) -> bool:
        """Whether the file's flushes, fsync and close go to a syncer's thread (a syncer that
        has stopped takes none: the writer then does them itself)."""
        return self._syncer is not None and not self._syncer.stopped

    def _wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` written; past :data:`FLUSH_BYTES` the syncer starts writing them
        back (no syncer: nothing, the close fsyncs)."""
        if not self._syncing():
            return
        self._unflushed += nbytes
        if self._unflushed >= FLUSH_BYTES:
            self._file.flush()
            self._syncer.flush(self._file, self.path)
            self._unflushed = 0

    def add(self, name: str, array: np.ndarray) -> None:
        """Write section ``name`` now: a 1-d bool array as a bitmap, any other array as its
        little-endian C-order bytes (an empty array takes no bytes). A name already added, or an
        array that cannot be stored (object dtype, bool with more than one dimension), raises
        ValueError and writes nothing."""
        self._check_new(name)
        self._add_section(name, *_as_section(array))

    def add_copy(self, name: str, dtype: Any, shape: tuple[int, ...],
                 parts: Iterable[tuple[str | Path, int, int, int]]) -> None:
        """Write section ``name`` of ``dtype`` and ``shape`` as the concatenation of byte ranges
        of other files, ``parts`` of ``(path, offset, nbytes, crc32)``, each range's CRC-32
        known (e.g. whole sections of store files, whose headers hold theirs).

        The bytes are copied by the kernel (``os.copy_file_range``) where the system allows,
        never passing through this process, else read and written in 16 MiB blocks; the
        section's checksum is combined from the parts' (:func:`crc32_combine`), not computed
        over its bytes again. A part whose bytes differ from its CRC (a source damaged
        after it was written) thus gives a section that fails verification, not a silently
        wrong one. Parts that do not add up to the shape's bytes, or a source shorter than its
        range, raise ValueError and remove the file."""
        self._check_new(name)
        dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"cannot store an object array ({dt})")
        expected = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        crc, nbytes = 0, 0
        try:
            self._file.flush()  # the copies write through the descriptor, at explicit offsets
            for path, offset, size, part_crc in parts:
                _copy_range(path, offset, size, self._file.fileno(), self._offset + nbytes)
                crc = crc32_combine(crc, part_crc, size)
                nbytes += size
                self._wrote(size)
        except BaseException:
            self.abort()
            raise
        if nbytes != expected:
            self.abort()
            raise ValueError(f"{self.path}: section {name!r} of shape {tuple(shape)} needs "
                             f"{expected} bytes, its parts gave {nbytes}")
        self._entries.append({"name": name, "dtype": dt.str, "shape": [int(x) for x in shape],
                              "offset": self._offset, "nbytes": nbytes, "crc32": crc})
        self._names.add(name)
        self._offset = _align(self._offset + nbytes)

    def begin_section(self, name: str, dtype: Any, shape: tuple[int, ...]) -> SectionWriter:
        """Reserve section ``name`` of ``dtype`` and ``shape`` (a 1-d ``bool`` section is
        stored as a bitmap) and return a :class:`SectionWriter` that writes its rows in pieces,
        in order: a column encoded in row batches writes each batch's piece of every field, and
        no field is ever whole in memory. Sections added after this one go after its reserved
        bytes; :meth:`close` refuses a file with a section not written to its end."""
        entry, dt = self._enter_section(name, dtype, shape)
        return SectionWriter(self, entry, dt)

    def map_section(self, name: str, dtype: Any, shape: tuple[int, ...]) -> MappedSection:
        """Reserve section ``name`` of ``dtype`` and ``shape`` (not ``bool``) on disk and map
        it, so a kernel writes the section in place, in any order (a CSR's children land one by
        one in their parents' slices); the pages are the page cache's, not the process's own
        memory. The bytes are allocated before the map (a full disk is an OSError now, not a
        bus error on a later write). :meth:`MappedSection.finish` records the checksum; sections
        added after this one go after its bytes."""
        if np.dtype(dtype).hasobject or np.dtype(dtype) == np.bool_:
            raise ValueError(f"cannot map a section of {np.dtype(dtype)}")
        entry, dt = self._enter_section(name, dtype, shape)
        try:
            if entry["nbytes"]:
                self._file.flush()
                reserve_bytes(self._file.fileno(), entry["offset"], entry["nbytes"])
                array = np.asarray(np.memmap(self._file, dtype=dt, mode="r+",
                                             offset=entry["offset"], shape=tuple(shape)))
            else:
                array = np.zeros(shape, dtype=dt)
        except BaseException:
            self.abort()
            raise
        return MappedSection(self, entry, array)

    def _enter_section(self, name: str, dtype: Any,
                       shape: tuple[int, ...]) -> tuple[dict[str, Any], np.dtype]:
        """Enter section ``name`` of ``dtype`` and ``shape`` at the next offset, begun and not
        yet written (:meth:`close` refuses it until it is finished); returns its header entry
        and the dtype its bytes have (a 1-d ``bool`` section is a bitmap)."""
        self._check_new(name)
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"cannot store an object array ({dt})")
        if dt == np.bool_:
            if len(shape) != 1:
                raise ValueError("only 1-d bool arrays are stored as bitmaps")
            kind, nbytes = BITS, (int(shape[0]) + 7) // 8
        else:
            if dt.byteorder == ">" or (dt.byteorder == "=" and not _LITTLE):
                dt = dt.newbyteorder("<")
            kind, nbytes = dt.str, dt.itemsize * int(np.prod(shape, dtype=np.int64))
        entry = {"name": name, "dtype": kind, "shape": [int(x) for x in shape],
                 "offset": self._offset, "nbytes": nbytes, "crc32": 0}
        self._entries.append(entry)
        self._names.add(name)
        self._open_sections.add(name)
        self._offset = _align(self._offset + nbytes)
        return entry, dt

    def _check_new(self, name: str) -> None:
        self._check_open()
        if name in self._names:
            raise ValueError(f"{self.path}: section {name!r} was already added")

    def _add_section(self, name: str, dtype: str, shape: list[int], payload: np.ndarray) -> None:
        """Write a payload prepared by :func:`_as_section` (the name checked by the caller)."""
        nbytes = int(payload.nbytes)
        if nbytes:  # an empty section (no vocabulary) has nothing to write
            try:
                self._file.seek(self._offset)
                self._file.write(memoryview(payload).cast("B"))
                self._wrote(nbytes)
            except BaseException:
                self.abort()
                raise
        self._entries.append({"name": name, "dtype": dtype, "shape": shape,
                              "offset": self._offset, "nbytes": nbytes, "crc32": _crc(payload)})
        self._names.add(name)
        self._offset = _align(self._offset + nbytes)

    def close(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the header and preamble, fsync and close; returns ``{"bytes", "crc32"}`` (the
        file's size and its header's CRC-32) like :func:`write_file`. On failure the partial file
        is removed."""
        self._check_open()
        try:
            return self._finish(meta)
        except BaseException:
            self.abort()
            raise

    def _finish(self, meta: Mapping[str, Any] | None) -> dict[str, Any]:
        if self._open_sections:
            raise ValueError(f"{self.path}: section(s) {', '.join(sorted(self._open_sections))} "
                             "begun but not written to their end")
        f = self._file
        meta = dict(meta or {})
        # The header holds the offsets and the offsets depend on the header's length: grow the
        # reserved space until the header fits in it (as write_file always did).
        reserve = self._reserve
        while True:
            shift = _align(PREAMBLE.size + reserve) - self._start
            entries = [dict(e, offset=e["offset"] + shift) for e in self._entries]
            header = json.dumps({"kind": self.kind, "sections": entries, "meta": meta},
                                separators=(",", ":")).encode()
            if len(header) <= reserve:
                break
            reserve = _align(len(header) + 1024)
        if entries:
            old_end = self._entries[-1]["offset"] + self._entries[-1]["nbytes"]
            end = entries[-1]["offset"] + entries[-1]["nbytes"]
        else:
            old_end = end = PREAMBLE.size + len(header)
        if shift and entries:
            self._move(old_end, shift)
        header_crc = zlib.crc32(header)
        f.seek(0)
        f.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), header_crc))
        f.write(header)
        f.truncate(end)
        f.flush()
        if self._syncing():  # fsync and close on the syncer's thread
            self._syncer.close(f, self.path)  # type: ignore[union-attr]
        else:
            os.fsync(f.fileno())
            f.close()
        self._closed = True
        return {"bytes": end, "crc32": header_crc}

    def _move(self, old_end: int, shift: int) -> None:
        """Move the sections' bytes ``[start, old_end)`` forward by ``shift`` bytes, block by
        block from the end backwards (a block never overwrites bytes still to be moved), then
        zero what they leave behind up to the new start."""
        f = self._file
        f.truncate(old_end)  # trailing empty sections: the region ends at the last offset
        buf = bytearray(min(_MOVE_BLOCK, max(old_end - self._start, 1)))
        view = memoryview(buf)
        hi = old_end
        while hi > self._start:
            lo = max(self._start, hi - len(buf))
            chunk = view[: hi - lo]
            f.seek(lo)
            done = 0
            while done < len(chunk):
                n = f.readinto(chunk[done:])
                if not n:
                    raise OSError(f"{self.path}: short read while moving sections")
                done += n
            f.seek(lo + shift)
            f.write(chunk)
            hi = lo
        # What the sections left behind before the new start becomes zero padding again (past
        # the old end the file had no bytes: the moved blocks were written beyond it).
        f.seek(self._start)
        left = max(0, min(old_end, self._start + shift) - self._start)
        zeros = bytes(min(left, _MOVE_BLOCK))
        while left > 0:
            n = min(left, len(zeros))
            f.write(zeros[:n])
            left -= n

    def abort(self) -> None:
        """Close and remove the partial file (nothing once :meth:`close` has succeeded)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._syncing():  # a flush of it may be pending on the syncer's thread
                self._syncer.discard(self._file, self.path)  # type: ignore[union-attr]
            else:
                self._file.close()
        finally:
            self.path.unlink(missing_ok=True)


class SectionWriter:
    """One section of a :class:`FileWriter`, written in pieces (:meth:`FileWriter.begin_section`).

    :meth:`write` takes the next rows (any count; a bitmap section keeps the last few bits of a
    piece whose length is not a multiple of 8 until the next); :meth:`finish` checks that every
    row came and records the section's CRC-32. A failing write aborts the whole file."""

    def __init__(self, file: FileWriter, entry: dict[str, Any], dtype: np.dtype) -> None:
        self._file = file
        self._entry = entry
        self._dtype = dtype
        self._bits = entry["dtype"] == BITS
        self._written = 0  # bytes
        self._crc = 0
        self._pending = np.zeros(0, dtype=np.bool_)  # bits not yet making a whole byte

    def write(self, piece: np.ndarray) -> None:
        """Write the next rows of the section."""
        self._file._check_open()
        if self._bits:
            bits = np.ascontiguousarray(piece, dtype=np.bool_).reshape(-1)
            if len(self._pending):
                bits = np.concatenate([self._pending, bits])
            whole = len(bits) // 8 * 8
            self._pending = bits[whole:].copy()
            payload = pack_bits(bits[:whole])
        else:
            payload = np.ascontiguousarray(piece, dtype=self._dtype)
        self._put(payload)

    def _put(self, payload: np.ndarray) -> None:
        view = memoryview(payload).cast("B")
        if not view.nbytes:
            return
        if self._written + view.nbytes > self._entry["nbytes"]:
            self._file.abort()
            raise ValueError(f"{self._file.path}: section {self._entry['name']!r} of shape "
                             f"{tuple(self._entry['shape'])} holds {self._entry['nbytes']} "
                             f"bytes; its pieces give more")
        try:
            os.pwrite(self._file._file.fileno(), view, self._entry["offset"] + self._written)
        except BaseException:
            self._file.abort()
            raise
        self._crc = zlib.crc32(view, self._crc)
        self._written += view.nbytes
        self._file._wrote(view.nbytes)

    def finish(self) -> None:
        """Check that the section is whole and record its checksum."""
        self._file._check_open()
        if len(self._pending):
            self._put(pack_bits(self._pending))
            self._pending = self._pending[:0]
        if self._written != self._entry["nbytes"]:
            self._file.abort()
            raise ValueError(f"{self._file.path}: section {self._entry['name']!r} of shape "
                             f"{tuple(self._entry['shape'])} needs {self._entry['nbytes']} "
                             f"bytes, its pieces gave {self._written}")
        self._entry["crc32"] = self._crc
        self._file._open_sections.discard(self._entry["name"])


class MappedSection:
    """One section of a :class:`FileWriter` mapped for writing in place
    (:meth:`FileWriter.map_section`): fill :attr:`array`, then :meth:`finish`."""

    def __init__(self, file: FileWriter, entry: dict[str, Any], array: np.ndarray) -> None:
        self._file = file
        self._entry = entry
        #: The section's bytes on disk as a writable array of its dtype and shape.
        self.array = array

    def finish(self) -> None:
        """Record the section's checksum (read back through the map) and let the map go; the
        file's :meth:`FileWriter.close` fsyncs its pages with the rest."""
        self._file._check_open()
        self._entry["crc32"] = _crc(memoryview(np.ascontiguousarray(self.array)))
        self.array = np.zeros(0, dtype=self.array.dtype)
        self._file._wrote(self._entry["nbytes"])
        self._file._open_sections.discard(self._entry["name"])


class StoreFile:
    """A store file opened for reading: header checked, sections mapped on demand.

    ``verify()`` reads every section once and checks its CRC-32; opening checks the preamble,
    the header's CRC, the format version and that the file is as long as its sections say.
    """

    def __init__(self, path: str | Path, *, expect_kind: str | None = None) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                preamble = f.read(PREAMBLE.size)
                if len(preamble) < PREAMBLE.size:
                    raise self._error(f"truncated: {size} bytes, shorter than the preamble")
                magic, version, hlen, hcrc = PREAMBLE.unpack(preamble)
                if magic != MAGIC:
                    raise self._error("not a Tributary store file (bad magic)")
                if version != FORMAT_VERSION:
                    raise self._error(f"format version {version}; this Tributary reads version "
                                      f"{FORMAT_VERSION}: preprocess the database again")
                header = f.read(hlen)
        except FileNotFoundError:
            raise self._error("missing") from None
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror}") from None
        if len(header) < hlen:
            raise self._error(f"truncated: {size} bytes, the header alone needs {PREAMBLE.size + hlen}")
        if zlib.crc32(header) != hcrc:
            raise self._error("corrupted: header checksum mismatch")
        info = json.loads(header)
        if expect_kind is not None and info["kind"] != expect_kind:
            raise self._error(f"holds {info['kind']!r}, expected {expect_kind!r}")
        self.kind: str = info["kind"]
        self.meta: dict[str, Any] = info["meta"]
        self.header_crc = hcrc
        self.sections: dict[str, dict[str, Any]] = {s["name"]: s for s in info["sections"]}
        end = max((s["offset"] + s["nbytes"] for s in self.sections.values()),
                  default=PREAMBLE.size + hlen)
        if size != end:
            what = "truncated" if size < end else "has trailing bytes"
            raise self._error(f"{what}: {size} bytes, its sections end at {end}")
        self.size = size
        self._cache: dict[str, np.ndarray] = {}
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()

    def _error(self, message: str) -> StoreFileError:
        return StoreFileError(f"{self.path}: {message}")

    def __contains__(self, name: str) -> bool:
        return name in self.sections

    def __iter__(self) -> Iterator[str]:
        return iter(self.sections)

    def _mapped(self) -> mmap.mmap:
        """The whole file, memory-mapped read-only once: every section is a view of this one
        map, so an opened file holds one file descriptor however many sections are read (a map
        per section held one each, and a corpus of hundreds of stores ran out of them)."""
        with self._lock:
            if self._map is None:
                try:
                    with open(self.path, "rb") as f:
                        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except OSError as exc:
                    raise self._error(f"cannot be mapped: {exc.strerror or exc}") from None
                _advise_huge(self._map)
            return self._map

    def raw(self, name: str) -> np.ndarray:
        """Section ``name`` as a read-only view of the memory-mapped file (bitmaps as their
        packed bytes)."""
        if name not in self._cache:
            try:
                s = self.sections[name]
            except KeyError:
                raise self._error(f"has no section {name!r}") from None
            if s["dtype"] == BITS:
                dtype, shape = np.dtype(np.uint8), (s["nbytes"],)
            else:
                dtype, shape = np.dtype(s["dtype"]), tuple(s["shape"])
            if s["nbytes"] == 0:
                self._cache[name] = np.zeros(shape, dtype=dtype)
            else:
                count = s["nbytes"] // dtype.itemsize
                view = np.frombuffer(self._mapped(), dtype=dtype, count=count, offset=s["offset"])
                self._cache[name] = view.reshape(shape)
        return self._cache[name]

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Copy section ``name`` (bitmaps: their packed bytes) into ``out`` with plain reads,
        much faster than faulting in a memory map page by page for a one-off full copy."""
        s = self.sections[name]
        if out.nbytes == 0 and s["nbytes"] == 0:
            return
        buf = memoryview(out).cast("B")
        if buf.nbytes != s["nbytes"]:
            raise ValueError(f"{self.path}: section {name!r} has {s['nbytes']} bytes, "
                             f"the buffer {buf.nbytes}")
        with open(self.path, "rb", buffering=0) as f:
            f.seek(s["offset"])
            done = 0
            while done < buf.nbytes:
                n = f.readinto(buf[done:])
                if not n:
                    raise self._error(f"truncated inside section {name!r}")
                done += n

    def array(self, name: str) -> np.ndarray:
        """Section ``name``: a memory map, or for a bitmap its unpacked bool array (a copy)."""
        s = self.sections.get(name)
        if s is not None and s["dtype"] == BITS:
            return unpack_bits(self.raw(name), s["shape"][0])
        return self.raw(name)

    def verify(self) -> None:
        """Check every section's CRC-32, reading the whole file once.

        Large files are read through a map of their own with huge pages asked for (closed
        after the check, so no map is left open by it): the check is often a file's first read
        after preprocessing, and the pages it brings into the cache are the ones the sampler
        maps later (:func:`_advise_huge`). Smaller files are read with plain reads."""
        try:
            size = os.stat(self.path).st_size
        except OSError as exc:
            raise self._error(f"cannot be read: {exc.strerror or exc}") from None
        if size < self.size:
            raise self._error(f"truncated: {size} bytes, its sections end at {self.size}")
        if size >= _HUGE_FROM and hasattr(mmap, "MADV_HUGEPAGE"):
            self._verify_mapped()
            return
        buf = bytearray(_CRC_BLOCK)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            for name, s in sorted(self.sections.items(), key=lambda item: item[1]["offset"]):
                if not s["nbytes"]:
                    continue
                f.seek(s["offset"])
                crc, left = 0, s["nbytes"]
                while left:
                    n = f.readinto(view[: min(left, _CRC_BLOCK)])
                    if not n:
                        raise self._error(f"truncated inside section {name!r}")
                    crc = zlib.crc32(view[:n], crc)
                    left -= n
                if crc != s["crc32"]:
                    raise self._error(f"corrupted: checksum mismatch in section {name!r}")

    def _verify_mapped(self) -> None:
        try:
            with open(self.path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise self._error(f"cannot be mapped: {exc.strerror or exc}") from None
        try:
            _advise_huge(m)
            bad = None
            with memoryview(m) as view:
                for name, s in sorted(self.sections.items(), key=lambda item: item[1]["offset"]):
                    crc, start, end = 0, s["offset"], s["offset"] + s["nbytes"]
                    while start < end:
                        stop = min(end, start + _CRC_BLOCK)
                        with view[start:stop] as block:
                            crc = zlib.crc32(block, crc)
                        start = stop
                    if crc != s["crc32"]:
                        bad = name
                        break
        finally:
            m.close()
        if bad is not None:
            raise self._error(f"corrupted: checksum mismatch in section {bad!r}")


def dump_store_metadata(meta: Mapping[str, Any]) -> bytes:
    """``metadata.json``'s bytes: ``meta`` as indented JSON whose first key, ``checksum``, is
    ``"sha256:<hex>"``, the SHA-256 of these very bytes with the hex digits replaced by 64 zeros.
    Raises ValueError for a NaN or infinite number (not JSON)."""
    body = {"checksum": _CHECKSUM_PREFIX + _PLACEHOLDER}
    body.update((k, v) for k, v in meta.items() if k != "checksum")
    data = json.dumps(body, indent=1, allow_nan=False, default=_json_default).encode() + b"\n"
    digest = hashlib.sha256(data).hexdigest()
    return data.replace(_PLACEHOLDER.encode(), digest.encode(), 1)


def load_store_metadata(path: str | Path) -> dict[str, Any]:
    """Read and check a store's ``metadata.json`` (see :func:`dump_store_metadata`); refuses a
    missing checksum, another format version, or any edit, naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreFileError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise StoreFileError(f"{path}: not valid JSON ({exc}): the store was modified; "
                             "preprocess the database again") from None
    if not isinstance(meta, dict):
        raise StoreFileError(f"{path}: not a store's metadata (not a JSON object)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreFileError(f"{path}: format version {version}; this Tributary reads version "
                             f"{FORMAT_VERSION}: preprocess the database again")
    checksum = meta.get("checksum")
    if (not isinstance(checksum, str) or not checksum.startswith(_CHECKSUM_PREFIX)
            or len(checksum) != len(_CHECKSUM_PREFIX) + 64):
        raise StoreFileError(f"{path}: has no checksum: the store was modified; preprocess the "
                             "database again")
    digest = checksum[len(_CHECKSUM_PREFIX):]
    zeroed = data.replace(digest.encode(), _PLACEHOLDER.encode(), 1)
    if hashlib.sha256(zeroed).hexdigest() != digest:
        raise StoreFileError(f"{path}: checksum mismatch: the file was edited after "
                             "preprocessing; preprocess the database again")
    return meta


def replace_problem(path: str | Path) -> str | None:
    """None if the folder ``path`` may be replaced by a new store (it is a Tributary store, of
    any version, or an empty folder), else why not. ``--force`` never deletes anything else."""
    path = Path(path)
    hint = "--force replaces only a Tributary store; remove it yourself or choose another --out"
    if path.is_symlink():
        return f"is a symbolic link; {hint}"
    if not path.is_dir():
        return f"is a file, not a store; {hint}"
    try:
        if not any(path.iterdir()):
            return None
        meta = json.loads((path / METADATA).read_bytes())
    except FileNotFoundError:
        return f"is not a Tributary store (no {METADATA}); {hint}"
    except (OSError, ValueError):
        return f"is not a Tributary store (its {METADATA} is unreadable); {hint}"
    if not (isinstance(meta, dict) and "format_version" in meta and "files" in meta):
        return f"is not a Tributary store (its {METADATA} is not a store's); {hint}"
    return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
