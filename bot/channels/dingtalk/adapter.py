"""The DingTalk (钉钉) channel: an enterprise app's robot in HTTP mode.

Routes (docs/channels/dingtalk.md has the console set-up):

* `POST /callbacks/dingtalk` - robot messages, 1:1 and @robot in groups.
  Headers `timestamp` + `sign` (HMAC-SHA256 with the app secret), one-hour
  window. De-duplicated by `msgId` in the ticket core (DingTalk redelivers
  about a minute later when a handler is slow).
* `POST /callbacks/dingtalk/card` - interactive-card button clicks (only with
  `card_template_id`). Headers `x-ddpaas-signature-timestamp` +
  `x-ddpaas-signature` (HMAC-SHA256 with the registered apiSecret).
* `POST /callbacks/dingtalk/events` - the encrypted event subscription (only
  with `event_token`): the `check_url` handshake and address-book events, each
  answered with the encrypted "success".

Sending: a conversation's latest sessionWebhook while it is valid (texts and
markdown there can @ people), otherwise the robot OpenAPI
(`oToMessages/batchSend` for a person, `groupMessages/send` for a group).
Cards are interactive cards from the configured template
(`createAndDeliver`, updated in place with `PUT /v1.0/card/instances`), or
markdown with the buttons spelled out as text commands when no template is
configured.

What is kept between callbacks (sessionWebhooks, address-book sync rows) is in
bot/channels/dingtalk/state.py; Stream mode's frames in bot/channels/dingtalk/stream.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
import uuid

from aiohttp import web

from bot.channel import Channel, DeliveryError, EventSink, Wiring, current_outbox_id, register
from bot.channels.dingtalk.api import DingTalkAPI, SessionGone
from bot.channels.dingtalk.crypto import (
    BadPayload,
    BadSignature,
    EventCrypto,
    card_signature,
    fresh,
    robot_sign,
    timestamp_ms,
)
from bot.channels.shared.verify import same
from bot.config import DingTalkConfig
from bot.core.directory import Directory
from bot.inbound import Refusal, json_object, parse_json, text as _str
from bot.events import Address, CardMessage, Image, InboundEvent, Outbound, Text
from bot.outbox import enqueue
from bot.channels.dingtalk.render import action_value, card_markdown, card_params
from bot.channels.dingtalk.state import DirectorySync, SessionWebhooks
from bot.channels.dingtalk.stream import DingTalkStream
from storage.db import Database
from storage.models import OutboxMessage

log = logging.getLogger(__name__)

# Display names for a card's @ list are looked up at most this often.
NAME_CACHE_SECONDS = 60.0
HANDSHAKE_EVENTS = frozenset({"check_url", "check_create_suite_url", "check_update_suite_url"})
USER_EVENTS = frozenset({"user_add_org", "user_modify_org", "user_leave_org", "user_active_org"})
_OUT_TRACK_RE = re.compile(r"^rd(\d+)-[0-9a-f]+$")


@register("dingtalk", DingTalkConfig)
class DingTalkChannel(Channel):
    name = "dingtalk"
    # 20 messages/min per robot webhook, then throttled for 10 min; the robot
    # OpenAPI publishes no per-user figure, the same is kept (docs/channels/dingtalk.md).
    rate_limits = {"user": (20, 60.0), "group": (20, 60.0)}

    @classmethod
    def build(cls, section: DingTalkConfig, wiring: Wiring) -> DingTalkChannel:
        return cls(section, wiring.sink, wiring.db, directory=wiring.directory)

    def __init__(self, config: DingTalkConfig, sink: EventSink, db: Database, *,
                 directory: Directory | None = None):
        super().__init__(sink)
        self.config = config
        self.db = db
        self.directory = directory
        self.api = DingTalkAPI(config)
        self.window = config.sign_window.total_seconds()
        self.events_crypto = (EventCrypto(config.event_token, config.event_aes_key, config.owner_key)
                              if config.event_token and config.event_aes_key else None)
        self.interactive = bool(config.card_template_id)
        # Seconds since the epoch; tests pin it to check fixed vectors.
        self.clock = time.time
        self.sessions = SessionWebhooks(db, self.api, lambda: self.clock())
        self.members = DirectorySync(db, self.api, directory, self.name)
        self._tasks: list[asyncio.Task] = []
        self._groups_seen: set[str] = set()
        self._name_cache: dict[str, tuple[str, float]] = {}
        self.stream = (DingTalkStream(config, self.robot_message, self.card_click).link
                       if config.mode == "stream" else None)

    # ---- lifecycle -------------------------------------------------------

    def routes(self) -> list[web.AbstractRouteDef]:
        routes = []
        if self.stream is None:  # stream mode: messages and clicks come over the outbound connection
            routes.append(web.post("/callbacks/dingtalk", self.on_robot))
            if self.interactive:
                routes.append(web.post("/callbacks/dingtalk/card", self.on_card))
        if self.events_crypto is not None:
            routes.append(web.post("/callbacks/dingtalk/events", self.on_event))
        return routes

    async def start(self) -> None:
        await self.api.start()
        self._tasks.append(self.sessions.start())
        if self.events_crypto is not None:
            self._tasks.append(self.members.start())
        if self.stream is not None:
            self.stream.start()

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.sessions.flush()
        await self.api.close()

    def _now_ms(self) -> float:
        return self.clock() * 1000

    # ---- robot messages --------------------------------------------------

    async def on_robot(self, request: web.Request) -> web.Response:
        body = await request.read()
        # The sign covers the timestamp only: checked first, then the body is parsed (depth-limited).
        self._check_robot_sign(request)
        await self.robot_message(json_object(body))
        return web.Response(status=200)

    async def robot_message(self, msg: dict) -> None:
        """A robot message (HTTP body or stream frame data) into the inbox; returns once recorded."""
        event = self.parse_robot(msg)
        if event is None:
            return  # acknowledged, nothing for the core
        self.sessions.remember(event.conversation, msg)
        await self.sink(event)

    def _check_robot_sign(self, request: web.Request) -> None:
        ts, sign = request.headers.get("timestamp", ""), request.headers.get("sign", "")
        ts_ms = timestamp_ms(ts)
        if ts_ms is None or not sign or not same(robot_sign(ts, self.config.app_secret), sign):
            raise Refusal(403, "bad signature", hint="check [dingtalk] app_secret")
        if not fresh(ts_ms, self._now_ms(), self.window):
            raise Refusal(403, "stale timestamp", hint=f"timestamp {ts[:20]}; check this server's clock")

    def parse_robot(self, msg: dict) -> InboundEvent | None:
        """The robot message as a neutral event; None when there is nothing to hand over."""
        msg_id = msg.get("msgId")
        conv_type = str(msg.get("conversationType") or "")
        conv_id = msg.get("conversationId")
        if not isinstance(msg_id, str) or not msg_id or conv_type not in ("1", "2"):
            raise Refusal(400, "not a DingTalk robot message (msgId, conversationType)")
        if conv_type == "2" and not (isinstance(conv_id, str) and conv_id):
            raise Refusal(400, "group message without conversationId")
        staff = msg.get("senderStaffId")
        if not isinstance(staff, str) or not staff:
            self.api.log_once("staffid", "dingtalk: robot messages arrive without senderStaffId, so nobody can be "
                              "identified: publish the robot (机器人 → 发布) in the developer console")
            return None
        if conv_type == "1":
            conversation = Address(self.name, "user", staff)
        else:
            conversation = Address(self.name, "group", conv_id)
            if conv_id not in self._groups_seen and len(self._groups_seen) < 1000:
                # How an admin learns a group's id for `groups = { dingtalk = "..." }`.
                self._groups_seen.add(conv_id)
                log.info("dingtalk: group %r has conversationId %s", _str(msg.get("conversationTitle")), conv_id)
        bot_id = msg.get("chatbotUserId")
        at_users = msg.get("atUsers")
        mentions = tuple(
            u["staffId"] for u in (at_users if isinstance(at_users, list) else ())
            if isinstance(u, dict) and isinstance(u.get("staffId"), str) and u.get("staffId")
            and u.get("dingtalkId") != bot_id
        )
        common = dict(platform=self.name, event_id=msg_id, sender_id=staff, conversation=conversation,
                      sender_name=_str(msg.get("senderNick")) or None, mentions=mentions)
        msgtype = msg.get("msgtype")
        content = msg.get("content") if isinstance(msg.get("content"), dict) else {}
        if msgtype == "text":
            text = msg.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("content"), str):
                raise Refusal(400, "text message without text.content")
            return InboundEvent(kind="text", text=text["content"].strip(), **common)
        if msgtype == "picture":
            code = _str(content.get("downloadCode")) or _str(content.get("pictureDownloadCode"))
            if not code:
                raise Refusal(400, "picture message without downloadCode")
            return InboundEvent(kind="image", image_ref=code, **common)
        if msgtype == "richText":
            parts = content.get("richText") if isinstance(content.get("richText"), list) else []
            text = "".join(_str(p.get("text")) for p in parts if isinstance(p, dict)).strip()
            if text:
                return InboundEvent(kind="text", text=text, **common)
            codes = [_str(p.get("downloadCode")) for p in parts if isinstance(p, dict) and p.get("downloadCode")]
            if codes:
                return InboundEvent(kind="image", image_ref=codes[0], **common)
            return None
        if msgtype == "audio" and _str(content.get("recognition")).strip():
            # DingTalk's speech-to-text of a voice message (1:1 chats only).
            return InboundEvent(kind="text", text=_str(content.get("recognition")).strip(), **common)
        return None  # video, file, audio without text: acknowledged and ignored

    # ---- card clicks -----------------------------------------------------

    async def on_card(self, request: web.Request) -> web.Response:
        body = await request.read()
        ts = self._check_card_signature(request)
        return web.json_response(await self.card_click(json_object(body), ts))

    async def card_click(self, data: dict, click_id: str) -> dict:
        """A card callback (HTTP body or stream frame data) through the sink; the answer
        that updates the card. `click_id` tells a new click from a redelivered one."""
        if data.get("type", "actionCallback") != "actionCallback":
            return {}  # not a button click: nothing to do
        user_id, out_track_id = _str(data.get("userId")), _str(data.get("outTrackId"))
        content = data.get("content")
        if isinstance(content, str):
            content = parse_json(content, "content")
        if not user_id or not out_track_id or not isinstance(content, dict):
            raise Refusal(400, "not a card callback (userId, outTrackId, content)")
        private = content.get("cardPrivateData") if isinstance(content.get("cardPrivateData"), dict) else {}
        value = action_value(private.get("params"))
        if value is None:
            self.api.log_once("card_params", "dingtalk: a card button sent no `value` parameter: in the card "
                              "template, set the button's 回传请求 parameters to {\"value\": <the button's "
                              "value>} (docs/channels/dingtalk.md)")
            raise Refusal(400, "button without a value parameter")
        conversation, track_key = await self._card_origin(out_track_id, user_id)
        digest = hashlib.sha256(f"{out_track_id}\n{user_id}\n{value}\n{click_id}".encode()).hexdigest()[:32]
        event = InboundEvent(platform=self.name, event_id=f"card:{digest}", sender_id=user_id,
                             conversation=conversation, kind="action", action_token=value,
                             context={"outTrackId": out_track_id})
        result = await self.sink(event)
        if result.duplicate:
            return {}
        if result.toast and self.config.click_feedback == "message":
            await self._tell_clicker(user_id, result.toast)
        answer: dict = {}
        options: dict = {}
        if result.card is not None and track_key and result.card.track_key == track_key:
            answer["cardData"] = {"cardParamMap": card_params(result.card)}
            options["updateCardDataByKey"] = True
        if result.toast:
            answer["userPrivateData"] = {"cardParamMap": {"toast": result.toast}}
            options["updatePrivateDataByKey"] = True
        if options:
            answer["cardUpdateOptions"] = options
        return answer

    def _check_card_signature(self, request: web.Request) -> str:
        ts = request.headers.get("x-ddpaas-signature-timestamp", "")
        sig = request.headers.get("x-ddpaas-signature", "")
        ts_ms = timestamp_ms(ts)
        secret = self.config.card_api_secret or ""
        if ts_ms is None or not sig or not secret or not same(card_signature(ts, secret), sig):
            raise Refusal(403, "bad signature", hint="check [dingtalk] card_api_secret")
        if not fresh(ts_ms, self._now_ms(), self.window):
            raise Refusal(403, "stale timestamp", hint=f"timestamp {ts[:20]}; check this server's clock")
        return ts

    async def _card_origin(self, out_track_id: str, user_id: str) -> tuple[Address, str | None]:
        """Where the clicked card was sent, and its track key (from the outbox row that sent it)."""
        m = _OUT_TRACK_RE.match(out_track_id)
        if m:
            async with self.db.session() as s:
                row = await s.get(OutboxMessage, int(m.group(1)))
            if row is not None and row.channel == self.name:
                return Address(self.name, row.to_kind, row.to_id), row.track_key  # type: ignore[arg-type]
        return Address(self.name, "user", user_id), None

    async def _tell_clicker(self, user_id: str, text: str) -> None:
        """The click's result as a 1:1 message to whoever clicked (cards have no toast)."""
        async with self.db.session() as s:
            enqueue(s, Address(self.name, "user", user_id), Text(text))
        self.wake_outbox()

    # ---- event subscription ------------------------------------------------

    async def on_event(self, request: web.Request) -> web.Response:
        assert self.events_crypto is not None
        body = await request.read()
        q = request.query
        signature = q.get("msg_signature") or q.get("signature") or ""
        ts = q.get("timestamp") or q.get("timeStamp") or ""
        nonce = q.get("nonce") or ""
        # DingTalk signs the `encrypt` field, not the body: the envelope is parsed first (depth-limited).
        envelope = json_object(body)
        encrypt = envelope.get("encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise Refusal(400, "no encrypt field")
        if not signature or not ts or not nonce:
            raise Refusal(403, "missing msg_signature/timestamp/nonce")
        try:
            plain = self.events_crypto.decrypt(signature, ts, nonce, encrypt)
        except BadSignature:
            raise Refusal(403, "bad signature", hint="check [dingtalk] event_token / event_aes_key") from None
        except BadPayload as e:
            raise Refusal(400, f"cannot decrypt: {e}") from None
        ts_ms = timestamp_ms(ts)
        if ts_ms is None or not fresh(ts_ms, self._now_ms(), self.window):
            raise Refusal(403, "stale timestamp")
        event = json_object(plain, "the decrypted event")
        if not isinstance(event.get("EventType"), str):
            raise Refusal(400, "the decrypted event has no EventType")
        etype = event["EventType"]
        if etype in USER_EVENTS:
            ids = event.get("UserId") or event.get("UserIds") or []
            if isinstance(ids, str):
                ids = [ids]
            await self.members.record(etype, [str(u) for u in ids if isinstance(u, (str, int)) and u != ""])
        elif etype not in HANDSHAKE_EVENTS:
            log.debug("dingtalk: event %s acknowledged, not used", etype)
        return web.json_response(self.events_crypto.encrypt_reply(
            "success", nonce=secrets.token_hex(4), timestamp=str(int(self._now_ms()))))

    # ---- sending -----------------------------------------------------------

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        if to.channel != self.name or to.kind not in ("user", "group") or not to.id:
            raise DeliveryError(f"not a DingTalk address: {to}", retryable=False)
        if isinstance(message, Text):
            await self._send_text(to, message.text, message.mentions)
            return None
        if isinstance(message, CardMessage):
            return await self._send_card(to, message, ref)
        if isinstance(message, Image):
            await self._send_image(to, message)
            return None
        raise DeliveryError(f"DingTalk cannot send {type(message).__name__}", retryable=False)  # pragma: no cover

    async def _via_session(self, to: Address, payload: dict) -> bool:
        url = await self.sessions.get(to)
        if url is None:
            return False
        try:
            await self.api.session_send(url, payload)
        except SessionGone as e:
            log.info("dingtalk: sessionWebhook of %s:%s gone (%s); using the OpenAPI", to.kind, to.id, e)
            await self.sessions.forget(to, url)
            return False
        return True

    async def _openapi(self, to: Address, msg_key: str, msg_param: dict) -> None:
        if to.kind == "user":
            await self.api.send_to_user(to.id, msg_key, msg_param)
        else:
            await self.api.send_to_group(to.id, msg_key, msg_param)

    async def _send_text(self, to: Address, text: str, mentions: tuple[str, ...]) -> None:
        payload = {"msgtype": "text", "text": {"content": _with_mentions(text, mentions)},
                   "at": {"atUserIds": list(mentions), "isAtAll": False}}
        if await self._via_session(to, payload):
            return
        await self._openapi(to, "sampleText", {"content": text})

    async def _send_card(self, to: Address, message: CardMessage, ref: dict | None) -> dict:
        card = message.card
        if not self.interactive:
            title, text = card_markdown(card)
            payload = {"msgtype": "markdown",
                       "markdown": {"title": title, "text": _with_mentions(text, message.mentions, sep="\n\n")},
                       "at": {"atUserIds": list(message.mentions), "isAtAll": False}}
            if not await self._via_session(to, payload):
                await self._openapi(to, "sampleMarkdown", {"title": title, "text": text})
            return {"mode": "markdown"}
        params = card_params(card)
        if message.update and ref and ref.get("outTrackId"):
            try:
                await self.api.update_card(ref["outTrackId"], params)
                return ref
            except DeliveryError as e:
                if e.retryable:
                    raise
                log.warning("dingtalk: updating card %s failed (%s); sending a new one", ref["outTrackId"], e)
        out_track_id = self._out_track_id(to, card.to_dict())
        await self.api.create_and_deliver(await self._deliver_body(to, out_track_id, params, card.title,
                                                                   message.mentions))
        return {"outTrackId": out_track_id}

    def _out_track_id(self, to: Address, card: dict) -> str:
        """The card instance id: the same for a repeated delivery of one outbox row
        (DingTalk ignores a second createAndDeliver with it), new otherwise."""
        outbox_id = current_outbox_id.get()
        if outbox_id is None:
            return f"rdx-{uuid.uuid4().hex}"
        digest = hashlib.sha256(json.dumps([to.kind, to.id, card], sort_keys=True, ensure_ascii=False)
                                .encode()).hexdigest()[:16]
        return f"rd{outbox_id}-{digest}"

    async def _deliver_body(self, to: Address, out_track_id: str, params: dict[str, str], title: str,
                            mentions: tuple[str, ...]) -> dict:
        robot_code = self.api.robot_code
        space = {"supportForward": True, "lastMessageI18n": {"ZH_CN": title[:200]},
                 "notification": {"alertContent": title[:200], "notificationOff": False}}
        body: dict = {
            "cardTemplateId": self.config.card_template_id,
            "outTrackId": out_track_id,
            "callbackType": "STREAM" if self.stream is not None else "HTTP",
            "cardData": {"cardParamMap": params},
            "userIdType": 1,
        }
        if self.stream is None:
            body["callbackRouteKey"] = self.config.card_callback_route_key
        if to.kind == "group":
            body["openSpaceId"] = f"dtv1.card//IM_GROUP.{to.id}"
            body["imGroupOpenSpaceModel"] = space
            deliver: dict = {"robotCode": robot_code}
            if mentions:
                deliver["atUserIds"] = await self._names(mentions)
            body["imGroupOpenDeliverModel"] = deliver
        else:
            body["openSpaceId"] = f"dtv1.card//IM_ROBOT.{to.id}"
            body["imRobotOpenSpaceModel"] = space
            body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT", "robotCode": robot_code}
        return body

    async def _names(self, user_ids: tuple[str, ...]) -> dict[str, str]:
        """userId -> display name, for a card's @ list (cached for a minute)."""
        now = self.clock()
        out = {uid: hit[0] for uid in user_ids if (hit := self._name_cache.get(uid)) and hit[1] > now}
        missing = [uid for uid in user_ids if uid not in out]
        if missing:
            async with self.db.session() as s:
                found = await self.directory.display_names(s, self.name, missing)
            if len(self._name_cache) > 10_000:
                self._name_cache.clear()
            for uid in missing:
                out[uid] = found.get(uid, uid)
                self._name_cache[uid] = (out[uid], now + NAME_CACHE_SECONDS)
        return out

    async def _send_image(self, to: Address, message: Image) -> None:
        media_id = await self.api.upload_image(message.path)
        await self._openapi(to, "sampleImageMsg", {"photoURL": media_id})
        if message.caption:
            await self._send_text(to, message.caption, ())


# ---- helpers ---------------------------------------------------------------


def _with_mentions(text: str, mentions: tuple[str, ...], sep: str = " ") -> str:
    """DingTalk only @s a user whose "@userId" is also written in the content."""
    missing = [f"@{m}" for m in mentions if f"@{m}" not in text]
    return (" ".join(missing) + sep + text) if missing else text
