"""The HTTP embedders against real servers on 127.0.0.1: `tributary serve`'s EmbeddingServer,
a subclass of it defined here that fails on purpose (the fault injection lives in the tests,
not in the server), and deliberately broken standard-library servers for bad responses and TCP
resets."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import httpx
import numpy as np
import pytest
from conftest import write_tables
from test_preprocess import ODD_METADATA, odd_tables
from tributary_plugins.embedders.openai_compatible import embeddings_endpoint

from tributary_core import get_registry
from tributary_core.embed_cache import EmbeddingCache, embed_texts
from tributary_core.errors import TributaryError
from tributary_core.http import parse_retry_after
from tributary_core.serve import EmbeddingServer
from tributary_core.store import open_store

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
from starlette.responses import JSONResponse, Response  # noqa: E402

SECRET = "sk-test-5ecret-DO-NOT-LEAK-0123456789"
TEXTS = [f"carrier is {c}{i}" for c in "ABCDEFGH" for i in range(40)]  # 320 strings


def hashing(dimension=32):
    return get_registry().create_embedder("hashing", dimension=dimension)


def client(url, name="http", **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("timeout", 10.0)
    kw.setdefault("backoff_base", 0.01)
    return get_registry().create_embedder(name, base_url=url, dimension=32, **kw)


# -- a server that fails on purpose (test-side) -------------------------------------------------


@attrs.define
class Faults:
    """Fail ``rate`` of embedding requests, choosing among ``kinds`` with a seeded generator.

    A kind is ``"timeout"`` (hold the request until the client hangs up), ``"drop"`` (start
    the answer, then close the connection without finishing it) or an HTTP status such as
    ``"429"`` (sent with ``Retry-After``) or ``"401"``. ``schedule`` fixes the first requests'
    fates (``None``: answer normally) before the random draws start.

    An ASGI application is never handed its socket, so it cannot make a TCP reset; resets are
    tested against a standard-library server (``test_a_reset_connection_is_retried``).
    """

    rate: float = 0.2
    kinds: tuple[str, ...] = ("429", "500", "timeout", "drop")
    seed: int = 0
    schedule: tuple[str | None, ...] = ()
    retry_after: float = 0.2


class _CutOff(Response):
    """An answer that announces 100 bytes, sends 10 and ends: uvicorn closes the connection."""

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b'{"data": [', "more_body": True})


class FaultyServer(EmbeddingServer):
    """An EmbeddingServer whose embedding requests fail as ``faults`` says; counts every
    attempt that reached it (``attempts``) and every fault injected (``fault_counts``)."""

    def __init__(self, embedder, *, faults: Faults | None = None, **kw):
        self.faults = faults or Faults(rate=0.0)
        self.fault_counts: dict[str, int] = {}
        self.attempts = 0
        self._rng = random.Random(self.faults.seed)
        super().__init__(embedder, **kw)

    async def answer(self, request, length):
        # Reached once the key, the length and the admission are checked, like the real answer.
        fault = self.draw()
        if fault is None:
            return await super().answer(request, length)
        await request.body()  # the body is consumed, so the connection stays usable
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited (injected)"}}, 429,
                                {"Retry-After": f"{self.faults.retry_after:g}"})
        if fault.isdigit():
            return JSONResponse({"error": {"message": f"HTTP {fault} (injected)"}}, int(fault))
        if fault == "timeout":  # hold it until the client gives up and hangs up
            while (await request.receive())["type"] != "http.disconnect":
                pass
            return Response(status_code=204)  # to nobody: the connection is gone
        assert fault == "drop", fault
        return _CutOff()

    def draw(self) -> str | None:
        with self._lock:
            n = self.attempts
            self.attempts += 1
            if n < len(self.faults.schedule):
                kind = self.faults.schedule[n]
            elif self._rng.random() < self.faults.rate:
                kind = self._rng.choice(self.faults.kinds)
            else:
                kind = None
            if kind is not None:
                self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1
            return kind


# -- the embedders against the server -----------------------------------------------------------


@pytest.fixture
def clean_vectors():
    with EmbeddingServer(hashing()) as server, client(server.url) as emb:
        return emb.embed(TEXTS)


def test_clean_run_matches_the_backend(clean_vectors):
    # hashing builds unit vectors of width 32; the client's ortho-v1 with W == D only normalises
    np.testing.assert_allclose(clean_vectors, hashing().embed(TEXTS), atol=1e-6)


def test_faults_at_20_percent_give_the_same_vectors(clean_vectors, caplog):
    caplog.set_level(logging.DEBUG)
    # Every kind first (the schedule), then 20% drawn. A "timeout" holds its request until the
    # client's 1 s timeout closes the connection. A slow machine may make a healthy request
    # time out too: that is one more retry, so the counts are bounds, not exact numbers.
    faults = Faults(rate=0.2, seed=11, retry_after=0.05,
                    schedule=("429", "500", "timeout", "drop"))
    batches = len(TEXTS) // 16
    with FaultyServer(hashing(), api_key=SECRET, faults=faults) as server, \
            client(server.url, api_key=SECRET, timeout=1.0, concurrency=4) as emb:
        vectors = emb.embed(TEXTS)
    np.testing.assert_array_equal(vectors, clean_vectors)
    assert set(server.fault_counts) == {"429", "500", "timeout", "drop"}
    assert emb.requests - emb.retries == batches  # one first attempt per batch
    assert emb.retries >= sum(server.fault_counts.values())  # every fault was retried
    assert server.attempts <= emb.requests  # nothing reached the server that was not sent
    assert server.stats.requests >= batches  # each batch answered with vectors at least once
    assert SECRET not in caplog.text


def test_retry_after_is_honoured():
    faults = Faults(schedule=("429",), retry_after=0.6)
    with FaultyServer(hashing(), faults=faults) as server, client(server.url) as emb:
        start = time.perf_counter()
        emb.embed(["x"])
        elapsed = time.perf_counter() - start
    assert elapsed >= 0.6 and emb.retries == 1


@pytest.mark.parametrize("status", ["400", "401", "403", "404"])
def test_client_errors_are_not_retried(status, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    with FaultyServer(hashing(), faults=Faults(schedule=(status,))) as server, \
            client(server.url, api_key=SECRET) as emb, pytest.raises(TributaryError) as info:
        emb.embed(["x"])
    message = str(info.value)
    assert f"refused the request: HTTP {status}" in message and "(injected)" in message
    assert emb.requests == 1 and server.fault_counts == {status: 1}
    if status in ("401", "403"):
        assert "(check TRIBUTARY_EMBEDDER_API_KEY)" in message
    out, err = capfd.readouterr()
    assert SECRET not in message + out + err + caplog.text


def test_wrong_key_against_a_keyed_server():
    refused = r"refused the request: HTTP 401 Unauthorized: missing or wrong API key"
    with EmbeddingServer(hashing(), api_key=SECRET) as server:
        with pytest.raises(TributaryError, match=refused):  # listing the model
            client(server.url, api_key="wrong-key-123")
        with client(server.url, api_key="wrong-key-123", model="char-ngram-blake2b-v1") as emb, \
                pytest.raises(TributaryError, match=refused):  # embedding
            emb.embed(["x"])
        assert server.stats.requests == 0 and server.stats.rejected == 2


def test_gives_up_after_max_retries():
    gave_up = r"gave up after 3 attempts; the last: HTTP 503: HTTP 503 \(injected\)"
    with FaultyServer(hashing(), faults=Faults(rate=1.0, kinds=("503",))) as server, \
            client(server.url, max_retries=2) as emb, pytest.raises(TributaryError, match=gave_up):
        emb.embed(["x"])
    assert server.fault_counts == {"503": 3}


def test_server_reduces_when_asked_and_checks_requests():
    with EmbeddingServer(hashing(dimension=64)) as server:
        url = server.url + "/embeddings"
        ok = httpx.post(url, json={"input": ["a", "b"], "dimensions": 16}).json()
        assert [len(d["embedding"]) for d in ok["data"]] == [16, 16]
        assert [d["index"] for d in ok["data"]] == [0, 1]
        bad = httpx.post(url, json={"input": [1, 2]})
        assert bad.status_code == 400 and "'input' must be" in bad.json()["error"]["message"]
        wrong_model = httpx.post(url, json={"input": "a", "model": "gpt-9"})
        assert wrong_model.status_code == 404
        assert httpx.get(server.url + "/models").json()["data"][0]["id"] == "char-ngram-blake2b-v1"
        assert httpx.get(server.url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_model_is_read_from_the_server_and_baseten_uses_its_env(monkeypatch):
    with EmbeddingServer(hashing(), api_key=SECRET) as server:
        monkeypatch.setenv("BASETEN_EMBEDDER_URL", server.url)
        monkeypatch.setenv("BASETEN_API_KEY", SECRET)
        emb = get_registry().create_embedder("baseten", dimension=32)
        assert emb.model == "char-ngram-blake2b-v1"
        assert emb.identity.backend == "baseten" and emb.identity.reduction == "ortho-v1"
        assert emb.embed(["x"]).shape == (1, 32)
        assert SECRET not in repr(emb)
        emb.close()


def test_missing_settings_are_clear_errors(monkeypatch):
    reg = get_registry()
    with pytest.raises(TributaryError, match=r"embedder 'baseten': set BASETEN_EMBEDDER_URL"):
        reg.create_embedder("baseten")
    monkeypatch.setenv("BASETEN_EMBEDDER_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(TributaryError, match=r"embedder 'baseten': set BASETEN_API_KEY"):
        reg.create_embedder("baseten")
    with pytest.raises(TributaryError, match=r"embedder 'openrouter': set OPENROUTER_API_KEY"):
        reg.create_embedder("openrouter")
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    emb = reg.create_embedder("openrouter")
    assert emb.endpoint == "https://openrouter.ai/api/v1/embeddings"
    assert emb.model == "openai/text-embedding-3-small"
    emb.close()


def test_endpoint_and_retry_after_parsing():
    assert embeddings_endpoint("https://x.io") == "https://x.io/v1/embeddings"
    assert embeddings_endpoint("https://x.io/sync/v1/") == "https://x.io/sync/v1/embeddings"
    assert embeddings_endpoint("https://x.io/v1/embeddings") == "https://x.io/v1/embeddings"
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- bad responses from a broken server -------------------------------------------------------


def _broken_server(kind: str):
    """A standard-library server answering ``kind``'s mistake; ``"reset"``: the first request's
    connection is dropped with a TCP reset, later requests are answered correctly."""
    resets = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if kind == "reset" and not resets[0]:
                resets[0] += 1
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            n = len(body["input"])
            rows = [[0.5] * 32 for _ in range(n)]
            index = list(range(n))
            if kind == "count":
                rows = rows[:-1]
            elif kind == "width":
                rows[-1] = [0.5] * 31
            elif kind == "nan":
                rows[0][3] = float("nan")
            elif kind == "index":
                index = [0] * n
            data = [{"index": i, "embedding": r} for i, r in zip(index, rows, strict=False)]
            raw = b"<html>oops</html>" if kind == "html" else json.dumps({"data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.resets = resets
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("kind", "message"), [
    ("count", r"the response has 1 embeddings for 2 inputs"),
    ("width", r"embeddings of different widths \[31, 32\]"),
    ("nan", r"returned non-finite values"),
    ("index", r"response item 1 has index 0; the indices must be 0..1, each once"),
    ("html", r"answered with something that is not JSON"),
])
def test_bad_responses_are_clear_errors(kind, message):
    server = _broken_server(kind)
    try:
        emb = client(f"http://127.0.0.1:{server.server_address[1]}/v1", model="m",
                     encoding_format="float")
        with pytest.raises(TributaryError, match=message):
            emb.embed(["a", "b"])
        assert emb.requests == 1
        emb.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_reset_connection_is_retried():
    server = _broken_server("reset")
    try:
        with client(f"http://127.0.0.1:{server.server_address[1]}/v1", model="m",
                    encoding_format="float") as emb:
            vectors = emb.embed(["a", "b"])
        assert server.resets == [1] and (emb.requests, emb.retries) == (2, 1)
        assert vectors.shape == (2, 32) and np.isfinite(vectors).all()
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_narrower_than_d_is_refused():
    narrow = r"gives 16 values per string, fewer than the requested dimension 32"
    with EmbeddingServer(hashing(dimension=16)) as server, client(server.url) as emb, \
            pytest.raises(TributaryError, match=narrow):
        emb.embed(["x"])


# -- preprocessing through the cache: zero requests the second time, resume after a kill ------


def _odd_db(tmp_path: Path) -> tuple[Path, Path]:
    raw = write_tables(tmp_path / "raw", odd_tables())
    md = tmp_path / "odd.json"
    md.write_text(json.dumps(ODD_METADATA))
    return md, raw


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tributary_core.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_preprocess_sends_nothing_and_a_killed_run_resumes(tmp_path):
    md, raw = _odd_db(tmp_path)
    env = {**os.environ, "TRIBUTARY_EMBEDDER_URL": "", "TRIBUTARY_CACHE_DIR": str(tmp_path / "cache")}
    args = ["run", "preprocess", "--db", "odd", "--metadata", str(md), "--raw", str(raw),
            "--embedder", "http", "--dimension", "32", "-E", "batch_size=1", "-E", "concurrency=1"]
    # 1. a run killed with SIGKILL after a few batches came back
    with EmbeddingServer(_Slow(hashing(), 0.05)) as server:
        env["TRIBUTARY_EMBEDDER_URL"] = server.url
        proc = _cli(*args, "--out", str(tmp_path / "killed"), env=env)
        deadline = time.monotonic() + 60
        while server.stats.requests < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_after = server.stats.texts
        port = server.port
    assert proc.returncode == -signal.SIGKILL and killed_after >= 4
    assert not (tmp_path / "killed").exists()
    # 2. the resumed run asks only for what the killed one had not finished, of a server at the
    # same URL (the cache keeps each URL's vectors apart)
    with EmbeddingServer(hashing(), port=port) as server:
        env["TRIBUTARY_EMBEDDER_URL"] = server.url
        proc = _cli(*args, "--out", str(tmp_path / "killed"), env=env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        resumed = server.stats.texts
        # 3. a second run sends zero requests
        proc = _cli(*args, "--out", str(tmp_path / "again"), env=env)
        out2, err2 = proc.communicate(timeout=120)
        assert proc.returncode == 0, err2
        assert server.stats.texts == resumed
    assert not list(tmp_path.glob(".killed.*"))  # swept by the resumed run
    store = open_store(tmp_path / "killed")
    distinct = len(set(store.vocab_texts) | {c["text"] for c in store.meta["columns"]})
    assert 0 < resumed <= distinct - killed_after + 1  # at most the one in flight at the kill
    assert "0 embedded in 0 batches" in out2 and f"{distinct:,} from the cache" in out2
    # 4. the stores equal one made without any cache
    with EmbeddingServer(hashing()) as server, client(server.url) as emb:
        from tributary_core.preprocess import preprocess

        preprocess(md, raw, tmp_path / "fresh", embedder=emb, use_cache=False)
    fresh, again = open_store(tmp_path / "fresh"), open_store(tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(store.vocab_embeddings), np.asarray(fresh.vocab_embeddings))
    np.testing.assert_array_equal(np.asarray(again.column_embeddings), np.asarray(fresh.column_embeddings))
    assert store.meta["embedder"] == {"backend": "http", "model": "char-ngram-blake2b-v1",
                                      "dimension": 32, "reduction": "ortho-v1"}


class _Slow:
    """Wraps an embedder so each request takes a while (the kill lands mid-run)."""

    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds
        self.model = inner.model

    def plan(self, texts):
        return self.inner.plan(texts)

    def embed_native(self, texts):
        time.sleep(self.seconds)
        return self.inner.embed_native(texts)


def test_embed_texts_through_a_cache_against_the_server(tmp_path):
    with EmbeddingServer(hashing()) as server, client(server.url) as emb:
        cache_dir = tmp_path / "c"
        v1, s1 = embed_texts(emb, TEXTS, cache=EmbeddingCache(cache_dir, emb.identity))
        v2, s2 = embed_texts(emb, TEXTS, cache=EmbeddingCache(cache_dir, emb.identity))
    assert (s1.embedded, s2.embedded, s2.cache_hits) == (len(TEXTS), 0, len(TEXTS))
    np.testing.assert_array_equal(v1, v2)


def test_serve_command(tmp_path):
    env = {**os.environ, "SERVE_KEY": SECRET}
    proc = _cli("serve", "embedder", "--backend", "hashing", "--dimension", "8", "--port", "0",
                "--api-key-env", "SERVE_KEY", env=env)
    try:
        line = proc.stderr.readline()
        assert "serving hashing/char-ngram-blake2b-v1 at http://127.0.0.1:" in line
        assert "(API key required)" in line and SECRET not in line
        url = line.split(" at ")[1].split()[0]
        resp = httpx.post(url + "/embeddings", json={"input": ["a", "b"]},
                          headers={"Authorization": f"Bearer {SECRET}"})
        assert resp.status_code == 200 and len(resp.json()["data"][1]["embedding"]) == 8
        assert httpx.post(url + "/embeddings", json={"input": "a"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    rest = proc.stderr.read()
    assert SECRET not in rest and "Traceback" not in rest


def test_serve_refuses_a_missing_key_variable():
    proc = _cli("serve", "embedder", "--backend", "hashing", "--api-key-env", "NOPE_NOT_SET",
                env={k: v for k, v in os.environ.items() if k != "NOPE_NOT_SET"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == "Error: --api-key-env: environment variable NOPE_NOT_SET is not set"
