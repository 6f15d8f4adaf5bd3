"""The Feishu card renderer (message-card JSON 1.0) and the inbound text helpers."""
from __future__ import annotations

import json

from bot.channels.feishu.adapter import neutralize, parse_post, resolve_mentions, text_content
from bot.channels.feishu.render import button_token, card_content, render_card
from cards.model import Button, Card, CardField, TimelineStep

BOT = "ou_bot"


def _card(**kw) -> Card:
    base = dict(
        kind="engineer", title="【P0】水泵故障", color="red", subtitle="SRV-20260126-00001-AAA",
        fields=(CardField("故障类别", "水泵故障"), CardField("位置", "3号线")),
        body="3号泵不出水，整条线停着",
        buttons=(Button("认领", "tok_claim", "primary"), Button("加急", "tok_esc", "danger")),
        footer="张工 · 已认领", track_key="t1:eng",
    )
    base.update(kw)
    return Card(**base)


def _texts(card_json: dict) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("tag") in ("plain_text", "lark_md"):
                out.append(node["content"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(card_json)
    return out


def test_shared_card_json_1_0_with_buttons_carrying_the_tokens():
    j = render_card(_card())
    assert j["config"]["update_multi"] is True
    assert "schema" not in j  # JSON 1.0 everywhere
    assert j["header"] == {"template": "red", "title": {"tag": "plain_text", "content": "【P0】水泵故障"}}
    actions = [e for e in j["elements"] if e["tag"] == "action"]
    assert len(actions) == 1
    buttons = actions[0]["actions"]
    assert [(b["text"]["content"], b["type"], b["value"]) for b in buttons] == [
        ("认领", "primary", {"token": "tok_claim"}),
        ("加急", "danger", {"token": "tok_esc"}),
    ]
    texts = _texts(j)
    assert "3号泵不出水，整条线停着" in texts and "SRV-20260126-00001-AAA" in texts
    assert "故障类别：水泵故障" in texts and "张工 · 已认领" in texts


def test_timeline_and_colours():
    card = _card(kind="status", color="grey", buttons=(), timeline=(
        TimelineStep("已接单", "done", "10:02"), TimelineStep("工程师出发", "current", "10:05"),
        TimelineStep("到达现场", "todo")))
    j = render_card(card)
    assert j["header"]["template"] == "grey"
    assert not [e for e in j["elements"] if e["tag"] == "action"]
    assert "✅ 已接单  10:02\n🔵 工程师出发  10:05\n⚪ 到达现场" in _texts(j)


def test_people_text_cannot_inject_markdown_or_mentions():
    evil = "**粗** [链接](http://x) <at id=all></at>"
    j = render_card(_card(body=evil, fields=(CardField("位置", evil),), title=evil))
    for node in json.dumps(j, ensure_ascii=False).split('"tag":"lark_md"')[1:]:
        raise AssertionError(f"lark_md used without mentions: {node[:80]}")
    assert evil in _texts(j)


def test_mentions_line_only_for_valid_ids():
    j = render_card(_card(), mentions=("ou_abc", "ou_x></at><at id=all"))
    first = j["elements"][0]
    assert first == {"tag": "div", "text": {"tag": "lark_md", "content": "<at id=ou_abc></at>"}}


def test_card_content_is_compact_json_string_and_deterministic():
    a, b = card_content(_card()), card_content(Card.from_dict(_card().to_dict()))
    assert a == b and json.loads(a)["config"]["update_multi"] is True
    assert "认领" in a  # not \u-escaped


def test_button_token_reading():
    assert button_token({"token": "abc"}) == "abc"
    assert button_token("abc") == "abc"
    assert button_token('{"token": "abc"}') == "abc"
    assert button_token({}) is None and button_token(None) is None and button_token({"token": 5}) is None


def test_mentions_resolved_in_text():
    mentions = [
        {"key": "@_user_1", "id": {"open_id": BOT}, "name": "RelayDesk"},
        {"key": "@_user_2", "id": {"open_id": "ou_li"}, "name": "李工"},
    ]
    text, ids = resolve_mentions("@_user_1 转交 @_user_2", mentions, BOT)
    assert text == "转交 @李工" and ids == ("ou_li",)


def test_mention_keys_ten_and_one_do_not_collide():
    mentions = [{"key": f"@_user_{i}", "id": {"open_id": f"ou_{i}"}, "name": f"n{i}"} for i in range(1, 11)]
    text, ids = resolve_mentions("@_user_10 @_user_1", mentions, None)
    assert text == "@n10 @n1" and len(ids) == 10


def test_post_text_mentions_and_images():
    content = {"title": "报修", "content": [
        [{"tag": "at", "user_id": "@_user_1", "user_name": "RelayDesk"},
         {"tag": "text", "text": " 3号泵不出水 "}],
        [{"tag": "img", "image_key": "img_v2_1"}],
        [{"tag": "text", "text": "请 "}, {"tag": "at", "user_id": "@_user_2", "user_name": "张工"},
         {"tag": "text", "text": " 看看"}],
    ]}
    mentions = [{"key": "@_user_1", "id": {"open_id": BOT}, "name": "RelayDesk"},
                {"key": "@_user_2", "id": {"open_id": "ou_zhang"}, "name": "张工"}]
    text, ids, images = parse_post(content, mentions, BOT)
    assert text == "报修\n3号泵不出水\n请 @张工 看看"
    assert ids == ("ou_zhang",) and images == ["img_v2_1"]
    # The per-language wrapping used when sending posts is understood too.
    assert parse_post({"zh_cn": content}, mentions, BOT)[0] == text


def test_outbound_text_mentions_and_defused_at_tags():
    content = json.loads(text_content('客户补充：<at user_id="all"></at> 快来', ("ou_zhang", 'bad"id')))
    assert content["text"].startswith('<at user_id="ou_zhang"></at> ')
    assert '<at user_id="all">' not in content["text"] and "＜at" in content["text"]
    assert neutralize("a < b") == "a < b"
