"""The DingTalk renderer: interactive-card parameters and the markdown fallback."""
from __future__ import annotations

import json

from bot.core.commands import parse_command
from bot.channels.dingtalk.render import BUTTON_SLOTS, PARAM_KEYS, action_value, card_markdown, card_params, clip, ticket_number
from cards.model import Button, Card, CardField, TimelineStep

NUMBER = "SRV-20260126-00872-A9F"


def engineer_card(**kw) -> Card:
    base = dict(
        kind="engineer", title="【P0】水泵故障", subtitle=NUMBER, color="red",
        fields=(CardField("故障类别", "水泵"), CardField("位置", "3号线")),
        body="3号泵又不出水了,整条线停着",
        buttons=(Button("认领", "tok-claim", "primary"), Button("转交", "tok-transfer"),
                 Button("加急", "tok-esc", "danger")),
        footer=None, track_key="t1:eng",
    )
    base.update(kw)
    return Card(**base)


def test_params_are_all_strings_and_buttons_carry_the_tokens():
    params = card_params(engineer_card())
    assert set(params) == set(PARAM_KEYS)
    assert all(isinstance(v, str) for v in params.values())
    buttons = json.loads(params["buttons"])
    assert buttons == [{"label": "认领", "value": "tok-claim", "style": "primary"},
                       {"label": "转交", "value": "tok-transfer", "style": "default"},
                       {"label": "加急", "value": "tok-esc", "style": "danger"}]
    assert params["b1_value"] == "tok-claim" and params["b3_style"] == "danger"
    assert params["b4_label"] == params["b4_value"] == "" and params[f"b{BUTTON_SLOTS}_value"] == ""
    assert params["has_buttons"] == "true" and params["button_count"] == "3"
    assert params["color"] == "red" and params["color_hex"].startswith("#")
    assert params["subtitle"] == NUMBER
    assert json.loads(params["fields"])[1] == {"label": "位置", "value": "3号线"}
    assert "**位置**：3号线" in params["fields_md"]


def test_timeline_and_empty_buttons():
    card = Card(kind="status", title=f"您的工单 {NUMBER}", timeline=(
        TimelineStep("已接单", "done", "09:12"), TimelineStep("工程师出发", "current", "09:30"),
        TimelineStep("到达现场", "todo")))
    params = card_params(card)
    assert params["has_buttons"] == "false" and json.loads(params["buttons"]) == []
    assert json.loads(params["timeline"])[0] == {"label": "已接单", "state": "done", "at": "09:12"}
    assert "✅ 已接单 09:12" in params["timeline_md"] and "⚪ 到达现场" in params["timeline_md"]


def test_long_values_are_clipped_to_the_platform_limit():
    params = card_params(engineer_card(body="泵" * 2000))
    assert len(params["body"].encode()) <= 1000
    assert len(params["markdown"].encode()) <= 1000
    assert clip("abc") == "abc"


def test_action_value_from_callback_params():
    assert action_value({"value": "tok"}) == "tok"
    assert action_value({"action_token": "tok2"}) == "tok2"
    for bad in (None, {}, {"value": ""}, {"value": 3}, "tok"):
        assert action_value(bad) is None


def test_markdown_fallback_lists_commands_the_core_understands():
    title, text = card_markdown(engineer_card())
    assert title == "【P0】水泵故障"
    assert NUMBER in text and "3号泵又不出水了" in text
    commands = [line.split("“", 1)[1].split("”", 1)[0] for line in text.splitlines() if "“" in line]
    assert commands[0] == f"认领 {NUMBER}"
    parsed = [parse_command(c) for c in commands]
    assert [p.name for p in parsed] == ["claim", "transfer", "escalate"]
    assert all(p.number == NUMBER for p in parsed)
    assert "tok-claim" not in text  # tokens are not for people


def test_markdown_fallback_rating_and_transfer_picker():
    rating = Card(kind="rating", title=f"请为本次服务评价 · {NUMBER}",
                  buttons=tuple(Button("★" * n, f"r{n}") for n in range(5, 0, -1)))
    _, text = card_markdown(rating)
    cmd = parse_command(f"评价 4 {NUMBER}")
    assert f"评价 4 {NUMBER}" in text and cmd.name == "rate" and cmd.stars == 4
    picker = Card(kind="notice", title=f"转交工单 {NUMBER}", buttons=(Button("李工", "x"),))
    _, text = card_markdown(picker)
    assert f"转交 @李工 {NUMBER}" in text


def test_markdown_defuses_line_starts():
    _, text = card_markdown(Card(kind="notice", title="t", body="# not a heading\n- not a list"))
    assert "\\# not a heading" in text and "\\- not a list" in text


def test_ticket_number_lookup():
    assert ticket_number(engineer_card()) == NUMBER
    assert ticket_number(Card(kind="x", title="no number")) is None

