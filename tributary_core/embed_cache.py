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
"""

from __future__ import annotations

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
import numpy as np

from tributary_core.atomic import atomic_write_text
from tributary_core.embedder import Embedder, EmbedderIdentity
from tributary_core.errors import TributaryError

__all__ = ["EmbeddingCache", "EmbedStats", "default_cache_dir", "embed_texts", "text_keys"]

MAGIC = b"TEC1"
_HEADER = struct.Struct("<4sIII")
_SUFFIX = ".seg"


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

    def _blocks(self) -> tuple[list[_Block], list[np.ndarray]]:
        """Every complete block of every segment, with its keys (vectors are read on demand)."""
        blocks, keys = [], []
        for seg in sorted(self.dir.glob(f"*{_SUFFIX}")):
            try:
                with open(seg, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    pos = 0
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
        blocks, block_keys = self._blocks()
        usable = list(range(len(blocks)))
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
        found &= _usable(vectors)
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
