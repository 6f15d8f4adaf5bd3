"""The outbox: delivery after commit, retries with back-off, visible failures,
order per recipient, rate limits, and no duplicate after a crash mid-send."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from bot.channel import Channel, ChannelRegistry, DeliveryError, current_outbox_id
from bot.config import OutboxConfig
from bot.events import Address, CardMessage, Text
from bot.metrics import Metrics
from bot.outbox import FAILED, PENDING, SENDING, SENT, OutboxWorker, enqueue
from cards.model import Card
from storage.db import Database
from storage.models import CardRef, OutboxMessage
from storage.types import utcnow


class FakeChannel(Channel):
    name = "fake"

    def __init__(self):
        super().__init__(sink=None)
        self.sent: list[tuple[Address, object, dict | None, int | None]] = []
        self.failures: list[DeliveryError] = []

    async def send(self, to, message, ref):
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((to, message, ref, current_outbox_id.get()))
        if isinstance(message, CardMessage):
            return {"message_id": f"m{len(self.sent)}"}
        return None


@pytest.fixture
async def world(database_url):
    db = Database(database_url)
    await db.init()
    channel = FakeChannel()
    reg = ChannelRegistry()
    reg.add(channel)
    cfg = OutboxConfig(base_delay="1s", max_delay="10s", max_attempts=3, per_recipient_per_minute=5)
    worker = OutboxWorker(db, reg, cfg, Metrics())
    yield db, channel, worker
    await db.dispose()


async def _enqueue(db, *messages, to=Address("fake", "user", "u1")):
    async with db.session() as s:
        rows = [enqueue(s, to, m) for m in messages]
    return rows


async def _rows(db):
    async with db.session() as s:
        return list((await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def _make_due(db):
    async with db.session() as s:
        for r in (await s.exec(select(OutboxMessage))).all():
            r.next_attempt_at = utcnow() - timedelta(seconds=1)
            s.add(r)


async def test_delivers_in_order_and_marks_sent(world):
    db, ch, worker = world
    await _enqueue(db, Text("one"), Text("two"), Text("three"))
    await worker.drain()
    assert [m.text for _, m, _, _ in ch.sent] == ["one", "two", "three"]
    assert {r.status for r in await _rows(db)} == {SENT}
    assert [oid for *_, oid in ch.sent] == [r.id for r in await _rows(db)]


async def test_retry_with_backoff_then_success(world):
    db, ch, worker = world
    ch.failures = [DeliveryError("503 from platform")]
    await _enqueue(db, Text("hello"))
    await worker.drain()
    (row,) = await _rows(db)
    assert row.status == PENDING and row.attempts == 1 and "503" in row.last_error
    assert row.next_attempt_at > utcnow()
    await _make_due(db)
    await worker.drain()
    (row,) = await _rows(db)
    assert row.status == SENT and row.attempts == 2
    assert len(ch.sent) == 1


async def test_gives_up_after_max_attempts_and_counts_it(world):
    db, ch, worker = world
    ch.failures = [DeliveryError("boom")] * 3
    await _enqueue(db, Text("x"))
    for _ in range(3):
        await worker.drain()
        await _make_due(db)
    (row,) = await _rows(db)
    assert row.status == FAILED and row.attempts == 3
    assert worker.metrics.outbox_failed.labels("fake")._value.get() == 1
    await worker.update_gauges()
    assert b"relaydesk_outbox_undeliverable 1.0" in worker.metrics.render()


async def test_permanent_error_fails_at_once(world):
    db, ch, worker = world
    ch.failures = [DeliveryError("81013 no valid recipient", retryable=False)]
    await _enqueue(db, Text("x"))
    await worker.drain()
    (row,) = await _rows(db)
    assert row.status == FAILED and row.attempts == 1


async def test_a_failing_message_holds_back_later_ones_to_the_same_recipient(world):
    db, ch, worker = world
    ch.failures = [DeliveryError("429", retry_after=5)]
    await _enqueue(db, Text("first"), Text("second"))
    await _enqueue(db, Text("other"), to=Address("fake", "user", "u2"))
    await worker.drain()
    assert [m.text for _, m, _, _ in ch.sent] == ["other"]
    await _make_due(db)
    await worker.drain()
    assert [m.text for _, m, _, _ in ch.sent] == ["other", "first", "second"]


async def test_per_recipient_rate_limit_defers_instead_of_dropping(world):
    db, ch, worker = world
    await _enqueue(db, *[Text(str(i)) for i in range(8)])
    await worker.drain()
    assert len(ch.sent) == 5
    rows = await _rows(db)
    assert [r.status for r in rows].count(PENDING) == 3
    waiting = next(r for r in rows if r.status == PENDING)
    assert waiting.next_attempt_at > utcnow() + timedelta(seconds=30)  # deferred, not dropped
    await worker.drain()
    assert len(ch.sent) == 5


async def test_expired_lease_is_delivered_again_once(world):
    """A process that died mid-send leaves a row 'sending'; after its lease it goes again."""
    db, ch, worker = world
    await _enqueue(db, Text("x"))
    async with db.session() as s:
        row = (await s.exec(select(OutboxMessage))).one()
        row.status, row.lease_until = SENDING, utcnow() + timedelta(seconds=30)
        s.add(row)
    await worker.drain()
    assert ch.sent == []  # still leased by the other process
    async with db.session() as s:
        row = (await s.exec(select(OutboxMessage))).one()
        row.lease_until = utcnow() - timedelta(seconds=1)
        s.add(row)
    await worker.drain()
    await worker.drain()
    assert len(ch.sent) == 1


async def test_card_updates_get_the_stored_platform_handle(world):
    db, ch, worker = world
    card = Card(kind="engineer", title="t", track_key="t1:eng")
    await _enqueue(db, CardMessage(card))
    await worker.drain()
    await _enqueue(db, CardMessage(card, update=True))
    await worker.drain()
    assert ch.sent[0][2] is None and ch.sent[1][2] == {"message_id": "m1"}
    async with db.session() as s:
        ref = await s.get(CardRef, ("fake", "user", "u1", "t1:eng"))
    assert ref.ref == {"message_id": "m2"}


async def test_unknown_channel_fails_visibly(world):
    db, ch, worker = world
    await _enqueue(db, Text("x"), to=Address("nowhere", "user", "u"))
    await worker.drain()
    (row,) = await _rows(db)
    assert row.status == FAILED and "not configured" in row.last_error


def test_backoff_grows_and_is_capped():
    worker = OutboxWorker(None, ChannelRegistry(), OutboxConfig(base_delay="2s", max_delay="60s"), Metrics())
    for attempt, (lo, hi) in {1: (1, 2), 2: (2, 4), 3: (4, 8), 10: (30, 60)}.items():
        for _ in range(20):
            assert lo <= worker.backoff(attempt) <= hi
