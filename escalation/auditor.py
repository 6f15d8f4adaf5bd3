"""The auditor: a periodic look for escalations that should have fired and
outbound messages that should have gone, and a dead-man switch.

Each run logs what it found, sets the gauges relaydesk_escalation_late and
relaydesk_outbox_stuck, and pings `[escalation.auditor] heartbeat_url` only
when nothing is wrong: an external monitor that stops hearing the ping alerts
(the watcher itself is watched, whether it is late, stuck or dead).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from sqlalchemy import func, select

from bot.core import states as st
from escalation import timers as tm
from escalation.engine import EscalationEngine
from storage.models import OutboxMessage, Ticket


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    late: int
    late_numbers: tuple[str, ...]
    stuck: int
    pinged: bool

    @property
    def healthy(self) -> bool:
        return self.late == 0 and self.stuck == 0


async def audit(engine: "EscalationEngine") -> AuditResult:
    cfg = engine.ec.auditor
    now = engine.clock()
    T = tm.T
    async with engine.db.session() as s:
        late_q = (select(Ticket.number).join(T, T.c.ticket_id == Ticket.id)
                  .where(T.c.due_at < now - cfg.late_after, Ticket.state.in_(st.OPEN)))
        late = (await s.exec(select(func.count()).select_from(late_q.subquery()))).scalar_one()
        numbers = tuple((await s.exec(late_q.order_by(T.c.due_at).limit(10))).scalars().all()) if late else ()
        stuck = (await s.exec(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.status.in_(("pending", "sending")),
            OutboxMessage.created_at < now - cfg.outbox_stuck_after))).scalar_one()
    engine.m.late.set(late)
    engine.m.outbox_stuck.set(stuck)
    if late:
        log.warning("auditor: %d open ticket(s) with an escalation over %ss late: %s", late,
                    int(cfg.late_after.total_seconds()), ", ".join(numbers))
    if stuck:
        log.warning("auditor: %d outbound message(s) undelivered for over %ss", stuck,
                    int(cfg.outbox_stuck_after.total_seconds()))
    pinged = False
    if late == 0 and stuck == 0:
        if cfg.heartbeat_url:
            pinged = await _ping(cfg.heartbeat_url, cfg.heartbeat_timeout.total_seconds())
            if pinged:
                engine.m.heartbeat_ok.set(time.time())
        engine.m.audits.labels("ok").inc()
    else:
        engine.m.audits.labels("problems").inc()
        if cfg.heartbeat_url:
            log.warning("auditor: not pinging the heartbeat URL until this is resolved")
    return AuditResult(late, numbers, stuck, pinged)


async def _ping(url: str, timeout: float) -> bool:
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.get(url)
        if r.status_code >= 400:
            log.warning("auditor: heartbeat ping answered HTTP %s", r.status_code)
            return False
        return True
    except httpx.HTTPError as e:
        log.warning("auditor: heartbeat ping failed: %s", e)
        return False
