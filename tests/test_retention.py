"""Retention: old finished bookkeeping rows go in bounded batches; rows still needed stay.

    .venv/bin/python -m pytest -q tests/test_retention.py
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from bot.config import ConfigError, RetentionConfig, load_config
from bot.core.states import TERMINAL
from storage.db import Database
from storage.integration import ApiIdempotency
from storage.models import (CardAction, InboxEvent, OutboxMessage, PeriodicJob, Person, PhoneCall, ProcessedEvent,
                            ProcessHeartbeat, Ticket)
from storage.retention import prune
from storage.types import utcnow

OLD = timedelta(days=400)


def _ticket(tid: int, state: str, updated) -> Ticket:
    now = utcnow()
    return Ticket(id=tid, number=f"T{tid}", state=state, category="pump", category_name="泵", priority="P2",
                  summary="水泵不出水", reporter_id="cust", reporter_channel="playground",
                  reporter_conv_kind="user", reporter_conv_id="cust", created_at=updated, updated_at=updated,
                  respond_by=now, resolve_by=now)


def _out(rid: int, status: str, at, *, ticket_id=None, track_key=None) -> OutboxMessage:
    return OutboxMessage(id=rid, channel="playground", to_kind="user", to_id="u", message={"text": "x"},
                         status=status, next_attempt_at=at, created_at=at, ticket_id=ticket_id, track_key=track_key)


async def _seed(db: Database) -> None:
    now = utcnow()
    old = now - OLD
    async with db.session() as s:
        s.add(Person(id="cust", name="王经理", role="customer"))
    async with db.session() as s:
        s.add(_ticket(1, "closed", old))       # closed long ago: its cards may go
        s.add(_ticket(2, "repairing", old))    # live: its cards are updated in place
        s.add(_ticket(3, "closed", now))       # closed today: its cards stay a while
    async with db.session() as s:
        # outbox: 1-5 may go (old and finished, no live card); the rest stay.
        s.add(_out(1, "sent", old))
        s.add(_out(2, "superseded", old))
        s.add(_out(3, "folded", old))
        s.add(_out(4, "sent", old, ticket_id=1, track_key="eng:1"))
        s.add(_out(5, "sent", old, ticket_id=2))  # a plain text about a live ticket
        s.add(_out(10, "sent", old, ticket_id=2, track_key="eng:2"))
        s.add(_out(11, "sent", old, ticket_id=3, track_key="eng:3"))
        s.add(_out(12, "pending", old))
        s.add(_out(13, "sending", old))
        s.add(_out(14, "failed", old))
        s.add(_out(15, "sent", now))
        for i, status in enumerate(("done", "done", "pending", "dead")):
            s.add(InboxEvent(id=i + 1, platform="wecom", event_id=f"e{i}", payload={}, status=status,
                             received_at=old, next_attempt_at=old, processed_at=old))
        s.add(InboxEvent(id=9, platform="wecom", event_id="fresh", payload={}, status="done",
                         received_at=now, next_attempt_at=now, processed_at=now))
        for i in range(5):
            s.add(ProcessedEvent(platform="feishu", event_id=f"old{i}", received_at=old))
        s.add(ProcessedEvent(platform="feishu", event_id="fresh", received_at=now))
        s.add(CardAction(token="t-closed", ticket_id=1, action="claim", created_at=old))
        s.add(CardAction(token="t-live", ticket_id=2, action="claim", created_at=old))
        s.add(CardAction(token="t-recent", ticket_id=3, action="rate:5", created_at=old))
        s.add(PhoneCall(kind="call", person_id="eng", to_number="+8613800000002", status="completed",
                        created_at=old, updated_at=old))
        s.add(PhoneCall(kind="call", person_id="eng", to_number="+8613800000002", status="sent",
                        created_at=now, updated_at=now))
        s.add(ApiIdempotency(token_name="crm", key="old", method="POST", path="/api/v1/tickets",
                             request_hash="h", status=201, created_at=old))
        s.add(ApiIdempotency(token_name="crm", key="new", method="POST", path="/api/v1/tickets",
                             request_hash="h", status=201, created_at=now))
        s.add(ProcessHeartbeat(owner="gone:1", pid=1, started_at=old, beat_at=old))
        s.add(ProcessHeartbeat(owner="here:1", pid=2, started_at=now, beat_at=now))
        s.add(PeriodicJob(name="report-daily:2025-01-01:maint:x", last_started_at=old))
        s.add(PeriodicJob(name="auditor", last_started_at=now))


async def _left(db: Database) -> dict[str, set]:
    async with db.session() as s:
        return {
            "outbox": set((await s.exec(select(OutboxMessage.id))).all()),
            "inbox": set((await s.exec(select(InboxEvent.id))).all()),
            "processed_event": set((await s.exec(select(ProcessedEvent.event_id))).all()),
            "card_action": set((await s.exec(select(CardAction.token))).all()),
            "phone_call": set((await s.exec(select(PhoneCall.status))).all()),
            "api_idempotency": set((await s.exec(select(ApiIdempotency.key))).all()),
            "process_heartbeat": set((await s.exec(select(ProcessHeartbeat.owner))).all()),
            "periodic_job": set((await s.exec(select(PeriodicJob.name))).all()),
            "ticket": set((await s.exec(select(Ticket.id))).all()),
        }


@pytest.fixture
async def seeded(database_url):
    """A database holding _seed's rows."""
    db = Database(database_url)
    await db.init()
    try:
        await _seed(db)
        yield db
    finally:
        await db.dispose()


async def test_prunes_old_finished_rows_and_keeps_what_is_still_needed(seeded):
    db = seeded
    # Batches of 2: every kind with more old rows than that takes several batches.
    deleted = await prune(db, RetentionConfig(batch=2), utcnow(), terminal=TERMINAL)
    left = await _left(db)
    assert left == {
        "outbox": {10, 11, 12, 13, 14, 15},
        "inbox": {3, 4, 9},
        "processed_event": {"fresh"},
        "card_action": {"t-live", "t-recent"},
        "phone_call": {"sent"},
        "api_idempotency": {"new"},
        "process_heartbeat": {"here:1"},
        "periodic_job": {"auditor"},
        "ticket": {1, 2, 3},
    }
    assert deleted == {"outbox": 5, "inbox": 2, "processed_event": 5, "card_action": 1, "phone_call": 1,
                       "api_idempotency": 1, "process_heartbeat": 1, "periodic_job": 1}
    # Nothing more to do: a second run deletes nothing.
    assert await prune(db, RetentionConfig(batch=2), utcnow(), terminal=TERMINAL) == {}


async def test_zero_days_keeps_a_kind_and_batches_are_bounded(seeded):
    db = seeded
    policy = RetentionConfig(batch=2, processed_event_days=0, outbox_days=0)
    deleted = await prune(db, policy, utcnow(), terminal=TERMINAL, max_batches=1)
    left = await _left(db)
    assert "outbox" not in deleted and "processed_event" not in deleted
    assert len(left["outbox"]) == 11 and len(left["processed_event"]) == 6
    assert deleted["inbox"] == 2  # within one batch
    # One batch of two per call: the rest waits for the next run.
    policy = RetentionConfig(batch=1, outbox_days=14)
    assert (await prune(db, policy, utcnow(), terminal=TERMINAL, max_batches=1))["outbox"] == 1
    assert len((await _left(db))["outbox"]) == 10


async def test_rows_younger_than_their_days_stay(seeded):
    db = seeded
    # As seen 401 days earlier, nothing is old enough yet.
    assert await prune(db, RetentionConfig(), utcnow() - timedelta(days=401), terminal=TERMINAL) == {}


def test_retention_section_is_checked(tmp_path):
    env = {"RELAYDESK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    cfg = tmp_path / "c.toml"
    cfg.write_text('[retention]\noutbox_days = 30\ninterval = "30m"\n', encoding="utf-8")
    c = load_config(cfg, env=env)
    assert c.retention.outbox_days == 30 and c.retention.interval == timedelta(minutes=30)
    assert load_config(None, env=env).retention.processed_event_days == 7
    for bad in ("outbox_days = -1", "batch = 0", "keep_forever = true"):
        cfg.write_text(f"[retention]\n{bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError):
            load_config(cfg, env=env)
