"""APScheduler in every process: the escalation sweep and the periodic jobs
(auditor, follow-ups, retention of old bookkeeping rows, reports).

Per-ticket timers are rows (escalation_timer.due_at), never APScheduler jobs:
the scheduler only runs, in memory, the sweep every `sweep_interval` and the
periodic jobs. Every process sweeps (PostgreSQL row locks share the work); a
periodic job runs in one process per period: on PostgreSQL under an advisory
lock, and everywhere only when its `periodic_job` row says the period is due.
"""
from __future__ import annotations

import logging
import zlib
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text

from bot.core.states import TERMINAL
from bot.tasks import BackgroundTasks
from escalation.auditor import audit
from escalation.engine import EscalationEngine
from storage.models import PeriodicJob
from storage.retention import prune


log = logging.getLogger(__name__)


def advisory_key(name: str) -> int:
    """A stable 32-bit key for pg_try_advisory_lock (fits its bigint argument)."""
    return zlib.crc32(f"relaydesk:{name}".encode())


class Jobs:
    """The scheduler's jobs only start work; the work runs in tasks of our own.

    An APScheduler job returns as soon as it has spawned its work, so shutting the
    scheduler down never cancels a transaction half done, and `stop()` has one
    bounded wait for whatever is still running.
    """

    STOP_TIMEOUT = 5.0  # seconds a sweep in progress gets to finish its batch

    def __init__(self, engine: "EscalationEngine"):
        self.engine = engine
        self.scheduler = AsyncIOScheduler(timezone=timezone.utc)
        self.tasks = BackgroundTasks("escalation")

    def start(self) -> None:
        ec = self.engine.ec
        now = datetime.now(timezone.utc)
        if ec.enabled:
            # First run at once: steps that fell due while the bot was down fire now.
            self.scheduler.add_job(self._sweep, "interval", seconds=ec.sweep_interval.total_seconds(),
                                   id="escalation-sweep", next_run_time=now, max_instances=1,
                                   coalesce=True, misfire_grace_time=None)
        self.add_periodic("auditor", ec.auditor.interval, lambda: audit(self.engine),
                          first=now + timedelta(seconds=5))
        if self.engine.config.probes:
            self.scheduler.add_job(self._verify, "interval", seconds=1, id="verifications", next_run_time=now,
                                   max_instances=1, coalesce=True, misfire_grace_time=None)
        fc = self.engine.config.followup
        if fc.enabled and fc.steps:
            self.add_periodic("followups", fc.check_interval, self.engine.sweep_followups, first=now)
        # Old bookkeeping rows go in batches; first a few minutes in, after the start-up catch-up.
        self.add_periodic("retention", self.engine.config.retention.interval, self._prune,
                          first=now + timedelta(minutes=3))
        self.scheduler.start()

    async def _prune(self) -> None:
        await prune(self.engine.db, self.engine.config.retention, self.engine.clock(), terminal=TERMINAL)

    def add_periodic(self, name: str, interval: timedelta, fn: Callable[[], Awaitable[None]],
                     first: datetime | None = None) -> None:
        """Run `fn` every `interval`, in one process of all those sharing the database."""
        self.scheduler.add_job(self._periodic, "interval", args=[name, interval, fn],
                               seconds=interval.total_seconds(), id=f"periodic-{name}",
                               next_run_time=first or datetime.now(timezone.utc), max_instances=1,
                               coalesce=True, misfire_grace_time=None)

    async def stop(self) -> None:
        """Stop scheduling; a sweep or job in progress gets a moment to finish its
        transaction, then is cancelled (its rows stay due and fire after a restart)."""
        self.engine.stopping = True
        try:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            if not await self.tasks.wait(self.STOP_TIMEOUT):
                await self.tasks.stop(self.STOP_TIMEOUT)
        finally:
            self.engine.stopping = False

    def _spawn(self, name: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run `work` once at a time per name (a sweep through a backlog may outlast
        its interval; the next tick then finds it still running and skips)."""
        if self.tasks.running(name):
            return

        async def run() -> None:
            try:
                await work()
            except Exception:
                log.exception("%s failed", name)

        self.tasks.spawn(run(), name)

    async def _sweep(self) -> None:
        self._spawn("sweep", self.engine.sweep)

    async def _verify(self) -> None:
        self._spawn("verifications", self.engine.run_verifications)

    async def _periodic(self, name: str, interval: timedelta, fn: Callable[[], Awaitable[None]]) -> None:
        self._spawn(f"periodic job {name}", lambda: run_once_per_period(self.engine, name, interval, fn))


async def run_once_per_period(engine: "EscalationEngine", name: str, interval: timedelta,
                              fn: Callable[[], Awaitable[None]]) -> bool:
    """Run `fn` unless another process ran it within this period; True when it ran."""
    db = engine.db
    if not db.is_postgres:
        if not await _claim_period(engine, name, interval):
            return False
        await fn()
        await _finish(engine, name)
        return True
    async with db.engine.connect() as conn:
        key = advisory_key(name)
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
        await conn.commit()
        if not got:
            return False
        try:
            if not await _claim_period(engine, name, interval):
                return False
            await fn()
            await _finish(engine, name)
            return True
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            await conn.commit()


async def _claim_period(engine: "EscalationEngine", name: str, interval: timedelta) -> bool:
    now = engine.clock()
    async with engine.db.session() as s:
        row = await s.get(PeriodicJob, name, with_for_update=engine.db.is_postgres)
        # A little slack so a process whose timer fires a moment early still runs.
        if row is not None and row.last_started_at is not None and now - row.last_started_at < interval * 0.9:
            return False
        if row is None:
            row = PeriodicJob(name=name)
        row.last_started_at, row.owner = now, engine.owner
        s.add(row)
    return True


async def _finish(engine: "EscalationEngine", name: str) -> None:
    async with engine.db.session() as s:
        row = await s.get(PeriodicJob, name)
        if row is not None:
            row.last_finished_at = engine.clock()
            s.add(row)
