"""WeCom renderer: template cards carry the opaque tokens unchanged and stay inside WeCom's limits."""
import re

from cards.model import Button, Card, CardField, TimelineStep
from bot.channels.wecom.render import (final_button_name, group_commands, new_task_id, render_markdown, render_status_line,
                         render_template_card)

ENGINEER = Card(
    kind="engineer", title="【P0】水泵故障", subtitle="SRV-20260126-00872-A9F", color="red",
    fields=(CardField("故障类别", "水泵故障"), CardField("优先级", "P0 业务停摆"), CardField("位置", "3号线"),
            CardField("报修人", "王经理"), CardField("状态", "待认领"), CardField("建议指派", "张工"),
            CardField("响应时限", "10:30")),
    body="3号泵又不出水了，整条线停着",
    buttons=(Button("认领", "tok-claim_A", "primary"), Button("转交", "tok-transfer", "default"),
             Button("加急", "tok-esc", "danger")),
    track_key="t1:eng",
)


def test_template_card_carries_the_tokens_as_keys():
    tc = render_template_card(ENGINEER, "rd_t1_eng_abc")
    assert tc["card_type"] == "button_interaction"
    assert tc["task_id"] == "rd_t1_eng_abc"
    assert [(b["text"], b["key"], b["style"]) for b in tc["button_list"]] == [
        ("认领", "tok-claim_A", 1), ("转交", "tok-transfer", 2), ("加急", "tok-esc", 3)]
    assert tc["main_title"] == {"title": "【P0】水泵故障", "desc": "SRV-20260126-00872-A9F"}
    assert tc["source"]["desc_color"] == 2  # red
    assert len(tc["horizontal_content_list"]) == 6
    assert "响应时限：10:30" in tc["quote_area"]["quote_text"]  # the 7th field is not lost
    assert tc["sub_title_text"].startswith("3号泵")


def test_limits_buttons_lengths():
    many = Card(kind="notice", title="T" * 80, body="长" * 400,
                buttons=tuple(Button(f"工程师{i}", f"k{i}") for i in range(9)),
                fields=(CardField("名" * 20, "值" * 80),))
    tc = render_template_card(many, "t")
    assert len(tc["button_list"]) == 6
    assert len(tc["main_title"]["title"]) <= 36 and tc["main_title"]["title"].endswith("…")
    assert len(tc["sub_title_text"]) <= 160
    assert len(tc["horizontal_content_list"][0]["value"]) <= 30


def test_task_ids_are_unique_and_well_formed():
    # Not from an outbox row: random, never repeated.
    ids = {new_task_id("t12:eng") for _ in range(200)}
    assert len(ids) == 200
    # From a row: one id per row and content, so a resend is the same message.
    by_row = {new_task_id("t12:eng", row, f"eng_zhang|{n}") for row in range(20) for n in range(10)}
    assert len(by_row) == 200
    assert new_task_id("t12:eng", 345, "eng_zhang|card") == new_task_id("t12:eng", 345, "eng_zhang|card")
    assert new_task_id("t12:eng", 345, "eng_zhang|card") != new_task_id("t12:eng", 345, "eng_li|card")
    for tid in ids | by_row:
        assert len(tid) <= 128 and re.fullmatch(r"[0-9A-Za-z_\-@]+", tid)
    assert all(tid.startswith("rd_t12_eng_o") for tid in by_row)
    assert len(new_task_id("x" * 500)) <= 128 and len(new_task_id("x" * 500, 10**12, "c")) <= 128


def test_group_markdown_lists_the_buttons_as_commands():
    md = render_markdown(ENGINEER, hint=True)
    assert "认领 SRV-20260126-00872-A9F" in md and "加急 SRV-20260126-00872-A9F" in md
    assert "水泵故障" in md and "3号泵又不出水了" in md
    assert group_commands(ENGINEER)[0] == "认领 SRV-20260126-00872-A9F"
    assert len(md.encode()) <= 2048


def test_markdown_keeps_user_text_from_making_tags():
    card = Card(kind="status", title="您的工单", body='<font color="warning">x</font> <@all>')
    md = render_markdown(card, mentions=("zhangsan",))
    assert md.startswith("<@zhangsan>")
    assert "<@all>" not in md and '<font color="warning">x' not in md


def test_long_markdown_is_cut_to_2048_bytes():
    card = Card(kind="status", title="t", body="很长的描述" * 1000,
                timeline=(TimelineStep("已接单", "done", "10:00"), TimelineStep("出发", "current")))
    md = render_markdown(card)
    assert len(md.encode()) <= 2048
    assert "✓已接单 10:00 → ●出发" in md


def test_status_line_and_final_button_name():
    claimed = Card(kind="engineer", title="【P0】水泵故障", subtitle="SRV-1", fields=(CardField("状态", "已认领"),),
                   footer="张工 · 已认领")
    assert "张工 · 已认领" in render_status_line(claimed)
    unclaimed = Card(kind="engineer", title="【P0】水泵故障", subtitle="SRV-1", fields=(CardField("状态", "待认领"),))
    assert "待认领" in render_status_line(unclaimed)
    assert final_button_name(Card(kind="rating", title="请评价", footer="您的评价：★★★★★，感谢反馈！")) \
        == "您的评价：★★★★★，感谢反馈！"
