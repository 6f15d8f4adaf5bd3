"""The ticket core through its sink: reports, commands, refusals, idempotency, notifications.

Runs on SQLite and on the real PostgreSQL (the `database_url` fixture).
"""
from __future__ import annotations

import asyncio
import itertools
import re

import pytest
from sqlalchemy import text
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from bot.outbox import PENDING
from storage.models import OutboxMessage, PlaygroundMessage, ProcessedEvent, Ticket, TicketEvent

NUMBER = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")
_ids = itertools.count(1)


class Harness:
    def __init__(self, rt):
        self.rt = rt

    def event(self, person: str, text: str = "", *, group: bool = False, kind: str = "text",
              token: str | None = None, event_id: str | None = None, mentions=(),
              image_ref: str | None = None) -> InboundEvent:
        conv = Address("playground", "group", "engineers") if group else Address("playground", "user", person)
        return InboundEvent(platform="playground", event_id=event_id or f"e{next(_ids)}", sender_id=person,
                            conversation=conv, kind=kind, text=text, action_token=token, mentions=tuple(mentions),
                            image_ref=image_ref)

    async def photo(self, person: str, ref: str = "", **kw):
        """`person` sends a picture (a media ref or a local file)."""
        return await self.rt.bot.handle(self.event(person, kind="image", image_ref=ref or f"media-{next(_ids)}", **kw))

    async def say(self, person: str, text: str, **kw):
        return await self.rt.bot.handle(self.event(person, text, **kw))

    async def click(self, person: str, token: str, **kw):
        return await self.rt.bot.handle(self.event(person, kind="action", token=token, **kw))

    async def outbox(self) -> list[OutboxMessage]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())

    async def texts_to(self, kind: str, to_id: str) -> list[str]:
        return [r.message["text"] for r in await self.outbox()
                if r.to_kind == kind and r.to_id == to_id and r.message["type"] == "text"]

    async def cards_to(self, kind: str, to_id: str, card_kind: str | None = None) -> list[dict]:
        return [r.message["card"] for r in await self.outbox()
                if r.to_kind == kind and r.to_id == to_id and r.message["type"] == "card"
                and (card_kind is None or r.message["card"]["kind"] == card_kind)]

    async def ticket(self, number: str | None = None) -> Ticket:
        async with self.rt.db.session() as s:
            q = select(Ticket).order_by(Ticket.id.desc())
            if number:
                q = q.where(Ticket.number == number)
            return (await s.exec(q)).first()

    async def tickets(self) -> list[Ticket]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(Ticket))).all())

    async def events(self, ticket_id: int) -> list[TicketEvent]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket_id)
                                      .order_by(TicketEvent.id))).all())

    async def button(self, card_kind: str, label: str, to=("group", "engineers")) -> str:
        cards = await self.cards_to(*to, card_kind=card_kind)
        for b in cards[-1]["buttons"]:
            if b["label"] == label:
                return b["value"]
        raise AssertionError(f"no button {label!r} on {cards[-1]}")


@pytest.fixture
async def h(make_config, database_url, aiohttp_client):
    app = create_app(make_config(database_url), workers=False)
    await aiohttp_client(app)  # runs startup: schema, people
    return Harness(app[RUNTIME])


async def test_report_files_a_ticket_and_tells_everyone(h):
    await h.say("cust_wang", "3号线水泵漏水停机了")
    t = await h.ticket()
    assert NUMBER.fullmatch(t.number)
    assert (t.category, t.priority, t.state) == ("water_leak", "P0", "new")
    assert t.location == "3号线"
    assert t.assignee_id in ("eng_zhang", "eng_li")  # suggested, not claimed
    replies = await h.texts_to("user", "cust_wang")
    assert t.number in replies[0] and "P0" in replies[0]
    assert (await h.cards_to("user", "cust_wang", "status"))[0]["timeline"][0]["state"] == "todo"
    card = (await h.cards_to("group", "engineers", "engineer"))[0]
    assert card["color"] == "red" and card["subtitle"] == t.number
    assert [b["label"] for b in card["buttons"]] == ["认领", "转交", "加急"]
    assert await h.cards_to("user", t.assignee_id, "engineer")
    events = await h.events(t.id)
    assert [(e.action, e.actor_id, e.channel, e.to_state) for e in events] == [
        ("report", "cust_wang", "playground", "new")]


async def test_full_lifecycle_with_buttons_and_text(h):
    await h.say("cust_wang", "3号线水泵漏水停机了")
    number = (await h.ticket()).number
    claim = await h.button("engineer", "认领")
    result = await h.click("eng_zhang", claim)
    assert "认领成功" in result.toast
    assert result.card is not None and result.card.footer.startswith("张工")
    t = await h.ticket(number)
    assert (t.state, t.assignee_id) == ("claimed", "eng_zhang")
    assert any("张工" in x and "已接单" in x for x in await h.texts_to("user", "cust_wang"))

    await h.say("eng_zhang", "出发")
    await h.say("eng_zhang", "到达")
    await h.say("eng_zhang", "开始维修")
    await h.photo("eng_zhang")
    await h.photo("eng_zhang")
    await h.say("eng_zhang", "完工 更换了机封，试机正常")
    t = await h.ticket(number)
    assert (t.state, t.resolution) == ("resolved", "更换了机封，试机正常")
    told = "\n".join(await h.texts_to("user", "cust_wang"))
    for phrase in ("已出发", "已到达现场", "正在维修", "已完工"):
        assert phrase in told
    rating = (await h.cards_to("user", "cust_wang", "rating"))[-1]
    five = next(b["value"] for b in rating["buttons"] if b["label"] == "★★★★★")
    result = await h.click("cust_wang", five, event_id="rate-1")
    t = await h.ticket(number)
    assert (t.state, t.rating) == ("closed", 5)
    status = (await h.cards_to("user", "cust_wang", "status"))[-1]
    assert [s["state"] for s in status["timeline"]] == ["done"] * 6
    actions = [e.action for e in await h.events(t.id)]
    assert actions == ["report", "claim", "depart", "arrive", "start_repair", "photo", "photo", "resolve", "rate"]
    # The engineers' card was updated in place at every step, buttons gone at the end.
    last_eng = (await h.cards_to("group", "engineers", "engineer"))[-1]
    assert last_eng["buttons"] == [] and last_eng["color"] == "grey"


async def test_customer_cannot_claim_or_move_tickets(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    t = await h.ticket()
    claim = await h.button("engineer", "认领")
    result = await h.click("cust_wang", claim)
    assert "工程师" in result.toast
    await h.say("cust_wang", "认领")
    assert "工程师的操作" in (await h.texts_to("user", "cust_wang"))[-1]
    assert (await h.ticket()).state == "new"
    assert [e.action for e in await h.events(t.id)] == ["report"]


async def test_claim_is_idempotent_and_refused_to_others_with_owner_name(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    claim = await h.button("engineer", "认领")
    await h.click("eng_zhang", claim)
    again = await h.click("eng_zhang", claim)
    assert "已是" in again.toast
    other = await h.click("eng_li", claim)
    assert "张工" in other.toast and "已被" in other.toast
    t = await h.ticket()
    assert t.assignee_id == "eng_zhang"
    assert [e.action for e in await h.events(t.id)] == ["report", "claim"]


async def test_only_assignee_or_lead_moves_a_claimed_ticket(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    await h.say("eng_zhang", "认领")
    await h.say("eng_li", f"出发 {(await h.ticket()).number}")
    assert "张工" in (await h.texts_to("user", "eng_li"))[-1]
    assert (await h.ticket()).state == "claimed"
    await h.say("lead_zhao", f"出发 {(await h.ticket()).number}")
    assert (await h.ticket()).state == "on_the_way"


async def test_stage_out_of_order_is_refused(h):
    await h.say("cust_wang", "MES系统登录不了")  # software: no photos needed
    await h.say("eng_zhang", f"完工 {(await h.ticket()).number}")
    assert "请先认领" in (await h.texts_to("user", "eng_zhang"))[-1]
    await h.say("lead_zhao", "出发")
    assert "没有负责中" in (await h.texts_to("user", "lead_zhao"))[-1]
    await h.say("eng_zhang", "认领")
    await h.say("eng_zhang", "完工 重启了登录服务")
    await h.say("eng_zhang", f"出发 {(await h.ticket()).number}")
    assert "不能执行" in (await h.texts_to("user", "eng_zhang"))[-1]
    assert (await h.ticket()).state == "resolved"


async def test_transfer_by_mention_then_claim_by_target(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    await h.say("eng_zhang", "认领")
    await h.say("eng_zhang", "转交 @李工")
    t = await h.ticket()
    assert (t.state, t.assignee_id) == ("transferred", "eng_li")
    assert any("转交给你" in x for x in await h.texts_to("user", "eng_li"))
    await h.say("eng_zhang", f"认领 {t.number}")
    assert "李工" in (await h.texts_to("user", "eng_zhang"))[-1]
    await h.say("eng_li", f"认领 {t.number}")
    assert (await h.ticket()).state == "claimed"
    assert any("李工" in x for x in await h.texts_to("user", "cust_wang"))


async def test_transfer_button_offers_engineers(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    await h.say("eng_zhang", "认领")
    token = await h.button("engineer", "转交")
    result = await h.click("eng_zhang", token, group=True)
    assert "选择" in result.toast
    pick = (await h.cards_to("user", "eng_zhang"))[-1]
    li = next(b["value"] for b in pick["buttons"] if b["label"] == "李工")
    await h.click("eng_zhang", li)
    assert (await h.ticket()).assignee_id == "eng_li"


async def test_platform_retries_make_one_ticket(h):
    for _ in range(4):
        await h.say("cust_wang", "3号线水泵漏水停机了", event_id="same-msg")
    assert len(await h.tickets()) == 1
    assert len(await h.texts_to("user", "cust_wang")) == 1


async def test_small_talk_is_not_a_ticket_and_staff_get_help(h):
    await h.say("cust_wang", "好的收到")
    await h.say("eng_zhang", "今天天气不错")
    assert await h.tickets() == []
    assert (await h.texts_to("user", "cust_wang"))[-1] == "是要报修吗？直接描述故障即可"
    assert "认领" in (await h.texts_to("user", "eng_zhang"))[-1]


async def test_a_short_urgent_report_is_a_ticket(h):
    await h.say("cust_wang", "电梯困人了")
    t = await h.ticket()
    assert (t.category, t.category_name, t.priority, t.summary) == ("elevator", "电梯故障", "P0", "电梯困人了")
    assert t.number in (await h.texts_to("user", "cust_wang"))[0]
    assert (await h.cards_to("group", "engineers", "engineer"))[0]["color"] == "red"


@pytest.mark.parametrize("text", ["空调坏了", "电梯坏了", "配电房", "3号楼"])
async def test_a_fault_or_a_place_however_short_is_a_ticket(h, text):
    await h.say("cust_wang", text)
    assert len(await h.tickets()) == 1


async def test_chat_gets_the_question_and_the_answer_is_the_report(h):
    await h.say("cust_wang", "在吗")
    assert await h.tickets() == []
    assert await h.texts_to("user", "cust_wang") == ["是要报修吗？直接描述故障即可"]
    await h.say("cust_wang", "3号楼电梯不动了")
    t = await h.ticket()
    assert (t.category, t.priority, t.location) == ("elevator", "P1", "3号楼")

    # asked again later, an answer without any fault word is taken as the report all the same
    await h.say("stranger", "你好")
    assert (await h.texts_to("user", "stranger"))[-1] == "是要报修吗？直接描述故障即可"
    await h.say("stranger", "家里那个东西又不对劲")
    assert [x.summary for x in await h.tickets() if x.reporter_id == "playground:stranger"] == ["家里那个东西又不对劲"]


async def test_chat_from_a_customer_with_an_open_ticket_is_not_a_new_ticket(h):
    await h.say("cust_wang", "3号线水泵漏水停机了")
    await h.say("cust_wang", "好的谢谢")
    assert len(await h.tickets()) == 1
    assert "进度" in (await h.texts_to("user", "cust_wang"))[-1]


async def test_unknown_sender_becomes_customer_and_is_refused_staff_commands(h):
    await h.say("stranger", "认领")
    assert "工程师的操作" in (await h.texts_to("user", "stranger"))[-1]
    await h.say("stranger", "配电柜冒烟了，有焦味")
    t = await h.ticket()
    assert (t.reporter_id, t.priority, t.category) == ("playground:stranger", "P0", "smoke_fire")


async def test_progress_board_rating_refusals_and_cancel(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    t = await h.ticket()
    await h.say("cust_wang", "进度")
    assert t.number in (await h.texts_to("user", "cust_wang"))[-1]
    await h.say("cust_wang", "评价 5")
    assert "完工后" in (await h.texts_to("user", "cust_wang"))[-1]
    await h.say("cust_wang", "进度 SRV-20200101-00001-000")
    assert "不正确" in (await h.texts_to("user", "cust_wang"))[-1]
    await h.say("lead_zhao", "我的工单")
    assert "没有" in (await h.texts_to("user", "lead_zhao"))[-1]
    await h.say("eng_zhang", "认领")
    await h.say("eng_zhang", "我的工单")
    assert t.number in (await h.texts_to("user", "eng_zhang"))[-1]
    await h.say("cust_wang", "取消")
    assert (await h.ticket()).state == "cancelled"
    assert "已取消" in (await h.texts_to("user", "cust_wang"))[-1]


async def test_customer_addition_reaches_the_engineer(h):
    await h.say("cust_wang", "2号车间空压机不启动了")
    await h.say("eng_zhang", "认领")
    await h.say("cust_wang", "补充：控制面板显示E05")
    assert any("E05" in x for x in await h.texts_to("user", "eng_zhang"))
    assert "已补充" in (await h.texts_to("user", "cust_wang"))[-1]


async def test_escalate_button_pages_the_lead(h):
    await h.say("cust_wang", "3号线水泵漏水停机了")
    token = await h.button("engineer", "加急")
    await h.click("eng_zhang", token)
    assert await h.cards_to("user", "lead_zhao", "escalation")
    t = await h.ticket()
    assert t.escalation_level >= 1


async def test_stale_button_is_refused(h):
    result = await h.click("eng_zhang", "no-such-token")
    assert "失效" in result.toast


async def test_audit_trail_cannot_be_edited(h):
    await h.say("cust_wang", "3号线水泵漏水停机了")
    async with h.rt.db.engine.connect() as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(text("UPDATE ticket_event SET actor_name = 'x'"))
        await conn.rollback()
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(text("DELETE FROM ticket_event"))
        await conn.rollback()


async def test_concurrent_reports_never_share_a_number(h):
    texts = [f"{i}号泵漏水了" for i in range(40)]
    await asyncio.gather(*(h.say("cust_wang", x) for x in texts))
    numbers = [t.number for t in await h.tickets()]
    assert len(numbers) == len(set(numbers)) == 40
    seqs = sorted(int(n.split("-")[2]) for n in numbers)
    assert seqs == list(range(1, 41))


async def test_delivery_reaches_the_playground(h):
    await h.say("cust_wang", "3号线水泵漏水停机了")
    await h.rt.outbox.drain()
    async with h.rt.db.session() as s:
        rows = (await s.exec(select(PlaygroundMessage))).all()
        pending = (await s.exec(select(OutboxMessage).where(OutboxMessage.status == PENDING))).all()
        processed = (await s.exec(select(ProcessedEvent))).all()
    assert pending == []
    convs = {r.conversation for r in rows}
    assert {"user:cust_wang", "group:engineers"} <= convs
    assert len(processed) == 1


async def test_people_who_left_cannot_act_even_after_a_restart(h):
    from bot.core.directory import Directory
    from storage.models import Person

    await h.say("cust_wang", "2号车间空压机不启动了")
    async with h.rt.db.session() as s:
        p = await s.get(Person, "eng_li")
        p.active = False
        s.add(p)
    await Directory(h.rt.config, ["playground"]).sync(h.rt.db)  # a restart re-reads the config
    result = await h.click("eng_li", await h.button("engineer", "认领"))
    assert result.refused and "名单" in result.toast
    assert (await h.ticket()).state == "new"
