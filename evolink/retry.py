"""When and how long to wait before repeating a call.

Only calls that are safe to repeat get here: GETs, and the create POST when it carries an
Idempotency-Key. The server's own hint (`Retry-After`, or the envelope's `fallback_suggestion`
such as "retry after 60 seconds") beats our backoff, capped so a bad header cannot park a worker.

This is the innermost of five retry layers; the table of all of them (Prefect task retries,
resubmission, S3, the polling deadline) is the docstring of `prefect_evolink.tasks.steps`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from evolink.errors import EvoLinkError, RateLimitError

DEFAULT_MAX_ATTEMPTS: Final = 4
DEFAULT_BASE_DELAY: Final = 0.5
DEFAULT_MAX_DELAY: Final = 20.0
DEFAULT_MAX_SERVER_HINT: Final = 120.0
DEFAULT_JITTER: Final = 0.25

_SUGGESTION_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.IGNORECASE)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard


def seconds_from_suggestion(text: str | None) -> float | None:
    """`"retry after 60 seconds"` → 60.0."""
    match = _SUGGESTION_SECONDS.search(text or "")
    return float(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and backoff for repeatable calls. Tests shrink the delays; the shape stays."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    max_server_hint: float = DEFAULT_MAX_SERVER_HINT
    jitter: float = DEFAULT_JITTER

    def server_hint(self, error: EvoLinkError) -> float | None:
        if not isinstance(error, RateLimitError):
            return None
        hint = error.retry_after
        if hint is None:
            hint = seconds_from_suggestion(error.fallback_suggestion)
        return None if hint is None else min(hint, self.max_server_hint)

    def delay(self, attempt: int, error: EvoLinkError, rng: random.Random | None = None) -> float:
        """Wait before attempt `attempt + 1` (attempt counts from 1)."""
        hint = self.server_hint(error)
        if hint is not None:
            return hint  # the server asked for exactly this; jitter would only add to it
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        spread = backoff * self.jitter
        offset: float = (rng or random).uniform(-spread, spread)
        return max(0.0, backoff + offset)

    def should_retry(self, attempt: int, error: EvoLinkError) -> bool:
        return error.retryable and attempt < self.max_attempts
