"""The inbox worker: applies accepted inbound messages after their callback was answered.

Each event is claimed, applied and marked done in one transaction (row-locked
with SKIP LOCKED on PostgreSQL), so a crash or a second process never applies
it twice and never loses it. A failure is kept with its error and retried with
back-off; after the last attempt the row stays `failed` and is counted in /metrics.
"""
from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import select

from bot.events import event_from_dict
from bot.metrics import Metrics
from bot.tasks import wait_event
from storage.db import Database
from storage.models import InboxEvent
from storage.types import utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


class InboxWorker:
    def __init__(self, db: Database, bot, metrics: Metrics, *, poll_interval: float = 1.0):
        self.db = db
        self.bot = bot
        self.metrics = metrics
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = False

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
        while not self._stopping:
            try:
                busy = await self.process_next()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox: processing failed")
                busy = False
            if busy or self._stopping:
                continue
            self._wake.clear()
            await wait_event(self._wake, self.poll_interval)

    async def drain(self) -> int:
        """Apply everything due now; returns how many events were taken."""
        n = 0
        while await self.process_next():
            n += 1
        return n

    async def process_next(self) -> bool:
        await self.bot.yield_to_callbacks()
        now = utcnow()
        async with self.db.session() as s:
            stmt = (select(InboxEvent)
                    .where(InboxEvent.status == "pending", InboxEvent.next_attempt_at <= now)
                    .order_by(InboxEvent.id).limit(1))
            if self.db.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            row = (await s.exec(stmt)).first()
            if row is None:
                return False
            row.attempts += 1
            try:
                async with s.begin_nested():
                    await self.bot.process(s, event_from_dict(row.payload))
            except Exception as e:  # keep the event and its error; retry later
                log.exception("inbox %s (%s %s) failed, attempt %d", row.id, row.platform, row.event_id,
                              row.attempts)
                row.last_error = f"{type(e).__name__}: {e}"[:1000]
                if row.attempts >= MAX_ATTEMPTS:
                    row.status = "failed"
                    self.metrics.inbox_failed.labels(row.platform).inc()
                else:
                    delay = min(300.0, 2.0 ** row.attempts) * random.uniform(0.5, 1.0)
                    row.next_attempt_at = now + timedelta(seconds=delay)
            else:
                row.status = "done"
                row.processed_at = utcnow()
                self.metrics.inbound.labels(row.platform, "ok").inc()
            s.add(row)
        self.bot.on_commit()
        return True

    async def backlog(self) -> int:
        async with self.db.session() as s:
            return (await s.exec(select(func.count()).select_from(InboxEvent)
                                 .where(InboxEvent.status == "pending"))).one()
