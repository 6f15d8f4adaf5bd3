"""The HTTP client a platform API uses: httpx's interface over aiohttp's connection pool.

The platform clients are written against httpx (and tested with respx), but
httpx's own pool (httpcore) walks every connection for each request it starts
and each answer it finishes, asking each idle socket whether the far end closed
it (a system call). When the outbox sent one message to each of a storm's two
hundred customers at once, the pool grew to a hundred connections and the walk
cost more than the sends: httpx was a third of the delivering process's CPU.
The aiohttp transport (httpx-aiohttp, from httpx's maintainers) keeps the same
client API over aiohttp's pool, which hands out a kept-alive connection without
a walk.

The outbox also keeps at most a channel's `sends_in_flight` sends going at once
(bot/outbox.py); the pool keeps that many connections open, and a few more.
"""
from __future__ import annotations

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from bot.channel import SENDS_IN_FLIGHT

# Room beyond the sends for the calls made meanwhile (tokens, media, user lookups).
_SPARE = 4


def api_client(base_url: str, timeout: float, **kw) -> httpx.AsyncClient:
    """An httpx client for one API host: at most SENDS_IN_FLIGHT + a few connections, all kept alive."""
    size = SENDS_IN_FLIGHT + _SPARE
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return HttpxAiohttpClient(base_url=base_url, timeout=timeout, limits=limits, **kw)
