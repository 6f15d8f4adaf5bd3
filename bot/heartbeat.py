"""Process heartbeats: a row per process, written every second.

The row says the process is alive (other processes take back the outbox leases
of one whose heartbeat stopped) and when each of its workers last finished a
pass; `/healthz` writes it too, so a health check proves the database accepts
writes, not only reads.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timedelta
from typing import Callable

from sqlmodel import select

from bot.tasks import wait_event
from storage.db import Database
from storage.models import ProcessHeartbeat
from storage.types import utcnow

log = logging.getLogger(__name__)

# A worker whose last successful pass is older than this makes /healthz answer 503.
STALE_AFTER = timedelta(seconds=30)


class Heartbeat:
    def __init__(self, db: Database, owner: str, interval: float = 1.0):
        self.db = db
        self.owner = owner
        self.interval = interval
        self.started_at = utcnow()
        # Worker name -> its last successful pass (monotonic seconds, None: not yet).
        self.workers: dict[str, Callable[[], float | None]] = {}
        # Worker name -> how long it may go without a pass (default STALE_AFTER).
        self.stale_after: dict[str, timedelta] = {}
        self._logged_at = 0.0
        self._stop = asyncio.Event()

    def stop_soon(self) -> None:
        """Ask `run` to return (shutdown)."""
        self._stop.set()

    def passes(self) -> dict[str, datetime | None]:
        """Each worker's last successful pass, as wall-clock time."""
        now_mono, now = time.monotonic(), utcnow()
        out: dict[str, datetime | None] = {}
        for name, last in self.workers.items():
            at = last()
            out[name] = None if at is None else now - timedelta(seconds=now_mono - at)
        return out

    async def beat(self) -> None:
        """Write this process's row; raises when the database refuses the write."""
        passes = {k: v.isoformat() if v else None for k, v in self.passes().items()}
        async with self.db.session(urgent=True) as s:
            row = await s.get(ProcessHeartbeat, self.owner)
            if row is None:
                row = ProcessHeartbeat(owner=self.owner, started_at=self.started_at)
            row.pid, row.beat_at, row.passes = os.getpid(), utcnow(), passes
            s.add(row)

    async def run(self) -> None:
        self._stop.clear()
        while not self._stop.is_set():
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # logged at most once a minute: the outage shows in /healthz
                if time.monotonic() - self._logged_at >= 60:
                    self._logged_at = time.monotonic()
                    log.error("heartbeat: writing to the database failed: %s", e)
            await wait_event(self._stop, self.interval)

    def stale_workers(self) -> list[str]:
        """Reasons for a 503: workers of this process with no successful pass for too long."""
        now = utcnow()
        reasons = []
        for name, at in self.passes().items():
            started = at or self.started_at
            if now - started > self.stale_after.get(name, STALE_AFTER):
                reasons.append(f"{name} worker: no successful pass for {round((now - started).total_seconds())} s")
        return reasons

    async def remote_workers(self) -> dict[str, dict]:
        """Other processes with workers, from their heartbeat rows (serving without in-process workers)."""
        async with self.db.session() as s:
            rows = (await s.exec(select(ProcessHeartbeat).where(ProcessHeartbeat.owner != self.owner))).all()
        cutoff = utcnow() - STALE_AFTER
        return {r.owner: {"alive": r.beat_at > cutoff, "passes": r.passes} for r in rows if r.passes}
