"""Trust (issue 15): what a client cannot make `tributary serve embedder` do, and what a broken
backend cannot put into a store or the embedding cache. Every test talks to a real server on
127.0.0.1; the hostile requests go over raw sockets so that any header can be sent.

The server runs on uvicorn (its h11 parser): a request h11 cannot parse (a negative, non-numeric,
over-long or conflicting Content-Length, a garbage request line) is refused by uvicorn itself
with a plain-text 400 and the connection closed, before the server's own code sees it. Those
tests check what still matters: a 4xx, the connection closed, nothing embedded, and the bytes
after it never taken for a request."""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from tributary_core import get_registry
from tributary_core.embed_cache import EmbeddingCache, embed_texts, text_keys
from tributary_core.embedder import Embedder
from tributary_core.errors import TributaryError
from tributary_core.serve import EmbeddingServer

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

KEY = "sk-trust-5ecret-DO-NOT-LEAK-42"
AUTH = f"Authorization: Bearer {KEY}\r\n"


def hashing(dimension=32):
    return get_registry().create_embedder("hashing", dimension=dimension)


def exchange(server, data: bytes, *, then: bytes | None = None, shut: bool = False) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (a server that
    keeps it open fails the test by the 30 s socket timeout)."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(data)
        if then is not None:
            sock.sendall(then)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def responses(data: bytes) -> list[tuple[int, dict[str, str], object]]:
    """Split what a connection received into ``(status, headers, body)`` answers: the body
    parsed if it is JSON, its bytes otherwise (without a Content-Length, all that follows)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        n = int(headers["content-length"]) if "content-length" in headers else len(rest)
        body = rest[:n]
        is_json = headers.get("content-type") == "application/json"
        out.append((status, headers, json.loads(body) if is_json and body else body or None))
        data = rest[n:]
    return out


def parser_refused(data: bytes) -> None:
    """``data`` is uvicorn's own answer to a request it could not parse: one plain-text 400,
    no "100 Continue", the connection closed (``exchange`` read until it was)."""
    ((status, head, body),) = responses(data)
    assert data.startswith(b"HTTP/1.1 400 ") and head["connection"] == "close"
    assert head["content-type"].startswith("text/plain") and body == b"Invalid HTTP request received."


def post(path="/v1/embeddings", headers="", body=b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").encode("latin-1") + body


def json_post(payload, extra="") -> bytes:
    body = json.dumps(payload).encode()
    return post(headers=f"{AUTH}Content-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n{extra}", body=body)


@pytest.fixture
def server():
    with EmbeddingServer(hashing(), api_key=KEY, max_body_bytes=4096, max_inputs=8) as srv:
        yield srv


# -- the key before the body; Content-Length; Transfer-Encoding -------------------------------


@pytest.mark.parametrize("length", ["200000000", "99999999999999999999", "5"])
def test_the_key_is_checked_before_any_body_is_read(server, length):
    # Only the headers are sent: the answer comes without the server waiting for a body.
    data = exchange(server, post(headers=f"Content-Length: {length}\r\nExpect: 100-continue\r\n"))
    assert data.startswith(b"HTTP/1.1 401 ")  # no "100 Continue" for a client without the key
    ((status, headers, body),) = responses(data)
    assert body["error"]["message"] == "missing or wrong API key"
    assert headers["connection"] == "close" and headers["www-authenticate"] == "Bearer"
    assert server.stats.requests == 0 and server.stats.rejected == 1


@pytest.mark.parametrize(("headers", "status", "message"), [
    ("", 411, "a Content-Length header is required"),
    ("Content-Length: 4097\r\n", 413, "the body (4097 bytes) is over the server's limit of 4096"),
    ("Content-Length: 99999999999999999999\r\n", 413,  # 20 digits, the most h11 parses
     "the body (99999999999999999999 bytes) is over the server's limit of 4096"),
    ("Transfer-Encoding: chunked\r\n", 411, "Transfer-Encoding bodies are not accepted"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", 411, "send Content-Length"),
])
def test_bad_lengths_are_refused_before_reading(server, headers, status, message):
    data = exchange(server, post(headers=AUTH + headers + "Expect: 100-continue\r\n"))  # no body
    assert not data.startswith(b"HTTP/1.1 100")
    ((got, head, body),) = responses(data)
    assert got == status and message in body["error"]["message"]
    assert head["content-type"] == "application/json" and head["connection"] == "close"
    assert server.stats.requests == 0 and server.stats.rejected == 1


@pytest.mark.parametrize("headers", [
    "Content-Length: -1\r\n",
    "Content-Length: abc\r\n",
    "Content-Length: +5\r\n",
    "Content-Length: 1e3\r\n",
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Content-Length: 999999999999999999999999\r\n",  # over h11's 20 digits
    "Transfer-Encoding: gzip\r\n",
])
def test_malformed_lengths_are_refused_by_the_parser(server, headers):
    # Without the key, too: h11 refuses the request before the server's code (and its key
    # check) runs, and nothing of it is read as a body or a next request.
    for auth in (AUTH, ""):
        data = exchange(server, post(headers=auth + headers + "Expect: 100-continue\r\n"),
                        then=_smuggled())
        parser_refused(data)
    assert server.stats.requests == 0 and server.stats.rejected == 0


def test_expect_continue_is_answered_only_after_the_checks(server):
    body = json.dumps({"input": ["a"]}).encode()
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(post(headers=f"{AUTH}Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"
                                  f"Connection: close\r\n"))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    ((status, _, payload),) = responses(data)
    assert status == 200 and len(payload["data"][0]["embedding"]) == 32


# -- keep-alive: bytes never read never become the next request --------------------------------


def _smuggled() -> bytes:
    return f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode()


@pytest.mark.parametrize("first", ["no key", "bad length", "wrong path", "get with a body"])
def test_an_unread_body_is_not_taken_for_a_request(server, first):
    smuggled = _smuggled()
    n = len(smuggled)
    request = {
        "no key": post(headers=f"Content-Length: {n}\r\n"),
        "bad length": post(headers=f"{AUTH}Content-Length: {n}\r\nContent-Length: 1\r\n"),
        "wrong path": post("/v1/other", headers=f"{AUTH}Content-Length: {n}\r\n"),
        "get with a body": f"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n".encode(),
    }[first]
    answers = responses(exchange(server, request, then=smuggled))
    assert len(answers) == 1  # the connection was closed after the first answer
    status, head, _ = answers[0]
    assert status == {"no key": 401, "bad length": 400, "wrong path": 404,
                      "get with a body": 200}[first]
    assert head["connection"] == "close"  # uvicorn's own 400 for "bad length", the others ours


def test_pipelined_requests_with_read_bodies_both_answered(server):
    body = json.dumps({"input": ["a"]}).encode()
    one = post(headers=f"{AUTH}Content-Length: {len(body)}\r\n", body=body)
    two = post(headers=f"{AUTH}Content-Length: {len(body)}\r\nConnection: close\r\n", body=body)
    answers = responses(exchange(server, one + two))
    assert [a[0] for a in answers] == [200, 200]
    assert server.stats.requests == 2


# -- bodies that stall or end early; too many requests at once -------------------------------


def test_a_stalled_body_gets_408_and_the_connection_closes():
    with EmbeddingServer(hashing(), request_timeout=0.5) as srv:
        data = exchange(srv, post(headers="Content-Length: 100\r\n", body=b'{"input": '))
        ((status, _, body),) = responses(data)
    assert status == 408 and body["error"]["message"] == "the body did not arrive within 0.5 s"


def test_a_body_that_ends_early_is_never_embedded(server):
    # The client sends 10 of 100 bytes and shuts its side. uvicorn takes a half-closed
    # connection for a closed one, so the server's 400 ("the body ended after 10 of the 100
    # bytes ...") has nobody to go to: the connection just closes, and nothing is embedded.
    data = exchange(server, post(headers=f"{AUTH}Content-Length: 100\r\n", body=b'{"input": '),
                    shut=True)
    assert data == b""
    for _ in range(3000):  # the request leaves the server's books (at most 30 s)
        if server.in_flight == 0 and server.stats.rejected == 1:
            break
        threading.Event().wait(0.01)
    assert (server.in_flight, server.stats.requests, server.stats.rejected) == (0, 0, 1)
    good = httpx.post(server.url + "/embeddings", json={"input": ["a"]},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert good.status_code == 200


def test_requests_beyond_max_in_flight_get_503():
    body = json.dumps({"input": ["a"]}).encode()
    with EmbeddingServer(hashing(), max_in_flight=1) as srv, \
            socket.create_connection((srv.host, srv.port), timeout=30) as held:
        held.sendall(post(headers=f"Content-Length: {len(body)}\r\nConnection: close\r\n",
                          body=body[:3]))
        for _ in range(3000):  # wait (at most 30 s) until the server holds that request
            if srv.in_flight == 1:
                break
            threading.Event().wait(0.01)
        assert srv.in_flight == 1
        busy = httpx.post(srv.url + "/embeddings", json={"input": ["b"]}, timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "the server is busy (1 requests in flight)" in busy.json()["error"]["message"]
        held.sendall(body[3:])
        data = b"".join(iter(lambda: held.recv(65536), b""))
        assert responses(data)[0][0] == 200
        assert srv.in_flight == 0
        assert httpx.post(srv.url + "/embeddings", json={"input": ["b"]}, timeout=30).status_code == 200


# -- bodies that parse but are wrong ------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 4000, "the body is nested too deeply"),
    (b"not json", "the body is not valid JSON"),
    (b'{"input": "\\ud800"}', "input[0] is not valid Unicode (a lone surrogate)"),
    ([1], "the body must be a JSON object"),
    ({"input": ["a"] * 9}, "at most 8 inputs per request, got 9"),
    ({"input": ["a", 1]}, "input[1] is a number"),
    ({"input": [["a"]]}, "input[0] is an array"),
    ({"input": [None]}, "input[0] is null"),
    ({"input": []}, "'input' must be a string or a non-empty list of strings"),
    ({"input": {"a": 1}}, "'input' must be a string or a non-empty list of strings"),
    ({"input": "a", "model": ["m"]}, "'model' must be a string, not an array"),
    ({"input": "a", "encoding_format": 0}, "'encoding_format' must be 'float' or 'base64'"),
    ({"input": "a", "dimensions": "8"}, "'dimensions' must be a positive integer"),
    ({"input": "a", "dimensions": True}, "'dimensions' must be a positive integer"),
    ({"input": "a", "dimensions": 64}, "'dimensions' 64 exceeds the model's 32"),
], ids=lambda value: value[:40] if isinstance(value, str) else None)
def test_wrong_json_is_a_400_and_the_server_keeps_serving(server, body, message, capfd):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = server.url + "/embeddings"
    bad = httpx.post(url, content=raw, headers=headers, timeout=30)
    assert bad.status_code == 400 and message in bad.json()["error"]["message"]
    good = httpx.post(url, json={"input": ["a"]}, headers=headers, timeout=30)
    assert good.status_code == 200
    _, err = capfd.readouterr()
    assert "Traceback" not in err and KEY not in err


def test_a_full_body_over_the_cap_is_413(server):
    resp = httpx.post(server.url + "/embeddings", json={"input": ["x" * 5000]},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert resp.status_code == 413 and resp.headers["connection"] == "close"


def test_other_methods_unknown_paths_and_garbage(server, capfd):
    # A method the path does not take, or a path that does not exist: Starlette's routing,
    # answered as JSON; the connection stays open (nothing was left unread), so close it.
    for request, status, message, allow in [
        (b"DELETE /v1/embeddings HTTP/1.1\r\n", 405, "method DELETE is not allowed", "POST"),
        (b"POST /health HTTP/1.1\r\n", 405, "method POST is not allowed", "GET, HEAD"),
        (b"GET /v1/embeddings/ HTTP/1.1\r\n", 404, "no such endpoint: GET /v1/embeddings/", None),
        (b"PUT /v2/x HTTP/1.1\r\n", 404, "no such endpoint: PUT /v2/x", None),
    ]:
        data = exchange(server, request + b"Host: x\r\nConnection: close\r\n\r\n")
        ((got, head, body),) = responses(data)
        assert got == status and body["error"]["message"] == message
        assert head["content-type"] == "application/json" and head.get("allow") == allow
    assert server.stats.rejected == 4
    # A request line h11 cannot parse: uvicorn's plain-text 400, and the connection closed.
    parser_refused(exchange(server, b"GARBAGE\r\n\r\n", then=_smuggled()))
    parser_refused(exchange(server, b"GET /health HTTP/1.1\r\n\r\n"))  # no Host
    assert server.stats.requests == 0 and server.stats.rejected == 4
    assert "Traceback" not in capfd.readouterr().err


def test_openapi_describes_the_endpoints(server):
    spec = httpx.get(server.url.removesuffix("/v1") + "/openapi.json", timeout=30).json()
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/embeddings", "/embeddings", "/v1/models", "/health", "/openapi.json"} <= set(spec["paths"])
    post = spec["paths"]["/v1/embeddings"]["post"]
    assert post["security"] == [{"bearer": []}]
    assert {"200", "400", "401", "408", "411", "413", "503"} <= set(post["responses"])
    request = spec["components"]["schemas"]["EmbeddingRequest"]
    assert request["properties"]["input"]["oneOf"][1]["maxItems"] == 8  # the server's max_inputs
    assert KEY not in json.dumps(spec)


class _Exploding(Embedder):
    """A backend with a bug: raises something that is not a TributaryError."""

    name = "exploding"
    default_model = "boom"

    def _embed_batch(self, texts):
        raise RuntimeError("index out of range in the model")


class _Zeros(Embedder):
    """A backend that returns a zero vector for the string "empty"."""

    name = "zeros"
    default_model = "z"
    reduction = "none"

    def _embed_batch(self, texts):
        out = np.ones((len(texts), self.dimension), dtype=np.float32)
        out[[t == "empty" for t in texts]] = 0.0
        return out


def test_a_backend_bug_is_a_500_with_one_line_and_no_traceback(capfd):
    with EmbeddingServer(_Exploding(dimension=8)) as srv:
        resp = httpx.post(srv.url + "/embeddings", json={"input": ["a"]}, timeout=30)
        assert resp.status_code == 500
        assert resp.json()["error"]["message"] == "the embedder failed (RuntimeError)"
        assert httpx.get(srv.url + "/models", timeout=30).status_code == 200  # still serving
    err = capfd.readouterr().err
    assert err == "serve: the embedder failed: RuntimeError: index out of range in the model\n"


def test_the_server_does_not_serve_a_degenerate_vector():
    with EmbeddingServer(_Zeros(dimension=8)) as srv:
        resp = httpx.post(srv.url + "/embeddings", json={"input": ["a", "empty"]}, timeout=30)
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == (
        "embedder 'zeros' (model 'z') returned a zero vector for 'empty'; nothing from this "
        "batch is used")


# -- degenerate vectors from a server: refused, never cached ----------------------------------


def _vector_server(rows_for):
    """A real server on 127.0.0.1 answering each request with ``rows_for(texts, call)``: a list
    of embeddings (lists of numbers, or base64 strings), or raw bytes to send as the body."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
            calls.append(texts)
            rows = rows_for(texts, len(calls))
            raw = rows if isinstance(rows, bytes) else json.dumps(
                {"data": [{"index": i, "embedding": r} for i, r in enumerate(rows)]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.close = lambda: (httpd.shutdown(), httpd.server_close())
    httpd.calls = calls
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def client(url, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("concurrency", 1)
    kw.setdefault("model", "char-ngram-blake2b-v1")
    return get_registry().create_embedder("http", base_url=url, dimension=32, timeout=30.0,
                                          backoff_base=0.01, encoding_format="float", **kw)


TEXTS = [f"carrier is {c}" for c in "ABCDEFGH"]


def test_zero_vectors_are_refused_and_nothing_is_cached_then_a_good_server_is_asked(tmp_path):
    broken = _vector_server(lambda texts, _call: [[0.0] * 32 for _ in texts])
    try:
        with client(broken.url) as emb, pytest.raises(TributaryError) as info:
            embed_texts(emb, TEXTS, cache=EmbeddingCache(tmp_path, emb.identity))
    finally:
        broken.close()
    assert str(info.value) == (
        f"embedder 'http' (model 'char-ngram-blake2b-v1') at {broken.url}/embeddings returned a "
        f"zero vector for 'carrier is A'; nothing from this batch is used")
    assert not list(tmp_path.rglob("*.seg"))  # the cache stayed empty
    # A good server at another URL: everything is embedded by it, nothing comes from the cache.
    with EmbeddingServer(hashing()) as good, client(good.url) as emb:
        vectors, stats = embed_texts(emb, TEXTS, cache=EmbeddingCache(tmp_path, emb.identity))
    assert (stats.cache_hits, stats.embedded) == (0, len(TEXTS))
    np.testing.assert_allclose(vectors, hashing().embed(TEXTS), atol=1e-6)


def test_one_servers_vectors_are_not_served_for_another(tmp_path):
    const = _vector_server(lambda texts, _call: [[0.5] * 32 for _ in texts])  # valid, but not hashing's
    try:
        with client(const.url) as emb:
            first, s1 = embed_texts(emb, TEXTS, cache=EmbeddingCache(tmp_path, emb.identity))
        with client(const.url) as emb:  # the same server again: all from the cache
            again, s2 = embed_texts(emb, TEXTS, cache=EmbeddingCache(tmp_path, emb.identity))
    finally:
        const.close()
    assert (s1.embedded, s2.cache_hits, s2.embedded) == (len(TEXTS), len(TEXTS), 0)
    np.testing.assert_array_equal(first, again)
    with EmbeddingServer(hashing()) as good, client(good.url) as emb:
        assert emb.identity == client(const.url).identity  # same identity, another source
        vectors, stats = embed_texts(emb, TEXTS, cache=EmbeddingCache(tmp_path, emb.identity))
    assert (stats.cache_hits, stats.embedded) == (0, len(TEXTS))
    np.testing.assert_allclose(vectors, hashing().embed(TEXTS), atol=1e-6)
    folders = sorted(p.parent.name for p in tmp_path.glob("*/identity.json"))
    assert len(folders) == 2 and all(f.startswith("http-") for f in folders)


def test_only_the_bad_batch_is_left_out_of_the_cache(tmp_path):
    long_bad = "bad value " + "x" * 200

    def rows(texts, _call):
        return [[0.0] * 32 if t == long_bad else [0.25] * 32 for t in texts]

    srv = _vector_server(rows)
    texts = ["a", "b", "c", "d", "ee", "ff", "gg", long_bad]  # shortest first: two batches of 4
    try:
        with client(srv.url) as emb, pytest.raises(TributaryError) as info:
            embed_texts(emb, texts, cache=EmbeddingCache(tmp_path, emb.identity))
    finally:
        srv.close()
    message = str(info.value)
    assert "returned a zero vector for 'bad value xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'" \
        in message and long_bad not in message and "\n" not in message
    with client(srv.url) as emb:
        cache = EmbeddingCache(tmp_path, emb.identity, source=emb.source)
    assert cache.entries() == 4  # the first batch only
    found, _ = cache.lookup(text_keys(texts))
    assert found.tolist() == [True] * 4 + [False] * 4


NON_FINITE = "returned non-finite values (NaN or infinity) for 'carrier is A'"


@pytest.mark.parametrize(("rows", "message"), [
    (lambda n: [[float("nan")] + [0.5] * 31] * n, NON_FINITE),
    (lambda n: [[1e39] + [0.5] * 31] * n, NON_FINITE),
    (lambda n: [[1e30] * 32] * n, "returned a vector whose norm overflows for 'carrier is A'"),
    (lambda n: [[10**400] + [0] * 31] * n, "embedding 0 holds a number too large for a float"),
    (lambda n: [base64.b64encode(struct.pack("<32f", *([0.0] * 32))).decode()] * n,
     "returned a zero vector for 'carrier is A'"),
    (lambda n: [base64.b64encode(struct.pack("<32f", *([float("inf")] * 32))).decode()] * n,
     "returned non-finite values"),
])
def test_degenerate_values_are_one_line_errors(tmp_path, rows, message):
    srv = _vector_server(lambda texts, _call: rows(len(texts)))
    try:
        with client(srv.url) as emb, pytest.raises(TributaryError) as info:
            embed_texts(emb, TEXTS, cache=EmbeddingCache(tmp_path, emb.identity))
    finally:
        srv.close()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.seg"))


def test_a_width_that_changes_between_batches_is_refused(tmp_path):
    srv = _vector_server(lambda texts, call: [[0.5] * (32 if call == 1 else 48) for _ in texts])
    try:
        with client(srv.url) as emb, pytest.raises(TributaryError) as info:
            emb.embed(TEXTS)
    finally:
        srv.close()
    assert "returned 48 values per string for 'carrier is E', after 32 for earlier strings" \
        in str(info.value)


def test_a_degenerate_vector_already_in_the_cache_is_a_miss(tmp_path):
    # As written by a version that did not check: a zero vector and a NaN, with a valid CRC.
    emb = get_registry().create_embedder("hashing", dimension=32)
    cache = EmbeddingCache(tmp_path, emb.identity)
    texts = ["zero", "nan", "good"]
    vectors = np.zeros((3, 32), dtype="<f4")
    vectors[1, 0] = np.nan
    vectors[2] = emb.embed(["good"])[0]
    payload = text_keys(texts).astype("<u8").tobytes() + vectors.tobytes()
    cache.dir.mkdir(parents=True)
    (cache.dir / "0-old.seg").write_bytes(
        struct.pack("<4sIII", b"TEC1", 3, 32, zlib.crc32(payload)) + payload)
    found, got = cache.lookup(text_keys(texts))
    assert found.tolist() == [False, False, True]
    np.testing.assert_array_equal(got, vectors[2:])
    with pytest.raises(ValueError, match="cache append: a vector is zero or not finite"):
        cache.append(text_keys(["z"]), np.zeros((1, 32), dtype=np.float32))


def test_the_cache_source_holds_no_credentials(tmp_path):
    with EmbeddingServer(hashing()) as srv:
        url = srv.url.replace("http://", "http://user:pw-5ecret@")
        with client(url, api_key=KEY) as emb:
            embed_texts(emb, ["a"], cache=EmbeddingCache(tmp_path, emb.identity))
            assert emb.source == f"{srv.url}/embeddings"
            assert "5ecret" not in repr(emb)
    (label,) = tmp_path.glob("*/identity.json")
    recorded = json.loads(label.read_text())
    assert recorded["source"] == f"{srv.url}/embeddings"
    assert not re.search("5ecret|DO-NOT-LEAK", label.read_text())
