"""The managers' chat commands: 统计, 我的统计, 团队工单, 热力图, 看板.

Each answer is read inside the command's own transaction (its session) and
returned as messages for the conversation the command came from.
"""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Callable

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from bot.core.board import team_board
from bot.core.directory import is_lead, is_staff
from bot.core.service import Refused, TicketService
from bot.events import Image, Outbound, Text
from bot.texts import t
from reports.build import monthly_heat_map, team_name
from reports.figures import Period, compute, day_period, month_period, week_period
from reports.load import load_dataset, out_dir, settings_from
from reports.text import duration, per_person_lines, percent, summary_text
from storage.models import Person

_PERIOD_WORDS = {"今天": "today", "今日": "today", "本周": "week", "这周": "week", "本月": "month", "这个月": "month"}
_MONTH = re.compile(r"(\d{4})\s*[-年/.]\s*(\d{1,2})\s*月?")


class ReportChat:
    def __init__(self, config: Config, service: TicketService,
                 console_link: Callable[[Person], str] | None = None):
        self.config = config
        self.service = service
        self.settings = settings_from(config)
        # Set when the web console runs: the signed link `看板` answers.
        self.console_link = console_link

    async def answer(self, s: AsyncSession, person: Person, name: str, arg: str) -> list[Outbound]:
        if name == "my_stats":
            if not is_staff(person):
                raise Refused("staff_only")
            return [Text(await self._my_stats(s, person, arg))]
        if not is_lead(person):
            raise Refused("leads_only_report", command=t(f"reports.command.{name}"))
        if name == "stats":
            return [Text(await self._stats(s, person, arg))]
        if name == "team_board":
            team = self._team(person, arg)
            return [Text(await team_board(s, self.service, team, team_name(self.config, team)))]
        if name == "heat_map":
            return await self._heat_map(s, arg)
        if name == "console":
            if self.console_link is None:
                return [Text(t("reports.console_unavailable"))]
            return [Text(t("reports.console_link", url=self.console_link(person),
                           hours=int(self.config.reports.link_ttl.total_seconds() // 3600)))]
        raise ValueError(name)

    # ---- helpers -----------------------------------------------------------

    def _period(self, arg: str, default: str) -> tuple[Period, str]:
        now = self.service.clock()
        today = now.astimezone(self.settings.tz).date()
        word = next((w for w in _PERIOD_WORDS if w in arg), None)
        kind = _PERIOD_WORDS[word] if word else default
        if kind == "today":
            period = day_period(today, self.settings.tz)
        elif kind == "week":
            period = week_period(today, self.settings.tz)
        else:
            period = month_period(today.year, today.month, self.settings.tz)
        # Up to now (and what happened this very second): a deadline later today is not missed yet.
        return replace(period, end=min(period.end, now + timedelta(seconds=1))), t(f"reports.stats_{kind}")

    def _team(self, person: Person, arg: str) -> str | None:
        """The team named in `arg` (name or id), else the lead's own team, else all teams."""
        words = re.sub("|".join(_PERIOD_WORDS), " ", arg).split()
        for word in words:
            team = next((tc for tc in self.config.teams if word in (tc.id, tc.name)), None)
            if team is None:
                names = "、".join(tc.name for tc in self.config.teams) or "—"
                raise Refused("unknown_team", name=word, teams=names)
            return team.id
        return person.team if person.role == "lead" else None

    async def _stats(self, s: AsyncSession, person: Person, arg: str) -> str:
        period, label = self._period(arg, "today")
        team = self._team(person, arg)
        figures = compute(await load_dataset(s, period.start, period.end), period, self.settings, team)
        title = t("reports.stats_title", scope=team_name(self.config, team), period=label)
        lines = [summary_text(title, figures, None)]
        people = per_person_lines(figures)
        if people:
            lines += [t("reports.per_person_title"), *people]
        return "\n".join(lines)

    async def _my_stats(self, s: AsyncSession, person: Person, arg: str) -> str:
        period, label = self._period(arg, "month")
        figures = compute(await load_dataset(s, period.start, period.end), period, self.settings)
        mine = next((p for p in figures["per_person"] if p["person_id"] == person.id), None)
        lines = [t("reports.mine_title", name=person.name, period=label)]
        if mine is None:
            lines.append(t("reports.mine_nothing"))
            return "\n".join(lines)
        none = t("reports.none")
        lines.append(t("reports.mine_line", claimed=mine["claimed"], resolved=mine["resolved"],
                       mtta=duration(mine["mtta_s"]), fsr=percent(mine["fsr"]),
                       rating=none if mine["rating_avg"] is None else f"{mine['rating_avg']:.1f}"))
        i = mine["interruptions"]
        lines.append(t("reports.mine_interruptions", total=sum(i.values()), **i))
        return "\n".join(lines)

    async def _heat_map(self, s: AsyncSession, arg: str) -> list[Outbound]:
        m = _MONTH.search(arg)
        if m:
            year, month = int(m.group(1)), int(m.group(2))
            if not 1 <= month <= 12:
                raise Refused("bad_month", month=m.group(0))
        elif arg.strip():
            raise Refused("bad_month", month=arg.strip()[:20])
        else:
            today = self.service.clock().astimezone(self.settings.tz).date()
            last = today.replace(day=1) - timedelta(days=1)
            year, month = last.year, last.month
        heat = await monthly_heat_map(self.config, s, year, month, out=out_dir(self.config))
        label = f"{year:04d}-{month:02d}"
        if heat is None:
            return [Text(t("reports.heat_empty", month=label))]
        out: list[Outbound] = [Text(heat.text)]
        if heat.chart is not None:
            out.append(Image(str(heat.chart), t("reports.heat_caption", month=label)))
        return out
