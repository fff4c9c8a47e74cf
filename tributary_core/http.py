"""What every HTTP client in Tributary (embedders, the drafting agent) retries, and how long."""

from __future__ import annotations

import email.utils
import random
import time

__all__ = ["RETRY_STATUS", "MAX_RETRY_AFTER", "parse_retry_after", "backoff_delay"]

#: Statuses worth another try: timeouts, rate limits, and server-side failures.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: The longest single wait a ``Retry-After`` header can impose.
MAX_RETRY_AFTER = 300.0


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
