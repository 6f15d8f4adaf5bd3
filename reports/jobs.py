"""The scheduled reports: the daily health report and the monthly heat map.

Every process ticks once a minute (through the escalation scheduler's periodic
jobs, so one process per minute does the work). A report is due once the local
time has passed `daily_at` (`monthly_at` on the 1st); each destination gets it
once per day (month), claimed under the same per-period job lock the
escalation jobs use, keyed by the day and the destination. After downtime only
the latest report is sent: yesterday's, never the days missed before it.

Destinations per team: the managers' groups in `[reports.groups.<team>]` on the
channels that run, and the team lead's chat on the playground (its lead pane).
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from bot.config import Config, TeamConfig
from bot.events import Address, Image, Text
from bot.outbox import enqueue
from bot.texts import t
from escalation.config import parse_hhmm
from escalation.jobs import run_once_per_period
from reports.build import DailyReport, HeatMap, daily_report, monthly_heat_map
from reports.load import out_dir, settings_from

if TYPE_CHECKING:  # pragma: no cover
    from bot.core.directory import Directory
    from escalation.engine import EscalationEngine
    from escalation.jobs import Jobs

log = logging.getLogger(__name__)

TICK = timedelta(minutes=1)
FIRST_TICK = timedelta(seconds=60)
PLAYGROUND = "playground"


class ReportJobs:
    def __init__(self, config: Config, directory: "Directory", engine: "EscalationEngine",
                 on_commit: Callable[[], None] | None = None, out: Path | None = None):
        self.config = config
        self.directory = directory
        self.engine = engine
        self.db = engine.db
        self.on_commit = on_commit or (lambda: None)
        self.out = out or out_dir(config)
        self.tz = settings_from(config).tz

    def start(self, jobs: "Jobs") -> None:
        # The first tick a minute after start-up: drawing charts then would compete for
        # the CPU with the escalation sweep catching up on steps due while the bot was down.
        if self.config.reports.enabled:
            jobs.add_periodic("reports-tick", TICK, self.tick, first=datetime.now(timezone.utc) + FIRST_TICK)

    # ---- the tick ----------------------------------------------------------

    async def tick(self) -> int:
        """Send what is due now; how many (report, destination) pairs this call sent."""
        now = self.engine.clock().astimezone(self.tz)
        sent = 0
        rc = self.config.reports
        if now.time() >= parse_hhmm(rc.daily_at):
            sent += await self.send_daily(now.date() - timedelta(days=1))
        if now.day == 1 and now.time() >= parse_hhmm(rc.monthly_at):
            last = now.date() - timedelta(days=1)
            sent += await self.send_heat_map(last.year, last.month)
        return sent

    async def send_daily(self, day: date) -> int:
        sent = 0
        for team in self.config.teams:
            cache: list[DailyReport] = []

            async def report(team: TeamConfig = team, cache: list[DailyReport] = cache) -> DailyReport:
                if not cache:
                    cache.append(await daily_report(self.config, self.db, day, team.id, out=self.out))
                return cache[0]

            for to in await self.destinations(team):
                sent += await self._once(f"report-daily:{day.isoformat()}:{team.id}:{_key(to)}",
                                         lambda to=to, report=report: self._deliver_daily(to, report))
        return sent

    async def send_heat_map(self, year: int, month: int) -> int:
        label = f"{year:04d}-{month:02d}"
        cache: list[HeatMap | None] = []

        async def heat() -> HeatMap | None:
            if not cache:
                cache.append(await monthly_heat_map(self.config, self.db, year, month, out=self.out))
            return cache[0]

        sent = 0
        seen: set[Address] = set()
        for team in self.config.teams:
            for to in await self.destinations(team):
                if to in seen:
                    continue
                seen.add(to)
                sent += await self._once(f"report-heatmap:{label}:{_key(to)}",
                                         lambda to=to: self._deliver_heat(to, label, heat))
        return sent

    async def _once(self, name: str, fn: Callable[[], Awaitable[None]]) -> int:
        # The period only has to outlast the day: the name carries the date.
        return int(await run_once_per_period(self.engine, name, timedelta(days=400), fn))

    # ---- destinations and delivery -----------------------------------------

    async def destinations(self, team: TeamConfig) -> list[Address]:
        channels = self.directory.channels
        out = [Address(ch, "group", chat) for ch, chat in self.config.reports.groups.get(team.id, {}).items()
               if ch in channels]
        if PLAYGROUND in channels and team.lead:
            async with self.db.session() as s:
                ids = await self.directory.identities(s, team.lead)
            if PLAYGROUND in ids:
                out.append(Address(PLAYGROUND, "user", ids[PLAYGROUND]))
        return out

    async def _deliver_daily(self, to: Address, report: Callable[[], Awaitable[DailyReport]]) -> None:
        r = await report()
        async with self.db.session() as s:
            enqueue(s, to, Text(r.text))
            if r.chart is not None:
                enqueue(s, to, Image(str(r.chart), t("reports.chart_caption", team=r.team_name,
                                                      date=r.day.isoformat())))
        self.on_commit()

    async def _deliver_heat(self, to: Address, label: str, heat: Callable[[], Awaitable[HeatMap | None]]) -> None:
        h = await heat()
        async with self.db.session() as s:
            if h is None:
                enqueue(s, to, Text(t("reports.heat_empty", month=label)))
            else:
                enqueue(s, to, Text(h.text))
                if h.chart is not None:
                    enqueue(s, to, Image(str(h.chart), t("reports.heat_caption", month=label)))
        self.on_commit()


def _key(to: Address) -> str:
    return f"{to.channel}:{to.kind}:{to.id}"

