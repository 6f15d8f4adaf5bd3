"""Follow-up of a low rating: a task for the team lead with its own deadline.

A rating at or below `[followup] threshold` opens one, owned by the ticket's
team lead (else the team's director), due `[followup] deadline` later, with
the customer's comment. The owner closes it with `回访完成 单号 说明`. Past its
deadline the follow-up's own steps (`[[followup.steps]]`) remind the lead or
director; the sweep runs in the escalation engine's periodic jobs.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Awaitable, Callable

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from bot.core.directory import is_lead
from storage.models import FollowUp, Person, Ticket

log = logging.getLogger(__name__)


def owner_of(config: Config, ticket: Ticket) -> str | None:
    team = config.team(ticket.team)
    if team is None:
        return None
    return team.lead or team.director


def opens(config: Config, stars: int) -> bool:
    return config.followup.enabled and stars <= config.followup.threshold


async def open_followup(s: AsyncSession, config: Config, ticket: Ticket, stars: int, comment: str | None,
                        now: datetime) -> FollowUp:
    fu = FollowUp(ticket_id=ticket.id, owner_id=owner_of(config, ticket), team=ticket.team, stars=stars,
                  comment=comment, due_at=now + config.followup.deadline, opened_at=now)
    s.add(fu)
    await s.flush()
    return fu


async def open_of(s: AsyncSession, ticket: Ticket) -> FollowUp | None:
    return (await s.exec(select(FollowUp).where(FollowUp.ticket_id == ticket.id, FollowUp.state == "open")
                         .order_by(FollowUp.id.desc()).with_for_update())).first()


async def latest_of(s: AsyncSession, ticket_id: int) -> FollowUp | None:
    return (await s.exec(select(FollowUp).where(FollowUp.ticket_id == ticket_id)
                         .order_by(FollowUp.id.desc()))).first()


def may_close(person: Person, fu: FollowUp) -> bool:
    return person.id == fu.owner_id or (is_lead(person) and person.role != "lead")


async def open_for(s: AsyncSession, person: Person) -> list[tuple[FollowUp, Ticket]]:
    """Open follow-ups the person owns, soonest due first (their board)."""
    rows = (await s.exec(select(FollowUp, Ticket).join(Ticket, Ticket.id == FollowUp.ticket_id)
                         .where(FollowUp.owner_id == person.id, FollowUp.state == "open")
                         .order_by(FollowUp.due_at).limit(10))).all()
    return [(fu, tk) for fu, tk in rows]


Remind = Callable[[AsyncSession, FollowUp, Ticket, list[str]], Awaitable[None]]


async def sweep(s: AsyncSession, config: Config, now: datetime, remind: Remind) -> int:
    """Fire the follow-up steps that fell due; how many fired."""
    steps = config.followup.steps
    if not steps:
        return 0
    due = (await s.exec(select(FollowUp).where(FollowUp.state == "open", FollowUp.due_at <= now,
                                               FollowUp.steps_fired < len(steps))
                        .order_by(FollowUp.due_at).limit(100).with_for_update())).all()
    fired = 0
    for fu in due:
        step = steps[fu.steps_fired]
        if fu.due_at + step.after > now:
            continue
        ticket = await s.get(Ticket, fu.ticket_id)
        team = config.team(fu.team)
        targets = [pid for pid in (getattr(team, role, None) for role in step.targets) if pid] if team else []
        fu.steps_fired += 1
        s.add(fu)
        if ticket is not None:
            await remind(s, fu, ticket, targets)
        fired += 1
    return fired
