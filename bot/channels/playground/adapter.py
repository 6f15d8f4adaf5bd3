"""The playground channel: a web page served by the bot instead of an IM platform.

Every message the bot sends here becomes a PlaygroundMessage row that the page
fetches by long-polling (routes.py). Conversations are keyed
"user:<id>" (a person's 1:1 chat with the bot) and "group:<id>" (a group chat);
a person's id on the playground is their `identities.playground`, or their
person id when they have none.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import select

from bot.channel import Channel, DeliveryError, EventSink, Wiring, current_outbox_id, register
from bot.config import PersonConfig, PlaygroundConfig, TeamConfig
from bot.tasks import wait_event
from bot.events import Address, CardMessage, Image, Outbound, Text
from bot.channels.playground.render import render_card_html, render_text_html
from bot.channels.playground.model import MEDIA_PREFIX, NAME, Pane
from bot.channels.playground.routes import playground_routes
from storage.db import Database
from storage.media import store_content
from storage.models import PlaygroundMessage
from storage.types import utcnow

log = logging.getLogger(__name__)

BOT_NAME = "RelayDesk"
IMAGE_TYPES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
# How often a waiting long-poll looks at the table even without a wake-up,
# for rows written by another bot process on the same database.
RECHECK_SECONDS = 1.0


def conversation_key(to: Address) -> str:
    if to.channel != NAME:
        raise DeliveryError(f"not a playground address: {to}", retryable=False)
    if to.kind not in ("user", "group") or not to.id:
        raise DeliveryError(f"bad playground address: {to}", retryable=False)
    return f"{to.kind}:{to.id}"


def playground_id(person: PersonConfig) -> str:
    return person.identities.get("playground") or person.id


@register("playground", PlaygroundConfig)
class PlaygroundChannel(Channel):
    name = NAME
    rate_limited = False

    @classmethod
    def build(cls, section: PlaygroundConfig, wiring: Wiring) -> PlaygroundChannel | None:
        if not section.enabled:
            return None
        return cls(wiring.sink, wiring.db, wiring.config.people, teams=wiring.config.teams)

    def __init__(
        self,
        sink: EventSink,
        db: Database,
        people: Sequence[PersonConfig],
        *,
        teams: Sequence[TeamConfig] = (),
        media_dir: str | os.PathLike | None = None,
    ):
        super().__init__(sink)
        self.db = db
        self.people: dict[str, PersonConfig] = {playground_id(p): p for p in people}
        self._by_person_id = {p.id: playground_id(p) for p in people}
        self.teams = list(teams)
        if media_dir is None:
            media_dir = Path(os.environ.get("RELAYDESK_DATA_DIR") or "data") / "playground-media"
        self.media_dir = Path(media_dir)
        self.panes: list[Pane] = self._derive_panes()
        self._changed = asyncio.Event()
        self._closing = False

    # ---- directory -------------------------------------------------------

    def _pid(self, person_id: str | None) -> str | None:
        return self._by_person_id.get(person_id) if person_id else None

    def _derive_panes(self) -> list[Pane]:
        """Customer, engineers' group and lead's chat, from the configured directory."""
        people = list(self.people.items())
        panes: list[Pane] = []
        customer = next((pid for pid, p in people if p.role == "customer"), None)
        if customer:
            panes.append(Pane("customer", f"user:{customer}", (customer,)))
        team = next((t for t in self.teams if t.groups.get(self.name)), None)
        lead = director = None
        if team is not None:
            lead, director = self._pid(team.lead), self._pid(team.director)
            members = [pid for pid, p in people if p.team == team.id]
            engineers = [pid for pid in members if self.people[pid].role == "engineer"]
            leads = [pid for pid in members if self.people[pid].role == "lead" and pid != lead]
            speakers = engineers + ([lead] if lead else []) + leads
            everyone = set(members) | {x for x in (lead, director) if x}
            panes.append(
                Pane(
                    "group",
                    f"group:{team.groups[self.name]}",
                    tuple(speakers),
                    frozenset(everyone),
                    team.name,
                )
            )
        else:
            # No team names a playground group: one group of all engineers and leads.
            staff = [pid for pid, p in people if p.role == "engineer"]
            staff += [pid for pid, p in people if p.role == "lead"]
            if staff:
                panes.append(Pane("group", "group:engineers", tuple(staff), frozenset(staff)))
        lead = lead or next((pid for pid, p in people if p.role == "lead"), None)
        director = director or next((pid for pid, p in people if p.role == "director"), None)
        bosses = tuple(x for x in (lead, director) if x)
        if bosses:
            panes.append(Pane("lead", f"user:{bosses[0]}", bosses))
        return panes

    def may_speak(self, person: str, conversation: str) -> bool:
        """Whether `person` (a playground id) may write in `conversation`."""
        if person not in self.people:
            return False
        kind, _, ident = conversation.partition(":")
        if kind == "user":
            return ident == person
        if kind == "group":
            return any(p.conversation == conversation and person in p.members for p in self.panes)
        return False

    def display_names(self, ids: Iterable[str]) -> list[str]:
        return [self.people[i].name if i in self.people else i for i in ids]

    # ---- lifecycle -------------------------------------------------------

    def routes(self):
        """The page and its API (routes.py)."""
        return playground_routes(self)

    async def close(self) -> None:
        self._closing = True
        self._wake()

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        key = conversation_key(to)
        outbox_id = current_outbox_id.get()
        if isinstance(message, Text):
            kind = "text"
            payload = {"html": render_text_html(message.text, self.display_names(message.mentions))}
        elif isinstance(message, CardMessage):
            kind = "card"
            card = message.card
            images = [url for url in [await self._thumbnail_url(ref) for ref in card.images] if url]
            payload = {
                "html": render_card_html(card, self.display_names(message.mentions), images),
                "track_key": card.track_key,
            }
        elif isinstance(message, Image):
            kind = "image"
            url = await self._publish_image(message.path)
            caption = render_text_html(message.caption) if message.caption else None
            payload = {"url": url, "caption": caption}
        else:  # calls and SMS go to phones, not chats
            raise DeliveryError(f"cannot show {type(message).__name__} on the playground", retryable=False)

        async with self.db.session() as s:
            if kind == "card" and message.update and message.card.track_key:
                if await self._card_shown(s, key, message.card.track_key):
                    kind = "card_update"
            await self._insert(
                s,
                conversation=key,
                sender_id=None,
                sender_name=BOT_NAME,
                kind=kind,
                payload=payload,
                outbox_id=outbox_id,
            )
        self._wake()
        return {"conversation": key} if isinstance(message, CardMessage) else None

    async def _card_shown(self, s, conversation: str, track_key: str) -> bool:
        stmt = (
            select(PlaygroundMessage.id)
            .where(PlaygroundMessage.conversation == conversation)
            .where(PlaygroundMessage.kind.in_(("card", "card_update")))
            .where(PlaygroundMessage.payload["track_key"].as_string() == track_key)
            .limit(1)
        )
        return (await s.exec(stmt)).first() is not None

    async def _insert(self, s, *, outbox_id: int | None = None, **values) -> None:
        """INSERT ... ON CONFLICT (outbox_id) DO NOTHING: a re-delivered row is a no-op."""
        dialect = postgresql if self.db.is_postgres else sqlite
        stmt = dialect.insert(PlaygroundMessage).values(outbox_id=outbox_id, created_at=utcnow(), **values)
        if outbox_id is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["outbox_id"])
        await s.exec(stmt)

    async def _thumbnail_url(self, ref: str) -> str | None:
        """A card photo's URL on this page: local image files are published; others
        (a platform's media id not fetched) have none and are only counted."""
        path = Path(ref)
        if path.suffix.lower() not in IMAGE_TYPES or not await asyncio.to_thread(path.is_file):
            return None
        if path.parent.resolve() == self.media_dir.resolve():
            return MEDIA_PREFIX + path.name
        try:
            return await self._publish_image(ref)
        except DeliveryError:
            return None

    async def save_photo(self, data: bytes, suffix: str) -> Path:
        """Store a picture a person sent from the page, named by its content; its path."""

        return await asyncio.to_thread(self._store, data, suffix)

    def _store(self, data: bytes, suffix: str) -> Path:
        return store_content(self.media_dir, data, suffix)

    async def record_user_image(self, conversation: str, person: str, path: Path, client_id: str) -> bool:
        """Show a person's own picture; False when this client_id was shown already."""
        sender = self.people[person]
        async with self.db.session() as s:
            if await self._client_message(s, conversation, person, client_id):
                return False
            await self._insert(s, conversation=conversation, sender_id=person, sender_name=sender.name,
                               kind="image", payload={"url": MEDIA_PREFIX + path.name, "client_id": client_id})
        self._wake()
        return True

    async def _client_message(self, s, conversation: str, person: str, client_id: str) -> bool:
        stmt = (
            select(PlaygroundMessage.id)
            .where(PlaygroundMessage.conversation == conversation)
            .where(PlaygroundMessage.sender_id == person)
            .where(PlaygroundMessage.payload["client_id"].as_string() == client_id)
            .limit(1)
        )
        return (await s.exec(stmt)).first() is not None

    async def _publish_image(self, path: str) -> str:
        """Copy the image under the media folder, named by its content; its URL."""
        src = Path(path)
        suffix = src.suffix.lower()
        if suffix not in IMAGE_TYPES:
            raise DeliveryError(f"the playground shows {', '.join(sorted(IMAGE_TYPES))} images, not {src.name}", retryable=False)

        def copy() -> str:
            try:
                data = src.read_bytes()
            except FileNotFoundError:
                raise DeliveryError(f"image file not found: {src}", retryable=False) from None
            return self._store(data, suffix).name

        return MEDIA_PREFIX + await asyncio.to_thread(copy)

    # ---- what people type on the page -------------------------------------

    async def record_user_text(self, conversation: str, person: str, text: str, client_id: str) -> bool:
        """Show a person's own message; False when this client_id was shown already."""
        sender = self.people[person]
        async with self.db.session() as s:
            if await self._client_message(s, conversation, person, client_id):
                return False
            await self._insert(
                s,
                conversation=conversation,
                sender_id=person,
                sender_name=sender.name,
                kind="text",
                payload={"html": render_text_html(text), "client_id": client_id},
            )
        self._wake()
        return True

    def mentioned(self, text: str) -> tuple[str, ...]:
        """Playground ids of the people written as @name in `text`."""
        return tuple(self._mentioned(text))

    def _mentioned(self, text: str) -> list[str]:
        found = []
        # Longest names first, so "@张工程师" is not read as "@张工".
        for pid, p in sorted(self.people.items(), key=lambda kv: -len(kv[1].name)):
            if f"@{p.name}" in text or f"＠{p.name}" in text:
                found.append(pid)
        return found

    # ---- reading ---------------------------------------------------------

    async def messages_after(self, after: int, limit: int = 200) -> tuple[list[PlaygroundMessage], int]:
        """Rows with id > after (oldest first, at most `limit`) and the highest id."""
        async with self.db.session() as s:
            rows = list(
                (
                    await s.exec(
                        select(PlaygroundMessage)
                        .where(PlaygroundMessage.id > after)
                        .order_by(PlaygroundMessage.id)
                        .limit(limit)
                    )
                ).all()
            )
            if rows:
                return rows, rows[-1].id or 0
            top = (await s.exec(select(func.max(PlaygroundMessage.id)))).first()
            return rows, int(top or 0)

    async def wait_for_messages(
        self, after: int, wait: float, limit: int = 200, stop: Callable[[], bool] | None = None
    ) -> tuple[list[PlaygroundMessage], int]:
        """Like messages_after, but waits up to `wait` seconds for a first row.

        `stop` is looked at about once a second: true ends the wait early
        (the server is shutting down, the client went away).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            changed = self._changed
            rows, last = await self.messages_after(after, limit)
            remaining = deadline - loop.time()
            if rows or self._closing or remaining <= 0 or (stop is not None and stop()):
                return rows, last
            await wait_event(changed, min(remaining, RECHECK_SECONDS))

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
