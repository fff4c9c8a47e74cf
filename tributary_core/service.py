"""``tributary serve model``: a trained run as an HTTP JSON API, on uvicorn with Starlette.

Endpoints (``GET /openapi.json`` describes them):

- ``POST /v1/predict``: ``{"task": str, "keys": [key, ...], "at"?: ISO 8601 time,
  "top_k"?: int, "explain"?: int}`` -> ``{"task", "observation_time", "predictions":
  [{"key", "prediction", "p_null", "probability"?, "top_k"?, "explanation"?}, ...]}``: the
  answers ``tributary run predict --keys ... --at ...`` gives, row for row.
- ``GET /v1/tasks``: the run's tasks (anchor table, key column, target type, latest time).
- ``GET /health``: ``{"status": "ok"}`` (no key needed).

Requests that arrive while the model is busy are answered together: a worker thread takes
every waiting request of the same task, time and options (up to ``max_batch`` keys in all) and
runs them as one batch of contexts. With ``api_key`` set, ``/v1/*`` needs ``Authorization:
Bearer <key>``; the key is compared in constant time and never logged or echoed.

What the stack does not do for us is checked here, each with a JSON error ``{"error":
{"message", "type"}}``: bodies over ``max_body_bytes`` (413, by ``Content-Length`` before
reading, and counted while reading one without it), bodies that are not a JSON object (400),
fields of the wrong type or out of range, unknown tasks (404), keys that are not in the anchor
table, times that do not parse or entities from after the time (400). Request parsing,
keep-alive, concurrency limits and graceful shutdown are uvicorn's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import queue
import socket
import threading
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import pyarrow as pa

from tributary_core.errors import TributaryError
from tributary_core.http import bind_socket

__all__ = ["model_app", "ModelService", "ServiceStats", "bind_socket", "OPENAPI"]

#: Largest request body read (bytes).
MAX_BODY_BYTES = 1 << 20
#: Most keys in one request.
MAX_KEYS = 10_000
#: Most explained cells per prediction.
MAX_EXPLAIN = 32


@attrs.define
class ServiceStats:
    requests: int = 0  # prediction requests answered with predictions
    batches: int = 0  # model runs that answered them
    keys: int = 0  # entities predicted
    rejected: int = 0  # 4xx answers


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


@attrs.define
class _Job:
    task: Any
    rows: np.ndarray
    at: int
    top_k: int
    explain: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    @property
    def signature(self) -> tuple:
        return (self.task.key, self.at, self.top_k, self.explain)


class ModelService:
    """The model side of the service: validation, and a worker thread that batches requests.

    ``predictor`` is a :class:`~tributary_core.train.predict.Predictor`."""

    def __init__(self, predictor: Any, *, max_batch: int = 256) -> None:
        self.predictor = predictor
        self.max_batch = max(1, int(max_batch))
        self.stats = ServiceStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None
        self._thread = threading.Thread(target=self._work, name="tributary-predict", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # -- requests -----------------------------------------------------------------------------

    def parse(self, body: Any) -> tuple[Any, np.ndarray, int, int, int]:
        """(task, rows, at, top_k, explain) of a request body, or :class:`_Refused`."""
        from tributary_core.timeconv import to_epoch_us

        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object")
        unknown = sorted(set(body) - {"task", "keys", "at", "top_k", "explain"})
        if unknown:
            raise _Refused(400, f"unknown field(s): {', '.join(unknown)} (fields: task, keys, at, "
                                f"top_k, explain)")
        name = body.get("task")
        if not isinstance(name, str) or not name:
            raise _Refused(400, "'task' must be a task name (GET /v1/tasks lists them)")
        try:
            task = self.predictor.task(name)
        except TributaryError as exc:
            raise _Refused(404, str(exc), "not_found_error") from None
        keys = body.get("keys")
        if not isinstance(keys, list) or not keys:
            raise _Refused(400, "'keys' must be a non-empty list of the anchor table's key values")
        if len(keys) > MAX_KEYS:
            raise _Refused(413, f"'keys' holds {len(keys)} keys; at most {MAX_KEYS} per request")
        if not all(isinstance(k, (int, str)) and not isinstance(k, bool) for k in keys):
            raise _Refused(400, "'keys' must hold whole numbers or strings")
        if any(isinstance(k, int) and not -(2**63) <= k < 2**63 for k in keys):
            raise _Refused(400, "'keys' holds a number too large to be a key (keys are 64-bit "
                                "whole numbers or strings)")
        top_k = _count(body, "top_k", 3, 1000)
        explain = _count(body, "explain", 0, MAX_EXPLAIN)
        at = body.get("at")
        if at is None:
            when = self.predictor.latest_time(task)
        else:
            if not isinstance(at, str):
                raise _Refused(400, "'at' must be a time in ISO 8601, e.g. \"2013-12-01T00:00:00Z\"")
            conv = to_epoch_us(pa.array([at]))
            if not conv.valid[0]:
                raise _Refused(400, f"'at': {at!r} is not a time (use ISO 8601, e.g. "
                                    f"\"2013-12-01T00:00:00Z\")")
            when = int(conv.values[0])
        try:
            rows = self.predictor.rows_of_keys(task, keys, "'keys'")
            self.predictor.check_times(task, rows, when)
        except TributaryError as exc:
            raise _Refused(400, str(exc)) from None
        return task, rows, when, top_k, explain

    async def predict(self, task: Any, rows: np.ndarray, at: int, top_k: int,
                      explain: int) -> pa.Table:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(task, rows, at, top_k, explain, loop, future))
        return await future

    # -- the worker ---------------------------------------------------------------------------

    def _next(self, block: bool) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get() if block else self._queue.get_nowait()

    def _work(self) -> None:
        while True:
            first = self._next(True)
            if first is None:
                return
            group, size = [first], len(first.rows)
            while size < self.max_batch:
                try:
                    job = self._next(False)
                except queue.Empty:
                    break
                if job is None:  # closing: answer what was taken, then stop
                    self._queue.put(None)
                    break
                if job.signature != first.signature or size + len(job.rows) > self.max_batch:
                    self._held = job
                    break
                group.append(job)
                size += len(job.rows)
            self._run(group)

    def _run(self, group: list[_Job]) -> None:
        first = group[0]
        try:
            rows = np.concatenate([job.rows for job in group])
            table = self.predictor.answer_rows(first.task, rows, first.at, top_k=first.top_k,
                                               explain=first.explain)
            self.stats.batches += 1
            self.stats.requests += len(group)
            self.stats.keys += len(rows)
            start = 0
            for job in group:
                part = table.slice(start, len(job.rows))
                start += len(job.rows)
                job.loop.call_soon_threadsafe(_settle, job.future, part, None)
        except BaseException as exc:  # handed to the requests, which answer 500
            for job in group:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)


def _settle(future: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _count(body: dict, name: str, default: int, most: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise _Refused(400, f"'{name}' must be a whole number from 0 to {most}")
    return value


def _json_value(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _answer(task: Any, table: pa.Table, key_column: str) -> dict[str, Any]:
    rows = table.to_pylist()
    times = {r["observation_time"] for r in rows}
    out = []
    for r in rows:
        item = {"key": r[key_column]}
        for name in ("prediction", "probability", "top_k", "p_null", "explanation"):
            if name in r:
                item[name] = _json_value(r[name])
        out.append(item)
    when = next(iter(times)) if len(times) == 1 else None
    return {"task": task.key, "observation_time": _json_value(when), "predictions": out}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tributary model service", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"}}}}},
            "PredictRequest": {"type": "object", "required": ["task", "keys"],
                               "additionalProperties": False, "properties": {
                "task": {"type": "string", "description": "task or db/task"},
                "keys": {"type": "array", "minItems": 1, "maxItems": MAX_KEYS,
                         "items": {"type": ["integer", "string"]},
                         "description": "key values of the task's anchor table"},
                "at": {"type": "string", "format": "date-time",
                       "description": "observation time (default: the database's latest)"},
                "top_k": {"type": "integer", "minimum": 0, "default": 3},
                "explain": {"type": "integer", "minimum": 0, "maximum": MAX_EXPLAIN,
                            "default": 0}}},
            "PredictResponse": {"type": "object", "properties": {
                "task": {"type": "string"},
                "observation_time": {"type": ["string", "null"], "format": "date-time"},
                "predictions": {"type": "array", "items": {"type": "object", "properties": {
                    "key": {"type": ["integer", "string"]},
                    "prediction": {"description": "probability of true, class, value or time"},
                    "probability": {"type": "number"},
                    "top_k": {"type": "array", "items": {"type": "object"}},
                    "p_null": {"type": "number"},
                    "explanation": {"type": "array", "items": {"type": "object"}}}}}}},
        },
    },
    "paths": {
        "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/v1/tasks": {"get": {"summary": "The run's tasks", "security": [{"bearer": []}],
                              "responses": {"200": {"description": "the tasks"}}}},
        "/v1/predict": {"post": {
            "summary": "Predict a task for entities at a time", "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
            "responses": {
                "200": {"description": "predictions", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                **{code: {"description": what, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}
                   for code, what in (("400", "a bad request"), ("401", "no or a wrong key"),
                                      ("404", "no such task"), ("413", "too large"))}}}},
        "/openapi.json": {"get": {"summary": "This description",
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    },
}


def model_app(service: ModelService, *, api_key: str | None = None,
              max_body_bytes: int = MAX_BODY_BYTES):
    """The Starlette application serving ``service``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    expected = f"Bearer {api_key}".encode() if api_key else None

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, expected)

    def refuse(status: int, message: str, kind: str = "invalid_request_error"):
        service.stats.rejected += 1
        return _error(status, message, kind)

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request):
        return JSONResponse(OPENAPI)

    async def tasks(request: Request):
        if not authorized(request):
            return refuse(401, "missing or wrong API key (Authorization: Bearer <key>)",
                          "authentication_error")
        return JSONResponse({"tasks": [service.predictor.describe(t)
                                       for t in service.predictor.tasks()]})

    async def predict(request: Request):
        if not authorized(request):
            return refuse(401, "missing or wrong API key (Authorization: Bearer <key>)",
                          "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            if not length.isdigit():
                return refuse(400, "Content-Length is not a number")
            return refuse(413, f"the body is {int(length):,} bytes; at most {max_body_bytes:,}")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > max_body_bytes:
                    return refuse(413, f"the body is over {max_body_bytes:,} bytes")
        except ClientDisconnect:
            return refuse(400, "the client went away before sending the whole body")
        try:
            parsed = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            return refuse(400, "the body is not JSON")
        except RecursionError:
            return refuse(400, "the body nests too deeply (a request is one flat JSON object)")
        try:
            task, rows, at, top_k, explain = service.parse(parsed)
        except _Refused as exc:
            return refuse(exc.status, exc.message, exc.kind)
        try:
            table = await service.predict(task, rows, at, top_k, explain)
        except TributaryError as exc:
            return refuse(400, str(exc))
        key_column = [c for c in table.column_names if c not in ("observation_time",)][0]
        return JSONResponse(_answer(task, table, key_column))

    async def http_error(request: Request, exc: HTTPException):
        """Starlette's own refusals (no such path, a wrong method) as the service's JSON errors."""
        if exc.status_code == 404:
            paths = ", ".join(r.path for r in routes)
            response = refuse(404, f"no endpoint {request.url.path} (endpoints: {paths})",
                              "not_found_error")
        elif exc.status_code == 405:
            allowed = exc.headers.get("Allow", "") if exc.headers else ""
            response = refuse(405, f"{request.method} is not allowed on {request.url.path} "
                                   f"(allowed: {allowed})")
            response.headers["Allow"] = allowed
        else:
            response = refuse(exc.status_code, str(exc.detail))
        return response

    routes = [Route("/health", health), Route("/openapi.json", openapi),
              Route("/v1/tasks", tasks), Route("/v1/predict", predict, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        service.close()  # after uvicorn has finished the requests in flight

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False  # /v1/predict/ is an unknown path (a JSON 404), not a 307
    return app


def serve(app: Any, sockets: Sequence[socket.socket], *, access_log: bool = True,
          limit_concurrency: int | None = 64) -> None:
    """Run ``app`` on uvicorn over ``sockets`` until Ctrl-C or SIGTERM (graceful shutdown)."""
    import uvicorn

    config = uvicorn.Config(app, access_log=access_log, log_level="info",
                            limit_concurrency=limit_concurrency, timeout_graceful_shutdown=10,
                            server_header=False)
    uvicorn.Server(config).run(sockets=list(sockets))
