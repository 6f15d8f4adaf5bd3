"""Read what the figures need from the database, and the settings from the config."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from bot.core import states as st
from reports.figures import Dataset, FollowUp as FollowUpRow, Hours, Page, Settings
from storage.db import Database
from storage.models import FollowUp, Person, PhoneCall, Ticket, TicketEvent

# Calls and SMS that never reached a phone woke nobody.
_NOT_PAGED = frozenset({"throttled", "failed"})
# States in which a ticket may sit unchanged for long: still in the backlog.
_MAY_BE_STALE = st.OPEN | {st.RESOLVED}


def settings_from(config: Config) -> Settings:
    rc = config.reports
    sleep_start, sleep_end = rc.span("sleep_hours")
    work_start, work_end = rc.span("business_hours")
    hours = Hours(sleep_start, sleep_end, work_start, work_end, frozenset(d - 1 for d in rc.business_days))
    deadlines = {p: (d.respond, d.resolve) for p, d in config.tickets.deadlines.items()}
    return Settings(ZoneInfo(config.tickets.timezone), deadlines, hours, rc.low_rating)


def out_dir(config: Config) -> Path:
    """Where chart images are written."""
    if config.reports.out_dir:
        return Path(config.reports.out_dir)
    return Path(os.environ.get("RELAYDESK_DATA_DIR") or "data") / "reports"


async def load_dataset(src: Database | AsyncSession, start: datetime, end: datetime) -> Dataset:
    """Tickets with anything to say about [start, end), their events before `end`,
    the phone pages in the span, and everybody's names.

    `src` is the database, or a session already open (chat commands read inside
    their own transaction: sessions must not be nested).
    """
    if isinstance(src, Database):
        async with src.session() as s:
            return await load_dataset(s, start, end)
    s = src
    tickets = list((await s.exec(
        select(Ticket).where(Ticket.created_at < end,
                             (Ticket.updated_at >= start) | Ticket.state.in_(_MAY_BE_STALE))
    )).all())
    ids = [tk.id for tk in tickets]
    events: list[TicketEvent] = []
    for i in range(0, len(ids), 500):  # bounded IN lists
        chunk = ids[i:i + 500]
        events += (await s.exec(
            select(TicketEvent).where(TicketEvent.ticket_id.in_(chunk), TicketEvent.at < end)
            .order_by(TicketEvent.at, TicketEvent.id)
        )).all()
    calls = (await s.exec(
        select(PhoneCall.person_id, PhoneCall.created_at, PhoneCall.status)
        .where(PhoneCall.created_at >= start, PhoneCall.created_at < end)
    )).all()
    names = {pid: name for pid, name in (await s.exec(select(Person.id, Person.name))).all()}
    pages = [Page(pid, at) for pid, at, status in calls if status not in _NOT_PAGED]
    # Follow-ups open at some point before `end` (opened before it, not closed before `start`).
    fus = (await s.exec(select(FollowUp).where(FollowUp.opened_at < end,
                                               (FollowUp.closed_at.is_(None)) | (FollowUp.closed_at >= start)))).all()
    follow_ups = [FollowUpRow(f.team, f.opened_at, f.due_at, f.closed_at) for f in fus]
    return Dataset(tickets, events, pages, names, follow_ups)
