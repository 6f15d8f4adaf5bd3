"""The service report of a ticket: a JSON document for other systems and a
one-page PDF for finance (api/report_pdf.py draws it)."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Optional

from pydantic import BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.models import PersonRef
from api.operations import API
from api.spec import Context, Reply
from api.tickets import ticket_by_number
from bot.texts import t
from storage.models import Attachment, Person, Ticket, TicketEvent

# A part named in a note or the resolution: "更换轴承 2 个", "备件：密封圈", "换了 PLC 电源模块".
_PART = re.compile(r"(?:更换|换了|换上|备件|配件|零件)[:：\s]*([^，,。；;\n]+)")


class ReportItem(BaseModel):
    at: datetime
    action: str
    action_name: str
    by: str
    text: Optional[str] = None


class ServiceReport(BaseModel):
    """What was done for a ticket, by whom and when."""

    number: str
    state: str
    category_name: str
    priority: str
    summary: str
    location: Optional[str] = None
    serial: Optional[str] = None
    reporter: PersonRef
    engineer: Optional[PersonRef] = None
    created_at: datetime
    claimed_at: Optional[datetime] = None
    resolved_at: Optional[datetime] = None
    closed_at: Optional[datetime] = None
    response_minutes: Optional[int] = Field(default=None, description="report to claim")
    repair_minutes: Optional[int] = Field(default=None, description="claim to resolution")
    resolution: Optional[str] = None
    items: list[ReportItem] = Field(description="the work log: stages and notes, oldest first")
    parts: list[str] = Field(description="parts named in notes and the resolution")
    photos: list[str] = Field(description="ids of the photos attached to the ticket")
    rating: Optional[int] = None


_ACTIONS_SHOWN = {"report", "claim", "transfer", "depart", "arrive", "start_repair", "resolve", "note", "photo",
                  "rate", "reopen", "cancel", "unfreeze"}


def _action_name(action: str) -> str:
    names = {"report": "报修", "note": "备注", "photo": "照片", "reopen": "重开", "cancel": "取消",
             "transfer": "转交", "unfreeze": "解冻"}
    return names.get(action) or t(f"timeline.{action}")


def _minutes(a: datetime | None, b: datetime | None) -> int | None:
    return int((b - a).total_seconds() // 60) if a and b else None


async def service_report(s: AsyncSession, ticket: Ticket) -> ServiceReport:
    events = (await s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                           .order_by(TicketEvent.id))).all()
    photos = (await s.exec(select(Attachment.media_ref).where(Attachment.ticket_id == ticket.id)
                           .order_by(Attachment.id))).all()
    reporter = await s.get(Person, ticket.reporter_id)
    engineer = await s.get(Person, ticket.assignee_id) if ticket.assignee_id else None
    items, texts = [], []
    for e in events:
        if e.action not in _ACTIONS_SHOWN:
            continue
        text = e.detail.get("text") or e.detail.get("note") or e.detail.get("reason") or None
        if e.action == "report":
            text = ticket.summary
        if e.action in ("note", "resolve") and text:
            texts.append(text)
        items.append(ReportItem(at=e.at, action=e.action, action_name=_action_name(e.action), by=e.actor_name,
                                text=text))
    if ticket.resolution and ticket.resolution not in texts:
        texts.append(ticket.resolution)
    parts = list(dict.fromkeys(p.strip() for text in texts for p in _PART.findall(text) if p.strip()))
    return ServiceReport(
        number=ticket.number, state=ticket.state, category_name=ticket.category_name, priority=ticket.priority,
        summary=ticket.summary, location=ticket.location, serial=ticket.serial,
        reporter=PersonRef(id=ticket.reporter_id, name=reporter.name if reporter else ticket.reporter_id),
        engineer=PersonRef(id=engineer.id, name=engineer.name) if engineer else None,
        created_at=ticket.created_at, claimed_at=ticket.claimed_at, resolved_at=ticket.resolved_at,
        closed_at=ticket.closed_at, response_minutes=_minutes(ticket.created_at, ticket.claimed_at),
        repair_minutes=_minutes(ticket.claimed_at, ticket.resolved_at), resolution=ticket.resolution,
        items=items, parts=parts, photos=list(photos), rating=ticket.rating,
    )


@API.route("GET", "/tickets/{number}/report", summary="The service report (JSON)", scope="tickets:read",
           tag="reports", responses={200: ServiceReport}, problems=("not-found",))
async def ticket_report(ctx: Context) -> Reply:
    """Available at any time; complete once the ticket is resolved (also sent with the ticket.resolve webhook)."""
    ticket = await ticket_by_number(ctx, ctx.path["number"], lock=False)
    return Reply(200, await service_report(ctx.s, ticket))

