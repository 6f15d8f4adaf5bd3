"""The report figures against a hand-computed week of tickets across two teams.

The week is Monday 2026-11-30 to Sunday 2026-12-06 in Asia/Shanghai: it crosses
the month boundary, one ticket is reported before midnight and fixed after it,
one was reported the week before and resolved in it. Every expected number
below is worked out by hand in the comments next to it.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reports.figures import Dataset, Hours, Page, Settings, compute, day_period, heat_map, month_period, \
    week_period, worst_cells
from storage.models import Ticket, TicketEvent

TZ = ZoneInfo("Asia/Shanghai")
H, M = 3600, 60
SETTINGS = Settings(TZ, {
    "P0": (timedelta(minutes=10), timedelta(hours=4)),
    "P1": (timedelta(minutes=30), timedelta(hours=24)),
    "P2": (timedelta(hours=4), timedelta(hours=72)),
})
NAMES = {"e1": "张工", "e2": "李工", "e3": "王工"}


def L(month: int, day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, month, day, hh, mm, tzinfo=TZ)


class Trail:
    """Builds tickets and their audit events the way the ticket core logs them."""

    def __init__(self):
        self.tickets: list[Ticket] = []
        self.events: list[TicketEvent] = []

    def ticket(self, n: int, team: str, priority: str, category: str, at: datetime) -> int:
        self.tickets.append(Ticket(id=n, number=f"SRV-{n:03d}", state="new", category=category,
                                   category_name=category, priority=priority, summary="s", reporter_id="c",
                                   reporter_channel="playground", reporter_conv_kind="user",
                                   reporter_conv_id="c", team=team, created_at=at, updated_at=at,
                                   respond_by=at, resolve_by=at))
        self.ev(n, "report", "c", at, "new")
        return n

    def ev(self, n: int, action: str, actor: str, at: datetime, state: str | None = None, **detail) -> None:
        self.events.append(TicketEvent(id=len(self.events) + 1, ticket_id=n, action=action, actor_id=actor,
                                       actor_name=actor, channel="playground", at=at, to_state=state,
                                       detail=detail))


@pytest.fixture(scope="module")
def week() -> Dataset:
    w = Trail()
    # T1 team a, P1: claimed after 20 min (in time), resolved after 2 h, rated 5.
    w.ticket(1, "a", "P1", "泵类", L(11, 30, 10))
    w.ev(1, "claim", "e1", L(11, 30, 10, 20), "claimed")
    w.ev(1, "depart", "e1", L(11, 30, 10, 30), "on_the_way")
    w.ev(1, "arrive", "e1", L(11, 30, 11), "on_site")
    w.ev(1, "start_repair", "e1", L(11, 30, 11, 10), "repairing")
    w.ev(1, "resolve", "e1", L(11, 30, 12), "resolved")
    w.ev(1, "rate", "c", L(11, 30, 12, 30), "closed", stars=5)
    # T2 team a, P0, reported 23:50 on 30 Nov, claimed 00:05 on 1 Dec (15 min: late),
    # resolved 02:00 (2 h 10 min: in time), rated 2.
    w.ticket(2, "a", "P0", "电气", L(11, 30, 23, 50))
    w.ev(2, "claim", "e2", L(12, 1, 0, 5), "claimed")
    w.ev(2, "resolve", "e2", L(12, 1, 2), "resolved")
    w.ev(2, "rate", "c", L(12, 1, 9), "closed", stars=2)
    # T3 team a, P1: e1 claims after 10 min, hands it to e2, e2 fixes it (second dispatch).
    w.ticket(3, "a", "P1", "泵类", L(12, 1, 14))
    w.ev(3, "claim", "e1", L(12, 1, 14, 10), "claimed")
    w.ev(3, "transfer", "e1", L(12, 1, 15), "transferred", **{"from": "e1", "to": "e2"})
    w.ev(3, "claim", "e2", L(12, 1, 15, 30), "claimed")
    w.ev(3, "resolve", "e2", L(12, 1, 17), "resolved")
    w.ev(3, "rate", "c", L(12, 1, 18), "closed", stars=4)
    # T4 team b, P2: resolved, reopened, resolved again at 13:00 (4 h after the report), rated 1.
    w.ticket(4, "b", "P2", "网络", L(12, 2, 9))
    w.ev(4, "claim", "e3", L(12, 2, 10), "claimed")
    w.ev(4, "resolve", "e3", L(12, 2, 11), "resolved")
    w.ev(4, "reopen", "c", L(12, 2, 12), "reopened")
    w.ev(4, "claim", "e3", L(12, 2, 12, 10), "claimed")
    w.ev(4, "resolve", "e3", L(12, 2, 13), "resolved")
    w.ev(4, "rate", "c", L(12, 2, 14), "closed", stars=1)
    # T5 team b, P1, Saturday evening: claimed after an hour (late), never resolved.
    w.ticket(5, "b", "P1", "网络", L(12, 5, 20))
    w.ev(5, "claim", "e3", L(12, 5, 21), "claimed")
    # T6 team a, P0, Sunday 22:30: nobody claims it.
    w.ticket(6, "a", "P0", "电气", L(12, 6, 22, 30))
    # T7 team b, P2: cancelled before any deadline.
    w.ticket(7, "b", "P2", "网络", L(12, 3, 10))
    w.ev(7, "cancel", "c", L(12, 3, 10, 30), "cancelled")
    # T8 team a, P2, reported the Sunday before, resolved Monday 09:30 (23 h 30 min).
    w.ticket(8, "a", "P2", "泵类", L(11, 29, 10))
    w.ev(8, "claim", "e1", L(11, 29, 10, 30), "claimed")
    w.ev(8, "resolve", "e1", L(11, 30, 9, 30), "resolved")
    # e3 paged by phone on Saturday 23:00 (sleep hours).
    pages = [Page("e3", L(12, 5, 23))]
    return Dataset(w.tickets, w.events, pages, NAMES)


def person(figures: dict, pid: str) -> dict:
    return next(p for p in figures["per_person"] if p["person_id"] == pid)


def test_week_overall(week):
    f = compute(week, week_period(date(2026, 12, 2), TZ), SETTINGS)
    assert f["period"] == "2026-11-30~2026-12-06"
    assert f["reports"] == 7  # T1-T7; T8 was reported the week before
    assert f["by_priority"] == {"P0": 2, "P1": 3, "P2": 2}
    assert f["by_category"] == {"网络": 3, "泵类": 2, "电气": 2}
    # First claims: T1 1200, T2 900, T3 600, T4 3600, T5 3600 -> 9900 / 5
    assert f["claimed"] == 5 and f["mtta_s"] == 1980
    # T1 ok, T2 late, T3 ok, T4 ok, T5 late, T6 unclaimed past 22:40 -> 3 / 6
    assert f["sla_response_rate"] == 0.5
    # Resolved: T1 7200, T2 7800, T3 10800, T4 14400, T8 84600 -> 124800 / 5
    assert f["resolved"] == 5 and f["mttr_s"] == 24960
    # All five within their resolution deadline; T5's (Sunday 20:00) passed unresolved -> 5 / 6
    assert f["sla_resolve_rate"] == 0.8333
    # T3 went to a second engineer, T4 was reopened -> 3 / 5
    assert f["fsr"] == 0.6
    assert f["rating_avg"] == 3.0 and f["ratings"] == 4 and f["low_ratings"] == 2
    # Open at Monday 7 Dec 00:00: T5 (claimed Saturday 20:00, 28 h old) and T6.
    assert f["backlog"] == 2
    assert f["oldest_open"] == {"number": "SRV-005", "age_s": 28 * H}
    assert f["follow_ups_open"] is None and f["follow_ups_overdue"] is None


def test_week_per_person(week):
    f = compute(week, week_period(date(2026, 12, 6), TZ), SETTINGS)
    assert [p["person"] for p in f["per_person"]] == sorted(NAMES.values())
    e1, e2, e3 = person(f, "e1"), person(f, "e2"), person(f, "e3")
    # e1: claims T1 and T3 (Mon/Tue daytime); credited T1 and T8 (both first-time fixes).
    assert e1 == {"person": "张工", "person_id": "e1", "claimed": 2, "resolved": 2, "mtta_s": 900, "fsr": 1.0,
                  "rating_avg": 5.0, "interruptions": {"business": 2, "off": 0, "sleep": 0}}
    # e2: T2 at 00:05 (sleep) and T3 after the transfer; MTTA only over T2, their first claim.
    assert e2 == {"person": "李工", "person_id": "e2", "claimed": 2, "resolved": 2, "mtta_s": 900, "fsr": 0.5,
                  "rating_avg": 3.0, "interruptions": {"business": 1, "off": 0, "sleep": 1}}
    # e3: T4 twice on Wednesday, T5 Saturday 21:00 (off), paged Saturday 23:00 (sleep).
    assert e3 == {"person": "王工", "person_id": "e3", "claimed": 3, "resolved": 1, "mtta_s": 3600, "fsr": 0.0,
                  "rating_avg": 1.0, "interruptions": {"business": 2, "off": 1, "sleep": 1}}


def test_week_per_team(week):
    period = week_period(date(2026, 11, 30), TZ)
    a = compute(week, period, SETTINGS, team="a")
    assert (a["reports"], a["mtta_s"], a["sla_response_rate"]) == (4, 900, 0.5)
    # T1 7200, T2 7800, T3 10800, T8 84600 -> 110400 / 4
    assert (a["resolved"], a["mttr_s"], a["sla_resolve_rate"], a["fsr"]) == (4, 27600, 1.0, 0.75)
    assert (a["rating_avg"], a["low_ratings"]) == (3.67, 1)
    assert a["backlog"] == 1 and a["oldest_open"] == {"number": "SRV-006", "age_s": 90 * M}
    assert {p["person_id"] for p in a["per_person"]} == {"e1", "e2"}
    b = compute(week, period, SETTINGS, team="b")
    assert (b["reports"], b["mtta_s"], b["sla_response_rate"]) == (3, 3600, 0.5)
    assert (b["resolved"], b["mttr_s"], b["sla_resolve_rate"], b["fsr"]) == (1, 14400, 0.5, 0.0)
    assert (b["rating_avg"], b["low_ratings"], b["backlog"]) == (1.0, 1, 1)
    assert [p["person_id"] for p in b["per_person"]] == ["e3"]
    assert person(b, "e3")["interruptions"] == {"business": 2, "off": 1, "sleep": 1}


def test_days_across_midnight_and_the_month_boundary(week):
    mon = compute(week, day_period(date(2026, 11, 30), TZ), SETTINGS)
    # T2's claim (00:05) and its response deadline (00:00) belong to Tuesday.
    assert (mon["reports"], mon["claimed"], mon["mtta_s"], mon["sla_response_rate"]) == (2, 1, 1200, 1.0)
    assert (mon["resolved"], mon["mttr_s"]) == (2, 45900)  # T1 7200, T8 84600
    assert mon["backlog"] == 1 and mon["oldest_open"] == {"number": "SRV-002", "age_s": 10 * M}
    tue = compute(week, day_period(date(2026, 12, 1), TZ), SETTINGS)
    assert (tue["reports"], tue["claimed"], tue["mtta_s"], tue["sla_response_rate"]) == (1, 2, 750, 0.5)
    assert (tue["resolved"], tue["mttr_s"], tue["sla_resolve_rate"], tue["fsr"]) == (2, 9300, 1.0, 0.5)
    assert (tue["rating_avg"], tue["low_ratings"], tue["backlog"], tue["oldest_open"]) == (3.0, 1, 0, None)
    # A day with nothing to measure says so.
    quiet = compute(week, day_period(date(2026, 12, 4), TZ), SETTINGS)
    assert quiet["reports"] == 0 and quiet["mtta_s"] is None and quiet["fsr"] is None
    assert quiet["sla_response_rate"] is None and quiet["rating_avg"] is None and quiet["per_person"] == []


def test_months_split_at_local_midnight(week):
    nov = compute(week, month_period(2026, 11, TZ), SETTINGS)
    dec = compute(week, month_period(2026, 12, TZ), SETTINGS)
    assert nov["reports"] == 3 and dec["reports"] == 5  # T8, T1, T2 | T3-T7
    assert nov["resolved"] == 2 and dec["resolved"] == 3
    assert nov["backlog"] == 1 and nov["oldest_open"]["number"] == "SRV-002"
    # 30 Nov 23:50 local is 15:50 UTC: still November here.
    assert month_period(2026, 12, TZ).start == datetime(2026, 11, 30, 16, 0, tzinfo=ZoneInfo("UTC"))


def test_hours_split():
    h = Hours()
    assert h.kind(L(12, 1, 9), TZ) == "business"  # Tuesday
    assert h.kind(L(12, 1, 18), TZ) == "off"
    assert h.kind(L(12, 1, 22), TZ) == "sleep"
    assert h.kind(L(12, 1, 7, 59), TZ) == "sleep"
    assert h.kind(L(12, 5, 10), TZ) == "off"  # Saturday
    assert Hours(sleep_start=L(1, 1, 1).time(), sleep_end=L(1, 1, 5).time()).kind(L(12, 1, 22), TZ) == "off"


def test_heat_map_stages(week):
    grid = heat_map(week, week_period(date(2026, 12, 1), TZ), "team")
    # Team a resolved T1, T2, T3, T8. 待认领: 1200, 900, 600, 1800 -> median 1050.
    assert grid["a"]["unclaimed"] == 1050
    assert grid["a"]["claim_depart"] == 600 and grid["a"]["depart_arrive"] == 1800  # T1 only
    # 维修 from the start of repair (T1: 50 min), else the claim (T2 115 min, T3 170 min, T8 23 h).
    assert grid["a"]["repair"] == (115 * M + 170 * M) / 2
    # 完工->评价: T1 30 min, T2 7 h, T3 1 h (T8 not rated) -> 1 h.
    assert grid["a"]["resolve_rate"] == H
    assert grid["a"]["transfer"] == 30 * M  # T3 waited 30 min for e2
    by_cat = heat_map(week, week_period(date(2026, 12, 1), TZ), "category")
    assert set(by_cat) == {"泵类", "电气", "网络"}
    # Team b's one ticket took 3 h from claim to the final 完工 (reopen included).
    assert grid["b"]["repair"] == 3 * H and grid["b"]["transfer"] is None
    assert worst_cells(grid, 2) == [("b", "repair", 3 * H), ("a", "repair", 8550)]
