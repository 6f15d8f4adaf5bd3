"""Who hears about a change, and what they see: texts and cards into the outbox."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Awaitable, Callable

from sqlalchemy import delete, insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from bot.core import evidence
from bot.core import states as st
from bot.core.directory import Directory
from bot.core.service import Change, TicketService
from bot.events import Address, CardMessage, Text
from bot.outbox import enqueue
from bot.texts import t
from cards import build
from cards.model import Card
from nlp import SopLibrary
from storage.models import Attachment, CardAction, CardRefresh, FollowUp, OutboxMessage, Person, Ticket, TicketEvent
from storage.queries import insert_ignore
from storage.types import utcnow

# How long a linked report's card update waits, gathering the burst it belongs to.
CARD_REFRESH_DELAY = timedelta(seconds=2)
_NEW_TOKENS = insert(CardAction.__table__)  # a card's new button ids (Notifier.tokens)

# The ticket events a card is built from: its timeline, the report (dispatch reasons), the acknowledgement.
VIEW_ACTIONS = (*build.TIMELINE_ACTIONS, "report", "ack")

CUSTOMER_TOLD = {
    "claim": "notify.customer.claimed",
    "transfer": "notify.customer.transferred",
    "depart": "notify.customer.departed",
    "arrive": "notify.customer.arrived",
    "start_repair": "notify.customer.repairing",
    "resolve": "notify.customer.resolved",
    "reopen": "notify.customer.reopened",
    "cancel": "notify.customer.cancelled",
    "escalate": "notify.customer.escalated",
}


class Notifier:
    def __init__(self, config: Config, directory: Directory, service: TicketService, sops: SopLibrary):
        self.config = config
        self.directory = directory
        self.service = service
        self.sops = sops
        # Set by the runtime when tracking pages are served: the signed link of a ticket's page.
        self.tracking_link: Callable[[Ticket], str] | None = None
        # Told of every change after the chats (outbound webhooks); each writes
        # into the same transaction.
        self.listeners: list[Callable[[AsyncSession, Change], Awaitable[None]]] = []

    # ---- snapshots, tokens -------------------------------------------

    async def view(self, s: AsyncSession, ticket: Ticket, opened: Change | None = None) -> build.TicketView:
        """The ticket as the cards show it; built once per change within a transaction.

        `opened` is the report that opened the ticket in this transaction: its only event,
        no pictures yet, and its people at hand, so nothing needs reading.
        """
        key = (ticket.id, ticket.updated_at, ticket.state, ticket.assignee_id, ticket.rating)
        cache = s.info.setdefault("ticket_views", {})
        if key not in cache:
            cache[key] = await self._build_view(s, ticket, opened)
        return cache[key]

    async def _person(self, s: AsyncSession, person_id: str | None, opened: Change | None) -> Person | None:
        if person_id is None:
            return None
        if opened is not None and person_id in opened.people:
            return opened.people[person_id]
        return await s.get(Person, person_id)

    async def _build_view(self, s: AsyncSession, ticket: Ticket, opened: Change | None = None) -> build.TicketView:
        reporter = await self._person(s, ticket.reporter_id, opened)
        assignee = await self._person(s, ticket.assignee_id, opened)
        if opened is not None:
            events = [("report", ticket.created_at, opened.detail, opened.actor.person.name)]
        else:
            # Only the events a card shows: an incident's ticket gathers one "link" event per
            # reporter, and each update of its cards would read them all again.
            events = (await s.exec(select(TicketEvent.action, TicketEvent.at, TicketEvent.detail,
                                          TicketEvent.actor_name)
                                   .where(TicketEvent.ticket_id == ticket.id, TicketEvent.action.in_(VIEW_ACTIONS))
                                   .order_by(TicketEvent.id))).all()
        times = {action: self.service.local(at) for action, at, _, _ in events}
        report = next((d for a, _, d, _ in events if a == "report"), {})
        ack = next(((at, d, who) for a, at, d, who in reversed(events) if a == "ack"), None)
        acknowledged = None
        if ack is not None:
            key = "card.acked_phone" if ack[1].get("via") == "phone" else "card.acked"
            acknowledged = t(key, name=ack[2], time=self.service.local(ack[0]))
        suggestion = None
        if assignee is not None and ticket.state in st.UNCLAIMED and report.get("suggested") == assignee.id:
            suggestion = self._why(ticket, report)
        # From the attachments, not the events: a channel that fetches a picture later
        # (WeCom) points its attachment at the local file once it has it.
        photos = () if opened is not None else tuple((await s.exec(select(Attachment.media_ref).where(
            Attachment.ticket_id == ticket.id, Attachment.kind == "image").order_by(Attachment.id))).all())
        photo_count, photos = len(photos), photos[-evidence.MAX_THUMBNAILS:]
        return build.TicketView(
            id=ticket.id, number=ticket.number, state=ticket.state, priority=ticket.priority,
            category_name=ticket.category_name, summary=ticket.summary,
            reporter_name=reporter.name if reporter else ticket.reporter_id,
            assignee_name=assignee.name if assignee else None, location=ticket.location,
            serial=ticket.serial, error_code=ticket.error_code, phone=ticket.phone, impact=ticket.impact,
            respond_by=self.service.local(ticket.respond_by), resolve_by=self.service.local(ticket.resolve_by),
            rating=ticket.rating, resolution=ticket.resolution, evidence=tuple(ticket.evidence), times=times,
            owned=assignee is not None and ticket.claimed_at is not None and ticket.state not in st.UNCLAIMED,
            suggestion=suggestion, photos=photos, photo_count=photo_count, countdown=self._countdown(ticket), acknowledged=acknowledged,
            linked_reports=ticket.linked_reports,
        )

    def _why(self, ticket: Ticket, report: dict) -> str | None:
        """"擅长漏水渗水 · 华东 · 手上 1 单 · 值班中" from the report's dispatch reasons."""
        parts = []
        if report.get("skill"):
            parts.append(t("dispatch.skill", category=ticket.category_name))
        if report.get("region"):
            parts.append(str(report["region"]))
        parts.append(t("dispatch.load", count=int(report.get("load") or 0)))
        if report.get("oncall"):
            parts.append(t("dispatch.oncall"))
        return " · ".join(parts)

    def _countdown(self, ticket: Ticket) -> str | None:
        """An outside provider's time left on its SLA, as of this update."""
        team = self.config.team(ticket.team)
        if team is None or not team.provider or ticket.state not in st.OPEN:
            return None
        due = ticket.respond_by if ticket.state in st.UNCLAIMED else ticket.resolve_by
        minutes = int((due - self.service.clock()).total_seconds() // 60)
        if minutes < 0:
            return t("card.countdown_over", team=team.name, minutes=-minutes, due=self.service.local(due))
        return t("card.countdown", team=team.name, hours=minutes // 60, minutes=minutes % 60,
                 due=self.service.local(due))

    async def tokens(self, s: AsyncSession, ticket_id: int, actions: list[str], *,
                     new: bool = False) -> dict[str, str]:
        """One opaque callback id per ticket and action, stable across card updates
        (`new`: the ticket was opened in this transaction and has none yet)."""
        out: dict[str, str] = {}
        if not new:
            rows = (await s.exec(select(CardAction).where(CardAction.ticket_id == ticket_id,
                                                          CardAction.action.in_(actions)))).all()
            out = {r.action: r.token for r in rows}
        for action in actions:
            if action not in out:
                token = secrets.token_urlsafe(12)
                s.add(CardAction(token=token, ticket_id=ticket_id, action=action))
                out[action] = token
        return out

    async def engineer_card(self, s: AsyncSession, ticket: Ticket, v: build.TicketView | None = None, *,
                            new: bool = False) -> Card:
        v = v or await self.view(s, ticket)
        actions = list(build.ENGINEER_ACTIONS.get(ticket.state, ()))
        return build.engineer_card(v, await self.tokens(s, ticket.id, actions, new=new))

    async def escalation_card(self, s: AsyncSession, ticket: Ticket, reason: str) -> Card:
        v = await self.view(s, ticket)
        return build.escalation_card(v, await self.tokens(s, ticket.id, ["ack", "transfer"]), reason)

    async def rating_card(self, s: AsyncSession, ticket: Ticket, v: build.TicketView) -> Card:
        return build.rating_card(v, await self.tokens(s, ticket.id, [f"rate:{n}" for n in range(1, 6)]))

    async def transfer_card(self, s: AsyncSession, ticket: Ticket, exclude: str | None) -> Card:
        v = await self.view(s, ticket)
        q = select(Person).where(Person.role.in_(("engineer", "lead")), Person.active.is_(True))
        if ticket.team:
            q = q.where(Person.team == ticket.team)
        people = [p for p in (await s.exec(q.order_by(Person.id))).all() if p.id != exclude]
        tokens = await self.tokens(s, ticket.id, [f"transfer:{p.id}" for p in people])
        return build.transfer_card(v, {p.id: (p.name, tokens[f"transfer:{p.id}"]) for p in people})

    # ---- addresses -----------------------------------------------------

    def customer_address(self, ticket: Ticket) -> Address:
        return Address(ticket.reporter_channel, ticket.reporter_conv_kind, ticket.reporter_conv_id)  # type: ignore[arg-type]

    async def _customer_mentions(self, s: AsyncSession, ticket: Ticket) -> tuple[str, ...]:
        if ticket.reporter_conv_kind != "group":
            return ()
        ids = await self.directory.identities(s, ticket.reporter_id)
        return (ids[ticket.reporter_channel],) if ticket.reporter_channel in ids else ()

    async def _card_addresses(self, s: AsyncSession, ticket: Ticket, track_key: str) -> list[Address]:
        rows = (await s.exec(select(OutboxMessage.channel, OutboxMessage.to_kind, OutboxMessage.to_id)
                             .where(OutboxMessage.ticket_id == ticket.id, OutboxMessage.track_key == track_key)
                             .distinct())).all()
        return [Address(c, k, i) for c, k, i in rows]  # type: ignore[arg-type]

    async def _mention_of(self, s: AsyncSession, person_id: str | None, channel: str) -> tuple[str, ...]:
        if not person_id:
            return ()
        ids = await self.directory.identities(s, person_id)
        return (ids[channel],) if channel in ids else ()

    # ---- what each change sends -------------------------------------

    async def after(self, s: AsyncSession, change: Change) -> None:
        if not change.changed:
            return
        ticket = change.ticket
        # The customer's text first: it introduces what follows (the rating card after 完工).
        if change.action in CUSTOMER_TOLD:
            await self._tell_customer(s, change)
        handler = getattr(self, f"_on_{change.action}", None)
        if handler is not None:
            await handler(s, change)
        if change.action == "link":  # a burst of these is one card update a moment later
            await self.refresh_cards_soon(s, ticket)
        elif change.action not in ("report", "note", "followup_done"):
            await self._update_cards(s, ticket, rated=change.action == "rate", reason=t(
                f"escalation.reason.{change.action}", name=change.actor.person.name))
        for listener in self.listeners:
            await listener(s, change)

    async def _tell_customer(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        v = await self.view(s, ticket)
        assignee = await s.get(Person, ticket.assignee_id) if ticket.assignee_id else None
        text = t(CUSTOMER_TOLD[change.action], number=ticket.number, name=v.assignee_name or "",
                 phone=(assignee.phone if assignee and assignee.phone else "—"),
                 resolution=ticket.resolution or t("notify.no_resolution"))
        enqueue(s, self.customer_address(ticket), Text(text, await self._customer_mentions(s, ticket)), ticket.id)
        # Everybody who reported the same incident hears every update too.
        told = {self.customer_address(ticket)}
        for link in await self.service.linked(s, ticket):
            to = Address(link.channel, link.conv_kind, link.conv_id)  # type: ignore[arg-type]
            if to not in told:
                told.add(to)
                mentions = await self._mention_of(s, link.person_id, link.channel) if link.conv_kind == "group" else ()
                enqueue(s, to, Text(text, mentions), ticket.id)

    async def refresh_cards_soon(self, s: AsyncSession, ticket: Ticket) -> None:
        """Have the ticket's cards updated once, CARD_REFRESH_DELAY from now (a CardRefresh row;
        more changes before then are shown by the same update)."""
        await insert_ignore(s, CardRefresh, ticket_id=ticket.id, due_at=utcnow() + CARD_REFRESH_DELAY)

    async def refresh_due_cards(self, s: AsyncSession, now: datetime, limit: int = 20) -> int:
        """Update the cards of up to `limit` tickets whose CardRefresh is due; returns how many.

        The ticket is locked before its row is taken, in the order every change
        takes them (ticket, then row): a change that commits meanwhile is either
        shown by this update or followed by its own.
        """
        due = (await s.exec(select(CardRefresh.ticket_id).where(CardRefresh.due_at <= now)
                            .order_by(CardRefresh.due_at).limit(limit))).all()
        done = 0
        for ticket_id in due:
            ticket = await self.service.get(s, ticket_id)
            taken = await s.exec(delete(CardRefresh).where(CardRefresh.ticket_id == ticket_id))
            if not taken.rowcount:  # another process took it first
                continue
            done += 1
            if ticket is not None:
                await self._update_cards(s, ticket, rated=False, reason=t(
                    "escalation.reason.link", count=ticket.linked_reports + 1))
        return done

    async def _update_cards(self, s: AsyncSession, ticket: Ticket, *, rated: bool,
                            reason: str) -> None:
        """Every card of the ticket shown as it is now; `reason` is what the escalation card says changed."""
        v = await self.view(s, ticket)
        eng = await self.engineer_card(s, ticket, v)
        for addr in await self._card_addresses(s, ticket, eng.track_key):
            enqueue(s, addr, CardMessage(eng, update=True), ticket.id)
        status = build.status_card(v)
        for addr in await self._card_addresses(s, ticket, status.track_key):
            enqueue(s, addr, CardMessage(status, update=True), ticket.id)
        if rated:
            rating = await self.rating_card(s, ticket, v)
            for addr in await self._card_addresses(s, ticket, rating.track_key):
                enqueue(s, addr, CardMessage(rating, update=True), ticket.id)
        esc_key = f"t{ticket.id}:esc"
        esc_addrs = await self._card_addresses(s, ticket, esc_key)
        if esc_addrs:
            card = await self.escalation_card(s, ticket, reason)
            for addr in esc_addrs:
                enqueue(s, addr, CardMessage(card, update=True), ticket.id)

    async def _on_report(self, s: AsyncSession, change: Change) -> None:
        # The ticket and its audit event first; nothing below reads the outbox, so its rows
        # are written in one flush, not one per lookup.
        await s.flush()
        with s.no_autoflush:
            await self._report_messages(s, change)

    async def _report_messages(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        v = await self.view(s, ticket, opened=change)
        to = self.customer_address(ticket)
        mentions = await self._customer_mentions(s, ticket)
        receipt = t("notify.customer.received", number=ticket.number, category=v.category_name,
                    priority=t(f"priority.{ticket.priority}"), respond_by=v.respond_by)
        if self.tracking_link is not None:
            receipt += "\n" + t("notify.track.link", url=self.tracking_link(ticket))
        enqueue(s, to, Text(receipt, mentions), ticket.id)
        enqueue(s, to, CardMessage(build.status_card(v)), ticket.id)
        card = await self.engineer_card(s, ticket, v, new=True)
        for group in self.directory.team_groups(ticket.team):
            enqueue(s, group, CardMessage(card, mentions=await self._mention_of(s, ticket.assignee_id,
                                                                               group.channel)), ticket.id)
        if ticket.assignee_id:
            dm = await self.directory.direct_address(s, ticket.assignee_id, prefer=ticket.reporter_channel)
            if dm:
                enqueue(s, dm, CardMessage(card), ticket.id)
                await self._send_sop(s, ticket, v, dm)

    async def _on_link(self, s: AsyncSession, change: Change) -> None:
        """The new reporter of a known incident: its number, at once."""
        ticket = change.ticket
        to = change.detail.get("conversation")
        if to is None:
            return
        mentions = await self._mention_of(s, change.actor.person.id, to.channel) if to.kind == "group" else ()
        enqueue(s, to, Text(t("notify.customer.linked", number=ticket.number,
                              count=change.detail.get("reporters", ticket.linked_reports + 1)), mentions), ticket.id)

    async def _send_sop(self, s: AsyncSession, ticket: Ticket, v: build.TicketView, to: Address) -> None:
        sop = self.sops.lookup(ticket)
        if sop is not None:
            enqueue(s, to, CardMessage(build.sop_card(v, sop.title, sop.steps)), ticket.id)

    async def _on_claim(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        dm = await self.directory.direct_address(s, ticket.assignee_id, prefer=change.actor.channel)
        sent_to = await self._card_addresses(s, ticket, f"t{ticket.id}:eng")
        if dm and dm not in sent_to:
            enqueue(s, dm, CardMessage(await self.engineer_card(s, ticket)), ticket.id)
            await self._send_sop(s, ticket, await self.view(s, ticket), dm)

    async def _on_transfer(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        if change.detail.get("team"):  # to a team: its group sees the card, its lead is @-ed
            card = await self.engineer_card(s, ticket)
            for group in self.directory.team_groups(ticket.team):
                mentions = await self._mention_of(s, ticket.assignee_id, group.channel)
                enqueue(s, group, CardMessage(card, mentions=mentions), ticket.id)
        if not ticket.assignee_id:
            return
        dm = await self.directory.direct_address(s, ticket.assignee_id, prefer=change.actor.channel)
        if dm:
            enqueue(s, dm, Text(t("notify.staff.transferred_to_you", number=ticket.number,
                                  name=change.actor.person.name)), ticket.id)
            enqueue(s, dm, CardMessage(await self.engineer_card(s, ticket), update=True), ticket.id)

    async def escalate_to(self, s: AsyncSession, ticket: Ticket, roles: list[str], reason: str) -> None:
        """Escalation card to the team's lead/director directly, and an @ in the team group."""
        team = self.config.team(ticket.team)
        targets = [getattr(team, role) for role in roles if team and getattr(team, role, None)]
        card = await self.escalation_card(s, ticket, reason)
        for pid in targets:
            dm = await self.directory.direct_address(s, pid, prefer=ticket.reporter_channel)
            if dm:
                enqueue(s, dm, CardMessage(card, update=True), ticket.id)
        for group in self.directory.team_groups(ticket.team):
            mentions: tuple[str, ...] = ()
            for pid in targets:
                mentions += await self._mention_of(s, pid, group.channel)
            enqueue(s, group, Text(t("notify.group.escalated", number=ticket.number, reason=reason), mentions),
                    ticket.id)

    async def _on_resolve(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        if change.detail.get("probe"):  # resolved by the check passing, after the engineer's 完工
            await self._tell_assignee(s, change, t("notify.staff.verified", number=ticket.number))
        v = await self.view(s, ticket)
        enqueue(s, self.customer_address(ticket), CardMessage(await self.rating_card(s, ticket, v),
                                                              mentions=await self._customer_mentions(s, ticket)),
                ticket.id)

    async def _on_rate(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        enqueue(s, self.customer_address(ticket), Text(t("notify.customer.rated", number=ticket.number)),
                ticket.id)
        fu_id = change.detail.get("followup")
        if fu_id is not None:
            fu = await s.get(FollowUp, fu_id)
            await self._send_followup(s, fu, ticket, t("notify.staff.followup_opened", number=ticket.number,
                                                       stars=fu.stars, comment=fu.comment or "—",
                                                       due=self.service.local(fu.due_at)))
        elif ticket.rating is not None and ticket.rating <= 2:
            await self.escalate_to(s, ticket, ["lead"], t("escalation.reason.low_rating", stars=ticket.rating))

    # ---- follow-ups ------------------------------------------------------

    async def followup_card(self, s: AsyncSession, fu: FollowUp, ticket: Ticket) -> Card:
        owner = await s.get(Person, fu.owner_id) if fu.owner_id else None
        closer = await s.get(Person, fu.closed_by) if fu.closed_by else None
        return build.followup_card(build.FollowUpView(
            id=fu.id, ticket_number=ticket.number, stars=fu.stars, comment=fu.comment,
            owner_name=owner.name if owner else "—", due=self.service.local(fu.due_at, with_date=True),
            done=fu.state == "done", note=fu.note, closed_by=closer.name if closer else None))

    async def _send_followup(self, s: AsyncSession, fu: FollowUp, ticket: Ticket, text: str,
                             to: list[str] | None = None) -> None:
        """The follow-up card (and a line saying why) to its owner, or to `to`; a line in the team group."""
        card = await self.followup_card(s, fu, ticket)
        for pid in (to if to is not None else [fu.owner_id] if fu.owner_id else []):
            dm = await self.directory.direct_address(s, pid, prefer=ticket.reporter_channel)
            if dm:
                enqueue(s, dm, Text(text), ticket.id)
                enqueue(s, dm, CardMessage(card, update=True), ticket.id)
        for group in self.directory.team_groups(fu.team):
            mentions: tuple[str, ...] = ()
            for pid in (to if to is not None else [fu.owner_id] if fu.owner_id else []):
                mentions += await self._mention_of(s, pid, group.channel)
            enqueue(s, group, Text(text, mentions), ticket.id)

    async def remind_followup(self, s: AsyncSession, fu: FollowUp, ticket: Ticket, targets: list[str]) -> None:
        """A follow-up past its deadline: its escalation step reaches `targets`."""
        owner = await s.get(Person, fu.owner_id) if fu.owner_id else None
        await self._send_followup(s, fu, ticket, t("notify.staff.followup_overdue", number=ticket.number,
                                                   name=owner.name if owner else "—"), to=targets)

    async def _on_followup_done(self, s: AsyncSession, change: Change) -> None:
        fu = await s.get(FollowUp, change.detail["followup"])
        card = await self.followup_card(s, fu, change.ticket)
        for addr in await self._card_addresses(s, change.ticket, card.track_key):
            enqueue(s, addr, CardMessage(card, update=True), change.ticket.id)

    async def _on_ack(self, s: AsyncSession, change: Change) -> None:
        """Whoever answered (by phone, button or text), the group knows who has it in hand."""
        ticket = change.ticket
        key = "notify.group.acked_phone" if change.actor.via == "phone" else "notify.group.acked"
        for group in self.directory.team_groups(ticket.team):
            enqueue(s, group, Text(t(key, number=ticket.number, name=change.actor.person.name)), ticket.id)

    async def _on_verify_failed(self, s: AsyncSession, change: Change) -> None:
        """The check failed: the engineer hears why in their chat; the customer nothing."""
        p = change.detail.get("probe", {})
        result = p.get("status") if p.get("status") is not None else (p.get("error") or "—")
        await self._tell_assignee(s, change, t("notify.staff.verify_failed", number=change.ticket.number,
                                                result=result, attempts=p.get("attempts", 1)))

    async def _tell_assignee(self, s: AsyncSession, change: Change, text: str) -> None:
        ticket = change.ticket
        dm = await self.directory.direct_address(s, ticket.assignee_id, prefer=change.actor.channel) \
            if ticket.assignee_id else None
        if dm:
            enqueue(s, dm, Text(text), ticket.id)

    async def _on_reopen(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        for group in self.directory.team_groups(ticket.team):
            enqueue(s, group, Text(t("notify.group.reopened", number=ticket.number)), ticket.id)

    async def _on_note(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        if change.actor.person.id != ticket.reporter_id:
            return
        text = t("notify.staff.customer_added", number=ticket.number, text=change.detail.get("text", ""))
        await self._tell_staff(s, ticket, text)

    async def _on_photo(self, s: AsyncSession, change: Change) -> None:
        ticket = change.ticket
        if change.actor.person.id == ticket.reporter_id:
            await self._tell_staff(s, ticket, t("notify.staff.customer_photo", number=ticket.number))

    async def _tell_staff(self, s: AsyncSession, ticket: Ticket, text: str) -> None:
        if ticket.assignee_id and ticket.state not in st.UNCLAIMED:
            dm = await self.directory.direct_address(s, ticket.assignee_id)
            if dm:
                enqueue(s, dm, Text(text), ticket.id)
                return
        for group in self.directory.team_groups(ticket.team):
            enqueue(s, group, Text(text), ticket.id)
