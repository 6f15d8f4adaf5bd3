"""The Feishu channel through the real endpoint (create_app + aiohttp test client),
with the Feishu Open API faked by respx.

Callbacks are built exactly as Feishu sends them: the event JSON encrypted with
the Encrypt Key, wrapped in {"encrypt": ...}, and signed with X-Lark-Signature
over the raw body bytes.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import respx
from sqlmodel import func, select

from app.web import RUNTIME, create_app
from bot.channels.feishu import crypto as fc
from bot.events import Address, CardMessage
from cards.model import Button, Card
from storage.models import Attachment, CardAction, ProcessedEvent, Ticket
from support import config_toml, directory_toml, load_toml

API = "https://feishu.test"
TOKEN = "vtoken-123"
KEY = "encrypt-key-xyz"
BOT = "ou_bot"
ENGINEERS = "oc_engineers"
CUSTOMER, ZHANG, LI, LEAD = "ou_cust", "ou_zhang", "ou_li", "ou_lead"
VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text(encoding="utf-8"))
V12_SIGNATURE = "4dca085198cb3216defc5b65b0668c1328b038a22dbadf2bc6c4fdc3d32bbc45"

_seq = itertools.count(1)


def feishu_config(db_url: str, *, encrypt_key: str | None = KEY, token: str = TOKEN, max_body: int = 1_048_576,
                  bot_open_id: str | None = BOT) -> str:
    key_line = f'encrypt_key = "{encrypt_key}"' if encrypt_key else ""
    bot_line = f'bot_open_id = "{bot_open_id}"' if bot_open_id else ""
    people = directory_toml("feishu", {"cust_wang": CUSTOMER, "eng_zhang": ZHANG, "eng_li": LI, "lead_zhao": LEAD,
                                       "director_sun": "ou_sun"}, ENGINEERS,
                            team_skills=("泵", "电气", "变频器"),
                            skills={"eng_zhang": ("泵", "电气"), "eng_li": ("变频器", "PLC")},
                            phones=("cust_wang", "eng_zhang", "eng_li", "lead_zhao", "director_sun"))
    return config_toml(db_url, "[feishu]", 'app_id = "cli_test"', 'app_secret = "secret"',
                       f'verification_token = "{token}"', key_line, f'api_base = "{API}"', bot_line, people,
                       server=f"max_body_bytes = {max_body}")


# ---- the fake Feishu Open API -------------------------------------------------


@dataclass
class Sent:
    method: str
    path: str
    params: dict
    body: dict
    at: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> dict:
        return json.loads(self.body["content"])

    @property
    def to(self) -> str | None:
        return self.body.get("receive_id")


class FakeFeishu:
    """Token, bot info, send / reply / patch messages, image upload — all answering success."""

    def __init__(self, mock: respx.MockRouter):
        self.calls: list[Sent] = []
        self.tokens = 0
        self._ids = itertools.count(1)
        mock.post("/open-apis/auth/v3/tenant_access_token/internal").mock(side_effect=self._token)
        mock.get("/open-apis/bot/v3/info").mock(return_value=httpx.Response(
            200, json={"code": 0, "msg": "ok", "bot": {"open_id": BOT, "app_name": "RelayDesk"}}))
        mock.post("/open-apis/im/v1/messages").mock(side_effect=self._send)
        mock.post(url__regex=r"/open-apis/im/v1/messages/[^/]+/reply$").mock(side_effect=self._send)
        mock.patch(url__regex=r"/open-apis/im/v1/messages/[^/]+$").mock(side_effect=self._patch)
        mock.post("/open-apis/im/v1/images").mock(return_value=httpx.Response(
            200, json={"code": 0, "data": {"image_key": "img_v2_up"}}))

    def _token(self, request):
        self.tokens += 1
        return httpx.Response(200, json={"code": 0, "msg": "ok", "tenant_access_token": f"t-{self.tokens}",
                                         "expire": 7200})

    def _record(self, request) -> Sent:
        assert request.headers["Authorization"].startswith("Bearer t-")
        s = Sent(request.method, request.url.path, dict(request.url.params), json.loads(request.content))
        self.calls.append(s)
        return s

    def _send(self, request):
        s = self._record(request)
        mid = f"om_{next(self._ids)}"
        chat = s.to if s.params.get("receive_id_type") == "chat_id" else f"oc_p2p_{s.to}"
        return httpx.Response(200, json={"code": 0, "msg": "success", "data": {
            "message_id": mid, "chat_id": chat, "msg_type": s.body["msg_type"]}})

    def _patch(self, request):
        self._record(request)
        return httpx.Response(200, json={"code": 0, "msg": "success"})

    # views
    def sends(self, to: str | None = None, msg_type: str | None = None) -> list[Sent]:
        return [c for c in self.calls if c.method == "POST" and (to is None or c.to == to)
                and (msg_type is None or c.body["msg_type"] == msg_type)]

    def texts(self, to: str) -> list[str]:
        return [c.content["text"] for c in self.sends(to, "text")]

    def cards(self, to: str) -> list[dict]:
        return [c.content for c in self.sends(to, "interactive")]

    def patches(self) -> list[Sent]:
        return [c for c in self.calls if c.method == "PATCH"]


def buttons(card: dict) -> dict[str, str]:
    """Button label -> token of a rendered Feishu card."""
    out = {}
    for el in card["elements"]:
        if el["tag"] == "action":
            for b in el["actions"]:
                out[b["text"]["content"]] = b["value"]["token"]
    return out


def card_texts(card: dict) -> str:
    return json.dumps(card, ensure_ascii=False)


# ---- building callbacks as Feishu does -----------------------------------------


def signed(payload: dict | bytes, *, key: str | None = KEY, encrypt: bool = True,
           sign: bool = True) -> tuple[bytes, dict[str, str]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
    body = json.dumps({"encrypt": fc.encrypt(key, raw)}).encode() if (encrypt and key) else raw
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if sign and key:
        ts, nonce = str(int(time.time())), uuid.uuid4().hex
        headers.update({"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce,
                        "X-Lark-Signature": fc.signature(ts, nonce, key, body)})
    return body, headers


def message_event(sender: str, text: str | None = None, *, chat: str | None = None, mentions=(),
                  message_id: str | None = None, event_id: str | None = None, message_type: str = "text",
                  content: dict | None = None, token: str = TOKEN, thread: str | None = None) -> dict:
    n = next(_seq)
    msg = {
        "message_id": message_id or f"om_in_{n}",
        "root_id": thread or "", "parent_id": thread or "",
        "create_time": str(int(time.time() * 1000)),
        "chat_id": chat or f"oc_p2p_{sender}",
        "chat_type": "group" if chat else "p2p",
        "message_type": message_type,
        "content": json.dumps(content if content is not None else {"text": text}, ensure_ascii=False),
        "mentions": [{"key": f"@_user_{i}", "id": {"open_id": oid, "union_id": f"on_{oid}", "user_id": ""},
                      "name": name, "tenant_key": "tk"} for i, (oid, name) in enumerate(mentions, 1)],
    }
    if thread:
        msg["thread_id"] = "omt_" + thread
    return {
        "schema": "2.0",
        "header": {"event_id": event_id or uuid.uuid4().hex, "event_type": "im.message.receive_v1",
                   "create_time": str(int(time.time() * 1000)), "token": token, "app_id": "cli_test",
                   "tenant_key": "tk"},
        "event": {"sender": {"sender_id": {"open_id": sender, "union_id": f"on_{sender}", "user_id": ""},
                             "sender_type": "user", "tenant_key": "tk"},
                  "message": msg},
    }


def card_event(operator: str, value, *, message_id: str, chat_id: str, event_id: str | None = None,
               token: str = TOKEN) -> dict:
    return {
        "schema": "2.0",
        "header": {"event_id": event_id or uuid.uuid4().hex, "token": token,
                   "create_time": str(int(time.time() * 1_000_000)), "event_type": "card.action.trigger",
                   "tenant_key": "tk", "app_id": "cli_test"},
        "event": {"operator": {"tenant_key": "tk", "user_id": "", "open_id": operator, "union_id": f"on_{operator}"},
                  "token": "c-update-token",
                  "action": {"value": value, "tag": "button"},
                  "host": "im_message",
                  "context": {"open_message_id": message_id, "open_chat_id": chat_id}},
    }


class Feishu:
    """The bot under test, a fake Feishu API, and helpers to talk to it."""

    def __init__(self, client, fake: FakeFeishu):
        self.client = client
        self.fake = fake
        self.rt = client.server.app[RUNTIME]
        self.channel = self.rt.channels.get("feishu")

    async def post(self, body: bytes, headers: dict):
        return await self.client.post("/callbacks/feishu", data=body, headers=headers)

    async def push(self, payload: dict, **kw):
        return await self.post(*signed(payload, **kw))

    async def say(self, sender: str, text: str, **kw):
        r = await self.push(message_event(sender, text, **kw))
        assert r.status == 200, await r.text()
        return r

    async def click(self, operator: str, token: str, *, message_id: str, chat_id: str, **kw) -> dict:
        r = await self.push(card_event(operator, {"token": token}, message_id=message_id, chat_id=chat_id, **kw))
        assert r.status == 200, await r.text()
        return await r.json()

    async def drain(self):
        await self.rt.outbox.drain()

    async def tickets(self) -> list[Ticket]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(Ticket).order_by(Ticket.id))).all())

    async def processed(self) -> int:
        async with self.rt.db.session() as s:
            return (await s.exec(select(func.count()).select_from(ProcessedEvent))).one()

    async def token_for(self, ticket_id: int, action: str) -> str:
        async with self.rt.db.session() as s:
            row = (await s.exec(select(CardAction).where(CardAction.ticket_id == ticket_id,
                                                         CardAction.action == action))).first()
            return row.token

    def last_card_send(self, to: str) -> Sent:
        return self.fake.sends(to, "interactive")[-1]


async def _make(tmp_path, aiohttp_client, **cfg) -> Feishu:
    app = create_app(load_toml(tmp_path, feishu_config(f"sqlite+aiosqlite:///{tmp_path}/t.db", **cfg)),
                     workers=False)
    client = await aiohttp_client(app)
    return client


@pytest.fixture
async def fs(tmp_path, aiohttp_client):
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        fake = FakeFeishu(mock)
        client = await _make(tmp_path, aiohttp_client)
        yield Feishu(client, fake)


def sent_message_id(fs: Feishu, sent: Sent) -> str:
    """The message_id the fake answered for `sent` (ids count the POSTs in order)."""
    posts = [c for c in fs.fake.calls if c.method == "POST"]
    return f"om_{posts.index(sent) + 1}"


# ---- URL verification and the published vectors through the endpoint --------


async def test_url_verification_plain_and_encrypted(fs):
    challenge = {"challenge": "ch-123", "token": TOKEN, "type": "url_verification"}
    # Plain, unsigned (Feishu sends no signature headers with the challenge).
    r = await fs.post(json.dumps(challenge).encode(), {"Content-Type": "application/json"})
    assert r.status == 200 and await r.json() == {"challenge": "ch-123"}
    # Encrypted, unsigned.
    r = await fs.post(*signed(challenge, sign=False))
    assert r.status == 200 and await r.json() == {"challenge": "ch-123"}
    # Wrong token: refused.
    r = await fs.post(*signed({**challenge, "token": "nope"}, sign=False))
    assert r.status == 403


async def test_published_vectors_through_the_endpoint(tmp_path, aiohttp_client):
    """V10 and V11's encrypted bodies, posted as Feishu would, are decrypted by the real endpoint."""
    v10, v11 = VECTORS["V10"], VECTORS["V11"]
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        FakeFeishu(mock)
        client = await _make(tmp_path, aiohttp_client, encrypt_key=v11["encrypt_key"], token="v")
        body = json.dumps({"encrypt": v11["encrypt"]}).encode()
        r = await client.post("/callbacks/feishu", data=body, headers={"Content-Type": "application/json"})
        assert r.status == 200 and await r.json() == {"challenge": "1212"}
        # V12: the same event as a plain signed body, with the derived signature.
        plain = v11["expected_plain"].encode()
        headers = {"X-Lark-Request-Timestamp": "timestamp", "X-Lark-Request-Nonce": "nonce",
                   "X-Lark-Signature": V12_SIGNATURE, "Content-Type": "application/json"}
        r = await client.post("/callbacks/feishu", data=plain, headers=headers)
        assert r.status == 200 and await r.json() == {"challenge": "1212"}
        r = await client.post("/callbacks/feishu", data=plain,
                              headers={**headers, "X-Lark-Signature": V12_SIGNATURE[::-1]})
        assert r.status == 403
        # V10's body cannot be opened with V11's key.
        r = await client.post("/callbacks/feishu", data=json.dumps({"encrypt": v10["encrypt"]}).encode())
        assert r.status == 400 and (await r.json())["error"] == "cannot decrypt the body"
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        FakeFeishu(mock)
        other = tmp_path / "v10"
        other.mkdir()
        client = await _make(other, aiohttp_client, encrypt_key=v10["encrypt_key"])
        # With its own key V10 decrypts — to "hello world", which is no event: 400, said so.
        r = await client.post("/callbacks/feishu", data=json.dumps({"encrypt": v10["encrypt"]}).encode())
        assert r.status == 400 and (await r.json())["error"] == "the decrypted body is not a JSON object"


# ---- bad input changes nothing ------------------------------------------------


async def test_forged_signature_is_403_and_writes_nothing(fs):
    body, headers = signed(message_event(CUSTOMER, "3号泵不出水了，整条线停着"))
    headers["X-Lark-Signature"] = fc.signature(headers["X-Lark-Request-Timestamp"],
                                               headers["X-Lark-Request-Nonce"], "another key", body)
    r = await fs.post(body, headers)
    assert r.status == 403
    # Signed with the right key, but the body was altered after signing.
    body2, headers2 = signed(message_event(CUSTOMER, "3号泵不出水了，整条线停着"), encrypt=False)
    r = await fs.post(body2.replace("3号".encode(), "4号".encode()), headers2)
    assert r.status == 403
    # No signature at all on an event.
    r = await fs.post(*signed(message_event(CUSTOMER, "3号泵不出水了，整条线停着"), sign=False))
    assert r.status == 403
    assert await fs.tickets() == [] and await fs.processed() == 0
    await fs.drain()
    assert fs.fake.sends() == []


async def test_wrong_verification_token_is_403(fs):
    r = await fs.push(message_event(CUSTOMER, "3号泵不出水了，整条线停着", token="stolen"))
    assert r.status == 403
    r = await fs.push(card_event(ZHANG, {"token": "x"}, message_id="om_1", chat_id=ENGINEERS, token="stolen"))
    assert r.status == 403
    assert await fs.tickets() == [] and await fs.processed() == 0


async def test_wrong_token_without_encrypt_key(tmp_path, aiohttp_client):
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        fake = FakeFeishu(mock)
        fs = Feishu(await _make(tmp_path, aiohttp_client, encrypt_key=None), fake)
        r = await fs.push(message_event(CUSTOMER, "3号泵不出水了，整条线停着", token="stolen"), key=None)
        assert r.status == 403 and await fs.tickets() == []
        # Encrypted bodies need the key: a clear 400, not a crash.
        r = await fs.push(message_event(CUSTOMER, "3号泵不出水了"), key=KEY, sign=False)
        assert r.status == 400 and "encrypt_key" in (await r.json())["error"]
        r = await fs.push(message_event(CUSTOMER, "3号泵不出水了，整条线停着"), key=None)
        assert r.status == 200 and len(await fs.tickets()) == 1


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", "{\"a\": \"\xff\"}".encode("latin-1")])
async def test_malformed_json_is_400(fs, raw):
    r = await fs.post(raw, {"Content-Type": "application/json"})
    assert r.status == 400
    assert await fs.processed() == 0


async def test_malformed_inside_a_valid_envelope_is_400(fs):
    # Signed and encrypted, but the plaintext is not JSON.
    r = await fs.push(b"not json at all")
    assert r.status == 400
    # Signed, but the ciphertext is garbage.
    body = json.dumps({"encrypt": "AAAA" * 12}).encode()
    ts, nonce = "1", "n"
    r = await fs.post(body, {"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce,
                             "X-Lark-Signature": fc.signature(ts, nonce, KEY, body)})
    assert r.status == 400
    # A message event without its message.
    event = message_event(CUSTOMER, "x")
    del event["event"]["message"]
    r = await fs.push(event)
    assert r.status == 400
    assert await fs.tickets() == [] and await fs.processed() == 0


async def test_oversized_body_is_413(tmp_path, aiohttp_client):
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        fs = Feishu(await _make(tmp_path, aiohttp_client, max_body=4096), FakeFeishu(mock))
        r = await fs.push(message_event(CUSTOMER, "3号泵不出水了" * 400))
        assert r.status == 413
        assert await fs.tickets() == [] and await fs.processed() == 0


async def test_event_pushed_four_times_makes_one_ticket(fs):
    event = message_event(CUSTOMER, "3号泵又不出水了，整条线停着", message_id="om_same", event_id="ev_1")
    for i in range(4):
        if i == 2:  # Feishu sometimes re-pushes a message under a new event_id
            event["header"]["event_id"] = "ev_2"
        r = await fs.push(event)
        assert r.status == 200
    assert len(await fs.tickets()) == 1
    await fs.drain()
    assert len(fs.fake.cards(ENGINEERS)) == 1


async def test_concurrent_repushes_make_one_ticket(fs):
    event = message_event(CUSTOMER, "2号空压机停机了，报警E102", message_id="om_race")
    rs = await asyncio.gather(*(fs.push(event) for _ in range(6)))
    assert all(r.status == 200 for r in rs)
    assert len(await fs.tickets()) == 1


async def test_legacy_card_callback_is_refused_with_what_to_configure(fs):
    legacy = {"open_id": ZHANG, "user_id": "", "tenant_key": "tk", "open_message_id": "om_1",
              "open_chat_id": ENGINEERS, "token": TOKEN, "action": {"value": {"token": "x"}, "tag": "button"}}
    body = json.dumps(legacy).encode()
    ts, nonce = "1700000000", "abc"
    headers = {"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce,
               "X-Lark-Signature": fc.legacy_signature(ts, nonce, TOKEN, body)}
    r = await fs.post(body, headers)
    assert r.status == 400
    error = (await r.json())["error"]
    assert "card.action.trigger" in error and "/callbacks/feishu" in error
    assert await fs.processed() == 0


async def test_other_event_types_are_acknowledged_and_ignored(fs):
    payload = json.loads(VECTORS["V11"]["expected_plain"])
    payload.pop("type"), payload.pop("challenge")
    payload["header"]["token"] = TOKEN
    r = await fs.push(payload)
    assert r.status == 200 and await r.json() == {}
    assert await fs.processed() == 0


# ---- messages ------------------------------------------------------------------


async def test_report_acknowledged_only_once_stored(fs):
    r = await fs.say(CUSTOMER, "3号泵又不出水了，整条线停着")
    assert await r.json() == {}
    [ticket] = await fs.tickets()  # in the database before any delivery
    assert ticket.reporter_channel == "feishu" and ticket.reporter_conv_id == CUSTOMER
    await fs.drain()
    assert any(ticket.number in t for t in fs.fake.texts(CUSTOMER))
    send = fs.last_card_send(ENGINEERS)
    assert send.params["receive_id_type"] == "chat_id" and send.body["uuid"].startswith("rd")
    card = send.content
    assert card["config"]["update_multi"] is True
    assert buttons(card)["认领"] == await fs.token_for(ticket.id, "claim")


async def test_group_message_needs_the_bot_mentioned(fs):
    await fs.say(CUSTOMER, "3号泵又不出水了，整条线停着", chat="oc_factory")  # no @bot
    assert await fs.tickets() == []
    await fs.say(CUSTOMER, "@_user_1 3号泵又不出水了，整条线停着", chat="oc_factory",
                 mentions=[(BOT, "RelayDesk")])
    [ticket] = await fs.tickets()
    assert ticket.reporter_conv_kind == "group" and ticket.reporter_conv_id == "oc_factory"
    assert "@_user" not in ticket.summary and "RelayDesk" not in ticket.summary
    await fs.drain()
    [received] = [t for t in fs.fake.texts("oc_factory") if ticket.number in t]
    assert received.startswith(f'<at user_id="{CUSTOMER}"></at> ')


async def test_bot_open_id_is_looked_up_when_not_configured(tmp_path, aiohttp_client):
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        fake = FakeFeishu(mock)
        fs = Feishu(await _make(tmp_path, aiohttp_client, bot_open_id=None), fake)
        await fs.say(CUSTOMER, "@_user_1 大家好，今天开会吗", chat="oc_factory", mentions=[(ZHANG, "张工")])
        assert await fs.tickets() == []  # not addressed to the bot
        await fs.say(CUSTOMER, "@_user_1 3号泵又不出水了，整条线停着", chat="oc_factory",
                     mentions=[(BOT, "RelayDesk")])
        assert len(await fs.tickets()) == 1
        assert fs.channel.bot_open_id == BOT


async def test_transfer_with_mentions_resolved(fs):
    await fs.say(CUSTOMER, "3号泵又不出水了，整条线停着")
    [ticket] = await fs.tickets()
    await fs.say(ZHANG, f"@_user_1 认领 {ticket.number}", chat=ENGINEERS, mentions=[(BOT, "RelayDesk")])
    await fs.say(ZHANG, f"@_user_1 转交 @_user_2 {ticket.number}", chat=ENGINEERS,
                 mentions=[(BOT, "RelayDesk"), (LI, "李工")])
    [ticket] = await fs.tickets()
    assert ticket.state == "transferred" and ticket.assignee_id == "eng_li"


async def test_photo_is_attached(fs, tmp_path):
    await fs.say(CUSTOMER, "3号泵又不出水了，整条线停着")
    r = await fs.push(message_event(CUSTOMER, message_type="image", content={"image_key": "img_v2_abc"},
                                    message_id="om_pic"))
    assert r.status == 200
    async with fs.rt.db.session() as s:
        [att] = (await s.exec(select(Attachment))).all()
    assert att.media_ref == "om_pic/img_v2_abc" and att.channel == "feishu"


async def test_post_with_text_and_image_reports_and_attaches(fs):
    content = {"title": "", "content": [[{"tag": "text", "text": "2号空压机停机了，报警E102"}],
                                         [{"tag": "img", "image_key": "img_v2_p"}]]}
    r = await fs.push(message_event(CUSTOMER, message_type="post", content=content, message_id="om_post"))
    assert r.status == 200
    [ticket] = await fs.tickets()
    assert "空压机" in ticket.summary
    async with fs.rt.db.session() as s:
        [att] = (await s.exec(select(Attachment))).all()
    assert att.media_ref == "om_post/img_v2_p"


async def test_reply_goes_into_the_thread(fs):
    await fs.say(CUSTOMER, "@_user_1 3号泵又不出水了，整条线停着", chat="oc_topic", thread="om_root",
                 mentions=[(BOT, "RelayDesk")], message_id="om_in_thread")
    await fs.drain()
    replies = [c for c in fs.fake.calls if c.path.endswith("/om_in_thread/reply")]
    assert replies and replies[0].body["reply_in_thread"] is True
    assert "SRV-" in json.loads(replies[0].body["content"])["text"]


# ---- the full loop -----------------------------------------------------------


async def test_full_loop_report_claim_stages_rating(fs):
    # 1. A customer reports in their 1:1 chat with the bot.
    await fs.say(CUSTOMER, "3号泵又不出水了，整条线停着，急")
    [ticket] = await fs.tickets()
    await fs.drain()
    assert any(ticket.number in t for t in fs.fake.texts(CUSTOMER))
    group_send = fs.last_card_send(ENGINEERS)
    group_card = group_send.content
    group_msg = sent_message_id(fs, group_send)
    tokens = buttons(group_card)
    assert set(tokens) >= {"认领", "转交", "加急"}
    assert tokens["认领"] == await fs.token_for(ticket.id, "claim")
    status_send = fs.last_card_send(CUSTOMER)
    status_msg = sent_message_id(fs, status_send)

    # 2. The customer somehow clicks 认领 (a forwarded card): politely refused, nothing changes.
    answer = await fs.click(CUSTOMER, tokens["认领"], message_id=group_msg, chat_id="oc_p2p_" + CUSTOMER)
    assert "工程师" in answer["toast"]["content"]
    assert (await fs.tickets())[0].state == "new"

    # 3. 张工 claims in the group: the answer itself carries the toast and the new card.
    sent_before = len(fs.fake.calls)
    answer = await fs.click(ZHANG, tokens["认领"], message_id=group_msg, chat_id=ENGINEERS)
    assert ticket.number in answer["toast"]["content"]
    assert answer["card"]["type"] == "raw"
    new_card = answer["card"]["data"]
    assert new_card["config"]["update_multi"] is True
    assert "认领" not in buttons(new_card) and "出发" in buttons(new_card)
    assert "张工" in card_texts(new_card)
    assert len(fs.fake.calls) == sent_before  # nothing was sent to Feishu to produce the answer
    [ticket] = await fs.tickets()
    assert ticket.state == "claimed" and ticket.assignee_id == "eng_zhang"
    await fs.drain()
    # Customer told, with the engineer's name; their status card updated in place.
    assert any("张工" in t and ticket.number in t for t in fs.fake.texts(CUSTOMER))
    patched = {p.path.rsplit("/", 1)[1]: json.loads(p.body["content"]) for p in fs.fake.patches()}
    assert status_msg in patched and "张工" in card_texts(patched[status_msg])
    # The clicked group card already shows the new state: no PATCH that repeats it.
    assert group_msg not in patched

    # 4. Stages: 出发 by button, 到达 by text, 开始维修 by button, 完工 by text.
    answer = await fs.click(ZHANG, buttons(new_card)["出发"], message_id=group_msg, chat_id=ENGINEERS)
    assert "到达" in buttons(answer["card"]["data"])
    await fs.say(ZHANG, "到达")
    after_arrive = await fs.tickets()
    assert after_arrive[0].state == "on_site"
    await fs.drain()
    # The group card was PATCHed for the text command (nobody clicked it this time).
    group_patches = [p for p in fs.fake.patches() if p.path.endswith("/" + group_msg)]
    assert group_patches and "开始维修" in buttons(json.loads(group_patches[-1].body["content"]))
    answer = await fs.click(ZHANG, await fs.token_for(ticket.id, "start_repair"), message_id=group_msg,
                            chat_id=ENGINEERS)
    assert "完工" in buttons(answer["card"]["data"])
    for i in (1, 2):  # the two on-site photos 完工 needs
        r = await fs.push(message_event(ZHANG, message_type="image", content={"image_key": f"img_v2_site{i}"},
                                        message_id=f"om_site{i}"))
        assert r.status == 200
    await fs.say(ZHANG, "完工 更换了叶轮密封圈")
    [ticket] = await fs.tickets()
    assert ticket.state == "resolved"
    await fs.drain()
    texts = fs.fake.texts(CUSTOMER)
    assert any("出发" in t for t in texts) and any("更换了叶轮密封圈" in t for t in texts)

    # 5. The rating card reaches the customer; they click 5 stars.
    rating_send = [c for c in fs.fake.sends(CUSTOMER, "interactive") if "★★★★★" in json.dumps(
        c.content, ensure_ascii=False)][-1]
    stars = buttons(rating_send.content)
    answer = await fs.click(CUSTOMER, stars["★★★★★"], message_id=sent_message_id(fs, rating_send),
                            chat_id="oc_p2p_" + CUSTOMER)
    assert answer["toast"]["content"]
    assert not buttons(answer["card"]["data"])  # rated: no more buttons
    [ticket] = await fs.tickets()
    assert ticket.state == "closed" and ticket.rating == 5
    await fs.drain()
    # Every send used a cached token: one token fetch for the whole loop.
    assert fs.fake.tokens == 1


async def test_click_repushed_is_answered_once(fs):
    await fs.say(CUSTOMER, "3号泵又不出水了，整条线停着")
    [ticket] = await fs.tickets()
    claim = await fs.token_for(ticket.id, "claim")
    event = card_event(ZHANG, {"token": claim}, message_id="om_x", chat_id=ENGINEERS, event_id="click-1")
    first = await (await fs.push(event)).json()
    again = await (await fs.push(event)).json()
    assert "card" in first and again == {}
    async with fs.rt.db.session() as s:
        from storage.models import TicketEvent

        claims = (await s.exec(select(TicketEvent).where(TicketEvent.action == "claim"))).all()
    assert len(claims) == 1


async def test_stale_button_gets_a_toast(fs):
    answer = await fs.click(ZHANG, "no-such-token", message_id="om_x", chat_id=ENGINEERS)
    assert answer["toast"]["content"] and "card" not in answer


# ---- outbound details -----------------------------------------------------------


async def test_card_patch_waits_for_the_click_answer(fs):
    ch = fs.channel
    card = Card(kind="engineer", title="t", buttons=(Button("认领", "tok"),), track_key="k")
    to = Address("feishu", "group", ENGINEERS)
    ref = {"message_id": "om_77", "chat_id": ENGINEERS}
    # A click on om_77 is being answered: the PATCH must wait for the answer to be written.
    answering = ch.clicks.begin("om_77")
    task = asyncio.create_task(ch.send(to, CardMessage(card, update=True), ref))
    await asyncio.sleep(0.05)
    assert not fs.fake.patches()
    ch.clicks.end("om_77", answering)
    assert await task == ref
    assert fs.fake.patches()[-1].path.endswith("/om_77")


async def test_card_update_of_a_deleted_message_sends_a_new_card(tmp_path, aiohttp_client):
    with respx.mock(using="httpx", base_url=API, assert_all_called=False) as mock:
        mock.patch(url__regex=r"/open-apis/im/v1/messages/om_gone$").mock(return_value=httpx.Response(
            400, json={"code": 230011, "msg": "The message was withdrawn."}))
        fake = FakeFeishu(mock)  # its catch-all routes come after the one above
        fs = Feishu(await _make(tmp_path, aiohttp_client), fake)
        card = Card(kind="engineer", title="t", track_key="k")
        ref = await fs.channel.send(Address("feishu", "user", ZHANG), CardMessage(card, update=True),
                                    {"message_id": "om_gone"})
        assert ref["message_id"].startswith("om_") and ref["message_id"] != "om_gone"
        assert fake.sends(ZHANG, "interactive")[0].params["receive_id_type"] == "open_id"


async def test_image_upload_and_send(fs, tmp_path):
    from bot.events import Image

    img = tmp_path / "heat.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    await fs.channel.send(Address("feishu", "group", ENGINEERS), Image(str(img), "本月热力图"), None)
    [image] = fs.fake.sends(ENGINEERS, "image")
    assert image.content == {"image_key": "img_v2_up"}
    assert fs.fake.texts(ENGINEERS) == ["本月热力图"]


async def test_receiver_kinds(fs):
    from bot.events import Text

    for ident, kind in (("ou_a", "open_id"), ("on_a", "union_id"), ("a@b.cn", "email"), ("zhangsan", "user_id")):
        await fs.channel.send(Address("feishu", "user", ident), Text("hi"), None)
        assert fs.fake.calls[-1].params["receive_id_type"] == kind
