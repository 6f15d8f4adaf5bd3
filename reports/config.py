"""The `[reports]` section: when reports go out, where, and how hours are split.

    [reports]
    daily_at = "08:30"                 # local time of the daily health report
    monthly_at = "09:00"               # on the 1st: the heat map of last month
    sleep_hours = "22:00-08:00"        # interruptions in these hours count as sleep
    business_hours = "09:00-18:00"     # on business_days; the rest is off hours
    business_days = [1, 2, 3, 4, 5]    # ISO weekdays (Monday = 1)
    low_rating = 2                     # ratings at or below count as low
    link_ttl = "12h"                   # a console link (看板) is valid this long
    tracking_ttl = "30d"               # a customer's tracking link is valid this long
    link_secret = "..."                # signs the links (default: random, kept in the database)
    [reports.groups]                   # team id -> managers' group per channel
    maint = { wecom = "wrkABC", feishu = "oc_..." }

Every team's report also goes to its lead's chat on the playground (the
page's lead pane) when the playground runs.
"""
from __future__ import annotations

from datetime import time, timedelta
from typing import Iterable, Optional

from pydantic import Field, field_validator

from bot.config_types import Duration, Section as _Section
from escalation.config import parse_hhmm

def _span(value: str) -> str:
    start, sep, end = value.partition("-")
    if not sep:
        raise ValueError(f'{value!r}: write a span of local time as "HH:MM-HH:MM"')
    parse_hhmm(start)
    parse_hhmm(end)
    return value


class ReportsConfig(_Section):
    enabled: bool = True
    daily_at: str = "08:30"
    monthly_at: str = "09:00"
    sleep_hours: str = "22:00-08:00"
    business_hours: str = "09:00-18:00"
    business_days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    low_rating: int = Field(default=2, ge=1, le=5)
    groups: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Where chart images are written (default <data dir>/reports).
    out_dir: Optional[str] = None
    # How long a console link (`看板`) and a customer's tracking link stay valid.
    link_ttl: Duration = timedelta(hours=12)
    tracking_ttl: Duration = timedelta(days=30)
    # Signs those links; unset: a random secret kept in the database (shared by all processes).
    link_secret: Optional[str] = None

    @field_validator("daily_at", "monthly_at")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        parse_hhmm(v)
        return v

    @field_validator("sleep_hours", "business_hours")
    @classmethod
    def _spans(cls, v: str) -> str:
        return _span(v)

    @field_validator("business_days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        bad = [d for d in v if not 1 <= d <= 7]
        if bad:
            raise ValueError(f"{bad[0]} is not an ISO weekday (1 = Monday ... 7 = Sunday)")
        return v

    def span(self, key: str) -> tuple[time, time]:
        start, _, end = getattr(self, key).partition("-")
        return parse_hhmm(start), parse_hhmm(end)


def check_references(reports: "ReportsConfig", team_ids: Iterable[str]) -> None:
    """Teams named in [reports.groups] exist; raise ValueError naming the key.

    Given the team ids rather than the whole config, so this module does not
    import bot/config.py (which imports it).
    """
    teams = set(team_ids)
    for team_id in reports.groups:
        if team_id not in teams:
            raise ValueError(f"reports.groups.{team_id}: unknown team {team_id!r}")
