"""The embedding cache and the embed path: reduction, batching plans, de-duplication, segments
written by two processes at once, torn and damaged blocks."""

from __future__ import annotations

import multiprocessing as mp
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tributary_core.embed_cache import EmbeddingCache, embed_texts, text_keys
from tributary_core.embedder import Embedder, EmbedderIdentity, plan_batches, reduce_vectors

IDENT = EmbedderIdentity(backend="counting", model="m", dimension=8, reduction="ortho-v1")


class Counting(Embedder):
    """A deterministic 12-wide embedder that records every batch it is asked for."""

    name = "counting"
    default_model = "m"
    batch_size = 3

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[list[str]] = []

    def _embed_batch(self, texts):
        self.seen.append(list(texts))
        return np.stack([_vector(t, 12) for t in texts])


def _vector(text: str, width: int) -> np.ndarray:
    seed = zlib.crc32(text.encode())
    return np.random.RandomState(seed).standard_normal(width).astype(np.float32)


# -- reduction and plans --------------------------------------------------------------------


def test_reduction_is_the_documented_projection():
    native = np.stack([_vector(t, 12) for t in "abcde"])
    seed = zlib.crc32(b"tributary-ortho-v1:12:8")
    q, r = np.linalg.qr(np.random.RandomState(seed).standard_normal((12, 8)))
    expected = native @ (q * np.sign(np.diag(r)))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = reduce_vectors(native, 8)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_reduction_keeps_geometry_roughly_and_zero_vectors():
    native = np.random.RandomState(1).standard_normal((50, 384)).astype(np.float32)
    native[0] = 0.0
    reduced = reduce_vectors(native, 256)
    assert not reduced[0].any()
    unit = native[1:] / np.linalg.norm(native[1:], axis=1, keepdims=True)
    before, after = unit @ unit.T, reduced[1:] @ reduced[1:].T
    assert np.abs(before - after).max() < 0.25  # a random 2/3 projection distorts little
    same = reduce_vectors(native[1:3], 384)  # W == D: only normalised
    np.testing.assert_allclose(same, unit[:2], atol=1e-6)
    with pytest.raises(ValueError, match="cannot reduce 384-wide vectors to 512"):
        reduce_vectors(native, 512)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=40), st.integers(1, 6), st.integers(0, 20))
def test_plan_batches_covers_in_order_within_limits(texts, max_count, max_chars):
    spans = plan_batches(texts, max_count, max_chars)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(texts)))
    for a, b in spans:
        assert 1 <= b - a <= max_count
        if max_chars and b - a > 1:
            assert sum(len(t) for t in texts[a:b]) <= max_chars


# -- embed_texts ----------------------------------------------------------------------------


def test_distinct_strings_embedded_once_shortest_first(tmp_path):
    emb = Counting(dimension=8)
    texts = ["bbb", "a", "bbb", "cc", "a", "dddd"]
    vectors, stats = embed_texts(emb, texts, cache=EmbeddingCache(tmp_path, emb.identity))
    assert [t for batch in emb.seen for t in batch] == ["a", "cc", "bbb", "dddd"]
    assert (stats.texts, stats.distinct, stats.embedded, stats.cache_hits, stats.batches) == (6, 4, 4, 0, 2)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_allclose(vectors, emb.embed(texts), atol=1e-6)


def test_second_run_sends_nothing_and_gives_the_same_vectors(tmp_path):
    first = Counting(dimension=8)
    texts = [f"value {i}" for i in range(20)]
    v1, _ = embed_texts(first, texts, cache=EmbeddingCache(tmp_path, first.identity))
    second = Counting(dimension=8)
    v2, stats = embed_texts(second, texts + ["new"], cache=EmbeddingCache(tmp_path, second.identity),
                            dtype=np.float16)
    assert second.seen == [["new"]]
    assert (stats.cache_hits, stats.embedded) == (20, 1)
    assert v2.dtype == np.float16
    np.testing.assert_array_equal(v2[:20], v1.astype(np.float16))


def test_identities_do_not_share_entries(tmp_path):
    emb = Counting(dimension=8)
    embed_texts(emb, ["x"], cache=EmbeddingCache(tmp_path, emb.identity))
    other = Counting(dimension=4)
    cache = EmbeddingCache(tmp_path, other.identity)
    assert cache.dir != EmbeddingCache(tmp_path, emb.identity).dir
    assert cache.entries() == 0
    with pytest.raises(ValueError, match="another embedder identity"):
        embed_texts(emb, ["x"], cache=cache)


def test_progress_counts_distinct_strings(tmp_path):
    emb = Counting(dimension=8)
    calls = []
    embed_texts(emb, list("abcdeab"), progress=lambda done, total, s: calls.append((done, total)))
    assert calls == [(0, 5), (3, 5), (5, 5)]


# -- segments -------------------------------------------------------------------------------


def _writer(root: str, start: int, stop: int) -> None:
    cache = EmbeddingCache(root, IDENT)
    for a in range(start, stop, 5):
        texts = [f"t{i}" for i in range(a, min(a + 5, stop))]
        cache.append(text_keys(texts), np.stack([_vector(t, 8) for t in texts]))
    cache.close()


def test_two_processes_writing_at_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 0, 300)),
             ctx.Process(target=_writer, args=(str(tmp_path), 150, 450))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = EmbeddingCache(tmp_path, IDENT)
    assert len(list(cache.dir.glob("*.seg"))) == 2
    texts = [f"t{i}" for i in range(450)]
    found, vectors = cache.lookup(text_keys(texts + ["never"]))
    assert found[:450].all() and not found[450]
    np.testing.assert_array_equal(vectors, np.stack([_vector(t, 8) for t in texts]))


def test_torn_tail_and_damaged_block_are_misses(tmp_path):
    _writer(str(tmp_path), 0, 15)  # three blocks of five
    cache = EmbeddingCache(tmp_path, IDENT)
    (seg,) = cache.dir.glob("*.seg")
    block = 16 + 5 * (16 + 4 * 8)
    data = bytearray(seg.read_bytes())
    assert len(data) == 3 * block
    data[block + 16 + 5 * 16 + 3] ^= 0xFF  # a vector byte of the second block
    seg.write_bytes(bytes(data[: 3 * block - 7]))  # and the third block torn
    texts = [f"t{i}" for i in range(15)]
    found, vectors = cache.lookup(text_keys(texts))
    assert found.tolist() == [True] * 5 + [False] * 10
    np.testing.assert_array_equal(vectors, np.stack([_vector(t, 8) for t in texts[:5]]))
    # a new writer appends to its own segment; the damaged one stays readable up to the damage
    _writer(str(tmp_path), 5, 15)
    assert EmbeddingCache(tmp_path, IDENT).lookup(text_keys(texts))[0].all()


def test_unwritable_cache_is_a_clear_error(tmp_path):
    from tributary_core.errors import TributaryError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TributaryError, match=r"embedding cache .*file/counting-.*: cannot create it"):
        EmbeddingCache(blocker, IDENT)


# -- the index (issue 19) ---------------------------------------------------------------------


def _fill(cache, rng, n_blocks, per_block, dim, start=0):
    keys = []
    for b in range(n_blocks):
        k = text_keys([f"text {start + b * per_block + i}" for i in range(per_block)])
        cache.append(k, rng.normal(size=(per_block, dim)).astype(np.float32) + 0.1)
        keys.append(k)
    cache.close()
    return np.concatenate(keys)


def test_the_index_folds_the_overflow_and_finds_what_the_segments_hold(tmp_path, monkeypatch):
    import tributary_core.embed_cache as ec

    monkeypatch.setattr(ec, "_OVERFLOW_MIN", 50)
    ident = EmbedderIdentity(backend="test", model="m", dimension=4, reduction="ortho-v1")
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path, ident)
    keys = _fill(cache, rng, 6, 20, 4)
    assert not (cache.dir / "index.tix").exists()
    # what the full scan finds is the reference
    want_found, want = cache._scan(keys, None)
    found, got = cache.lookup(keys)  # folds: 120 entries > 50, more than an eighth of 0
    assert (cache.dir / "index.tix").exists() and found.all()
    np.testing.assert_array_equal(got, want[want_found])
    table = cache._read_table()
    assert table.entries == 120 and (table.entry >= 0).sum() == 120
    # a second writer appends; its entries are found through the overflow, then folded
    more = _fill(EmbeddingCache(tmp_path, ident), rng, 2, 20, 4, start=10_000)
    both = np.concatenate([keys, more])
    found, got = EmbeddingCache(tmp_path, ident).lookup(both)
    assert found.all()
    np.testing.assert_array_equal(got[:120], want[want_found])
    # 40 new entries: under the threshold (50), so still the overflow; 40 more fold them in
    assert EmbeddingCache(tmp_path, ident)._read_table().entries == 120
    _fill(EmbeddingCache(tmp_path, ident), rng, 2, 20, 4, start=20_000)
    found, _ = EmbeddingCache(tmp_path, ident).lookup(both)
    assert found.all() and EmbeddingCache(tmp_path, ident)._read_table().entries == 200
    missing = text_keys(["never written"])
    assert not EmbeddingCache(tmp_path, ident).lookup(missing)[0].any()


def test_a_damaged_index_costs_a_scan_never_a_wrong_vector(tmp_path, monkeypatch):
    import tributary_core.embed_cache as ec

    monkeypatch.setattr(ec, "_OVERFLOW_MIN", 10)
    ident = EmbedderIdentity(backend="test", model="m", dimension=4, reduction="ortho-v1")
    cache = EmbeddingCache(tmp_path, ident)
    keys = _fill(cache, np.random.default_rng(1), 3, 20, 4)
    _, want = cache.lookup(keys)
    index = cache.dir / "index.tix"
    data = bytearray(index.read_bytes())
    # the slots' entries (the last third of the file after the header) shuffled: pointing at
    # other keys' positions
    n = len(data)
    tail = np.frombuffer(bytes(data[n - (n - 40) // 3 // 8 * 8 :]), dtype="<i8").copy()
    live = tail >= 0
    tail[live] = np.roll(tail[live], 1)
    data[n - len(tail) * 8 :] = tail.tobytes()
    index.write_bytes(bytes(data))
    found, got = EmbeddingCache(tmp_path, ident).lookup(keys)
    # every key is still found (through the segments) with its own vector
    assert found.all()
    np.testing.assert_array_equal(got, want)
    # a torn index is no index: rebuilt on the next fold, and lookups still right
    index.write_bytes(bytes(data[:100]))
    found, got = EmbeddingCache(tmp_path, ident).lookup(keys)
    assert found.all()
    np.testing.assert_array_equal(got, want)
    assert EmbeddingCache(tmp_path, ident)._read_table().entries == 60


def test_readers_folding_at_once_leave_one_whole_index(tmp_path, monkeypatch):
    import threading

    import tributary_core.embed_cache as ec

    monkeypatch.setattr(ec, "_OVERFLOW_MIN", 10)
    ident = EmbedderIdentity(backend="test", model="m", dimension=4, reduction="ortho-v1")
    keys = _fill(EmbeddingCache(tmp_path, ident), np.random.default_rng(2), 8, 25, 4)
    results = []

    def read():
        results.append(EmbeddingCache(tmp_path, ident).lookup(keys)[0].all())

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
    cache = EmbeddingCache(tmp_path, ident)
    assert cache._read_table().entries == 200
    assert not list(cache.dir.glob(".index.tix.*"))  # no temporary file left behind
