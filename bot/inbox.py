"""The inbox worker: applies accepted inbound messages after their callback was answered.

Events are claimed in batches (row-locked with SKIP LOCKED on PostgreSQL) and
applied in one transaction, each inside its own savepoint, then marked done in
that same transaction: a crash or a second process never applies one twice
and never loses one. A failure rolls back only its own event, which is kept
with its error and retried with back-off. After the last attempt the event is
parked as a dead letter: counted in /metrics, told to the admins in chat, and
shown and replayed by `python run_bot.py inbox list|retry`. An acknowledged
event is never dropped.

Between batches, about once a second, the worker also updates the cards of
tickets whose update was put off (a report linked to an incident leaves a
CardRefresh row; see bot/core/notify.py).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta

from sqlalchemy import func, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.events import Text, event_from_dict
from bot.metrics import Metrics
from bot.outbox import PAGE, enqueue, savepoint
from bot.tasks import wait_event
from bot.texts import t
from storage.db import Database
from storage.models import InboxEvent, Person
from storage.types import utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 50  # events claimed per transaction
# A transaction stops taking more events after this long, or as soon as a callback
# waits for SQLite's one write lock to record its event. Each transaction costs a
# commit and a read of the due events, so at ten milliseconds a burst was applied
# one event per transaction; twenty-five keeps an answer's wait well within the
# platforms' patience while several events share a transaction.
BATCH_SECONDS = 0.025
# Before a transaction, wait at most this long for callbacks being answered: at a
# hundred callbacks a second one is nearly always in progress, and a longer wait
# starved the inbox (the gate still serves a waiting answer first).
YIELD_SECONDS = 0.02
READ_MIN = 4  # fewest events read per transaction once they are applied slowly
CARD_REFRESH_EVERY = 1.0  # seconds between looks for tickets whose cards are due an update (CardRefresh)
PENDING, DONE, DEAD = "pending", "done", "dead"


class _Spoiled(Exception):
    """An event applied without a savepoint failed: its transaction must roll back."""

    def __init__(self, row_id: int, error: Exception):
        super().__init__(row_id, error)
        self.row_id, self.error = row_id, error


class InboxWorker:
    def __init__(self, db: Database, bot, metrics: Metrics, *, directory=None, poll_interval: float = 1.0):
        self.db = db
        self.bot = bot
        self.metrics = metrics
        self.directory = directory  # finds the admins to tell about a dead letter
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self.last_pass: float | None = None  # monotonic time of the last successful pass
        self._stopping = False
        # Events read per transaction: about twice what the last time-bounded one applied.
        # Rows read and not applied are read (and decoded) again by the next transaction.
        self._read = BATCH
        self._next_refresh = 0.0  # monotonic time of the next look for due card updates

    def wake(self) -> None:
        self._wake.set()

    def stop_soon(self) -> None:
        """Ask `run` to return after the event it is applying (shutdown): cancelling
        it inside a transaction would leave the database driver's connection to be
        torn down by a cancelled task."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        self._stopping = False
        await self.update_gauges()
        while not self._stopping:
            try:
                busy = await self.process_batch()
                if time.monotonic() >= self._next_refresh:
                    self._next_refresh = time.monotonic() + CARD_REFRESH_EVERY
                    busy += await self.refresh_cards()
                self.last_pass = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox: processing failed")
                busy = 0
            if busy or self._stopping:
                continue
            self._wake.clear()
            await wait_event(self._wake, self.poll_interval)

    async def drain(self) -> int:
        """Apply everything due now; returns how many events were taken."""
        n = 0
        while taken := await self.process_batch():
            n += taken
        return n

    async def process_next(self) -> bool:
        """Apply the next due event alone (tests)."""
        return bool(await self.process_batch(1))

    async def process_batch(self, limit: int = BATCH) -> int:
        """Claim up to `limit` due events and apply them in one transaction; returns how many."""
        await self.bot.yield_to_callbacks(YIELD_SECONDS)
        now = utcnow()
        try:
            return await self._batch(limit, now)
        except _Spoiled as failed:  # a batch of one event, rolled back: its failure is recorded on its own
            async with self.db.session() as s:
                row = await s.get(InboxEvent, failed.row_id, with_for_update=True)  # unless another took it
                if row is not None and row.status == PENDING and self._failed(s, row, failed.error, now) == DEAD:
                    await self._alert(s, row)
            await self.update_gauges()
            return 1

    async def _batch(self, limit: int, now) -> int:
        dead: list[InboxEvent] = []
        async with self.db.session() as s:
            stmt = (select(InboxEvent)
                    .where(InboxEvent.status == PENDING, InboxEvent.next_attempt_at <= now)
                    .order_by(InboxEvent.id).limit(min(limit, self._read)))
            if self.db.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            rows = (await s.exec(stmt)).all()
            start = time.perf_counter()
            taken = 0
            done: list[int] = []
            for row in rows:
                if taken and (self.db.urgent_waiting or time.perf_counter() - start > BATCH_SECONDS):
                    break  # the rest stay pending for the next transaction
                taken += 1
                outcome = await self._apply(s, row, now, alone=len(rows) == 1)
                if outcome == DONE:
                    done.append(row.id)
                elif outcome == DEAD:
                    dead.append(row)
            if taken < len(rows):  # stopped by time: read about that many next time
                self._read = max(READ_MIN, 2 * taken)
            elif len(rows) == min(limit, self._read):  # all applied: there may be more, read more
                self._read = min(BATCH, 2 * self._read)
            rows = rows[:taken]
            if done:  # one statement for the batch's applied events
                await s.exec(update(InboxEvent).where(InboxEvent.id.in_(done))
                             .values(status=DONE, attempts=InboxEvent.attempts + 1, processed_at=utcnow())
                             .execution_options(synchronize_session=False))
            for row in dead:
                await self._alert(s, row)
        if rows:
            self.bot.on_commit()
        if dead:
            await self.update_gauges()
        return len(rows)

    async def refresh_cards(self, now=None) -> int:
        """Update the cards of the tickets whose CardRefresh is due (by `now`); returns how many."""
        await self.bot.yield_to_callbacks(YIELD_SECONDS)
        async with self.db.session() as s:
            n = await self.bot.refresh_due_cards(s, now or utcnow())
        if n:
            self.bot.on_commit()
        return n

    async def _apply(self, s: AsyncSession, row: InboxEvent, now, *, alone: bool = False) -> str:
        """Apply one event in its own savepoint: DONE (marked by the caller), PENDING (kept
        for a retry) or DEAD (parked). An event `alone` in its transaction needs no
        savepoint (two statements fewer, most events under load): when it fails, the
        whole transaction rolls back and its failure is recorded in the next (_Spoiled)."""
        try:
            if alone:
                await self.bot.process(s, event_from_dict(row.payload))
            else:
                async with savepoint(s):
                    await self.bot.process(s, event_from_dict(row.payload))
        except Exception as e:  # keep the event and its error; retry later
            if alone:
                raise _Spoiled(row.id, e) from e
            return self._failed(s, row, e, now)
        self.metrics.inbound.labels(row.platform, "ok").inc()
        return DONE

    def _failed(self, s: AsyncSession, row: InboxEvent, e: Exception, now) -> str:
        """Count a failed attempt: PENDING with a back-off, or DEAD after the last one."""
        row.attempts += 1
        log.error("inbox %s (%s %s) failed, attempt %d", row.id, row.platform, row.event_id, row.attempts,
                  exc_info=e)
        row.last_error = f"{type(e).__name__}: {e}"[:1000]
        if row.attempts >= MAX_ATTEMPTS:
            row.status = DEAD
            self.metrics.inbox_failed.labels(row.platform).inc()
            log.error("inbox %s parked as a dead letter after %d attempts: python run_bot.py inbox retry %s",
                      row.id, row.attempts, row.id)
        else:
            delay = min(300.0, 2.0 ** row.attempts) * random.uniform(0.5, 1.0)
            row.next_attempt_at = now + timedelta(seconds=delay)
        s.add(row)
        return row.status

    async def _alert(self, s: AsyncSession, row: InboxEvent) -> None:
        """Tell every admin who can be reached in chat that an event was parked."""
        if self.directory is None:
            return
        text = t("notify.staff.inbox_dead", platform=row.platform, id=row.id, attempts=row.attempts,
                 error=(row.last_error or "")[:200])
        admins = (await s.exec(select(Person.id).where(Person.role == "admin", Person.active.is_(True)))).all()
        for pid in admins:
            to = await self.directory.direct_address(s, pid)
            if to is not None:
                enqueue(s, to, Text(text), msg_class=PAGE)

    async def update_gauges(self) -> None:
        async with self.db.session() as s:
            n = (await s.exec(select(func.count()).select_from(InboxEvent).where(InboxEvent.status == DEAD))).one()
        self.metrics.inbox_dead.set(n)

    async def backlog(self) -> int:
        """Events not yet applied, those waiting for a later attempt included."""
        async with self.db.session() as s:
            return (await s.exec(select(func.count()).select_from(InboxEvent)
                                 .where(InboxEvent.status == PENDING))).one()

    async def due(self) -> int:
        """Events waiting to be applied now (an event waiting for its retry is not)."""
        async with self.db.session() as s:
            return (await s.exec(select(func.count()).select_from(InboxEvent)
                                 .where(InboxEvent.status == PENDING, InboxEvent.next_attempt_at <= utcnow()))).one()

    # ---- dead letters (python run_bot.py inbox list|retry) -------------------

    async def dead_letters(self) -> list[InboxEvent]:
        async with self.db.session() as s:
            return list((await s.exec(select(InboxEvent).where(InboxEvent.status == DEAD)
                                      .order_by(InboxEvent.id))).all())

    async def retry(self, ids: list[int] | None = None) -> int:
        """Make dead letters (all, or those in `ids`) due again with fresh attempts; returns how many."""
        async with self.db.session() as s:
            stmt = select(InboxEvent).where(InboxEvent.status == DEAD)
            if ids:
                stmt = stmt.where(InboxEvent.id.in_(ids))
            rows = (await s.exec(stmt)).all()
            for row in rows:
                row.status, row.attempts, row.next_attempt_at = PENDING, 0, utcnow()
                s.add(row)
        return len(rows)
