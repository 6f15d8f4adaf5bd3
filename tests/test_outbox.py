"""The outbox: delivery after commit, retries with back-off, visible failures,
order per recipient, rate limits, and no duplicate after a crash mid-send."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from bot.channel import Channel, ChannelRegistry, DeliveryError, current_outbox_id
from bot.config import OutboxConfig
from bot.events import Address, CardMessage, Text
from bot.metrics import Metrics
from bot import outbox
from bot.outbox import FAILED, PENDING, SENDING, SENT, OutboxWorker, enqueue
from cards.model import Card
from storage.db import Database
from storage.models import CardRef, OutboxMessage, ProcessHeartbeat
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
        for m in messages:
            enqueue(s, to, m)


async def _new_ticket_cards(db, to, first, n, title):
    """New-ticket cards `first`..`first + n - 1` to `to`, one transaction."""
    async with db.session() as s:
        for i in range(first, first + n):
            enqueue(s, to, CardMessage(Card(kind="engineer", title=f"{title} {i}", subtitle=f"SRV-{i:03d}",
                                            track_key=f"t{i}:eng")), ticket_id=i)


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


async def _lease_to(db, owner: str, seconds: float = 60):
    async with db.session() as s:
        for row in (await s.exec(select(OutboxMessage))).all():
            row.status, row.lease_owner = SENDING, owner
            row.lease_until = row.next_attempt_at = utcnow() + timedelta(seconds=seconds)
            s.add(row)


async def _beat(db, owner: str, ago: float = 0):
    async with db.session() as s:
        row = await s.get(ProcessHeartbeat, owner) or ProcessHeartbeat(owner=owner)
        row.beat_at = utcnow() - timedelta(seconds=ago)
        s.add(row)


async def test_a_live_process_keeps_its_lease_a_dead_one_loses_it_within_seconds(world):
    """A process that died mid-send leaves a row 'sending': once its heartbeat is older than
    the grace, the row goes again (once), without waiting out the 60 s lease."""
    db, ch, worker = world
    await _enqueue(db, Text("x"))
    await _lease_to(db, "host:other")
    await _beat(db, "host:other")
    await worker.drain()
    assert ch.sent == []  # still leased by a live process
    await _beat(db, "host:other", ago=10)
    worker._reaped_at = 0
    await worker.drain()
    await worker.drain()
    assert len(ch.sent) == 1


async def test_a_restarted_process_takes_back_its_own_leases_at_once(world):
    db, ch, worker = world
    await _enqueue(db, Text("x"), Text("y"))
    await _lease_to(db, worker.owner)
    await _beat(db, worker.owner)  # the heartbeat of the process before the restart is fresh
    assert await worker.take_back_own_leases() == 2
    await worker.drain()
    assert [m.text for _, m, _, _ in ch.sent] == ["x", "y"]


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


# ---- storms: classes, no head-of-line blocking, faults ----------------------------


async def _until(worker, done, seconds: float) -> float:
    """Run delivery passes until `done()`; returns the seconds it took (fails after `seconds`)."""
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < seconds, "not delivered in time"
        if not await worker.deliver_due():
            await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_a_thousand_throttled_cards_delay_neither_a_receipt_nor_a_page(world):
    db, ch, worker = world
    engineer, customer, director = (Address("fake", "user", u) for u in ("eng", "cust", "director"))
    card = Card(kind="engineer", title="t", track_key=None)
    async with db.session() as s:
        for i in range(1000):
            enqueue(s, engineer, CardMessage(Card(kind="engineer", title=f"#{i}")))
    await worker.deliver_due()  # the engineer's window is full now: 995 cards wait for it
    assert len(ch.sent) == 5
    async with db.session() as s:
        enqueue(s, customer, Text("您的工单号 SRV-1"))
        enqueue(s, director, CardMessage(Card(kind="escalation", title="P0")))
    took = await _until(worker, lambda: {a.id for a, *_ in ch.sent} >= {"cust", "director"}, 2.0)
    assert took < 2.0
    assert len(ch.sent) == 7  # nothing more to the engineer than the limit allows
    assert card.title == "t"


def _inbound_backlog(worker, events: int = 40) -> None:
    """The worker's process has `events` inbound events waiting to be applied."""
    async def backlog():
        return events
    worker.backlog = backlog


async def test_during_an_inbound_backlog_a_receipt_and_a_page_go_while_cards_wait_their_turn(world, monkeypatch):
    db, ch, worker = world
    monkeypatch.setattr(outbox, "CARD_TURN_S", 0.5)
    _inbound_backlog(worker)
    engineer, customer, director = (Address("fake", "user", u) for u in ("eng", "cust", "director"))
    await worker.deliver_due()  # card work had its turn just now
    async with db.session() as s:
        enqueue(s, engineer, CardMessage(Card(kind="engineer", title="new ticket")))
        enqueue(s, customer, Text("您的工单号 SRV-1"))
        enqueue(s, director, CardMessage(Card(kind="escalation", title="P0")))
    assert await worker.deliver_due() == 2
    assert {a.id for a, *_ in ch.sent} == {"cust", "director"}
    assert await worker.deliver_due() == 0  # the card waits for its turn ...
    await asyncio.sleep(0.5)
    assert await worker.deliver_due() == 1  # ... which comes however long the backlog lasts
    assert ch.sent[-1][1].card.title == "new ticket"


async def test_during_a_long_inbound_backlog_cards_still_go_within_their_turn(world, monkeypatch):
    db, ch, worker = world
    worker.config.per_recipient_per_minute = 1000
    monkeypatch.setattr(outbox, "CARD_TURN_S", 0.3)
    _inbound_backlog(worker)
    sent_at: dict[int, float] = {}
    send = ch.send

    async def timed(to, message, ref):
        sent_at[current_outbox_id.get()] = time.monotonic()
        return await send(to, message, ref)

    ch.send = timed
    written: dict[int, tuple[float, bool]] = {}  # id: (when, is a card)
    task = asyncio.create_task(worker.run())
    try:
        for i in range(30):  # 1.5 s of a storm: a receipt and a card update every 50 ms
            async with db.session() as s:
                enqueue(s, Address("fake", "user", f"cust{i}"), Text(f"SRV-{i}"))
                enqueue(s, Address("fake", "group", "engineers"),
                        CardMessage(Card(kind="engineer", title=f"t{i}", track_key=f"t{i}:eng"), update=True))
            async with db.session() as s:
                rows = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(2))).all()
            for row in rows:
                written[row.id] = (time.monotonic(), row.msg_class > 1)
            worker.wake()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        worker.stop_soon()
        await task
    assert set(sent_at) == set(written)  # nothing lost, nothing starved
    receipts = [sent_at[i] - at for i, (at, card) in written.items() if not card]
    cards = [sent_at[i] - at for i, (at, card) in written.items() if card]
    assert max(receipts) < 0.2
    assert max(cards) < 0.3 + 0.2 and max(cards) > max(receipts)


async def test_a_page_goes_before_a_recipients_queued_cards_and_order_holds_within_a_class(world):
    db, ch, worker = world
    worker.config.per_recipient_per_minute = 1000
    lead = Address("fake", "user", "lead")
    async with db.session() as s:
        for i in range(3):
            enqueue(s, lead, CardMessage(Card(kind="engineer", title=f"card{i}")))
        enqueue(s, lead, Text("reply0"))
        enqueue(s, lead, CardMessage(Card(kind="escalation", title="page")))
        enqueue(s, lead, Text("reply1"))
    await worker.drain()
    titles = [m.text if isinstance(m, Text) else m.card.title for _, m, _, _ in ch.sent]
    assert titles == ["page", "reply0", "reply1", "card0", "card1", "card2"]


async def test_a_retry_holds_back_its_class_to_that_recipient_only(world):
    db, ch, worker = world
    ch.failures = [DeliveryError("busy", retry_after=30)]
    lead = Address("fake", "user", "lead")
    await _enqueue(db, Text("first"), Text("second"), to=lead)
    await worker.drain()
    async with db.session() as s:
        enqueue(s, lead, CardMessage(Card(kind="escalation", title="page")))
        enqueue(s, Address("fake", "user", "other"), Text("other"))
    await worker.drain()
    sent = [m.text if isinstance(m, Text) else m.card.title for _, m, _, _ in ch.sent]
    assert sent == ["page", "other"]  # "second" waits behind "first", the page does not


async def test_a_bookkeeping_failure_on_one_row_leaves_the_others_delivered_once(world):
    db, ch, worker = world
    worker.config.per_recipient_per_minute = 1000
    bad = Card(kind="engineer", title="bad", track_key="t1:eng")

    async def send(to, message, ref):
        ch.sent.append((to, message, ref, current_outbox_id.get()))
        if isinstance(message, CardMessage) and message.card.title == "bad":
            return {"handle": {1, 2}}  # cannot be stored as JSON: that row's write fails
        return None

    ch.send = send
    async with db.session() as s:
        enqueue(s, Address("fake", "user", "u1"), CardMessage(bad))
        for i in range(5):
            enqueue(s, Address("fake", "user", f"v{i}"), Text(f"t{i}"))
    worker.bookkeeping_backoff = 0.01
    for _ in range(6):
        await worker.deliver_due()
        await asyncio.sleep(0.05)  # past each retry's back-off
    rows = await _rows(db)
    assert [r.status for r in rows] == [SENT] * 6
    assert sorted(oid for *_, oid in ch.sent) == [r.id for r in rows]  # each sent exactly once


class Outage(FakeChannel):
    name = "fake"

    def __init__(self):
        super().__init__()
        self.down = True
        self.attempts = 0

    async def send(self, to, message, ref):
        self.attempts += 1
        if self.down:
            raise DeliveryError("502 bad gateway")
        return await super().send(to, message, ref)


async def test_after_an_outage_held_messages_go_within_seconds_each_once(database_url):
    db = Database(database_url)
    await db.init()
    ch = Outage()
    reg = ChannelRegistry()
    reg.add(ch)
    cfg = OutboxConfig(base_delay="1s", max_delay="10m", max_attempts=50, per_recipient_per_minute=1000,
                       down_after=3, probe_interval="1s")
    worker = OutboxWorker(db, reg, cfg, Metrics())
    try:
        async with db.session() as s:
            for i in range(10):
                enqueue(s, Address("fake", "group", f"g{i}"), CardMessage(Card(kind="engineer", title=f"c{i}")))
        for seconds in (2, 3):
            ch.attempts = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await worker.deliver_due()
                await asyncio.sleep(0.05)
        assert worker.channel_states() == {"fake": "down"}
        assert 1 <= ch.attempts <= 4  # while down: one probe at a time, one a second
        await worker.update_gauges()
        assert b'relaydesk_channel_up{channel="fake"} 0.0' in worker.metrics.render()
        ch.down = False
        took = await _until(worker, lambda: len(ch.sent) == 10, 10.0)
        assert took < 10.0 and worker.channel_states() == {"fake": "up"}
        assert sorted(oid for *_, oid in ch.sent) == [r.id for r in await _rows(db)]
    finally:
        await db.dispose()


async def test_new_ticket_cards_beyond_the_limit_fold_into_one_digest_updated_in_place(world):
    db, ch, worker = world  # 5 per minute per recipient
    group = Address("fake", "group", "engineers")

    async def new_tickets(first, n):
        await _new_ticket_cards(db, group, first, n, "【P0】停电")

    await new_tickets(0, 30)
    await worker.drain(wait=0)
    assert len(ch.sent) == 5
    rows = await _rows(db)
    assert [r.status for r in rows].count("folded") == 25
    (digest,) = [r for r in rows if r.track_key == "digest"]
    assert digest.status == PENDING and digest.message["card"]["title"] == "25 张新工单待认领"
    body = digest.message["card"]["body"]
    assert body.startswith("……另有 5 张") and "SRV-010" in body and "SRV-029" in body
    worker._sent_at.clear()  # a minute later
    await _make_due(db)
    await worker.drain(wait=0)
    assert ch.sent[-1][1].card.kind == "digest" and ch.sent[-1][2] is None
    # More arrive while the window is full: the same digest card is updated, not a new one sent.
    await new_tickets(30, 10)
    await worker.drain(wait=0)
    rows = await _rows(db)
    update = [r for r in rows if r.track_key == "digest" and r.status == PENDING]
    assert len(update) == 1 and update[0].message["update"] is True
    # The digest took one of the 5 places, four new cards the rest; six more were folded.
    assert update[0].message["card"]["title"] == "31 张新工单待认领"
    worker._sent_at.clear()
    await _make_due(db)
    await worker.drain(wait=0)
    first_digest = next(i for i, (_, m, _, _) in enumerate(ch.sent) if m.card.kind == "digest")
    last = ch.sent[-1]
    assert last[1].card.kind == "digest" and last[1].update
    assert last[2] == {"message_id": f"m{first_digest + 1}"}  # the handle of the digest sent before
    assert sum(1 for _, m, _, _ in ch.sent if isinstance(m, CardMessage) and m.card.kind == "engineer") == 9


async def test_a_digest_counts_what_was_folded_within_a_day(world):
    db, ch, worker = world  # 5 per minute per recipient
    group = Address("fake", "group", "engineers")

    async def new_tickets(first, n):
        await _new_ticket_cards(db, group, first, n, "停电")

    async def digest():
        (row,) = [r for r in await _rows(db) if r.track_key == "digest"]
        return row

    await new_tickets(0, 8)
    await worker.drain(wait=0)
    assert (await digest()).message["card"]["title"] == "3 张新工单待认领"
    await new_tickets(8, 3)
    await worker.drain(wait=0)
    assert (await digest()).message["card"]["title"] == "6 张新工单待认领"
    digest_id = (await digest()).id
    async with db.session() as s:  # the count began more than a day ago
        row = await s.get(OutboxMessage, digest_id)
        row.message = {**row.message, "digest": {**row.message["digest"],
                                                 "since": (utcnow() - timedelta(days=1, minutes=1)).timestamp()}}
        s.add(row)
    await new_tickets(11, 4)
    await worker.drain(wait=0)
    row = await digest()
    assert row.message["card"]["title"] == "4 张新工单待认领"
    assert "SRV-014" in row.message["card"]["body"] and "SRV-010" not in row.message["card"]["body"]


async def test_several_due_updates_of_one_card_send_only_the_newest(world):
    db, ch, worker = world
    to = Address("fake", "group", "engineers")
    await _enqueue(db, CardMessage(Card(kind="engineer", title="v0", track_key="t1:eng")), to=to)
    await worker.drain(wait=0)
    await _enqueue(db, *[CardMessage(Card(kind="engineer", title=f"v{i}", track_key="t1:eng"), update=True)
                         for i in range(1, 6)], to=to)
    await worker.drain(wait=0)
    assert [m.card.title for _, m, _, _ in ch.sent] == ["v0", "v5"]
    assert ch.sent[1][2] == {"message_id": "m1"}
    assert [r.status for r in await _rows(db)] == [SENT, "superseded", "superseded", "superseded", "superseded", SENT]


async def _fail_marking_sent(db, row_id: int, on: bool) -> None:
    """A database that refuses one row's "sent" write (a trigger), as a failing disk or
    constraint would, while every other write works."""
    async with db.session() as s:
        if db.is_postgres:
            if on:
                await s.exec(text(f"""CREATE OR REPLACE FUNCTION refuse_sent() RETURNS trigger AS $$
                    BEGIN IF NEW.id = {row_id} AND NEW.status = 'sent' THEN RAISE EXCEPTION 'refused'; END IF;
                    RETURN NEW; END $$ LANGUAGE plpgsql"""))
                await s.exec(text("CREATE TRIGGER refuse_sent BEFORE UPDATE ON outbox "
                                  "FOR EACH ROW EXECUTE FUNCTION refuse_sent()"))
            else:
                await s.exec(text("DROP TRIGGER refuse_sent ON outbox"))
        elif on:
            await s.exec(text(f"CREATE TRIGGER refuse_sent BEFORE UPDATE OF status ON outbox "
                              f"WHEN NEW.id = {row_id} AND NEW.status = 'sent' "
                              f"BEGIN SELECT RAISE(ABORT, 'refused'); END"))
        else:
            await s.exec(text("DROP TRIGGER refuse_sent"))


async def test_a_row_whose_outcome_cannot_be_written_holds_back_nobody_and_is_not_resent(world, caplog):
    """The send worked, writing "sent" fails for a while: the same recipient's next messages
    still go, the row is not sent again, and the write is retried with back-off."""
    db, ch, worker = world
    worker.config.per_recipient_per_minute = 1000
    u1 = Address("fake", "user", "u1")
    await _enqueue(db, Text("first"), to=u1)
    [first] = await _rows(db)
    await _fail_marking_sent(db, first.id, True)
    try:
        await worker.deliver_due()  # "first" is sent; its outcome is not written
        await _enqueue(db, Text("second"), Text("third"), to=u1)
        for _ in range(20):  # passes in a tight loop while the write keeps failing
            await worker.deliver_due()
        assert [m.text for _, m, _, _ in ch.sent] == ["first", "second", "third"]
        failures = [r for r in caplog.records if "recording its outcome failed" in r.getMessage()]
        assert 1 <= len(failures) <= 3  # backed off, not once per pass
        assert sum(r.exc_info is not None for r in failures) == 1  # one traceback
    finally:
        await _fail_marking_sent(db, first.id, False)
    await asyncio.sleep(2.1)  # past the back-off (0.5 s, then 1 s)
    await worker.deliver_due()
    rows = await _rows(db)
    assert [r.status for r in rows] == [SENT] * 3
    assert [m.text for _, m, _, _ in ch.sent] == ["first", "second", "third"]  # each once


class Slow(FakeChannel):
    """A platform API that takes a while to answer; counts the sends on the wire at once."""

    name = "slow"
    sends_in_flight = 4

    def __init__(self):
        super().__init__()
        self.on_wire = 0
        self.most = 0

    async def send(self, to, message, ref):
        self.on_wire += 1
        self.most = max(self.most, self.on_wire)
        try:
            await asyncio.sleep(0.02)
            return await super().send(to, message, ref)
        finally:
            self.on_wire -= 1


async def test_a_channel_has_at_most_its_sends_in_flight_and_another_channel_is_not_held_back(world):
    db, fake, _ = world
    slow = Slow()
    reg = ChannelRegistry()
    reg.add(fake)
    reg.add(slow)
    worker = OutboxWorker(db, reg, OutboxConfig(), Metrics())
    async with db.session() as s:  # one receipt to each of forty customers, and one to a customer elsewhere
        for i in range(40):
            enqueue(s, Address("slow", "user", f"c{i}"), Text(f"收到 {i}"))
        enqueue(s, Address("fake", "user", "elsewhere"), Text("收到"))
    started = time.monotonic()
    sweep = asyncio.create_task(worker.deliver_due())
    for _ in range(100):
        if fake.sent:
            break
        await asyncio.sleep(0.005)
    assert fake.sent and time.monotonic() - started < 0.1  # not behind the slow channel's queue
    assert await sweep == 41
    assert slow.most == Slow.sends_in_flight
    assert sorted(int(m.text.split()[1]) for _, m, _, _ in slow.sent) == list(range(40))
    assert {r.status for r in await _rows(db)} == {SENT}
