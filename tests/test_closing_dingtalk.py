"""Closing the loop on DingTalk, through its real endpoints against a faked DingTalk:
a report on a customer's behalf, the evidence refusal and photos, a low rating's
follow-up, 回访完成, the trail and the transfer refusals, as DingTalk users see them."""
from __future__ import annotations

from sqlmodel import select

from storage.models import FollowUp
from test_dingtalk_channel import (  # noqa: F401  (fixtures)
    ENG_GROUP,
    Bot,
    bot,
    make_bot,
    post_robot,
    robot_msg,
    session_of,
)
from test_dingtalk_loop import picture_msg


def texts_to(bot: Bot, user: str) -> list[str]:
    """What a DingTalk user read, in the order sent: through their chat's sessionWebhook or the robot OpenAPI."""
    out = []
    for sent in bot.fake.sent:
        if sent["via"] == "session" and sent["session"] == session_of(user) and sent["body"]["msgtype"] == "text":
            out.append(sent["body"]["text"]["content"])
        elif sent["via"] == "openapi" and sent["to"] == user:
            out.append(sent["param"].get("content") or sent["param"].get("text"))
    return out


async def say(bot: Bot, user: str, text: str, **kw) -> None:
    assert (await post_robot(bot.client, robot_msg(user, text, **kw))).status == 200
    await bot.drain()


async def test_on_behalf_evidence_follow_up_and_trail(bot):
    # 张工 reports in the engineers' group for 王经理, @-ing him.
    await say(bot, "u_zhang", "报修 @王经理 3号楼消防泵漏水", group=ENG_GROUP, at=("u_wang",))
    ticket = await bot.ticket()
    number = ticket.number
    assert ticket.reporter_id == "cust_wang"
    assert (ticket.reporter_channel, ticket.reporter_conv_kind, ticket.reporter_conv_id) == ("dingtalk", "user", "u_wang")
    assert any(number in x for x in texts_to(bot, "u_wang"))
    assert any("已代 王经理 报修" in x for x in bot.fake.session_texts(session_of(ENG_GROUP)))
    assert bot.fake.cards("user", "u_wang", "status") and not bot.fake.cards("group", ENG_GROUP, "status")

    for text in (f"认领 {number}", "开始维修", "完工 更换了机封"):
        await say(bot, "u_zhang", text)
    assert "还差 2 张" in bot.fake.session_texts(session_of("u_zhang"))[-1]
    assert (await bot.ticket()).state == "repairing"
    for code in ("pic-a", "pic-b"):
        assert (await post_robot(bot.client, picture_msg("u_zhang", code))).status == 200
    await bot.drain()
    assert "可以完工" in bot.fake.session_texts(session_of("u_zhang"))[-1]
    await say(bot, "u_zhang", "完工")
    assert "处理说明" in bot.fake.session_texts(session_of("u_zhang"))[-1]
    await say(bot, "u_zhang", "完工 更换了机封，试机正常")
    assert (await bot.ticket()).state == "resolved"
    status = bot.fake.cards("user", "u_wang", "status")[-1]
    assert status["params"]["kind"] == "status"

    # 王经理 rates 1 with a comment: 赵组长 gets the follow-up card; the board shows it.
    await say(bot, "u_wang", f"评价 1 太慢了 {number}")
    assert (await bot.ticket()).state == "closed"
    followup = bot.fake.cards("user", "u_zhao", "followup")
    assert followup and "太慢了" in str(followup[-1]["params"])
    await say(bot, "u_zhao", "我的工单")
    assert "太慢了" in texts_to(bot, "u_zhao")[-1]
    await say(bot, "u_li", f"回访完成 {number} 已回访")
    assert "由 赵组长 负责" in texts_to(bot, "u_li")[-1]
    await say(bot, "u_zhao", f"回访完成 {number} 已电话致歉")
    async with bot.rt.db.session() as s:
        fu = (await s.exec(select(FollowUp))).one()
    assert (fu.state, fu.closed_by, fu.note) == ("done", "lead_zhao", "已电话致歉")

    # The trail for staff, the timeline for the customer.
    await say(bot, "u_zhao", f"记录 {number}")
    trail = texts_to(bot, "u_zhao")[-1]
    assert "张工 报修（钉钉 · 文字）" in trail and "拍摄时间按收到时间" in trail and "完成回访" in trail
    await say(bot, "u_wang", f"记录 {number}")
    timeline = texts_to(bot, "u_wang")[-1]
    assert "已评价" in timeline and "回访" not in timeline and "照片" not in timeline
    assert not await bot.failed()


async def test_transfer_refusals_say_why(bot):
    await say(bot, "u_wang", "2号车间空压机不启动了")
    number = (await bot.ticket()).number
    await say(bot, "u_zhang", f"认领 {number}")
    await say(bot, "u_zhang", "转交 孙总监")
    assert "孙总监 不是工程师或组长" in texts_to(bot, "u_zhang")[-1]
    await say(bot, "u_zhang", "转交 张工")
    assert "不能转交给自己" in texts_to(bot, "u_zhang")[-1]
    await say(bot, "u_zhang", "转交 维修一组")
    ticket = await bot.ticket()
    assert (ticket.state, ticket.assignee_id) == ("transferred", "lead_zhao")
    assert any("转交给你" in x for x in texts_to(bot, "u_zhao"))
