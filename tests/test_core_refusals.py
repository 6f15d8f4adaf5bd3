"""Every refusal a chat user can meet: a clear answer, and nothing changed."""
from __future__ import annotations

import pytest
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.core.numbers import format_number
from storage.db import Database, SchemaVersionError
from storage.models import SchemaMeta, Ticket, TicketEvent
from test_core_tickets import Harness


@pytest.fixture
async def h(make_config, sqlite_url, aiohttp_client):
    app = create_app(make_config(sqlite_url), workers=False)
    await aiohttp_client(app)
    return Harness(app[RUNTIME])


async def last_reply(h: Harness, person: str) -> str:
    return (await h.texts_to("user", person))[-1]


async def event_count(h: Harness) -> int:
    async with h.rt.db.session() as s:
        return len((await s.exec(select(TicketEvent))).all())


async def refused(h: Harness, person: str, text: str, expected: str, **kw) -> None:
    """`person` says `text`, is told something containing `expected`, and no ticket changes."""
    before_events = await event_count(h)
    before = [(t.id, t.state, t.assignee_id, t.rating) for t in await h.tickets()]
    await h.say(person, text, **kw)
    assert expected in await last_reply(h, person)
    assert await event_count(h) == before_events
    assert [(t.id, t.state, t.assignee_id, t.rating) for t in await h.tickets()] == before


SOFTWARE = "MES系统登录不了"  # a software ticket: 完工 needs a note, no photos


async def reported(h: Harness, text: str = "2号车间空压机不启动了") -> Ticket:
    await h.say("cust_wang", text)
    return await h.ticket()


async def test_nothing_to_act_on(h):
    await refused(h, "cust_wang", "进度", "没有找到您未完成的工单")
    await refused(h, "eng_zhang", "认领", "没有待认领")
    await refused(h, "cust_wang", f"进度 {format_number('SRV', '20200101', 7)}", "没有找到工单")
    await refused(h, "eng_zhang", "报修", "请描述故障")
    await refused(h, "eng_zhang", "备注", "请在命令后写上")


async def test_photo_without_an_open_ticket(h):
    await h.rt.bot.handle(h.event("cust_wang", kind="image"))
    assert "先用文字描述" in await last_reply(h, "cust_wang")
    assert await h.tickets() == []


async def test_claiming_a_finished_ticket(h):
    t = await reported(h, SOFTWARE)
    await h.say("eng_zhang", "认领")
    await h.say("eng_zhang", "完工 重启了服务")
    await refused(h, "eng_li", f"认领 {t.number}", "不能认领")


async def test_customers_cannot_use_staff_buttons(h):
    await reported(h)
    result = await h.click("cust_wang", await h.button("engineer", "转交"))
    assert result.refused and "工程师的操作" in result.toast


async def test_acknowledge_is_for_leads_and_the_assignee(h):
    t = await reported(h)
    await h.say("eng_zhang", "认领")
    await refused(h, "eng_li", f"确认 {t.number}", "只有组长或负责人")


async def test_transfer_refusals(h):
    t = await reported(h)
    await h.say("eng_zhang", "认领")
    await refused(h, "eng_zhang", "转交", "请写明转交给谁")
    await refused(h, "eng_zhang", "转交 @孙总监", "不是工程师", mentions=("director_sun",))
    await refused(h, "eng_zhang", "转交 @张工", "不能转交给自己", mentions=("eng_zhang",))
    await refused(h, "lead_zhao", f"转交 @张工 {t.number}", "已经是工单", mentions=("eng_zhang",))
    assert (await h.ticket(t.number)).assignee_id == "eng_zhang"


async def test_other_customers_tickets_are_private(h):
    t = await reported(h)
    await refused(h, "someone_else", f"进度 {t.number}", "不是您报的单")
    await refused(h, "someone_else", f"取消 {t.number}", "只有报修人或组长")


async def test_rating_refusals(h):
    t = await reported(h, SOFTWARE)
    await h.say("eng_zhang", "认领")
    await h.say("eng_zhang", "完工 重启了服务")
    await refused(h, "cust_wang", "评价 好", "1 到 5 星")
    await refused(h, "eng_zhang", f"评价 5 {t.number}", "只有报修人可以评价")


async def test_cancel_reopen_and_closed_refusals(h):
    t = await reported(h, SOFTWARE)
    await refused(h, "cust_wang", "重开", "不需要重开")
    await h.say("eng_zhang", "认领")
    await h.say("eng_zhang", "完工 重启了服务")
    await refused(h, "cust_wang", "取消", "不能取消")
    await h.say("cust_wang", "评价 4")
    await refused(h, "eng_zhang", f"加急 {t.number}", "不能再操作")


async def test_ambiguous_ticket_asks_for_a_number(h):
    await reported(h, "2号车间空压机不启动了")
    await reported(h, "3号楼水泵漏水了")
    await refused(h, "cust_wang", "取消", "请在命令后写上单号")


async def test_strangers_are_told_politely_when_not_allowed(make_config, sqlite_url, aiohttp_client):
    app = create_app(make_config(sqlite_url, RELAYDESK_ALLOW_UNKNOWN_REPORTERS="false"), workers=False)
    await aiohttp_client(app)
    h = Harness(app[RUNTIME])
    await h.say("stranger", "3号线水泵漏水停机了")
    assert "联系管理员" in await last_reply(h, "stranger")
    assert await h.tickets() == []


async def test_a_database_from_another_schema_version_is_refused(sqlite_url):
    db = Database(sqlite_url)
    await db.init()
    async with db.session() as s:
        meta = await s.get(SchemaMeta, "version")
        meta.value = "99"
        s.add(meta)
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        await db.init()
    await db.dispose()
