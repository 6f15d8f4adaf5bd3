"""The inbox: a message is answered once recorded, applied later exactly once,
kept and retried when applying fails, and picked up again after a restart."""
from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from bot.inbox import MAX_ATTEMPTS
from storage.models import InboxEvent, Ticket


def report(event_id: str, text: str = "3号线水泵漏水停机了", sender: str = "cust_wang") -> InboundEvent:
    return InboundEvent(platform="playground", event_id=event_id, sender_id=sender,
                        conversation=Address("playground", "user", sender), kind="text", text=text)


async def _start(make_config, url, aiohttp_client):
    app = create_app(make_config(url), workers=False)
    await aiohttp_client(app)
    rt = app[RUNTIME]
    rt.bot.defer_inbound = True
    return rt


async def _count(rt, model, *where):
    async with rt.db.session() as s:
        return len((await s.exec(select(model).where(*where))).all())


async def test_accepted_then_applied_once(make_config, database_url, aiohttp_client):
    rt = await _start(make_config, database_url, aiohttp_client)
    results = [await rt.bot(report("m1")) for _ in range(4)]
    assert [r.duplicate for r in results] == [False, True, True, True]
    assert await _count(rt, Ticket) == 0  # answered before any ticket work
    assert await _count(rt, InboxEvent, InboxEvent.status == "pending") == 1
    assert await rt.inbox.drain() == 1
    assert await _count(rt, Ticket) == 1
    assert await rt.inbox.drain() == 0
    assert await _count(rt, InboxEvent, InboxEvent.status == "done") == 1


async def test_clicks_are_still_answered_inline(make_config, sqlite_url, aiohttp_client):
    rt = await _start(make_config, sqlite_url, aiohttp_client)
    result = await rt.bot(InboundEvent(platform="playground", event_id="c1", sender_id="eng_zhang",
                                       conversation=Address("playground", "user", "eng_zhang"),
                                       kind="action", action_token="nope"))
    assert "失效" in result.toast


async def test_messages_from_one_sender_apply_in_order(make_config, sqlite_url, aiohttp_client):
    rt = await _start(make_config, sqlite_url, aiohttp_client)
    await rt.bot(report("r1"))
    await rt.bot(report("claim", "认领", sender="eng_zhang"))
    await rt.bot(report("go", "出发", sender="eng_zhang"))
    await rt.inbox.drain()
    async with rt.db.session() as s:
        t = (await s.exec(select(Ticket))).one()
    assert (t.state, t.assignee_id) == ("on_the_way", "eng_zhang")


async def test_failure_is_kept_retried_and_finally_visible(make_config, sqlite_url, aiohttp_client, monkeypatch):
    rt = await _start(make_config, sqlite_url, aiohttp_client)
    await rt.bot(report("m1"))

    async def broken(s, event):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(rt.bot, "process", broken)
    for _ in range(MAX_ATTEMPTS):
        assert await rt.inbox.process_next()
        async with rt.db.session() as s:
            row = (await s.exec(select(InboxEvent))).one()
            row.next_attempt_at = row.received_at  # make the retry due now
            s.add(row)
    async with rt.db.session() as s:
        row = (await s.exec(select(InboxEvent))).one()
    assert row.status == "dead" and row.attempts == MAX_ATTEMPTS and "hiccup" in row.last_error
    assert rt.metrics.inbox_failed.labels("playground")._value.get() == 1
    assert await _count(rt, Ticket) == 0


async def test_a_failing_event_leaves_nothing_behind_alone_or_among_others(make_config, database_url,
                                                                          aiohttp_client, monkeypatch):
    rt = await _start(make_config, database_url, aiohttp_client)
    real = rt.bot.process

    async def flaky(s, event):
        result = await real(s, event)  # files its ticket and queues its messages ...
        if "坏" in event.text:
            raise RuntimeError("bad luck")  # ... then fails: none of it may stay
        return result

    monkeypatch.setattr(rt.bot, "process", flaky)
    # Alone in its transaction (no savepoint): rolled back, its failure recorded after.
    await rt.bot(report("a1", "坏了，2号线水泵漏水", sender="cust_a"))
    assert await rt.inbox.process_batch() == 1
    assert await _count(rt, Ticket) == 0
    async with rt.db.session() as s:
        row = (await s.exec(select(InboxEvent).where(InboxEvent.event_id == "a1"))).one()
    assert (row.status, row.attempts) == ("pending", 1) and "bad luck" in row.last_error
    # Among others in one transaction: only its own savepoint rolls back.
    monkeypatch.setattr("bot.inbox.BATCH_SECONDS", 30.0)  # all three in one, however slow the machine
    await rt.bot(report("b1", "4号线水泵漏水", sender="cust_b"))
    await rt.bot(report("b2", "坏了，5号线空压机停机", sender="cust_c"))
    await rt.bot(report("b3", "6号线配电柜跳闸", sender="cust_d"))
    assert await rt.inbox.process_batch() == 3  # a1 waits for its retry
    assert await _count(rt, Ticket) == 2
    async with rt.db.session() as s:
        rows = {r.event_id: r for r in (await s.exec(select(InboxEvent))).all()}
    assert [rows[e].status for e in ("b1", "b2", "b3")] == ["done", "pending", "done"]
    assert rows["b2"].attempts == 1 and rows["a1"].attempts == 1


async def test_an_event_waiting_for_its_retry_is_pending_but_not_due(make_config, sqlite_url, aiohttp_client,
                                                                      monkeypatch):
    rt = await _start(make_config, sqlite_url, aiohttp_client)
    await rt.bot(report("m1"))
    assert (await rt.inbox.backlog(), await rt.inbox.due()) == (1, 1)

    async def broken(s, event):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(rt.bot, "process", broken)
    assert await rt.inbox.process_next()
    # Kept for a later attempt: the outbox need not hold cards back for it.
    assert (await rt.inbox.backlog(), await rt.inbox.due()) == (1, 0)
    assert rt.outbox.backlog == rt.inbox.due


async def test_accepted_events_survive_a_restart(make_config, sqlite_url, aiohttp_client):
    rt = await _start(make_config, sqlite_url, aiohttp_client)
    await rt.bot(report("m1"))
    # A new process on the same database finds the accepted event and applies it.
    rt2 = await _start(make_config, sqlite_url, aiohttp_client)
    assert await rt2.inbox.drain() == 1
    assert await _count(rt2, Ticket) == 1


async def test_running_bot_applies_and_delivers(make_config, sqlite_url, aiohttp_client):
    import asyncio

    app = create_app(make_config(sqlite_url), workers=True)
    client = await aiohttp_client(app)
    r = await client.post("/playground/api/send", json={"conversation": "user:cust_wang", "sender_id": "cust_wang",
                                                        "text": "3号线水泵漏水停机了", "client_id": "x1"})
    assert r.status == 200
    for _ in range(100):
        r = await client.get("/playground/api/messages?after=0&wait=0")
        kinds = [(m["conversation"], m["kind"]) for m in (await r.json())["messages"]]
        if ("group:engineers", "card") in kinds:
            break
        await asyncio.sleep(0.05)
    assert ("group:engineers", "card") in kinds


ADMIN = '''
[[people]]
id = "admin_qian"
name = "钱管理员"
role = "admin"
identities = { playground = "admin_qian" }
'''


async def test_an_event_failing_five_times_is_a_dead_letter_that_inbox_retry_applies_once(
        tmp_path, aiohttp_client, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from bot.config import DEFAULT_CONFIG_PATH, load_config
    from storage.models import OutboxMessage

    url = f"sqlite+aiosqlite:///{tmp_path}/relaydesk.db"
    text = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8").replace(
        'database_url = "sqlite+aiosqlite:///./data/relaydesk.db"', f'database_url = "{url}"') + ADMIN
    path = tmp_path / "relaydesk.toml"
    path.write_text(text, encoding="utf-8")
    app = create_app(load_config(path, env={}), workers=False)
    await aiohttp_client(app)
    rt = app[RUNTIME]
    rt.bot.defer_inbound = True
    await rt.bot(report("m1"))
    real = rt.bot.process

    async def broken(s, event):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(rt.bot, "process", broken)
    for _ in range(MAX_ATTEMPTS):
        assert await rt.inbox.process_next()
        async with rt.db.session() as s:
            row = (await s.exec(select(InboxEvent))).one()
            row.next_attempt_at = row.received_at
            s.add(row)
    async with rt.db.session() as s:
        row = (await s.exec(select(InboxEvent))).one()
        alerts = (await s.exec(select(OutboxMessage).where(OutboxMessage.to_id == "admin_qian"))).all()
    assert row.status == "dead" and "hiccup" in row.last_error
    assert len(alerts) == 1 and f"inbox retry {row.id}" in alerts[0].message["text"]
    assert not await rt.inbox.process_next()  # parked: not retried on its own
    await rt.inbox.update_gauges()
    assert b"relaydesk_inbox_dead_letters 1.0" in rt.metrics.render()
    monkeypatch.setattr(rt.bot, "process", real)

    root = Path(__file__).resolve().parents[1]

    def cli(*args):
        return subprocess.run([sys.executable, str(root / "run_bot.py"), "inbox", *args, "--config", str(path),
                               "--log-level", "WARNING"], capture_output=True, text=True, timeout=120, cwd=tmp_path)

    listed = cli("list")
    assert listed.returncode == 0 and f"{row.id}\tplayground\tm1" in listed.stdout and "hiccup" in listed.stdout
    retried = cli("retry")
    assert retried.returncode == 0, retried.stderr
    assert "retried 1" in retried.stdout
    assert await _count(rt, Ticket) == 1
    assert await _count(rt, InboxEvent, InboxEvent.status == "done") == 1
    again = cli("retry")
    assert "retried 0" in again.stdout
    assert await _count(rt, Ticket) == 1  # applied once


def picture(event_id: str, sender: str = "cust_wang") -> InboundEvent:
    return InboundEvent(platform="playground", event_id=event_id, sender_id=sender,
                        conversation=Address("playground", "user", sender), kind="image",
                        image_ref=f"wecom:{event_id}")


async def test_a_picture_is_announced_to_its_channel_after_it_is_applied(make_config, sqlite_url, aiohttp_client):
    """The core tells the channel when a picture message is applied and committed (WeCom fetches
    the file then); an accepted but not yet applied one, or a rolled-back one, is not announced."""
    rt = await _start(make_config, sqlite_url, aiohttp_client)
    told: list[tuple[str, int]] = []

    async def pending():
        return await _count(rt, InboxEvent, InboxEvent.status == "pending")

    def remember(event):
        told.append((event.event_id, len(told)))

    rt.bot.on_picture_applied = remember
    await rt.bot(report("r1"))
    await rt.bot(picture("p1"))
    await asyncio.sleep(0.05)
    assert told == [] and await pending() == 2
    await rt.inbox.drain()
    await asyncio.sleep(0)
    assert told == [("p1", 0)]

    with pytest.raises(RuntimeError):
        async with rt.db.session() as s:
            await rt.bot.process(s, picture("p2"))
            raise RuntimeError("rolled back")
    await asyncio.sleep(0.05)
    assert told == [("p1", 0)]


async def test_background_work_waits_for_answers_in_progress_only_until_the_last_is_given():
    from bot.channel import HandleResult
    from bot.core.handler import TicketBot

    bot = TicketBot(None, None, None, None, None, None)
    release = asyncio.Event()

    async def slow_accept(event):
        await release.wait()
        return HandleResult()

    bot._accept = slow_accept
    answering = asyncio.create_task(bot.accept(None))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await bot.yield_to_callbacks(0.05)  # never longer than its bound
    assert 0.04 <= loop.time() - start < 1.0
    waiter = asyncio.create_task(bot.yield_to_callbacks(5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    release.set()
    await asyncio.wait_for(waiter, 1.0)  # woken as the answer is given, not at the bound
    await answering
    start = loop.time()
    await bot.yield_to_callbacks(5.0)  # nothing in progress: no wait
    assert loop.time() - start < 0.05
