"""From a neutral inbound event to ticket commands, replies and notifications.

One event is one transaction: the de-duplication mark, the ticket change, the
audit event and every outbound message commit together, so a platform's retry
of an event that got a 200 finds it done, and nothing acknowledged is lost.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.channel import HandleResult
from bot.config import Config
from bot.core import states as st
from bot.core import evidence, trail
from bot.core.board import my_board
from bot.core.commands import CUSTOMER_COMMANDS, REPORT_COMMANDS, Command, parse_command
from bot.core.customer import UnknownCustomer, customer_conversation, named_customer
from bot.core.directory import Directory, is_staff
from bot.core.notify import Notifier
from bot.core.service import Actor, Change, Refused, TicketService
from bot.events import CardMessage, InboundEvent, Text, event_to_dict
from bot.metrics import Metrics
from bot.outbox import enqueue, savepoint
from bot.tasks import wait_event
from bot.texts import t
from storage.db import Database
from storage.models import CardAction, InboxEvent, OutboxMessage, Person, ProcessedEvent, Ticket
from storage.queries import insert_ignore
from storage.types import utcnow

log = logging.getLogger(__name__)

_SMALL_TALK_MAX = 6  # a customer with an open ticket: a message this short without any signal is chat
_ANSWER_WINDOW = timedelta(hours=1)  # a reply this soon after "是要报修吗？" is the report
# An accepted event's inbox row: a plain INSERT (nothing reads it back while answering).
_RECORD = insert(InboxEvent.__table__)


@dataclass
class _Reply:
    texts: list[str]
    toast: str | None = None
    outcome: str = "done"  # done | unchanged | refused
    card_ticket: int | None = None  # for card clicks: the ticket whose card was clicked


class TicketBot:
    """The sink channels hand their events to."""

    def __init__(self, config: Config, db: Database, directory: Directory, service: TicketService,
                 notifier: Notifier, metrics: Metrics, on_commit=None, escalation=None,
                 on_accept=None, defer_inbound: bool = False):
        self.config = config
        self.db = db
        self.directory = directory
        self.service = service
        self.notifier = notifier
        self.metrics = metrics
        self.on_commit = on_commit or (lambda: None)
        self.on_accept = on_accept or (lambda: None)
        self.defer_inbound = defer_inbound
        self.answering = 0  # callbacks being accepted right now
        self._answered = asyncio.Event()  # set whenever no callback is being accepted
        self._answered.set()
        # The escalation engine: told of every change (start, jump or stop a chain).
        self.escalation = escalation
        # The managers' commands (reports.chat.ReportChat), set by the runtime.
        self.reports = None
        # Set by the runtime: called once the transaction that applied a picture
        # message has committed, so its channel can fetch the file the core attached
        # (WeCom hands over a media id, not the picture). Whichever process applies it.
        self.on_picture_applied: Callable[[InboundEvent], None] = lambda event: None

    async def __call__(self, event: InboundEvent) -> HandleResult:
        """The sink: accept a message into the inbox, or handle a click at once.

        Clicks are handled inline because some platforms show the updated card
        from the callback's answer; messages are only recorded, so the platform
        gets its answer in a millisecond or two whatever the load.
        """
        if self.defer_inbound and event.kind != "action":
            return await self.accept(event)
        return await self.handle(event)

    async def accept(self, event: InboundEvent) -> HandleResult:
        self.answering += 1
        self._answered.clear()
        try:
            return await self._accept(event)
        finally:
            self.answering -= 1
            if not self.answering:
                self._answered.set()

    async def yield_to_callbacks(self, limit: float = 0.25) -> None:
        """Let callbacks being answered go first (background work calls this).

        Answering fast is what keeps the platforms from retrying; the workers
        wait while answers are in progress, at most `limit` seconds (woken the
        moment the last one is answered).
        """
        if self.answering:
            await wait_event(self._answered, limit)

    async def refresh_due_cards(self, s: AsyncSession, now) -> int:
        """Update the cards whose update was put off until `now` (see Notifier.refresh_cards_soon)."""
        return await self.notifier.refresh_due_cards(s, now)

    async def _accept(self, event: InboundEvent) -> HandleResult:
        async with self.db.session(urgent=True) as s:
            if not await insert_ignore(s, ProcessedEvent, platform=event.platform, event_id=event.event_id):
                self.metrics.inbound.labels(event.platform, "duplicate").inc()
                return HandleResult(duplicate=True)
            now = utcnow()
            await s.exec(_RECORD, params={"platform": event.platform, "event_id": event.event_id,
                                          "payload": event_to_dict(event), "status": "pending", "attempts": 0,
                                          "next_attempt_at": now, "received_at": now})
        self.metrics.inbound.labels(event.platform, "accepted").inc()
        self.on_accept()
        return HandleResult()

    async def handle(self, event: InboundEvent) -> HandleResult:
        """De-duplicate and apply one event in one transaction."""
        async with self.db.session(urgent=True) as s:
            if not await insert_ignore(s, ProcessedEvent, platform=event.platform, event_id=event.event_id):
                self.metrics.inbound.labels(event.platform, "duplicate").inc()
                return HandleResult(duplicate=True)
            result = await self.process(s, event)
        self.metrics.inbound.labels(event.platform, "ok").inc()
        self.on_commit()
        return result

    async def process(self, s: AsyncSession, event: InboundEvent) -> HandleResult:
        """Apply an event already marked as seen, inside the caller's transaction."""
        if event.kind == "image":
            self._after_commit(s, self.on_picture_applied, event)
        person = await self.directory.resolve(s, event.platform, event.sender_id, event.sender_name)
        if person is None:
            reply = _Reply([t("reply.unknown_user")], toast=t("reply.unknown_user"), outcome="refused")
        else:
            actor = Actor(person, event.platform, "card" if event.kind == "action" else "text")
            try:
                async with savepoint(s):  # a refusal leaves nothing behind
                    reply = await self._dispatch(s, actor, event)
            except Refused as r:
                self.metrics.refusals.labels(r.key).inc()
                reply = _Reply([r.text], toast=r.text, outcome="refused")
        card = None
        if event.kind == "action":
            card = await self._clicked_card(s, event)
        else:
            for text in reply.texts:
                enqueue(s, event.conversation, Text(text, self._mention_back(event)))
        return HandleResult(toast=reply.toast, card=card, outcome=reply.outcome)

    @staticmethod
    def _after_commit(s: AsyncSession, callback: Callable[[InboundEvent], None], event: InboundEvent) -> None:
        """Call `callback(event)` soon after the caller's transaction commits (not at all if it
        rolls back); the callback runs on the event loop, outside the session."""
        loop = asyncio.get_running_loop()
        ended = False

        def committed(session) -> None:
            # Savepoints (each event is applied in one) fire this too: only the outermost counts.
            if not ended and session.get_nested_transaction() is None:
                loop.call_soon(callback, event)

        def transaction_end(_session, transaction) -> None:
            nonlocal ended
            if transaction.parent is None:
                ended = True

        sa_event.listen(s.sync_session, "after_commit", committed)
        sa_event.listen(s.sync_session, "after_transaction_end", transaction_end)

    def _mention_back(self, event: InboundEvent) -> tuple[str, ...]:
        return (event.sender_id,) if event.conversation.kind == "group" else ()

    async def _clicked_card(self, s: AsyncSession, event: InboundEvent):
        """The clicked card as it looks after the click, for channels that replace it inline."""
        action = await s.get(CardAction, event.action_token) if event.action_token else None
        if action is None:
            return None
        ticket = await self.service.get(s, action.ticket_id, lock=False)
        if ticket is None:
            return None
        if action.action.startswith("rate:"):
            return await self.notifier.rating_card(s, ticket, await self.notifier.view(s, ticket))
        if action.action == "ack":
            return await self.notifier.escalation_card(s, ticket, t("escalation.reason.ack", name=event.sender_name or ""))
        return await self.notifier.engineer_card(s, ticket)

    # ---- dispatch --------------------------------------------------------

    async def _dispatch(self, s: AsyncSession, actor: Actor, event: InboundEvent) -> _Reply:
        if event.kind == "action":
            return await self._click(s, actor, event)
        if event.kind == "image":
            return await self._image(s, actor, event)
        cmd = parse_command(event.text)
        if cmd is None:
            return await self._free_text(s, actor, event)
        if not is_staff(actor.person) and cmd.name not in CUSTOMER_COMMANDS:
            raise Refused("customer_command", command=event.text.strip()[:20])
        return await self._command(s, actor, event, cmd)

    async def _apply(self, s: AsyncSession, change: Change) -> Change:
        await self.notifier.after(s, change)
        if self.escalation is not None:
            await self.escalation.after(s, change)
        if change.changed:
            self.metrics.ticket_actions.labels(change.action).inc()
            if change.action == "report":
                self.metrics.tickets_created.labels(change.ticket.priority).inc()
        return change

    async def _free_text(self, s: AsyncSession, actor: Actor, event: InboundEvent) -> _Reply:
        text = event.text.strip()
        if is_staff(actor.person):
            return _Reply([t("help.staff")])
        if not text:
            return _Reply([t("help.customer")])
        c = self.service.classifier.classify(text)
        if not c.signal:
            # nothing that names a fault, a request or a place (在吗, 好的): never dropped silently,
            # but only filed once the customer has been asked and answers
            if await self.service.open_tickets_of(s, actor.person):
                if len(re.sub(r"\W", "", text)) <= _SMALL_TALK_MAX:
                    return _Reply([t("reply.small_talk")])
            elif not await self._asked_for_report(s, event):
                return _Reply([t("reply.ask_report")])
        change = await self._apply(s, await self.service.report(s, actor, text, event.conversation, c))
        return _Reply([], toast=change.ticket.number)

    async def _asked_for_report(self, s: AsyncSession, event: InboundEvent) -> bool:
        """True when the last message to this conversation, within the hour, asked this sender for the report."""
        to = event.conversation
        last = (await s.exec(
            select(OutboxMessage).where(OutboxMessage.channel == to.channel, OutboxMessage.to_kind == to.kind,
                                        OutboxMessage.to_id == to.id)
            .order_by(OutboxMessage.id.desc()).limit(1))).first()
        if last is None or last.created_at < utcnow() - _ANSWER_WINDOW:
            return False
        m = last.message
        return (m.get("type") == "text" and m.get("text") == t("reply.ask_report")
                and list(m.get("mentions", ())) == list(self._mention_back(event)))

    async def _target_ticket(self, s: AsyncSession, actor: Actor, cmd: Command, *, unclaimed: bool = False) -> Ticket:
        if cmd.number:
            return await self.service.by_number(s, cmd.number)
        candidates = (await self.service.unclaimed_for(s, actor.person) if unclaimed
                      else await self.service.open_tickets_of(s, actor.person))
        if unclaimed:
            mine = [c for c in candidates if c.assignee_id == actor.person.id]
            candidates = mine or candidates
        if not candidates:
            if unclaimed:
                raise Refused("nothing_to_claim")
            raise Refused("no_owned_ticket" if is_staff(actor.person) else "no_open_ticket")
        # Several open tickets: ask which (a resolved one waiting for its rating doesn't count).
        if not unclaimed and sum(c.state != st.RESOLVED for c in candidates) > 1:
            raise Refused("which_ticket", numbers="、".join(c.number for c in candidates[:5]))
        return await self.service.get(s, candidates[0].id)

    async def _command(self, s: AsyncSession, actor: Actor, event: InboundEvent, cmd: Command) -> _Reply:
        svc = self.service
        name = cmd.name
        if name == "help":
            return _Reply([t("help.staff" if is_staff(actor.person) else "help.customer")])
        if name == "report":
            if not cmd.arg:
                raise Refused("empty_report")
            if is_staff(actor.person):
                return await self._report_for(s, actor, event, cmd.arg)
            change = await self._apply(s, await svc.report(s, actor, cmd.arg, event.conversation))
            return _Reply([], toast=change.ticket.number)
        if name == "trail":
            ticket = await self._progress_ticket(s, actor, cmd)
            text = (await trail.staff_trail(s, svc, ticket) if is_staff(actor.person)
                    else await trail.customer_timeline(s, svc, ticket))
            return _Reply([text])
        if name == "followup_done":
            if not cmd.number:
                raise Refused("followup_number")
            ticket = await svc.by_number(s, cmd.number)
            change = await self._apply(s, await svc.close_followup(s, actor, ticket, cmd.arg))
            return _Reply([t("reply.followup_done" if change.changed else "reply.followup_done_again",
                             number=ticket.number)])
        if name == "my_tickets":
            return _Reply([await my_board(s, svc, actor.person)])
        if name in REPORT_COMMANDS:
            if self.reports is None:
                return _Reply([t("report.unavailable")])
            for message in await self.reports.answer(s, actor.person, name, cmd.arg):
                enqueue(s, event.conversation, message)
            return _Reply([])
        if name == "progress":
            ticket = await self._progress_ticket(s, actor, cmd)
            return _Reply([await self._progress_text(s, ticket)])
        if name == "oncall":
            if self.escalation is None:
                return _Reply([t("reply.oncall_unavailable")])
            return _Reply([await self.escalation.oncall_text(s, actor.person)])
        if name == "claim":
            ticket = await self._target_ticket(s, actor, cmd, unclaimed=True)
            change = await self._apply(s, await svc.claim(s, actor, ticket))
            key = "reply.claimed" if change.changed else "reply.claimed_again"
            return _Reply([t(key, number=ticket.number)])
        if name == "transfer":
            ticket = await self._target_ticket(s, actor, cmd)
            team = self._team_named(cmd.arg)
            if team is not None:
                await self._apply(s, await svc.transfer_team(s, actor, ticket, team.id))
                return _Reply([t("reply.transferred_team", number=ticket.number, team=team.name)])
            target = await self._transfer_target(s, event, cmd)
            change = await self._apply(s, await svc.transfer(s, actor, ticket, target))
            return _Reply([t("reply.transferred", number=ticket.number, name=target.name)])
        if name == "escalate":
            ticket = await self._target_ticket(s, actor, cmd)
            await self._apply(s, await svc.escalate(s, actor, ticket, cmd.arg or None))
            return _Reply([] if actor.person.id == ticket.reporter_id else
                          [t("reply.escalated", number=ticket.number)])
        if name == "ack":
            ticket = await self._target_ticket(s, actor, cmd)
            await self._apply(s, await svc.acknowledge(s, actor, ticket))
            return _Reply([t("reply.acknowledged", number=ticket.number)])
        if name in st.STAGES:
            ticket = await self._target_ticket(s, actor, cmd)
            change = await self._apply(s, await svc.stage(s, actor, ticket, name, cmd.arg or None))
            if change.action == "verify_submitted":
                return _Reply([t("reply.verify_submitted", number=ticket.number)])
            return _Reply([t(f"reply.stage.{name}", number=ticket.number)] if change.changed else
                          [t("reply.already", number=ticket.number, state=t(f"state.{ticket.state}"))])
        if name == "rate":
            if cmd.stars is None:
                raise Refused("bad_rating")
            ticket = await self._target_ticket(s, actor, cmd)
            comment = re.sub(r"^\s*[1-5一二两三四五]\s*(?:星|分)?", "", cmd.arg).strip() or None
            await self._apply(s, await svc.rate(s, actor, ticket, cmd.stars, comment))
            return _Reply([])
        if name in ("cancel", "reopen"):
            ticket = await self._target_ticket(s, actor, cmd)
            fn = svc.cancel if name == "cancel" else svc.reopen
            await self._apply(s, await fn(s, actor, ticket, cmd.arg or None))
            return _Reply([] if actor.person.id == ticket.reporter_id else
                          [t(f"reply.{name}", number=ticket.number)])
        if name == "split":
            ticket = await self._target_ticket(s, actor, cmd)
            index = re.match(r"\s*(\d+)", cmd.arg)
            created, change = await svc.split(s, actor, ticket, int(index.group(1)) if index else None)
            await self._apply(s, created)
            await self._apply(s, change)
            reporter = created.actor.person.name
            return _Reply([t("notify.staff.split", name=reporter, number=ticket.number,
                             new_number=created.ticket.number)])
        if name == "unfreeze":
            ticket = await svc.by_number(s, cmd.number) if cmd.number else None
            if ticket is None:
                raise Refused("unfreeze_which_ticket")
            change = await self._apply(s, await svc.unfreeze(s, actor, ticket, cmd.arg))
            return _Reply([t("reply.unfrozen", number=ticket.number, system=change.detail["decision"].upper(),
                             state=t(f"state.{ticket.state}"))])
        if name in ("note", "addition"):
            if not cmd.arg:
                raise Refused("empty_note")
            ticket = await self._target_ticket(s, actor, cmd)
            await self._apply(s, await svc.note(s, actor, ticket, cmd.arg))
            return _Reply([t("reply.noted", number=ticket.number)])
        raise Refused("customer_command", command=event.text.strip()[:20])

    async def _progress_ticket(self, s: AsyncSession, actor: Actor, cmd: Command) -> Ticket:
        if cmd.number:
            ticket = await self.service.by_number(s, cmd.number, lock=False)
            if not is_staff(actor.person) and ticket.reporter_id != actor.person.id:
                raise Refused("not_your_ticket", number=ticket.number)
            return ticket
        tickets = await self.service.open_tickets_of(s, actor.person)
        if not tickets:
            raise Refused("no_open_ticket")
        return tickets[0]

    async def _progress_text(self, s: AsyncSession, ticket: Ticket) -> str:
        v = await self.notifier.view(s, ticket)
        if v.owned:
            engineer = t("reply.progress_engineer", name=v.assignee_name)
        elif v.assignee_name and ticket.state in st.UNCLAIMED:
            engineer = t("reply.progress_suggested", name=v.assignee_name)
        else:
            engineer = t("reply.progress_engineer", name=t("reply.nobody_yet"))
        return t("reply.progress", number=ticket.number, state=t(f"state.{ticket.state}"),
                 category=v.category_name, engineer=engineer,
                 respond_by=v.respond_by, resolve_by=v.resolve_by)

    def _team_named(self, text: str):
        """A team written as the transfer target (转交 维修二组), by name or id."""
        name = re.sub(r"[@＠\s]", "", text)
        return next((tm for tm in self.config.teams if name and name in (tm.name, tm.id)), None)

    async def _report_for(self, s: AsyncSession, actor: Actor, event: InboundEvent, text: str) -> _Reply:
        """A staff member's 报修: for the customer it names (who then hears everything), else their own."""
        try:
            customer, text = await named_customer(s, self.directory, event, actor.person, text)
        except UnknownCustomer as u:
            raise Refused("unknown_customer", name=u.name) from None
        if not text:
            raise Refused("empty_report")
        if customer is None:  # their own ticket: its updates go to their own chat, not the group
            to = await customer_conversation(s, self.directory, actor.person, event, actor.person)
            change = await self._apply(s, await self.service.report(s, actor, text, to))
            return _Reply([], toast=change.ticket.number)
        to = await customer_conversation(s, self.directory, customer, event, actor.person)
        change = await self._apply(s, await self.service.report(s, actor, text, to, customer=customer))
        return _Reply([t("reply.reported_for", number=change.ticket.number, name=customer.name)],
                      toast=change.ticket.number)

    async def _transfer_target(self, s: AsyncSession, event: InboundEvent, cmd: Command) -> Person:
        """The person named; the service refuses who may not take it (and says why)."""
        for ext in event.mentions:
            p = await self.directory.known(s, event.platform, ext)
            if p is not None:
                return p
        p = await self.directory.find_by_name(s, cmd.arg, any_role=True)
        if p is None:
            raise Refused("transfer_who")
        return p

    async def _image(self, s: AsyncSession, actor: Actor, event: InboundEvent) -> _Reply:
        tickets = await self.service.open_tickets_of(s, actor.person)
        if not tickets or not event.image_ref:
            raise Refused("photo_no_ticket")
        ticket = await self.service.get(s, tickets[0].id)
        change = await self._apply(s, await self.service.photo(s, actor, ticket, event.image_ref))
        if not is_staff(actor.person):
            return _Reply([t("reply.photo_attached", number=ticket.number)])
        return _Reply([await self._photo_text(s, ticket, change)])

    async def _photo_text(self, s: AsyncSession, ticket: Ticket, change: Change) -> str:
        """For the engineer: does it count, and how many more 完工 needs."""
        if not change.detail.get("counts"):
            return t("reply.photo_not_counted", number=ticket.number)
        need = evidence.required_photos(self.config, ticket)
        have = sum(p.counts for p in await evidence.photos(s, ticket))
        if have >= need:
            return t("reply.photo_enough", number=ticket.number, have=have)
        return t("reply.photo_counted", number=ticket.number, have=have, more=need - have)

    async def _click(self, s: AsyncSession, actor: Actor, event: InboundEvent) -> _Reply:
        action = await s.get(CardAction, event.action_token) if event.action_token else None
        if action is None:
            raise Refused("stale_button")
        ticket = await self.service.get(s, action.ticket_id)
        svc = self.service
        name = action.action
        if name == "claim":
            change = await svc.claim(s, actor, ticket)
        elif name == "transfer":
            if not is_staff(actor.person):
                raise Refused("staff_only")
            await svc.require_owner_or_lead(s, actor, ticket, allow_unclaimed_staff=True)
            card = await self.notifier.transfer_card(s, ticket, exclude=ticket.assignee_id)
            dm = await self.directory.direct_address(s, actor.person.id, prefer=event.platform)
            enqueue(s, dm or event.conversation, CardMessage(card), ticket.id)
            return _Reply([], toast=t("toast.pick_transfer"))
        elif name.startswith("transfer:"):
            target = await s.get(Person, name.split(":", 1)[1])
            if target is None:
                raise Refused("transfer_who")
            change = await svc.transfer(s, actor, ticket, target)
        elif name == "escalate":
            change = await svc.escalate(s, actor, ticket)
        elif name == "ack":
            change = await svc.acknowledge(s, actor, ticket)
        elif name in st.STAGES:
            change = await svc.stage(s, actor, ticket, name)
        elif name.startswith("rate:"):
            change = await svc.rate(s, actor, ticket, int(name.split(":", 1)[1]))
        else:
            raise Refused("stale_button")
        await self._apply(s, change)
        key = f"toast.{change.action}" if change.changed else "toast.already"
        return _Reply([], toast=t(key, number=ticket.number, state=t(f"state.{ticket.state}")),
                      outcome="done" if change.changed else "unchanged")
