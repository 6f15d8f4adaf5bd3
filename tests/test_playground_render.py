"""The playground's card and text renderer (bot/channels/playground/render.py)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from cards.model import Button, Card, CardField, TimelineStep
from bot.channels.playground.render import render_card_html, render_text_html

LABELS = ("已接单", "工程师出发", "到达现场", "维修中", "完工待评", "已评价")


class _Tree(HTMLParser):
    """Start tags with their attributes, and whether the markup is balanced."""

    VOID = {"br", "img", "input", "hr"}

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def _card(**kw) -> Card:
    base = dict(
        kind="engineer",
        title="【P0】水泵故障",
        subtitle="SRV-20260126-00872-0J5",
        color="red",
        fields=(CardField("故障类别", "水泵"), CardField("位置", "3号线")),
        body="3号线水泵漏水停机了",
        buttons=(Button("认领", "tok-claim", "primary"), Button("转交", "tok-transfer"), Button("加急", "tok-esc", "danger")),
        footer="张工 · 已认领",
        track_key="t1:eng",
    )
    base.update(kw)
    return Card(**base)


def test_card_root_carries_track_key_kind_and_colour():
    tree = _Tree(render_card_html(_card()))
    assert not tree.stack
    root_tag, root = tree.tags[0]
    assert root_tag == "div"
    assert root["data-track-key"] == "t1:eng"
    assert root["data-kind"] == "engineer"
    assert root["data-color"] == "red"
    assert "rd-card" in root["class"].split() and "rd-card-red" in root["class"].split()


def test_card_without_track_key_has_empty_attribute():
    root = _Tree(render_card_html(_card(track_key=None))).tags[0][1]
    assert root["data-track-key"] == ""


@pytest.mark.parametrize("color", ["red", "orange", "blue", "green", "grey"])
def test_each_colour_has_its_class(color):
    html = render_card_html(_card(color=color))
    assert f'class="rd-card rd-card-{color}"' in html


def test_unknown_colour_falls_back_to_blue():
    html = render_card_html(_card(color='red" onclick="alert(1)'))  # type: ignore[arg-type]
    assert "rd-card-blue" in html and "onclick" not in html


def test_buttons_carry_tokens_and_styles():
    tree = _Tree(render_card_html(_card()))
    buttons = tree.find("button")
    assert [b["data-token"] for b in buttons] == ["tok-claim", "tok-transfer", "tok-esc"]
    assert [b["class"] for b in buttons] == ["rd-btn rd-btn-primary", "rd-btn rd-btn-default", "rd-btn rd-btn-danger"]
    assert all(b["type"] == "button" for b in buttons)
    html = render_card_html(_card())
    assert '<button type="button" class="rd-btn rd-btn-primary" data-token="tok-claim">认领</button>' in html


def test_fields_are_label_value_rows():
    tree = _Tree(render_card_html(_card()))
    assert len(tree.find("div", "rd-field")) == 2
    html = render_card_html(_card())
    assert "<dt>故障类别</dt><dd>水泵</dd>" in html
    assert "<dt>位置</dt><dd>3号线</dd>" in html


def test_timeline_has_six_nodes_with_states_and_times():
    steps = tuple(
        TimelineStep(label, "done" if i < 2 else "current" if i == 2 else "todo", "10:0%d" % i if i <= 2 else None)
        for i, label in enumerate(LABELS)
    )
    html = render_card_html(_card(kind="status", timeline=steps, buttons=()))
    tree = _Tree(html)
    nodes = tree.find("li", "rd-step")
    assert [n["data-state"] for n in nodes] == ["done", "done", "current", "todo", "todo", "todo"]
    assert [n["class"].split()[1] for n in nodes] == [
        "rd-step-done", "rd-step-done", "rd-step-current", "rd-step-todo", "rd-step-todo", "rd-step-todo"
    ]
    labels = re.findall(r'<span class="rd-step-label">([^<]*)</span>', html)
    assert tuple(labels) == LABELS
    assert re.findall(r'<span class="rd-step-at">([^<]*)</span>', html) == ["10:00", "10:01", "10:02"]
    assert not tree.find("button")


def test_unknown_step_state_is_todo():
    html = render_card_html(_card(timeline=(TimelineStep("已接单", "weird"),)))  # type: ignore[arg-type]
    assert 'data-state="todo"' in html


EVIL = '<script>alert("x")</script>&"\'><img src=x onerror=alert(1)>'


def test_everything_is_escaped():
    card = Card(
        kind=EVIL,
        title=EVIL,
        color="blue",
        subtitle=EVIL,
        fields=(CardField(EVIL, EVIL),),
        body=EVIL,
        timeline=(TimelineStep(EVIL, "done", EVIL),),
        buttons=(Button(EVIL, EVIL),),
        footer=EVIL,
        track_key=EVIL,
    )
    html = render_card_html(card, mentions=[EVIL])
    tree = _Tree(html)
    assert not tree.stack
    assert not tree.find("script") and not tree.find("img")
    assert "<script" not in html and "<img" not in html
    assert all(not k.startswith("on") for _, attrs in tree.tags for k in attrs)
    # The values survive escaping unchanged for the page.
    assert tree.tags[0][1]["data-track-key"] == EVIL
    assert tree.find("button")[0]["data-token"] == EVIL
    assert "".join(tree.text).count(EVIL) >= 7


def test_body_and_footer_keep_line_breaks():
    html = render_card_html(_card(body="第一行\n第二行", footer="a\r\nb"))
    assert "第一行<br>第二行" in html
    assert "a<br>b" in html


def test_mentions_on_a_card():
    html = render_card_html(_card(), mentions=["张工", "赵组长"])
    assert '<div class="rd-card-mentions"><span class="rd-mention">@张工</span> <span class="rd-mention">@赵组长</span></div>' in html
    assert "rd-card-mentions" not in render_card_html(_card())


def test_ticket_numbers_in_card_values_are_marked():
    html = render_card_html(_card())
    assert '<div class="rd-card-subtitle">SRV-20260126-00872-0J5</div>' in html  # subtitle stays plain text
    html = render_card_html(_card(fields=(CardField("工单号", "SRV-20260126-00872-0J5"),)))
    assert '<dd><code class="rd-ticket-no">SRV-20260126-00872-0J5</code></dd>' in html


def test_minimal_card():
    html = render_card_html(Card(kind="notice", title="通知"))
    tree = _Tree(html)
    assert not tree.stack
    assert not tree.find("dl") and not tree.find("ol") and not tree.find("button")
    assert "rd-card-subtitle" not in html and "rd-card-footer" not in html


# ---- texts ----------------------------------------------------------------


def test_text_is_escaped_with_line_breaks():
    assert render_text_html('a<b>&"c"\nd') == "a&lt;b&gt;&amp;&quot;c&quot;<br>d"
    assert render_text_html("x\r\ny") == "x<br>y"


def test_ticket_numbers_are_wrapped_in_code():
    html = render_text_html("已收到您的报修，工单号 SRV-20260126-00872-0J5。\n工单SRV-20260126-00873-1AB已转交")
    assert html.count('<code class="rd-ticket-no">') == 2
    assert '工单号 <code class="rd-ticket-no">SRV-20260126-00872-0J5</code>。<br>' in html
    assert '工单<code class="rd-ticket-no">SRV-20260126-00873-1AB</code>已转交' in html


def test_other_domains_and_non_numbers():
    assert '<code class="rd-ticket-no">IT-20260126-00001-ZZ9</code>' in render_text_html("IT-20260126-00001-ZZ9")
    for text in ("XSRV20260126-00872-0J5", "SRV-2026012-00872-0J5", "SRV-20260126-00872-0J55", "srv-20260126-00872-0j5"):
        assert "<code" not in render_text_html(text), text


def test_text_mentions():
    assert render_text_html("已认领", ["张工"]) == '<span class="rd-mention">@张工</span> 已认领'
    assert "&lt;b&gt;" in render_text_html("x", ["<b>"])
