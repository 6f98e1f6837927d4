"""Sliding-window limits on attempts (logins, sign-ups), kept in memory.

The dashboard is one process (Datasette on one event loop), so a dict is the whole story:
nothing is shared between processes, and a restart forgets the counts."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from llm_monitor.errors import RateLimited

MAX_KEYS = 100_000  # beyond this, the oldest keys are forgotten: memory stays bounded


class SlidingWindow:
    """At most `limit` hits per key in any `seconds`-long window."""

    def __init__(
        self, limit: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.seconds = seconds
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits

    def retry_after(self, key: str) -> int | None:
        """Seconds until `key` may try again, or None if it may now."""
        now = self.clock()
        hits = self._recent(key, now)
        if len(hits) < self.limit:
            return None
        return max(1, math.ceil(hits[0] + self.seconds - now))

    def check(self, key: str, what: str) -> None:
        """RateLimited when `key` has used up its window."""
        wait = self.retry_after(key)
        if wait is not None:
            raise RateLimited(f"too many {what}; try again in {wait} s", wait)

    def hit(self, key: str) -> None:
        now = self.clock()
        hits = self._recent(key, now)
        if not hits:
            if len(self._hits) >= MAX_KEYS:
                self._hits.pop(next(iter(self._hits)))
            self._hits[key] = hits
        hits.append(now)

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)
