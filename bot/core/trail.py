"""`记录 单号`: the audit trail for staff, the timeline for the customer.

Staff see every event: when, who, what, on which channel, by text, button or
phone, with what the event recorded (the photo's time source, the probe's
result, the note). The customer sees their ticket's milestones only.
"""
from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core.service import TicketService
from bot.texts import t
from storage.models import Ticket, TicketEvent

MAX_LINES = 40
# What a customer's timeline shows.
CUSTOMER_ACTIONS = ("report", "claim", "transfer", "depart", "arrive", "start_repair", "resolve", "rate",
                    "reopen", "cancel")


def _label(group: str, key: str | None) -> str:
    if not key:
        return ""
    try:
        return t(f"trail.{group}.{key}")
    except KeyError:  # an action or channel without a label yet: its id is still telling
        return key


def _extra(e: TicketEvent) -> str:
    d = e.detail or {}
    if e.action == "photo":
        return t("trail.extra.photo", source=_label("source", d.get("time_source")),
                 counts=t("trail.extra.counts" if d.get("counts") else "trail.extra.not_counted"))
    if e.action == "probe":
        result = d.get("status") if d.get("status") is not None else (d.get("error") or "")
        return t("trail.extra.probe_ok" if d.get("ok") else "trail.extra.probe_failed", result=result,
                 attempts=d.get("attempts", 1), url=d.get("url", ""))
    if e.action == "rate":
        return "★" * int(d.get("stars") or 0) + (f" {d['comment']}" if d.get("comment") else "")
    for key in ("note", "text", "reason"):
        if d.get(key):
            return str(d[key])[:60]
    return ""


async def _events(s: AsyncSession, ticket: Ticket) -> list[TicketEvent]:
    return list((await s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                              .order_by(TicketEvent.id))).all())


async def staff_trail(s: AsyncSession, service: TicketService, ticket: Ticket) -> str:
    events = await _events(s, ticket)
    lines = [t("trail.title", number=ticket.number, count=len(events))]
    for e in events[-MAX_LINES:]:
        via = (e.detail or {}).get("via", "text")
        extra = _extra(e)
        lines.append(t("trail.line", at=service.local(e.at, with_date=True), who=e.actor_name,
                       what=_label("action", e.action), channel=_label("channel", e.channel),
                       via=_label("via", via), extra=f"：{extra}" if extra else ""))
    return "\n".join(lines)


async def customer_timeline(s: AsyncSession, service: TicketService, ticket: Ticket) -> str:
    events = [e for e in await _events(s, ticket) if e.action in CUSTOMER_ACTIONS]
    lines = [t("trail.customer_title", number=ticket.number)]
    for e in events[-MAX_LINES:]:
        lines.append(t("trail.customer_line", at=service.local(e.at, with_date=True),
                       what=_label("customer", e.action)))
    return "\n".join(lines)
