"""The shared access-token cache: lifetime, one fetch for concurrent callers, invalidation, failures."""
from __future__ import annotations

import asyncio

import pytest

from bot.channels.shared.access_token import AccessToken


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """Hands out tok-1, tok-2, ... with a fixed ttl; can be made slow or failing."""

    def __init__(self, ttl: float = 7200, delay: float = 0.0):
        self.ttl = ttl
        self.delay = delay
        self.calls = 0
        self.fail: Exception | None = None

    async def __call__(self) -> tuple[str, float]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return f"tok-{self.calls}", self.ttl


def make(fetch: Fetcher, clock: Clock | None = None, **kw) -> AccessToken:
    return AccessToken(fetch, margin=kw.pop("margin", 300), clock=clock or Clock(), **kw)


async def test_cached_within_its_lifetime():
    fetch, clock = Fetcher(), Clock()
    token = make(fetch, clock)
    assert await token.get() == "tok-1"
    clock.now += 7200 - 301  # just inside the margin
    assert await token.get() == "tok-1"
    assert fetch.calls == 1 and token.fetches == 1


async def test_refreshed_after_expiry():
    fetch, clock = Fetcher(), Clock()
    token = make(fetch, clock)
    assert await token.get() == "tok-1"
    clock.now += 7200 - 300  # the margin before the platform's expiry
    assert await token.get() == "tok-2"
    assert await token.get() == "tok-2"
    assert fetch.calls == 2 and token.fetches == 2


async def test_short_ttl_uses_the_minimum_lifetime():
    fetch, clock = Fetcher(ttl=30), Clock()
    token = make(fetch, clock)  # default minimum: 60 s
    await token.get()
    clock.now += 59
    assert await token.get() == "tok-1"
    clock.now += 1
    assert await token.get() == "tok-2"

    fetch, clock = Fetcher(ttl=400), Clock()
    token = make(fetch, clock, min_lifetime=lambda ttl: ttl / 2)
    await token.get()
    clock.now += 199
    assert await token.get() == "tok-1"
    clock.now += 1
    assert await token.get() == "tok-2"


async def test_one_fetch_for_twenty_concurrent_callers():
    fetch = Fetcher(delay=0.02)
    token = make(fetch)
    values = await asyncio.gather(*(token.get() for _ in range(20)))
    assert values == ["tok-1"] * 20
    assert fetch.calls == 1 and token.fetches == 1


async def test_invalidating_the_current_value_refetches_once():
    fetch = Fetcher(delay=0.01)
    token = make(fetch)
    refused = await token.get()

    async def retry() -> str:
        token.invalidate(refused)
        return await token.get()

    # Every caller that used the refused token invalidates it: one refetch for all.
    values = await asyncio.gather(*(retry() for _ in range(10)))
    assert values == ["tok-2"] * 10
    assert fetch.calls == 2 and token.fetches == 2


async def test_invalidating_an_older_value_keeps_the_current_one():
    fetch, clock = Fetcher(), Clock()
    token = make(fetch, clock)
    old = await token.get()
    token.invalidate(old)
    assert await token.get() == "tok-2"
    token.invalidate(old)  # a late caller that still held tok-1
    assert await token.get() == "tok-2"
    assert fetch.calls == 2


async def test_a_failing_fetch_propagates_and_the_next_call_retries():
    fetch = Fetcher()
    token = make(fetch)
    fetch.fail = RuntimeError("platform down")
    with pytest.raises(RuntimeError, match="platform down"):
        await token.get()
    assert token.fetches == 0
    fetch.fail = None
    assert await token.get() == "tok-2"  # nothing cached from the failure: fetched again
    assert fetch.calls == 2 and token.fetches == 1


async def test_concurrent_callers_all_see_a_failure_and_nothing_is_cached():
    fetch = Fetcher(delay=0.01)
    token = make(fetch)
    fetch.fail = RuntimeError("platform down")
    results = await asyncio.gather(*(token.get() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    fetch.fail = None
    assert await token.get() == f"tok-{fetch.calls}"
    assert token.fetches == 1
