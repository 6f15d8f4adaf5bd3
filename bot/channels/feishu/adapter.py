"""The Feishu / Lark (飞书) channel.

Inbound: one URL, `/callbacks/feishu`, for the event subscription
(`im.message.receive_v1`) and the card callback (`card.action.trigger`):

1. the raw body is read once (the app answers 413 past `[server] max_body_bytes`);
2. when an Encrypt Key is set, `X-Lark-Signature` is checked over the raw bytes
   (SHA-256 of timestamp + nonce + encrypt_key + body) before anything else;
   only the URL-verification challenge may come unsigned, as Feishu sends it;
3. `{"encrypt": ...}` bodies are decrypted (AES-256-CBC, strict PKCS#7);
4. the verification token (`header.token`, or `token` in the challenge) must match;
5. the event becomes neutral InboundEvents handed to the sink, and the answer
   (200) goes out only after the sink returned: a message that got a 200 is in
   the database.

De-duplication: the sink de-duplicates atomically by (platform, event_id).
Messages use their `message_id` as event id (Feishu re-pushes a message with
the same message_id, sometimes under a new header.event_id, so message_id is the
stricter key and also covers event_id retries); images inside a rich-text post
get `<message_id>:img<n>`. Card clicks use `header.event_id`: every click is a
new event, and a re-delivered click carries the same event_id.

A click is answered inside Feishu's 3 s with a toast and the replacement card
(`{"toast": ..., "card": {"type": "raw", "data": <card>}}`), rendered from the
core's HandleResult: the card is shared (`update_multi`), so everybody sees the
new state at once, without waiting for the outbox. The outbox later PATCHes the
same message for the same change; that PATCH is held until the click's answer
has been written and skipped when it would show exactly what the answer
already showed (Feishu reverts updates made before the callback's answer).

The legacy card callback (消息卡片请求网址, SHA-1 signature) is refused with a
message that says what to configure instead.

Outbound goes through `FeishuAPI` (bot/channels/feishu/api.py). Addresses:
a group is a chat_id (`oc_...`); a user is an open_id (`ou_...`) — or a
user_id / union_id (`on_...`) / e-mail, recognised by their form.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from bot.channel import Channel, DeliveryError, EventSink, current_outbox_id, register
import bot.channels.feishu.crypto as crypto
from bot.channels.feishu.api import FeishuAPI, FeishuAPIError
from bot.channels.feishu.state import ClickAnswers
from bot.channels.feishu.stream import FeishuStream
from bot.channels.shared.bounded import Bounded
from bot.channels.shared.verify import same
from bot.config import FeishuConfig
from bot.inbound import Refusal, json_object
from bot.events import Address, CardMessage, Image, InboundEvent, Outbound, Text
from bot.channels.feishu.render import button_token, card_content, safe_id
from storage.db import Database

log = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks/feishu"
MESSAGE_EVENT = "im.message.receive_v1"
CARD_EVENT = "card.action.trigger"
# A group member's last message in a thread is where replies to them go, for this long.
THREAD_TTL = 30 * 60.0
# Retry the bot-info lookup no more often than this.
BOT_LOOKUP_RETRY = 60.0
# `<at ...>` / `</at>` typed by people must not become real mentions in our texts.
_AT_TAG = re.compile(r"<(/?\s*at\b)", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\u3000]{2,}")

LEGACY_CARD_HINT = (
    "this is Feishu's legacy card callback (消息卡片请求网址, card.action.trigger_v1), which RelayDesk "
    "does not take. In the Feishu developer console open 事件与回调 → 回调配置, choose "
    "'将回调发送至开发者服务器' with the request URL <public_url>/callbacks/feishu, subscribe "
    "'卡片回传交互' (card.action.trigger), and clear the old 消息卡片请求网址."
)


def _receiver(to: Address) -> tuple[str, str]:
    """receive_id_type and receive_id for an address."""
    ident = to.id
    if to.kind == "group" or ident.startswith("oc_"):
        return "chat_id", ident
    if ident.startswith("ou_"):
        return "open_id", ident
    if ident.startswith("on_"):
        return "union_id", ident
    if "@" in ident:
        return "email", ident
    return "user_id", ident


def neutralize(text: str) -> str:
    """Text as typed, with `<at ...>` tags defused (full-width bracket) so they stay text."""
    return _AT_TAG.sub(lambda m: "＜" + m.group(1), text)


def text_content(text: str, mentions: tuple[str, ...] = ()) -> str:
    """The `content` of a text message, @-mentioning `mentions` (open_ids / user_ids) first."""
    ats = "".join(f'<at user_id="{m}"></at> ' for m in mentions if safe_id(m))
    return json.dumps({"text": ats + neutralize(text)}, ensure_ascii=False)


def _tidy(text: str) -> str:
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()).strip()


def resolve_mentions(text: str, mentions: list[dict], bot_open_id: str | None) -> tuple[str, tuple[str, ...]]:
    """Replace `@_user_N` keys by `@<name>` (the bot's own mention removed); the people's open_ids."""
    ids: list[str] = []
    for m in mentions:
        oid = (m.get("id") or {}).get("open_id")
        if oid and oid != bot_open_id and oid not in ids:
            ids.append(oid)
    # Longest keys first: "@_user_10" must not be read as "@_user_1" + "0".
    for m in sorted(mentions, key=lambda m: -len(str(m.get("key") or ""))):
        key = m.get("key")
        if not isinstance(key, str) or not key:
            continue
        oid = (m.get("id") or {}).get("open_id")
        replacement = "" if bot_open_id and oid == bot_open_id else f"@{m.get('name') or ''}"
        text = text.replace(key, replacement)
    text = text.replace("@_all", "")
    return _tidy(text), tuple(ids)


def _post_body(content: dict) -> dict:
    """A received post's {title, content}; tolerates the per-language wrapping of sent posts."""
    if isinstance(content.get("content"), list):
        return content
    for value in content.values():
        if isinstance(value, dict) and isinstance(value.get("content"), list):
            return value
    return {}


def parse_post(content: dict, mentions: list[dict], bot_open_id: str | None) -> tuple[str, tuple[str, ...], list[str]]:
    """Text (mentions resolved), mentioned open_ids and image keys of a rich-text post."""
    post = _post_body(content)
    by_key = {m.get("key"): m for m in mentions if isinstance(m, dict)}
    extra: list[dict] = []
    lines: list[str] = []
    images: list[str] = []
    title = post.get("title")
    if isinstance(title, str) and title.strip():
        lines.append(title.strip())
    for para in post.get("content") or []:
        if not isinstance(para, list):
            continue
        parts: list[str] = []
        for el in para:
            if not isinstance(el, dict):
                continue
            tag = el.get("tag")
            if tag in ("text", "a", "md", "code_block"):
                parts.append(str(el.get("text") or ""))
            elif tag == "at":
                uid = str(el.get("user_id") or "")
                if uid in by_key:
                    parts.append(uid)  # a key, resolved below with the others
                elif uid == "all" or uid == "@_all":
                    continue
                elif uid:
                    if uid != bot_open_id:
                        parts.append(f"@{el.get('user_name') or ''}")
                        extra.append({"id": {"open_id": uid}})
            elif tag == "img" and el.get("image_key"):
                images.append(str(el["image_key"]))
        line = "".join(parts)
        if line.strip():
            lines.append(line)
    text, ids = resolve_mentions("\n".join(lines), mentions, bot_open_id)
    more = [e["id"]["open_id"] for e in extra if e["id"]["open_id"] not in ids]
    return text, ids + tuple(more), images


@register("feishu", FeishuConfig)
class FeishuChannel(Channel):
    name = "feishu"
    # 5 QPS per user and 5 QPS per group, shared by all bots (docs/channels/feishu.md).
    rate_limits = {"user": (5, 1.0), "group": (5, 1.0)}

    def __init__(self, config: FeishuConfig, sink: EventSink, db: Database):
        super().__init__(sink)
        self.config = config
        self.db = db
        self.api = FeishuAPI(config.app_id, config.app_secret, config.api_base)
        self.bot_open_id: str | None = config.bot_open_id
        self._bot_task: asyncio.Task | None = None
        self._bot_lookup_at = 0.0
        # p2p chat_id -> the person's open_id (from their messages and our sends).
        self._p2p_chats: Bounded = Bounded(10_000)
        # (chat_id, open_id) -> (message_id, monotonic time) of their last message in a thread.
        self._threads: Bounded = Bounded(10_000)
        # Cards whose click is being answered, and what the answer showed (bot/channels/feishu/state.py).
        self.clicks = ClickAnswers()
        self._warned: set[str] = set()
        self._groups_seen: Bounded = Bounded(1_000)
        # Stream mode: the long connection (bot/channels/feishu/stream.py).
        self.stream = (FeishuStream(config, self.handle_payload).link if config.mode == "stream" else None)

    # ---- lifecycle -------------------------------------------------------

    def routes(self) -> list[web.AbstractRouteDef]:
        # Stream mode: events and clicks come over the outbound connection; no public URL.
        return [] if self.stream is not None else [web.post(CALLBACK_PATH, self.handle_callback)]

    async def start(self) -> None:
        await self.api.start()
        if not self.bot_open_id:
            self._bot_task = asyncio.create_task(self._lookup_bot(), name="feishu-bot-info")
        if self.stream is not None:
            self.stream.start()

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self._bot_task is not None and not self._bot_task.done():
            self._bot_task.cancel()
            # Waits for the lookup to end without swallowing a cancellation of close() itself.
            await asyncio.wait([self._bot_task], timeout=5)
        await self.api.close()

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def _lookup_bot(self) -> None:
        self._bot_lookup_at = time.monotonic()
        try:
            self.bot_open_id = await self.api.bot_open_id()
            log.info("Feishu bot open_id: %s", self.bot_open_id)
        except DeliveryError as e:
            self._warn_once("bot_info", "Feishu: could not look up the bot's open_id (%s); group messages are "
                            "taken as addressed to the bot until it is known. Set [feishu] bot_open_id "
                            "to skip the lookup.", e)

    async def _bot_id(self) -> str | None:
        if self.bot_open_id:
            return self.bot_open_id
        task = self._bot_task
        if task is None or (task.done() and time.monotonic() - self._bot_lookup_at > BOT_LOOKUP_RETRY):
            task = self._bot_task = asyncio.create_task(self._lookup_bot(), name="feishu-bot-info")
        # Wait a moment for the lookup without cancelling it (it serves later messages too).
        await asyncio.wait([task], timeout=1.5)
        return self.bot_open_id

    # ---- inbound ---------------------------------------------------------

    async def handle_callback(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = self._open(request, body)
        response: web.StreamResponse | None = None

        async def write(answer: dict) -> None:
            nonlocal response
            response = web.json_response(answer)
            await response.prepare(request)
            await response.write_eof()

        await self.handle_payload(payload, write)
        assert response is not None
        return response

    def _open(self, request: web.Request, body: bytes) -> dict:
        """Verify and decrypt a callback body; the event payload.

        Feishu signs the raw body: with an Encrypt Key set, the signature is checked
        before the body is parsed at all.
        """
        key = self.config.encrypt_key
        ts = request.headers.get("X-Lark-Request-Timestamp", "")
        nonce = request.headers.get("X-Lark-Request-Nonce", "")
        sig = request.headers.get("X-Lark-Signature", "")
        if key and sig and not same(crypto.signature(ts, nonce, key, body), sig):
            if same(crypto.legacy_signature(ts, nonce, self.config.verification_token, body), sig) \
                    and self._is_legacy_card(json_object(body)):
                self._refuse_legacy()
            raise Refusal(403, "signature mismatch", hint="check [feishu] encrypt_key")
        outer = json_object(body)
        if "encrypt" in outer:
            if not key:
                self._warn_once("no_key", "Feishu sends encrypted callbacks but [feishu] encrypt_key is not set: "
                                "copy the Encrypt Key from 开发者后台 → 事件与回调 → 加密策略")
                raise Refusal(400, "encrypted callback, but no encrypt_key is configured")
            if not isinstance(outer["encrypt"], str):
                raise Refusal(400, "encrypt must be a string")
            try:
                plain = crypto.decrypt(key, outer["encrypt"])
            except crypto.FeishuCryptoError:
                raise Refusal(400, "cannot decrypt the body", hint="check [feishu] encrypt_key") from None
            payload = json_object(plain, "the decrypted body")
        else:
            payload = outer
        challenge = payload.get("type") == "url_verification"
        if key and not sig and not challenge:
            raise Refusal(403, "X-Lark-Signature missing")
        header = payload.get("header")
        token = header.get("token") if isinstance(header, dict) and "token" in header else payload.get("token")
        if not isinstance(token, str) or not same(token, self.config.verification_token):
            raise Refusal(403, "wrong verification token", hint="check [feishu] verification_token")
        return payload

    @staticmethod
    def _is_legacy_card(payload: dict) -> bool:
        return "schema" not in payload and "open_message_id" in payload and isinstance(payload.get("action"), dict)

    def _refuse_legacy(self) -> None:
        self._warn_once("legacy", "Feishu: %s", LEGACY_CARD_HINT)
        raise Refusal(400, LEGACY_CARD_HINT)

    async def handle_payload(self, payload: dict, write: Callable[[dict], Awaitable[None]]) -> None:
        """A verified event payload (callback body or stream frame) through the sink; `write`
        sends the answer once what the payload carries is recorded."""
        if payload.get("type") == "url_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                raise Refusal(400, "challenge missing")
            await write({"challenge": challenge})
            return
        if self._is_legacy_card(payload):
            self._refuse_legacy()
        header, event = payload.get("header"), payload.get("event")
        event_type = header.get("event_type") if isinstance(header, dict) else None
        if payload.get("schema") != "2.0" or not isinstance(event, dict) or event_type not in (MESSAGE_EVENT,
                                                                                             CARD_EVENT):
            # Schema 1.0 events and other event types: RelayDesk subscribes to none.
            self.count("ignored")
            await write({})
            return
        try:
            if event_type == MESSAGE_EVENT:
                events = await self._message_events(event)
            else:
                click = self._card_event(header, event)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise Refusal(400, f"malformed {event_type} event", hint=f"{type(e).__name__}: {e}") from None
        if event_type == CARD_EVENT:
            await self._answer_click(click, write)
            return
        for e in events:
            await self.sink(e)
        if not events:
            self.count("ignored")
        await write({})

    async def _message_events(self, event: dict) -> list[InboundEvent]:
        sender, msg = event["sender"], event["message"]
        if sender.get("sender_type", "user") != "user":
            return []  # other bots and apps
        open_id = sender["sender_id"]["open_id"]
        message_id = msg["message_id"]
        chat_id = msg.get("chat_id")
        if not isinstance(open_id, str) or not isinstance(message_id, str) or not open_id or not message_id:
            raise ValueError("sender open_id or message_id missing")
        mentions = [m for m in (msg.get("mentions") or []) if isinstance(m, dict)]
        if msg.get("chat_type") == "p2p":
            conversation = Address(self.name, "user", open_id)
            if chat_id:
                self._p2p_chats[chat_id] = open_id
            bot = self.bot_open_id
        else:
            if not isinstance(chat_id, str) or not chat_id:
                raise ValueError("chat_id missing")
            conversation = Address(self.name, "group", chat_id)
            bot = await self._bot_id()
            if bot and not any((m.get("id") or {}).get("open_id") == bot for m in mentions):
                return []  # group chatter not addressed to the bot
            if chat_id not in self._groups_seen:
                self._groups_seen[chat_id] = True
                log.info("Feishu: the bot was addressed in group chat %s (a chat_id for [[teams]] groups)", chat_id)
            if msg.get("thread_id") or msg.get("root_id"):
                self._threads[(chat_id, open_id)] = (message_id, time.monotonic())
        kind = msg.get("message_type")
        raw = msg.get("content") or "{}"
        content = json_object(raw, "the message content") if isinstance(raw, str) else raw
        common = dict(platform=self.name, sender_id=open_id, conversation=conversation,
                      context={"message_id": message_id, "chat_id": chat_id})
        if kind == "text":
            text, ids = resolve_mentions(str(content.get("text") or ""), mentions, bot)
            return [InboundEvent(event_id=message_id, kind="text", text=text, mentions=ids, **common)]
        if kind == "image":
            image_key = content.get("image_key")
            if not image_key:
                raise ValueError("image_key missing")
            return [InboundEvent(event_id=message_id, kind="image", image_ref=f"{message_id}/{image_key}", **common)]
        if kind == "post":
            text, ids, images = parse_post(content, mentions, bot)
            out = []
            if text:
                out.append(InboundEvent(event_id=message_id, kind="text", text=text, mentions=ids, **common))
            for i, image_key in enumerate(images):
                out.append(InboundEvent(event_id=f"{message_id}:img{i}", kind="image",
                                        image_ref=f"{message_id}/{image_key}", **common))
            return out
        log.debug("Feishu message %s of type %r ignored", message_id, kind)
        return []

    def _card_event(self, header: dict, event: dict) -> InboundEvent:
        event_id = header["event_id"]
        open_id = event["operator"]["open_id"]
        if not isinstance(event_id, str) or not event_id or not isinstance(open_id, str) or not open_id:
            raise ValueError("event_id or operator.open_id missing")
        action = event.get("action") or {}
        ctx = event.get("context") or {}
        message_id = ctx.get("open_message_id")
        chat_id = ctx.get("open_chat_id")
        if chat_id and chat_id not in self._p2p_chats:
            conversation = Address(self.name, "group", chat_id)
        else:
            conversation = Address(self.name, "user", open_id)
        return InboundEvent(
            platform=self.name, event_id=event_id, sender_id=open_id, conversation=conversation, kind="action",
            action_token=button_token(action.get("value")),
            context={"message_id": message_id, "chat_id": chat_id, "update_token": event.get("token")},
        )

    async def _answer_click(self, inbound: InboundEvent, write: Callable[[dict], Awaitable[None]]) -> None:
        """The sink's verdict on a click as Feishu's callback answer: toast and replacement card."""
        message_id = inbound.context.get("message_id")
        answered = self.clicks.begin(message_id)
        try:
            result = await self.sink(inbound)
            body: dict[str, Any] = {}
            if not result.duplicate:
                if result.toast:
                    body["toast"] = {"type": "info", "content": result.toast}
                if result.card is not None:
                    content = card_content(result.card)
                    body["card"] = {"type": "raw", "data": json.loads(content)}
                    if message_id:
                        self.clicks.showed(message_id, content)
            await write(body)
        finally:
            self.clicks.end(message_id, answered)

    # ---- outbound --------------------------------------------------------

    def _uuid(self, to: Address, content: str, part: str = "") -> str | None:
        """Feishu's send-dedupe key: stable for one outbox row, different for anything else."""
        outbox_id = current_outbox_id.get()
        if outbox_id is None:
            return None
        digest = hashlib.sha1(f"{to.kind}|{to.id}|{content}".encode("utf-8")).hexdigest()[:16]
        return f"rd{outbox_id}{part}-{digest}"

    def _learn_chat(self, to: Address, data: dict) -> None:
        chat_id = data.get("chat_id")
        if chat_id and to.kind == "user":
            self._p2p_chats[chat_id] = to.id

    def _thread_for(self, to: Address, mentions: tuple[str, ...]) -> str | None:
        """The message to reply to in a thread, when the person we answer wrote there lately."""
        if to.kind != "group":
            return None
        now = time.monotonic()
        for m in mentions:
            entry = self._threads.get((to.id, m))
            if entry and now - entry[1] < THREAD_TTL:
                return entry[0]
        return None

    async def _send(self, to: Address, msg_type: str, content: str, *, reply_to: str | None = None,
                    part: str = "") -> dict:
        uuid = self._uuid(to, content, part)
        if reply_to:
            data = await self.api.reply_message(reply_to, msg_type, content, in_thread=True, uuid=uuid)
        else:
            receive_id_type, receive_id = _receiver(to)
            data = await self.api.send_message(receive_id_type, receive_id, msg_type, content, uuid=uuid)
        self._learn_chat(to, data)
        return data

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        if to.channel != self.name or not to.id:
            raise DeliveryError(f"not a Feishu address: {to}", retryable=False)
        if isinstance(message, Text):
            await self._send(to, "text", text_content(message.text, message.mentions),
                             reply_to=self._thread_for(to, message.mentions))
            return None
        if isinstance(message, CardMessage):
            return await self._send_card(to, message, ref)
        if isinstance(message, Image):
            image_key = await self.api.upload_image(message.path)
            await self._send(to, "image", json.dumps({"image_key": image_key}))
            if message.caption:
                await self._send(to, "text", text_content(message.caption), part="c")
            return None
        raise DeliveryError(f"cannot send {type(message).__name__} to Feishu", retryable=False)

    async def _send_card(self, to: Address, message: CardMessage, ref: dict | None) -> dict:
        content = card_content(message.card, message.mentions)
        message_id = (ref or {}).get("message_id")
        if message.update and message_id:
            if await self.clicks.already_shown(message_id, content):
                return dict(ref or {})  # the click's answer already shows exactly this
            try:
                await self.api.patch_message(message_id, content)
                return dict(ref or {})
            except FeishuAPIError as e:
                if e.retryable:
                    raise
                # Deleted, recalled, older than 14 days, not a shared card...: send it anew.
                log.warning("Feishu card %s could not be updated (%s); sending a new card", message_id, e)
        data = await self._send(to, "interactive", content)
        new_id = data.get("message_id")
        if not new_id:
            raise DeliveryError("Feishu accepted the card but returned no message_id")
        return {"message_id": new_id, "chat_id": data.get("chat_id")}
