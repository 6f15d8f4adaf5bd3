"""HTTP routes of the console and the tracking page; each checks its signed link first.

    GET /console?t=<token>[&team=&priority=&state=&overdue=1]   open tickets
    GET /console/ticket/{number}?t=<token>                      timeline, audit trail, photos
    GET /console/charts?t=<token>                               yesterday's report and last month's heat map
    GET /track/{token}                                          a customer's page of one ticket
    GET /console/console.css                                    the pages' style sheet

A console link is made for one staff member (`看板`, valid `[reports] link_ttl`);
a tracking link for one ticket (in the customer's receipt). Anything else, a
changed character, or an expired link, gets a 403 page saying so.
"""
from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlmodel import select

from bot.channels.playground.model import MEDIA_PREFIX
from bot.config import Config
from bot.core import states as st
from bot.core.directory import is_staff
from bot.core.notify import Notifier
from bot.core.numbers import parse_number
from bot.core.service import TicketService
from bot.texts import t
from cards import build
from console import pages
from console.links import CONSOLE, TRACK, Grant, LinkRefused, Links
from reports.build import daily_report, monthly_heat_map
from reports.load import out_dir
from storage.db import Database
from storage.models import Attachment, Person, Ticket, TicketEvent

CSS_FILE = Path(__file__).with_name("console.css")
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": ("default-src 'none'; img-src 'self' data:; style-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_ROWS = 500


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, content_type="text/html", charset="utf-8", status=status, headers=_HEADERS)


class Console:
    def __init__(self, config: Config, db: Database, links: Links, service: TicketService, notifier: Notifier):
        self.config = config
        self.db = db
        self.links = links
        self.service = service
        self.notifier = notifier

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.tickets),
            web.get("/console/ticket/{number}", self.ticket),
            web.get("/console/charts", self.charts),
            web.get("/console/console.css", self.css),
            web.get("/track/{token}", self.track),
        ]

    # ---- access ------------------------------------------------------------

    async def _viewer(self, request: web.Request) -> tuple[Grant, Person]:
        grant = self.links.check(CONSOLE, request.query.get("t", ""))
        async with self.db.session() as s:
            person = await s.get(Person, grant.subject)
        if person is None or not person.active or not is_staff(person):
            raise LinkRefused("forged")  # signed for somebody who may no longer look
        return grant, person

    def _until(self, grant: Grant) -> str:
        return self.service.local(grant.expires, with_date=True)

    # ---- pages -------------------------------------------------------------

    async def css(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(CSS_FILE, headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    async def tickets(self, request: web.Request) -> web.Response:
        try:
            grant, person = await self._viewer(request)
        except LinkRefused as e:
            return _html(pages.refused_page(e.reason), 403)
        q = request.query
        f = pages.Filters(q.get("team", ""), q.get("priority", ""), q.get("state", ""), q.get("overdue") == "1")
        teams = [(tc.id, tc.name) for tc in self.config.teams]
        open_states = [s for s in st.ALL if s in st.OPEN]
        bad = ((f.team and f.team not in {tid for tid, _ in teams}) or (f.priority and f.priority not in ("P0", "P1", "P2"))
               or (f.state and f.state not in open_states))
        if bad:
            return _html(pages.refused_page("filter"), 400)
        now = self.service.clock()
        stmt = select(Ticket).where(Ticket.state.in_(st.OPEN))
        if f.team:
            stmt = stmt.where(Ticket.team == f.team)
        if f.priority:
            stmt = stmt.where(Ticket.priority == f.priority)
        if f.state:
            stmt = stmt.where(Ticket.state == f.state)
        async with self.db.session() as s:
            tickets = list((await s.exec(stmt.order_by(Ticket.created_at, Ticket.id).limit(MAX_ROWS))).all())
            names = dict((await s.exec(select(Person.id, Person.name))).all())
        team_names = dict(teams)
        rows = []
        for tk in tickets:
            due = tk.respond_by if tk.state in st.UNCLAIMED else tk.resolve_by
            overdue = due < now
            if f.overdue and not overdue:
                continue
            owner = names.get(tk.assignee_id, "") if tk.assignee_id and tk.state not in st.UNCLAIMED else ""
            rows.append(pages.Row(tk.number, tk.priority, t(f"state.{tk.state}"), tk.category_name,
                                  team_names.get(tk.team or "", tk.team or ""), owner or t("reply.nobody_yet"),
                                  self.service.local(tk.created_at, with_date=True),
                                  self.service.local(due, with_date=True), overdue))
        states = [(s_, t(f"state.{s_}")) for s_ in open_states]
        return _html(pages.tickets_page(request.query["t"], person.name, self._until(grant), rows, f, teams, states))

    async def ticket(self, request: web.Request) -> web.Response:
        try:
            grant, person = await self._viewer(request)
        except LinkRefused as e:
            return _html(pages.refused_page(e.reason), 403)
        parsed = parse_number(request.match_info["number"])
        if parsed is None:
            return _html(pages.not_found_page(), 404)
        async with self.db.session() as s:
            ticket = (await s.exec(select(Ticket).where(Ticket.number == parsed.number))).first()
            if ticket is None:
                return _html(pages.not_found_page(), 404)
            card = build.status_card(await self.notifier.view(s, ticket))
            events = (await s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                                   .order_by(TicketEvent.at, TicketEvent.id))).all()
            photos = (await s.exec(select(Attachment).where(Attachment.ticket_id == ticket.id)
                                   .order_by(Attachment.id))).all()
        audit = [pages.AuditRow(self.service.local(e.at, with_date=True), e.actor_name, _action(e.action), e.channel,
                                t(f"console.via_{e.detail.get('via', 'text')}") if e.detail.get("via", "text") in
                                ("text", "card", "phone", "api") else str(e.detail.get("via")),
                                _change(e.from_state, e.to_state), _detail(e.detail))
                 for e in events]
        srcs = [src for a in photos if (src := _photo_url(a))]
        return _html(pages.ticket_page(request.query["t"], person.name, self._until(grant), ticket.number,
                                       ticket.summary, card, audit, srcs))

    async def charts(self, request: web.Request) -> web.Response:
        try:
            grant, person = await self._viewer(request)
        except LinkRefused as e:
            return _html(pages.refused_page(e.reason), 403)
        today = self.service.clock().astimezone(self.service.tz).date()
        yesterday = today - timedelta(days=1)
        last_month = today.replace(day=1) - timedelta(days=1)
        folder = out_dir(self.config)
        out: list[tuple[str, str | None, str]] = []
        team = person.team if person.role == "lead" else None
        daily = await daily_report(self.config, self.db, yesterday, team, out=folder)
        out.append((t("reports.daily_title", team=daily.team_name, date=yesterday.isoformat()),
                    await _data_uri(daily.chart), daily.text))
        heat = await monthly_heat_map(self.config, self.db, last_month.year, last_month.month, out=folder)
        label = f"{last_month.year:04d}-{last_month.month:02d}"
        if heat is None:
            out.append((t("reports.heat_caption", month=label), None, t("reports.heat_empty", month=label)))
        else:
            out.append((t("reports.heat_caption", month=label), await _data_uri(heat.chart), heat.text))
        return _html(pages.charts_page(request.query["t"], person.name, self._until(grant), out))

    async def track(self, request: web.Request) -> web.Response:
        try:
            grant = self.links.check(TRACK, request.match_info["token"])
        except LinkRefused as e:
            return _html(pages.refused_page(e.reason), 403)
        async with self.db.session() as s:
            ticket = (await s.exec(select(Ticket).where(Ticket.number == grant.subject))).first()
            if ticket is None:
                return _html(pages.not_found_page(), 404)
            card = build.status_card(await self.notifier.view(s, ticket))
        return _html(pages.tracking_page(ticket.number, ticket.summary, card, self._until(grant)))


def _photo_url(a: Attachment) -> str | None:
    """Where this page can show a photo: the playground serves its own by file name;
    photos from IM platforms are shown when they carry an https URL."""
    if a.channel == "playground":
        return MEDIA_PREFIX + Path(a.media_ref).name
    url = a.url or a.media_ref
    return url if url.startswith("https://") else None


async def _data_uri(path: Path | None) -> str | None:
    if path is None:
        return None
    data = await asyncio.to_thread(path.read_bytes)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _action(action: str) -> str:
    key = f"console.action_{action}"
    try:
        return t(key)
    except KeyError:
        return action


def _change(before: str | None, after: str | None) -> str:
    if not after or before == after:
        return ""
    return f"{t(f'state.{before}') if before else ''} → {t(f'state.{after}')}"


def _detail(detail: dict[str, Any]) -> str:
    shown = {k: v for k, v in detail.items() if k != "via" and v not in (None, "", [], {})}
    return json.dumps(shown, ensure_ascii=False)[:300] if shown else ""
