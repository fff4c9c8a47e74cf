"""Embedders behind an OpenAI-compatible ``POST /v1/embeddings``: ``baseten``, ``openrouter``
and ``http`` (any such server, e.g. ``tributary serve embedder``).

Batches go out by count and by characters, several at once (``concurrency``) over one httpx
connection pool. A batch is retried with exponential backoff and jitter on 429 (waiting at
least what ``Retry-After`` asks, fractional seconds included), 408, 5xx, timeouts and dropped
connections, up to ``max_retries`` times; any other status (400, 401, 403, 404, ...) fails at
once with the server's message. Every response is checked: one embedding per input, indices a
permutation of ``0..n-1`` (results are put back in input order), one width for all, finite
values (the base class then refuses zero vectors and non-finite norms). The API key goes only
into the ``Authorization`` header: it is removed from every message this module writes, and the
embedder's ``repr`` leaves it out. Messages, the ``repr`` and the cache's :attr:`source` show the
endpoint without any user:password or query string (:func:`public_url`).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, ClassVar

import httpx
import numpy as np

from tributary_core.embedder import (
    DEFAULT_DIMENSION,
    Embedder,
    require_choice,
    require_float,
    require_int,
)
from tributary_core.errors import TributaryError
from tributary_core.http import (
    check_api_key,
    check_base_url,
    error_detail,
    post_with_retries,
    public_url,
)

__all__ = ["OpenAICompatibleEmbedder", "BasetenEmbedder", "OpenRouterEmbedder", "HttpEmbedder",
           "embeddings_endpoint", "public_url", "MAX_CONCURRENCY", "MAX_RETRIES"]

#: The most requests in flight (each is a thread and a connection).
MAX_CONCURRENCY = 256
#: The most retries of one batch.
MAX_RETRIES = 100


def embeddings_endpoint(base_url: str) -> str:
    """``https://host/v1`` or ``https://host`` or ``.../embeddings`` -> the embeddings URL."""
    url = base_url.rstrip("/")
    if url.endswith("/embeddings"):
        return url
    if url.endswith("/v1"):
        return url + "/embeddings"
    return url + "/v1/embeddings"


class OpenAICompatibleEmbedder(Embedder):
    """Base of the HTTP backends. Subclasses set where the URL and key come from."""

    url_env: ClassVar[str | None] = None
    key_env: ClassVar[str | None] = None
    default_base_url: ClassVar[str | None] = None
    key_required: ClassVar[bool] = True
    batch_size = 256
    max_batch_chars = 200_000
    options = {"base_url": str, "concurrency": int, "timeout": float, "max_retries": int,
               "encoding_format": str, "batch_size": int, "max_batch_chars": int}

    def __init__(
        self,
        *,
        model: str | None = None,
        dimension: int = DEFAULT_DIMENSION,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 8,
        encoding_format: str = "base64",
        batch_size: int | None = None,
        max_batch_chars: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__(model=model, dimension=dimension)
        owner = f"embedder {self.name!r}"
        if base_url is not None:  # -E base_url=... (an empty one is a mistake, not "the default")
            base_url = check_base_url(base_url, f"{owner}: -E base_url")
        elif self.url_env and os.environ.get(self.url_env):
            base_url = check_base_url(os.environ[self.url_env], f"{owner}: {self.url_env}")
        elif self.default_base_url:
            base_url = self.default_base_url
        else:
            raise TributaryError(f"{owner}: set {self.url_env} to the server's "
                                 f"OpenAI-compatible base URL (or pass -E base_url=...)")
        if api_key is not None:
            self._key = check_api_key(api_key, "the API key", owner)
        else:
            self._key = check_api_key(os.environ.get(self.key_env) if self.key_env else None,
                                      str(self.key_env), owner)
        if self.key_required and not self._key:
            raise TributaryError(f"{owner}: set {self.key_env} to your API key")
        encoding_format = require_choice(owner, "encoding_format", encoding_format, ("base64", "float"))
        concurrency = require_int(owner, "concurrency", concurrency, 1, MAX_CONCURRENCY)
        max_retries = require_int(owner, "max_retries", max_retries, 0, MAX_RETRIES)
        timeout = require_float(owner, "timeout", timeout, minimum=0.0)
        if batch_size is not None:
            self.batch_size = require_int(owner, "batch_size", batch_size, 1)
        if max_batch_chars is not None:
            self.max_batch_chars = require_int(owner, "max_batch_chars", max_batch_chars, 1)
        backoff_base = require_float(owner, "backoff_base", backoff_base, minimum=0.0, inclusive=True)
        backoff_max = require_float(owner, "backoff_max", backoff_max, minimum=0.0, inclusive=True)
        self.endpoint = embeddings_endpoint(base_url)
        self._public_endpoint = public_url(self.endpoint)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.encoding_format = encoding_format
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self._pool: ThreadPoolExecutor | None = None
        self._closed = threading.Event()
        self._count_lock = threading.Lock()
        #: Attempts made (first tries and retries) and retries alone, for summaries and tests.
        self.requests = 0
        self.retries = 0
        if not self.model:
            try:
                self.model = self._only_served_model()
            except TributaryError:
                self._client.close()
                raise

    # -- public ----------------------------------------------------------------------------

    def embed_batches(self, batches: Sequence[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"embed-{self.name}")
        todo = iter(enumerate(batches))
        pending: dict[Future, tuple[int, list[str]]] = {}
        try:
            while True:
                while len(pending) < 2 * self.concurrency:
                    item = next(todo, None)
                    if item is None:
                        break
                    pending[self._pool.submit(self._request, item[1])] = item
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index, batch = pending.pop(future)
                    yield index, self.finish(batch, future.result())
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._client.close()

    @property
    def source(self) -> str:
        """The endpoint, without credentials or query: one server's vectors are cached apart
        from another's."""
        return self._public_endpoint

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} {self.name!r} model={self.model!r} url={self.source!r}>"

    # -- one batch -------------------------------------------------------------------------

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        return self._request(texts)

    def _request(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}

        def before_attempt(attempt: int) -> None:
            if self._closed.is_set():
                raise TributaryError(f"embedder {self.name!r} was closed")
            with self._count_lock:
                self.requests += 1
                self.retries += attempt > 0

        def pause(delay: float, _last: str) -> None:
            if self._closed.wait(delay):
                raise TributaryError(f"embedder {self.name!r} was closed")

        response, last = post_with_retries(
            self._client, self.endpoint, body, max_retries=self.max_retries,
            backoff_base=self.backoff_base, backoff_max=self.backoff_max,
            before_attempt=before_attempt, wait=pause)
        if response is None:
            raise TributaryError(self._redact(
                f"embedder {self.name!r}: {self.source}: gave up after {self.max_retries + 1} "
                f"attempts; the last: {last}"))
        if response.status_code != 200:
            raise TributaryError(self._refused(response))
        return self._parse(response, texts)

    def _parse(self, response: httpx.Response, texts: list[str]) -> np.ndarray:
        where = f"embedder {self.name!r}: {self.source}"
        try:
            payload = response.json()
        except ValueError:
            raise TributaryError(f"{where} answered with something that is not JSON") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise TributaryError(f"{where}: the response has no 'data' list")
        if len(data) != len(texts):
            raise TributaryError(f"{where}: the response has {len(data)} embeddings for "
                                 f"{len(texts)} inputs")
        rows: list[np.ndarray | None] = [None] * len(texts)
        for pos, item in enumerate(data):
            index = item.get("index", pos) if isinstance(item, dict) else None
            if (not isinstance(index, int) or isinstance(index, bool)
                    or not 0 <= index < len(texts) or rows[index] is not None):
                raise TributaryError(f"{where}: response item {pos} has index {index!r}; the "
                                     f"indices must be 0..{len(texts) - 1}, each once")
            rows[index] = self._vector(item.get("embedding"), where, pos)
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise TributaryError(f"{where}: embeddings of different widths {sorted(widths)}")
        return np.stack(rows)

    @staticmethod
    def _vector(value: Any, where: str, pos: int) -> np.ndarray:
        if isinstance(value, str):
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise TributaryError(f"{where}: embedding {pos} is not valid base64") from None
            if len(raw) % 4 or not raw:
                raise TributaryError(f"{where}: embedding {pos} is {len(raw)} bytes, not float32s")
            return np.frombuffer(raw, dtype="<f4")
        if isinstance(value, list) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            with np.errstate(over="ignore"):
                try:
                    return np.asarray(value, dtype=np.float64).astype(np.float32)
                except OverflowError:  # an integer too large for any float
                    raise TributaryError(f"{where}: embedding {pos} holds a number too large "
                                         f"for a float") from None
        raise TributaryError(f"{where}: embedding {pos} is neither a list of numbers nor base64")

    # -- messages --------------------------------------------------------------------------

    def _refused(self, response: httpx.Response) -> str:
        hint = ""
        if response.status_code in (401, 403) and self.key_env:
            hint = f" (check {self.key_env})"
        elif response.status_code == 404:
            hint = " (check the base URL and the model name)"
        return self._redact(
            f"embedder {self.name!r}: {self.source} refused the request: HTTP "
            f"{response.status_code} {response.reason_phrase}{error_detail(response)}{hint}")

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _only_served_model(self) -> str:
        url = self.endpoint.rsplit("/", 1)[0] + "/models"
        where = f"embedder {self.name!r}: no --model given and"
        try:
            response = self._client.get(url)
        except httpx.TransportError as exc:  # nothing answered: the URL is the likely mistake
            raise TributaryError(f"{where} {public_url(url)} could not be reached to ask for it "
                                 f"({type(exc).__name__}); check the base URL, or pass --model") from None
        try:
            if response.status_code in (401, 403):
                raise TributaryError(self._refused(response))
            response.raise_for_status()
            ids = [m["id"] for m in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            raise TributaryError(self._redact(f"{where} {public_url(url)} did not list the served model; "
                                              f"pass --model")) from None
        if len(ids) != 1:
            raise TributaryError(f"{where} the server offers {len(ids)} models; pass --model")
        return str(ids[0])


class BasetenEmbedder(OpenAICompatibleEmbedder):
    name = "baseten"
    description = "a Baseten deployment (BASETEN_EMBEDDER_URL, BASETEN_API_KEY)"
    url_env = "BASETEN_EMBEDDER_URL"
    key_env = "BASETEN_API_KEY"


class OpenRouterEmbedder(OpenAICompatibleEmbedder):
    name = "openrouter"
    description = "OpenRouter embeddings (OPENROUTER_API_KEY; OPENROUTER_BASE_URL to override)"
    default_model = "openai/text-embedding-3-small"
    url_env = "OPENROUTER_BASE_URL"
    key_env = "OPENROUTER_API_KEY"
    default_base_url = "https://openrouter.ai/api/v1"


class HttpEmbedder(OpenAICompatibleEmbedder):
    name = "http"
    description = "any OpenAI-compatible server, e.g. `tributary serve embedder` (TRIBUTARY_EMBEDDER_URL)"
    url_env = "TRIBUTARY_EMBEDDER_URL"
    key_env = "TRIBUTARY_EMBEDDER_API_KEY"
    key_required = False
