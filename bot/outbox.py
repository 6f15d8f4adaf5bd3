"""The durable outbox: messages are rows written in the same transaction as the
change that caused them, and a worker delivers them after commit.

Delivery is at least once: a row is leased while it is being sent, and a lease
held by a process that stopped heartbeating makes the row due again after a
short grace. Channels make a repeat harmless where the platform allows it (the
playground keys its rows by outbox id, Feishu sends carry a uuid).

What goes first in a storm:
- a sweep reads only rows that are due (index on status and due time), so a
  queue of throttled cards to one engineer is never read, let alone in the way;
- every message has a class (page, reply, card update, new card); a sweep
  serves due rows in class order, and one recipient's chain sends its page
  before its queued cards. Order holds within one class and recipient: a row
  waiting for a retry holds back the later rows of its class to that recipient;
- a recipient at its platform limit has all its due rows moved to when its
  window has room, in one statement; nobody else waits for it;
- a channel whose API keeps failing is marked down and probed with one message
  at a time; the first success makes everything it held due at once;
- a sweep sends to every recipient at once, with at most a channel's
  `sends_in_flight` sends on the wire: a slow platform queues only its own;
- while inbound events wait to be applied (the `backlog` hook), a sweep serves
  pages and replies only, and card work (updates, new cards, digests) gets a turn
  every CARD_TURN_S: a customer's ticket number never waits behind cards, and
  cards still go out however long the storm.

Bookkeeping (lease, result, card handles) is one transaction per pass; when
that fails, each row is written on its own, and a row that still cannot be
written is kept in memory and written again next pass, so one bad row never
holds back or re-sends the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import AsyncIterator

from sqlalchemy import and_, event, func, insert, or_, update
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channel import Channel, ChannelRegistry, DeliveryError, current_is_resend, current_outbox_id
from bot.config import OutboxConfig
from bot.events import Address, Call, CardMessage, Outbound, Sms, Text, message_from_dict, message_to_dict
from bot.metrics import Metrics
from bot.tasks import wait_event
from bot.wakeup import NOTIFY_OUTBOX
from cards import build
from storage.db import Database
from storage.models import CardRef, OutboxMessage, ProcessHeartbeat
from storage.types import utcnow

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
FOLDED = "folded"  # a new-ticket card replaced by the recipient's digest card
SUPERSEDED = "superseded"  # a card update with a newer update of the same card due behind it
# A failed bookkeeping write is tried again after `bookkeeping_backoff`, doubling up to this bound
# (while the database refuses writes, a tight retry would only fill the log).
BOOKKEEPING_MAX_WAIT_S = 30.0
# Message classes, served in this order.
PAGE, REPLY, UPDATE, BULK = 0, 1, 2, 3
# While inbound events wait to be applied, card work (classes UPDATE and BULK) gets a
# sweep at most this often; pages and replies are served by every sweep. Applying the
# events is what produces the customers' ticket numbers, and on one event loop every
# card sent or folded in between delays them. Not much longer: a turn does the card work
# that came since the last one in a few sweeps, and a bigger turn holds the event loop long
# enough to be seen in callback answers (ack p99 95 ms at 1.5 s, 40-60 ms at 0.5 s).
CARD_TURN_S = 0.5
# How long an answer of the backlog hook (a database read) is trusted.
BACKLOG_CHECK_S = 0.25
# During such a backlog, a sweep sends at most this many cards to one recipient (one after
# the other: a sweep lasts at most this many API round trips while replies wait); a card
# turn goes on with the next sweep, which serves the replies that came meanwhile first.
CARD_TURN_SENDS = 3
CLASS_NAMES = {PAGE: "page", REPLY: "reply", UPDATE: "update", BULK: "card"}

Key = tuple[str, str, str]  # channel, to_kind, to_id


def message_class(message: Outbound) -> int:
    """Pages (escalation cards, calls, SMS), then texts, then card updates, then new cards."""
    if isinstance(message, (Call, Sms)):
        return PAGE
    if isinstance(message, CardMessage):
        if message.card.kind == "escalation":
            return PAGE
        return UPDATE if message.update else BULK
    if isinstance(message, Text):
        return REPLY
    return BULK


# ---- queueing messages ----------------------------------------------------
#
# A change queues several messages (a new ticket: receipt, status card, a card per
# engineers' group, the engineer's card and SOP); as ORM objects each would be an
# INSERT of its own with the new id read back. They are kept in the session's
# `info` instead and written together, in the order queued, by one multi-row
# INSERT: before any later statement of the session (which may read the outbox),
# before commit, and at each savepoint's edges (see `savepoint`). On PostgreSQL the
# transaction then notifies OUTBOX_CHANNEL once, at commit (bot/wakeup.py).

_QUEUED = "outbox_queued"


def enqueue(s: AsyncSession, to: Address, message: Outbound, ticket_id: int | None = None, *,
            msg_class: int | None = None) -> None:
    """Queue a message to deliver after commit; its class follows from the message unless given."""
    now = utcnow()
    s.info.setdefault(_QUEUED, []).append({
        "channel": to.channel, "to_kind": to.kind, "to_id": to.id, "message": message_to_dict(message),
        "ticket_id": ticket_id, "track_key": message.card.track_key if isinstance(message, CardMessage) else None,
        "msg_class": message_class(message) if msg_class is None else msg_class, "status": PENDING,
        "attempts": 0, "next_attempt_at": now, "lease_until": None, "lease_owner": None, "last_error": None,
        "created_at": now, "sent_at": None})


_NOTIFY = "outbox_notify"  # session info: this transaction wrote rows; notify at commit


def _write_queued(session: Session) -> None:
    """Write the session's queued messages now (sync: called inside the session's own calls)."""
    rows = session.info.pop(_QUEUED, None)
    if rows:
        session.execute(_INSERT, rows)
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            session.info[_NOTIFY] = True


async def write_queued(s: AsyncSession) -> None:
    """Write the messages queued so far (the session writes them itself before its next
    statement and at commit; this is for a savepoint's edges)."""
    if s.info.get(_QUEUED):
        await s.run_sync(_write_queued)


@contextlib.asynccontextmanager
async def savepoint(s: AsyncSession) -> AsyncIterator[None]:
    """`s.begin_nested()` for work that queues messages: what it queued is written with
    it, or dropped with it when it rolls back."""
    await write_queued(s)  # queued before: not the savepoint's to drop
    try:
        async with s.begin_nested():
            yield
            await write_queued(s)
    except BaseException:
        s.info.pop(_QUEUED, None)
        raise


_INSERT = insert(OutboxMessage.__table__)


@event.listens_for(Session, "do_orm_execute")
def _before_statement(state) -> None:
    _write_queued(state.session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _write_queued(session)
    if session.info.pop(_NOTIFY, False):  # outbox workers in other processes: send at once
        session.execute(NOTIFY_OUTBOX)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is None:  # the whole transaction: nothing of it is written
        session.info.pop(_QUEUED, None)
        session.info.pop(_NOTIFY, None)


def process_identity(name: str | None = None) -> str:
    """`host:name`: stable across restarts of the same slot (a port, a worker number),
    so a restarted process takes back its predecessor's leases at once."""
    return f"{socket.gethostname()}:{name or os.getpid()}"


async def _no_wait() -> None:
    return None


async def _no_backlog() -> int:
    return 0


@dataclass
class ChannelHealth:
    """Whether a channel's API answers: down after consecutive failures, one probe at a time."""

    up: bool = True
    failures: int = 0
    probing: bool = False
    next_probe: float = 0.0  # monotonic time of the next probe while down
    since: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> str:
        return "up" if self.up else "down"


@dataclass
class _Result:
    row: OutboxMessage
    ref_key: tuple | None = None
    new_ref: dict | None = None
    error: DeliveryError | None = None
    released: bool = False  # not sent: an earlier row of its chain failed
    tries: int = 0  # failed bookkeeping writes so far
    retry_at: float = 0.0  # monotonic time of the next bookkeeping write


class OutboxWorker:
    def __init__(self, db: Database, channels: ChannelRegistry, config: OutboxConfig, metrics: Metrics,
                 *, owner: str | None = None):
        self.db = db
        self.channels = channels
        self.config = config
        self.metrics = metrics
        self.owner = owner or process_identity(f"{os.getpid()}-{id(self):x}")
        self._wake = asyncio.Event()
        self._stopping = False
        # Send times per recipient within its platform window; empty windows are dropped.
        self._sent_at: dict[Key, deque[float]] = {}
        self._pruned_at = time.monotonic()
        self._gauges_at = 0.0
        self._reaped_at = 0.0
        self.health: dict[str, ChannelHealth] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}  # channel -> its sends in flight (_in_flight)
        self._recovered: set[str] = set()  # channels that answered again since the last pass
        # Outcomes whose bookkeeping write failed: the send happened, so these rows are
        # never claimed again by this process and hold back nobody behind them.
        self._unfinished: list[_Result] = []
        self.bookkeeping_backoff = 0.5  # seconds before the first retry of such a write
        self.last_pass: float | None = None  # monotonic time of the last successful pass
        # Awaited before each sweep: lets callbacks being answered go first.
        self.yield_to = _no_wait
        # How many inbound events wait to be applied (set by the runtime from its inbox
        # worker; per process). While any do, card work waits for its turn (CARD_TURN_S).
        self.backlog: Callable[[], Awaitable[int]] = _no_backlog
        self._backlog_at = -BACKLOG_CHECK_S  # monotonic time of the last answer
        self._backlogged = False  # that answer
        self._cards_at = 0.0  # monotonic time of the last sweep that served card work
        # That sweep read as many due rows as it may: more card work is due, it goes on next sweep.
        self._cards_more = False
        self._more = False  # the last sweep left due rows it could not take: sweep again at once

    def wake(self) -> None:
        self._wake.set()

    def stop_soon(self) -> None:
        """Ask `run` to return after the current delivery pass (shutdown); rows it
        had not reached stay due for the next start."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until `stop_soon()` or cancelled; wakes on `wake()` or every poll interval."""
        self._stopping = False
        await self.take_back_own_leases()
        while not self._stopping:
            # Cleared before the sweep, not after: a wake during it (rows it may not have
            # seen) starts the next sweep at once, and a sweep that found everything is
            # not followed by an empty one.
            self._wake.clear()
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox sweep failed")
                self._more = False
            if self._more or self._stopping:
                continue
            timeout = self.config.poll_interval.total_seconds()
            if self._backlogged:  # card work skipped: back for its turn whether woken or not
                timeout = min(timeout, max(0.05, self._cards_at + CARD_TURN_S - time.monotonic()))
            await wait_event(self._wake, timeout)

    async def drain(self, max_rounds: int = 50, wait: float = 2.0) -> None:
        """Deliver everything that is due now (tests, CLI), and what a recipient's rate
        limit holds back for at most `wait` seconds more (never-tried rows only: a retry's
        back-off is not waited for)."""
        for _ in range(max_rounds):
            if await self.deliver_due(cards=True):
                continue
            async with self.db.session() as s:
                soonest = (await s.exec(select(func.min(OutboxMessage.next_attempt_at))
                                        .where(OutboxMessage.status == PENDING, OutboxMessage.attempts == 0))).one()
            delay = (soonest - utcnow()).total_seconds() if soonest is not None else None
            if delay is None or delay > wait:
                return
            await asyncio.sleep(max(0.0, delay) + 0.01)

    async def deliver_due(self, limit: int = 200, *, cards: bool | None = None) -> int:
        """One sweep: claim due rows (at most `limit` sent), send them, record the outcomes;
        returns how many were taken. `cards` says whether card work is served (default:
        unless inbound events wait and card work had its turn less than CARD_TURN_S ago)."""
        await self.yield_to()
        if self._unfinished:
            await self._retry_unfinished()
        if time.monotonic() - self._reaped_at >= 1.0:
            await self.take_back_dead_leases()
        if cards is None:
            cards = await self._cards_turn()
        chains, refs = await self._claim(limit, cards)
        if chains:
            results = await asyncio.gather(*(self._deliver_chain(rows, refs) for rows in chains))
            await self._finish([r for chain in results for r in chain])
        self.last_pass = time.monotonic()
        if self.last_pass - self._gauges_at >= 1.0:
            await self.update_gauges()
        return sum(len(rows) for rows in chains)

    async def _cards_turn(self) -> bool:
        """Whether this sweep serves card work: always without a backlog of inbound events,
        and during one every CARD_TURN_S (and until it has read all that is due)."""
        mono = time.monotonic()
        if mono - self._backlog_at >= BACKLOG_CHECK_S:
            self._backlogged = bool(await self.backlog())
            self._backlog_at = time.monotonic()
        return not self._backlogged or self._cards_more or mono - self._cards_at >= CARD_TURN_S

    # ---- leases ------------------------------------------------------------

    async def take_back_own_leases(self) -> int:
        """Rows this identity leased before a restart: its sends died with it, due now."""
        now = utcnow()
        async with self.db.session() as s:
            result = await s.exec(update(OutboxMessage)
                                  .where(OutboxMessage.status == SENDING, OutboxMessage.lease_owner == self.owner)
                                  .values(status=PENDING, lease_until=None, lease_owner=None, next_attempt_at=now,
                                          attempts=OutboxMessage.attempts + 1))
        n = result.rowcount or 0
        if n:
            log.warning("outbox: took back %d message(s) leased before this process restarted", n)
        return n

    async def take_back_dead_leases(self) -> int:
        """Rows leased by a process whose heartbeat stopped more than the grace ago: due now."""
        self._reaped_at = time.monotonic()
        now = utcnow()
        alive = (select(ProcessHeartbeat.owner)
                 .where(ProcessHeartbeat.beat_at > now - self.config.takeover_grace))
        async with self.db.session() as s:
            result = await s.exec(
                update(OutboxMessage)
                .where(OutboxMessage.status == SENDING, OutboxMessage.next_attempt_at > now,
                       or_(OutboxMessage.lease_owner.is_(None),
                           and_(OutboxMessage.lease_owner != self.owner, OutboxMessage.lease_owner.not_in(alive))))
                .values(status=PENDING, lease_until=None, lease_owner=None, next_attempt_at=now,
                        attempts=OutboxMessage.attempts + 1)  # the interrupted send counts
                .execution_options(synchronize_session=False))
        n = result.rowcount or 0
        if n:
            log.warning("outbox: took back %d message(s) leased by a process that stopped", n)
        return n

    # ---- claiming ----------------------------------------------------------

    def _limit(self, channel: Channel | None, kind: str) -> tuple[int, float] | None:
        """(messages, seconds) one recipient may receive, or None (no limit)."""
        if channel is None or not channel.rate_limited:
            return None
        if self.config.per_recipient_per_minute is not None:
            return self.config.per_recipient_per_minute, 60.0
        return channel.rate_limits.get(kind, (20, 60.0))

    async def _claim(self, limit: int, cards: bool = True) -> tuple[list[list[OutboxMessage]], dict]:
        """Due rows, leased, grouped per recipient in class order, then in the order written
        (pages and replies only unless `cards`)."""
        now = utcnow()
        mono = time.monotonic()
        chains: dict[Key, list[OutboxMessage]] = {}
        async with self.db.session() as s:
            # Without the message: deciding what to take needs only the recipient, class and
            # order; the messages (decoding them is most of a read) are loaded for the rows taken.
            stmt = (select(OutboxMessage).options(defer(OutboxMessage.message))
                    .where(OutboxMessage.status.in_((PENDING, SENDING)), OutboxMessage.next_attempt_at <= now)
                    .order_by(OutboxMessage.msg_class, OutboxMessage.id).limit(limit * 2))
            if not cards:
                stmt = stmt.where(OutboxMessage.msg_class <= REPLY)
            if self._unfinished:  # sent already; only their outcome is still to be written
                stmt = stmt.where(OutboxMessage.id.not_in([r.row.id for r in self._unfinished]))
            if self.db.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            due = (await s.exec(stmt)).all()
            self._more = len(due) >= limit * 2
            if cards:
                self._cards_at, self._cards_more = mono, self._more
            if not due:
                return [], {}
            due = await self._supersede(s, due)
            blockers = await self._blockers(s, [r for r in due if not self._full(r)], now)
            short = cards and self._backlogged  # a card turn during a backlog
            later: dict[int, datetime] = {}  # rows left pending: when each is due again
            deferred: dict[Key, datetime] = {}  # recipients at their limit: their due rows wait
            waiting: dict[Key, list[OutboxMessage]] = {}  # those rows (locked by this claim)
            throttled: set[Key] = set()  # of those recipients, the ones held by their rate limit
            held: set[Key | tuple] = set()
            taken: list[int] = []
            for row in due:
                key: Key = (row.channel, row.to_kind, row.to_id)
                lane = (*key, row.msg_class)
                if key in deferred:
                    waiting[key].append(row)
                    continue
                if lane in held or key in held:
                    continue
                blocker = blockers.get(lane)
                if blocker is not None and blocker[0] < row.id:
                    # Held back behind an earlier row: look again when that one is due.
                    later[row.id] = min(blocker[1], now + timedelta(seconds=5))
                    continue
                if len(taken) >= limit:
                    held.add(lane)
                    self._more = True
                    continue
                channel = self.channels.get(row.channel)
                health = self.health.get(row.channel)
                probe = health is not None and not health.up
                if probe and (health.probing or mono < health.next_probe):
                    deferred[key] = now + timedelta(seconds=max(1.0, health.next_probe - mono))
                    waiting[key] = [row]
                    continue
                if short and row.msg_class >= UPDATE and sum(
                        r.msg_class >= UPDATE for r in chains.get(key, ())) >= CARD_TURN_SENDS:
                    held.add(key)  # its next cards go with the next sweep of this card turn
                    self._more = self._cards_more = True
                    continue
                wait = self._rate_wait(key, self._limit(channel, row.to_kind), len(chains.get(key, ())))
                if wait:
                    deferred[key] = now + timedelta(seconds=wait)
                    waiting[key] = [row]
                    throttled.add(key)
                    continue
                if probe:
                    health.probing = True  # this one row tells whether the API answers again
                chains.setdefault(key, []).append(row)
                taken.append(row.id)
            if taken:
                lease_until = now + self.config.lease
                await s.exec(update(OutboxMessage).where(OutboxMessage.id.in_(taken))
                             .values(status=SENDING, lease_until=lease_until, next_attempt_at=lease_until,
                                     lease_owner=self.owner).execution_options(synchronize_session=False))
            # Only rows this claim read (and, on PostgreSQL, locked): two processes never
            # wait for each other's rows, so they cannot deadlock.
            await self._fold(s, {key: waiting[key] for key in throttled}, deferred, now)
            for key, until in deferred.items():
                for row in waiting[key]:
                    later[row.id] = until
            if later:  # one statement for all of them, each row with its own time
                await s.exec(update(OutboxMessage),
                             params=[{"id": i, "status": PENDING, "next_attempt_at": at} for i, at in later.items()])
            claimed = [r for rows in chains.values() for r in rows]
            await _load_messages(s, claimed)
            refs = await self._refs(s, claimed)
        return list(chains.values()), refs

    async def _supersede(self, s: AsyncSession, due: list[OutboxMessage]) -> list[OutboxMessage]:
        """Of several due updates of one card to one recipient, only the newest is sent:
        each carries the whole card (forty reports of one incident are one card update
        per recipient, not forty). Returns the rows left."""
        # Only recipients with two or more pending updates of one card can have one to drop:
        # their messages are read to tell an update from a first send.
        seen: dict[tuple, int] = {}
        for r in due:
            if r.track_key and r.msg_class == UPDATE and r.status == PENDING:
                k = (r.channel, r.to_kind, r.to_id, r.track_key)
                seen[k] = seen.get(k, 0) + 1
        if not any(n > 1 for n in seen.values()):
            return due
        candidates = [r for r in due if r.track_key and r.msg_class == UPDATE and r.status == PENDING
                      and seen[(r.channel, r.to_kind, r.to_id, r.track_key)] > 1]
        await _load_messages(s, candidates)
        newest: dict[tuple, int] = {}
        for r in candidates:
            if r.message.get("update"):
                k = (r.channel, r.to_kind, r.to_id, r.track_key)
                newest[k] = max(newest.get(k, 0), r.id)
        old = [r.id for r in candidates
               if r.message.get("update") and r.id < newest[(r.channel, r.to_kind, r.to_id, r.track_key)]]
        if not old:
            return due
        await s.exec(update(OutboxMessage).where(OutboxMessage.id.in_(old))
                     .values(status=SUPERSEDED, lease_until=None).execution_options(synchronize_session=False))
        gone = set(old)
        return [r for r in due if r.id not in gone]

    async def _fold(self, s: AsyncSession, waiting: dict[Key, list[OutboxMessage]], until: dict[Key, datetime],
                    now: datetime) -> None:
        """Recipients at their limit with new-ticket cards due: one digest card each instead.

        Of a recipient's `waiting` rows (due now, read by this claim), the new-ticket
        cards become `folded` and leave the list. The digest counts and lists what was
        folded for the recipient: an unsent digest is rewritten, one already sent is
        updated in place by a new row with the same track key, due at `until[key]`.
        """
        if self.config.digest_after <= 0:
            return
        candidates = {}
        for key, rows in waiting.items():
            new_cards = [r for r in rows if r.status == PENDING and r.msg_class == BULK]
            if len(new_cards) >= self.config.digest_after:  # fewer: their messages need not be read
                candidates[key] = new_cards
        if not candidates:
            return
        await _load_messages(s, [r for rows in candidates.values() for r in rows])
        folds: dict[Key, list[OutboxMessage]] = {}
        for key, rows in candidates.items():
            queued = [r for r in rows if _is_new_ticket_card(r.message)]
            if sum(1 for r in queued if r.message["card"]["kind"] == "engineer") >= self.config.digest_after:
                folds[key] = queued
        if not folds:
            return
        folded = [r.id for rows in folds.values() for r in rows]
        await s.exec(update(OutboxMessage).where(OutboxMessage.id.in_(folded))
                     .values(status=FOLDED, lease_until=None).execution_options(synchronize_session=False))
        sent = set((await s.exec(
            select(CardRef.channel, CardRef.to_kind, CardRef.to_id)
            .where(CardRef.track_key == build.DIGEST_KEY, CardRef.channel.in_({k[0] for k in folds}),
                   CardRef.to_kind.in_({k[1] for k in folds}), CardRef.to_id.in_({k[2] for k in folds})))).all())
        for key, queued in folds.items():
            await self._write_digest(s, key, queued, until[key], tuple(key) in sent, now)
            gone = {r.id for r in queued}
            waiting[key][:] = [r for r in waiting[key] if r.id not in gone]

    async def _write_digest(self, s: AsyncSession, key: Key, folded: list[OutboxMessage], until: datetime,
                            sent: bool, now: datetime) -> None:
        """Add `folded` to the recipient's digest: its newest digest row carries the tally
        (how many since when, the newest few), so a fold reads one row however many were
        folded before. The tally covers at most a day: an older one starts again."""
        mine = (OutboxMessage.channel == key[0], OutboxMessage.to_kind == key[1], OutboxMessage.to_id == key[2])
        last = (await s.exec(select(OutboxMessage).where(*mine, OutboxMessage.track_key == build.DIGEST_KEY)
                             .order_by(OutboxMessage.id.desc()).limit(1))).first()
        if last is not None:
            await _load_messages(s, [last])
        tally = (last.message.get("digest") if last is not None else None) or {}
        if tally.get("since", 0.0) < (now - timedelta(days=1)).timestamp():
            tally = {"since": now.timestamp(), "total": 0, "entries": []}
        cards = [r.message["card"] for r in folded if r.message["card"]["kind"] == "engineer"]
        entries = [*tally["entries"], *([c.get("subtitle") or "", c.get("title") or ""] for c in cards)]
        tally = {"since": tally["since"], "total": tally["total"] + len(cards),
                 "entries": entries[-build.DIGEST_LINES:]}
        card = build.digest_card([tuple(e) for e in tally["entries"]], tally["total"])
        message = {**message_to_dict(CardMessage(card, update=sent)), "digest": tally}
        # Unsent: rewritten (also when this claim has just taken it: it goes out with these).
        pending = last if last is not None and last.status == PENDING else None
        if pending is not None and self.db.is_postgres:  # another process folding into it: add one after it
            pending = (await s.exec(select(OutboxMessage).where(OutboxMessage.id == pending.id,
                                                                OutboxMessage.status == PENDING)
                                    .with_for_update(skip_locked=True))).first()
        if pending is not None:
            pending.message = message
            s.add(pending)
        else:
            s.add(OutboxMessage(channel=key[0], to_kind=key[1], to_id=key[2], message=message,
                                track_key=card.track_key, next_attempt_at=until, msg_class=BULK))
        log.info("outbox: %d new-ticket card(s) to %s:%s:%s folded into its digest (%d listed)",
                 len(folded), *key, tally["total"])

    def _full(self, row: OutboxMessage) -> bool:
        """Whether the row's recipient is at its limit now (no need to look for its blockers)."""
        return bool(self._rate_wait((row.channel, row.to_kind, row.to_id),
                                    self._limit(self.channels.get(row.channel), row.to_kind)))

    async def _blockers(self, s: AsyncSession, due: list[OutboxMessage], now: datetime) -> dict:
        """Per (recipient, class) among the due rows' recipients: the first row that is
        not due yet (waiting for a retry, or leased) and when it is looked at next."""
        if not due:
            return {}
        stmt = (
            select(OutboxMessage.channel, OutboxMessage.to_kind, OutboxMessage.to_id, OutboxMessage.msg_class,
                   func.min(OutboxMessage.id), func.min(OutboxMessage.next_attempt_at))
            .where(OutboxMessage.channel.in_({r.channel for r in due}),
                   OutboxMessage.to_kind.in_({r.to_kind for r in due}),
                   OutboxMessage.to_id.in_({r.to_id for r in due}),
                   OutboxMessage.status.in_((PENDING, SENDING)), OutboxMessage.next_attempt_at > now)
            .group_by(OutboxMessage.channel, OutboxMessage.to_kind, OutboxMessage.to_id,
                      OutboxMessage.msg_class))
        if self._unfinished:  # delivered, in order: what follows them is not held back
            stmt = stmt.where(OutboxMessage.id.not_in([r.row.id for r in self._unfinished]))
        rows = (await s.exec(stmt)).all()
        return {(c, k, i, m): (first, at) for c, k, i, m, first, at in rows}

    async def _refs(self, s: AsyncSession, rows: list[OutboxMessage]) -> dict:
        """Stored card handles for the claimed card rows, in one query."""
        keys = {r.track_key for r in rows if r.track_key}
        if not keys:
            return {}
        stored = (await s.exec(select(CardRef).where(CardRef.track_key.in_(keys)))).all()
        return {(c.channel, c.to_kind, c.to_id, c.track_key): c.ref for c in stored}

    def _rate_wait(self, key: Key, limit: tuple[int, float] | None, pending: int = 0) -> float:
        """Seconds until `key` may receive one more message (0: now)."""
        if limit is None:
            return 0.0
        cap, period = limit
        window = self._sent_at.get(key)
        if window is None:
            return 0.0 if pending < cap else period
        now = time.monotonic()
        while window and window[0] <= now - period:
            window.popleft()
        if len(window) + pending >= cap:
            index = len(window) + pending - cap
            return max(0.05, window[index] + period - now) if index < len(window) else period
        return 0.0

    # ---- sending -------------------------------------------------------------

    async def _deliver_chain(self, rows: list[OutboxMessage], refs: dict) -> list[_Result]:
        """One recipient's messages, strictly in order; a failure holds back the rest."""
        results: list[_Result] = []
        for i, row in enumerate(rows):
            await self.yield_to()
            result = await self._send(row, refs)
            results.append(result)
            if result.error is not None:
                results += [_Result(r, released=True) for r in rows[i + 1:]]
                break
        return results

    async def _send(self, row: OutboxMessage, refs: dict) -> _Result:
        channel = self.channels.get(row.channel)
        to = Address(row.channel, row.to_kind, row.to_id)  # type: ignore[arg-type]
        ref_key = (row.channel, row.to_kind, row.to_id, row.track_key) if row.track_key else None
        result = _Result(row, ref_key)
        try:
            if channel is None:
                raise DeliveryError(f"channel {row.channel!r} is not configured", retryable=False)
            message = message_from_dict(row.message)
            token, resend = current_outbox_id.set(row.id), current_is_resend.set(row.attempts > 0)
            try:
                async with self._in_flight(channel):
                    result.new_ref = await channel.send(to, message, refs.get(ref_key) if ref_key else None)
            finally:
                current_outbox_id.reset(token)
                current_is_resend.reset(resend)
            if ref_key and result.new_ref is not None:
                refs[ref_key] = result.new_ref  # a later update in this pass edits this card
        except DeliveryError as e:
            result.error = e
        except Exception as e:  # a bug or an unexpected transport error: retry, keep it visible
            log.exception("outbox %s: sending to %s failed", row.id, to)
            result.error = DeliveryError(f"{type(e).__name__}: {e}")
        key = (row.channel, row.to_kind, row.to_id)
        self._sent_at.setdefault(key, deque()).append(time.monotonic())
        self._observe_health(row.channel, result.error)
        return result

    def _in_flight(self, channel: Channel) -> asyncio.Semaphore:
        """The channel's sends in flight: a sweep sends to every recipient at once, and at most
        `channel.sends_in_flight` of them are on the wire (its HTTP pool's size)."""
        gate = self._gates.get(channel.name)
        if gate is None:
            gate = self._gates[channel.name] = asyncio.Semaphore(channel.sends_in_flight)
        return gate

    def _observe_health(self, name: str, error: DeliveryError | None) -> None:
        health = self.health.setdefault(name, ChannelHealth())
        health.probing = False
        if error is None:
            health.failures = 0
            if not health.up:
                health.up, health.since = True, time.monotonic()
                log.warning("outbox: channel %s answers again: its held messages are due now", name)
                self._recovered.add(name)
            return
        # A rate-limit answer or a refused message says nothing about the API being down.
        if error.retry_after or not error.retryable:
            return
        health.failures += 1
        now = time.monotonic()
        if health.up and health.failures >= self.config.down_after:
            health.up, health.since = False, now
            log.warning("outbox: channel %s is down after %d failures in a row; probing every %.0fs",
                        name, health.failures, self.config.probe_interval.total_seconds())
        if not health.up:
            health.next_probe = now + self.config.probe_interval.total_seconds()

    # ---- bookkeeping ---------------------------------------------------------

    def _values(self, r: _Result, now: datetime) -> dict:
        """What the row becomes after this attempt (also counts and logs it)."""
        row = r.row
        if r.released:
            return {"status": PENDING, "lease_until": None, "lease_owner": None, "next_attempt_at": now}
        values: dict = {"attempts": row.attempts + 1, "lease_until": None, "lease_owner": None}
        error = r.error
        if error is None:
            values.update(status=SENT, sent_at=now, last_error=None)
        elif not error.retryable or row.attempts + 1 >= self.config.max_attempts:
            values.update(status=FAILED, last_error=str(error)[:1000])
        else:
            delay = self.backoff(row.attempts + 1)
            health = self.health.get(row.channel)
            if health is not None and not health.up:
                # Held while the channel is down: the recovery makes it due, not its own back-off.
                delay = max(delay, self.config.probe_interval.total_seconds())
            if error.retry_after:
                delay = max(delay, error.retry_after)
            values.update(status=PENDING, last_error=str(error)[:1000], next_attempt_at=now + timedelta(seconds=delay))
        return values

    def _count(self, r: _Result, values: dict) -> None:
        row = r.row
        if r.released:
            return
        status = values["status"]
        if status == SENT:
            self.metrics.outbox_sent.labels(row.channel).inc()
        elif status == FAILED:
            self.metrics.outbox_failed.labels(row.channel).inc()
            log.error("outbox %s to %s:%s:%s failed for good after %d attempt(s): %s",
                      row.id, row.channel, row.to_kind, row.to_id, row.attempts + 1, r.error)
        else:
            self.metrics.outbox_retries.labels(row.channel).inc()
            log.warning("outbox %s to %s:%s failed (attempt %d), retrying at %s: %s",
                        row.id, row.channel, row.to_id, row.attempts + 1, values["next_attempt_at"], r.error)

    async def _finish(self, results: list[_Result]) -> None:
        """Write a pass's outcomes in one transaction; on failure row by row."""
        now = utcnow()
        outcomes = [(r, self._values(r, now)) for r in results]
        try:
            async with self.db.session() as s:
                # Rows with the same outcome (sent on their first attempt, released) share one statement.
                groups: dict[tuple, list[int]] = {}
                for r, values in outcomes:
                    groups.setdefault(tuple(sorted(values.items())), []).append(r.row.id)
                for items, ids in groups.items():
                    await s.exec(update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(**dict(items))
                                 .execution_options(synchronize_session=False))
                await self._store_refs(s, [r for r in results if r.error is None and not r.released], now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox: writing %d outcome(s) at once failed; writing them one by one", len(results))
            for r in results:
                await self._finish_one(r, now)
        else:
            for r, values in outcomes:
                self._count(r, values)
        await self._after_recovery()

    async def _finish_one(self, r: _Result, now: datetime) -> bool:
        r.tries += 1
        try:
            async with self.db.session() as s:
                values = self._values(r, now)
                await s.exec(update(OutboxMessage).where(OutboxMessage.id == r.row.id).values(**values))
                # After a few failed writes, the card handle is what is dropped (a later
                # update then sends a new card); the send itself is never repeated.
                if r.tries <= 3 and r.error is None and not r.released:
                    await self._store_refs(s, [r], now)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            delay = min(BOOKKEEPING_MAX_WAIT_S, self.bookkeeping_backoff * 2 ** (r.tries - 1))
            r.retry_at = time.monotonic() + delay
            if r.tries == 1:
                log.exception("outbox %s: recording its outcome failed; written again in %.1f s", r.row.id, delay)
            else:  # the same failure again: one line, no traceback
                log.warning("outbox %s: recording its outcome failed again (try %d: %s); next try in %.1f s",
                            r.row.id, r.tries, f"{type(e).__name__}: {e}"[:200], delay)
            if r not in self._unfinished:
                self._unfinished.append(r)
            return False
        self._count(r, values)
        return True

    async def _retry_unfinished(self) -> None:
        """Write again the outcomes whose time has come (each with its own back-off)."""
        mono = time.monotonic()
        due = [r for r in self._unfinished if r.retry_at <= mono]
        if not due:
            return
        self._unfinished = [r for r in self._unfinished if r.retry_at > mono]
        now = utcnow()
        for r in due:
            await self._finish_one(r, now)

    async def _store_refs(self, s: AsyncSession, results: list[_Result], now: datetime) -> None:
        latest = {r.ref_key: r.new_ref for r in results if r.ref_key and r.new_ref is not None}
        if not latest:
            return
        stored = {(c.channel, c.to_kind, c.to_id, c.track_key): c for c in (await s.exec(
            select(CardRef).where(CardRef.track_key.in_({k[3] for k in latest})))).all()}
        for key, ref in latest.items():
            row = stored.get(key)
            if row is None:
                s.add(CardRef(channel=key[0], to_kind=key[1], to_id=key[2], track_key=key[3], ref=ref,
                              updated_at=now))
            else:
                row.ref, row.updated_at = ref, now
                s.add(row)

    async def _after_recovery(self) -> None:
        """A channel that answers again: everything it held is due now (in order, within limits)."""
        if not self._recovered:
            return
        names, self._recovered = self._recovered, set()
        now = utcnow()
        async with self.db.session() as s:
            await s.exec(update(OutboxMessage)
                         .where(OutboxMessage.channel.in_(names), OutboxMessage.status == PENDING,
                                OutboxMessage.next_attempt_at > now)
                         .values(next_attempt_at=now).execution_options(synchronize_session=False))
        self.wake()

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: half fixed, half random."""
        cap = self.config.max_delay.total_seconds()
        delay = min(cap, self.config.base_delay.total_seconds() * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def prune(self) -> None:
        """Forget recipients whose window is empty: memory follows recent traffic, not history."""
        now = time.monotonic()
        for key in [k for k, w in self._sent_at.items() if not w or w[-1] <= now - 3600]:
            del self._sent_at[key]
        self._pruned_at = now

    async def update_gauges(self) -> None:
        self._gauges_at = time.monotonic()
        if self._gauges_at - self._pruned_at >= 60:
            self.prune()
        async with self.db.session() as s:
            rows = (await s.exec(
                select(OutboxMessage.status, func.count())
                .where(OutboxMessage.status.in_((PENDING, SENDING, FAILED)))
                .group_by(OutboxMessage.status))).all()
        counts = dict(rows)
        self.metrics.outbox_pending.set(counts.get(PENDING, 0) + counts.get(SENDING, 0))
        self.metrics.outbox_failed_rows.set(counts.get(FAILED, 0))
        for name in self.channels.names():
            self.metrics.channel_up.labels(name).set(1 if self.health.get(name, ChannelHealth()).up else 0)

    def channel_states(self) -> dict[str, str]:
        return {name: self.health.get(name, ChannelHealth()).state for name in self.channels.names()}


async def _load_messages(s: AsyncSession, rows: list[OutboxMessage]) -> None:
    """Fill in the message of rows read without it, in one query."""
    missing = {r.id: r for r in rows if "message" not in r.__dict__}
    if not missing:
        return
    for row_id, message in (await s.exec(select(OutboxMessage.id, OutboxMessage.message)
                                         .where(OutboxMessage.id.in_(list(missing))))).all():
        set_committed_value(missing[row_id], "message", message)


def _is_new_ticket_card(message: dict) -> bool:
    """A first engineer card about a ticket, or its SOP card (not an update): what a digest
    replaces (it lists the engineer cards; the SOP is one click away once claimed)."""
    return (message.get("type") == "card" and not message.get("update")
            and (message.get("card") or {}).get("kind") in ("engineer", "sop"))
