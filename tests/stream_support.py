"""What the DingTalk Stream and Feishu long-connection tests share: row counts,
inbound counters, and two bot processes holding connections to one app."""
from __future__ import annotations

import asyncio

from sqlalchemy import func
from sqlmodel import select

from app.web import RUNTIME, create_app
from storage.models import InboxEvent, Ticket
from support import config_toml, load_toml


async def count(rt, model) -> int:
    async with rt.db.session() as s:
        return (await s.exec(select(func.count()).select_from(model))).one()


def inbound(rt, platform: str, result: str) -> float:
    return rt.metrics.registry.get_sample_value("relaydesk_inbound_events_total",
                                                {"platform": platform, "result": result}) or 0.0


def stream_config(database_url: str, section: str, people: str) -> str:
    """A config with one stream-mode channel `section`. Each report makes its own ticket:
    what these tests count is transport (none lost, none twice), not incident grouping,
    which would link reports about the same place."""
    return config_toml(database_url, section, people, "[incidents]\nenabled = false",
                       top="allow_unknown_reporters = true")


async def start_process(text: str, platform: str, timings, tmp_path, aiohttp_client, name: str = "relaydesk"):
    """One bot process (a Runtime and its HTTP app) with fast stream timings, recording
    and acknowledging events that its inbox worker applies later, as in production."""
    app = create_app(load_toml(tmp_path, text, f"{name}.toml"), workers=False)
    rt = app[RUNTIME]
    rt.channels.get(platform).stream.timings = timings
    client = await aiohttp_client(app)
    rt.bot.defer_inbound = True
    return client, rt


async def two_processes(text: str, platform: str, timings, gateway, tmp_path, aiohttp_client):
    """Two Runtimes on one database (two bot processes), each with its own connection to
    the fake gateway's app; returns (clients, runtimes) once both are connected."""
    clients, runtimes = [], []
    for name in ("first", "second"):
        client, rt = await start_process(text, platform, timings, tmp_path, aiohttp_client, name)
        clients.append(client)
        runtimes.append(rt)
    while gateway.connections < 2:  # both connected before the first push
        await asyncio.sleep(0.05)
    return clients, runtimes


async def drain_together(runtimes) -> None:
    """The processes' inbox workers at once, until none finds anything."""
    while sum(await asyncio.gather(*(rt.inbox.drain() for rt in runtimes))):
        pass


async def assert_one_ticket_each(rt, reports: int) -> None:
    """Every report recorded once and applied into a ticket of its own."""
    assert await count(rt, InboxEvent) == reports
    await drain_together([rt])
    async with rt.db.session() as s:
        reporters = (await s.exec(select(Ticket.reporter_id))).all()
    assert len(reporters) == reports and len(set(reporters)) == reports
