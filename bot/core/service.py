"""Ticket commands: each checks the actor's role, moves the state, logs the event.

Every command runs inside the caller's transaction on a row-locked ticket and
returns a Change; repeating a command that already took effect returns a Change
with `changed=False` instead of failing (claiming your own ticket again, say).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config, DeadlineConfig
from bot.core import states as st
from bot.core import evidence, followup, probe
from bot.core.directory import ENGINEER_ROLES, Directory, is_lead, is_staff
from bot.core.dispatch import Dispatcher
from bot.core.numbers import format_number, parse_number
from bot.events import Address
from bot.texts import t
from nlp import Classification, Classifier
from storage.integration import ExternalStatus, TicketFreeze
from storage.models import Attachment, LinkedReport, Person, Ticket, TicketEvent
from storage.queries import next_sequence
from storage.types import utcnow


class Refused(Exception):
    """A command the actor may not perform now; the text says why, in the user's language."""

    def __init__(self, key: str, **values):
        self.key = key
        self.values = values
        super().__init__(t(f"refuse.{key}", **values))

    @property
    def text(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Actor:
    person: Person
    channel: str
    via: str = "text"  # text | card | phone | api
    token: str | None = None  # via api: the name of the API token (the external system)


@dataclass
class Change:
    ticket: Ticket
    action: str
    actor: Actor
    from_state: str | None
    to_state: str | None
    changed: bool = True
    detail: dict = field(default_factory=dict)
    # The people this change already holds (a new ticket's reporter and suggested engineer):
    # the notifier shows them without reading them again. The session's identity map holds
    # its objects weakly, so without this reference they would be read a second time.
    people: dict[str, Person] = field(default_factory=dict)


# Built once (every report with a place runs it; building costs about as much as running).
_OPEN_INCIDENT = (select(Ticket)
                  .where(Ticket.category == bindparam("category"), Ticket.location == bindparam("location"),
                         Ticket.created_at >= bindparam("since"), Ticket.state.in_(sorted(st.OPEN)))
                  .order_by(Ticket.created_at.desc(), Ticket.id.desc()).limit(1).with_for_update())


class TicketService:
    def __init__(self, config: Config, directory: Directory, classifier: Classifier,
                 clock: Callable[[], datetime] = utcnow):
        self.config = config
        self.directory = directory
        self.classifier = classifier
        self.clock = clock
        self.tz = ZoneInfo(config.tickets.timezone)
        self.dispatcher = Dispatcher(config)

    # ---- lookups -------------------------------------------------------

    async def get(self, s: AsyncSession, ticket_id: int, *, lock: bool = True) -> Ticket | None:
        stmt = select(Ticket).where(Ticket.id == ticket_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await s.exec(stmt)).first()

    async def by_number(self, s: AsyncSession, text: str, *, lock: bool = True) -> Ticket:
        parsed = parse_number(text)
        if parsed is None:
            raise Refused("bad_number", number=text)
        stmt = select(Ticket).where(Ticket.number == parsed.number)
        if lock:
            stmt = stmt.with_for_update()
        ticket = (await s.exec(stmt)).first()
        if ticket is None:
            raise Refused("no_such_ticket", number=parsed.number)
        return ticket

    async def open_tickets_of(self, s: AsyncSession, person: Person) -> list[Ticket]:
        """A customer's unfinished tickets, or the ones a staff member owns, newest first."""
        if is_staff(person):
            cond = (Ticket.assignee_id == person.id) & Ticket.state.in_(st.OPEN)
        else:
            cond = (Ticket.reporter_id == person.id) & Ticket.state.in_(st.OPEN | {st.RESOLVED})
        stmt = select(Ticket).where(cond).order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(20)
        return list((await s.exec(stmt)).all())

    async def unclaimed_for(self, s: AsyncSession, person: Person) -> list[Ticket]:
        stmt = select(Ticket).where(Ticket.state.in_(st.UNCLAIMED))
        if person.team and not is_lead(person):
            stmt = stmt.where((Ticket.team == person.team) | (Ticket.team.is_(None)))
        stmt = stmt.order_by(Ticket.created_at.desc(), Ticket.id.desc()).limit(20)
        return list((await s.exec(stmt)).all())

    def local(self, when: datetime | None, *, with_date: bool = False) -> str:
        if when is None:
            return ""
        loc = when.astimezone(self.tz)
        now = self.clock().astimezone(self.tz)
        if with_date or loc.date() != now.date():
            return loc.strftime("%m-%d %H:%M")
        return loc.strftime("%H:%M")

    # ---- commands ------------------------------------------------------

    async def report(self, s: AsyncSession, actor: Actor, text: str, conversation: Address,
                     classification: Classification | None = None, customer: Person | None = None,
                     *, group: bool = True) -> Change:
        """File a ticket, or (`group` and [incidents] on) link the report to the open ticket of the
        same incident; `customer` when staff report on someone's behalf (updates go to them)."""
        text = text.strip()
        if not text:
            raise Refused("empty_report")
        c = classification or self.classifier.classify(text)
        now = self.clock()
        reporter = customer or actor.person
        if group and self.config.incidents.enabled:
            incident = await self._open_incident(s, c, now)
            # The ticket's own reporter reporting again is a second fault of theirs, not a second witness.
            if incident is not None and incident.reporter_id != reporter.id:
                return await self._link(s, actor, incident, text, conversation)
        day = now.astimezone(self.tz).strftime("%Y%m%d")
        seq = await next_sequence(s, day)
        suggestion = await self.dispatcher.suggest(s, reporter, c.category, c.phone, now)
        team_id, assignee = suggestion.team, suggestion.engineer
        deadlines = self.deadlines(team_id, c.priority)
        ticket = Ticket(
            number=format_number(self.config.tickets.domain, day, seq),
            state=st.NEW, category=c.category, category_name=c.category_name,
            priority=c.priority, summary=text[:2000], impact=c.impact, serial=c.serial,
            location=c.location, error_code=c.error_code, phone=c.phone,
            evidence=list(c.evidence), reporter_id=reporter.id,
            reporter_channel=conversation.channel, reporter_conv_kind=conversation.kind,
            reporter_conv_id=conversation.id, team=team_id,
            assignee_id=assignee.id if assignee else None,
            created_at=now, updated_at=now,
            respond_by=now + deadlines.respond, resolve_by=now + deadlines.resolve,
        )
        s.add(ticket)
        await s.flush()
        detail = {"category": c.category, "priority": c.priority, "evidence": list(c.evidence)}
        if assignee:
            detail.update(suggestion.detail())
        if customer is not None:
            detail["customer"] = customer.id
        change = await self._log(s, ticket, "report", actor, None, st.NEW, detail, now=now)
        change.people = {p.id: p for p in (reporter, assignee) if p is not None}
        return change

    async def _open_incident(self, s: AsyncSession, c: Classification, now: datetime) -> Ticket | None:
        """The open ticket of the same category and place opened within the window, locked."""
        if not c.location or c.category == "other":
            return None
        return (await s.exec(_OPEN_INCIDENT, params={
            "category": c.category, "location": c.location, "since": now - self.config.incidents.window})).first()

    async def _link(self, s: AsyncSession, actor: Actor, ticket: Ticket, text: str,
                    conversation: Address) -> Change:
        link = LinkedReport(ticket_id=ticket.id, person_id=actor.person.id, channel=conversation.channel,
                            conv_kind=conversation.kind, conv_id=conversation.id, text=text[:2000])
        s.add(link)
        await s.flush()
        ticket.linked_reports += 1
        change = await self._log(s, ticket, "link", actor, ticket.state, ticket.state,
                                 {"linked": link.id, "reporters": ticket.linked_reports + 1})
        change.detail = {**change.detail, "conversation": conversation}  # for the notifier, not the audit log
        return change

    async def linked(self, s: AsyncSession, ticket: Ticket) -> list[LinkedReport]:
        """The reports linked to a ticket and not split off, in the order they came."""
        if not ticket.linked_reports:
            return []
        return list((await s.exec(select(LinkedReport).where(LinkedReport.ticket_id == ticket.id,
                                                             LinkedReport.split_ticket_id.is_(None))
                                  .order_by(LinkedReport.id))).all())

    async def split(self, s: AsyncSession, actor: Actor, ticket: Ticket, index: int | None) -> tuple[Change, Change]:
        """Make linked report `index` (1-based, as listed) a ticket of its own.

        Returns the new ticket's report and the original ticket's split change.
        """
        await self.require_owner_or_lead(s, actor, ticket, allow_unclaimed_staff=True)
        links = await self.linked(s, ticket)
        if not links:
            raise Refused("nothing_to_split", number=ticket.number)
        if index is None or not 1 <= index <= len(links):
            names = {p.id: p.name for p in (await s.exec(
                select(Person).where(Person.id.in_([lr.person_id for lr in links])))).all()}
            listing = "；".join(f"{i} {names.get(lr.person_id, lr.person_id)}：{lr.text[:20]}"
                               for i, lr in enumerate(links[:10], start=1))
            raise Refused("split_which", number=ticket.number, reports=listing)
        link = links[index - 1]
        reporter = await s.get(Person, link.person_id)
        conversation = Address(link.channel, link.conv_kind, link.conv_id)  # type: ignore[arg-type]
        created = await self.report(s, Actor(reporter, link.channel, actor.via), link.text, conversation,
                                    group=False)
        link.split_ticket_id = created.ticket.id
        s.add(link)
        ticket.linked_reports -= 1
        change = await self._log(s, ticket, "split", actor, ticket.state, ticket.state,
                                 {"linked": link.id, "ticket": created.ticket.number})
        return created, change

    async def claim(self, s: AsyncSession, actor: Actor, ticket: Ticket) -> Change:
        p = actor.person
        if not is_staff(p):
            raise Refused("customer_cannot_claim")
        if ticket.state in st.UNCLAIMED:
            if (ticket.state == st.TRANSFERRED and ticket.assignee_id not in (None, p.id) and not is_lead(p)
                    and not self._held_for_team(ticket, p)):
                raise Refused("transferred_to_other", name=await self._name(s, ticket.assignee_id),
                              number=ticket.number)
            before = ticket.state
            ticket.assignee_id = p.id
            ticket.state = st.CLAIMED
            ticket.claimed_at = self.clock()
            return await self._log(s, ticket, "claim", actor, before, st.CLAIMED)
        if ticket.assignee_id == p.id and ticket.state in st.IN_WORK:
            return Change(ticket, "claim", actor, ticket.state, ticket.state, changed=False)
        if ticket.state in st.IN_WORK:
            raise Refused("claimed_by_other", name=await self._name(s, ticket.assignee_id), number=ticket.number)
        raise Refused("not_claimable", number=ticket.number, state=t(f"state.{ticket.state}"))

    async def transfer(self, s: AsyncSession, actor: Actor, ticket: Ticket, target: Person) -> Change:
        await self.require_owner_or_lead(s, actor, ticket, allow_unclaimed_staff=True)
        if target.id == actor.person.id:
            raise Refused("transfer_self", number=ticket.number)
        if target.role not in ENGINEER_ROLES:
            raise Refused("transfer_target", name=target.name)
        if not target.active:
            raise Refused("transfer_inactive", name=target.name)
        if ticket.state not in st.OPEN:
            raise Refused("closed_ticket", number=ticket.number, state=t(f"state.{ticket.state}"))
        if ticket.assignee_id == target.id and ticket.state == st.TRANSFERRED:
            return Change(ticket, "transfer", actor, ticket.state, ticket.state, changed=False)
        if ticket.assignee_id == target.id and ticket.state in st.IN_WORK:
            raise Refused("already_owner", name=target.name, number=ticket.number)
        before, previous = ticket.state, ticket.assignee_id
        ticket.assignee_id = target.id
        ticket.state = st.TRANSFERRED
        return await self._log(s, ticket, "transfer", actor, before, st.TRANSFERRED,
                               {"from": previous, "to": target.id})

    async def transfer_team(self, s: AsyncSession, actor: Actor, ticket: Ticket, team_id: str) -> Change:
        """Hand the ticket to another team: its lead holds it until one of them claims it."""
        await self.require_owner_or_lead(s, actor, ticket, allow_unclaimed_staff=True)
        team = self.config.team(team_id)
        if team is None:
            raise Refused("transfer_who")
        if ticket.state not in st.OPEN:
            raise Refused("closed_ticket", number=ticket.number, state=t(f"state.{ticket.state}"))
        if ticket.team == team.id and ticket.state == st.TRANSFERRED and ticket.assignee_id == team.lead:
            return Change(ticket, "transfer", actor, ticket.state, ticket.state, changed=False)
        lead = await s.get(Person, team.lead) if team.lead else None
        before, previous = ticket.state, ticket.assignee_id
        ticket.team = team.id
        ticket.assignee_id = lead.id if lead is not None and lead.active else None
        ticket.state = st.TRANSFERRED
        if team.provider and team.sla:  # the provider's clock starts now
            now = self.clock()
            ticket.respond_by = now + team.sla[ticket.priority].respond  # type: ignore[index]
            ticket.resolve_by = now + team.sla[ticket.priority].resolve  # type: ignore[index]
        return await self._log(s, ticket, "transfer", actor, before, st.TRANSFERRED,
                               {"from": previous, "to": ticket.assignee_id, "team": team.id})

    async def escalate(self, s: AsyncSession, actor: Actor, ticket: Ticket, reason: str | None = None) -> Change:
        if not is_staff(actor.person) and actor.person.id != ticket.reporter_id:
            raise Refused("not_your_ticket", number=ticket.number)
        if ticket.state not in st.OPEN:
            raise Refused("closed_ticket", number=ticket.number, state=t(f"state.{ticket.state}"))
        ticket.escalation_level += 1
        return await self._log(s, ticket, "escalate", actor, ticket.state, ticket.state,
                               {"level": ticket.escalation_level, "reason": reason})

    async def acknowledge(self, s: AsyncSession, actor: Actor, ticket: Ticket) -> Change:
        if not is_lead(actor.person) and actor.person.id != ticket.assignee_id:
            raise Refused("lead_only")
        if ticket.state not in st.OPEN:
            return Change(ticket, "ack", actor, ticket.state, ticket.state, changed=False)
        return await self._log(s, ticket, "ack", actor, ticket.state, ticket.state)

    async def stage(self, s: AsyncSession, actor: Actor, ticket: Ticket, action: str,
                    note: str | None = None) -> Change:
        allowed_from, target = st.STAGES[action]
        if ticket.state == target and ticket.assignee_id == actor.person.id:
            return Change(ticket, action, actor, target, target, changed=False)
        await self.require_owner_or_lead(s, actor, ticket)
        if ticket.state not in allowed_from:
            if ticket.state in st.UNCLAIMED:
                raise Refused("claim_first", number=ticket.number)
            raise Refused("bad_transition", number=ticket.number, state=t(f"state.{ticket.state}"),
                          action=t(f"button.{action}"))
        before = ticket.state
        detail: dict = {"note": note} if note else {}
        if action == "resolve":
            # A frozen ticket first says so: no photo or note would make 完工 possible.
            await self._refuse_if_frozen(s, ticket)
            await self._require_evidence(s, ticket, note)
            if probe.probe_for(self.config, ticket) is not None:
                # Resolved only once the check passes (bot/core/verify.py runs it
                # after this commits): until then 待验证, and the customer hears nothing.
                ticket.state = st.VERIFYING
                return await self._log(s, ticket, "verify_submitted", actor, before, st.VERIFYING, detail)
            ticket.resolved_at = self.clock()
            ticket.resolution = (note or "").strip()[:1000] or None
        ticket.state = target
        return await self._log(s, ticket, action, actor, before, target, detail)

    async def _require_evidence(self, s: AsyncSession, ticket: Ticket, note: str | None) -> None:
        short = await evidence.check(self.config, s, ticket, note)
        if short.photos_have < short.photos_needed:
            raise Refused("photos_needed", number=ticket.number, need=short.photos_needed,
                          have=short.photos_have, more=short.photos_needed - short.photos_have,
                          note_missing=short.note_missing)
        if short.note_missing:
            raise Refused("note_needed", number=ticket.number)

    async def verified(self, s: AsyncSession, actor: Actor, ticket: Ticket, note: str | None,
                       result: probe.ProbeResult) -> Change:
        """The check of a 完工 in 待验证 came back: log it; resolve the ticket when it passed."""
        await self._log(s, ticket, "probe", actor, ticket.state, ticket.state, result.detail())
        if not result.ok:
            return await self._log(s, ticket, "verify_failed", actor, ticket.state, ticket.state,
                                   {"probe": result.detail()})
        before = ticket.state
        ticket.resolved_at = self.clock()
        ticket.resolution = (note or "").strip()[:1000] or None
        ticket.state = st.RESOLVED
        detail = {"probe": result.detail()} | ({"note": note} if note else {})
        return await self._log(s, ticket, "resolve", actor, before, st.RESOLVED, detail)

    async def note(self, s: AsyncSession, actor: Actor, ticket: Ticket, text: str) -> Change:
        if not is_staff(actor.person) and actor.person.id != ticket.reporter_id:
            raise Refused("not_your_ticket", number=ticket.number)
        if ticket.state in st.TERMINAL:
            raise Refused("closed_ticket", number=ticket.number, state=t(f"state.{ticket.state}"))
        return await self._log(s, ticket, "note", actor, ticket.state, ticket.state, {"text": text[:2000]})

    async def photo(self, s: AsyncSession, actor: Actor, ticket: Ticket, media_ref: str) -> Change:
        if not is_staff(actor.person) and actor.person.id != ticket.reporter_id:
            raise Refused("not_your_ticket", number=ticket.number)
        if ticket.state not in st.OPEN:  # chat attaches to open tickets only; so does everyone else
            raise Refused("closed_ticket", number=ticket.number, state=t(f"state.{ticket.state}"))
        attached = (await s.exec(select(Attachment.id).where(Attachment.ticket_id == ticket.id,
                                                             Attachment.media_ref == media_ref).limit(1))).first()
        if attached is not None:  # the same picture again proves nothing more
            counts = any(p.counts for p in await evidence.photos(s, ticket) if p.media_ref == media_ref)
            return Change(ticket, "photo", actor, ticket.state, ticket.state, changed=False,
                          detail={"media_ref": media_ref, "counts": counts})
        now = self.clock()
        s.add(Attachment(ticket_id=ticket.id, kind="image", channel=actor.channel,
                         media_ref=media_ref, uploaded_by=actor.person.id, created_at=now))
        taken, source = await evidence.photo_time(media_ref, now, self.tz)
        started = await evidence.repair_started_at(s, ticket)
        return await self._log(s, ticket, "photo", actor, ticket.state, ticket.state, {
            "media_ref": media_ref, "taken_at": taken.isoformat(), "time_source": source,
            "counts": started is not None and taken >= started})

    async def rate(self, s: AsyncSession, actor: Actor, ticket: Ticket, stars: int,
                   comment: str | None = None) -> Change:
        if actor.person.id != ticket.reporter_id:
            raise Refused("reporter_only_rate", number=ticket.number)
        if not 1 <= stars <= 5:
            raise Refused("bad_rating")
        if ticket.state == st.CLOSED and ticket.rating == stars:
            return Change(ticket, "rate", actor, st.CLOSED, st.CLOSED, changed=False)
        if ticket.state != st.RESOLVED:
            raise Refused("not_ratable", number=ticket.number, state=t(f"state.{ticket.state}"))
        ticket.rating = stars
        ticket.state = st.CLOSED
        ticket.closed_at = self.clock()
        detail: dict = {"stars": stars, "comment": comment} if comment else {"stars": stars}
        if followup.opens(self.config, stars):
            fu = await followup.open_followup(s, self.config, ticket, stars, comment, ticket.closed_at)
            detail["followup"] = fu.id
        return await self._log(s, ticket, "rate", actor, st.RESOLVED, st.CLOSED, detail)

    async def close_followup(self, s: AsyncSession, actor: Actor, ticket: Ticket, note: str) -> Change:
        """`回访完成 单号 说明`: the follow-up's owner (or a director) records the outcome."""
        if not is_staff(actor.person):
            raise Refused("staff_only")
        fu = await followup.open_of(s, ticket)
        if fu is None:
            done = await followup.latest_of(s, ticket.id)
            if done is not None and done.state == "done" and done.closed_by == actor.person.id:
                return Change(ticket, "followup_done", actor, ticket.state, ticket.state, changed=False)
            raise Refused("no_followup", number=ticket.number)
        if not followup.may_close(actor.person, fu):
            raise Refused("followup_owner", number=ticket.number, name=await self._name(s, fu.owner_id))
        if not note.strip():
            raise Refused("followup_note", number=ticket.number)
        fu.state, fu.closed_at, fu.closed_by, fu.note = "done", self.clock(), actor.person.id, note.strip()[:1000]
        s.add(fu)
        return await self._log(s, ticket, "followup_done", actor, ticket.state, ticket.state,
                               {"followup": fu.id, "note": fu.note})

    async def reopen(self, s: AsyncSession, actor: Actor, ticket: Ticket, reason: str | None = None) -> Change:
        if actor.person.id != ticket.reporter_id and not is_lead(actor.person):
            raise Refused("reporter_or_lead", number=ticket.number)
        if ticket.state == st.REOPENED:
            return Change(ticket, "reopen", actor, ticket.state, ticket.state, changed=False)
        if ticket.state not in (st.RESOLVED, st.CLOSED):
            raise Refused("not_reopenable", number=ticket.number, state=t(f"state.{ticket.state}"))
        before = ticket.state
        ticket.state = st.REOPENED
        ticket.rating = None
        ticket.resolved_at = ticket.closed_at = None
        now = self.clock()
        deadlines = self.deadlines(ticket.team, ticket.priority)
        ticket.respond_by, ticket.resolve_by = now + deadlines.respond, now + deadlines.resolve
        return await self._log(s, ticket, "reopen", actor, before, st.REOPENED, {"reason": reason})

    async def cancel(self, s: AsyncSession, actor: Actor, ticket: Ticket, reason: str | None = None) -> Change:
        if actor.person.id != ticket.reporter_id and not is_lead(actor.person):
            raise Refused("reporter_or_lead", number=ticket.number)
        if ticket.state == st.CANCELLED:
            return Change(ticket, "cancel", actor, ticket.state, ticket.state, changed=False)
        if ticket.state in (st.RESOLVED, st.CLOSED):
            raise Refused("not_cancellable", number=ticket.number, state=t(f"state.{ticket.state}"))
        before = ticket.state
        ticket.state = st.CANCELLED
        return await self._log(s, ticket, "cancel", actor, before, st.CANCELLED, {"reason": reason})

    # ---- helpers -------------------------------------------------------

    def _held_for_team(self, ticket: Ticket, p: Person) -> bool:
        """Transferred to a team: its lead holds it for any of the team to claim."""
        team = self.config.team(ticket.team)
        return team is not None and team.lead == ticket.assignee_id and p.team == team.id

    def deadlines(self, team_id: str | None, priority: str) -> DeadlineConfig:
        """An outside provider's own SLA for its tickets, else the general deadlines."""
        team = self.config.team(team_id)
        if team is not None and team.provider and team.sla:
            return team.sla[priority]  # type: ignore[index]
        return self.config.tickets.deadlines[priority]  # type: ignore[index]

    async def require_owner_or_lead(self, s: AsyncSession, actor: Actor, ticket: Ticket, *,
                                     allow_unclaimed_staff: bool = False) -> None:
        p = actor.person
        if not is_staff(p):
            raise Refused("staff_only")
        if is_lead(p) or ticket.assignee_id == p.id:
            return
        if allow_unclaimed_staff and ticket.state in st.UNCLAIMED:
            return
        if ticket.state in st.UNCLAIMED:
            raise Refused("claim_first", number=ticket.number)
        raise Refused("owner_only", name=await self._name(s, ticket.assignee_id), number=ticket.number)

    async def _refuse_if_frozen(self, s: AsyncSession, ticket: Ticket) -> None:
        """The one freeze check: every command that moves a ticket's state logs
        the move here, so a frozen ticket refuses them all (chat, cards, phone, API).

        Runs before the move was flushed: expiring the ticket drops it, and the
        ticket is read back as stored, for callers that go on using it.
        """
        with s.no_autoflush:
            freeze = await s.get(TicketFreeze, ticket.id)
            if freeze is not None:
                s.expire(ticket)
                await s.refresh(ticket)
                raise Refused("frozen", number=ticket.number, reason=freeze.reason)

    async def unfreeze(self, s: AsyncSession, actor: Actor, ticket: Ticket, decision: str) -> Change:
        """A lead lifts a freeze by naming the system to follow (`解冻 单号 以CRM为准`):
        the ticket takes the state that system's last report maps to."""
        if not is_lead(actor.person):
            raise Refused("unfreeze_lead_only")
        freeze = await s.get(TicketFreeze, ticket.id)
        if freeze is None:
            raise Refused("not_frozen", number=ticket.number)
        wanted = decision.strip().removeprefix("以").removesuffix("为准").strip().lower()
        system = next((name for name in freeze.systems if name.lower() == wanted), None)
        if system is None:
            raise Refused("unfreeze_which", number=ticket.number,
                          systems="、".join(f"以{name.upper()}为准" for name in freeze.systems))
        status = await s.get(ExternalStatus, (ticket.id, system))
        target = status.mapped_state if status is not None else None
        await s.delete(freeze)
        before = ticket.state
        now = self.clock()
        if target and target != before:
            ticket.state = target
            if target in (st.RESOLVED, st.CLOSED):
                ticket.resolved_at = ticket.resolved_at or now
            if target == st.CLOSED:
                ticket.closed_at = now
            if target == st.REOPENED:
                ticket.rating = None
                ticket.resolved_at = ticket.closed_at = None
        return await self._log(s, ticket, "unfreeze", actor, before, ticket.state,
                               {"decision": system, "reason": freeze.reason, "systems": freeze.systems})

    async def _name(self, s: AsyncSession, person_id: str | None) -> str:
        if person_id is None:
            return ""
        p = await s.get(Person, person_id)
        return p.name if p else person_id

    async def _log(self, s: AsyncSession, ticket: Ticket, action: str, actor: Actor,
                   before: str | None, after: str | None, detail: dict | None = None, *,
                   now: datetime | None = None) -> Change:
        if before != after and before is not None and action != "unfreeze":
            await self._refuse_if_frozen(s, ticket)
        now = now or self.clock()
        if ticket.updated_at != now:  # a new ticket already has it: no second statement
            ticket.updated_at = now
        s.add(ticket)
        detail = dict(detail or {})
        if actor.via != "text":
            detail["via"] = actor.via
        if actor.token:
            detail["token"] = actor.token
        s.add(TicketEvent(ticket_id=ticket.id, action=action, actor_id=actor.person.id,
                          actor_name=actor.person.name, channel=actor.channel, at=now,
                          from_state=before, to_state=after, detail=detail))
        return Change(ticket, action, actor, before, after, True, detail)
