"""Neutral inbound events and outbound messages, shared by the core and channels."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from cards.model import Card

ConvKind = Literal["user", "group"]


@dataclass(frozen=True)
class Address:
    """Where a message goes: a person's 1:1 chat or a group, on one channel."""

    channel: str
    kind: ConvKind
    id: str


@dataclass(frozen=True)
class InboundEvent:
    """What a channel makes of one platform callback."""

    platform: str
    event_id: str  # the platform's id for de-duplicating its retries
    sender_id: str  # the sender's user id on that platform
    conversation: Address  # where replies to this event go
    kind: Literal["text", "image", "action"]
    sender_name: str | None = None
    text: str = ""
    mentions: tuple[str, ...] = ()  # platform user ids @-mentioned, the bot excluded
    image_ref: str | None = None  # platform media id / key / URL
    action_token: str | None = None  # the opaque callback id of a clicked button
    # Channel-private context for answering (single-use card tokens, reply webhooks).
    context: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Text:
    text: str
    mentions: tuple[str, ...] = ()  # platform user ids to @ (groups)
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class CardMessage:
    """A card; `update` asks to replace the earlier card with the same track key."""

    card: Card
    update: bool = False
    mentions: tuple[str, ...] = ()
    type: Literal["card"] = "card"


@dataclass(frozen=True)
class Image:
    path: str  # local file
    caption: str | None = None
    type: Literal["image"] = "image"


@dataclass(frozen=True)
class Call:
    """A voice call read out to a phone (escalation); `to` is an E.164 number."""

    to: str
    text: str
    person_id: str | None = None
    ticket_id: int | None = None
    chain: str | None = None  # the escalation chain, position and fence that placed it
    step: int | None = None
    fence: int | None = None
    type: Literal["call"] = "call"


@dataclass(frozen=True)
class Sms:
    to: str
    text: str
    person_id: str | None = None
    ticket_id: int | None = None
    type: Literal["sms"] = "sms"


@dataclass(frozen=True)
class Webhook:
    """A ticket event for one webhook subscription; signed when it is sent.

    `msg_id` stays the same across retries, so the receiver can de-duplicate.
    """

    event_type: str
    payload: dict
    msg_id: str
    type: Literal["webhook"] = "webhook"


Outbound = Text | CardMessage | Image | Call | Sms | Webhook


def message_to_dict(m: Outbound) -> dict:
    if isinstance(m, CardMessage):
        return {"type": "card", "card": m.card.to_dict(), "update": m.update, "mentions": list(m.mentions)}
    if isinstance(m, Text):
        return {"type": "text", "text": m.text, "mentions": list(m.mentions)}
    if isinstance(m, Call):
        return {"type": "call", "to": m.to, "text": m.text, "person_id": m.person_id,
                "ticket_id": m.ticket_id, "chain": m.chain, "step": m.step, "fence": m.fence}
    if isinstance(m, Sms):
        return {"type": "sms", "to": m.to, "text": m.text, "person_id": m.person_id, "ticket_id": m.ticket_id}
    if isinstance(m, Webhook):
        return {"type": "webhook", "event_type": m.event_type, "payload": m.payload, "msg_id": m.msg_id}
    return {"type": "image", "path": m.path, "caption": m.caption}


def message_from_dict(d: dict) -> Outbound:
    if d["type"] == "card":
        return CardMessage(Card.from_dict(d["card"]), bool(d.get("update")), tuple(d.get("mentions", ())))
    if d["type"] == "text":
        return Text(d["text"], tuple(d.get("mentions", ())))
    if d["type"] == "image":
        return Image(d["path"], d.get("caption"))
    if d["type"] == "call":
        return Call(d["to"], d["text"], d.get("person_id"), d.get("ticket_id"), d.get("chain"), d.get("step"),
                    d.get("fence"))
    if d["type"] == "sms":
        return Sms(d["to"], d["text"], d.get("person_id"), d.get("ticket_id"))
    if d["type"] == "webhook":
        return Webhook(d["event_type"], d["payload"], d["msg_id"])
    raise ValueError(f"unknown outbound message type {d['type']!r}")


def event_to_dict(e: InboundEvent) -> dict:
    return asdict(e)


def event_from_dict(d: dict) -> InboundEvent:
    d = dict(d)
    d["conversation"] = Address(**d["conversation"])
    d["mentions"] = tuple(d.get("mentions", ()))
    return InboundEvent(**d)
