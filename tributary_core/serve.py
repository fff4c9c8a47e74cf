"""An OpenAI-compatible embeddings server around any embedder backend, on uvicorn with Starlette.

``tributary serve embedder --backend local`` lets a team share one copy of the local model,
and it is the real server the HTTP backends are tested against. Endpoints (``GET
/openapi.json``, no key needed, describes them in OpenAPI 3.1):

- ``POST /v1/embeddings`` (also ``/embeddings``): ``{"input": str | [str], "model"?,
  "encoding_format"?: "float" | "base64", "dimensions"?: int}``. Vectors are the model's own
  (384 values for all-MiniLM-L6-v2); ``dimensions`` asks for Tributary's ``ortho-v1``
  reduction server-side.
- ``GET /v1/models`` (also ``/models``): the one model served. ``GET /health`` (also
  ``/v1/health``): ``{"status": "ok"}``, no key needed.

With ``api_key`` set, ``POST /v1/embeddings`` and ``GET /v1/models`` need ``Authorization:
Bearer <key>``; the key is compared in constant time and never logged or echoed (the access
log, uvicorn's, holds the request line and the status only).

Request parsing, keep-alive, concurrency and graceful shutdown are uvicorn's (its h11 parser,
chosen explicitly so that what is tested is what runs); routing and the 404/405 answers are
Starlette's. uvicorn refuses a request it cannot parse (a malformed request line, a negative,
non-numeric, over-long or repeated-with-different-values ``Content-Length``, a
``Transfer-Encoding`` other than ``chunked``) itself, with a plain-text 400 and the connection
closed, before this code sees it. What is checked here, each with a JSON error ``{"error":
{"message", "type", "code"}}`` and never a traceback: the key first, before any of the body is
read (``Expect: 100-continue`` is answered only once the key and the length are accepted;
401), a missing ``Content-Length`` or a chunked body (411), more than ``max_body_bytes``
announced (413, nothing read), a body that takes over ``request_timeout`` seconds in all (408),
more than ``max_in_flight`` embedding requests at once (503 with ``Retry-After: 1``), more than
``max_inputs`` strings, non-strings, strings that are not valid Unicode, or wrong JSON types
(400). Whenever an answer goes out before the whole body was read, it carries ``Connection:
close`` and the connection is closed, so unread bytes are never taken for the next request. The
embedding runs in a worker thread, off the event loop; a backend's failure is a 500 with one
line, and an unexpected exception one line on stderr.

What uvicorn does not do: set a deadline on a connection that has not yet sent a whole request
head (idle keep-alive connections are closed ``request_timeout`` seconds after their last
answer), or answer a client that shut its sending side before its body was complete (it takes
the connection for closed: nothing is embedded, nothing is sent).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from tributary_core.embedder import Embedder, reduce_vectors
from tributary_core.errors import TributaryError
from tributary_core.http import bind_socket

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["EmbeddingServer", "ServerStats", "INSTALL_HINT"]

#: The one-line error when the ``serve`` extra is missing.
INSTALL_HINT = "serve embedder needs uvicorn and Starlette: pip install 'tributary[serve]'"

_DIGITS = re.compile(r"[0-9]+")
#: How long a graceful shutdown waits for the requests in flight (seconds).
_GRACE = 30


@attrs.define
class ServerStats:
    requests: int = 0  # embedding requests answered with vectors
    texts: int = 0  # strings embedded for them
    rejected: int = 0  # 4xx answers from this code (not uvicorn's own 400s)


class _RequestError(Exception):
    """A request refused before it reached the embedder: ``status``, a one-line message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


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


def _has_body(request: Request) -> bool:
    return bool(request.headers.get("transfer-encoding")) or \
        request.headers.get("content-length", "0").strip() not in ("", "0")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _enable_access_log() -> None:
    """uvicorn's access log (``client - "request line" status``) on stderr, once per process."""
    import logging

    from uvicorn.logging import AccessFormatter

    log = logging.getLogger("uvicorn.access")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(getattr(h, "_tributary", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s',
                                             use_colors=False))
        handler._tributary = True  # type: ignore[attr-defined]
        log.addHandler(handler)


class EmbeddingServer:
    """Serve ``embedder`` on ``host:port`` (port 0 picks a free one; see :attr:`url`).

    The socket is bound at once (a port in use is a :class:`TributaryError`); :meth:`start`
    serves from a background thread, :meth:`serve_forever` from this one, :meth:`stop` shuts
    down gracefully (the requests in flight are answered first, for up to 30 s).

    ``max_body_bytes`` caps a request body, ``max_inputs`` the strings in one request,
    ``max_in_flight`` the embedding requests handled at once, and ``request_timeout`` (seconds)
    how long a body may take to arrive and how long an idle keep-alive connection is kept.
    ``access_log`` turns on uvicorn's access log on stderr (it is one logger per process: the
    last server made decides). A subclass may override :meth:`answer`.
    """

    def __init__(self, embedder: Embedder, host: str = "127.0.0.1", port: int = 0, *,
                 api_key: str | None = None, max_inputs: int = 4096,
                 max_body_bytes: int = 16 << 20, max_in_flight: int = 16,
                 request_timeout: float = 60.0, access_log: bool = False) -> None:
        if max_inputs < 1 or max_body_bytes < 1 or max_in_flight < 1 or request_timeout <= 0:
            raise TributaryError("serve: max_inputs, max_body_bytes, max_in_flight and "
                                 "request_timeout must be positive")
        try:
            import starlette  # noqa: F401
            import uvicorn
        except ImportError:
            raise TributaryError(INSTALL_HINT) from None
        self.embedder = embedder
        self.api_key = api_key
        self.max_inputs = max_inputs
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.access_log = access_log
        self.stats = ServerStats()
        #: Embedding requests admitted and not yet answered (reading their body or embedding).
        self.in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._served = False
        self._sock = bind_socket(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        if access_log:
            _enable_access_log()
        # h11, not whatever "auto" finds: the parser's answers to malformed requests are part of
        # what the server does, and they are tested. No proxy headers: the access log shows the
        # peer. log_config=None: the process's logging is left as it is.
        try:
            config = uvicorn.Config(self.app(), http="h11", lifespan="on", log_config=None,
                                    access_log=access_log, proxy_headers=False,
                                    server_header=False, timeout_graceful_shutdown=_GRACE,
                                    timeout_keep_alive=request_timeout)  # type: ignore[arg-type]
            self._server = uvicorn.Server(config)
        except BaseException:
            self._sock.close()
            raise

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    # -- running -------------------------------------------------------------------------------

    def _claim(self) -> None:
        if self._served:
            raise TributaryError("serve: this server has already served; make a new one")
        self._served = True

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._done.set()

    def start(self) -> EmbeddingServer:
        """Serve from a background thread; returns once the server accepts connections."""
        self._claim()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="tributary-embedding-server")
        self._thread.start()
        while not self._server.started:
            if self._done.is_set():
                raise TributaryError("serve: the server did not start")
            time.sleep(0.002)
        return self

    def serve_forever(self) -> None:
        """Serve from this thread until Ctrl-C or SIGTERM (when this is the main thread) or
        :meth:`stop`; the requests in flight are answered first, then it returns."""
        self._claim()
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main else None
        try:
            # uvicorn shuts down gracefully on the signal, then raises it again: SIGINT's
            # KeyboardInterrupt, or SIGTERM's, which the handler above makes one too.
            self._run()
        except KeyboardInterrupt:
            pass
        finally:
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def stop(self) -> None:
        """Stop serving (gracefully) and close the socket; a server never started just closes."""
        if self._served and not self._done.is_set():
            self._server.should_exit = True
            if threading.current_thread() is not self._thread:
                self._done.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._sock.close()

    def __enter__(self) -> EmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the application -----------------------------------------------------------------------

    def app(self) -> Any:
        """The Starlette application (an ASGI app) serving this server's endpoints."""
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        routes = [Route(path, self._embeddings, methods=["POST"])
                  for path in ("/v1/embeddings", "/embeddings")]
        routes += [Route(path, self._models, methods=["GET"]) for path in ("/v1/models", "/models")]
        routes += [Route(path, self._health, methods=["GET"]) for path in ("/health", "/v1/health")]
        routes.append(Route("/openapi.json", self._openapi, methods=["GET"]))
        # Starlette's own body limit (max_body_size) is not used: its 413 would replace any
        # answer, the 401 to a request without the key included. The length is checked below.
        app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})
        app.router.redirect_slashes = False  # "/v1/embeddings/" is a 404, as any unknown path
        return app

    def _json(self, status: int, payload: dict[str, Any] | bytes,
              headers: dict[str, str] | None = None, *, close: bool = False) -> Response:
        """A JSON answer; ``close`` (the body was not read) ends the connection after it."""
        from starlette.responses import Response

        if 400 <= status < 500:
            with self._lock:
                self.stats.rejected += 1
        data = payload if isinstance(payload, bytes) else \
            json.dumps(payload, separators=(",", ":")).encode()
        headers = dict(headers or {})
        if close:
            headers["Connection"] = "close"
        return Response(data, status_code=status, headers=headers, media_type="application/json")

    def _refuse(self, exc: _RequestError, *, close: bool) -> Response:
        return self._json(*_error(exc.status, exc.message, exc.code), exc.headers, close=close)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        # Starlette's routing errors (no such path, a method the path does not take) as JSON.
        status = getattr(exc, "status_code", 500)
        headers = dict(getattr(exc, "headers", None) or {})
        if status == 404:
            message = f"no such endpoint: {request.method} {request.scope['path'][:200]}"
        elif status == 405:
            message = f"method {request.method} is not allowed"
            if "Allow" in headers:
                headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
        else:
            message = str(getattr(exc, "detail", "")) or "error"
        return self._json(*_error(status, message), headers, close=_has_body(request))

    async def _health(self, request: Request) -> Response:
        return self._json(200, {"status": "ok"}, close=_has_body(request))

    async def _openapi(self, request: Request) -> Response:
        return self._json(200, self.openapi(), close=_has_body(request))

    async def _models(self, request: Request) -> Response:
        close = _has_body(request)  # never read: the bytes must not become a request
        try:
            self._authorize(request)
        except _RequestError as exc:
            return self._refuse(exc, close=close)
        return self._json(200, {"object": "list", "data": [
            {"id": self.embedder.model, "object": "model", "owned_by": "tributary"}]}, close=close)

    async def _embeddings(self, request: Request) -> Response:
        try:
            self._authorize(request)
            length = self._body_length(request)
        except _RequestError as exc:
            return self._refuse(exc, close=True)  # the body, if any, is not read
        if not self._admit():
            return self._refuse(_RequestError(
                503, f"the server is busy ({self.max_in_flight} requests in flight); retry later",
                headers={"Retry-After": "1"}), close=True)
        try:
            return await self.answer(request, length)
        finally:
            self._leave()

    # -- checks --------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """Raise a 401 unless the request carries the server's key."""
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").encode("latin-1")
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
            raise _RequestError(401, "missing or wrong API key", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})

    def _body_length(self, request: Request) -> int:
        """The body's declared length, checked before any of it is read (h11 has already
        refused a malformed one; the check stays for any other server running :meth:`app`)."""
        if request.headers.getlist("transfer-encoding"):
            raise _RequestError(411, "chunked or other Transfer-Encoding bodies are not "
                                     "accepted; send Content-Length")
        values = request.headers.getlist("content-length")
        if not values:
            raise _RequestError(411, "a Content-Length header is required")
        lengths = {v.strip() for value in values for v in value.split(",")}
        if len(lengths) != 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            shown = ", ".join(values)[:40]
            raise _RequestError(400, f"Content-Length {shown!r} is not one non-negative integer")
        digits = lengths.pop()
        length = int(digits) if len(digits) <= 18 else self.max_body_bytes + 1
        if length > self.max_body_bytes:
            raise _RequestError(413, f"the body ({digits[:20]} bytes) is over the server's "
                                     f"limit of {self.max_body_bytes} bytes")
        return length

    def _admit(self) -> bool:
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # -- answering -----------------------------------------------------------------------------

    async def read_body(self, request: Request, length: int) -> bytes:
        """Read the ``length`` bytes of the body within ``request_timeout`` seconds in all: a
        :class:`_RequestError` (408, or 400 when the client leaves before sending them all)
        otherwise. The first read answers ``Expect: 100-continue``."""
        from starlette.requests import ClientDisconnect

        parts: list[bytes] = []
        got = 0

        async def read() -> None:
            nonlocal got
            async for chunk in request.stream():
                parts.append(chunk)
                got += len(chunk)

        try:
            await asyncio.wait_for(read(), self.request_timeout)
        except asyncio.TimeoutError:
            raise _RequestError(408, f"the body did not arrive within "
                                     f"{self.request_timeout:g} s") from None
        except ClientDisconnect:  # uvicorn takes even a half-closed connection for gone
            ended = True
        else:
            ended = got != length
        if ended:
            raise _RequestError(400, f"the body ended after {got} of the {length} bytes "
                                     f"Content-Length announced")
        return b"".join(parts)

    async def answer(self, request: Request, length: int) -> Response:
        """Read, parse and answer one embedding request; called once the key, the length
        (``length`` bytes, at most ``max_body_bytes``) and the admission are checked. A
        subclass may override it (the tests inject faults here)."""
        from starlette.concurrency import run_in_threadpool

        try:
            raw = await self.read_body(request, length)
        except _RequestError as exc:
            return self._refuse(exc, close=True)
        status, data = await run_in_threadpool(self._answer_body, raw)
        return self._json(status, data)

    def _answer_body(self, raw: bytes) -> tuple[int, bytes]:
        """Parse, embed and serialise (in a worker thread: all of it can take a while)."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
            status, payload = _error(400, f"the body is {reason}")
        else:
            try:
                status, payload = self._embed(body)
            except TributaryError as exc:
                status, payload = _error(500, str(exc))
            except Exception as exc:  # a backend's bug must not become a traceback or a hang
                sys.stderr.write(f"serve: the embedder failed: {type(exc).__name__}: {exc}\n")
                status, payload = _error(500, f"the embedder failed ({type(exc).__name__})")
        return status, json.dumps(payload, separators=(",", ":")).encode()

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 description served at ``GET /openapi.json``."""
        error = {"description": "", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}

        def errors(*pairs: tuple[str, str]) -> dict[str, Any]:
            return {code: {**error, "description": what} for code, what in pairs}

        secured = [{"bearer": []}] if self.api_key is not None else []
        embeddings = {"post": {
            "summary": "Embed strings (the OpenAI embeddings API)",
            "security": secured,
            "parameters": [{"name": "Content-Length", "in": "header", "required": True,
                            "schema": {"type": "integer", "minimum": 0,
                                       "maximum": self.max_body_bytes}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}}},
            "responses": {
                "200": {"description": "one embedding per input, in order",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/EmbeddingResponse"}}}},
                **errors(("400", "a malformed request or body"), ("401", "no or a wrong key"),
                         ("404", "a model that is not served here"),
                         ("408", f"the body took over {self.request_timeout:g} s"),
                         ("411", "no Content-Length, or a chunked body"),
                         ("413", f"a body over {self.max_body_bytes} bytes"),
                         ("500", "the embedder failed"),
                         ("503", "too many requests in flight; retry after Retry-After"))}}}
        models = {"get": {"summary": "The model served", "security": secured, "responses": {
            "200": {"description": "a list of one model", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ModelList"}}}},
            **errors(("401", "no or a wrong key"))}}}
        health = {"get": {"summary": "Liveness (no key needed)", "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"status": {"const": "ok"}}}}}}}}}
        return {
            "openapi": "3.1.0",
            "info": {"title": "Tributary embeddings server (OpenAI-compatible)", "version": "1",
                     "description": f"Serves {self.embedder.model!r}."},
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": {
                    "Error": {"type": "object", "properties": {"error": {
                        "type": "object", "properties": {
                            "message": {"type": "string"}, "type": {"type": "string"},
                            "code": {"type": ["string", "null"]}}}}},
                    "EmbeddingRequest": {"type": "object", "required": ["input"], "properties": {
                        "input": {"oneOf": [
                            {"type": "string"},
                            {"type": "array", "minItems": 1, "maxItems": self.max_inputs,
                             "items": {"type": "string"}}]},
                        "model": {"type": "string",
                                  "description": f"empty or {self.embedder.model!r}"},
                        "encoding_format": {"enum": ["float", "base64"], "default": "float",
                                            "description": "base64: little-endian float32"},
                        "dimensions": {"type": "integer", "minimum": 1,
                                       "description": "reduce server-side with ortho-v1"}}},
                    "EmbeddingResponse": {"type": "object", "properties": {
                        "object": {"const": "list"},
                        "model": {"type": "string"},
                        "data": {"type": "array", "items": {"type": "object", "properties": {
                            "object": {"const": "embedding"},
                            "index": {"type": "integer"},
                            "embedding": {"oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"}]}}}},
                        "usage": {"type": "object", "description": "not tracked: zeros",
                                  "properties": {"prompt_tokens": {"type": "integer"},
                                                 "total_tokens": {"type": "integer"}}}}},
                    "ModelList": {"type": "object", "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "string"}, "object": {"const": "model"},
                            "owned_by": {"type": "string"}}}}}},
                },
            },
            "paths": {
                "/v1/embeddings": embeddings, "/embeddings": embeddings,
                "/v1/models": models, "/models": models,
                "/health": health, "/v1/health": health,
                "/openapi.json": {"get": {"summary": "This description", "responses": {
                    "200": {"description": "OpenAPI 3.1"}}}},
            },
        }

    # -- the embedding (in a worker thread) ----------------------------------------------------

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
