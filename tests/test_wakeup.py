"""Workers in other processes are woken when an event is recorded (PostgreSQL LISTEN/NOTIFY)."""
from __future__ import annotations

import asyncio

import pytest

from app.runtime import Runtime
from bot.events import Address, InboundEvent
from bot.wakeup import INBOX_CHANNEL, Poker, listen


async def _listening(url: str, woken: asyncio.Event) -> asyncio.Task:
    task = asyncio.create_task(listen(url, INBOX_CHANNEL, woken.set))
    await asyncio.wait_for(woken.wait(), 10)  # it wakes once on connecting (it may have missed one)
    woken.clear()
    return task


async def test_pokes_wake_the_listener_and_a_burst_of_them_costs_a_few_notifications(pg_database_url):
    woken = asyncio.Event()
    task = await _listening(pg_database_url, woken)
    heard = 0

    def count() -> None:
        nonlocal heard
        heard += 1
        woken.set()

    poker = Poker(pg_database_url, INBOX_CHANNEL)
    try:
        poker.poke()
        await asyncio.wait_for(woken.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        task = asyncio.create_task(listen(pg_database_url, INBOX_CHANNEL, count))
        await asyncio.sleep(0.5)  # connected (its own wake on connecting counted too)
        heard = 0
        for _ in range(40):  # forty callbacks answered at once
            poker.poke()
        await asyncio.sleep(1.0)
        assert 1 <= heard <= 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await poker.close()


async def test_a_poke_without_a_database_is_logged_and_the_next_one_tries_again(caplog):
    poker = Poker("postgresql+asyncpg://nobody@127.0.0.1:1/none", INBOX_CHANNEL)
    try:
        poker.poke()
        for _ in range(100):
            if "cannot notify" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "cannot notify" in caplog.text
    finally:
        await poker.close()


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
