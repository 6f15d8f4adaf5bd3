"""Whole reports: figures from the database, their text and their chart image."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.texts import t
from reports import charts
from reports.figures import compute, day_period, heat_map, month_period
from reports.load import load_dataset, settings_from
from reports.text import daily_text, heat_text
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import Database


@dataclass
class DailyReport:
    team: str | None
    team_name: str
    day: date
    figures: dict[str, Any]
    before: dict[str, Any]
    text: str
    chart: Path | None = None


@dataclass
class HeatMap:
    month: str
    grids: list[tuple[str, dict]]
    text: str
    chart: Path | None = None


def team_name(config: Config, team: str | None) -> str:
    if team is None:
        return t("reports.all_teams")
    tc = config.team(team)
    return tc.name if tc else team


async def daily_report(config: Config, db: Database | AsyncSession, day: date, team: str | None = None, *,
                       out: Path | None = None) -> DailyReport:
    """`day`'s figures (and the day before's, for the change), with a chart when `out` is given."""
    settings = settings_from(config)
    period, previous = day_period(day, settings.tz), day_period(day - timedelta(days=1), settings.tz)
    data = await load_dataset(db, previous.start, period.end)
    today = compute(data, period, settings, team)
    before = compute(data, previous, settings, team)
    name = team_name(config, team)
    report = DailyReport(team, name, day, today, before, daily_text(name, day.isoformat(), today, before))
    if out is not None:
        path = out / f"daily-{day.isoformat()}-{team or 'all'}.png"
        title = t("reports.daily_title", team=name, date=day.isoformat())
        report.chart = await asyncio.to_thread(charts.daily_chart, path, title, today, before)
    return report


async def monthly_heat_map(config: Config, db: Database | AsyncSession, year: int, month: int, *,
                           out: Path | None = None) -> HeatMap | None:
    """The month's median stage times per team and per category; None when nothing was resolved."""
    settings = settings_from(config)
    period = month_period(year, month, settings.tz)
    data = await load_dataset(db, period.start, period.end)
    by_team = heat_map(data, period, "team")
    if not by_team:
        return None
    grids = [(t("reports.heat_by_team"), by_team), (t("reports.heat_by_category"), heat_map(data, period, "category"))]
    names = {tc.id: tc.name for tc in config.teams}
    report = HeatMap(period.label, grids, heat_text(period.label, grids, names))
    if out is not None:
        path = out / f"heatmap-{period.label}.png"
        report.chart = await asyncio.to_thread(charts.heat_map_chart, path,
                                               t("reports.heat_title", month=period.label), grids, names)
    return report
