"""The WeCom renderer: neutral cards as `template_card` (button_interaction) or markdown.

* A card with buttons becomes a `button_interaction` template card; each button's
  `key` is the neutral button value (the opaque callback id), unchanged.
* A card without buttons, and every card shown in a group (app chats take no
  template cards), becomes a markdown message.
* Lengths follow the limits WeCom documents (button_list <= 6, horizontal list
  <= 6, key <= 1024 bytes, task_id <= 128 characters of [0-9a-zA-Z_-@],
  markdown <= 2048 bytes); text is cut with an ellipsis rather than refused.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets

from bot.core.commands import parse_command
from bot.core.numbers import find_number
from bot.texts import t
from cards.model import Card

MAX_BUTTONS = 6
MAX_HORIZONTAL = 6
MAX_KEY_BYTES = 1024
MAX_TASK_ID = 128
MAX_MARKDOWN_BYTES = 2048
MAX_TEXT_BYTES = 2048

# source.desc_color: 0 grey, 1 black, 2 red, 3 green.
DESC_COLOR = {"red": 2, "orange": 2, "blue": 1, "green": 3, "grey": 0}
# button style 1-4; 1 is the default (blue), 2 plain, 3 red.
BUTTON_STYLE = {"primary": 1, "default": 2, "danger": 3}
# WeCom markdown knows three font colours.
FONT_COLOR = {"red": "warning", "orange": "warning", "green": "info", "blue": "comment", "grey": "comment"}
STEP_MARK = {"done": "✓", "current": "●", "todo": "○"}

_TASK_ID_BAD = re.compile(r"[^0-9A-Za-z_\-@]")


def cut(text: str | None, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    text = (text or "").strip()
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def cut_bytes(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, cut on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: max(0, limit - 3)].decode("utf-8", "ignore") + "…"


def new_task_id(track_key: str | None, outbox_id: int | None = None, content: str = "") -> str:
    """A task_id unique per app: readable prefix, outbox row, tail.

    Sent from an outbox row, the tail is a hash of what is sent (`content`: the
    recipient and the card), so a resend of the same row after a crash or a
    timeout is the same message to the letter and WeCom's duplicate check drops
    it; any other card differs in row or content. Without a row (never resent),
    the tail is random.
    """
    base = _TASK_ID_BAD.sub("_", track_key or "card")[:60]
    if outbox_id is None:
        return "_".join(["rd", base, secrets.token_hex(6)])[:MAX_TASK_ID]
    tail = hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]
    return "_".join(["rd", base, f"o{outbox_id}", tail])[:MAX_TASK_ID]


def _safe(text: str) -> str:
    """User text inside markdown: no tags of its own (WeCom markdown reads <font> and <@id>)."""
    return text.replace("<", "＜").replace(">", "＞")


def _timeline_text(card: Card) -> str:
    parts = []
    for step in card.timeline:
        mark = STEP_MARK.get(step.state, "○")
        parts.append(f"{mark}{step.label}" + (f" {step.at}" if step.at else ""))
    return " → ".join(parts)


def render_template_card(card: Card, task_id: str) -> dict:
    """A `button_interaction` template card (the value of `template_card`)."""
    if len(task_id) > MAX_TASK_ID or _TASK_ID_BAD.search(task_id):
        raise ValueError(f"bad task_id {task_id!r}")
    tc: dict = {
        "card_type": "button_interaction",
        "source": {"desc": t("wecom.source"), "desc_color": DESC_COLOR.get(card.color, 1)},
        "main_title": {"title": cut(card.title, 36)},
        "task_id": task_id,
    }
    if card.subtitle:
        tc["main_title"]["desc"] = cut(card.subtitle, 44)
    sub = [card.body or ""]
    if card.timeline:
        sub.append(_timeline_text(card))
    sub_text = "\n".join(s for s in sub if s)
    if sub_text:
        tc["sub_title_text"] = cut(sub_text, 160)
    shown = card.fields[:MAX_HORIZONTAL]
    if shown:
        tc["horizontal_content_list"] = [{"keyname": cut(f.label, 10), "value": cut(f.value, 30)} for f in shown]
    overflow = [f"{f.label}：{f.value}" for f in card.fields[MAX_HORIZONTAL:]]
    if card.footer or overflow:
        quote: dict = {"type": 0}
        if card.footer:
            quote["title"] = cut(card.footer, 30)
        if overflow:
            quote["quote_text"] = cut("\n".join(overflow), 120)
        tc["quote_area"] = quote
    buttons = []
    for b in card.buttons[:MAX_BUTTONS]:
        if len(b.value.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError("button value longer than WeCom's 1024-byte key")
        buttons.append({"text": cut(b.label, 10), "style": BUTTON_STYLE.get(b.style, 2), "key": b.value})
    tc["button_list"] = buttons
    return tc


def final_button_name(card: Card) -> str:
    """What the buttons of a card that has none left say (`update_template_card` replace_name)."""
    return cut(card.footer or card.title, 20)


def group_commands(card: Card) -> list[str]:
    """The buttons as text commands (`认领 SRV-…`) for a chat where cards have no buttons."""
    number = find_number(card.subtitle or "") or find_number(card.title) or ""
    out = []
    for b in card.buttons:
        if parse_command(b.label) is not None:
            out.append(f"{b.label} {number}".strip())
    return out


def render_markdown(card: Card, *, mentions: tuple[str, ...] = (), hint: bool = False) -> str:
    """The card as WeCom markdown (`<@userid>` mentions work only through a group robot)."""
    color = FONT_COLOR.get(card.color, "comment")
    lines = []
    if mentions:
        lines.append(" ".join(f"<@{m}>" for m in mentions))
    lines.append(f'**<font color="{color}">{_safe(card.title)}</font>**')
    if card.subtitle:
        lines.append(f'<font color="comment">{_safe(card.subtitle)}</font>')
    for f in card.fields:
        lines.append(f'> {_safe(f.label)}：<font color="comment">{_safe(f.value)}</font>')
    if card.timeline:
        lines.append(_safe(_timeline_text(card)))
    if card.footer:
        lines.append(f'<font color="{color}">{_safe(card.footer)}</font>')
    tail = []
    if hint:
        commands = group_commands(card)
        if commands:
            tail.append(f'<font color="comment">{t("wecom.group_hint", commands="、".join(commands))}</font>')
    head = "\n".join(lines)
    body = _safe(card.body or "")
    room = MAX_MARKDOWN_BYTES - len(head.encode()) - len("\n".join(tail).encode()) - 4
    if body and room > 20:
        head += "\n" + cut_bytes(body, room)
    return cut_bytes("\n".join([head] + tail), MAX_MARKDOWN_BYTES)


def render_status_line(card: Card) -> str:
    """One markdown line for a card's later change in a group: title, number, who and where."""
    color = FONT_COLOR.get(card.color, "comment")
    state_label = t("card.field.state")
    state = next((f.value for f in card.fields if f.label == state_label), "")
    what = card.footer or state
    text = f'**<font color="{color}">{_safe(card.title)}</font>** {_safe(card.subtitle or "")}'.rstrip()
    if what:
        text += f"\n{_safe(what)}"
    return cut_bytes(text, MAX_MARKDOWN_BYTES)


def fingerprint(payload) -> str:
    """A short hash of what a recipient sees, to skip updates that change nothing."""
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]
