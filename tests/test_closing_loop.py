"""Closing the loop (issue: evidence, verification, follow-up, the right people,
providers, the trail), through the playground channel, with the default config
unless a test says otherwise. Runs on SQLite and on the real PostgreSQL.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from PIL import Image
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.config import DEFAULT_CONFIG_PATH, load_config
from bot.core import followup
from bot.core.dispatch import Dispatcher, phone_location
from bot.core.service import Actor
from storage.models import FollowUp, Person, PlaygroundMessage, TicketEvent
from test_core_tickets import Harness

LEAK = "3号线水泵漏水停机了"  # water_leak, P0: on-site, 2 photos by default
SOFTWARE = "MES系统登录不了"  # software: no photos, a note


TZ = ZoneInfo("Asia/Shanghai")  # the tickets' time zone: a camera's clock without offset is read in it


def jpeg(path: Path, taken: datetime | None = None, color=(200, 60, 60)) -> str:
    """A real JPEG file; with `taken`, its EXIF DateTimeOriginal (local time, no offset)."""
    img = Image.new("RGB", (64, 48), color)
    exif = Image.Exif()
    if taken is not None:
        exif.get_ifd(0x8769)[36867] = taken.astimezone(TZ).strftime("%Y:%m:%d %H:%M:%S")
    img.save(path, "JPEG", exif=exif.tobytes())
    return str(path)


def config_with(tmp_path: Path, database_url: str, extra: str = ""):
    """The embedded default config with `extra` TOML appended."""
    text = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")
    text = re.sub(r'^database_url = .*$', f'database_url = "{database_url}"', text, count=1, flags=re.M)
    path = tmp_path / "relaydesk.toml"
    path.write_text(text + "\n" + extra, encoding="utf-8")
    return load_config(path, env={})


async def harness(aiohttp_client, config) -> Harness:
    app = create_app(config, workers=False)
    await aiohttp_client(app)
    return Harness(app[RUNTIME])


@pytest.fixture
async def h(make_config, database_url, aiohttp_client):
    return await harness(aiohttp_client, make_config(database_url))


async def last(h: Harness, person: str) -> str:
    return (await h.texts_to("user", person))[-1]


async def actions(h: Harness, ticket_id: int) -> list[str]:
    return [e.action for e in await h.events(ticket_id)]


async def repairing(h: Harness, text: str = LEAK, who: str = "eng_zhang"):
    await h.say("cust_wang", text)
    t = await h.ticket()
    await h.say(who, f"认领 {t.number}")
    await h.say(who, "开始维修")
    return await h.ticket()


# ---- evidence ------------------------------------------------------------------


async def test_completion_needs_two_photos_taken_after_start_and_a_note(h, tmp_path):
    # Before 开始维修 a photo is attached but does not count.
    await h.say("cust_wang", LEAK)
    t = await h.ticket()
    await h.say("eng_zhang", f"认领 {t.number}")
    await h.photo("eng_zhang")
    assert "不计入" in await last(h, "eng_zhang")
    await h.say("eng_zhang", "开始维修")
    # A gallery photo whose camera time is yesterday does not count either (EXIF says so).
    old = jpeg(tmp_path / "old.jpg", datetime.now(timezone.utc) - timedelta(days=1))
    await h.photo("eng_zhang", old)
    assert "不计入" in await last(h, "eng_zhang")

    events_before = len(await h.events(t.id))
    await h.say("eng_zhang", "完工 更换了机封，试机正常")
    refusal = await last(h, "eng_zhang")
    assert "至少 2 张" in refusal and "还差 2 张" in refusal
    assert (await h.ticket()).state == "repairing" and len(await h.events(t.id)) == events_before

    # EXIF keeps whole seconds: a second ahead, so it is not read as before 开始维修.
    fresh = jpeg(tmp_path / "fresh.jpg", datetime.now(timezone.utc) + timedelta(seconds=2), (20, 160, 60))
    await h.photo("eng_zhang", fresh)
    assert "还差 1 张" in await last(h, "eng_zhang")
    await h.say("eng_zhang", "完工 更换了机封，试机正常")
    assert "还差 1 张" in await last(h, "eng_zhang")
    await h.photo("eng_zhang")  # no EXIF (a platform media id): the time received counts
    assert "可以完工" in await last(h, "eng_zhang")
    await h.say("eng_zhang", "完工")
    assert "处理说明" in await last(h, "eng_zhang")
    assert (await h.ticket()).state == "repairing"
    await h.say("eng_zhang", "完工 更换了机封，试机正常")
    assert (await h.ticket()).state == "resolved"

    photos = [e.detail for e in await h.events(t.id) if e.action == "photo"]
    assert [(p["time_source"], p["counts"]) for p in photos] == [
        ("received", False), ("exif", False), ("exif", True), ("received", True)]
    # The customer was told it is resolved only once it was.
    assert sum("已完工" in x for x in await h.texts_to("user", "cust_wang")) == 1


async def test_the_same_picture_twice_counts_once(h):
    t = await repairing(h)
    await h.photo("eng_zhang", "media-same")
    await h.photo("eng_zhang", "media-same", event_id="again")  # forwarded once more: not a second proof
    assert "还差 1 张" in await last(h, "eng_zhang")
    assert [e.action for e in await h.events(t.id)].count("photo") == 1
    await h.say("eng_zhang", "完工 更换了机封")
    assert "还差 1 张" in await last(h, "eng_zhang") and (await h.ticket()).state == "repairing"


async def test_software_needs_a_note_but_no_photo(h):
    t = await repairing(h, SOFTWARE)
    assert t.category == "software"
    await h.say("eng_zhang", "完工")
    assert "处理说明" in await last(h, "eng_zhang")
    await h.say("eng_zhang", "完工 重启了登录服务")
    assert (await h.ticket()).state == "resolved"


async def test_the_completion_button_says_what_is_missing(h):
    await repairing(h)
    token = await h.button("engineer", "完工")
    result = await h.click("eng_zhang", token)
    assert result.refused and "还差 2 张" in result.toast
    assert (await h.ticket()).state == "repairing"


async def test_minimum_photos_per_category_and_priority_from_config(tmp_path, database_url, aiohttp_client):
    config = config_with(tmp_path, database_url, """
[tickets]
min_photos = 2
min_photos_by_priority = { P0 = 3 }
min_photos_by_category = { water_leak = 1, software = 0 }
require_resolution_note = false
""")
    h = await harness(aiohttp_client, config)
    await repairing(h)  # water_leak P0: the category's 1 wins
    await h.say("eng_zhang", "完工")
    assert "至少 1 张" in await last(h, "eng_zhang")
    await h.photo("eng_zhang")
    await h.say("eng_zhang", "完工")  # no note needed here
    assert (await h.ticket()).state == "resolved"


async def test_photos_show_as_thumbnails_on_both_cards(h, tmp_path):
    await repairing(h)
    await h.photo("eng_zhang", jpeg(tmp_path / "a.jpg", color=(10, 10, 200)))
    await h.photo("eng_zhang", jpeg(tmp_path / "b.jpg", color=(10, 200, 10)))
    eng = (await h.cards_to("group", "engineers", "engineer"))[-1]
    status = (await h.cards_to("user", "cust_wang", "status"))[-1]
    for card in (eng, status):
        assert len(card["images"]) == 2
    assert {"label": "现场照片", "value": "2 张"} in eng["fields"]
    await h.rt.outbox.drain()
    async with h.rt.db.session() as s:
        # The card as the customer's page shows it last: updates still due together are
        # sent as their newest version, so it may arrive as the card itself.
        rows = (await s.exec(select(PlaygroundMessage).where(PlaygroundMessage.kind.in_(("card", "card_update")))
                                .order_by(PlaygroundMessage.id))).all()
    html = [r.payload["html"] for r in rows if r.conversation == "user:cust_wang" and "rd-thumb" in r.payload["html"]][-1]
    assert html.count('class="rd-thumb"') == 2 and "/playground/media/" in html


# ---- verification ----------------------------------------------------------------


@pytest.fixture
async def probe_target(aiohttp_server):
    """A local health endpoint: answers `state["status"]` and records the paths asked."""
    state = {"status": 503, "paths": []}

    async def health(request):
        state["paths"].append(request.raw_path)
        return web.Response(status=state["status"], text="ok" if state["status"] == 200 else "down")

    app = web.Application()
    app.router.add_get("/health/{number}/{location}", health)
    server = await aiohttp_server(app)
    state["base"] = f"http://127.0.0.1:{server.port}"
    return state


async def test_a_failing_probe_holds_the_ticket_in_verification(tmp_path, database_url, aiohttp_client, probe_target):
    config = config_with(tmp_path, database_url, f"""
[[probes]]
category = "water_leak"
url = "{probe_target['base']}/health/{{number}}/{{location}}"
expect_status = 200
timeout = "2s"
retries = 1
retry_delay = "10ms"
""")
    h = await harness(aiohttp_client, config)
    t = await repairing(h)
    await h.photo("eng_zhang")
    await h.photo("eng_zhang")
    await h.say("eng_zhang", "完工 更换了机封")
    assert "正在进行完工验证" in await last(h, "eng_zhang")
    assert probe_target["paths"] == []  # the check runs after the 完工 committed, not inside it
    assert await h.rt.escalation.run_verifications() == 1
    assert await h.rt.escalation.run_verifications() == 0  # answered: nothing left to run
    t = await h.ticket()
    assert t.state == "verifying" and t.resolved_at is None
    told = await last(h, "eng_zhang")
    assert "验证未通过" in told and "503" in told and "2 次" in told
    assert not any("已完工" in x for x in await h.texts_to("user", "cust_wang"))
    assert not await h.cards_to("user", "cust_wang", "rating")
    assert probe_target["paths"][0] == f"/health/{t.number}/3%E5%8F%B7%E7%BA%BF"
    eng = (await h.cards_to("group", "engineers", "engineer"))[-1]
    assert {"label": "状态", "value": "待验证"} in eng["fields"]
    assert [b["label"] for b in eng["buttons"]][0] == "完工"

    probe_target["status"] = 200
    await h.say("eng_zhang", "完工 更换了机封，复测正常")
    assert (await h.ticket()).state == "verifying"
    assert await h.rt.escalation.run_verifications() == 1
    t = await h.ticket()
    assert (t.state, t.resolution) == ("resolved", "更换了机封，复测正常")
    assert "验证通过" in await last(h, "eng_zhang")
    assert await h.cards_to("user", "cust_wang", "rating")
    assert any("已完工" in x for x in await h.texts_to("user", "cust_wang"))
    probes = [e for e in await h.events(t.id) if e.action == "probe"]
    assert [(p.detail["ok"], p.detail["status"], p.detail["attempts"]) for p in probes] == [
        (False, 503, 2), (True, 200, 1)]
    assert [a for a in await actions(h, t.id) if a in ("verify_submitted", "probe", "verify_failed", "resolve")] == [
        "verify_submitted", "probe", "verify_failed", "verify_submitted", "probe", "resolve"]


async def test_a_failing_probe_by_button_tells_the_engineer_in_chat(tmp_path, database_url, aiohttp_client,
                                                                    probe_target):
    config = config_with(tmp_path, database_url, f"""
[tickets]
min_photos_by_category = {{ water_leak = 0 }}
require_resolution_note = false

[[probes]]
team = "maint"
url = "{probe_target['base']}/health/{{number}}/{{location}}"
timeout = "2s"
retries = 0
""")
    h = await harness(aiohttp_client, config)
    await repairing(h)
    result = await h.click("eng_zhang", await h.button("engineer", "完工"))
    assert "验证中" in result.toast
    assert await h.rt.escalation.run_verifications() == 1
    assert (await h.ticket()).state == "verifying"
    told = await last(h, "eng_zhang")
    assert "验证未通过" in told and "503" in told and "1 次" in told


def test_probe_config_errors_name_the_key(tmp_path):
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match=r"probes\[0\]: .*unknown field \{floor\}"):
        config_with(tmp_path, "sqlite+aiosqlite:///x.db", '[[probes]]\nurl = "http://x/{floor}"\n')
    with pytest.raises(ConfigError, match=r"probes\[0\]\.team: unknown team 'nope'"):
        config_with(tmp_path, "sqlite+aiosqlite:///x.db", '[[probes]]\nteam = "nope"\nurl = "http://x/"\n')


# ---- follow-up ---------------------------------------------------------------------


async def resolved(h: Harness):
    await repairing(h, SOFTWARE)
    await h.say("eng_zhang", "完工 重启了服务")
    return await h.ticket()


async def test_a_low_rating_opens_a_follow_up_for_the_lead(h):
    t = await resolved(h)
    await h.say("cust_wang", "评价 1 太慢了")
    t = await h.ticket()
    assert (t.state, t.rating) == ("closed", 1)
    async with h.rt.db.session() as s:
        fu = (await s.exec(select(FollowUp))).one()
    assert (fu.owner_id, fu.stars, fu.comment, fu.state) == ("lead_zhao", 1, "太慢了", "open")
    assert timedelta(hours=47, minutes=59) < fu.due_at - fu.opened_at <= timedelta(hours=48)
    card = (await h.cards_to("user", "lead_zhao", "followup"))[-1]
    assert {"label": "客户意见", "value": "太慢了"} in card["fields"]
    assert any("太慢了" in x for x in await h.texts_to("user", "lead_zhao"))
    # The rating card and the follow-up card are different cards: separate track keys.
    rating = (await h.cards_to("user", "cust_wang", "rating"))[-1]
    assert rating["track_key"] != card["track_key"]
    assert all(c["kind"] == "followup" for c in await h.cards_to("user", "lead_zhao")
               if c["track_key"] == card["track_key"])

    await h.say("lead_zhao", "我的工单")
    board = await last(h, "lead_zhao")
    assert "待回访" in board and t.number in board and "太慢了" in board

    await h.say("eng_zhang", f"回访完成 {t.number} 已致电")
    assert "由 赵组长 负责" in await last(h, "eng_zhang")
    await h.say("lead_zhao", f"回访完成 {t.number}")
    assert "回访说明" in await last(h, "lead_zhao")
    await h.say("lead_zhao", "回访完成")
    assert "请写上单号" in await last(h, "lead_zhao")
    await h.say("lead_zhao", f"回访完成 {t.number} 已电话致歉，说明了备件到货慢的原因")
    assert "回访已完成" in await last(h, "lead_zhao")
    await h.say("lead_zhao", f"回访完成 {t.number} 已电话致歉")
    assert "已经记录过了" in await last(h, "lead_zhao")
    done = (await h.cards_to("user", "lead_zhao", "followup"))[-1]
    assert {"label": "回访结果", "value": "已电话致歉，说明了备件到货慢的原因"} in done["fields"]
    assert "followup_done" in await actions(h, t.id)
    await h.say("lead_zhao", "我的工单")
    assert "待回访" not in await last(h, "lead_zhao")


async def test_a_fair_rating_opens_none_and_a_late_follow_up_escalates(h):
    t = await resolved(h)
    await h.say("cust_wang", "评价 3")
    async with h.rt.db.session() as s:
        assert (await s.exec(select(FollowUp))).all() == []

    await h.say("cust_wang", "MES又登录不了")
    await h.say("eng_zhang", f"认领 {(await h.ticket()).number}")
    await h.say("eng_zhang", "完工 清了缓存")
    await h.say("cust_wang", "评价 2")
    later = datetime.now(timezone.utc) + timedelta(hours=49)
    async with h.rt.db.session() as s:
        assert await followup.sweep(s, h.rt.config, later, h.rt.notifier.remind_followup) == 1
    async with h.rt.db.session() as s:  # its one step fired: nothing more
        assert await followup.sweep(s, h.rt.config, later, h.rt.notifier.remind_followup) == 0
    assert await h.cards_to("user", "director_sun", "followup")
    assert any("回访已超时" in x for x in await h.texts_to("user", "director_sun"))
    assert t.id != (await h.ticket()).id


# ---- the right people ------------------------------------------------------------


async def test_reporting_for_a_customer_by_mention(h):
    await h.say("eng_zhang", "报修 @王经理 3号楼消防泵漏水", group=True, mentions=("cust_wang",))
    t = await h.ticket()
    assert t.reporter_id == "cust_wang"
    assert (t.reporter_conv_kind, t.reporter_conv_id) == ("user", "cust_wang")
    assert t.summary == "3号楼消防泵漏水"
    assert any(t.number in x for x in await h.texts_to("user", "cust_wang"))
    assert await h.cards_to("user", "cust_wang", "status")
    assert not await h.cards_to("group", "engineers", "status")
    assert "已代 王经理 报修" in (await h.texts_to("group", "engineers"))[-1]
    report = (await h.events(t.id))[0]
    assert (report.actor_id, report.detail["customer"]) == ("eng_zhang", "cust_wang")
    await h.say("eng_li", f"认领 {t.number}")
    assert any("李工" in x and "已接单" in x for x in await h.texts_to("user", "cust_wang"))


async def test_reporting_for_a_customer_by_phone_number(h):
    await h.say("eng_zhang", "报修 13800000001 2号车间空压机不启动了")  # 王经理's number
    assert (await h.ticket()).reporter_id == "cust_wang"
    # Another place: the same place within the incident window would be linked to the first.
    await h.say("eng_zhang", "报修 客户电话13912345678，5号车间空压机不启动了")
    t = await h.ticket()
    assert t.reporter_id == "tel:13912345678"
    async with h.rt.db.session() as s:
        p = await s.get(Person, "tel:13912345678")
    assert (p.role, p.phone) == ("customer", "13912345678")
    # Nobody's chat is known: the staff member who reported hears the updates to relay.
    assert (t.reporter_conv_kind, t.reporter_conv_id) == ("user", "eng_zhang")
    assert (await h.events(t.id))[0].detail["region"] == "华东"  # 江苏省常州市, from the number


async def test_reporting_for_a_customer_named_first(h):
    await h.say("eng_zhang", "报修 王经理反映3号楼消防泵漏水", group=True)
    t = await h.ticket()
    assert (t.reporter_id, t.reporter_conv_id, t.summary) == ("cust_wang", "cust_wang", "王经理反映3号楼消防泵漏水")
    # Nobody named: the staff member's own ticket, its card in their own chat, not the group's.
    await h.say("eng_li", "报修 2号车间空压机不启动了", group=True)
    t = await h.ticket()
    assert (t.reporter_id, t.reporter_conv_kind, t.reporter_conv_id) == ("eng_li", "user", "eng_li")
    assert await h.cards_to("user", "eng_li", "status")
    assert not await h.cards_to("group", "engineers", "status")


async def test_reporting_for_somebody_unknown_is_refused(h):
    await h.say("eng_zhang", "报修 @刘总 3号楼消防泵漏水")
    assert "没有找到“刘总”" in await last(h, "eng_zhang")
    assert await h.tickets() == []


async def test_the_suggested_engineer_is_shown_as_a_suggestion_until_claimed(h):
    await h.say("cust_wang", LEAK)
    t = await h.ticket()
    assert t.assignee_id == "eng_zhang"  # the leak specialist
    card = (await h.cards_to("group", "engineers", "engineer"))[0]
    fields = {f["label"]: f["value"] for f in card["fields"]}
    assert "负责人" not in fields
    assert fields["建议指派"].startswith("张工 · 擅长漏水渗水 · 华东 · 手上 0 单")
    await h.say("cust_wang", "进度")
    progress = await last(h, "cust_wang")
    assert "建议指派：张工" in progress and "工程师：张工" not in progress
    await h.say("cust_wang", "取消")
    fields = {f["label"]: f["value"] for f in (await h.cards_to("group", "engineers", "engineer"))[-1]["fields"]}
    assert "负责人" not in fields and "建议指派" not in fields


async def test_dispatch_weighs_skill_load_and_on_call(h):
    await h.say("cust_wang", "变频器报警E.OC3")
    t = await h.ticket()
    assert (t.category, t.assignee_id) == ("inverter_alarm", "eng_li")
    # Seven leaks in 张工's hands outweigh his skill (4 for the skill and 1.5 for
    # being on call against 1 per ticket in hand): the next leak goes to 李工.
    for i in range(7):
        await h.say("cust_wang", f"{i + 4}号线水泵漏水")
        await h.say("eng_zhang", f"认领 {(await h.ticket()).number}")
    await h.say("cust_wang", "19号线水泵漏水")
    t = await h.ticket()
    report = (await h.events(t.id))[0].detail
    oncall = h.rt.escalation.oncall.who("maint", datetime.now(timezone.utc)).person_id
    assert (t.assignee_id, report["load"], report["skill"]) == ("eng_li", 1, False)
    assert report["oncall"] == (oncall == "eng_li")


def test_customer_region_from_the_directory_or_the_mobile_number(make_config):
    d = Dispatcher(make_config())
    assert phone_location("13912345678") == "江苏省常州市"
    assert d.region_of(Person(id="a", name="a", role="customer", phone="13912345678")) == "华东"
    assert d.region_of(Person(id="b", name="b", role="customer", phone="13501001234")) == "华北"
    assert d.region_of(Person(id="c", name="c", role="customer", region="华南", phone="13501001234")) == "华南"
    assert d.region_of(Person(id="d", name="d", role="customer", phone="12345")) is None


TWO_TEAMS = """
[[teams]]
id = "maint2"
name = "维修二组"
region = "华北"
skills = ["software"]
lead = "lead_qian"
groups = { playground = "engineers2" }

[[people]]
id = "lead_qian"
name = "钱组长"
role = "lead"
team = "maint2"
identities = { playground = "lead_qian" }

[[people]]
id = "eng_wu"
name = "吴工"
role = "engineer"
team = "maint2"
identities = { playground = "eng_wu" }
"""


async def test_transfer_to_a_team_and_transfer_refusals(tmp_path, database_url, aiohttp_client):
    h = await harness(aiohttp_client, config_with(tmp_path, database_url, TWO_TEAMS))
    await h.say("cust_wang", LEAK)
    t = await h.ticket()
    await h.say("eng_zhang", f"认领 {t.number}")
    await h.say("eng_zhang", "转交 孙总监")
    assert "孙总监 不是工程师或组长" in await last(h, "eng_zhang")
    await h.say("eng_zhang", "转交 王经理")
    assert "王经理 不是工程师或组长" in await last(h, "eng_zhang")
    await h.say("eng_zhang", "转交 张工")
    assert "不能转交给自己" in await last(h, "eng_zhang")
    async with h.rt.db.session() as s:
        li = await s.get(Person, "eng_li")
        li.active = False
        s.add(li)
    await h.say("eng_zhang", "转交 李工")
    assert "李工 已停用" in await last(h, "eng_zhang")
    assert (await h.ticket()).assignee_id == "eng_zhang"

    await h.say("eng_zhang", "转交 维修二组")
    assert "已把工单" in await last(h, "eng_zhang") and "维修二组" in await last(h, "eng_zhang")
    t = await h.ticket()
    assert (t.team, t.assignee_id, t.state) == ("maint2", "lead_qian", "transferred")
    assert any("转交给你" in x for x in await h.texts_to("user", "lead_qian"))
    card = (await h.cards_to("group", "engineers2", "engineer"))[-1]
    assert card["subtitle"] == t.number
    await h.say("eng_wu", f"认领 {t.number}")
    assert (await h.ticket()).assignee_id == "eng_wu"


async def test_a_phone_acknowledgement_updates_cards_and_tells_the_group(h):
    await h.say("cust_wang", LEAK)
    await h.click("eng_zhang", await h.button("engineer", "加急"))
    esc_before = len(await h.cards_to("user", "lead_zhao", "escalation"))
    ticket_id = (await h.ticket()).id
    async with h.rt.db.session() as s:
        ticket = await h.rt.service.get(s, ticket_id)
        lead = await s.get(Person, "lead_zhao")
        change = await h.rt.service.acknowledge(s, Actor(lead, "twilio", "phone"), ticket)
        await h.rt.notifier.after(s, change)
    assert any("赵组长 已通过电话确认" in x for x in await h.texts_to("group", "engineers"))
    assert len(await h.cards_to("user", "lead_zhao", "escalation")) > esc_before


# ---- providers ---------------------------------------------------------------------


PROVIDER = """
[[teams]]
id = "ext"
name = "安泰维保"
provider = true
skills = ["software"]
groups = { playground = "provider" }
sla = { P0 = { respond = "15m", resolve = "2h" }, P1 = { respond = "1h", resolve = "8h" }, P2 = { respond = "4h", resolve = "48h" } }

[[people]]
id = "eng_ext"
name = "外协周工"
role = "engineer"
team = "ext"
identities = { playground = "eng_ext" }
"""


async def test_a_provider_team_runs_on_its_own_sla_with_a_countdown(tmp_path, database_url, aiohttp_client):
    h = await harness(aiohttp_client, config_with(tmp_path, database_url, PROVIDER))
    await h.say("cust_wang", SOFTWARE)  # software: the provider's skill
    t = await h.ticket()
    assert (t.team, t.assignee_id) == ("ext", "eng_ext")
    assert timedelta(minutes=59) < t.respond_by - t.created_at <= timedelta(hours=1)  # its P1 SLA
    card = (await h.cards_to("group", "provider", "engineer"))[-1]
    countdown = {f["label"]: f["value"] for f in card["fields"]}["服务商时限"]
    assert countdown.startswith("安泰维保 · 剩 0 小时 59 分") or countdown.startswith("安泰维保 · 剩 1 小时 0 分")
    # Handed to the provider mid-way, a ticket gets the provider's clock from then on.
    await h.say("cust_wang", LEAK)
    leak = await h.ticket()
    await h.say("eng_zhang", f"认领 {leak.number}")
    await h.say("eng_zhang", "转交 安泰维保")
    leak = await h.ticket(leak.number)
    assert leak.team == "ext"
    assert timedelta(minutes=14, seconds=59) < leak.respond_by - leak.updated_at <= timedelta(minutes=15)
    assert "服务商时限" in {f["label"] for f in (await h.cards_to("group", "provider", "engineer"))[-1]["fields"]}


def test_a_provider_sla_must_cover_every_priority(tmp_path):
    from bot.config import ConfigError

    broken = PROVIDER.replace(', P2 = { respond = "4h", resolve = "48h" }', "")
    with pytest.raises(ConfigError, match=r"teams\[1\]\.sla: deadlines missing for P2"):
        config_with(tmp_path, "sqlite+aiosqlite:///x.db", broken)


# ---- the trail -------------------------------------------------------------------


async def test_the_trail_for_staff_and_the_timeline_for_the_customer(h):
    await h.say("cust_wang", LEAK)
    t = await h.ticket()
    await h.click("eng_zhang", await h.button("engineer", "认领"))
    await h.say("eng_zhang", "开始维修")
    await h.photo("eng_zhang")
    await h.say("lead_zhao", f"记录 {t.number}")
    trail = await last(h, "lead_zhao")
    assert f"工单 {t.number} 操作记录" in trail
    assert "王经理 报修（演示页 · 文字）" in trail
    assert "张工 认领（演示页 · 按钮）" in trail
    assert "张工 上传照片（演示页 · 文字）：拍摄时间按收到时间，计入完工照片" in trail
    await h.say("cust_wang", f"记录 {t.number}")
    timeline = await last(h, "cust_wang")
    assert "已报修" in timeline and "工程师已接单" in timeline and "开始维修" in timeline
    assert "上传照片" not in timeline and "张工" not in timeline
    await h.say("stranger", f"记录 {t.number}")
    assert "不是您报的单" in await last(h, "stranger")
    events = await h.events(t.id)
    assert all(isinstance(e, TicketEvent) for e in events)


def test_what_the_shipped_default_does(make_config):
    """The embedded default: 2 photos on site, none for software / office IT, a note;
    a rating of 2 or less opens a 48 h follow-up that reminds the director when late;
    no probes; customers placed by mobile number in 华东 / 华北 / 华南."""
    c = make_config()
    assert (c.tickets.min_photos, c.tickets.min_photos_by_category, c.tickets.require_resolution_note) == (
        2, {"software": 0, "office_it": 0}, True)
    assert (c.followup.enabled, c.followup.threshold, c.followup.deadline) == (True, 2, timedelta(hours=48))
    assert [(s.after, s.targets) for s in c.followup.steps] == [(timedelta(0), ["director"])]
    assert c.probes == [] and not any(t.provider for t in c.teams)
    assert set(c.dispatch.regions) == {"华东", "华北", "华南"}
    assert all(sk in {"water_leak", "seal", "flow", "pressure", "motor", "trip", "electric_leak",
                      "inverter_alarm", "control_plc"} for p in c.people for sk in p.skills)


def test_skills_that_are_not_category_ids_are_named(tmp_path):
    from bot.core.dispatch import unknown_skills

    config = config_with(tmp_path, "sqlite+aiosqlite:///x.db")
    config.teams[0].skills.append("泵")
    assert unknown_skills(config, {"water_leak", "seal", "flow", "pressure", "motor", "trip", "electric_leak",
                                   "inverter_alarm", "control_plc"}) == ["teams[0].skills: '泵'"]
