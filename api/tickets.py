"""Ticket operations: create, list, get, events, and the engineer's actions.

Actions run the same service commands as chat, as the person named in
`actor`, so the chat's permission rules and refusals apply unchanged; the
audit trail records them with via=api and the token's name.
"""
from __future__ import annotations

import base64
import binascii
import json
import re

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api import models as m
from api.operations import API
from api.problems import Problem
from api.spec import Context, Reply
from bot.core.service import Actor, Change
from bot.events import Address
from bot.texts import t
from storage.integration import ExternalRef, TicketFreeze
from storage.models import Person, Ticket, TicketEvent
from storage.queries import insert_ignore

ACTION_PROBLEMS = ("not-found", "forbidden", "refused", "frozen", "unknown-person")
# Where a reporter known only to another system is "talked to": nothing is
# delivered there (bot/channels of the webhook kind skip it); the system hears
# of its ticket through its webhook subscriptions.
WEBHOOK_CHANNEL = "webhook"


async def ticket_by_number(ctx: Context, number: str, *, lock: bool = True) -> Ticket:
    """The ticket, or 404 (the service's own lookup, so numbers parse as in chat)."""
    return await ctx.runtime.service.by_number(ctx.s, number, lock=lock)


async def tickets_out(s: AsyncSession, tickets: list[Ticket]) -> list[m.TicketOut]:
    """Tickets as the API shows them, with names, freezes and external ids in three queries."""
    ids = [tk.id for tk in tickets]
    people_ids = {tk.reporter_id for tk in tickets} | {tk.assignee_id for tk in tickets if tk.assignee_id}
    people = {p.id: p for p in (await s.exec(select(Person).where(Person.id.in_(people_ids)))).all()} if ids else {}
    freezes = {f.ticket_id: f for f in (await s.exec(select(TicketFreeze).where(TicketFreeze.ticket_id.in_(ids)))).all()} \
        if ids else {}
    refs: dict[int, dict[str, str]] = {}
    if ids:
        for r in (await s.exec(select(ExternalRef).where(ExternalRef.ticket_id.in_(ids)))).all():
            refs.setdefault(r.ticket_id, {})[r.system] = r.external_id

    def ref(pid: str | None) -> m.PersonRef | None:
        if pid is None:
            return None
        p = people.get(pid)
        return m.PersonRef(id=pid, name=p.name if p else pid)

    out = []
    for tk in tickets:
        f = freezes.get(tk.id)
        out.append(m.TicketOut(
            number=tk.number, state=tk.state, state_name=t(f"state.{tk.state}"), category=tk.category,
            category_name=tk.category_name, priority=tk.priority, summary=tk.summary, location=tk.location,
            serial=tk.serial, error_code=tk.error_code, impact=tk.impact, reporter=ref(tk.reporter_id),
            assignee=ref(tk.assignee_id), team=tk.team, resolution=tk.resolution, rating=tk.rating,
            escalation_level=tk.escalation_level, created_at=tk.created_at, updated_at=tk.updated_at,
            claimed_at=tk.claimed_at, resolved_at=tk.resolved_at, closed_at=tk.closed_at,
            respond_by=tk.respond_by, resolve_by=tk.resolve_by,
            frozen=m.Freeze(reason=f.reason, frozen_at=f.frozen_at, systems=f.systems) if f else None,
            external_ids=refs.get(tk.id, {}),
        ))
    return out


async def ticket_out(s: AsyncSession, ticket: Ticket) -> m.TicketOut:
    return (await tickets_out(s, [ticket]))[0]


# ---- create ----------------------------------------------------------------------


async def _reporter(ctx: Context, body: m.CreateTicket) -> tuple[Person, Address]:
    """A known person by phone (they follow the ticket in their chat), or the
    system's own reporter record (the system follows it through webhooks)."""
    s, system = ctx.s, ctx.token.name
    phone = re.sub(r"[\s-]", "", body.reporter_phone or "") or None
    person = None
    if phone:
        person = (await s.exec(select(Person).where(Person.phone == phone, Person.active.is_(True))
                               .order_by(Person.id).limit(1))).first()
    if person is None:
        pid = f"{system}:{phone or 'reporter'}"
        name = body.reporter_name or (f"{system} {phone}" if phone else system)
        await insert_ignore(s, Person, id=pid, name=name[:64], role="customer", skills=[], active=True, phone=phone)
        person = await s.get(Person, pid)
    address = await ctx.runtime.directory.direct_address(s, person.id)
    return person, address or Address(WEBHOOK_CHANNEL, "user", system)


def api_actor(ctx: Context, person: Person) -> Actor:
    return Actor(person, "api", "api", token=ctx.token.name)


@API.route("POST", "/tickets", summary="Create a ticket", scope="tickets:write", tag="tickets",
           body=m.CreateTicket, responses={201: m.TicketOut}, problems=("external-id-taken", "refused"),
           idempotency="required")
async def create_ticket(ctx: Context, body: m.CreateTicket) -> Reply:
    """Classified, prioritised and assigned like a report in chat; the engineers' group gets its card."""
    s, system = ctx.s, ctx.token.name
    if body.external_id:
        ref = await s.get(ExternalRef, (system, body.external_id))
        if ref is not None:
            existing = await s.get(Ticket, ref.ticket_id)
            raise Problem("external-id-taken", f"{system} id {body.external_id} is ticket {existing.number}",
                          number=existing.number)
    person, conversation = await _reporter(ctx, body)
    rt = ctx.runtime
    change = await rt.bot._apply(s, await rt.service.report(s, api_actor(ctx, person), body.text, conversation))
    ticket = change.ticket
    if body.external_id:
        s.add(ExternalRef(system=system, external_id=body.external_id, ticket_id=ticket.id))
        await s.flush()
    ctx.wrote = True
    return Reply(201, await ticket_out(s, ticket), headers={"Location": f"/api/v1/tickets/{ticket.number}"})


# ---- read ------------------------------------------------------------------------


def _cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": last_id}).encode()).decode().rstrip("=")


def _before(cursor: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        before = data["before"]
        if not isinstance(before, int) or isinstance(before, bool) or not 0 < before < 2**31:
            raise TypeError  # ids are positive 32-bit integers
        return before
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise Problem("bad-cursor", "pass the `next` value of the previous page as it was") from None


@API.route("GET", "/tickets", summary="List tickets, newest first", scope="tickets:read", tag="tickets",
           query=m.TicketQuery, responses={200: m.TicketPage}, problems=("bad-cursor",))
async def list_tickets(ctx: Context) -> Reply:
    """Filters combine; `next` pages on (stable while new tickets arrive)."""
    q: m.TicketQuery = ctx.query
    limit = q.limit or ctx.runtime.config.api.page_size
    stmt = select(Ticket)
    for column, value in ((Ticket.state, q.state), (Ticket.priority, q.priority), (Ticket.category, q.category),
                          (Ticket.assignee_id, q.assignee), (Ticket.team, q.team)):
        if value is not None:
            stmt = stmt.where(column == value)
    if q.updated_since is not None:
        if q.updated_since.tzinfo is None:
            raise Problem("validation-failed", "updated_since: give a time zone, e.g. 2026-01-26T08:00:00Z")
        stmt = stmt.where(Ticket.updated_at >= q.updated_since)
    if q.cursor:
        stmt = stmt.where(Ticket.id < _before(q.cursor))
    rows = list((await ctx.s.exec(stmt.order_by(Ticket.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return Reply(200, m.TicketPage(items=await tickets_out(ctx.s, rows),
                                   next=_cursor(rows[-1].id) if more else None))


@API.route("GET", "/tickets/{number}", summary="Get a ticket", scope="tickets:read", tag="tickets",
           responses={200: m.TicketOut}, problems=("not-found",))
async def get_ticket(ctx: Context) -> Reply:
    ticket = await ticket_by_number(ctx, ctx.path["number"], lock=False)
    return Reply(200, await ticket_out(ctx.s, ticket))


@API.route("GET", "/tickets/{number}/events", summary="A ticket's audit trail", scope="tickets:read",
           tag="tickets", responses={200: m.EventList}, problems=("not-found",))
async def ticket_events(ctx: Context) -> Reply:
    """Every change, oldest first, with who did it and through what (chat, card, phone, api + token)."""
    ticket = await ticket_by_number(ctx, ctx.path["number"], lock=False)
    rows = (await ctx.s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                             .order_by(TicketEvent.id))).all()
    return Reply(200, m.EventList(items=[m.Event.model_validate(r, from_attributes=True) for r in rows]))


# ---- actions ---------------------------------------------------------------------


async def act(ctx: Context, body: m.ActAs, command) -> Reply:
    """Look up ticket and actor, run the service command, tell everyone as chat would."""
    s, rt = ctx.s, ctx.runtime
    ticket = await ticket_by_number(ctx, ctx.path["number"])
    person = await s.get(Person, body.actor)
    if person is None or not person.active:
        raise Problem("unknown-person", f"no active person with id {body.actor!r}")
    change: Change = await command(api_actor(ctx, person), ticket)
    await rt.bot._apply(s, change)
    ctx.wrote = change.changed
    return Reply(200, m.ActionResult(changed=change.changed, ticket=await ticket_out(s, change.ticket)))


def _action(path: str, summary: str, body):
    return API.route("POST", f"/tickets/{{number}}/{path}", summary=summary, scope="tickets:write",
                     tag="actions", body=body, responses={200: m.ActionResult}, problems=ACTION_PROBLEMS,
                     idempotency="optional")


@_action("claim", "Claim a ticket", m.ActAs)
async def claim_ticket(ctx: Context, body: m.ActAs) -> Reply:
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.claim(ctx.s, actor, tk))


@_action("transfer", "Transfer a ticket to another engineer", m.Transfer)
async def transfer_ticket(ctx: Context, body: m.Transfer) -> Reply:
    target = await ctx.s.get(Person, body.to)
    if target is None:
        raise Problem("unknown-person", f"no person with id {body.to!r}")
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.transfer(ctx.s, actor, tk, target))


@_action("stage", "Record a stage: departed, arrived, repairing", m.Stage)
async def stage_ticket(ctx: Context, body: m.Stage) -> Reply:
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.stage(ctx.s, actor, tk, body.stage))


@_action("comment", "Add a note to a ticket", m.Comment)
async def comment_ticket(ctx: Context, body: m.Comment) -> Reply:
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.note(ctx.s, actor, tk, body.text))


@_action("resolve", "Resolve a ticket (the customer is asked to rate it)", m.Resolve)
async def resolve_ticket(ctx: Context, body: m.Resolve) -> Reply:
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.stage(ctx.s, actor, tk, "resolve", body.note))


@_action("cancel", "Cancel a ticket", m.Cancel)
async def cancel_ticket(ctx: Context, body: m.Cancel) -> Reply:
    return await act(ctx, body, lambda actor, tk: ctx.runtime.service.cancel(ctx.s, actor, tk, body.reason))


# ---- directory -------------------------------------------------------------------


@API.route("GET", "/people", summary="People: staff and customers", scope="directory:read", tag="directory",
           responses={200: m.PersonList})
async def list_people(ctx: Context) -> Reply:
    rows = (await ctx.s.exec(select(Person).order_by(Person.id))).all()
    return Reply(200, m.PersonList(items=[m.PersonOut.model_validate(p, from_attributes=True) for p in rows]))


@API.route("GET", "/teams", summary="Teams", scope="directory:read", tag="directory", responses={200: m.TeamList})
async def list_teams(ctx: Context) -> Reply:
    return Reply(200, m.TeamList(items=[m.TeamOut.model_validate(tm, from_attributes=True)
                                        for tm in ctx.runtime.config.teams]))
