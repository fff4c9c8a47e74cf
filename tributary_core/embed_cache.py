"""A content-addressed on-disk cache of embeddings, shared by every database and run.

Layout: ``<root>/<backend>-<digest>/`` per embedder identity (backend, model, dimension,
reduction) and source (:attr:`Embedder.source <tributary_core.embedder.Embedder.source>`: empty
for a model run here, the endpoint without credentials for a server, so one server's vectors are
never served for another's; ``identity.json`` says which), holding append-only *segment* files.
The folder is made when the first block is written. Each process
that writes opens a segment of its own (``O_CREAT | O_EXCL``), so two writers never touch the
same file. A segment is a sequence of blocks::

    header   16 bytes: b"TEC1", count n (u32), dimension D (u32), crc32 of keys + vectors (u32)
    keys     n x 16 bytes: blake2b-128 of each text's UTF-8
    vectors  n x D float32, little-endian, exactly as the backend returned them (reduced to D)

A block is written with one ``write`` after its batch comes back, so a run killed half-way
keeps every batch it finished. A reader stops at a torn or damaged block (a short read, a bad
magic) and checks each block's CRC before using its vectors, so a crash can cost re-embedding,
never a wrong vector. A cached vector that is zero or not finite (written by an older version
that did not check) is a miss, and :meth:`EmbeddingCache.append` refuses one.

**The index.** Lookups do not scan the segments' keys. ``index.tix`` holds an open-addressing
hash table of every indexed key (its slot: the key's low 64 bits; probing linear) pointing at
its block and position, the table of those blocks, and how many bytes of each segment it
covers::

    header   40 bytes: b"TEI1", version (u32), dimension D (u32), blocks B (u32),
             entries N (u64), slots S (u64, a power of two), crc32 of names and blocks (u32),
             0 (u32)
    names    u32 length + UTF-8 JSON: [[segment name, covered bytes], ...]
    blocks   B x (segment index u32, count u32, offset u64)
    slots    S x key hi u64, S x key lo u64, S x entry i64 (-1: empty), an entry being
             block << 32 | position; at most 0.7 of the slots are used

A lookup probes the table (a few reads per key, whatever the cache's size), then searches the
blocks written since the index was (the *overflow*: segment bytes past what it covers) by
sorting their keys. Once the overflow holds more than 65,536 entries and an eighth of the
indexed ones, the lookup rebuilds the table with them and replaces ``index.tix`` atomically
(a temporary file of its own, then a rename), so concurrent readers and writers never see a
partial index; writers never touch it. The index is derived data: one that is missing, torn or
fails its checksum is rebuilt from the segments. Its slots are memory-mapped, not read, so
opening it costs the same at any size. Vectors are still read from their blocks, whose
checksums are verified before use, and a hit counts only if the block's own key at that
position is the key looked up: a damaged index costs a full scan, never a wrong vector. Keys of
a damaged block are looked up again among the other blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numba
import numpy as np

from tributary_core.atomic import atomic_write_text
from tributary_core.embedder import Embedder, EmbedderIdentity
from tributary_core.errors import TributaryError

__all__ = ["EmbeddingCache", "EmbedStats", "default_cache_dir", "embed_texts", "text_keys"]

MAGIC = b"TEC1"
_HEADER = struct.Struct("<4sIII")
_SUFFIX = ".seg"
_INDEX = "index.tix"
_INDEX_MAGIC = b"TEI1"
_INDEX_HEADER = struct.Struct("<4sIIIQQII")
_BLOCK_ROW = np.dtype([("segment", "<u4"), ("count", "<u4"), ("offset", "<u8")])
#: The overflow is folded into the index once it holds more than this many entries and more
#: than an eighth of the indexed ones.
_OVERFLOW_MIN = 65_536


@numba.njit(cache=True, nogil=True)
def _probe(table_hi, table_lo, table_entry, hi, lo, out):
    """``out[i]``: the entry of key ``(hi[i], lo[i])`` in the open-addressing table, or -1."""
    mask = np.uint64(len(table_hi) - 1)
    for i in range(len(hi)):
        slot = lo[i] & mask
        out[i] = -1
        while table_entry[slot] >= 0:
            if table_hi[slot] == hi[i] and table_lo[slot] == lo[i]:
                out[i] = table_entry[slot]
                break
            slot = (slot + np.uint64(1)) & mask


@numba.njit(cache=True, nogil=True)
def _insert(table_hi, table_lo, table_entry, hi, lo, entry):
    """Add keys ``(hi, lo)`` with their ``entry`` values; a key already there keeps its own."""
    mask = np.uint64(len(table_hi) - 1)
    for i in range(len(hi)):
        slot = lo[i] & mask
        there = False
        while table_entry[slot] >= 0:
            if table_hi[slot] == hi[i] and table_lo[slot] == lo[i]:
                there = True
                break
            slot = (slot + np.uint64(1)) & mask
        if not there:
            table_hi[slot] = hi[i]
            table_lo[slot] = lo[i]
            table_entry[slot] = entry[i]


@attrs.define
class _Table:
    """The index as read from ``index.tix`` (or rebuilt): see the module docstring."""

    covered: dict[str, int]
    segments: list[str]
    blocks: np.ndarray  # _BLOCK_ROW [B]
    hi: np.ndarray  # u64 [S]
    lo: np.ndarray  # u64 [S]
    entry: np.ndarray  # i64 [S]
    entries: int

    @classmethod
    def empty(cls) -> _Table:
        return cls({}, [], np.zeros(0, _BLOCK_ROW), np.zeros(1, np.uint64), np.zeros(1, np.uint64),
                   np.full(1, -1, np.int64), 0)


def default_cache_dir() -> Path:
    """``$TRIBUTARY_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/tributary/embeddings``, else
    ``~/.cache/tributary/embeddings``."""
    root = os.environ.get("TRIBUTARY_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "tributary" / "embeddings"


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """The cache key of each text: ``[n, 2]`` uint64 holding its blake2b-128 digest."""
    buf = bytearray(16 * len(texts))
    for i, text in enumerate(texts):
        buf[16 * i : 16 * i + 16] = hashlib.blake2b(
            text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return np.frombuffer(bytes(buf), dtype="<u8").reshape(len(texts), 2)


@attrs.define
class _Block:
    segment: Path
    offset: int  # of the header
    count: int


class EmbeddingCache:
    """The cache entries of one embedder identity (and ``source``) under ``root``.

    :func:`embed_texts` narrows a cache opened without a source to its embedder's source.
    """

    def __init__(self, root: str | Path, identity: EmbedderIdentity, *, source: str = "") -> None:
        self.root = Path(root)
        self.identity = identity
        self.source = source
        fields = attrs.asdict(identity)
        if source:  # no source: the folder of caches written before sources were recorded
            fields["source"] = source
        self._spec = json.dumps(fields, sort_keys=True)
        digest = hashlib.sha256(self._spec.encode()).hexdigest()[:16]
        self.dir = self.root / f"{identity.backend}-{digest}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TributaryError(f"embedding cache {self.dir}: cannot create it ({exc.strerror})") from None
        if not self.dir.exists() and not os.access(self.root, os.W_OK | os.X_OK):
            raise TributaryError(f"embedding cache {self.dir}: cannot create it (permission denied)")
        self._dim = identity.dimension
        self._fd: int | None = None
        self._segment: Path | None = None

    def _make_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            label = self.dir / "identity.json"
            if not label.exists():
                atomic_write_text(label, self._spec + "\n")
        except OSError as exc:
            raise TributaryError(f"embedding cache {self.dir}: cannot create it ({exc.strerror})") from None

    # -- reading ---------------------------------------------------------------------------

    def _blocks(self, start: dict[str, int] | None = None) -> tuple[list[_Block], list[np.ndarray]]:
        """Every complete block of every segment, with its keys (vectors are read on demand);
        with ``start``, only those from that byte of each segment named in it on."""
        blocks, keys = [], []
        for seg in sorted(self.dir.glob(f"*{_SUFFIX}")):
            try:
                with open(seg, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    pos = (start or {}).get(seg.name, 0)
                    while pos + _HEADER.size <= size:
                        f.seek(pos)
                        magic, count, dim, _crc = _HEADER.unpack(f.read(_HEADER.size))
                        end = pos + _HEADER.size + count * (16 + 4 * dim)
                        if magic != MAGIC or dim != self._dim or end > size:
                            break  # torn tail or damage: everything after it is ignored
                        raw = f.read(16 * count)
                        keys.append(np.frombuffer(raw, dtype="<u8").reshape(count, 2))
                        blocks.append(_Block(seg, pos, count))
                        pos = end
            except OSError:
                continue  # a segment that vanished or cannot be read is a miss, not an error
        return blocks, keys

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Find ``keys`` (from :func:`text_keys`): returns ``found`` (bool ``[n]``) and the
        vectors of the found ones, in order (``[found.sum(), D]`` float32)."""
        n = len(keys)
        found = np.zeros(n, dtype=bool)
        vectors = np.empty((n, self._dim), dtype=np.float32)
        if n == 0 or not self.dir.exists():
            return found, vectors[:0]
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        table, overflow = self._table()
        # 1. the index
        entry = np.empty(n, dtype=np.int64)
        _probe(table.hi, table.lo, table.entry, keys[:, 0].copy(), keys[:, 1].copy(), entry)
        hit = np.flatnonzero(entry >= 0)
        damaged = False
        if len(hit):
            damaged = self._read_hits(table, keys, entry, hit, found, vectors)
        # 2. what was written since (and, after damage, everything else)
        if not found.all():
            more_found, more = self._scan(keys[~found], None if damaged else overflow)
            rows = np.flatnonzero(~found)[more_found]
            vectors[rows] = more
            found[rows] = True
        found &= _usable(vectors)
        return found, vectors[found]

    def _read_hits(self, table: _Table, keys: np.ndarray, entry: np.ndarray, hit: np.ndarray,
                   found: np.ndarray, vectors: np.ndarray) -> bool:
        """Read the vectors of the index's hits ``hit`` (their ``entry``) into ``vectors``:
        each touched block checked once (whole, against its checksum), then every hit's key and
        vector gathered from the mapped segments at once. A hit counts only if the block's key
        at its position is the key looked up. Returns whether anything was wrong (a damaged
        block, or an index that points at another key)."""
        dim = self._dim
        blk, pos = entry[hit] >> 32, entry[hit] & 0xFFFFFFFF
        touched, inv = np.unique(blk, return_inverse=True)
        rows = table.blocks[touched]
        ok = np.zeros(len(touched), dtype=bool)
        maps: dict[int, np.ndarray | None] = {}
        for j, row in enumerate(rows):  # one checksum per touched block
            seg = int(row["segment"])
            if seg not in maps:
                maps[seg] = _map(self.dir / table.segments[seg])
            ok[j] = _block_ok(maps[seg], int(row["offset"]), int(row["count"]), dim)
        good = ok[inv] & (pos < rows["count"][inv])
        wrong = not good.all()
        for seg, data in maps.items():
            mine = np.flatnonzero(good & (rows["segment"][inv] == seg))
            if data is None or not len(mine):
                continue
            base = (rows["offset"][inv[mine]] + _HEADER.size).astype(np.int64)
            count = rows["count"][inv[mine]].astype(np.int64)
            at = pos[mine].astype(np.int64)
            key_at = base + 16 * at
            vec_at = base + 16 * count + 4 * dim * at
            got_keys = data[key_at[:, None] + np.arange(16)].view("<u8").reshape(-1, 2)
            same = (got_keys == keys[hit[mine]]).all(1)
            wrong |= not same.all()
            rows_here = hit[mine[same]]
            raw = data[vec_at[same][:, None] + np.arange(4 * dim)]
            vectors[rows_here] = raw.view("<f4").reshape(-1, dim)
            found[rows_here] = True
        return wrong

    def _table(self) -> tuple[_Table, tuple[list[_Block], list[np.ndarray]]]:
        """The index and the overflow (the blocks it does not cover, with their keys); the
        index folded forward, and the overflow emptied, once it has grown past its threshold."""
        table = self._read_table()
        overflow, over_keys = self._blocks(table.covered)
        extra = sum(b.count for b in overflow)
        if extra > _OVERFLOW_MIN and extra * 8 > table.entries:
            return self._fold(table, overflow, over_keys), ([], [])
        return table, (overflow, over_keys)

    def _read_table(self) -> _Table:
        """``index.tix``, its slots memory-mapped (opening it reads only the header, the names
        and the blocks); an unusable file is an empty index, rebuilt by the next fold."""
        path = self.dir / _INDEX
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(_INDEX_HEADER.size)
                if len(head) < _INDEX_HEADER.size:
                    return _Table.empty()
                magic, version, dim, n_blocks, entries, slots, crc, _ = _INDEX_HEADER.unpack(head)
                if magic != _INDEX_MAGIC or version != 1 or dim != self._dim or not slots or \
                        slots & (slots - 1):
                    return _Table.empty()
                (length,) = struct.unpack("<I", f.read(4))
                meta = f.read(length + n_blocks * _BLOCK_ROW.itemsize)
            start = _INDEX_HEADER.size + 4 + len(meta)
            if len(meta) != length + n_blocks * _BLOCK_ROW.itemsize or \
                    zlib.crc32(struct.pack("<I", length) + meta) != crc or \
                    size != start + 24 * slots:
                return _Table.empty()
            names = json.loads(meta[:length])
            blocks = np.frombuffer(meta, _BLOCK_ROW, n_blocks, length)
            # plain ndarray views of the maps (what the compiled probe takes), no copy
            hi = np.asarray(np.memmap(path, "<u8", "r", start, (slots,)))
            lo = np.asarray(np.memmap(path, "<u8", "r", start + 8 * slots, (slots,)))
            entry = np.asarray(np.memmap(path, "<i8", "r", start + 16 * slots, (slots,)))
        except (OSError, ValueError):
            return _Table.empty()
        return _Table(covered={name: int(n) for name, n in names},
                      segments=[name for name, _ in names], blocks=blocks, hi=hi, lo=lo,
                      entry=entry, entries=int(entries))

    def _fold(self, table: _Table, overflow: list[_Block], over_keys: list[np.ndarray]) -> _Table:
        """The index with the overflow blocks added, written to ``index.tix`` (atomically;
        a failure to write keeps the old file and only costs a slower lookup)."""
        segments = list(table.segments)
        seg_of = {name: i for i, name in enumerate(segments)}
        rows = [table.blocks]
        for blk in overflow:
            if blk.segment.name not in seg_of:
                seg_of[blk.segment.name] = len(segments)
                segments.append(blk.segment.name)
        new_rows = np.zeros(len(overflow), _BLOCK_ROW)
        for i, blk in enumerate(overflow):
            new_rows[i] = (seg_of[blk.segment.name], blk.count, blk.offset)
        rows.append(new_rows)
        blocks = np.concatenate(rows)
        entries = table.entries + sum(b.count for b in overflow)
        slots = 1
        while slots * 7 < 10 * max(entries, 1):  # a load factor of at most 0.7
            slots *= 2
        hi = np.zeros(slots, np.uint64)
        lo = np.zeros(slots, np.uint64)
        entry = np.full(slots, -1, np.int64)
        old = np.flatnonzero(table.entry >= 0)
        _insert(hi, lo, entry, table.hi[old], table.lo[old], table.entry[old])
        base = len(table.blocks)
        for i, (blk, k) in enumerate(zip(overflow, over_keys, strict=True)):
            ids = ((base + i) << 32) | np.arange(blk.count, dtype=np.int64)
            k = np.ascontiguousarray(k, dtype=np.uint64)
            _insert(hi, lo, entry, k[:, 0].copy(), k[:, 1].copy(), ids)
        covered = dict(table.covered)
        for blk in overflow:
            end = blk.offset + _HEADER.size + blk.count * (16 + 4 * self._dim)
            covered[blk.segment.name] = max(covered.get(blk.segment.name, 0), end)
        names = json.dumps([[name, covered.get(name, 0)] for name in segments]).encode()
        meta = struct.pack("<I", len(names)) + names + blocks.tobytes()
        header = _INDEX_HEADER.pack(_INDEX_MAGIC, 1, self._dim, len(blocks), entries, slots,
                                    zlib.crc32(meta), 0)
        tmp = self.dir / f".{_INDEX}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                f.write(meta)
                for arr in (hi.astype("<u8"), lo.astype("<u8"), entry.astype("<i8")):
                    f.write(memoryview(arr))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / _INDEX)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return _Table(covered, segments, blocks, hi, lo, entry, entries)

    def _scan(self, keys: np.ndarray, among: tuple[list[_Block], list[np.ndarray]] | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """``keys`` looked up among the blocks ``among`` (blocks and their keys; None: every
        block) by sorting their keys; a damaged block's keys are looked up again among the
        others."""
        n = len(keys)
        found = np.zeros(n, dtype=bool)
        vectors = np.empty((n, self._dim), dtype=np.float32)
        blocks, block_keys = among if among is not None else self._blocks()
        usable = list(range(len(blocks)))
        if not usable:
            return found, vectors[:0]
        while usable and not found.all():
            # Match the keys still missing against the blocks not found damaged so far; a
            # damaged block's keys may have good copies elsewhere, so look again without it.
            todo = np.flatnonzero(~found)
            all_keys = np.concatenate([block_keys[b] for b in usable])
            block_of = np.repeat(usable, [blocks[b].count for b in usable])
            pos_in_block = np.concatenate([np.arange(blocks[b].count) for b in usable])
            order = np.argsort(all_keys[:, 0], kind="stable")
            sorted_hi = all_keys[order, 0]
            at = np.minimum(np.searchsorted(sorted_hi, keys[todo, 0]), len(order) - 1)
            cand = order[at]
            match = (sorted_hi[at] == keys[todo, 0]) & (all_keys[cand, 1] == keys[todo, 1])
            rows, cand = todo[match], cand[match]
            damaged = []
            for blk in np.unique(block_of[cand]):
                here = block_of[cand] == blk
                data = self._read_block(blocks[blk])
                if data is None:
                    damaged.append(blk)
                    continue
                vectors[rows[here]] = data[pos_in_block[cand[here]]]
                found[rows[here]] = True
            if not damaged:
                break
            usable = [b for b in usable if b not in set(damaged)]
        return found, vectors[found]

    def _read_block(self, block: _Block) -> np.ndarray | None:
        try:
            with open(block.segment, "rb") as f:
                f.seek(block.offset)
                _magic, count, dim, crc = _HEADER.unpack(f.read(_HEADER.size))
                payload = f.read(count * (16 + 4 * dim))
        except OSError:
            return None
        if len(payload) != count * (16 + 4 * dim) or zlib.crc32(payload) != crc:
            return None
        return np.frombuffer(payload, dtype="<f4", offset=16 * count).reshape(count, dim)

    # -- writing ---------------------------------------------------------------------------

    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add one block; durable against a killed process once this returns."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.shape != (len(keys), self._dim):
            raise ValueError(f"cache append: vectors {vectors.shape} for {len(keys)} keys")
        if not _usable(vectors).all():
            raise ValueError("cache append: a vector is zero or not finite")
        payload = np.ascontiguousarray(keys, dtype="<u8").tobytes() + vectors.tobytes()
        data = _HEADER.pack(MAGIC, len(keys), self._dim, zlib.crc32(payload)) + payload
        try:
            if self._fd is None:
                self._make_dir()
                name = f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
                self._segment = self.dir / name
                self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                                   0o644)
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise TributaryError(f"embedding cache {self.dir}: cannot write ({exc.strerror})") from None

    def close(self) -> None:
        """Flush this writer's segment to disk and close it."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self) -> int:
        """How many complete entries the cache holds (duplicates across writers included)."""
        return sum(b.count for b in self._blocks()[0])


def _map(path: Path) -> np.ndarray | None:
    """A segment's bytes, memory-mapped (None: gone or unreadable, its blocks are misses)."""
    try:
        return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else None
    except (OSError, ValueError):
        return None


def _block_ok(data: np.ndarray | None, offset: int, count: int, dim: int) -> bool:
    """Whether the mapped segment holds the block at ``offset`` whole and matching its
    checksum (and the count and width the index says)."""
    if data is None or offset + _HEADER.size > len(data):
        return False
    magic, n, d, crc = _HEADER.unpack(data[offset : offset + _HEADER.size].tobytes())
    end = offset + _HEADER.size + n * (16 + 4 * d)
    if magic != MAGIC or d != dim or n != count or end > len(data):
        return False
    return zlib.crc32(data[offset + _HEADER.size : end]) == crc


def _usable(vectors: np.ndarray) -> np.ndarray:
    """Per row: finite values and a finite, non-zero norm."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    return np.isfinite(vectors).all(axis=1) & np.isfinite(norms) & (norms > 0)


@attrs.define
class EmbedStats:
    """What one :func:`embed_texts` call did."""

    texts: int = 0
    distinct: int = 0
    cache_hits: int = 0
    embedded: int = 0
    batches: int = 0
    #: Loading the model (local backends), then embedding what the cache lacked.
    load_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def strings_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_texts(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    cache: EmbeddingCache | None = None,
    progress: Callable[[int, int, EmbedStats], None] | None = None,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, EmbedStats]:
    """Embed ``texts`` through ``cache``: each distinct string once, cached ones not at all.

    Strings still missing are sent shortest first (less padding for local models, even batches
    for HTTP ones), and each finished batch goes to the cache at once, so an interrupted run
    resumes where it stopped. ``progress(done, total, stats)`` counts distinct strings.
    Returns ``([len(texts), D]`` of ``dtype``, stats).
    """
    stats = EmbedStats(texts=len(texts))
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64,
                          count=len(texts))
    unique = list(first)
    stats.distinct = len(unique)
    out = np.zeros((len(unique), embedder.dimension), dtype=dtype)
    found = np.zeros(len(unique), dtype=bool)
    keys = None
    if cache is not None and unique:
        if cache.identity != embedder.identity:
            raise ValueError("embed_texts: the cache belongs to another embedder identity")
        if cache.source != embedder.source:
            if cache.source:
                raise ValueError("embed_texts: the cache belongs to another embedder source")
            cache.close()
            cache = EmbeddingCache(cache.root, cache.identity, source=embedder.source)
        keys = text_keys(unique)
        found, vectors = cache.lookup(keys)
        out[found] = vectors
        stats.cache_hits = int(found.sum())
    missing = np.flatnonzero(~found)
    missing = missing[np.argsort([len(unique[j]) for j in missing], kind="stable")]
    miss_texts = [unique[j] for j in missing]
    spans = embedder.plan(miss_texts)
    done = stats.cache_hits
    if progress is not None:
        progress(done, len(unique), stats)
    if miss_texts:
        load_start = time.perf_counter()
        embedder.load()
        stats.load_seconds = time.perf_counter() - load_start
    embed_start = time.perf_counter()
    try:
        for i, vectors in embedder.embed_batches([miss_texts[a:b] for a, b in spans]):
            a, b = spans[i]
            rows = missing[a:b]
            out[rows] = vectors
            if cache is not None:
                cache.append(keys[rows], vectors)
            stats.embedded += b - a
            stats.batches += 1
            done += b - a
            stats.seconds = time.perf_counter() - embed_start
            if progress is not None:
                progress(done, len(unique), stats)
    finally:
        if cache is not None:
            cache.close()
    if len(unique) == len(texts):
        return out, stats
    return out[inverse], stats
