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

import hashlib
import json
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tributary_core.errors import TributaryError

__all__ = ["MAGIC", "FORMAT_VERSION", "METADATA", "StoreFileError", "write_file", "StoreFile",
           "pack_bits", "unpack_bits", "dump_store_metadata", "load_store_metadata",
           "replace_problem"]

MAGIC = b"TRIBSTOR"
#: 2: metadata.json carries its own checksum; task seeds are sorted (anchor row, time, label).
FORMAT_VERSION = 2
METADATA = "metadata.json"
_CHECKSUM_PREFIX = "sha256:"
_PLACEHOLDER = "0" * 64
PREAMBLE = struct.Struct("<8sIII12x")
ALIGN = 64
BITS = "bits"
_CRC_BLOCK = 1 << 24


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
               meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``sections`` (name -> array) to ``path``; returns ``{"bytes", "crc32"}`` of the file's
    header, which the store's metadata.json records per file."""
    prepared = [(name, *_as_section(arr)) for name, arr in sections.items()]
    entries = []
    header = b""
    # The header holds the offsets and the offsets depend on the header's length: grow the
    # reserved space until the header fits in it.
    reserve = 4096
    while True:
        offset = _align(PREAMBLE.size + reserve)
        entries = []
        for name, dtype, shape, payload in prepared:
            entries.append({"name": name, "dtype": dtype, "shape": shape, "offset": offset,
                            "nbytes": int(payload.nbytes), "crc32": _crc(payload)})
            offset = _align(offset + payload.nbytes)
        header = json.dumps({"kind": kind, "sections": entries, "meta": dict(meta or {})},
                            separators=(",", ":")).encode()
        if len(header) <= reserve:
            break
        reserve = _align(len(header) + 1024)
    end = entries[-1]["offset"] + entries[-1]["nbytes"] if entries else PREAMBLE.size + len(header)
    header_crc = zlib.crc32(header)
    with open(path, "wb") as f:
        f.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), header_crc))
        f.write(header)
        for entry, (_, _, _, payload) in zip(entries, prepared, strict=True):
            f.seek(entry["offset"])
            if payload.nbytes:  # an empty section (no vocabulary) has nothing to write
                f.write(memoryview(payload).cast("B"))
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": end, "crc32": header_crc}


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
        """Check every section's CRC-32, reading the whole file once with plain reads (no map
        is left open by a check)."""
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
