"""The neutral card every channel renders.

Button values are opaque callback ids issued and resolved by the server; a
renderer copies them into the platform's button payload unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Color = Literal["red", "orange", "blue", "green", "grey"]
ButtonStyle = Literal["primary", "default", "danger"]

PRIORITY_COLOR: dict[str, Color] = {"P0": "red", "P1": "orange", "P2": "blue"}


@dataclass(frozen=True)
class Button:
    label: str
    value: str  # opaque callback id
    style: ButtonStyle = "default"


@dataclass(frozen=True)
class CardField:
    label: str
    value: str


@dataclass(frozen=True)
class TimelineStep:
    label: str
    state: Literal["done", "current", "todo"]
    at: str | None = None  # local time the step was reached, "HH:MM"


@dataclass(frozen=True)
class Card:
    kind: str  # engineer | status | escalation | rating | sop | notice
    title: str
    color: Color = "blue"
    subtitle: str | None = None
    fields: tuple[CardField, ...] = ()
    body: str | None = None
    timeline: tuple[TimelineStep, ...] = ()
    buttons: tuple[Button, ...] = ()
    footer: str | None = None
    # Cards sharing a track key are one card that later changes update in place.
    track_key: str | None = None
    # Photos to show as thumbnails: media refs (a local file, or a platform's
    # media id); a renderer shows those it can and the count says the rest.
    images: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """As `dataclasses.asdict` gives it, built directly: asdict copies recursively and,
        with several cards per report, was a measurable share of a busy bot's time."""
        return {
            "kind": self.kind, "title": self.title, "color": self.color, "subtitle": self.subtitle,
            "fields": tuple({"label": f.label, "value": f.value} for f in self.fields),
            "body": self.body,
            "timeline": tuple({"label": s.label, "state": s.state, "at": s.at} for s in self.timeline),
            "buttons": tuple({"label": b.label, "value": b.value, "style": b.style} for b in self.buttons),
            "footer": self.footer, "track_key": self.track_key, "images": tuple(self.images),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Card":
        return cls(
            kind=d["kind"],
            title=d["title"],
            color=d.get("color", "blue"),
            subtitle=d.get("subtitle"),
            fields=tuple(CardField(**f) for f in d.get("fields", ())),
            body=d.get("body"),
            timeline=tuple(TimelineStep(**s) for s in d.get("timeline", ())),
            buttons=tuple(Button(**b) for b in d.get("buttons", ())),
            footer=d.get("footer"),
            track_key=d.get("track_key"),
            images=tuple(d.get("images", ())),
        )
