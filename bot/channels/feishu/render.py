"""The Feishu / Lark renderer: neutral cards as message-card JSON 1.0.

One schema everywhere (sending, PATCH updates, the card returned from a click),
because Feishu refuses to turn a 2.0 card into a 1.0 card and back. Every card
has `config.update_multi = true`: it is a shared card, so an update (PATCH, or
the card returned from a click) changes it for everybody who sees it.

Text that may come from people (ticket summaries, names, locations) is rendered
as `plain_text`, never `lark_md`, so nobody can inject markdown, links or
`<at id=all>` mentions into a card. Only the mention line is `lark_md`, built
from validated user ids.

A button's `value` is `{"token": <the neutral button value>}`: the card
callback echoes it as `event.action.value`, and `button_token()` reads it back.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

from cards.model import Card

# Neutral colour -> header template.
TEMPLATES = {"red": "red", "orange": "orange", "blue": "blue", "green": "green", "grey": "grey"}
BUTTON_TYPES = {"primary": "primary", "default": "default", "danger": "danger"}
STEP_MARKS = {"done": "✅", "current": "🔵", "todo": "⚪"}
# Ids that may go inside <at id=...>: open_id / user_id / union_id characters only.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_SHORT_FIELD = 16  # characters; longer field values take the whole row


def _plain(content: str) -> dict:
    return {"tag": "plain_text", "content": content}


def safe_id(user_id: str) -> bool:
    return bool(_SAFE_ID.match(user_id))


def render_card(card: Card, mentions: Iterable[str] = ()) -> dict:
    """The card JSON (a dict) for `card`, @-mentioning `mentions` (open_ids) at the top."""
    elements: list[dict[str, Any]] = []
    ats = " ".join(f"<at id={m}></at>" for m in mentions if safe_id(m))
    if ats:
        elements.append({"tag": "div", "text": {"tag": "lark_md", "content": ats}})
    if card.subtitle:
        elements.append({"tag": "div", "text": _plain(card.subtitle)})
    if card.body:
        elements.append({"tag": "div", "text": _plain(card.body)})
    if card.fields:
        elements.append({
            "tag": "div",
            "fields": [
                {"is_short": len(f.value) <= _SHORT_FIELD, "text": _plain(f"{f.label}：{f.value}")}
                for f in card.fields
            ],
        })
    if card.timeline:
        lines = []
        for step in card.timeline:
            mark = STEP_MARKS.get(step.state, STEP_MARKS["todo"])
            lines.append(f"{mark} {step.label}" + (f"  {step.at}" if step.at else ""))
        elements.append({"tag": "hr"})
        elements.append({"tag": "div", "text": _plain("\n".join(lines))})
    if card.buttons:
        elements.append({
            "tag": "action",
            "actions": [
                {
                    "tag": "button",
                    "text": _plain(b.label),
                    "type": BUTTON_TYPES.get(b.style, "default"),
                    "value": {"token": b.value},
                }
                for b in card.buttons
            ],
        })
    if card.footer:
        elements.append({"tag": "note", "elements": [_plain(card.footer)]})
    return {
        "config": {"wide_screen_mode": True, "update_multi": True},
        "header": {"template": TEMPLATES.get(card.color, "blue"), "title": _plain(card.title)},
        "elements": elements,
    }


def card_content(card: Card, mentions: Iterable[str] = ()) -> str:
    """The card as the JSON string the message APIs take in `content`."""
    return json.dumps(render_card(card, mentions), ensure_ascii=False, separators=(",", ":"))


def button_token(value: Any) -> str | None:
    """The neutral button value from a callback's `action.value`.

    Our cards send `{"token": ...}`; a bare string is accepted too (cards built
    elsewhere, or clients that flatten the value).
    """
    if isinstance(value, dict):
        token = value.get("token")
        return token if isinstance(token, str) and token else None
    if isinstance(value, str) and value:
        if value.startswith("{"):
            try:
                return button_token(json.loads(value))
            except ValueError:
                return None
        return value
    return None
