"""What every HTTP client in Tributary (embedders, the drafting agent) retries, how long it
waits, and how it reports a server's error: :func:`post_with_retries`, :func:`error_detail`;
and what it accepts from the user before the first request: :func:`check_base_url`,
:func:`check_api_key` (a key is never part of a message)."""

from __future__ import annotations

import email.utils
import random
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx

from tributary_core.errors import TributaryError

__all__ = ["RETRY_STATUS", "MAX_RETRY_AFTER", "parse_retry_after", "backoff_delay", "error_detail",
           "post_with_retries", "public_url", "check_base_url", "check_api_key"]

#: Statuses worth another try: timeouts, rate limits, and server-side failures.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: The longest single wait a ``Retry-After`` header can impose.
MAX_RETRY_AFTER = 300.0


def public_url(url: str) -> str:
    """``url`` without user:password, query or fragment: what may be shown and cached."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_base_url(url: str, what: str) -> str:
    """``url`` if it can be a server's base URL: ``http://`` or ``https://``, a host, a valid
    port, no spaces or control characters, no query or fragment (a path is appended to it).
    Otherwise a :class:`TributaryError` naming ``what`` (the option or variable it came from)
    and showing the URL without credentials."""
    def refuse(rule: str) -> TributaryError:
        return TributaryError(f"{what}: {public_url(url)!r} {rule}")

    if not url or not url.strip():
        raise TributaryError(f"{what}: the URL is empty")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise refuse("holds a space or a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        raise refuse("is not a valid URL (check the host and the port)") from None
    if parts.scheme not in ("http", "https"):
        raise refuse("must start with http:// or https://")
    if not parts.hostname:
        raise refuse("has no host")
    if port == 0:
        raise refuse("has port 0")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise refuse("must have no query (?...) or fragment (#...): a path is appended to it")
    return url


def check_api_key(key: str | None, env: str, owner: str) -> str | None:
    """An API key from ``env`` as it will be sent, or None when unset or blank. Whitespace
    around it (a newline read from a file) is dropped; a key holding a character an HTTP header
    cannot carry (inner whitespace, control or non-ASCII characters) is refused, naming
    ``env`` and never the key."""
    if key is None or not key.strip():
        return None
    key = key.strip()
    if not all(33 <= ord(c) <= 126 for c in key):
        raise TributaryError(f"{owner}: {env} holds a character an HTTP header cannot carry "
                             f"(a space, a control or a non-ASCII character); check its value")
    return key


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number (fractions allowed) or an HTTP date."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Seconds to wait before retry ``attempt + 1``: what ``Retry-After`` asks (plus a little
    jitter), else exponential backoff with jitter, at most ``cap``."""
    if retry_after is not None:
        return retry_after + random.uniform(0.0, 0.1 * retry_after + 0.01)
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


def error_detail(response: httpx.Response) -> str:
    """``": <the server's message>"`` (its ``error.message`` if it sent one), one line, at most
    200 characters; empty when the body says nothing."""
    try:
        payload = response.json()
        err = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = err.get("message") if isinstance(err, dict) else err
        text = str(message if message is not None else payload)
    except ValueError:
        text = response.text
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""


def post_with_retries(client: httpx.Client, url: str, body: Any, *, max_retries: int,
                      backoff_base: float, backoff_max: float,
                      before_attempt: Callable[[int], None] = lambda _attempt: None,
                      wait: Callable[[float, str], None] = lambda delay, _last: time.sleep(delay),
                      ) -> tuple[httpx.Response | None, str]:
    """POST ``body`` as JSON until the answer is final: ``(response, "")`` for a 200 or a status
    not worth retrying, ``(None, last failure)`` once ``max_retries`` retries are spent.

    Timeouts, dropped connections and :data:`RETRY_STATUS` are retried after
    :func:`backoff_delay` (honouring ``Retry-After``). ``before_attempt(attempt)`` runs before
    each try (to count it, or to raise when the caller was closed); ``wait(delay, last)`` does
    the waiting (to log it, or to wake early and raise)."""
    last = ""
    for attempt in range(max_retries + 1):
        before_attempt(attempt)
        retry_after = None
        try:
            response = client.post(url, json=body)
        except httpx.TimeoutException:
            last = "the request timed out"
        except httpx.TransportError as exc:
            last = f"the connection failed ({type(exc).__name__})"
        else:
            if response.status_code == 200 or response.status_code not in RETRY_STATUS:
                return response, ""
            last = f"HTTP {response.status_code}{error_detail(response)}"
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        if attempt < max_retries:
            wait(backoff_delay(attempt, backoff_base, backoff_max, retry_after), last)
    return None, last


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port), for the servers
    (``serve model``, ``serve embedder``), taken before a model loads so that a port in use
    fails at once; a one-line error otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TributaryError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
