"""The playground's renderer: neutral cards and texts as HTML fragments.

The playground page inserts these fragments as they are, so every piece of
text that comes from a card, a person or a configuration file is escaped here.
Class names are the page's style sheet's (static/style.css beside it).
"""
from __future__ import annotations

import html
import re
from typing import Iterable

from cards.model import Card, TimelineStep

COLORS = ("red", "orange", "blue", "green", "grey")
BUTTON_STYLES = ("primary", "default", "danger")
STEP_STATES = ("done", "current", "todo")

# A ticket number such as SRV-20260126-00872-0J5, not glued to other letters or digits.
_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2,6}-\d{8}-\d{5}-[0-9A-Z]{3}(?![A-Za-z0-9])")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _rich(text: str) -> str:
    """Escaped text with line breaks kept and ticket numbers marked up."""
    out = _esc(text.replace("\r\n", "\n").replace("\r", "\n"))
    out = _NUMBER_RE.sub(lambda m: f'<code class="rd-ticket-no">{m.group(0)}</code>', out)
    return out.replace("\n", "<br>")


def _mentions(names: Iterable[str]) -> str:
    return "".join(f'<span class="rd-mention">@{_esc(n)}</span> ' for n in names)


def render_text_html(text: str, mentions: Iterable[str] = ()) -> str:
    """A chat text as HTML: escaped, newlines as <br>, ticket numbers in <code>.

    `mentions` are display names shown as @-chips before the text.
    """
    return _mentions(mentions) + _rich(text)


def _step_html(step: TimelineStep) -> str:
    state = step.state if step.state in STEP_STATES else "todo"
    at = f'<span class="rd-step-at">{_esc(step.at)}</span>' if step.at else ""
    return (
        f'<li class="rd-step rd-step-{state}" data-state="{state}">'
        f'<span class="rd-step-dot"></span>'
        f'<span class="rd-step-label">{_esc(step.label)}</span>{at}</li>'
    )


def render_card_html(card: Card, mentions: Iterable[str] = (), images: Iterable[str] = ()) -> str:
    """The neutral card as one HTML element.

    `images` are the URLs of the card's photos this page can show, as thumbnails.
    The root carries `data-track-key` (empty when the card has none) so the page
    can replace an earlier version of the same card in place; each button
    carries its opaque callback id in `data-token`.
    """
    color = card.color if card.color in COLORS else "blue"
    parts = [
        f'<div class="rd-card rd-card-{color}" data-color="{color}" '
        f'data-kind="{_esc(card.kind)}" data-track-key="{_esc(card.track_key or "")}">'
    ]
    mention_html = _mentions(mentions)
    if mention_html:
        parts.append(f'<div class="rd-card-mentions">{mention_html.strip()}</div>')
    parts.append('<div class="rd-card-header">')
    parts.append(f'<div class="rd-card-title">{_esc(card.title)}</div>')
    if card.subtitle:
        parts.append(f'<div class="rd-card-subtitle">{_esc(card.subtitle)}</div>')
    parts.append("</div>")
    parts.append('<div class="rd-card-body">')
    if card.fields:
        parts.append('<dl class="rd-fields">')
        for f in card.fields:
            parts.append(
                f'<div class="rd-field"><dt>{_esc(f.label)}</dt><dd>{_rich(f.value)}</dd></div>'
            )
        parts.append("</dl>")
    if card.body:
        parts.append(f'<div class="rd-card-text">{_rich(card.body)}</div>')
    thumbs = list(images)
    if thumbs:
        parts.append('<div class="rd-thumbs">')
        for url in thumbs:
            parts.append(f'<a class="rd-thumb" href="{_esc(url)}" target="_blank" rel="noopener">'
                         f'<img src="{_esc(url)}" alt="" loading="lazy"></a>')
        parts.append("</div>")
    if card.timeline:
        parts.append('<ol class="rd-timeline">')
        parts.extend(_step_html(s) for s in card.timeline)
        parts.append("</ol>")
    if card.buttons:
        parts.append('<div class="rd-actions">')
        for b in card.buttons:
            style = b.style if b.style in BUTTON_STYLES else "default"
            parts.append(
                f'<button type="button" class="rd-btn rd-btn-{style}" '
                f'data-token="{_esc(b.value)}">{_esc(b.label)}</button>'
            )
        parts.append("</div>")
    if card.footer:
        parts.append(f'<div class="rd-card-footer">{_rich(card.footer)}</div>')
    parts.append("</div></div>")
    return "".join(parts)
