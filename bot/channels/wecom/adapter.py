"""The WeCom (企业微信) channel: a self-built app's callback and its server API.

Inbound, `/callbacks/wecom`:
  GET  URL verification: signature, then the decrypted echostr as plain text.
  POST messages and events: outer XML (defusedxml) -> signature -> replay window
       -> AES -> inner XML -> neutral event -> the sink -> an empty 200 (WeCom
       takes that as "received, no passive reply"). Every reply goes out later
       through the outbox, so the answer comes in milliseconds, far inside
       WeCom's 5 s.
  Text, image, voice (with WeCom's speech recognition on) and location
  messages, and `template_card_event` (a button click) are understood.
  Retries are de-duplicated by the sink: messages by MsgId (kept as a string),
  events by FromUserName + CreateTime + TaskId + EventKey.

Outbound (the outbox calls `send`):
  To a person: text, markdown, `template_card` (button_interaction) and images
  through `message/send`. A card with buttons is a template card whose button
  keys are the core's opaque callback ids; a card without buttons is markdown.
  Card updates use `update_template_card` with a single-use response_code of
  that card: the newest click's (kept in WeComCardCode, written before the click
  is handled), else the send answer's (kept in the card's ref). The send answer's
  code is the card's last one: a change that keeps the buttons as they are (a
  photo count, a thumbnail) does not spend it, so the card's last word (its
  buttons greyed with the outcome) can always be written in place; the change
  shows with the next update. Without a usable code, a card whose buttons
  changed is sent afresh; a card that has reached its outcome gets the outcome
  as a message of its own, so nobody is left with a card that looks open.
  To a group (an app chat, `appchat/send`): app chats take no template cards, so
  a card is a markdown summary listing its buttons as commands to send the app
  1:1, and a later change of it is one markdown status line. @mentions go
  through the group robot's webhook when one is configured for that chat.

Pictures users send are downloaded after the answer (`media/get`) into the
media folder, once the core has attached them to the sender's open ticket; a
periodic sweep (and each start) fetches any still pending.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import defaultdict, deque
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from sqlalchemy import update
from sqlmodel import select

from bot.channel import Channel, DeliveryError, EventSink, HandleResult, current_is_resend, current_outbox_id, register
from bot.channels.wecom.api import WeComAPI, WeComAPIError
from bot.channels.wecom.state import CODE_TTL, CardCodes
from bot.channels.wecom.crypto import DecryptError, MalformedRequest, SignatureError, WeComCrypto, parse_xml
from bot.inbound import Refusal, text as _text
from bot.tasks import wait_event
from bot.config import WeComConfig
from bot.events import Address, CardMessage, Image, InboundEvent, Outbound, Text
from bot.outbox import enqueue
from bot.texts import t
import bot.channels.wecom.render as render
from cards.model import Card
from storage.db import Database
from storage.models import Attachment, ProcessedEvent
from storage.media import store_content
from storage.queries import insert_ignore
from storage.types import utcnow

log = logging.getLogger(__name__)

PLATFORM = "wecom"
MEDIA_PREFIX = "wecom:"  # Attachment.media_ref of a picture not downloaded yet
MEDIA_LIFETIME = timedelta(days=3)  # WeCom keeps a media_id this long
SWEEP_INTERVAL = 600  # seconds between looks for pictures not fetched yet
CONFIG_HINT = "check [wecom] token / encoding_aes_key / corp_id against the app's 接收消息 settings"
_IMAGE_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
              "image/bmp": ".bmp"}


@register("wecom", WeComConfig)
class WeComChannel(Channel):
    name = PLATFORM
    # App messages: 30/min per member (excess silently dropped); group posts: 20/min
    # per group robot (docs/channels/wecom.md).
    rate_limits = {"user": (30, 60.0), "group": (20, 60.0)}

    def __init__(self, config: WeComConfig, sink: EventSink, db: Database):
        super().__init__(sink)
        self.config = config
        self.db = db
        self.crypto = WeComCrypto(config.token, config.encoding_aes_key, config.corp_id)
        self.codes = CardCodes(db)
        self.api = WeComAPI(corp_id=config.corp_id, secret=config.secret, agent_id=config.agent_id,
                            api_base=config.api_base)
        data_dir = Path(os.environ.get("RELAYDESK_DATA_DIR") or "data")
        self.media_dir = Path(config.media_dir) if config.media_dir else data_dir / "wecom-media"
        self._sent: dict[str, deque[float]] = defaultdict(deque)
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------

    def routes(self) -> list[web.AbstractRouteDef]:
        return [web.get("/callbacks/wecom", self.handle_get, allow_head=False),
                web.post("/callbacks/wecom", self.handle_post)]

    async def start(self) -> None:
        await self.api.start()
        self._sweeper = asyncio.create_task(self._sweep_downloads())
        self._spawn(self.codes.prune())

    async def close(self) -> None:
        # Background work stops at its next pause rather than being cancelled inside a
        # database call (the driver's thread would outlive the loop).
        self._stopping.set()
        pending = [t for t in [self._sweeper, *self._tasks] if t is not None]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=10)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.api.close()

    async def _pause(self, seconds: float) -> bool:
        """Sleep; True when the channel is closing instead."""
        return await wait_event(self._stopping, seconds)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def idle(self) -> None:
        """Wait for background work (picture downloads) to finish (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- inbound: HTTP ---------------------------------------------------

    def _params(self, request: web.Request, *names: str) -> list[str]:
        values = [request.query.get(n, "") for n in names]
        if not all(values):
            raise Refusal(400, "missing " + ", ".join(n for n, v in zip(names, values) if not v))
        return values

    def _check_time(self, timestamp: str) -> None:
        try:
            ts = int(timestamp)
        except ValueError:
            raise Refusal(400, "timestamp is not a number") from None
        window = self.config.replay_window.total_seconds()
        if window > 0 and abs(time.time() - ts) > window:
            raise Refusal(403, f"timestamp {ts} outside the replay window")

    def _open(self, sig: str, ts: str, nonce: str, encrypt: str) -> str:
        """Signature, replay window, then AES: the plain text of a signed, encrypted field."""
        try:
            self.crypto.check_signature(sig, ts, nonce, encrypt)
            self._check_time(ts)
            return self.crypto.decrypt(encrypt)
        except (SignatureError, DecryptError) as e:
            raise Refusal(403, str(e), hint=CONFIG_HINT) from None

    async def handle_get(self, request: web.Request) -> web.Response:
        """URL verification: answer the decrypted echostr, nothing else."""
        sig, ts, nonce, echostr = self._params(request, "msg_signature", "timestamp", "nonce", "echostr")
        return web.Response(text=self._open(sig, ts, nonce, echostr), content_type="text/plain")

    async def handle_post(self, request: web.Request) -> web.Response:
        body = await request.read()
        sig, ts, nonce = self._params(request, "msg_signature", "timestamp", "nonce")
        try:
            # WeCom signs the <Encrypt> field, not the body: the envelope is parsed first,
            # defused and depth-limited.
            envelope = parse_xml(body)
            encrypt = envelope.get("Encrypt")
            if not isinstance(encrypt, str) or not encrypt.strip():
                raise MalformedRequest("no <Encrypt> element")
            message = parse_xml(self._open(sig, ts, nonce, encrypt.strip()))
        except MalformedRequest as e:
            raise Refusal(400, str(e)) from None
        await self.handle_message(message)
        return web.Response(text="")

    # ---- inbound: messages -------------------------------------------------

    async def handle_message(self, msg: dict) -> HandleResult | None:
        """One decrypted message or event; returns what the sink made of it (None: not for the sink)."""
        sender = _field(msg, "FromUserName")
        mtype = _field(msg, "MsgType").lower()
        if not sender or not mtype:
            log.info("wecom: message without sender or type ignored")
            return None
        conv = Address(PLATFORM, "user", sender)
        if mtype == "event":
            if _field(msg, "Event").lower() == "template_card_event":
                return await self._on_click(msg, conv)
            return None  # enter_agent, subscribe, menu clicks ...: nothing to do
        event_id = self._message_id(msg)
        base = dict(platform=PLATFORM, event_id=event_id, sender_id=sender, conversation=conv)
        if mtype == "text":
            return await self.sink(InboundEvent(kind="text", text=_field(msg, "Content"), **base))
        if mtype == "image":
            media_id, pic_url = _field(msg, "MediaId"), _field(msg, "PicUrl")
            ref = MEDIA_PREFIX + media_id if media_id else pic_url
            if not ref:
                return None
            # The file is fetched once the core has attached it (picture_applied).
            return await self.sink(InboundEvent(kind="image", image_ref=ref,
                                                context={"pic_url": pic_url}, **base))
        if mtype == "voice":
            said = _field(msg, "Recognition").strip()
            if said:
                return await self.sink(InboundEvent(kind="text", text=said, **base))
            await self._reply_once(event_id, conv, t("wecom.voice_unsupported"))
            return None
        if mtype == "location":
            where = t("wecom.location", label=_field(msg, "Label") or "—", lat=_field(msg, "Location_X"),
                      lng=_field(msg, "Location_Y"))
            # A location adds to the sender's open ticket, like "补充 …".
            return await self.sink(InboundEvent(kind="text", text=f"补充 {where}", **base))
        await self._reply_once(event_id, conv, t("wecom.unsupported"))
        return None

    @staticmethod
    def _message_id(msg: dict) -> str:
        msg_id = _field(msg, "MsgId").strip()
        if msg_id:
            return f"m:{msg_id}"
        digest = hashlib.sha1(repr(sorted((k, str(v)) for k, v in msg.items())).encode()).hexdigest()[:20]
        return f"m:{_field(msg, 'FromUserName')}:{_field(msg, 'CreateTime')}:{digest}"

    async def _on_click(self, msg: dict, conv: Address) -> HandleResult | None:
        key = _field(msg, "EventKey")
        if not key:
            return None
        task_id, code = _field(msg, "TaskId"), _field(msg, "ResponseCode")
        created = _field(msg, "CreateTime")
        if task_id and code:
            await self.codes.remember(task_id, conv.id, code, created)
        digest = hashlib.sha1(f"{task_id}\0{key}".encode()).hexdigest()[:20]
        event = InboundEvent(platform=PLATFORM, event_id=f"e:{conv.id}:{created}:{digest}", sender_id=conv.id,
                             conversation=conv, kind="action", action_token=key,
                             context={"task_id": task_id, "response_code": code})
        result = await self.sink(event)
        if not result.duplicate and result.toast and result.outcome != "done":
            # No toasts in WeCom: a refusal (or "already done") reaches the clicker as a text;
            # success shows in the updated card.
            async with self.db.session(urgent=True) as s:
                enqueue(s, conv, Text(result.toast))
            self.wake_outbox()
        return result

    async def _reply_once(self, event_id: str, to: Address, text: str) -> None:
        async with self.db.session(urgent=True) as s:
            fresh = await insert_ignore(s, ProcessedEvent, platform=PLATFORM, event_id=event_id)
            if fresh:
                enqueue(s, to, Text(text))
        if fresh:
            self.wake_outbox()

    # ---- outbound --------------------------------------------------------

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        if to.channel != PLATFORM or to.kind not in ("user", "group") or not to.id:
            raise DeliveryError(f"not a WeCom address: {to}", retryable=False)
        if to.kind == "user":
            return await self._send_user(to.id, message, ref)
        return await self._send_group(to.id, message, ref)

    def _pace(self, userid: str, count: int = 1) -> None:
        """WeCom drops app messages beyond 30/min per member without an error: hold them back instead."""
        limit = self.config.member_per_minute
        if not limit:
            return
        now = time.monotonic()
        if len(self._sent) > 256:  # forget members with no send in the last minute: bounded memory
            for key in [k for k, w in self._sent.items() if not w or w[-1] <= now - 60]:
                del self._sent[key]
        window = self._sent[userid]
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) + count > limit:
            wait = max(1.0, window[0] + 60 - now) if window else 1.0
            raise DeliveryError(f"WeCom member limit ({limit}/min) reached for {userid}", retry_after=wait)
        window.extend([now] * count)

    async def _to_user(self, userid: str, body: dict) -> dict:
        self._pace(userid)
        if current_is_resend.get():
            # WeCom drops an app message identical to one sent to the same member within the
            # interval: a resend after a crash or a timeout is not shown twice.
            body = {**body, "enable_duplicate_check": 1, "duplicate_check_interval": 1800}
        answer = await self.api.send_message({"touser": userid, **body})
        invalid = str(answer.get("invaliduser") or "")
        if userid in invalid.split("|"):
            raise DeliveryError(f"WeCom says {userid!r} is not a valid recipient (check the person's wecom "
                                f"identity and the app's visible range)", retryable=False)
        return answer

    async def _send_user(self, userid: str, message: Outbound, ref: dict | None) -> dict | None:
        if isinstance(message, Text):
            await self._to_user(userid, {"msgtype": "text",
                                         "text": {"content": render.cut_bytes(message.text, render.MAX_TEXT_BYTES)}})
            return None
        if isinstance(message, Image):
            media_id = await self.api.upload_media(message.path, "image")
            await self._to_user(userid, {"msgtype": "image", "image": {"media_id": media_id}})
            if message.caption:
                await self._to_user(userid, {"msgtype": "text", "text": {"content": message.caption}})
            return None
        if isinstance(message, CardMessage):
            if message.update and ref:
                return await self._update_user_card(userid, message.card, ref)
            return await self._new_user_card(userid, message.card)
        raise DeliveryError(f"cannot send {type(message).__name__} to WeCom", retryable=False)

    async def _new_user_card(self, userid: str, card: Card) -> dict:
        if card.buttons:
            task_id = render.new_task_id(card.track_key, current_outbox_id.get(),
                                         f"{userid}|{render.fingerprint(card.to_dict())}")
            tc = render.render_template_card(card, task_id)
            answer = await self._to_user(userid, {"msgtype": "template_card", "template_card": tc})
            # The send answer's code rides in the ref (the outbox stores it); clicks' codes
            # go to WeComCardCode.
            return {"task_id": task_id, "shown": _shown(tc), "buttons": _buttons(tc),
                    "code": answer.get("response_code") or None, "code_at": int(time.time())}
        md = render.render_markdown(card)
        await self._to_user(userid, {"msgtype": "markdown", "markdown": {"content": md}})
        return {"markdown": True, "shown": render.fingerprint(md)}

    async def _update_user_card(self, userid: str, card: Card, ref: dict) -> dict:
        task_id = ref.get("task_id")
        if not task_id:
            # Sent as markdown (nothing to click): only a card that now has buttons goes out again.
            return await self._new_user_card(userid, card) if card.buttons else ref
        buttons = None
        if card.buttons:
            tc = render.render_template_card(card, task_id)
            shown, buttons = _shown(tc), _buttons(tc)
            body: dict = {"template_card": tc}
        else:
            name = render.final_button_name(card)
            shown = render.fingerprint({"replace_name": name})
            body = {"button": {"replace_name": name}}
        if ref.get("shown") == shown:
            return ref  # the person sees this already
        if not card.buttons and ref.get("outcome"):
            return ref  # the outcome is shown already; nothing on the card can be used any more
        # The newest code first: a click's; else the one the send answer brought.
        code, from_click = await self.codes.take(task_id), True
        if code is None and ref.get("code") and time.time() - float(ref.get("code_at") or 0) < CODE_TTL.total_seconds():
            if buttons is not None and ref.get("buttons") == buttons:
                # The card's last code, and its buttons work as they are: keep the code for
                # the outcome. Several updates of one card may be reduced to the newest
                # before they are sent, so how many come before the outcome is unknown.
                log.debug("wecom: %s (%s) keeps its last code for the outcome; the change waits", task_id, userid)
                return ref
            code, from_click = ref["code"], False
        if code is None:
            log.debug("wecom: no usable response_code for %s (%s)", task_id, userid)
            if card.buttons:
                return await self._new_user_card(userid, card)
            return await self._outcome_afresh(userid, card, ref, shown)
        try:
            await self.api.update_template_card({"userids": [userid], "response_code": code, **body})
        except WeComAPIError as e:
            if e.retryable:
                if from_click:
                    await self.codes.give_back(task_id, code)
                raise
            log.info("wecom: updating card %s for %s failed (%s); sending it afresh", task_id, userid, e)
            if card.buttons:
                return await self._new_user_card(userid, card)
            return await self._outcome_afresh(userid, card, ref, shown)
        new_ref = {**ref, "shown": shown, "buttons": buttons, "outcome": not card.buttons}
        if not from_click:
            new_ref["code"] = None
        return new_ref

    async def _outcome_afresh(self, userid: str, card: Card, ref: dict, shown: str) -> dict:
        """A card that reached its outcome but cannot be updated in place: the outcome as a
        message of its own (markdown), once (later changes of a card past its outcome are
        not sent); a click on the old card's buttons is refused by the core."""
        await self._to_user(userid, {"msgtype": "markdown", "markdown": {"content": render.render_markdown(card)}})
        return {**ref, "shown": shown, "buttons": None, "outcome": True}

    # ---- groups ----------------------------------------------------------------

    def _robot_key(self, chat_id: str) -> str | None:
        key = self.config.robot_webhooks.get(chat_id)
        if key:
            return key
        if self.config.robot_webhook_key and self.config.engineers_chat in (None, chat_id):
            return self.config.robot_webhook_key
        return None

    async def _markdown_to_group(self, chat_id: str, content: str, mentions: tuple[str, ...]) -> None:
        key = self._robot_key(chat_id) if mentions else None
        if key:
            mention_line = " ".join(f"<@{m}>" for m in mentions)
            await self.api.robot_send(key, {"msgtype": "markdown", "markdown": {
                "content": render.cut_bytes(f"{mention_line}\n{content}", render.MAX_MARKDOWN_BYTES)}})
            return
        await self.api.appchat_send({"chatid": chat_id, "msgtype": "markdown", "markdown": {"content": content},
                                     "safe": 0})

    async def _send_group(self, chat_id: str, message: Outbound, ref: dict | None) -> dict | None:
        if isinstance(message, Text):
            content = render.cut_bytes(message.text, render.MAX_TEXT_BYTES)
            key = self._robot_key(chat_id) if message.mentions else None
            if key:
                await self.api.robot_send(key, {"msgtype": "text", "text": {
                    "content": content, "mentioned_list": list(message.mentions)}})
            else:
                await self.api.appchat_send({"chatid": chat_id, "msgtype": "text", "text": {"content": content},
                                             "safe": 0})
            return None
        if isinstance(message, Image):
            media_id = await self.api.upload_media(message.path, "image")
            await self.api.appchat_send({"chatid": chat_id, "msgtype": "image", "image": {"media_id": media_id},
                                         "safe": 0})
            if message.caption:
                await self.api.appchat_send({"chatid": chat_id, "msgtype": "text",
                                             "text": {"content": message.caption}, "safe": 0})
            return None
        if isinstance(message, CardMessage):
            card = message.card
            line = render.render_status_line(card)
            shown = render.fingerprint(line)
            if message.update and ref:
                if ref.get("shown") == shown:
                    return ref
                await self._markdown_to_group(chat_id, line, message.mentions)
            else:
                await self._markdown_to_group(chat_id, render.render_markdown(card, hint=True), message.mentions)
            return {"chat": chat_id, "shown": shown}
        raise DeliveryError(f"cannot send {type(message).__name__} to WeCom", retryable=False)

    # ---- pictures users send ----------------------------------------------------

    def picture_applied(self, event: InboundEvent) -> None:
        """The core applied a picture message: fetch the file it attached (if it did: a
        picture with no open ticket is not attached, and nothing is fetched)."""
        ref = event.image_ref or ""
        if ref.startswith(MEDIA_PREFIX) and not self._stopping.is_set():
            pic_url = event.context.get("pic_url") if isinstance(event.context, dict) else None
            self._spawn(self._download_pending(ref, pic_url or None))

    async def _download_pending(self, ref: str, pic_url: str | None = None) -> bool:
        """Fetch a picture attached as `wecom:<media_id>` and point its attachments at the file.

        False when no attachment refers to it (yet).
        """
        async with self.db.session() as s:
            rows = (await s.exec(select(Attachment.id).where(Attachment.channel == PLATFORM,
                                                             Attachment.media_ref == ref))).all()
        if not rows:
            return False
        media_id = ref[len(MEDIA_PREFIX):]
        try:
            try:
                data, ctype = await self.api.download_media(media_id)
            except DeliveryError:
                if not pic_url:
                    raise
                data, ctype = await self.api.download_url(pic_url)
        except DeliveryError as e:
            log.warning("wecom: picture %s not downloaded yet (retried every %d min): %s", media_id,
                        SWEEP_INTERVAL // 60, e)
            return True
        path = await asyncio.to_thread(self._store_file, data, ctype)
        async with self.db.session() as s:
            await s.exec(update(Attachment).where(Attachment.channel == PLATFORM, Attachment.media_ref == ref)
                         .values(media_ref=str(path), url=pic_url or None))
        log.info("wecom: picture %s saved as %s", media_id, path)
        return True

    def _store_file(self, data: bytes, ctype: str) -> Path:
        return store_content(self.media_dir, data, _IMAGE_EXT.get(ctype, ".jpg"))

    async def _sweep_downloads(self) -> None:
        """Now and every few minutes: pictures attached but not fetched yet (a restart, a failed
        download, a message applied late). WeCom keeps them 3 days."""
        while not self._stopping.is_set():
            try:
                since = utcnow() - MEDIA_LIFETIME
                async with self.db.session() as s:
                    refs = (await s.exec(select(Attachment.media_ref, Attachment.url)
                                         .where(Attachment.channel == PLATFORM,
                                                Attachment.media_ref.startswith(MEDIA_PREFIX),
                                                Attachment.created_at >= since).distinct())).all()
                for ref, url in refs:
                    if self._stopping.is_set():
                        return
                    await self._download_pending(ref, url)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("wecom: fetching pending pictures failed")
            if await self._pause(SWEEP_INTERVAL):
                return


def _field(msg: dict, key: str) -> str:
    return _text(msg.get(key))


def _shown(template_card: dict) -> str:
    return render.fingerprint({k: v for k, v in template_card.items() if k != "task_id"})


def _buttons(template_card: dict) -> str:
    """What the card's buttons say and do: a change of these needs the card updated now."""
    return render.fingerprint([(b.get("text"), b.get("key")) for b in template_card.get("button_list") or ()])
