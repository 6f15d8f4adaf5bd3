"""The whole ticket loop on DingTalk, through the real endpoints, against a DingTalk faked
with respx: with interactive cards, and with the markdown fallback (no card template)."""
from __future__ import annotations

from sqlmodel import select

from bot.texts import t
from storage.models import Ticket, TicketEvent
from test_dingtalk_channel import (  # noqa: F401  (fixtures)
    ENG_GROUP,
    REPORT,
    Bot,
    bot,
    button_value,
    click,
    make_bot,
    post_robot,
    robot_msg,
    session_of,
)


def picture_msg(sender: str, code: str, **kw) -> dict:
    """A picture sent to the robot in a 1:1 chat."""
    msg = robot_msg(sender, **kw)
    msg.pop("text")
    msg.update(msgtype="picture", content={"downloadCode": code})
    return msg


def last_params(bot: Bot, out_track_id: str) -> dict:
    """The card as it looks now: its last update, else how it was created."""
    updates = bot.fake.updates(out_track_id)
    if updates:
        return updates[-1]
    return next(c for c in bot.fake.cards() if c["outTrackId"] == out_track_id)


async def test_full_loop_with_interactive_cards(bot):
    # A customer reports in a 1:1 chat.
    assert (await post_robot(bot.client, robot_msg("u_wang", REPORT))).status == 200
    await bot.drain()
    ticket = await bot.ticket()
    number = ticket.number
    group_card = bot.fake.cards("group", ENG_GROUP, "engineer")[0]
    claim = button_value(group_card, "认领")
    before_claim = [c["outTrackId"] for c in bot.fake.cards(card_kind="engineer")]

    # The customer clicking 认领 is told politely, nothing changes.
    r = await click(bot.client, "u_wang", group_card["outTrackId"], claim)
    assert r.status == 200
    refusal = t("refuse.customer_cannot_claim")
    assert (await r.json())["userPrivateData"]["cardParamMap"]["toast"] == refusal
    assert (await bot.ticket()).state == "new"
    await bot.drain()
    assert refusal in bot.fake.session_texts(session_of("u_wang"))

    # 张工 claims from the group card; the clicked card changes at once.
    r = await click(bot.client, "u_zhang", group_card["outTrackId"], claim)
    assert r.status == 200
    answer = await r.json()
    assert answer["cardData"]["cardParamMap"]["footer"].startswith("张工")
    assert answer["cardUpdateOptions"]["updateCardDataByKey"] is True
    ticket = await bot.ticket()
    assert (ticket.state, ticket.assignee_id) == ("claimed", "eng_zhang")
    await bot.drain()
    # Every engineer card sent before is updated in place, so everyone sees who claimed.
    for out_track_id in before_claim:
        assert any(u["params"]["footer"].startswith("张工") for u in bot.fake.updates(out_track_id)), out_track_id
    # The customer is told who is coming.
    told = bot.fake.session_texts(session_of("u_wang"))
    assert any("张工" in x and number in x for x in told)

    # Stages: 出发 by button, 到达 by @robot in the group, the rest in 张工's 1:1 chat.
    depart = button_value(last_params(bot, group_card["outTrackId"]), "出发")
    assert (await click(bot.client, "u_zhang", group_card["outTrackId"], depart)).status == 200
    assert (await post_robot(bot.client, robot_msg("u_zhang", "到达", group=ENG_GROUP))).status == 200
    assert (await post_robot(bot.client, robot_msg("u_zhang", "开始维修"))).status == 200
    # 完工 needs two on-site photos taken after 开始维修 (the default for on-site work).
    await post_robot(bot.client, robot_msg("u_zhang", "完工 更换了机封，试机正常"))
    assert (await bot.ticket()).state == "repairing"
    for code in ("pic-1", "pic-2"):
        assert (await post_robot(bot.client, picture_msg("u_zhang", code))).status == 200
    assert (await post_robot(bot.client, robot_msg("u_zhang", "完工 更换了机封，试机正常"))).status == 200
    ticket = await bot.ticket()
    assert (ticket.state, ticket.resolution) == ("resolved", "更换了机封，试机正常")
    await bot.drain()

    # The rating card reaches the customer; a click on ★★★★★ closes the ticket.
    rating = bot.fake.cards("user", "u_wang", "rating")[-1]
    five = button_value(rating, "★★★★★")
    r = await click(bot.client, "u_wang", rating["outTrackId"], five)
    assert r.status == 200
    assert "★★★★★" in (await r.json())["cardData"]["cardParamMap"]["footer"]
    ticket = await bot.ticket()
    assert (ticket.state, ticket.rating) == ("closed", 5)
    await bot.drain()
    assert not await bot.failed()

    async with bot.rt.db.session() as s:
        events = (await s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                               .order_by(TicketEvent.id))).all()
    assert [(e.action, e.channel) for e in events] == [
        ("report", "dingtalk"), ("claim", "dingtalk"), ("depart", "dingtalk"), ("arrive", "dingtalk"),
        ("start_repair", "dingtalk"), ("photo", "dingtalk"), ("photo", "dingtalk"), ("resolve", "dingtalk"),
        ("rate", "dingtalk")]
    # At the end the engineers' card has no buttons left.
    assert last_params(bot, group_card["outTrackId"])["params"]["has_buttons"] == "false"
    told = "\n".join(bot.fake.session_texts(session_of("u_wang")))
    for name_in_text in ("张工",):
        assert name_in_text in told
    # One token for all of it.
    assert bot.fake.tokens.call_count == 1


async def test_full_loop_with_markdown_cards_and_text_commands(make_bot):
    bot = await make_bot(cards=False)
    assert (await post_robot(bot.client, robot_msg("u_wang", REPORT))).status == 200
    await bot.drain()
    number = (await bot.ticket()).number
    # No template: the engineers' group gets a markdown message through the robot OpenAPI
    # (nobody wrote there yet, so there is no sessionWebhook), with the commands spelled out.
    group_md = [s for s in bot.fake.sent if s["via"] == "openapi" and s["to"] == ENG_GROUP]
    assert group_md and group_md[0]["msgKey"] == "sampleMarkdown"
    assert f"认领 {number}" in group_md[0]["param"]["text"]
    assert not bot.fake.cards()
    assert (await bot.client.post("/callbacks/dingtalk/card", data=b"{}")).status == 404

    # A customer typing an engineer's command is told what they may do.
    await post_robot(bot.client, robot_msg("u_wang", f"认领 {number}"))
    assert (await bot.ticket()).state == "new"

    # 张工 claims by typing the command in the group (@robot).
    await post_robot(bot.client, robot_msg("u_zhang", f"认领 {number}", group=ENG_GROUP))
    ticket = await bot.ticket()
    assert (ticket.state, ticket.assignee_id) == ("claimed", "eng_zhang")
    await bot.drain()
    group_session = [s["body"] for s in bot.fake.sent if s["via"] == "session" and s["session"] == session_of(ENG_GROUP)]
    texts = [b for b in group_session if b["msgtype"] == "text"]
    assert texts and texts[0]["at"]["atUserIds"] == ["u_zhang"] and "@u_zhang" in texts[0]["text"]["content"]
    markdown = [b["markdown"]["text"] for b in group_session if b["msgtype"] == "markdown"]
    assert markdown and "张工" in markdown[-1] and f"出发 {number}" in markdown[-1]
    customer = bot.fake.session_texts(session_of("u_wang"))
    assert t("refuse.customer_command", command=f"认领 {number}"[:20]) in customer
    assert any("张工" in x for x in customer)

    for text in ("出发", "到达", "开始维修"):
        assert (await post_robot(bot.client, robot_msg("u_zhang", text))).status == 200
    for code in ("pic-1", "pic-2"):
        assert (await post_robot(bot.client, picture_msg("u_zhang", code))).status == 200
    assert (await post_robot(bot.client, robot_msg("u_zhang", "完工 更换了机封"))).status == 200
    await bot.drain()
    rating = [x for x in bot.fake.session_texts(session_of("u_wang")) if f"评价 5 {number}" in x]
    assert rating
    await post_robot(bot.client, robot_msg("u_wang", f"评价 5 {number}"))
    async with bot.rt.db.session() as s:
        ticket = (await s.exec(select(Ticket).where(Ticket.number == number))).one()
    assert (ticket.state, ticket.rating) == ("closed", 5)
    await bot.drain()
    assert not await bot.failed()
