"""An OpenAI-compatible embeddings server around any embedder backend.

``tributary serve embedder --backend local`` lets a team share one copy of the local model,
and it is the real server the HTTP backends are tested against. Endpoints:

- ``POST /v1/embeddings`` (also ``/embeddings``): ``{"input": str | [str], "model"?,
  "encoding_format"?: "float" | "base64", "dimensions"?: int}``. Vectors are the model's own
  (384 values for all-MiniLM-L6-v2); ``dimensions`` asks for Tributary's ``ortho-v1``
  reduction server-side.
- ``GET /v1/models``: the one model served. ``GET /health``: ``{"status": "ok"}``.

With ``api_key`` set, requests need ``Authorization: Bearer <key>``.

What a client cannot do (each answered with a JSON error, never a traceback): send a body
before its key is checked (the key is checked first, and ``Expect: 100-continue`` is answered
only after that), send a body without a valid ``Content-Length`` (missing: 411; negative,
non-numeric or repeated with different values: 400; chunked ``Transfer-Encoding``: 411), send
more than ``max_body_bytes`` (413, nothing read), stall a body (408 after ``request_timeout``
seconds in all), hold more than ``max_in_flight`` embedding requests at once (503 with
``Retry-After``), send more than ``max_inputs`` strings, non-strings, strings that are not
valid Unicode, or wrong JSON types (400). Whenever an answer goes out before the whole body was
read, the connection is closed, so unread bytes are never taken for the next request.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import numpy as np

from tributary_core.embedder import Embedder, reduce_vectors
from tributary_core.errors import TributaryError

__all__ = ["EmbeddingServer", "EmbeddingRequestHandler", "ServerStats"]

_DIGITS = re.compile(r"[0-9]+")
_READ_CHUNK = 1 << 16


@attrs.define
class ServerStats:
    requests: int = 0  # embedding requests answered with vectors
    texts: int = 0  # strings embedded for them
    rejected: int = 0  # 4xx answers


class _RequestError(Exception):
    """A request refused before it reached the embedder: ``status``, a one-line message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is not news; anything else is one line, no traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        sys.stderr.write(f"serve: error while answering {client_address[0]}: "
                         f"{type(exc).__name__}: {exc}\n")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, {"error": {"message": message, "type": kind, "code": code}}


class EmbeddingRequestHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests for :attr:`app` (an :class:`EmbeddingServer`)."""

    protocol_version = "HTTP/1.1"
    server_version = "tributary-embeddings"
    app: EmbeddingServer
    _expect_continue = False

    # -- plumbing --------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        if self.app.access_log:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def send_json(self, status: int, payload: dict[str, Any],
                  headers: dict[str, str] | None = None) -> None:
        """Answer ``payload``; an answer of 400 or more that went out before the body was read
        closes the connection (set ``close_connection`` first)."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        if 400 <= status < 500:
            with self.app._lock:
                self.app.stats.rejected += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib's errors (a malformed request line, an unsupported method) as JSON too,
        # with a status line even where the request line did not name a version.
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        self.send_json(*_error(code, message or HTTPStatus(code).phrase))

    def handle_expect_100(self) -> bool:
        # Say "100 Continue" only once the key and the length are accepted (see read_body).
        self._expect_continue = True
        return True

    def has_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or \
            self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def authorized(self) -> None:
        """Raise a 401 unless the request carries the server's key."""
        key = self.app.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   f"Bearer {key}".encode()):
            raise _RequestError(401, "missing or wrong API key", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})

    def body_length(self) -> int:
        """The body's declared length, checked before any of it is read."""
        if self.headers.get_all("Transfer-Encoding"):
            raise _RequestError(411, "chunked or other Transfer-Encoding bodies are not "
                                     "accepted; send Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise _RequestError(411, "a Content-Length header is required")
        lengths = {v.strip() for value in values for v in value.split(",")}
        if len(lengths) != 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            shown = ", ".join(values)[:40]
            raise _RequestError(400, f"Content-Length {shown!r} is not one non-negative integer")
        digits = lengths.pop()
        length = int(digits) if len(digits) <= 18 else self.app.max_body_bytes + 1
        if length > self.app.max_body_bytes:
            raise _RequestError(413, f"the body ({digits[:20]} bytes) is over the server's "
                                     f"limit of {self.app.max_body_bytes} bytes")
        return length

    def read_body(self, length: int) -> bytes:
        """Read exactly ``length`` bytes within ``request_timeout`` seconds in all."""
        if self._expect_continue:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        deadline = time.monotonic() + self.app.request_timeout
        parts, got = [], 0
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(_READ_CHUNK, length - got))
            if not chunk:
                raise _RequestError(400, f"the body ended after {got} of the {length} bytes "
                                         f"Content-Length announced")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    # -- methods ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.has_body():
            self.close_connection = True  # never read: the bytes must not become a request
        if self.path in ("/health", "/v1/health"):
            self.send_json(200, {"status": "ok"})
        elif self.path in ("/v1/models", "/models"):
            try:
                self.authorized()
            except _RequestError as exc:
                self.send_json(*_error(exc.status, exc.message, exc.code), exc.headers)
                return
            self.send_json(200, {"object": "list", "data": [
                {"id": self.app.embedder.model, "object": "model", "owned_by": "tributary"}]})
        else:
            self.send_json(*_error(404, f"no such endpoint: GET {self.path[:200]}"))

    def _not_allowed(self) -> None:
        self.close_connection = True
        self.send_json(*_error(405, f"method {self.command} is not allowed"),
                       {"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def do_POST(self) -> None:
        if self.path not in ("/v1/embeddings", "/embeddings"):
            self.close_connection = True
            self.send_json(*_error(404, f"no such endpoint: POST {self.path[:200]}"))
            return
        try:
            self.authorized()
            length = self.body_length()
        except _RequestError as exc:
            self.close_connection = True  # the body, if any, is not read
            self.send_json(*_error(exc.status, exc.message, exc.code), exc.headers)
            return
        if not self.app._admit():
            self.close_connection = True
            self.send_json(*_error(503, f"the server is busy ({self.app.max_in_flight} requests "
                                        f"in flight); retry later"), {"Retry-After": "1"})
            return
        try:
            self.embed_request(length)
        finally:
            self.app._leave()

    def embed_request(self, length: int) -> None:
        """Read, parse and answer one embedding request (the key and length are checked)."""
        try:
            raw = self.read_body(length)
        except _RequestError as exc:
            self.close_connection = True
            self.send_json(*_error(exc.status, exc.message, exc.code))
            return
        except TimeoutError:
            self.close_connection = True
            self.send_json(*_error(408, f"the body did not arrive within "
                                        f"{self.app.request_timeout:g} s"))
            return
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
            self.send_json(*_error(400, f"the body is {reason}"))
            return
        try:
            status, payload = self.app._embed(body)
        except TributaryError as exc:
            status, payload = _error(500, str(exc))
        except Exception as exc:  # a backend's bug must not become a traceback or a hang
            sys.stderr.write(f"serve: the embedder failed: {type(exc).__name__}: {exc}\n")
            status, payload = _error(500, f"the embedder failed ({type(exc).__name__})")
        self.send_json(status, payload)


class EmbeddingServer:
    """Serve ``embedder`` on ``host:port`` (port 0 picks a free one; see :attr:`url`).

    ``max_body_bytes`` caps a request body, ``max_inputs`` the strings in one request,
    ``max_in_flight`` the embedding requests handled at once, and ``request_timeout`` (seconds)
    how long a connection may sit idle or take to send its body. A subclass may set
    :attr:`handler_class` to a subclass of :class:`EmbeddingRequestHandler`.
    """

    handler_class: type[EmbeddingRequestHandler] = EmbeddingRequestHandler

    def __init__(self, embedder: Embedder, host: str = "127.0.0.1", port: int = 0, *,
                 api_key: str | None = None, max_inputs: int = 4096,
                 max_body_bytes: int = 16 << 20, max_in_flight: int = 16,
                 request_timeout: float = 60.0, access_log: bool = False) -> None:
        if max_inputs < 1 or max_body_bytes < 1 or max_in_flight < 1 or request_timeout <= 0:
            raise TributaryError("serve: max_inputs, max_body_bytes, max_in_flight and "
                                 "request_timeout must be positive")
        self.embedder = embedder
        self.api_key = api_key
        self.max_inputs = max_inputs
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.access_log = access_log
        self.stats = ServerStats()
        #: Embedding requests admitted and not yet answered (reading, embedding or writing).
        self.in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        handler = type("Handler", (self.handler_class,), {"app": self, "timeout": request_timeout})
        try:
            self.httpd = _HTTPServer((host, port), handler)
        except OSError as exc:
            raise TributaryError(f"serve: cannot listen on {host}:{port} ({exc.strerror})") from None
        self.host, self.port = self.httpd.server_address[:2]

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> EmbeddingServer:
        """Serve from a background thread; returns at once."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="tributary-embedding-server")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> EmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ------------------------------------

    def _admit(self) -> bool:
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _embed(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            return _error(400, "'input' must be a string or a non-empty list of strings")
        if len(texts) > self.max_inputs:
            return _error(400, f"at most {self.max_inputs} inputs per request, got {len(texts)}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                return _error(400, f"'input' must be a string or a non-empty list of strings; "
                                   f"input[{i}] is {_json_type(text)}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return _error(400, f"input[{i}] is not valid Unicode (a lone surrogate)")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            return _error(400, f"'model' must be a string, not {_json_type(model)}")
        if model not in (None, "", self.embedder.model):
            return _error(404, f"model {model[:100]!r} is not served here; this server serves "
                               f"{self.embedder.model!r}", code="model_not_found")
        fmt = body.get("encoding_format")
        if fmt is None:
            fmt = "float"
        if fmt not in ("float", "base64"):
            return _error(400, "'encoding_format' must be 'float' or 'base64'")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
            return _error(400, "'dimensions' must be a positive integer")
        parts = [self.embedder.embed_native(texts[a:b]) for a, b in self.embedder.plan(texts)]
        vectors = np.concatenate(parts)
        if dims is not None:
            if dims > vectors.shape[1]:
                return _error(400, f"'dimensions' {dims} exceeds the model's {vectors.shape[1]}")
            vectors = reduce_vectors(vectors, dims)
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if fmt == "base64":
            data = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
        else:
            data = vectors.tolist()
        with self._lock:
            self.stats.requests += 1
            self.stats.texts += len(texts)
        return 200, {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": self.embedder.model,
            # Token counts are not tracked; zeros rather than a guess.
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
