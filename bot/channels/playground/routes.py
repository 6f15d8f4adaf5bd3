"""HTTP routes of the playground: the page, its files and its small JSON API.

    GET  /playground                   the page
    GET  /playground/static/{name}     its script and style sheet
    GET  /playground/media/{name}      images the bot sent
    GET  /playground/api/state         people and chat panes
    GET  /playground/api/messages      new messages (long-poll: ?after=<id>&wait=<s>)
    POST /playground/api/send          a person types a message
    POST /playground/api/click         a person clicks a card button
    POST /playground/api/photo         a person sends a picture (the image as the body;
                                       ?conversation=&sender_id=&client_id=)

Messages the bot sends reach the page through PlaygroundChannel.send (called by
the outbox worker); what people type goes to the core through the channel's sink.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.channels.playground.model import MEDIA_PREFIX, Page, Pane, message_json, parse_conversation
from bot.events import InboundEvent
from bot.inbound import UPLOAD_TIMEOUT, Refusal, json_object
from bot.texts import t

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY = 64 * 1024
MAX_PHOTO = 8 * 1024 * 1024
PHOTO_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}
MAX_TEXT = 2000
MAX_WAIT = 25.0
PAGE_SIZE = 200
_STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.(html|js|css|png|svg|ico)$")
_MEDIA_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpg|jpeg|gif|webp)$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_NO_STORE = {"Cache-Control": "no-store"}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=_NO_STORE)


async def _read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Refusal(413, f"request body larger than {MAX_BODY // 1024} KiB")
    body = await request.read()  # already read, within [server] limits, by the app's guard
    if len(body) > MAX_BODY:
        raise Refusal(413, f"request body larger than {MAX_BODY // 1024} KiB")
    return json_object(body, "the request body")


def _field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None or value == "":
        raise Refusal(400, f"missing {name!r}")
    if not isinstance(value, str):
        raise Refusal(400, f"{name!r} must be a string")
    return value


def _closing(request: web.Request) -> bool:
    """Whether the server is closing this connection (shutdown, client gone).

    aiohttp has no public flag for it; without one a long-poll just runs its course.
    """
    proto = request.protocol
    return bool(getattr(proto, "_close", False) or getattr(proto, "_force_close", False))


def pane_title(channel: Page, pane: Pane, speaker: str | None = None) -> str:
    if pane.kind == "group":
        if pane.team_name:
            return t("playground.group_title", team=pane.team_name)
        return t("playground.group_title_default")
    person = channel.people[speaker or pane.speakers[0]]
    return t("playground.user_title", role=role_label(person.role), name=person.name)


def role_label(role: str) -> str:
    return t(f"playground.roles.{role}")


def playground_routes(channel: Page) -> list[web.RouteDef]:
    """The playground's routes, bound to its channel."""

    def speaker_and_conversation(data: dict[str, Any]) -> tuple[str, str]:
        conversation = _field(data, "conversation")
        address = parse_conversation(conversation)
        if address is None:
            raise Refusal(400, f"unknown conversation {conversation!r}")
        person = _field(data, "sender_id")
        if person not in channel.people:
            raise Refusal(400, f"unknown person {person!r}")
        if not channel.may_speak(person, conversation):
            name = channel.people[person].name
            raise Refusal(403, f"{name} ({person}) may not write in {conversation}")
        client_id = _field(data, "client_id")
        if not _CLIENT_ID.match(client_id):
            raise Refusal(400, "'client_id' must be 1-100 letters, digits or _.:-")
        return person, conversation

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (STATIC_DIR / name).resolve()
        if not _STATIC_NAME.match(name) or path.parent != STATIC_DIR.resolve() or not path.is_file():
            return _error(404, "no such file")
        return web.FileResponse(path, headers=_PAGE_HEADERS)

    async def media(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = channel.media_dir / name
        if not _MEDIA_NAME.match(name) or not path.is_file():
            return _error(404, "no such image")
        return web.FileResponse(path, headers={"Cache-Control": "max-age=86400", "X-Content-Type-Options": "nosniff"})

    async def root(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/playground")

    async def state(request: web.Request) -> web.Response:
        people = [
            {"id": pid, "name": p.name, "role": p.role, "role_label": role_label(p.role)}
            for pid, p in channel.people.items()
        ]
        panes = []
        for pane in channel.panes:
            entry: dict[str, Any] = {
                "key": pane.key,
                "kind": pane.kind,
                "conversation": pane.conversation,
                "title": pane_title(channel, pane),
                "speakers": list(pane.speakers),
            }
            if pane.kind == "user":
                # Switching the speaker of a 1:1 pane switches to that person's chat.
                entry["conversations"] = {s: f"user:{s}" for s in pane.speakers}
                entry["titles"] = {s: pane_title(channel, pane, s) for s in pane.speakers}
            else:
                # Each speaker's own 1:1 chat with the bot, shown on a second tab.
                entry["direct"] = {s: f"user:{s}" for s in pane.speakers}
            panes.append(entry)
        return web.json_response(
            {"bot": {"name": "RelayDesk"}, "people": people, "panes": panes, "media_prefix": MEDIA_PREFIX},
            headers=_NO_STORE,
        )

    async def messages(request: web.Request) -> web.Response:
        raw_after = request.query.get("after", "0")
        raw_wait = request.query.get("wait", "0")
        if not re.fullmatch(r"\d{1,18}", raw_after):
            raise Refusal(400, "'after' must be a message id (a whole number >= 0)")
        try:
            wait = float(raw_wait)
        except ValueError:
            raise Refusal(400, f"'wait' must be a number of seconds between 0 and {MAX_WAIT:g}")
        if not math.isfinite(wait) or not 0 <= wait <= MAX_WAIT:
            raise Refusal(400, f"'wait' must be a number of seconds between 0 and {MAX_WAIT:g}")
        after = int(raw_after)
        rows, last = await channel.wait_for_messages(after, wait, PAGE_SIZE, stop=lambda: _closing(request))
        return web.json_response(
            {"messages": [message_json(r) for r in rows], "last_id": last, "more": len(rows) >= PAGE_SIZE},
            headers=_NO_STORE,
        )

    async def send(request: web.Request) -> web.Response:
        data = await _read_json(request)
        person, conversation = speaker_and_conversation(data)
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise Refusal(400, "empty message: type some text")
        text = text.strip()
        if len(text) > MAX_TEXT:
            raise Refusal(400, f"message longer than {MAX_TEXT} characters")
        client_id = data["client_id"]
        # The person's own bubble first, so it shows before the bot's answer.
        await channel.record_user_text(conversation, person, text, client_id)
        p = channel.people[person]
        address = parse_conversation(conversation)
        assert address is not None
        event = InboundEvent(
            platform=channel.name,
            event_id=client_id,
            sender_id=person,
            sender_name=p.name,
            conversation=address,
            kind="text",
            text=text,
            mentions=tuple(m for m in channel.mentioned(text) if m != person),
        )
        try:
            result = await channel.sink(event)
        except Exception:
            log.exception("playground: the core failed on a message from %s", person)
            return _error(500, "the bot failed to handle this message; see the bot's log")
        return web.json_response({"ok": True, "duplicate": result.duplicate}, headers=_NO_STORE)

    async def click(request: web.Request) -> web.Response:
        data = await _read_json(request)
        person, conversation = speaker_and_conversation(data)
        token = _field(data, "token")
        if len(token) > 512:
            raise Refusal(400, "'token' is too long")
        address = parse_conversation(conversation)
        assert address is not None
        event = InboundEvent(
            platform=channel.name,
            event_id=data["client_id"],
            sender_id=person,
            sender_name=channel.people[person].name,
            conversation=address,
            kind="action",
            action_token=token,
        )
        try:
            result = await channel.sink(event)
        except Exception:
            log.exception("playground: the core failed on a click from %s", person)
            return _error(500, "the bot failed to handle this click; see the bot's log")
        return web.json_response(
            {"ok": True, "toast": result.toast, "duplicate": result.duplicate}, headers=_NO_STORE
        )

    async def photo(request: web.Request) -> web.Response:
        try:
            person, conversation = speaker_and_conversation(dict(request.query))
            suffix = PHOTO_TYPES.get(request.content_type)
            if suffix is None:
                raise Refusal(415, f"send a picture ({', '.join(sorted(PHOTO_TYPES))}), not {request.content_type!r}")
            if request.content_length is not None and request.content_length > MAX_PHOTO:
                raise Refusal(413, f"picture larger than {MAX_PHOTO // (1024 * 1024)} MiB")
            data = bytearray()
            try:
                async with asyncio.timeout(UPLOAD_TIMEOUT):
                    async for chunk in request.content.iter_any():
                        data += chunk
                        if len(data) > MAX_PHOTO:
                            raise Refusal(413, f"picture larger than {MAX_PHOTO // (1024 * 1024)} MiB")
            except TimeoutError:
                raise Refusal(408, f"picture not received within {UPLOAD_TIMEOUT:g} s") from None
            if not data:
                raise Refusal(400, "empty picture")
        except Refusal as r:
            return _error(r.status, r.reason)
        client_id = request.query["client_id"]
        path = await channel.save_photo(bytes(data), suffix)
        await channel.record_user_image(conversation, person, path, client_id)
        address = parse_conversation(conversation)
        assert address is not None
        event = InboundEvent(
            platform=channel.name,
            event_id=client_id,
            sender_id=person,
            sender_name=channel.people[person].name,
            conversation=address,
            kind="image",
            image_ref=str(path.resolve()),
        )
        try:
            result = await channel.sink(event)
        except Exception:
            log.exception("playground: the core failed on a picture from %s", person)
            return _error(500, "the bot failed to handle this picture; see the bot's log")
        return web.json_response({"ok": True, "duplicate": result.duplicate}, headers=_NO_STORE)

    async def trailing_slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/playground")

    return [
        web.get("/", root),
        web.get("/playground", page),
        web.get("/playground/", trailing_slash),
        web.get("/playground/static/{name}", static),
        web.get("/playground/media/{name}", media),
        web.get("/playground/api/state", state),
        web.get("/playground/api/messages", messages),
        web.post("/playground/api/send", send),
        web.post("/playground/api/click", click),
        web.post("/playground/api/photo", photo),
    ]
