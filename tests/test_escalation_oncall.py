"""On-call: shifts across midnight, weekly and daily turns, overrides, gaps,
`值班` in chat, and "oncall" targets resolved when the step fires."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from escalation.oncall import OnCall
from test_escalation_engine import make_esc, write_config

SH = ZoneInfo("Asia/Shanghai")

ONCALL = """
[[people]]
id = "eng_wang"
name = "王工"
role = "engineer"
team = "maint"
phone = "13800000009"
identities = { playground = "eng_wang" }

[oncall.maint]
rotation = ["eng_zhang", "eng_li"]
rotate = "weekly"
start_date = 2026-01-05

[[oncall.maint.shifts]]
name = "白班"
start = "08:00"
end = "20:00"

[[oncall.maint.shifts]]
name = "夜班"
start = "20:00"
end = "08:00"
rotation = ["eng_li", "eng_zhang"]

[[oncall.maint.overrides]]
person = "eng_wang"
start = 2026-02-03T20:00:00
end = 2026-02-04T08:00:00

[[oncall.maint.overrides]]
person = "eng_wang"
start = 2026-02-06T00:00:00
end = 2026-02-07T00:00:00
replaces = "eng_zhang"
"""

POLICY = """
[[escalation.P0.steps]]
after = "10m"
state = "unclaimed"
targets = ["oncall"]
means = ["card"]
"""


@pytest.fixture
def oncall(tmp_path, sqlite_url):
    return OnCall(write_config(tmp_path, sqlite_url, extra="", policies=POLICY + ONCALL))


def at(y, mo, d, h, mi=0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH).astimezone(timezone.utc)


@pytest.mark.parametrize("when, person, shift", [
    (at(2026, 1, 26, 10), "eng_li", "白班"),      # Monday of week 3: day rotation[1]
    (at(2026, 1, 26, 19, 59), "eng_li", "白班"),
    (at(2026, 1, 26, 20), "eng_zhang", "夜班"),    # night rotation[1]
    (at(2026, 2, 1, 23), "eng_zhang", "夜班"),     # Sunday night, still week 3
    (at(2026, 2, 2, 3), "eng_zhang", "夜班"),      # Monday 03:00: the shift began on Sunday
    (at(2026, 2, 2, 7, 59), "eng_zhang", "夜班"),
    (at(2026, 2, 2, 8), "eng_zhang", "白班"),      # Monday 08:00: week 4, day rotation[0]
    (at(2026, 2, 2, 20), "eng_li", "夜班"),        # week 4 night rotation[0]
    (at(2026, 1, 5, 0, 30), "eng_zhang", "夜班"),  # before the first turn: the night of Jan 4 (week -1)
])
def test_weekly_turns_across_midnight(oncall, when, person, shift):
    cur = oncall.who("maint", when)
    assert (cur.person_id, cur.shift) == (person, shift)
    assert cur.start <= when.astimezone(SH) < cur.end


def test_override_for_whoever_is_on_call(oncall):
    cur = oncall.who("maint", at(2026, 2, 3, 23))  # Tuesday night of week 4: eng_li scheduled
    assert (cur.person_id, cur.scheduled) == ("eng_wang", "eng_li")
    assert cur.override is not None
    assert oncall.who("maint", at(2026, 2, 4, 8)).person_id == "eng_zhang"  # override over, day shift


def test_override_that_replaces_one_person(oncall):
    # Friday Feb 6: day shift eng_zhang (replaced), night eng_li (not replaced).
    assert oncall.who("maint", at(2026, 2, 6, 12)).person_id == "eng_wang"
    assert oncall.who("maint", at(2026, 2, 6, 21)).person_id == "eng_li"
    # The night shift from Thursday 20:00 is eng_li's; at 01:00 Friday he is not replaced either.
    assert oncall.who("maint", at(2026, 2, 6, 1)).person_id == "eng_li"


def test_daily_rotation_and_gaps(tmp_path, sqlite_url):
    extra = ONCALL.replace('rotate = "weekly"', 'rotate = "daily"').replace(
        'start = "20:00"\nend = "08:00"', 'start = "20:00"\nend = "23:00"')
    oc = OnCall(write_config(tmp_path, sqlite_url, policies=POLICY + extra))
    assert oc.who("maint", at(2026, 1, 5, 9)).person_id == "eng_zhang"
    assert oc.who("maint", at(2026, 1, 6, 9)).person_id == "eng_li"
    assert oc.who("maint", at(2026, 1, 7, 9)).person_id == "eng_zhang"
    gap = oc.who("maint", at(2026, 1, 7, 23, 30))
    assert gap.person_id is None and gap.shift is None
    assert oc.who("nope", at(2026, 1, 7, 9)) is None


async def test_oncall_target_is_resolved_when_the_step_fires(tmp_path, sqlite_url, aiohttp_client):
    esc = await make_esc(write_config(tmp_path, sqlite_url, policies=POLICY + ONCALL), aiohttp_client)
    esc.clock.now = at(2026, 1, 26, 19, 55)  # the day shift (eng_li) ends at 20:00
    tk = await esc.report()
    esc.clock.advance(minutes=10)  # 20:05: eng_zhang's night
    assert await esc.sweep() == 1
    assert (await esc.fired(tk.id))[0].detail["targets"] == ["eng_zhang"]
    assert len(await esc.esc_cards_to("eng_zhang")) == 1
    assert not await esc.esc_cards_to("eng_li")


async def test_nobody_on_call_pages_the_lead(tmp_path, sqlite_url, aiohttp_client):
    extra = ONCALL.replace('start = "20:00"\nend = "08:00"', 'start = "20:00"\nend = "23:00"')
    esc = await make_esc(write_config(tmp_path, sqlite_url, policies=POLICY + extra), aiohttp_client)
    esc.clock.now = at(2026, 1, 26, 23, 10)
    tk = await esc.report()
    esc.clock.advance(minutes=10)
    assert await esc.sweep() == 1
    assert (await esc.fired(tk.id))[0].detail["targets"] == ["lead_zhao"]


async def test_oncall_command_shows_who_is_on_call_now(tmp_path, sqlite_url, aiohttp_client):
    esc = await make_esc(write_config(tmp_path, sqlite_url, policies=POLICY + ONCALL), aiohttp_client)
    esc.clock.now = at(2026, 2, 3, 21)
    await esc.say("eng_zhang", "值班")
    (reply,) = [r.message["text"] for r in await esc.outbox() if r.to_id == "eng_zhang"]
    assert "维修一组 · 夜班（20:00–08:00）：王工，电话 13800000009（代班，原为 李工）" in reply
    assert "下一班 08:00 起：张工" in reply


async def test_oncall_command_without_a_schedule(esc_sqlite):
    await esc_sqlite.say("eng_zhang", "值班")
    (reply,) = [r.message["text"] for r in await esc_sqlite.outbox() if r.to_id == "eng_zhang"]
    assert reply == "值班表尚未配置。"


@pytest.fixture
async def esc_sqlite(tmp_path, sqlite_url, aiohttp_client):
    return await make_esc(write_config(tmp_path, sqlite_url), aiohttp_client)


def test_times_are_local_even_for_utc_input(oncall):
    when = datetime(2026, 1, 26, 12, 0, tzinfo=timezone.utc)  # 20:00 in Shanghai
    assert oncall.who("maint", when).shift == "夜班"
    assert oncall.who("maint", when - timedelta(minutes=1)).shift == "白班"


async def test_an_on_call_person_on_leave_is_replaced_by_the_lead(tmp_path, sqlite_url, aiohttp_client):
    from storage.models import Person

    esc = await make_esc(write_config(tmp_path, sqlite_url, policies=POLICY + ONCALL), aiohttp_client)
    async with esc.rt.db.session() as s:
        p = await s.get(Person, "eng_li")  # on the day shift of week 3
        p.active = False
        s.add(p)
    esc.clock.now = at(2026, 1, 26, 10)
    tk = await esc.report()
    esc.clock.advance(minutes=10)
    assert await esc.sweep() == 1
    assert (await esc.fired(tk.id))[0].detail["targets"] == ["lead_zhao"]
