"""Who is on call for a team at a given moment.

A team's schedule ([oncall.<team>]) has daily shifts in the config's time zone
(a shift whose end is not after its start crosses midnight), a rotation whose
turn passes on weekly or daily at the start of a shift, and overrides. The
turn of a shift is decided by the day the shift *started*, so the night shift
from Sunday 20:00 to Monday 08:00 belongs to Sunday's person all night.
Overrides are tried last-first; one with `replaces` only stands in for that
person. Minutes no shift covers have nobody on call: "oncall" targets then
fall back to the team's lead.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from bot.config import Config
from bot.texts import t
from escalation.config import OnCallConfig, OverrideConfig, ShiftConfig


@dataclass(frozen=True)
class OnCallNow:
    team: str
    person_id: str | None  # None: no shift covers this moment
    shift: str | None = None
    start: datetime | None = None  # this shift instance, local time
    end: datetime | None = None
    scheduled: str | None = None  # who the rotation names (differs when overridden)
    override: OverrideConfig | None = None


class OnCall:
    def __init__(self, config: Config):
        self.config = config
        self.tz = ZoneInfo(config.tickets.timezone)

    def teams(self) -> list[str]:
        return list(self.config.oncall)

    def who(self, team_id: str, at: datetime) -> OnCallNow | None:
        """The person on call for the team at `at` (aware), or None without a schedule."""
        oc = self.config.oncall.get(team_id)
        if oc is None:
            return None
        if at.tzinfo is None:
            raise ValueError("naive datetime")
        local = at.astimezone(self.tz)
        found = self._shift_at(oc, local)
        scheduled = None
        shift_name = start = end = None
        if found is not None:
            shift, start, end = found
            shift_name = shift.name
            rota = shift.rotation or oc.rotation
            period = 7 if oc.rotate == "weekly" else 1
            turn = ((start.date() - oc.start_date).days // period) % len(rota)
            scheduled = rota[turn]
        person, override = scheduled, None
        for ov in reversed(oc.overrides):
            if self._aware(ov.start) <= at < self._aware(ov.end) and ov.replaces in (None, scheduled):
                person, override = ov.person, ov
                break
        return OnCallNow(team_id, person, shift_name, start, end, scheduled, override)

    def _aware(self, dt: datetime) -> datetime:
        return dt.replace(tzinfo=self.tz) if dt.tzinfo is None else dt

    def _shift_at(self, oc: OnCallConfig, local: datetime) -> tuple[ShiftConfig, datetime, datetime] | None:
        shifts = oc.shifts or [ShiftConfig(name=t("oncall.all_day"), start="00:00", end="00:00")]
        minute = local.hour * 60 + local.minute
        for shift in shifts:
            if minute not in shift.minutes():
                continue
            st = shift.start_time
            begins = st.hour * 60 + st.minute
            day: date = local.date() if minute >= begins else local.date() - timedelta(days=1)
            start = datetime(day.year, day.month, day.day, st.hour, st.minute, tzinfo=self.tz)
            end = start + timedelta(minutes=len(shift.minutes()))
            return shift, start, end
        return None

    def text(self, team_ids: list[str], now: datetime, names: dict[str, str], phones: dict[str, str | None]) -> str:
        """The `值班` answer: who is on call now, per team, and who comes next."""
        if not team_ids:
            return t("oncall.none")
        lines = [t("oncall.title", time=now.astimezone(self.tz).strftime("%m-%d %H:%M"))]
        for team_id in team_ids:
            team = self.config.team(team_id)
            team_name = team.name if team else team_id
            cur = self.who(team_id, now)
            if cur is None:
                continue
            if cur.person_id is None:
                lead = team.lead if team else None
                fallback = t("oncall.fallback", name=names.get(lead, lead)) if lead else ""
                lines.append(t("oncall.nobody", team=team_name, fallback=fallback))
                continue
            phone = phones.get(cur.person_id)
            override = ""
            if cur.override is not None and cur.scheduled and cur.scheduled != cur.person_id:
                override = t("oncall.override", name=names.get(cur.scheduled, cur.scheduled))
            lines.append(t("oncall.line", team=team_name, shift=cur.shift or "",
                           start=_hm(cur.start), end=_hm(cur.end), name=names.get(cur.person_id, cur.person_id),
                           phone=t("oncall.phone", phone=phone) if phone else "", override=override))
            if cur.end is not None and cur.start is not None and cur.end - cur.start < timedelta(days=1):
                nxt = self.who(team_id, cur.end.astimezone(timezone.utc))
                if nxt is not None and nxt.person_id:
                    lines.append(t("oncall.next", start=_hm(nxt.start or cur.end),
                                   name=names.get(nxt.person_id, nxt.person_id)))
        return "\n".join(lines)


def _hm(dt: datetime | None) -> str:
    return dt.strftime("%H:%M") if dt else ""
