"""Service figures from tickets and their audit trail: pure functions, no I/O.

Everything is computed from what the audit trail says happened *before the end
of the period*, so a report recomputed later gives the same numbers. Periods
are whole local days, weeks or months in the configured time zone.

Definitions (per team when a team is given, else over all tickets):

- reports: tickets reported in the period; split by category and priority.
- mtta_s: mean seconds from report to the *first* claim, over tickets first
  claimed in the period.
- mttr_s: mean seconds from report to resolution, over tickets resolved in the
  period (the last 完工 in the period counts).
- sla_response_rate: the share of tickets claimed by their response deadline.
  A ticket counts once, in the period holding the earlier of its first claim
  and its deadline (a hit is known at the claim, a miss at the deadline), unless
  it was cancelled before that moment.
- sla_resolve_rate: the same for the resolution deadline and the first 完工.
  Deadlines are the ones promised at report time: report time + the priority's
  configured deadline (a reopen sets new working deadlines, not a new promise).
- fsr (first-time fix rate): of tickets resolved in the period, the share never
  reopened and never dispatched a second time (one claimer, no transfer after
  the first claim).
- rating_avg, low_ratings: over ratings given in the period; low is <= the
  configured threshold (2).
- backlog: tickets open at the end of the period (reported, not resolved,
  closed or cancelled), with the oldest of them.
- per person: claimed (claims made), resolved (完工 credited to the engineer who
  held the ticket), mtta_s (their first claims), fsr and rating_avg (over the
  tickets credited to them), and interruptions: each claim and each phone page
  (escalation call or SMS), split by local time into business hours, off hours
  and sleep hours.
- follow_ups_open / follow_ups_overdue: supervisor follow-ups (opened by a low
  rating) still open at the end of the period, and those of them past their
  deadline; None when no follow-ups are given (`Dataset.follow_ups`).

Stage times (the monthly heat map): for tickets resolved in the period, how
long each stage took: 待认领 (report -> first claim), 认领->出发, 出发->到达,
维修 (start of repair, else arrival, else claim -> 完工), 完工->评价, and time
spent waiting after transfers (transfer -> next claim).
"""
from __future__ import annotations

import calendar
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Mapping, Protocol, Sequence
from zoneinfo import ZoneInfo

from bot.core import states as st

# Open at the end of a period: the backlog (resolved waits for its rating, not for work).
OPEN_AT_END = st.OPEN
STAGES = ("unclaimed", "claim_depart", "depart_arrive", "repair", "resolve_rate", "transfer")


class TicketLike(Protocol):
    id: int | None
    number: str
    team: str | None
    category: str
    category_name: str
    priority: str
    created_at: datetime


class EventLike(Protocol):
    ticket_id: int
    action: str
    actor_id: str | None
    at: datetime
    to_state: str | None
    detail: dict


@dataclass(frozen=True)
class Page:
    """A phone call or SMS that paged a person (escalation)."""

    person_id: str
    at: datetime


@dataclass(frozen=True)
class FollowUp:
    """A supervisor follow-up task (from a low rating), once the core keeps them."""

    team: str | None
    opened_at: datetime
    due_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC, with the local label it was made from."""

    start: datetime
    end: datetime
    label: str
    kind: str  # day | week | month

    def contains(self, at: datetime | None) -> bool:
        return at is not None and self.start <= at < self.end


def _local_midnight(d: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(d, time(0), tzinfo=tz)


def day_period(d: date, tz: ZoneInfo) -> Period:
    return Period(_local_midnight(d, tz), _local_midnight(d + timedelta(days=1), tz), d.isoformat(), "day")


def week_period(d: date, tz: ZoneInfo) -> Period:
    """The Monday-to-Sunday week holding `d`."""
    monday = d - timedelta(days=d.weekday())
    return Period(_local_midnight(monday, tz), _local_midnight(monday + timedelta(days=7), tz),
                  f"{monday.isoformat()}~{(monday + timedelta(days=6)).isoformat()}", "week")


def month_period(year: int, month: int, tz: ZoneInfo) -> Period:
    last = calendar.monthrange(year, month)[1]
    first = date(year, month, 1)
    return Period(_local_midnight(first, tz), _local_midnight(first + timedelta(days=last), tz),
                  f"{year:04d}-{month:02d}", "month")


@dataclass(frozen=True)
class Hours:
    """When a moment counts as business, off or sleep hours (local time)."""

    sleep_start: time = time(22, 0)
    sleep_end: time = time(8, 0)
    business_start: time = time(9, 0)
    business_end: time = time(18, 0)
    business_days: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday = 0

    def kind(self, at: datetime, tz: ZoneInfo) -> str:
        local = at.astimezone(tz)
        t = local.time()
        if self.sleep_start <= self.sleep_end:
            sleeping = self.sleep_start <= t < self.sleep_end
        else:  # wraps midnight, the usual case
            sleeping = t >= self.sleep_start or t < self.sleep_end
        if sleeping:
            return "sleep"
        if local.weekday() in self.business_days and self.business_start <= t < self.business_end:
            return "business"
        return "off"


@dataclass(frozen=True)
class Settings:
    tz: ZoneInfo
    # Priority -> (respond, resolve) deadlines promised at report time.
    deadlines: Mapping[str, tuple[timedelta, timedelta]]
    hours: Hours = field(default_factory=Hours)
    low_rating: int = 2


@dataclass
class Dataset:
    """What the figures are computed from; the loader fills it from the database."""

    tickets: Sequence[TicketLike]
    events: Sequence[EventLike]
    pages: Sequence[Page] = ()
    names: Mapping[str, str] = field(default_factory=dict)
    # None: no follow-ups to count (the figures report null).
    follow_ups: Sequence[FollowUp] | None = None


@dataclass
class _History:
    """One ticket's audit events up to the end of the period, oldest first."""

    ticket: TicketLike
    events: list[EventLike]

    def of(self, *actions: str) -> list[EventLike]:
        return [e for e in self.events if e.action in actions]

    def first(self, action: str) -> EventLike | None:
        return next((e for e in self.events if e.action == action), None)

    def state_at_end(self) -> str:
        state = "new"
        for e in self.events:
            if e.to_state:
                state = e.to_state
        return state

    def holder_at(self, when: datetime) -> str | None:
        """Who held the ticket at `when`: the latest claimer before it."""
        holder = None
        for e in self.events:
            if e.at > when:
                break
            if e.action == "claim":
                holder = e.actor_id
        return holder

    def first_time_fix(self) -> bool:
        claims = self.of("claim")
        if self.of("reopen") or len({c.actor_id for c in claims}) > 1:
            return False
        if claims:
            return not any(e.action == "transfer" and e.at >= claims[0].at for e in self.events)
        return True


def _mean(values: list[float]) -> int | None:
    return round(statistics.fmean(values)) if values else None


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _histories(data: Dataset, period: Period, team: str | None) -> list[_History]:
    by_ticket: dict[int, list[EventLike]] = defaultdict(list)
    for e in data.events:
        if e.at < period.end:
            by_ticket[e.ticket_id].append(e)
    out = []
    for tk in data.tickets:
        if tk.created_at >= period.end or (team is not None and tk.team != team):
            continue
        events = by_ticket.get(tk.id, [])  # type: ignore[arg-type]
        events.sort(key=lambda e: (e.at, getattr(e, "id", 0) or 0))
        out.append(_History(tk, events))
    return out


@dataclass
class _Person:
    claimed: int = 0
    resolved: int = 0
    claim_waits: list[float] = field(default_factory=list)
    fixes: list[bool] = field(default_factory=list)
    stars: list[int] = field(default_factory=list)
    interruptions: dict[str, int] = field(default_factory=lambda: {"business": 0, "off": 0, "sleep": 0})


def compute(data: Dataset, period: Period, settings: Settings, team: str | None = None) -> dict[str, Any]:
    """The period's figures as a JSON-ready dict (seconds, rates 0-1, None where nothing to measure)."""
    histories = _histories(data, period, team)
    tz = settings.tz
    people: dict[str, _Person] = defaultdict(_Person)
    by_category: dict[str, int] = defaultdict(int)
    by_priority: dict[str, int] = defaultdict(int)
    reports = 0
    claim_waits: list[float] = []
    resolve_times: list[float] = []
    fixes: list[bool] = []
    stars: list[int] = []
    resp_hit = resp_total = res_hit = res_total = 0
    backlog: list[TicketLike] = []

    for h in histories:
        tk = h.ticket
        respond_in, resolve_in = settings.deadlines.get(tk.priority, (None, None))
        respond_by = tk.created_at + respond_in if respond_in is not None else None
        resolve_by = tk.created_at + resolve_in if resolve_in is not None else None
        cancel = h.first("cancel")
        if period.contains(tk.created_at):
            reports += 1
            by_category[tk.category_name] += 1
            by_priority[tk.priority] += 1

        first_claim = h.first("claim")
        if first_claim is not None and period.contains(first_claim.at):
            wait = (first_claim.at - tk.created_at).total_seconds()
            claim_waits.append(wait)
            if first_claim.actor_id:
                people[first_claim.actor_id].claim_waits.append(wait)
        verdict = _deadline_verdict(period, first_claim, respond_by, cancel)
        if verdict is not None:
            resp_total += 1
            resp_hit += verdict
        verdict = _deadline_verdict(period, h.first("resolve"), resolve_by, cancel)
        if verdict is not None:
            res_total += 1
            res_hit += verdict

        for c in h.of("claim"):
            if period.contains(c.at) and c.actor_id:
                people[c.actor_id].claimed += 1
                people[c.actor_id].interruptions[settings.hours.kind(c.at, tz)] += 1

        resolves = [e for e in h.of("resolve") if period.contains(e.at)]
        if resolves:
            last = resolves[-1]
            resolve_times.append((last.at - tk.created_at).total_seconds())
            fix = h.first_time_fix()
            fixes.append(fix)
            holder = h.holder_at(last.at) or last.actor_id
            if holder:
                people[holder].resolved += 1
                people[holder].fixes.append(fix)

        for r in h.of("rate"):
            if period.contains(r.at) and isinstance(r.detail.get("stars"), int):
                stars.append(r.detail["stars"])
                holder = h.holder_at(r.at)
                if holder:
                    people[holder].stars.append(r.detail["stars"])

        if h.state_at_end() in OPEN_AT_END:
            backlog.append(tk)

    team_people = _team_people(histories) if team is not None else None
    for p in data.pages:
        if period.contains(p.at) and (team_people is None or p.person_id in team_people):
            people[p.person_id].interruptions[settings.hours.kind(p.at, tz)] += 1

    oldest = min(backlog, key=lambda tk: (tk.created_at, tk.number), default=None)
    out: dict[str, Any] = {
        "period": period.label,
        "kind": period.kind,
        "team": team,
        "reports": reports,
        "by_category": dict(sorted(by_category.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_priority": dict(sorted(by_priority.items())),
        "claimed": len(claim_waits),
        "resolved": len(resolve_times),
        "mtta_s": _mean(claim_waits),
        "mttr_s": _mean(resolve_times),
        "sla_response_rate": _rate(resp_hit, resp_total),
        "sla_resolve_rate": _rate(res_hit, res_total),
        "fsr": _rate(sum(fixes), len(fixes)),
        "rating_avg": round(statistics.fmean(stars), 2) if stars else None,
        "ratings": len(stars),
        "low_ratings": sum(1 for s in stars if s <= settings.low_rating),
        "backlog": len(backlog),
        "oldest_open": None if oldest is None else {
            "number": oldest.number,
            "age_s": round((period.end - oldest.created_at).total_seconds()),
        },
        "follow_ups_open": None,
        "follow_ups_overdue": None,
        "per_person": [],
    }
    if data.follow_ups is not None:
        fus = [f for f in data.follow_ups if team is None or f.team == team]
        open_ = [f for f in fus if f.opened_at < period.end and (f.closed_at is None or f.closed_at >= period.end)]
        out["follow_ups_open"] = len(open_)
        out["follow_ups_overdue"] = sum(1 for f in open_ if f.due_at < period.end)
    for pid, p in sorted(people.items(), key=lambda kv: (data.names.get(kv[0], kv[0]), kv[0])):
        out["per_person"].append({
            "person": data.names.get(pid, pid),
            "person_id": pid,
            "claimed": p.claimed,
            "resolved": p.resolved,
            "mtta_s": _mean(p.claim_waits),
            "fsr": _rate(sum(p.fixes), len(p.fixes)),
            "rating_avg": round(statistics.fmean(p.stars), 2) if p.stars else None,
            "interruptions": dict(p.interruptions),
        })
    return out


def _deadline_verdict(period: Period, done: EventLike | None, deadline: datetime | None,
                      cancel: EventLike | None) -> bool | None:
    """Hit (True) or miss (False) when the ticket's SLA moment falls in the period, else None.

    The moment is the earlier of when it was done and its deadline: a hit is
    known when it is done in time, a miss as soon as the deadline passes.
    """
    if deadline is None:
        return None
    moment = min(done.at, deadline) if done is not None else deadline
    if not period.contains(moment) or (cancel is not None and cancel.at <= moment):
        return None
    return done is not None and done.at <= deadline


def _team_people(histories: list[_History]) -> set[str]:
    """Everyone who claimed one of these tickets: their pages count for the team."""
    return {e.actor_id for h in histories for e in h.events if e.action == "claim" and e.actor_id}


def change(today: dict[str, Any], before: dict[str, Any], key: str) -> float | None:
    """today[key] - before[key], None when either side has nothing to measure."""
    a, b = today.get(key), before.get(key)
    if a is None or b is None:
        return None
    return round(a - b, 4)


# ---- stage times (the heat map) ---------------------------------------------


def stage_times(h: _History) -> dict[str, float]:
    """Seconds each stage of one resolved ticket took (stages it went through only)."""
    out: dict[str, float] = {}
    tk = h.ticket
    first_claim = h.first("claim")
    if first_claim is not None:
        out["unclaimed"] = (first_claim.at - tk.created_at).total_seconds()
    depart, arrive, repair = h.first("depart"), h.first("arrive"), h.first("start_repair")
    resolves = h.of("resolve")
    if first_claim is not None and depart is not None:
        out["claim_depart"] = (depart.at - first_claim.at).total_seconds()
    if depart is not None and arrive is not None:
        out["depart_arrive"] = (arrive.at - depart.at).total_seconds()
    if resolves:
        begin = repair or arrive or first_claim
        if begin is not None:
            out["repair"] = (resolves[-1].at - begin.at).total_seconds()
        rate = next((e for e in h.events if e.action == "rate" and e.at >= resolves[-1].at), None)
        if rate is not None:
            out["resolve_rate"] = (rate.at - resolves[-1].at).total_seconds()
    waited = 0.0
    pending: datetime | None = None
    for e in h.events:
        if e.action == "transfer":
            pending = pending or e.at
        elif e.action == "claim" and pending is not None:
            waited += (e.at - pending).total_seconds()
            pending = None
    if h.of("transfer"):
        out["transfer"] = waited
    return out


def heat_map(data: Dataset, period: Period, by: str) -> dict[str, dict[str, float | None]]:
    """Median seconds per stage for tickets resolved in the period, per team or category.

    `by` is "team" or "category"; rows are keyed by the team id or category name.
    """
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for h in _histories(data, period, None):
        resolves = [e for e in h.of("resolve") if period.contains(e.at)]
        if not resolves:
            continue
        key = (h.ticket.team or "-") if by == "team" else h.ticket.category_name
        for stage, seconds in stage_times(h).items():
            rows[key][stage].append(seconds)
    return {key: {stage: (round(statistics.median(v)) if (v := stages.get(stage)) else None)
                  for stage in STAGES}
            for key, stages in sorted(rows.items())}


def worst_cells(grid: dict[str, dict[str, float | None]], n: int = 3) -> list[tuple[str, str, float]]:
    """The `n` largest (row, stage, seconds) cells of a heat map grid."""
    cells = [(row, stage, v) for row, stages in grid.items() for stage, v in stages.items() if v]
    return sorted(cells, key=lambda c: -c[2])[:n]

