"""Workers in other processes are woken when an event is recorded (PostgreSQL LISTEN/NOTIFY)."""
from __future__ import annotations

import asyncio

import pytest

from app.runtime import Runtime
from bot.events import Address, InboundEvent
from bot.wakeup import INBOX_CHANNEL, listen, notify_inbox
from storage.db import Database


async def _listening(url: str, woken: asyncio.Event) -> asyncio.Task:
    task = asyncio.create_task(listen(url, INBOX_CHANNEL, woken.set))
    await asyncio.wait_for(woken.wait(), 10)  # it wakes once on connecting (it may have missed one)
    woken.clear()
    return task


async def test_a_notification_wakes_the_listener_at_commit_only(pg_database_url):
    db = Database(pg_database_url)
    await db.init()
    woken = asyncio.Event()
    task = await _listening(pg_database_url, woken)
    try:
        async with db.session() as s:
            await notify_inbox(s)
            await asyncio.sleep(0.3)
            assert not woken.is_set()  # not before the transaction commits
        await asyncio.wait_for(woken.wait(), 5)
        woken.clear()
        with pytest.raises(RuntimeError):
            async with db.session() as s:
                await notify_inbox(s)
                raise RuntimeError("rolled back")
        await asyncio.sleep(0.5)
        assert not woken.is_set()  # a rolled-back event wakes nobody
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.dispose()


async def test_an_accepted_message_wakes_a_worker_in_another_process(make_config, pg_database_url):
    from tests.conftest import reset_postgres

    await reset_postgres(pg_database_url)
    answering = Runtime(make_config(pg_database_url))  # the serving process: answers only
    await answering.start(workers=False, defer_inbound=True)
    woken = asyncio.Event()
    task = await _listening(pg_database_url, woken)
    try:
        result = await answering.bot(InboundEvent(
            platform="playground", event_id="w1", sender_id="cust_wang", kind="text",
            conversation=Address("playground", "user", "cust_wang"), text="3号线水泵漏水停机了"))
        assert not result.duplicate
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await answering.stop()
