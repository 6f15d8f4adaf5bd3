"""`python run_bot.py report ...`: the managers' figures on the command line.

    report daily [--date D] [--team T] [--json] [--out DIR]   yesterday by default
    report month [--month YYYY-MM] [--json] [--out DIR]       last month by default

Reads the database and config `serve` uses; safe while the bot runs (reads only).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bot.py report", description="service figures for managers")
    sub = p.add_subparsers(dest="kind", required=True)
    d = sub.add_parser("daily", help="one day's figures (default: yesterday)")
    d.add_argument("--date", help="YYYY-MM-DD, local date in [tickets] timezone")
    d.add_argument("--team", help="team id (default: all teams)")
    m = sub.add_parser("month", help="a month's figures and heat map (default: last month)")
    m.add_argument("--month", help="YYYY-MM")
    m.add_argument("--team", help="team id (default: all teams)")
    for sp in (d, m):
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("--out", help="write the chart PNGs into this folder")
        sp.add_argument("--config", help="TOML config file (default: the embedded demo setup)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bot.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"relaydesk: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.team is not None and config.team(args.team) is None:
        known = ", ".join(tc.id for tc in config.teams) or "none configured"
        print(f"relaydesk: unknown team {args.team!r} (teams: {known})", file=sys.stderr)
        return EXIT_USAGE
    today = datetime.now(ZoneInfo(config.tickets.timezone)).date()
    out = Path(args.out) if args.out else None
    try:
        if args.kind == "daily":
            day = date.fromisoformat(args.date) if args.date else today - timedelta(days=1)
            return asyncio.run(_daily(config, day, args.team, args.json, out))
        if args.month:
            m = re.fullmatch(r"(\d{4})-(\d{2})", args.month)
            if not m or not 1 <= int(m.group(2)) <= 12:
                raise ValueError(f"--month {args.month!r}: write YYYY-MM")
            year, month = int(m.group(1)), int(m.group(2))
        else:
            last = today.replace(day=1) - timedelta(days=1)
            year, month = last.year, last.month
        return asyncio.run(_month(config, year, month, args.team, args.json, out))
    except ValueError as e:
        print(f"relaydesk: {e}", file=sys.stderr)
        return EXIT_USAGE


async def _daily(config, day: date, team: str | None, as_json: bool, out: Path | None) -> int:
    from reports.build import daily_report
    from reports.text import per_person_lines
    from storage.db import Database

    db = Database(config.database_url)
    try:
        await db.init()
        report = await daily_report(config, db, day, team, out=out)
    finally:
        await db.dispose()
    if as_json:
        doc = dict(report.figures, previous_day=report.before, chart=str(report.chart) if report.chart else None)
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print(report.text)
        for line in per_person_lines(report.figures):
            print(line)
        if report.chart:
            print(report.chart)
    return 0


async def _month(config, year: int, month: int, team: str | None, as_json: bool, out: Path | None) -> int:
    from reports.build import monthly_heat_map
    from reports.figures import compute, month_period
    from reports.load import load_dataset, settings_from
    from reports.text import per_person_lines, summary_text
    from storage.db import Database

    db = Database(config.database_url)
    try:
        await db.init()
        settings = settings_from(config)
        period = month_period(year, month, settings.tz)
        figures = compute(await load_dataset(db, period.start, period.end), period, settings, team)
        heat = await monthly_heat_map(config, db, year, month, out=out)
    finally:
        await db.dispose()
    if as_json:
        doc = dict(figures, heat_map=dict(heat.grids) if heat else None,
                   chart=str(heat.chart) if heat and heat.chart else None)
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    from bot.texts import t

    from reports.build import team_name

    print(summary_text(t("reports.stats_title", scope=team_name(config, team), period=period.label), figures, None))
    for line in per_person_lines(figures):
        print(line)
    print(heat.text if heat else t("reports.heat_empty", month=period.label))
    if heat and heat.chart:
        print(heat.chart)
    return 0
