"""DingTalk renderer: neutral cards as interactive-card data or as markdown.

Two forms, chosen by the channel:

* `card_params(card)` - the card as a flat `cardParamMap` for an interactive
  card template built in DingTalk's card platform (every value a string, as
  the card API requires; lists are JSON strings). docs/channels/dingtalk.md
  lists the variables so a user can build the template.
* `card_markdown(card)` - the card as `sampleMarkdown` text plus the text
  commands that do what the buttons would, for deployments without a template
  (DingTalk's markdown and ActionCard messages cannot call the server back).

Button values are opaque callback ids; they are copied unchanged into the
`buttons` JSON (and the flat `bN_value` slots), and a click comes back with one
of them as the callback parameter `value`.
"""
from __future__ import annotations

import json
import re

from bot.texts import t
from cards.model import Button, Card

COLORS = ("red", "orange", "blue", "green", "grey")
BUTTON_STYLES = ("primary", "default", "danger")
# Header colours for templates that bind a colour variable.
COLOR_HEX = {"red": "#F5222D", "orange": "#FA8C16", "blue": "#1677FF", "green": "#52C41A", "grey": "#8C8C8C"}
# Flat button slots (b1_label ... b6_value) for templates without a loop component.
BUTTON_SLOTS = 6
# DingTalk caps a cardParamMap value at 1 KB.
MAX_PARAM_BYTES = 1000
# Every variable the renderer sets; an update sends all of them, so a value
# that became empty (a button that went away) is cleared in the card too.
PARAM_KEYS = (
    "kind", "title", "subtitle", "color", "color_hex", "fields", "fields_md", "body",
    "timeline", "timeline_md", "footer", "buttons", "has_buttons", "button_count", "markdown",
) + tuple(f"b{i}_{k}" for i in range(1, BUTTON_SLOTS + 1) for k in ("label", "value", "style"))

_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2,6}-\d{8}-\d{5}-[0-9A-Z]{3}(?![A-Za-z0-9])")
_STEP_MARK = {"done": "✅", "current": "🔵", "todo": "⚪"}
# Characters that would start markdown syntax at the beginning of a line.
_MD_LINE_START = re.compile(r"^([#>*+\-=|`]|\d+\.)", re.M)


def clip(text: str, limit: int = MAX_PARAM_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "…"


def ticket_number(card: Card) -> str | None:
    """The ticket number a card is about (in its subtitle, title or body)."""
    for text in (card.subtitle, card.title, card.body, card.footer):
        if text:
            m = _NUMBER_RE.search(text)
            if m:
                return m.group(0)
    return None


def _md_escape(text: str) -> str:
    """Plain text that markdown shows as written: line starts defused, breaks kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _MD_LINE_START.sub(lambda m: "\\" + m.group(1), text)
    return text.replace("\n", "  \n")


def _fields_md(card: Card) -> str:
    return "  \n".join(f"**{_md_escape(f.label)}**：{_md_escape(f.value)}" for f in card.fields)


def _timeline_md(card: Card) -> str:
    parts = []
    for s in card.timeline:
        mark = _STEP_MARK.get(s.state, "⚪")
        parts.append(f"{mark} {_md_escape(s.label)}" + (f" {s.at}" if s.at else ""))
    return "  \n".join(parts)


def card_markdown_body(card: Card) -> str:
    """The card's content as DingTalk markdown (no commands)."""
    lines = [f"### {_md_escape(card.title)}"]
    if card.subtitle:
        lines.append(f"**{_md_escape(card.subtitle)}**")
    if card.fields:
        lines.append(_fields_md(card))
    if card.body:
        lines.append("> " + _md_escape(card.body).replace("  \n", "  \n> "))
    if card.timeline:
        lines.append(_timeline_md(card))
    if card.footer:
        lines.append(f"*{_md_escape(card.footer)}*")
    return "\n\n".join(lines)


# ---- interactive card ------------------------------------------------------


def card_params(card: Card) -> dict[str, str]:
    """The card as a cardParamMap: flat string values, lists as JSON strings."""
    color = card.color if card.color in COLORS else "blue"
    buttons = [
        {"label": b.label, "value": b.value, "style": b.style if b.style in BUTTON_STYLES else "default"}
        for b in card.buttons
    ]
    params = {
        "kind": card.kind,
        "title": clip(card.title),
        "subtitle": clip(card.subtitle or ""),
        "color": color,
        "color_hex": COLOR_HEX[color],
        "fields": clip(json.dumps([{"label": f.label, "value": f.value} for f in card.fields], ensure_ascii=False)),
        "fields_md": clip(_fields_md(card)),
        "body": clip(card.body or ""),
        "timeline": clip(json.dumps([{"label": s.label, "state": s.state, "at": s.at or ""}
                                     for s in card.timeline], ensure_ascii=False)),
        "timeline_md": clip(_timeline_md(card)),
        "footer": clip(card.footer or ""),
        # Never clipped: a cut JSON list would lose every button.
        "buttons": json.dumps(buttons, ensure_ascii=False),
        "has_buttons": "true" if buttons else "false",
        "button_count": str(len(buttons)),
        "markdown": clip(card_markdown_body(card)),
    }
    for i in range(1, BUTTON_SLOTS + 1):
        b = buttons[i - 1] if i <= len(buttons) else None
        params[f"b{i}_label"] = b["label"] if b else ""
        params[f"b{i}_value"] = b["value"] if b else ""
        params[f"b{i}_style"] = b["style"] if b else ""
    return params


def action_value(params: object) -> str | None:
    """The clicked button's value from a card callback's `cardPrivateData.params`."""
    if not isinstance(params, dict):
        return None
    for key in ("value", "action_token", "token"):
        v = params.get(key)
        if isinstance(v, str) and v:
            return v
    return None


# ---- markdown fallback -----------------------------------------------------

_BUTTON_ACTIONS = ("claim", "transfer", "escalate", "depart", "arrive", "start_repair", "resolve", "ack")


def _command_for(button: Button, card: Card, number: str | None) -> str:
    """The text command that does what `button` does."""
    num = number or ""
    labels = {t(f"button.{a}"): a for a in _BUTTON_ACTIONS}
    action = labels.get(button.label)
    if action == "transfer":
        return t("dingtalk.command.transfer", number=num).strip()
    if action is not None:
        return t(f"dingtalk.command.{action}", number=num).strip()
    if card.kind == "rating" and button.label and set(button.label) <= {"★"}:
        return t("dingtalk.command.rate", stars=len(button.label), number=num).strip()
    # The transfer picker: its buttons are the candidates' names.
    return t("dingtalk.command.transfer_to", name=button.label, number=num).strip()


def card_markdown(card: Card) -> tuple[str, str]:
    """(title, text) of a sampleMarkdown message: the card, then its buttons as commands."""
    text = card_markdown_body(card)
    if card.buttons:
        number = ticket_number(card)
        lines = [t("dingtalk.commands_title")]
        for b in card.buttons:
            lines.append(t("dingtalk.command_line", label=_md_escape(b.label),
                           command=_md_escape(_command_for(b, card, number))))
        text += "\n\n---\n\n" + "  \n".join(lines)
    return card.title, text
