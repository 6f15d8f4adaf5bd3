"""The managers' chat commands and the boards' red flags, through the core's sink.

Runs on SQLite and on the real PostgreSQL (the `database_url` fixture).
"""
from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from bot.texts import t
from storage.models import Identity, OutboxMessage, Person, Ticket

TZ = ZoneInfo("Asia/Shanghai")
NUMBER = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")
_ids = itertools.count(1)


class Chat:
    def __init__(self, rt):
        self.rt = rt
        self.now = datetime(2026, 12, 3, 9, tzinfo=TZ)
        rt.service.clock = lambda: self.now

    async def say(self, person: str, text: str) -> list[str]:
        """Send `text` as `person` in their 1:1 chat; the texts the bot answered there."""
        before = len(await self.outbox())
        await self.rt.bot.handle(InboundEvent(platform="playground", event_id=f"r{next(_ids)}", sender_id=person,
                                              conversation=Address("playground", "user", person), kind="text",
                                              text=text))
        return [r.message.get("text") or r.message["type"] for r in (await self.outbox())[before:]
                if r.to_kind == "user" and r.to_id == person]

    async def outbox(self) -> list[OutboxMessage]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())

    async def report(self, text: str = "3号线水泵漏水停机了") -> str:
        await self.say("cust_wang", text)
        async with self.rt.db.session() as s:
            return (await s.exec(select(Ticket.number).order_by(Ticket.id.desc()))).first()

    def later(self, **kw) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
async def chat(make_config, database_url, aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv("RELAYDESK_DATA_DIR", str(tmp_path / "data"))
    # 完工 without photos: these tests are about figures, not evidence.
    app = create_app(make_config(database_url, RELAYDESK_TICKETS__MIN_PHOTOS="0"), workers=False)
    await aiohttp_client(app)
    return Chat(app[RUNTIME])


async def test_stats_for_leads_only(chat):
    n1 = await chat.report()
    chat.later(minutes=5)
    await chat.say("eng_zhang", f"认领 {n1}")
    chat.later(minutes=30)
    await chat.say("eng_zhang", f"完工 {n1} 换了密封圈")
    await chat.say("cust_wang", f"评价 {n1} 2")
    chat.later(hours=1)

    [refusal] = await chat.say("eng_li", "统计")
    assert refusal == t("refuse.leads_only_report", command="统计")
    [answer] = await chat.say("lead_zhao", "统计 今天")
    assert answer.startswith("《统计》维修一组 · 今天\n报修 1 · 完工 1 · 积压 0")
    assert "平均响应 5 分钟" in answer and "平均修复 35 分钟" in answer
    assert "评分 2.0（1 条，差评 1）" in answer
    assert "回访 未结 1，超期 0" in answer  # the 2-star rating opened a follow-up for the lead (48 h)
    assert "张工：认领 1 · 完工 1 · 响应 5 分钟 · FSR 100% · 评分 2.0 · 夜间打扰 0" in answer
    [week] = await chat.say("director_sun", "统计 本周 维修一组")
    assert week.startswith("《统计》维修一组 · 本周")
    [bad] = await chat.say("lead_zhao", "统计 本月 维修九组")
    assert bad == t("refuse.unknown_team", name="维修九组", teams="维修一组")
    [customer] = await chat.say("cust_wang", "统计")
    assert customer == t("refuse.customer_command", command="统计")
    chat.later(hours=48)
    [later] = await chat.say("director_sun", "统计 本月 维修一组")
    assert "回访 未结 1，超期 1" in later


async def test_my_stats_counts_interruptions_by_hours(chat):
    chat.now = datetime(2026, 12, 3, 23, 30, tzinfo=TZ)  # Thursday night: sleep hours
    n1 = await chat.report()
    chat.later(minutes=10)
    await chat.say("eng_li", f"认领 {n1}")
    chat.now = datetime(2026, 12, 4, 10, tzinfo=TZ)  # Friday morning: business hours
    n2 = await chat.report("2号配电柜跳闸了，全线停电")
    await chat.say("eng_li", f"认领 {n2}")
    await chat.say("eng_li", f"完工 {n2} 复位")
    [mine] = await chat.say("eng_li", "我的统计")
    assert mine.split("\n") == [
        "《我的统计》李工 · 本月",
        "认领 2 · 完工 1 · 平均响应 5 分钟 · 一次修复率 100% · 评分 —",
        "被打扰 2 次：工作时间 1，非工作时间 0，睡眠时间 1",
    ]
    [nothing] = await chat.say("eng_zhang", "我的统计 今天")
    assert nothing.split("\n") == ["《我的统计》张工 · 今天", t("reports.mine_nothing")]


async def add_engineer(rt, pid: str, name: str, team: str) -> None:
    async with rt.db.session() as s:
        s.add(Person(id=pid, name=name, role="engineer", team=team, skills=[]))
        await s.flush()
        s.add(Identity(platform="playground", external_id=pid, person_id=pid))


async def test_my_board_has_the_three_red_flags(chat):
    await add_engineer(chat.rt, "eng_wu", "吴工", "field")
    numbers = [await chat.report(f"{i}号泵漏水停机了") for i in range(1, 8)]
    for n in numbers[:6]:
        await chat.say("eng_zhang", f"认领 {n}")
    await chat.say("eng_wu", f"认领 {numbers[6]}")
    await chat.say("eng_wu", f"转交 张工 {numbers[6]}")
    chat.later(minutes=90)
    [board] = await chat.say("eng_zhang", "我的工单")
    lines = board.split("\n")
    # Six claimed and one handed over to 张工 (waiting for him to claim it): all seven reported today.
    assert lines[0] == t("reply.board_title", count=7)
    assert lines[1] == "🔴 今日积压 7 单（超过 5 单）"
    assert not any("跨组转交" in ln for ln in lines)  # handed over 1.5 h ago: not yet
    chat.later(minutes=45)
    await chat.say("eng_zhang", f"认领 {numbers[6]}")
    [board] = await chat.say("eng_zhang", "我的工单")
    handed = next(ln for ln in board.split("\n") if numbers[6] in ln)
    assert handed.startswith("🔴") and "跨组转交已 2.2 小时" in handed
    # Deadlines: the classifier makes a pump leak P0/P1; a ticket due within 15 minutes is red.
    async with chat.rt.db.session() as s:
        tk = (await s.exec(select(Ticket).where(Ticket.number == numbers[0]))).first()
        tk.resolve_by = chat.now + timedelta(minutes=14)
        s.add(tk)
        other = (await s.exec(select(Ticket).where(Ticket.number == numbers[1]))).first()
        other.resolve_by = chat.now + timedelta(hours=3)
        s.add(other)
    [board] = await chat.say("eng_zhang", "我的工单")
    line = {n: next(ln for ln in board.split("\n") if n in ln) for n in numbers[:2]}
    assert line[numbers[0]].startswith("🔴") and "剩 14 分钟" in line[numbers[0]]
    assert not line[numbers[1]].startswith("🔴") and "剩 180 分钟" in line[numbers[1]]


async def test_team_board_for_the_lead(chat):
    a = await chat.report()
    b = await chat.report("2号配电柜跳闸了，全线停电")
    await chat.say("eng_li", f"认领 {b}")
    chat.later(hours=5)  # a's response deadline long past
    [board] = await chat.say("lead_zhao", "团队工单")
    lines = board.split("\n")
    # Both are P0: a missed its 10-minute response, b its 4-hour repair; the longest overdue first.
    assert lines[0] == "团队工单 · 维修一组（2 单，红色预警 2）"
    first = lines[1]
    assert a in first and first.startswith("🔴") and "待分配" in first
    assert any(b in ln and "李工" in ln for ln in lines[2:])
    [refusal] = await chat.say("eng_zhang", "团队工单")
    assert refusal == t("refuse.leads_only_report", command="团队工单")


async def test_heat_map_on_demand(chat):
    n = await chat.report()
    chat.later(minutes=12)
    await chat.say("eng_zhang", f"认领 {n}")
    for step in ("出发", "到达", "开始维修"):
        chat.later(minutes=10)
        await chat.say("eng_zhang", f"{step} {n}")
    chat.later(minutes=40)
    await chat.say("eng_zhang", f"完工 {n} 好了")
    answer = await chat.say("lead_zhao", "热力图 2026-12")
    assert answer[0].startswith("《超时归因热力图》2026-12（各阶段耗时中位数，分钟）\n耗时最多：维修一组·维修 40 分钟")
    assert answer[1] == "image"
    images = [r.message for r in await chat.outbox() if r.message["type"] == "image"]
    assert Path(images[-1]["path"]).read_bytes()[:4] == b"\x89PNG"
    assert await chat.say("lead_zhao", "热力图 2026-11") == [t("reports.heat_empty", month="2026-11")]
    assert await chat.say("lead_zhao", "热力图 2026-13") == [t("refuse.bad_month", month="2026-13")]
    assert await chat.say("lead_zhao", "热力图 上个月") == [t("refuse.bad_month", month="上个月")]


@pytest.mark.parametrize("key,value,message", [
    ("RELAYDESK_REPORTS__GROUPS__NOPE__WECOM", "x", "reports.groups.nope: unknown team 'nope'"),
    ("RELAYDESK_REPORTS__DAILY_AT", "25:00", "reports.daily_at: not a time of day: '25:00'"),
    ("RELAYDESK_REPORTS__SLEEP_HOURS", "22", "reports.sleep_hours: '22': write a span of local time as \"HH:MM-HH:MM\""),
    ("RELAYDESK_REPORTS__LOW_RATING", "9", "reports.low_rating: Input should be less than or equal to 5"),
])
def test_report_config_errors_name_the_key(key, value, message):
    from bot.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, env={key: value})
    assert message in str(e.value)
