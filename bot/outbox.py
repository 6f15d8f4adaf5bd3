"""The durable outbox: messages are rows written in the same transaction as the
change that caused them, and a worker delivers them after commit.

Delivery is at least once: a row is leased while it is being sent, and a lease
that runs out (the process died mid-send) makes the row due again. Channels
make a repeat harmless where the platform allows it (the playground keys its
rows by outbox id). Rows to the same recipient go out in order.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict, deque
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channel import ChannelRegistry, DeliveryError, current_outbox_id
from bot.config import OutboxConfig
from bot.events import Address, CardMessage, Outbound, message_from_dict, message_to_dict
from bot.metrics import Metrics
from bot.tasks import wait_event
from storage.db import Database
from storage.models import CardRef, OutboxMessage
from storage.types import utcnow

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"


def enqueue(s: AsyncSession, to: Address, message: Outbound, ticket_id: int | None = None) -> OutboxMessage:
    track_key = message.card.track_key if isinstance(message, CardMessage) else None
    row = OutboxMessage(channel=to.channel, to_kind=to.kind, to_id=to.id, message=message_to_dict(message),
                        ticket_id=ticket_id, track_key=track_key, next_attempt_at=utcnow())
    s.add(row)
    return row


async def _no_wait() -> None:
    return None


class OutboxWorker:
    def __init__(self, db: Database, channels: ChannelRegistry, config: OutboxConfig, metrics: Metrics):
        self.db = db
        self.channels = channels
        self.config = config
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = False
        self._sent_at: dict[tuple[str, str, str], deque[float]] = defaultdict(deque)
        self._gauges_at = 0.0
        # Awaited before each sweep: lets callbacks being answered go first.
        self.yield_to = _no_wait

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
        while not self._stopping:
            try:
                busy = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox sweep failed")
                busy = 0
            if busy or self._stopping:
                continue
            self._wake.clear()
            await wait_event(self._wake, self.config.poll_interval.total_seconds())

    async def drain(self, max_rounds: int = 50) -> None:
        """Deliver everything that is due now (tests, CLI)."""
        for _ in range(max_rounds):
            if not await self.deliver_due():
                return

    async def deliver_due(self, limit: int = 200) -> int:
        await self.yield_to()
        chains = await self._claim(limit)
        if chains:
            await asyncio.gather(*(self._deliver_chain(rows) for rows in chains))
        if time.monotonic() - self._gauges_at >= 1.0:
            await self.update_gauges()
        return sum(len(rows) for rows in chains)

    async def _claim(self, limit: int) -> list[list[OutboxMessage]]:
        """Due rows, leased, grouped per recipient in the order they were written."""
        now = utcnow()
        async with self.db.session() as s:
            stmt = (select(OutboxMessage)
                    .where(OutboxMessage.status.in_((PENDING, SENDING)))
                    .order_by(OutboxMessage.id).limit(limit * 2))
            if self.db.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            candidates = (await s.exec(stmt)).all()
            chains: dict[tuple[str, str, str], list[OutboxMessage]] = {}
            blocked: set[tuple[str, str, str]] = set()
            taken = 0
            for row in candidates:
                key = (row.channel, row.to_kind, row.to_id)
                if key in blocked:
                    continue
                due = row.next_attempt_at <= now if row.status == PENDING else (
                    row.lease_until is None or row.lease_until <= now)
                if not due or taken >= limit:
                    blocked.add(key)  # later rows to this recipient wait for this one
                    continue
                channel = self.channels.get(row.channel)
                if channel is not None and channel.rate_limited:
                    wait = self._rate_wait(key, pending=len(chains.get(key, ())))
                    if wait:
                        row.status, row.next_attempt_at = PENDING, now + timedelta(seconds=wait)
                        s.add(row)
                        blocked.add(key)
                        continue
                row.status = SENDING
                row.lease_until = now + self.config.lease
                s.add(row)
                chains.setdefault(key, []).append(row)
                taken += 1
        return list(chains.values())

    async def _deliver_chain(self, rows: list[OutboxMessage]) -> None:
        """One recipient's messages, strictly in order; a failure holds back the rest."""
        for i, row in enumerate(rows):
            await self.yield_to()
            if not await self._deliver(row):
                rest = [r.id for r in rows[i + 1:]]
                if rest:
                    async with self.db.session() as s:
                        await s.exec(update(OutboxMessage).where(OutboxMessage.id.in_(rest))
                                     .values(status=PENDING, lease_until=None))
                return

    def _rate_wait(self, key: tuple[str, str, str], pending: int = 0) -> float:
        """Seconds until `key` may receive one more message (0: now)."""
        window = self._sent_at[key]
        now = time.monotonic()
        while window and window[0] <= now - 60:
            window.popleft()
        cap = self.config.per_recipient_per_minute
        if len(window) + pending >= cap:
            index = len(window) + pending - cap
            return (window[index] + 60 - now) if index < len(window) else 60.0
        return 0.0

    async def _deliver(self, row: OutboxMessage) -> bool:
        channel = self.channels.get(row.channel)
        to = Address(row.channel, row.to_kind, row.to_id)  # type: ignore[arg-type]
        ref_key = (row.channel, row.to_kind, row.to_id, row.track_key) if row.track_key else None
        error: DeliveryError | None = None
        new_ref = None
        try:
            if channel is None:
                raise DeliveryError(f"channel {row.channel!r} is not configured", retryable=False)
            message = message_from_dict(row.message)
            ref = None
            if ref_key:
                async with self.db.session() as s:
                    stored = await s.get(CardRef, ref_key)
                    ref = stored.ref if stored else None
            token = current_outbox_id.set(row.id)
            try:
                new_ref = await channel.send(to, message, ref)
            finally:
                current_outbox_id.reset(token)
        except DeliveryError as e:
            error = e
        except Exception as e:  # a bug or an unexpected transport error: retry, keep it visible
            log.exception("outbox %s: sending to %s failed", row.id, to)
            error = DeliveryError(f"{type(e).__name__}: {e}")
        self._sent_at[(row.channel, row.to_kind, row.to_id)].append(time.monotonic())
        await self._finish(row, ref_key, new_ref, error)
        return error is None

    async def _finish(self, row: OutboxMessage, ref_key, new_ref, error: DeliveryError | None) -> None:
        now = utcnow()
        async with self.db.session() as s:
            values: dict = {"attempts": row.attempts + 1, "lease_until": None}
            if error is None:
                values.update(status=SENT, sent_at=now, last_error=None)
                if ref_key and new_ref is not None:
                    stored = await s.get(CardRef, ref_key)
                    if stored is None:
                        s.add(CardRef(channel=ref_key[0], to_kind=ref_key[1], to_id=ref_key[2],
                                      track_key=ref_key[3], ref=new_ref, updated_at=now))
                    else:
                        stored.ref, stored.updated_at = new_ref, now
                        s.add(stored)
                self.metrics.outbox_sent.labels(row.channel).inc()
            elif not error.retryable or row.attempts + 1 >= self.config.max_attempts:
                values.update(status=FAILED, last_error=str(error)[:1000])
                self.metrics.outbox_failed.labels(row.channel).inc()
                log.error("outbox %s to %s:%s:%s failed for good after %d attempt(s): %s",
                          row.id, row.channel, row.to_kind, row.to_id, row.attempts + 1, error)
            else:
                delay = self.backoff(row.attempts + 1)
                if error.retry_after:
                    delay = max(delay, error.retry_after)
                values.update(status=PENDING, last_error=str(error)[:1000],
                              next_attempt_at=now + timedelta(seconds=delay))
                self.metrics.outbox_retries.labels(row.channel).inc()
                log.warning("outbox %s to %s:%s failed (attempt %d), retrying in %.1fs: %s",
                            row.id, row.channel, row.to_id, row.attempts + 1, delay, error)
            await s.exec(update(OutboxMessage).where(OutboxMessage.id == row.id).values(**values))

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: half fixed, half random."""
        cap = self.config.max_delay.total_seconds()
        delay = min(cap, self.config.base_delay.total_seconds() * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def update_gauges(self) -> None:
        self._gauges_at = time.monotonic()
        async with self.db.session() as s:
            rows = (await s.exec(
                select(OutboxMessage.status, func.count()).where(OutboxMessage.status != SENT)
                .group_by(OutboxMessage.status))).all()
        counts = dict(rows)
        self.metrics.outbox_pending.set(counts.get(PENDING, 0) + counts.get(SENDING, 0))
        self.metrics.outbox_failed_rows.set(counts.get(FAILED, 0))
