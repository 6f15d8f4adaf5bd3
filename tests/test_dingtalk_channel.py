"""The DingTalk channel through the real app (create_app) against a DingTalk faked with respx.

Robot messages, card clicks and events are signed / encrypted exactly as DingTalk
does and posted to the real endpoints; what the bot sends is read from the fake API.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.channel import current_outbox_id
from bot.channels.dingtalk.crypto import EventCrypto, card_signature, robot_sign
from bot.config import ConfigError
from bot.events import Address, CardMessage
from bot.texts import t
from cards.model import Button, Card
from storage.models import (
    Attachment,
    CardAction,
    DingTalkSession,
    DingTalkUserSync,
    Identity,
    OutboxMessage,
    Person,
    ProcessedEvent,
    Ticket,
)
from support import config_toml, directory_toml, load_toml

API = "https://api.dt.test"
OAPI = "https://oapi.dt.test"
APP_SECRET = "app-secret-for-tests"
CARD_SECRET = "card-api-secret"
EVENT_TOKEN = "evtoken"
EVENT_AES_KEY = "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij"
ENG_GROUP = "cidENGINEERS=="
BOT_ID = "$:LWCP_v1:$botbotbot"
NUMBER = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")
REPORT = "3号泵又不出水了,整条线停着"
_seq = itertools.count(1)
VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text(encoding="utf-8"))

PEOPLE = directory_toml("dingtalk", {"cust_wang": "u_wang", "eng_zhang": "u_zhang", "eng_li": "u_li",
                                     "lead_zhao": "u_zhao", "director_sun": "u_sun"}, ENG_GROUP, region=None,
                        skills={"eng_zhang": ("泵", "电气"), "eng_li": ("变频器",)}, phones=("eng_zhang",))


def write_config(tmp_path, db_url: str | None = None, *, cards: bool = True, events: bool = True,
                 extra: str = "", **dingtalk: str):
    lines = [f'app_key = "dingapp"', f'app_secret = "{APP_SECRET}"', f'api_base = "{API}"', f'oapi_base = "{OAPI}"']
    if cards:
        lines += ['card_template_id = "tpl-relaydesk.schema"', 'card_callback_route_key = "relaydesk"',
                  f'card_api_secret = "{CARD_SECRET}"']
    if events:
        lines += [f'event_token = "{EVENT_TOKEN}"', f'event_aes_key = "{EVENT_AES_KEY}"']
    lines += [f'{k} = "{v}"' for k, v in dingtalk.items()]
    text = config_toml(db_url or f"sqlite+aiosqlite:///{tmp_path}/t.db", "[dingtalk]", *lines, extra, PEOPLE)
    return load_toml(tmp_path, text)


class FakeDingTalk:
    """api.dingtalk.com and oapi.dingtalk.com as respx routes, recording what the bot sends."""

    def __init__(self, mock):
        self.sent: list[dict] = []
        self.users: dict[str, dict] = {}
        self.expired_sessions: set[str] = set()
        self.tokens = mock.post(f"{API}/v1.0/oauth2/accessToken").mock(
            return_value=httpx.Response(200, json={"accessToken": "at-1", "expireIn": 7200}))
        self.oapi_tokens = mock.get(f"{OAPI}/gettoken").mock(
            return_value=httpx.Response(200, json={"errcode": 0, "access_token": "ot-1", "expires_in": 7200}))
        mock.post(f"{API}/v1.0/robot/oToMessages/batchSend").mock(side_effect=self._robot("user"))
        mock.post(f"{API}/v1.0/robot/groupMessages/send").mock(side_effect=self._robot("group"))
        mock.post(f"{API}/v1.0/card/instances/createAndDeliver").mock(side_effect=self._create)
        mock.put(f"{API}/v1.0/card/instances").mock(side_effect=self._update)
        mock.post(url__startswith=f"{OAPI}/robot/sendBySession").mock(side_effect=self._session)
        mock.post(f"{OAPI}/topapi/v2/user/get").mock(side_effect=self._user)

    def _robot(self, kind):
        def handler(request):
            body = json.loads(request.content)
            assert request.headers["x-acs-dingtalk-access-token"] == "at-1"
            to = body["userIds"][0] if kind == "user" else body["openConversationId"]
            self.sent.append({"via": "openapi", "kind": kind, "to": to, "msgKey": body["msgKey"],
                              "param": json.loads(body["msgParam"]), "body": body})
            return httpx.Response(200, json={"processQueryKey": f"q{len(self.sent)}"})
        return handler

    def _create(self, request):
        body = json.loads(request.content)
        space = body["openSpaceId"]
        kind, to = ("group", space.split("IM_GROUP.", 1)[1]) if "IM_GROUP." in space else \
            ("user", space.split("IM_ROBOT.", 1)[1])
        self.sent.append({"via": "card", "kind": kind, "to": to, "outTrackId": body["outTrackId"],
                          "params": body["cardData"]["cardParamMap"], "body": body})
        return httpx.Response(200, json={"success": True, "result": {"outTrackId": body["outTrackId"],
                              "deliverResults": [{"spaceType": "IM", "spaceId": to, "success": True}]}})

    def _update(self, request):
        body = json.loads(request.content)
        self.sent.append({"via": "update", "outTrackId": body["outTrackId"],
                          "params": body["cardData"]["cardParamMap"], "body": body})
        return httpx.Response(200, json={"success": True, "result": True})

    def _session(self, request):
        session = request.url.params["session"]
        if session in self.expired_sessions:
            return httpx.Response(200, json={"errcode": 300001, "errmsg": "session 不存在"})
        body = json.loads(request.content)
        self.sent.append({"via": "session", "session": session, "body": body})
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    def _user(self, request):
        uid = json.loads(request.content)["userid"]
        if uid not in self.users:
            return httpx.Response(200, json={"errcode": 60121, "errmsg": "找不到该用户"})
        return httpx.Response(200, json={"errcode": 0, "result": {"userid": uid, **self.users[uid]}})

    # ---- reading what was sent ------------------------------------------

    def cards(self, kind=None, to=None, card_kind=None) -> list[dict]:
        return [s for s in self.sent if s["via"] == "card" and (kind is None or s["kind"] == kind)
                and (to is None or s["to"] == to) and (card_kind is None or s["params"]["kind"] == card_kind)]

    def updates(self, out_track_id=None) -> list[dict]:
        return [s for s in self.sent if s["via"] == "update"
                and (out_track_id is None or s["outTrackId"] == out_track_id)]

    def session_texts(self, session: str) -> list[str]:
        out = []
        for s in self.sent:
            if s["via"] == "session" and s["session"] == session:
                b = s["body"]
                out.append(b["text"]["content"] if b["msgtype"] == "text" else b["markdown"]["text"])
        return out

    def openapi_texts(self, to: str) -> list[str]:
        return [s["param"].get("content") or s["param"].get("text") for s in self.sent
                if s["via"] == "openapi" and s["to"] == to]


# ---- building callbacks ------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def session_of(user: str) -> str:
    return f"sess-{user}"


def robot_msg(sender: str, text: str | None = None, *, group: str | None = None, msg_id: str | None = None,
              at: tuple[str, ...] = (), session: bool = True, **fields) -> dict:
    msg = {
        "msgtype": "text", "text": {"content": f" {text}" if text is not None else ""},
        "msgId": msg_id or f"msgX{next(_seq)}", "createAt": now_ms(),
        "conversationType": "2" if group else "1",
        "conversationId": group or f"cid1on1-{sender}",
        "senderId": f"$:LWCP_v1:${sender}", "senderStaffId": sender, "senderNick": f"nick-{sender}",
        "senderCorpId": "dingcorp", "chatbotUserId": BOT_ID, "chatbotCorpId": "dingcorp", "robotCode": "dingapp",
        "isAdmin": False, "isInAtList": True,
        "atUsers": [{"dingtalkId": BOT_ID}] + [{"dingtalkId": f"$:{u}", "staffId": u} for u in at],
    }
    if group:
        msg["conversationTitle"] = "工程师群"
    if session:
        key = session_of(group or sender)
        msg["sessionWebhook"] = f"{OAPI}/robot/sendBySession?session={key}"
        msg["sessionWebhookExpiredTime"] = now_ms() + 90 * 60 * 1000
    msg.update(fields)
    return msg


def signed(secret: str = APP_SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(ts if ts is not None else now_ms())
    return {"timestamp": stamp, "sign": robot_sign(stamp, secret), "Content-Type": "application/json"}


async def post_robot(client, msg: dict | bytes, headers: dict | None = None):
    data = msg if isinstance(msg, bytes) else json.dumps(msg, ensure_ascii=False).encode()
    return await client.post("/callbacks/dingtalk", data=data, headers=headers if headers is not None else signed())


def card_headers(secret: str = CARD_SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(ts if ts is not None else now_ms())
    return {"x-ddpaas-signature-timestamp": stamp, "x-ddpaas-signature": card_signature(stamp, secret),
            "Content-Type": "application/json"}


async def click(client, user: str, out_track_id: str, value: str, headers: dict | None = None):
    body = {"type": "actionCallback", "outTrackId": out_track_id, "corpId": "dingcorp", "userId": user,
            "content": json.dumps({"cardPrivateData": {"actionIds": ["btn1"], "params": {"value": value}}})}
    return await client.post("/callbacks/dingtalk/card", data=json.dumps(body), headers=headers if headers is not None else card_headers())


def event_crypto(owner: str = "dingapp") -> EventCrypto:
    return EventCrypto(EVENT_TOKEN, EVENT_AES_KEY, owner)


async def post_event(client, crypto: EventCrypto, plain: dict | str, *, ts: str | None = None):
    text = plain if isinstance(plain, str) else json.dumps(plain)
    env = crypto.encrypt_reply(text, nonce="n0nce", timestamp=ts or str(now_ms()))
    query = urlencode({"msg_signature": env["msg_signature"], "timestamp": env["timeStamp"], "nonce": env["nonce"]})
    return await client.post(f"/callbacks/dingtalk/events?{query}", data=json.dumps({"encrypt": env["encrypt"]}),
                             headers={"Content-Type": "application/json"})


# ---- fixtures ----------------------------------------------------------------


class Bot:
    def __init__(self, app, client, fake: FakeDingTalk):
        self.app, self.client, self.fake = app, client, fake
        self.rt = app[RUNTIME]
        self.channel = self.rt.channels.get("dingtalk")

    async def drain(self):
        await self.rt.outbox.drain()

    async def q(self, stmt):
        async with self.rt.db.session() as s:
            return list((await s.exec(stmt)).all())

    async def count(self, model) -> int:
        return (await self.q(select(func.count()).select_from(model)))[0]

    async def ticket(self) -> Ticket | None:
        rows = await self.q(select(Ticket).order_by(Ticket.id.desc()))
        return rows[0] if rows else None

    async def person(self, pid: str) -> Person | None:
        async with self.rt.db.session() as s:
            return await s.get(Person, pid)

    async def failed(self) -> list[OutboxMessage]:
        return await self.q(select(OutboxMessage).where(OutboxMessage.status.in_(("pending", "sending", "failed"))))


@pytest.fixture
def make_bot(tmp_path, aiohttp_client, respx_mock):
    async def make(db_url: str | None = None, **kw) -> Bot:
        fake = FakeDingTalk(respx_mock)
        app = create_app(write_config(tmp_path, db_url, **kw), workers=False)
        client = await aiohttp_client(app)
        return Bot(app, client, fake)
    return make


@pytest.fixture
async def bot(make_bot) -> Bot:
    return await make_bot()


def button_value(card: dict, label: str) -> str:
    for b in json.loads(card["params"]["buttons"]):
        if b["label"] == label:
            return b["value"]
    raise AssertionError(f"no button {label!r} in {card['params']['buttons']}")


# ---- robot messages: the happy path -----------------------------------------------


async def test_report_from_a_1on1_chat_files_a_ticket_and_answers_through_the_session(bot):
    r = await post_robot(bot.client, robot_msg("u_wang", REPORT))
    assert r.status == 200
    ticket = await bot.ticket()
    assert ticket is not None and ticket.reporter_id == "cust_wang"
    assert (ticket.reporter_channel, ticket.reporter_conv_kind, ticket.reporter_conv_id) == ("dingtalk", "user", "u_wang")
    await bot.drain()
    assert not await bot.failed()
    # The receipt went back through the conversation's sessionWebhook (no token needed).
    receipts = bot.fake.session_texts(session_of("u_wang"))
    assert any(ticket.number in x for x in receipts)
    # The customer's status card and the engineers' card are interactive cards.
    status = bot.fake.cards("user", "u_wang", "status")[0]
    assert status["body"]["imRobotOpenDeliverModel"] == {"spaceType": "IM_ROBOT", "robotCode": "dingapp"}
    eng = bot.fake.cards("group", ENG_GROUP, "engineer")[0]
    body = eng["body"]
    assert body["cardTemplateId"] == "tpl-relaydesk.schema" and body["callbackType"] == "HTTP"
    assert body["callbackRouteKey"] == "relaydesk" and body["openSpaceId"] == f"dtv1.card//IM_GROUP.{ENG_GROUP}"
    assert all(isinstance(v, str) for v in eng["params"].values())
    tokens = {a.action: a.token for a in await bot.q(select(CardAction).where(CardAction.ticket_id == ticket.id))}
    buttons = json.loads(eng["params"]["buttons"])
    assert [(b["label"], b["value"]) for b in buttons] == [
        ("认领", tokens["claim"]), ("转交", tokens["transfer"]), ("加急", tokens["escalate"])]
    assert eng["params"]["subtitle"] == ticket.number
    assert bot.fake.tokens.call_count == 1  # cached across every send


async def test_the_same_msgid_four_times_makes_one_ticket(make_bot, database_url):
    bot = await make_bot(database_url)
    msg = robot_msg("u_wang", REPORT, msg_id="msgDUPLICATE==")
    results = await asyncio.gather(*(post_robot(bot.client, msg) for _ in range(4)))
    assert [r.status for r in results] == [200] * 4
    assert await bot.count(Ticket) == 1
    # A redelivery a minute later (a fresh sign) is still the same message.
    r = await post_robot(bot.client, msg, signed(ts=now_ms() + 60_000))
    assert r.status == 200 and await bot.count(Ticket) == 1
    await bot.drain()
    assert len(bot.fake.cards("group", ENG_GROUP, "engineer")) == 1


async def test_group_message_at_robot_with_mentions(bot):
    await post_robot(bot.client, robot_msg("u_wang", REPORT))
    ticket = await bot.ticket()
    r = await post_robot(bot.client, robot_msg("u_zhang", f"转交 @李工 {ticket.number}", group=ENG_GROUP,
                                               at=("u_li",)))
    assert r.status == 200
    ticket = await bot.ticket()
    assert (ticket.state, ticket.assignee_id) == ("transferred", "eng_li")
    await bot.drain()
    # The reply in the group @s the engineer who wrote, through the group's sessionWebhook.
    replies = [s["body"] for s in bot.fake.sent if s["via"] == "session" and s["session"] == session_of(ENG_GROUP)]
    assert replies and replies[0]["at"]["atUserIds"] == ["u_zhang"] and "@u_zhang" in replies[0]["text"]["content"]


async def test_picture_is_attached_to_the_open_ticket(bot):
    await post_robot(bot.client, robot_msg("u_wang", REPORT))
    pic = robot_msg("u_wang", msgtype="picture", content={"downloadCode": "dl-code-1", "pictureDownloadCode": "p1"})
    pic.pop("text")
    assert (await post_robot(bot.client, pic)).status == 200
    ticket = await bot.ticket()
    atts = await bot.q(select(Attachment))
    assert [(a.ticket_id, a.media_ref, a.channel, a.uploaded_by) for a in atts] == [
        (ticket.id, "dl-code-1", "dingtalk", "cust_wang")]


async def test_unpublished_robot_without_staff_id_is_acknowledged_and_logged_once(bot, caplog):
    for _ in range(2):
        msg = robot_msg("u_wang", REPORT)
        msg.pop("senderStaffId")
        assert (await post_robot(bot.client, msg)).status == 200
    assert await bot.count(ProcessedEvent) == 0 and await bot.count(Ticket) == 0
    assert sum("publish the robot" in r.getMessage() for r in caplog.records) == 1


# ---- robot messages: refusals -------------------------------------------------------


async def assert_nothing_written(bot: Bot):
    assert await bot.count(Ticket) == 0
    assert await bot.count(ProcessedEvent) == 0
    assert await bot.count(OutboxMessage) == 0


async def test_forged_sign_is_403_and_writes_nothing(bot):
    msg = robot_msg("u_wang", REPORT)
    for headers in (signed(secret="not-the-secret"), {"timestamp": str(now_ms())}, {},
                    {**signed(), "sign": "AAAA"}, {"timestamp": "abc", "sign": robot_sign("abc", APP_SECRET)}):
        r = await post_robot(bot.client, msg, headers)
        assert r.status == 403, headers
    await assert_nothing_written(bot)


async def test_stale_or_future_sign_is_403(bot):
    msg = robot_msg("u_wang", REPORT)
    for ts in (now_ms() - 3600_000 - 60_000, now_ms() + 3600_000 + 60_000):
        r = await post_robot(bot.client, msg, signed(ts=ts))
        assert r.status == 403
    await assert_nothing_written(bot)


async def test_v12_robot_sign_through_the_endpoint(bot):
    # V12: timestamp 1577262236757 with app secret "this is a secret" (docs/PLATFORMS.md §4).
    bot.channel.config = bot.channel.config.model_copy(update={"app_secret": "this is a secret"})
    bot.channel.clock = lambda: 1577262236.757
    headers = {"timestamp": "1577262236757", "sign": "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CA=",
               "Content-Type": "application/json"}
    assert (await post_robot(bot.client, robot_msg("u_wang", REPORT, session=False), headers)).status == 200
    assert await bot.count(Ticket) == 1
    bad = {**headers, "sign": "DJrE6qdyVGCQz9z5r2MDuNcNAhwYnuAkyj13cx169CB="}
    assert (await post_robot(bot.client, robot_msg("u_wang", REPORT), bad)).status == 403


async def test_malformed_messages_are_400(bot):
    for body in (b"{not json", b"[1,2]", b"\xff\xfe", json.dumps({"msgtype": "text"}).encode(),
                 json.dumps(robot_msg("u_wang", REPORT, conversationType="9")).encode(),
                 json.dumps({**robot_msg("u_wang"), "text": "x"}).encode()):
        r = await post_robot(bot.client, body)
        assert r.status == 400, body
    await assert_nothing_written(bot)


async def test_oversized_body_is_413(make_bot):
    bot = await make_bot(extra="[server]\nmax_body_bytes = 4096\n")
    msg = robot_msg("u_wang", "泵" * 4096)
    r = await post_robot(bot.client, msg)
    assert r.status == 413
    await assert_nothing_written(bot)


# ---- card callbacks -----------------------------------------------------------------


async def reported(bot: Bot) -> tuple[Ticket, dict]:
    await post_robot(bot.client, robot_msg("u_wang", REPORT))
    await bot.drain()
    return await bot.ticket(), bot.fake.cards("group", ENG_GROUP, "engineer")[-1]


async def test_card_callback_refusals_write_nothing(bot):
    ticket, eng = await reported(bot)
    claim = button_value(eng, "认领")
    before = await bot.count(ProcessedEvent)
    forged = await click(bot.client, "u_zhang", eng["outTrackId"], claim, card_headers(secret="wrong"))
    stale = await click(bot.client, "u_zhang", eng["outTrackId"], claim, card_headers(ts=now_ms() - 7200_000))
    unsigned = await click(bot.client, "u_zhang", eng["outTrackId"], claim, {"Content-Type": "application/json"})
    assert (forged.status, stale.status, unsigned.status) == (403, 403, 403)
    bad_bodies = [b"nope", json.dumps({"type": "actionCallback", "userId": "u_zhang"}).encode(),
                  json.dumps({"type": "actionCallback", "userId": "u_zhang", "outTrackId": "x",
                              "content": "{broken"}).encode(),
                  json.dumps({"type": "actionCallback", "userId": "u_zhang", "outTrackId": "x",
                              "content": json.dumps({"cardPrivateData": {"params": {}}})}).encode()]
    for body in bad_bodies:
        r = await bot.client.post("/callbacks/dingtalk/card", data=body, headers=card_headers())
        assert r.status == 400, body
    assert await bot.count(ProcessedEvent) == before
    assert (await bot.ticket()).state == "new"


async def test_v12_card_signature_through_the_endpoint(bot):
    ticket, eng = await reported(bot)
    bot.channel.config = bot.channel.config.model_copy(update={"card_api_secret": "mySecret"})
    bot.channel.clock = lambda: 1700000000.0
    headers = {"x-ddpaas-signature-timestamp": "1700000000000",
               "x-ddpaas-signature": "t3jqwt0WBVsvNpgD+ncljxce56XsNOeEYafngX/BHjc=",
               "Content-Type": "application/json"}
    r = await click(bot.client, "u_zhang", eng["outTrackId"], button_value(eng, "认领"), headers)
    assert r.status == 200
    assert (await bot.ticket()).assignee_id == "eng_zhang"


# ---- event subscription ----------------------------------------------------------


@pytest.mark.parametrize("name", ["V6", "V8"])
async def test_published_handshakes_through_the_endpoint(make_bot, name):
    v = VECTORS[name]
    bot = await make_bot(events=False, cards=False, event_token=v["token"], event_aes_key=v["encoding_aes_key"],
                         event_owner_key=v["owner_key"])
    bot.channel.clock = lambda: int(v["timestamp"]) / 1000
    query = urlencode({"msg_signature": v["msg_signature"], "timestamp": v["timestamp"], "nonce": v["nonce"]})
    started = time.perf_counter()
    r = await bot.client.post(f"/callbacks/dingtalk/events?{query}", data=json.dumps({"encrypt": v["encrypt"]}))
    assert time.perf_counter() - started < 1.5  # answered well inside DingTalk's 1500 ms
    assert r.status == 200
    reply = await r.json()
    assert set(reply) == {"msg_signature", "timeStamp", "nonce", "encrypt"}
    crypto = EventCrypto(v["token"], v["encoding_aes_key"], v["owner_key"])
    assert crypto.decrypt(reply["msg_signature"], reply["timeStamp"], reply["nonce"], reply["encrypt"]) == "success"
    # V8's negative case: another nonce breaks the signature.
    query = urlencode({"msg_signature": v["msg_signature"], "timestamp": v["timestamp"], "nonce": "xxxxx"})
    r = await bot.client.post(f"/callbacks/dingtalk/events?{query}", data=json.dumps({"encrypt": v["encrypt"]}))
    assert r.status == 403


async def test_v7_encrypted_success_is_not_an_event(make_bot):
    v = VECTORS["V7"]
    bot = await make_bot(events=False, event_token=v["token"], event_aes_key=v["encoding_aes_key"],
                         event_owner_key=v["owner_key"])
    bot.channel.clock = lambda: int(v["timestamp"]) / 1000
    query = urlencode({"signature": v["msg_signature"], "timeStamp": v["timestamp"], "nonce": v["nonce"]})
    r = await bot.client.post(f"/callbacks/dingtalk/events?{query}", data=json.dumps({"encrypt": v["encrypt"]}))
    assert r.status == 400  # signed and decrypted ("success"), but not an event


async def test_event_refusals(bot):
    crypto = event_crypto()
    r = await post_event(bot.client, event_crypto(owner="dingOTHERAPP"), {"EventType": "check_url"})
    assert r.status == 403  # encrypted for another app
    r = await post_event(bot.client, EventCrypto("other-token", EVENT_AES_KEY, "dingapp"), {"EventType": "check_url"})
    assert r.status == 403
    r = await post_event(bot.client, crypto, {"EventType": "check_url"}, ts=str(now_ms() - 2 * 3600_000))
    assert r.status == 403  # stale
    r = await bot.client.post("/callbacks/dingtalk/events?msg_signature=a&timestamp=1&nonce=n", data=b"{oops")
    assert r.status == 400
    r = await bot.client.post("/callbacks/dingtalk/events", data=json.dumps({"encrypt": "abc"}))
    assert r.status == 403
    r = await post_event(bot.client, crypto, "not json at all")
    assert r.status == 400
    ok = await post_event(bot.client, crypto, {"EventType": "check_url"})
    assert ok.status == 200


async def test_address_book_events_keep_people_in_sync(bot):
    crypto = event_crypto()
    bot.fake.users["u_new"] = {"name": "刘新人", "mobile": "13900000009"}
    bot.fake.users["u_zhang"] = {"name": "张工程师"}
    for etype, ids in (("user_add_org", ["u_new"]), ("user_modify_org", ["u_zhang"]), ("user_leave_org", ["u_li"])):
        r = await post_event(bot.client, crypto, {"EventType": etype, "TimeStamp": now_ms(), "UserId": ids,
                                                  "CorpId": "dingcorp"})
        assert r.status == 200
        reply = await r.json()
        assert crypto.decrypt(reply["msg_signature"], reply["timeStamp"], reply["nonce"], reply["encrypt"]) == "success"
    # The leave is applied at once: deactivated, not deleted.
    li = await bot.person("eng_li")
    assert li is not None and li.active is False
    # Joins and changes wait for the member's details, fetched after the answer.
    assert {r.user_id for r in await bot.q(select(DingTalkUserSync))} == {"u_new", "u_zhang"}
    await bot.channel.members.sync()
    assert await bot.count(DingTalkUserSync) == 0
    new = await bot.person("dingtalk:u_new")
    assert (new.name, new.role, new.phone, new.active) == ("刘新人", "customer", "13900000009", True)
    assert (await bot.person("eng_zhang")).name == "张工程师"
    # The new member's first message is theirs, under their name.
    await post_robot(bot.client, robot_msg("u_new", REPORT))
    assert (await bot.ticket()).reporter_id == "dingtalk:u_new"
    # A member DingTalk no longer knows is deactivated when their details are fetched.
    await post_event(bot.client, crypto, {"EventType": "user_modify_org", "UserId": ["u_zhao"]})
    await bot.channel.members.sync()
    assert (await bot.person("lead_zhao")).active is False


async def test_address_book_fetch_failures_are_retried_later(bot, respx_mock):
    respx_mock.post(f"{OAPI}/topapi/v2/user/get").mock(
        return_value=httpx.Response(200, json={"errcode": -1, "errmsg": "系统繁忙"}))
    await post_event(bot.client, event_crypto(), {"EventType": "user_add_org", "UserId": ["u_new"]})
    assert await bot.channel.members.sync() == 0
    row = (await bot.q(select(DingTalkUserSync)))[0]
    assert row.attempts == 1 and "errcode -1" in row.last_error
    assert await bot.channel.members.sync() == 0  # not due yet


# ---- sending -----------------------------------------------------------------------


async def test_expired_session_falls_back_to_the_openapi(bot):
    msg = robot_msg("u_wang", REPORT, sessionWebhookExpiredTime=now_ms() + 30_000)  # inside the safety margin
    await post_robot(bot.client, msg)
    await bot.drain()
    number = (await bot.ticket()).number
    assert not bot.fake.session_texts(session_of("u_wang"))
    assert any(number in (x or "") for x in bot.fake.openapi_texts("u_wang"))


async def test_session_gone_falls_back_and_is_forgotten(bot):
    await post_robot(bot.client, robot_msg("u_wang", REPORT))
    await bot.channel.sessions.flush()
    assert await bot.count(DingTalkSession) == 1
    bot.fake.expired_sessions.add(session_of("u_wang"))
    await bot.drain()
    number = (await bot.ticket()).number
    assert any(number in (x or "") for x in bot.fake.openapi_texts("u_wang"))
    assert await bot.count(DingTalkSession) == 0
    assert not await bot.failed()


async def test_sessions_are_kept_in_the_database_for_other_processes(bot):
    await post_robot(bot.client, robot_msg("u_wang", "帮助"))
    await bot.channel.sessions.flush()
    row = (await bot.q(select(DingTalkSession)))[0]
    assert (row.to_kind, row.to_id) == ("user", "u_wang") and row.webhook.endswith(session_of("u_wang"))
    bot.channel.sessions._sessions.clear()  # another process: nothing in memory
    assert await bot.channel.sessions.get(Address("dingtalk", "user", "u_wang")) == row.webhook


async def test_session_on_a_foreign_host_is_ignored(bot):
    msg = robot_msg("u_wang", "帮助", sessionWebhook="https://evil.example/robot/sendBySession?session=x")
    await post_robot(bot.client, msg)
    await bot.drain()
    assert bot.fake.openapi_texts("u_wang")  # help text through the OpenAPI


async def test_repeated_delivery_of_one_outbox_row_reuses_the_card_instance(bot):
    card = Card(kind="notice", title="t", buttons=(Button("认领", "tok"),), track_key="k")
    to = Address("dingtalk", "group", ENG_GROUP)
    token = current_outbox_id.set(4242)
    try:
        first = await bot.channel.send(to, CardMessage(card), None)
        second = await bot.channel.send(to, CardMessage(card), None)
    finally:
        current_outbox_id.reset(token)
    assert first == second and first["outTrackId"].startswith("rd4242-")
    update = await bot.channel.send(to, CardMessage(card, update=True), first)
    assert update == first and bot.fake.updates(first["outTrackId"])


async def test_group_card_mentions_by_name(bot):
    card = Card(kind="notice", title="t")
    await bot.channel.send(Address("dingtalk", "group", ENG_GROUP), CardMessage(card, mentions=("u_zhang",)), None)
    body = bot.fake.cards("group", ENG_GROUP)[0]["body"]
    assert body["imGroupOpenDeliverModel"]["atUserIds"] == {"u_zhang": "张工"}


def test_card_template_needs_route_key_and_secret(tmp_path):
    with pytest.raises(ConfigError, match="card_callback_route_key"):
        write_config(tmp_path, cards=False, card_template_id="tpl")
    with pytest.raises(ConfigError, match="event_aes_key"):
        write_config(tmp_path, events=False, event_token="tok")


async def test_identity_table_maps_staff_ids(bot):
    rows = await bot.q(select(Identity).where(Identity.platform == "dingtalk"))
    assert {r.external_id: r.person_id for r in rows}["u_zhang"] == "eng_zhang"
    assert t("dingtalk.command.claim", number="X") == "认领 X"
