"""What the playground's channel and its page share: chat panes, conversation keys, message rows as JSON.

The channel (adapter.py) serves the routes (routes.py);
the routes know the channel only as the `Page` protocol below, so neither module
imports the other both ways.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Protocol

from bot.channel import EventSink
from bot.config import PersonConfig
from bot.events import Address
from storage.models import PlaygroundMessage

NAME = "playground"
MEDIA_PREFIX = "/playground/media/"


@dataclass(frozen=True)
class Pane:
    """One chat window of the page."""

    key: str  # "customer" | "group" | "lead": stable handle for the page and tests
    conversation: str
    speakers: tuple[str, ...]
    # Group panes: everybody who may write in the group (speakers and more).
    members: frozenset[str] = field(default_factory=frozenset)
    team_name: str | None = None

    @property
    def kind(self) -> str:
        return self.conversation.split(":", 1)[0]


def parse_conversation(key: str) -> Address | None:
    kind, sep, ident = key.partition(":")
    if not sep or kind not in ("user", "group") or not ident:
        return None
    return Address(NAME, kind, ident)  # type: ignore[arg-type]


class Page(Protocol):
    """The playground channel as its routes use it."""

    name: str
    sink: EventSink
    people: dict[str, PersonConfig]
    panes: list[Pane]
    media_dir: Path

    def may_speak(self, person: str, conversation: str) -> bool: ...

    def mentioned(self, text: str) -> tuple[str, ...]: ...

    async def record_user_text(self, conversation: str, person: str, text: str, client_id: str) -> bool: ...

    async def save_photo(self, data: bytes, suffix: str) -> Path: ...

    async def record_user_image(self, conversation: str, person: str, path: Path, client_id: str) -> bool: ...

    async def wait_for_messages(self, after: int, wait: float, limit: int = 200,
                                stop: Callable[[], bool] | None = None
                                ) -> tuple[list[PlaygroundMessage], int]: ...


def message_json(row: PlaygroundMessage) -> dict:
    at: datetime = row.created_at
    return {
        "id": row.id,
        "conversation": row.conversation,
        "sender_id": row.sender_id,
        "sender_name": row.sender_name,
        "kind": row.kind,
        "payload": row.payload,
        "at": at.isoformat().replace("+00:00", "Z"),
    }
