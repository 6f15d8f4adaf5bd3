"""The Channel interface every IM adapter implements, and the registry of channel kinds.

A channel owns one platform's protocol: it verifies and parses callbacks into
neutral InboundEvents, passes them to the sink (the ticket core), and renders
neutral messages into the platform's API calls when the outbox delivers them.

Each channel module registers itself when imported: `@register("wecom",
WeComConfig)` puts `{config key: (config section class, adapter class)}` into
`KINDS`; `build_channels` makes one adapter per section present in the config,
in registration order (the order people are reached by them). The composition
root (app/runtime.py) imports the channel packages; nothing else needs to know them.
"""
from __future__ import annotations

import asyncio
import mimetypes
import os
from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Iterator, Literal

from aiohttp import web

from bot.config import Config
from bot.core.directory import Directory
from bot.events import Address, InboundEvent, Outbound
from cards.model import Card
from storage.db import Database


@dataclass(frozen=True)
class HandleResult:
    """What the core made of an inbound event, for channels that answer inline."""

    duplicate: bool = False
    toast: str | None = None  # short feedback for the person who clicked
    card: Card | None = None  # the clicked card as it should look now
    # done: it happened (the updated card shows it); unchanged: it had already
    # happened; refused: it may not happen, `toast` says why. Channels without
    # toasts tell the person in the last two cases.
    outcome: Literal["done", "unchanged", "refused"] = "done"

    @property
    def refused(self) -> bool:
        return self.outcome == "refused"


EventSink = Callable[[InboundEvent], Awaitable[HandleResult]]

# The id of the outbox row being delivered, set by the outbox worker around
# `Channel.send`, so a channel can make a repeated delivery of one row a no-op.
current_outbox_id: ContextVar[int | None] = ContextVar("current_outbox_id", default=None)
# True when that row was tried before (a failed attempt, or a send interrupted by a
# crash): a channel asks its platform to drop it if the earlier one arrived.
current_is_resend: ContextVar[bool] = ContextVar("current_is_resend", default=False)


class DeliveryError(Exception):
    """A send that failed. Not retryable: the outbox marks it failed at once."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


async def read_upload(path: str | os.PathLike) -> tuple[str, bytes, str]:
    """A local file a channel uploads to its platform: (file name, content, MIME type).

    A missing file is a DeliveryError that retrying cannot fix.
    """
    p = Path(path)
    try:
        content = await asyncio.to_thread(p.read_bytes)
    except FileNotFoundError:
        raise DeliveryError(f"file not found: {p}", retryable=False) from None
    return p.name, content, mimetypes.guess_type(p.name)[0] or "application/octet-stream"


# Sends in flight per channel and process. The platforms' own caps are far lower
# (Feishu takes 50 messages a second per app; WeCom and DingTalk limit each recipient
# to a few dozen a minute); at 100-200 ms per API call this still allows 80-160 sends
# a second per channel.
SENDS_IN_FLIGHT = 16


class Channel(ABC):
    name: ClassVar[str]
    # Whether the outbox applies its per-recipient rate limit (the platforms
    # drop what exceeds their caps; a local page has none).
    rate_limited: ClassVar[bool] = True
    # The platform's documented cap per recipient kind ("user" | "group"):
    # (messages, seconds). The outbox keeps each recipient under it.
    rate_limits: ClassVar[dict[str, tuple[int, float]]] = {"user": (20, 60.0), "group": (20, 60.0)}
    # How many sends the outbox keeps in flight at once on this channel (per process);
    # the platform clients keep that many connections open (bot/channels/shared/http.py).
    sends_in_flight: ClassVar[int] = SENDS_IN_FLIGHT
    # An outbound event connection (DingTalk Stream, Feishu long connection) when the
    # channel runs in stream mode; its state shows in /healthz.
    stream: Any = None

    def __init__(self, sink: EventSink):
        self.sink = sink
        # Set by the runtime: a channel that enqueues messages itself (click
        # feedback) calls it so they go out now rather than at the next poll.
        self.wake_outbox: Callable[[], None] = lambda: None
        # Set by the runtime: counts an inbound event that did not reach the core
        # ("ignored", "rejected") in /metrics.
        self.count: Callable[[str], None] = lambda result: None

    @classmethod
    def build(cls, section: Any, wiring: "Wiring") -> "Channel | None":
        """The channel for its config section; None when the section leaves it off."""
        return cls(section, wiring.sink, wiring.db)

    def routes(self) -> list[web.AbstractRouteDef]:
        """The callback routes this channel serves."""
        return []

    async def start(self) -> None:
        """Open clients; called once the app starts."""

    def picture_applied(self, event: InboundEvent) -> None:
        """The core has applied (and committed) a picture message this channel handed it;
        a channel that must fetch the file itself starts that here. Must not block."""

    def health(self) -> dict | None:
        """What /healthz shows of this channel (a stream connection's state), if anything."""
        return None if self.stream is None else {"stream": self.stream.health()}

    async def close(self) -> None:
        """Close clients; called on shutdown."""

    @abstractmethod
    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        """Deliver one message.

        `ref` is what an earlier send of a card with the same track key to the
        same address returned (message ids, update tokens); a card message with
        `update=True` should update that card in place when it can, and send a
        new card otherwise. Return the handle to keep for later updates, or None.
        Raise DeliveryError on failure.
        """


@dataclass(frozen=True)
class Wiring:
    """What channels are built from, besides their own config section."""

    config: Config
    sink: EventSink
    db: Database
    # People and their platform ids: a channel whose platform reports address-book
    # changes asks it to apply them rather than writing its tables.
    directory: Directory | None = None


# config key -> (config section class, adapter class), in registration order.
KINDS: dict[str, tuple[type, type[Channel]]] = {}


def register(key: str, section: type):
    """Class decorator: the adapter for the `[key]` config section."""

    def add(adapter: type[Channel]) -> type[Channel]:
        if key in KINDS:
            raise ValueError(f"channel kind {key!r} registered twice")
        KINDS[key] = (section, adapter)
        return adapter

    return add


def build_channels(config: Config, sink: EventSink, db: Database,
                   directory: Directory | None = None) -> list[Channel]:
    """One channel per registered kind whose config section is present and on."""
    wiring = Wiring(config, sink, db, directory)
    channels: list[Channel] = []
    for key, (section_type, adapter) in KINDS.items():
        section = getattr(config, key, None)
        if section is None:
            continue
        if not isinstance(section, section_type):
            raise TypeError(f"config [{key}] is a {type(section).__name__}, {adapter.__name__} takes "
                            f"{section_type.__name__}")
        channel = adapter.build(section, wiring)
        if channel is not None:
            channels.append(channel)
    return channels


class ChannelRegistry:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def add(self, channel: Channel) -> None:
        if channel.name in self._channels:
            raise ValueError(f"channel {channel.name!r} registered twice")
        self._channels[channel.name] = channel

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._channels

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels.values())

    def names(self) -> list[str]:
        return list(self._channels)
