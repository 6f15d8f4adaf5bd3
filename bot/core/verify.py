"""Running the resolution checks that 完工 submitted, outside any transaction.

A 完工 on a ticket with a `[[probes]]` check leaves it in 待验证 with a
`verify_submitted` event. `run_pending` finds such tickets (their newest
submission has no probe result yet), runs each check with no transaction open
(an HTTP call must not hold the database: on SQLite every writer waits behind
it), then applies the result in one transaction on the locked ticket: the
probe event, then the resolution (customer told, rating card) or
`verify_failed` (the engineer told why). A submission superseded meanwhile (a
new 完工, a transfer) is left alone. The escalation engine's scheduler calls
this every second in each process; two processes may both probe, only the
first result applies.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core import probe
from bot.core import states as st
from bot.core.notify import Notifier
from bot.core.service import Actor, Change, TicketService
from storage.db import Database
from storage.models import Person, Ticket, TicketEvent

log = logging.getLogger(__name__)

After = Callable[[AsyncSession, Change], Awaitable[None]]


async def _submission(s: AsyncSession, ticket_id: int) -> TicketEvent | None:
    """The ticket's newest 完工 submission, unless a probe already answered it."""
    last = (await s.exec(select(TicketEvent).where(
        TicketEvent.ticket_id == ticket_id,
        TicketEvent.action.in_(("verify_submitted", "probe", "transfer", "claim", "reopen", "cancel")))
        .order_by(TicketEvent.id.desc()).limit(1))).first()
    return last if last is not None and last.action == "verify_submitted" else None


async def pending(db: Database) -> list[tuple[int, int]]:
    """(ticket id, submission event id) of every check waiting to run."""
    async with db.session() as s:
        ids = (await s.exec(select(Ticket.id).where(Ticket.state == st.VERIFYING).limit(200))).all()
        out = []
        for tid in ids:
            sub = await _submission(s, tid)
            if sub is not None:
                out.append((tid, sub.id))
        return out


async def run_pending(db: Database, service: TicketService, notifier: Notifier, after: After | None = None,
                      on_commit: Callable[[], None] = lambda: None) -> int:
    """Run every waiting check; how many results were applied."""
    applied = 0
    for ticket_id, submission_id in await pending(db):
        async with db.session() as s:
            ticket = await s.get(Ticket, ticket_id)
            check = probe.probe_for(service.config, ticket) if ticket is not None else None
            url = probe.probe_url(check, ticket) if check is not None else None
        if check is None or url is None:
            continue
        result = await probe.run(check, url)
        async with db.session() as s:
            ticket = await service.get(s, ticket_id)
            sub = await _submission(s, ticket_id) if ticket is not None else None
            if ticket is None or ticket.state != st.VERIFYING or sub is None or sub.id != submission_id:
                continue  # superseded while the check ran
            person = await s.get(Person, sub.actor_id) if sub.actor_id else None
            if person is None:
                continue
            actor = Actor(person, sub.channel, (sub.detail or {}).get("via", "text"))
            change = await service.verified(s, actor, ticket, (sub.detail or {}).get("note"), result)
            await notifier.after(s, change)
            if after is not None:
                await after(s, change)
        applied += 1
        on_commit()
        log.info("ticket %s: resolution check %s (%s)", ticket_id, "passed" if result.ok else "failed",
                 result.status or result.error)
    return applied
