"""The status hub: one ticket, its state in every other system.

Each system reports its own state of a ticket with its own timestamp; the
state maps onto RelayDesk's through `[integrations.<system>] states`. When two
systems report contradictory states (`[status_hub] conflicts`, by default
resolved vs reopened) within `[status_hub] window` of each other, the ticket
is frozen: every command that would move it is refused with the reason
(bot/core/service.py checks), the quality group is told, and a lead lifts
the freeze by naming the system to follow (`解冻 单号 以CRM为准`).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

from pydantic import BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import models as m
from api.operations import API
from api.problems import Problem
from api.spec import Context, Reply
from api.tickets import ACTION_PROBLEMS, act, ticket_by_number, ticket_out
from api.webhooks import publish
from bot.events import Address, Text
from bot.outbox import enqueue
from bot.texts import t
from storage.integration import ExternalStatus, TicketFreeze
from storage.models import Ticket, TicketEvent
from storage.types import utcnow


class ExternalStatusIn(m._In):
    state: m.ShortText = Field(description="the state as the calling system names it, e.g. Closed")
    at: Optional[datetime] = Field(default=None, description="when it changed in that system (default: now); "
                                                             "with a time zone")


class SystemState(BaseModel):
    system: str
    state: str
    mapped_state: Optional[str] = Field(description="RelayDesk's state it maps to; null when unmapped")
    at: datetime
    received_at: datetime
    agrees: bool = Field(description="maps to the ticket's current state")
    lag_seconds: int = Field(description="how far this report is behind RelayDesk's last change (0: not behind)")


class ExternalStatusResult(BaseModel):
    recorded: bool = Field(description="false when the system had already reported something newer")
    system: SystemState
    ticket: m.TicketOut


class SystemsView(BaseModel):
    number: str
    state: str
    frozen: Optional[m.Freeze] = None
    systems: list[SystemState]


class ConsistencyItem(SystemsView):
    disagree: bool
    lagging: bool


class ConsistencyView(BaseModel):
    checked: int = Field(description="tickets with at least one system's state")
    consistent: int
    items: list[ConsistencyItem] = Field(description="the tickets whose systems disagree or lag")


class Unfreeze(m.ActAs):
    follow: m.ShortText = Field(description="the system whose state the ticket takes, e.g. crm")


def _view(ticket: Ticket, row: ExternalStatus) -> SystemState:
    lag = max(0, int((ticket.updated_at - row.at).total_seconds())) if row.mapped_state != ticket.state else 0
    return SystemState(system=row.system, state=row.external_state, mapped_state=row.mapped_state, at=row.at,
                       received_at=row.received_at, agrees=row.mapped_state == ticket.state, lag_seconds=lag)


async def _statuses(s: AsyncSession, ticket_id: int) -> list[ExternalStatus]:
    return list((await s.exec(select(ExternalStatus).where(ExternalStatus.ticket_id == ticket_id)
                              .order_by(ExternalStatus.system))).all())


def _conflict(config, mine: ExternalStatus, others: list[ExternalStatus]) -> ExternalStatus | None:
    """The other system's report that contradicts `mine` within the window, if any."""
    pairs = {tuple(p) for p in config.status_hub.conflicts} | {tuple(reversed(p)) for p in config.status_hub.conflicts}
    for other in others:
        if (other.system != mine.system and (mine.mapped_state, other.mapped_state) in pairs
                and abs(mine.at - other.at) <= config.status_hub.window):
            return other
    return None


@API.route("POST", "/tickets/{number}/external-status", summary="Report this system's state of a ticket",
           scope="status:write", tag="status hub", body=ExternalStatusIn, responses={200: ExternalStatusResult},
           problems=("not-found", "unknown-system"), idempotency="optional")
async def external_status(ctx: Context, body: ExternalStatusIn) -> Reply:
    """The calling system is the token's name and must be configured under [integrations]. Two systems
    contradicting each other within the window freeze the ticket."""
    rt, s, system = ctx.runtime, ctx.s, ctx.token.name
    integration = rt.config.integrations.get(system)
    if integration is None:
        raise Problem("unknown-system", f"add [integrations.{system}] states = {{ ... }} to the configuration")
    at = body.at or utcnow()
    if at.tzinfo is None:
        raise Problem("validation-failed", "at: give a time zone, e.g. 2026-01-26T08:00:00Z")
    if at.year < 2000 or at > utcnow() + timedelta(days=1):
        raise Problem("validation-failed", "at: not a plausible time")
    ticket = await ticket_by_number(ctx, ctx.path["number"])
    row = await s.get(ExternalStatus, (ticket.id, system))
    if row is not None and row.at > at:
        return Reply(200, ExternalStatusResult(recorded=False, system=_view(ticket, row),
                                               ticket=await ticket_out(s, ticket)))
    mapped = integration.states.get(body.state)
    if row is None:
        row = ExternalStatus(ticket_id=ticket.id, system=system, external_state=body.state, at=at)
    row.external_state, row.mapped_state, row.at, row.received_at = body.state, mapped, at, utcnow()
    s.add(row)
    detail = {"system": system, "state": body.state, "mapped_state": mapped, "at": at.isoformat(),
              "via": "api", "token": system}
    s.add(TicketEvent(ticket_id=ticket.id, action="external_status", actor_id=None, actor_name=system,
                      channel="api", at=utcnow(), from_state=ticket.state, to_state=ticket.state, detail=detail))
    await s.flush()
    await publish(s, ticket.id, "ticket.external_status", {"number": ticket.number, **detail})
    other = _conflict(rt.config, row, await _statuses(s, ticket.id))
    if other is not None and await s.get(TicketFreeze, ticket.id) is None:
        await _freeze(ctx, ticket, row, other)
    ctx.wrote = True
    return Reply(200, ExternalStatusResult(recorded=True, system=_view(ticket, row), ticket=await ticket_out(s, ticket)))


async def _freeze(ctx: Context, ticket: Ticket, a: ExternalStatus, b: ExternalStatus) -> None:
    """Freeze, audit, tell the quality group, publish."""
    s, rt = ctx.s, ctx.runtime
    first, second = sorted((a, b), key=lambda r: r.at)
    reason = t("hub.conflict", first=first.system.upper(), first_state=first.external_state,
               second=second.system.upper(), second_state=second.external_state,
               minutes=int(abs(second.at - first.at).total_seconds() // 60))
    systems = {r.system: {"state": r.external_state, "mapped_state": r.mapped_state, "at": r.at.isoformat()}
               for r in (first, second)}
    s.add(TicketFreeze(ticket_id=ticket.id, reason=reason, systems=systems, frozen_at=utcnow()))
    s.add(TicketEvent(ticket_id=ticket.id, action="freeze", actor_id=None, actor_name=ctx.token.name, channel="api",
                      at=utcnow(), from_state=ticket.state, to_state=ticket.state,
                      detail={"reason": reason, "systems": systems, "via": "api", "token": ctx.token.name}))
    groups = [Address(ch, "group", chat) for ch, chat in rt.config.status_hub.quality_groups.items()
              if ch in rt.channels] or rt.directory.team_groups(ticket.team)
    for group in groups:
        enqueue(s, group, Text(t("hub.frozen", number=ticket.number, reason=reason)), ticket.id)
    await s.flush()
    await publish(s, ticket.id, "ticket.freeze", {"number": ticket.number, "reason": reason, "systems": systems})


@API.route("GET", "/tickets/{number}/systems", summary="Each system's last state of a ticket, and its lag",
           scope="tickets:read", tag="status hub", responses={200: SystemsView}, problems=("not-found",))
async def ticket_systems(ctx: Context) -> Reply:
    ticket = await ticket_by_number(ctx, ctx.path["number"], lock=False)
    out = await ticket_out(ctx.s, ticket)
    return Reply(200, SystemsView(number=ticket.number, state=ticket.state, frozen=out.frozen,
                                  systems=[_view(ticket, r) for r in await _statuses(ctx.s, ticket.id)]))


@API.route("GET", "/consistency", summary="Tickets whose systems disagree or lag", scope="tickets:read",
           tag="status hub", responses={200: ConsistencyView})
async def consistency(ctx: Context) -> Reply:
    """Over the 1000 tickets most recently reported on by other systems: those where a system's state maps
    elsewhere than RelayDesk's (or is frozen), or lags more than [status_hub] lag."""
    s = ctx.s
    lag = ctx.runtime.config.status_hub.lag
    ids = list((await s.exec(select(ExternalStatus.ticket_id).group_by(ExternalStatus.ticket_id)
                             .order_by(ExternalStatus.ticket_id.desc()).limit(1000))).all())
    if not ids:
        return Reply(200, ConsistencyView(checked=0, consistent=0, items=[]))
    tickets = {tk.id: tk for tk in (await s.exec(select(Ticket).where(Ticket.id.in_(ids)))).all()}
    rows: dict[int, list[ExternalStatus]] = {}
    for r in (await s.exec(select(ExternalStatus).where(ExternalStatus.ticket_id.in_(ids))
                           .order_by(ExternalStatus.system))).all():
        rows.setdefault(r.ticket_id, []).append(r)
    frozen = {f.ticket_id: f for f in (await s.exec(select(TicketFreeze).where(TicketFreeze.ticket_id.in_(ids)))).all()}
    items = []
    for tid in ids:
        ticket = tickets[tid]
        views = [_view(ticket, r) for r in rows.get(tid, [])]
        disagree = tid in frozen or any(v.mapped_state is not None and not v.agrees for v in views)
        lagging = any(v.lag_seconds > lag.total_seconds() for v in views)
        if disagree or lagging:
            f = frozen.get(tid)
            items.append(ConsistencyItem(number=ticket.number, state=ticket.state, disagree=disagree, lagging=lagging,
                                         frozen=m.Freeze(reason=f.reason, frozen_at=f.frozen_at, systems=f.systems)
                                         if f else None, systems=views))
    return Reply(200, ConsistencyView(checked=len(ids), consistent=len(ids) - len(items), items=items))


@API.route("POST", "/tickets/{number}/unfreeze", summary="Lift a freeze, following one system",
           scope="tickets:write", tag="actions", body=Unfreeze, responses={200: m.ActionResult},
           problems=ACTION_PROBLEMS, idempotency="optional")
async def unfreeze_ticket(ctx: Context, body: Unfreeze) -> Reply:
    """The same as a lead sending 解冻 <number> 以<SYSTEM>为准 in chat: leads only."""
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.unfreeze(ctx.s, actor, tk, body.follow))
