"""An OpenAI-compatible embeddings server around any embedder backend.

``tributary serve embedder --backend local`` lets a team share one copy of the local model,
and it is the real server the HTTP backends are tested against. Endpoints:

- ``POST /v1/embeddings`` (also ``/embeddings``): ``{"input": str | [str], "model"?,
  "encoding_format"?: "float" | "base64", "dimensions"?: int}``. Vectors are the model's own
  (384 values for all-MiniLM-L6-v2); ``dimensions`` asks for Tributary's ``ortho-v1``
  reduction server-side.
- ``GET /v1/models``: the one model served. ``GET /health``: ``{"status": "ok"}``.

With ``api_key`` set, requests need ``Authorization: Bearer <key>``. ``faults`` injects
failures (429 with ``Retry-After``, 500, a stalled answer, a reset connection) at a given rate,
for testing clients; the CLI does not expose it.
"""

from __future__ import annotations

import base64
import hmac
import json
import random
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import numpy as np

from tributary_core.embedder import Embedder, reduce_vectors
from tributary_core.errors import TributaryError

__all__ = ["EmbeddingServer", "Faults"]

FAULT_KINDS = ("429", "500", "timeout", "reset")


@attrs.define
class Faults:
    """Fail ``rate`` of embedding requests, choosing among ``kinds`` with a seeded generator.

    A kind is ``"timeout"``, ``"reset"`` or an HTTP status such as ``"429"`` or ``"401"``
    (429 comes with ``Retry-After``). ``schedule`` fixes the first requests' fates (``None``:
    answer normally) before the random draws start.
    """

    rate: float = 0.2
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    schedule: tuple[str | None, ...] = ()
    #: Seconds sent in ``Retry-After`` with a 429.
    retry_after: float = 0.2
    #: How long a ``timeout`` fault holds the request before dropping it (longer than the
    #: client's timeout).
    stall: float = 2.0


@attrs.define
class ServerStats:
    requests: int = 0  # embedding requests answered with vectors
    texts: int = 0  # strings embedded for them
    faults: dict[str, int] = attrs.field(factory=dict)
    rejected: int = 0  # 4xx answers


class EmbeddingServer:
    """Serve ``embedder`` on ``host:port`` (port 0 picks a free one; see :attr:`url`)."""

    def __init__(self, embedder: Embedder, host: str = "127.0.0.1", port: int = 0, *,
                 api_key: str | None = None, faults: Faults | None = None,
                 max_inputs: int = 4096, max_body_bytes: int = 64 << 20,
                 access_log: bool = False) -> None:
        self.embedder = embedder
        self.api_key = api_key
        self.faults = faults
        self.max_inputs = max_inputs
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.stats = ServerStats()
        self._rng = random.Random(faults.seed if faults else 0)
        self._drawn = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        except OSError as exc:
            raise TributaryError(f"serve: cannot listen on {host}:{port} ({exc.strerror})") from None
        self.httpd.daemon_threads = True
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
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> EmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ------------------------------------

    def _draw_fault(self) -> str | None:
        if self.faults is None:
            return None
        with self._lock:
            n = self._drawn
            self._drawn += 1
            if n < len(self.faults.schedule):
                kind = self.faults.schedule[n]
            elif self._rng.random() < self.faults.rate:
                kind = self._rng.choice(self.faults.kinds)
            else:
                kind = None
            if kind is not None:
                self.stats.faults[kind] = self.stats.faults.get(kind, 0) + 1
            return kind

    def _embed(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a string or a non-empty list of strings")
        if len(texts) > self.max_inputs:
            return _error(400, f"at most {self.max_inputs} inputs per request, got {len(texts)}")
        model = body.get("model")
        if model not in (None, "", self.embedder.model):
            return _error(404, f"model {model!r} is not served here; this server serves "
                               f"{self.embedder.model!r}", code="model_not_found")
        fmt = body.get("encoding_format") or "float"
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


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, {"error": {"message": message, "type": kind, "code": code}}


def _handler_for(server: EmbeddingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tributary-embeddings"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
            if server.access_log:
                sys.stderr.write(f"{self.address_string()} - {format % args}\n")

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path in ("/v1/models", "/models"):
                if not self._authorized():
                    return
                self._send(200, {"object": "list", "data": [
                    {"id": server.embedder.model, "object": "model", "owned_by": "tributary"}]})
            else:
                self._send(*_error(404, f"no such endpoint: GET {self.path}"))

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
                return True
            with server._lock:
                server.stats.rejected += 1
            self._send(*_error(401, "missing or wrong API key", code="invalid_api_key"))
            return False

        def do_POST(self) -> None:
            if self.path not in ("/v1/embeddings", "/embeddings"):
                self._send(*_error(404, f"no such endpoint: POST {self.path}"))
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > server.max_body_bytes:
                self._send(*_error(413, f"the body is over {server.max_body_bytes} bytes"))
                self.close_connection = True
                return
            raw = self.rfile.read(length)
            if not self._authorized():
                return
            fault = server._draw_fault()
            if fault == "429":
                retry = server.faults.retry_after
                self._send(*_error(429, "rate limited (injected)"), {"Retry-After": f"{retry:g}"})
                return
            if fault is not None and fault.isdigit():
                self._send(*_error(int(fault), f"HTTP {fault} (injected)"))
                return
            if fault == "timeout":
                server._stopping.wait(server.faults.stall)
                self.close_connection = True
                return
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(*_error(400, "the body is not valid JSON"))
                return
            try:
                status, payload = server._embed(body)
            except TributaryError as exc:
                status, payload = _error(500, str(exc))
            if status >= 400:
                with server._lock:
                    server.stats.rejected += status < 500
            self._send(status, payload)

    return Handler
