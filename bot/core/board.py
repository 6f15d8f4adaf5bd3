"""Boards of open tickets with their red flags: `我的工单` and a lead's `团队工单`.

The three red flags of the published board:
- countdown: the ticket's current deadline (response while unclaimed, repair
  after) is less than 15 minutes away, or already past;
- backlog: one person holds more than 5 open tickets reported today;
- hand-off: the ticket came from another team more than 2 hours ago and is
  still open.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core import followup, states as st
from bot.core.directory import is_staff
from bot.core.service import TicketService
from bot.texts import t
from storage.models import Person, Ticket, TicketEvent

COUNTDOWN = timedelta(minutes=15)
BACKLOG_TODAY = 5
HANDOFF = timedelta(hours=2)
BOARD_LINES = 10


@dataclass(frozen=True)
class Flags:
    minutes_left: int
    handoff_hours: float | None  # hours since a cross-team hand-off still open, when over the limit

    @property
    def countdown(self) -> bool:
        return self.minutes_left < COUNTDOWN.total_seconds() / 60

    @property
    def red(self) -> bool:
        return self.countdown or self.handoff_hours is not None


async def ticket_flags(s: AsyncSession, tickets: list[Ticket], now: datetime) -> dict[int, Flags]:
    """Each ticket's countdown and cross-team hand-off flag."""
    handoffs = await _cross_team_handoffs(s, [tk.id for tk in tickets])
    out = {}
    for tk in tickets:
        due = tk.respond_by if tk.state in st.UNCLAIMED else tk.resolve_by
        minutes = int((due - now).total_seconds() // 60)
        since = handoffs.get(tk.id)
        hours = (now - since).total_seconds() / 3600 if since is not None and now - since > HANDOFF else None
        out[tk.id] = Flags(minutes, hours)
    return out


async def _cross_team_handoffs(s: AsyncSession, ids: list[int]) -> dict[int, datetime]:
    """Ticket id -> time of its latest transfer, when that transfer crossed teams."""
    if not ids:
        return {}
    rows = (await s.exec(select(TicketEvent).where(TicketEvent.ticket_id.in_(ids), TicketEvent.action == "transfer")
                         .order_by(TicketEvent.at, TicketEvent.id))).all()
    latest = {e.ticket_id: e for e in rows}
    people = {e.detail.get(k) for e in latest.values() for k in ("from", "to")} - {None}
    teams = dict((await s.exec(select(Person.id, Person.team).where(Person.id.in_(people)))).all()) if people else {}
    out = {}
    for tid, e in latest.items():
        src = e.detail.get("from_team") or teams.get(e.detail.get("from")) or teams.get(e.actor_id)
        dst = e.detail.get("to_team") or teams.get(e.detail.get("to"))
        if src and dst and src != dst:
            out[tid] = e.at
    return out


def _today_count(tickets: list[Ticket], service: TicketService, now: datetime) -> int:
    today = now.astimezone(service.tz).date()
    return sum(1 for tk in tickets if tk.created_at.astimezone(service.tz).date() == today)


def _line(service: TicketService, tk: Ticket, f: Flags, owner: str | None = None) -> str:
    due = (t("reply.board_overdue", minutes=-f.minutes_left) if f.minutes_left < 0
           else t("reply.board_left", minutes=f.minutes_left))
    extra = []
    if f.handoff_hours is not None:
        extra.append(t("reply.board_handoff", hours=f"{f.handoff_hours:.1f}".rstrip("0").rstrip(".")))
    if owner:
        extra.append(owner)
    line = t("reply.board_line", priority=tk.priority, number=tk.number, state=t(f"state.{tk.state}"),
             category=tk.category_name, due=due, red="🔴" if f.red else "")
    return line + "".join(t("reply.board_extra", text=x) for x in extra)


async def my_board(s: AsyncSession, service: TicketService, person: Person) -> str:
    """`我的工单` with its red flags and open follow-ups (staff), or a customer's open tickets."""
    tickets = await service.open_tickets_of(s, person)
    followups = await followup.open_for(s, person) if is_staff(person) else []
    if not tickets and not followups:
        return t("reply.board_empty")
    now = service.clock()
    flags = await ticket_flags(s, tickets, now)
    lines = [t("reply.board_title", count=len(tickets))] if tickets else []
    today = _today_count(tickets, service, now)
    if today > BACKLOG_TODAY and is_staff(person):
        lines.append(t("reply.board_backlog", count=today, limit=BACKLOG_TODAY))
    if followups:
        lines.append(t("reply.board_followups", count=len(followups)))
    for fu, tk in followups:
        minutes = int((fu.due_at - now).total_seconds() // 60)
        due = t("reply.board_overdue", minutes=-minutes) if minutes < 0 else \
            t("reply.board_left_hours", hours=minutes // 60, minutes=minutes % 60)
        lines.append(t("reply.board_followup_line", number=tk.number, stars="★" * fu.stars,
                       comment=fu.comment or t("reply.no_comment"), due=due))
    lines += [_line(service, tk, flags[tk.id]) for tk in tickets[:BOARD_LINES]]
    return "\n".join(lines)


async def team_board(s: AsyncSession, service: TicketService, team_id: str | None, team_name: str) -> str:
    """A lead's board: the team's open tickets, red ones first, with their owner."""
    q = select(Ticket).where(Ticket.state.in_(st.OPEN))
    if team_id is not None:
        q = q.where(Ticket.team == team_id)
    tickets = list((await s.exec(q.order_by(Ticket.created_at, Ticket.id).limit(200))).all())
    if not tickets:
        return t("reply.team_board_empty", team=team_name)
    now = service.clock()
    flags = await ticket_flags(s, tickets, now)
    owners = {tk.assignee_id for tk in tickets if tk.assignee_id and tk.state not in st.UNCLAIMED}
    names = dict((await s.exec(select(Person.id, Person.name).where(Person.id.in_(owners)))).all()) if owners else {}
    tickets.sort(key=lambda tk: (not flags[tk.id].red, flags[tk.id].minutes_left))
    red = sum(1 for tk in tickets if flags[tk.id].red)
    lines = [t("reply.team_board_title", team=team_name, count=len(tickets), red=red)]
    for pid in sorted(owners, key=lambda p: names.get(p, p)):
        held = [tk for tk in tickets if tk.assignee_id == pid and tk.state not in st.UNCLAIMED]
        today = _today_count(held, service, now)
        if today > BACKLOG_TODAY:
            lines.append(t("reply.team_board_backlog", name=names.get(pid, pid), count=today, limit=BACKLOG_TODAY))
    for tk in tickets[:BOARD_LINES * 2]:
        owner = (names.get(tk.assignee_id) if tk.assignee_id and tk.state not in st.UNCLAIMED
                 else t("reply.nobody_yet"))
        lines.append(_line(service, tk, flags[tk.id], owner))
    if len(tickets) > BOARD_LINES * 2:
        lines.append(t("reply.team_board_more", more=len(tickets) - BOARD_LINES * 2))
    return "\n".join(lines)
