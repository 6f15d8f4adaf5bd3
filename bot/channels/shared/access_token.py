"""A cached platform access token, shared by the IM API clients.

The token is fetched on first use and kept until shortly before it expires;
concurrent callers that find it missing or expired wait for one fetch under a
lock. When the platform refuses a token, the caller invalidates the value it
used and asks again: only the first such caller causes a refetch, the others
get the replacement.

Fetching (the platform's endpoint, its answer and its errors) stays in each
client: `fetch` returns the token and its lifetime in seconds as announced by
the platform, or raises.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

Fetch = Callable[[], Awaitable[tuple[str, float]]]


class AccessToken:
    """One cached access token; concurrent callers share a single refresh.

    The token is trusted for `ttl - margin` seconds, but at least
    `min_lifetime` (seconds, or a function of the announced ttl) so a short
    ttl does not cause a fetch per call.
    """

    def __init__(self, fetch: Fetch, *, margin: float,
                 min_lifetime: float | Callable[[float], float] = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self.margin = margin
        self.min_lifetime = min_lifetime
        self.clock = clock
        self._value: str | None = None
        self._expires = 0.0  # on `clock`
        self._lock = asyncio.Lock()
        self.fetches = 0  # successful fetches, for tests and metrics

    def _current(self) -> str | None:
        if self._value and self.clock() < self._expires:
            return self._value
        return None

    def _lifetime(self, ttl: float) -> float:
        floor = self.min_lifetime(ttl) if callable(self.min_lifetime) else self.min_lifetime
        return max(ttl - self.margin, floor)

    async def get(self) -> str:
        value = self._current()
        if value:
            return value
        async with self._lock:
            value = self._current()
            if value:
                return value
            value, ttl = await self._fetch()
            self.fetches += 1
            self._value = value
            self._expires = self.clock() + self._lifetime(float(ttl))
            return value

    def invalidate(self, value: str) -> None:
        """Forget `value` (refused by the platform) unless it was replaced already."""
        if self._value == value:
            self._value = None
            self._expires = 0.0
