"""Hostile bytes on every POST endpoint: answered at once, never a 500, nothing written.

Deeply nested JSON or XML (unsigned, and signed where the platform signs the body
or a field), a declared 10^12-byte body, and a body trickled a byte at a time
each get their 4xx within 2 s; refusals are logged without tracebacks, at most
one warning per endpoint a minute.
"""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy import func
from sqlmodel import select

from app.web import RUNTIME, create_app
from channel_harness import HARNESSES, config
from storage.models import InboxEvent, PlaygroundMessage, ProcessedEvent, Ticket

# Every POST route: the channels' and the integration API's (whose own parser also limits depth).
ENDPOINTS = [path for h in HARNESSES.values() for path in h.endpoints] + ["/api/v1/tickets"]
DEPTH = 5000  # five times Python's recursion limit; the bodies stay under max_body_bytes


@pytest.fixture
async def bot(sqlite_url, tmp_path, aiohttp_client):
    app = create_app(config(tmp_path, sqlite_url), workers=False)
    client = await aiohttp_client(app)
    return client, app[RUNTIME]


async def nothing_written(rt) -> bool:
    async with rt.db.session() as s:
        for model in (InboxEvent, ProcessedEvent, Ticket, PlaygroundMessage):
            if (await s.exec(select(func.count()).select_from(model))).one():
                return False
    return True


async def raw_exchange(client, head: bytes, trickle: bytes = b"", every: float = 0.3) -> tuple[int, float]:
    """Send `head` over a fresh connection, then `trickle` a byte every `every` s; the
    status of the answer and the seconds it took (at most 5 s)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    start = time.monotonic()

    async def drip() -> None:
        for b in trickle:
            await asyncio.sleep(every)
            writer.write(bytes([b]))
            await writer.drain()

    writer.write(head)
    await writer.drain()
    dripping = asyncio.create_task(drip())
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    elapsed = time.monotonic() - start
    return int(line.split()[1]), elapsed


def head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("platform", sorted(HARNESSES))
async def test_deep_nesting_is_400_or_403_never_500(bot, platform, caplog):
    client, rt = bot
    caplog.set_level(logging.DEBUG)
    for req in HARNESSES[platform].deep(DEPTH):
        assert len(req.body) < 65536
        start = time.monotonic()
        r = await client.request(req.method, req.path, data=req.body, headers=req.headers)
        assert r.status in (400, 403), (req.path, r.status, await r.text())
        assert time.monotonic() - start < 2
        if req.headers.get("X-Lark-Signature") or "/card" in req.path or req.headers.get("sign", "x") != "x":
            assert r.status == 400, (req.path, "signed: refused for its nesting", await r.text())
    assert await nothing_written(rt)
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]
    warnings = [rec for rec in caplog.records if rec.name == "bot.inbound" and rec.levelno == logging.WARNING]
    assert len(warnings) <= len(HARNESSES[platform].endpoints)


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_declared_terabyte_is_413_at_once(bot, path):
    client, rt = bot
    status, took = await raw_exchange(client, head(path, 10**12))
    assert status == 413 and took < 2
    assert await nothing_written(rt)


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_trickled_body_is_408_within_two_seconds(bot, path):
    client, rt = bot
    status, took = await raw_exchange(client, head(path, 64), trickle=b"{" * 64, every=0.3)
    assert status == 408 and took < 2
    assert await nothing_written(rt)
