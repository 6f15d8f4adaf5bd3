"""The WeCom channel through the real endpoint (create_app) against a WeCom API faked with respx."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.channels.wecom.crypto import WeComCrypto
from bot.channel import DeliveryError
from bot.events import Address, CardMessage, Image
from cards.model import Button, Card
from storage.models import (Attachment, CardAction, CardRef, OutboxMessage, ProcessedEvent, Ticket,
                            TicketEvent)
from support import config_toml, directory_toml, load_toml

VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text(encoding="utf-8"))
API = "https://qyapi.test"
TOKEN = "tok123"
AES = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
CORP = "wwcorp0001"
AGENT = 1000002
CHAT = "wrEngineers01"
CUSTOMER, ZHANG, LI, LEAD = "wangjl", "zhangsan", "lisi", "zhaozz"
REPORT = "3号线水泵不出水了，整条线停着"


def config_text(tmp_path: Path, *, wecom: dict | None = None, server: str = "", extra: str = "") -> str:
    w = {"corp_id": CORP, "agent_id": AGENT, "secret": "sec", "token": TOKEN, "encoding_aes_key": AES,
         "api_base": API, "media_dir": str(tmp_path / "media")}
    w.update(wecom or {})
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in w.items())
    people = directory_toml("wecom", {"cust_wang": CUSTOMER, "eng_zhang": ZHANG, "eng_li": LI, "lead_zhao": LEAD,
                                      "director_sun": "sunzj"}, CHAT,
                            skills={"eng_zhang": ("泵",), "eng_li": ("电气",)}, phones=("eng_zhang",))
    return config_toml(f"sqlite+aiosqlite:///{tmp_path}/t.db", "[wecom]", lines, extra, people,
                       top="allow_unknown_reporters = true", server=server)


class FakeWeCom:
    """The WeCom server API on respx: answers success and records what was sent."""

    def __init__(self, mock):
        self.mock = mock
        self.calls: list[tuple[str, dict]] = []
        self.n = 0
        self.send_error: dict | None = None
        mock.get(f"{API}/cgi-bin/gettoken").mock(return_value=httpx.Response(
            200, json={"errcode": 0, "errmsg": "ok", "access_token": "TOKEN1", "expires_in": 7200}))
        for path in ("message/send", "message/update_template_card", "appchat/send", "webhook/send"):
            mock.post(f"{API}/cgi-bin/{path}").mock(side_effect=self._answer)
        mock.post(f"{API}/cgi-bin/media/upload").mock(return_value=httpx.Response(
            200, json={"errcode": 0, "type": "image", "media_id": "UPLOADED1"}))
        self.media = mock.get(f"{API}/cgi-bin/media/get").mock(return_value=httpx.Response(
            200, content=b"\xff\xd8\xff\xe0JPEG-BYTES", headers={"content-type": "image/jpeg"}))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path.removeprefix("/cgi-bin/")
        self.calls.append((path, body))
        if self.send_error and path == "message/send":
            return httpx.Response(200, json=self.send_error)
        self.n += 1
        answer = {"errcode": 0, "errmsg": "ok"}
        if path == "message/send":
            answer.update(msgid=f"msg{self.n}", invaliduser="")
            if body.get("msgtype") == "template_card":
                answer["response_code"] = f"send-rc-{self.n}"
        return httpx.Response(200, json=answer)

    def sent(self, path: str | None = None, **match) -> list[dict]:
        return [b for p, b in self.calls if (path is None or p == path)
                and all(b.get(k) == v for k, v in match.items())]

    def texts_to(self, user: str) -> list[str]:
        return [b["text"]["content"] for b in self.sent("message/send", touser=user, msgtype="text")]

    def cards_to(self, user: str) -> list[dict]:
        return [b["template_card"] for b in self.sent("message/send", touser=user, msgtype="template_card")]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def fake(respx_mock):
    return FakeWeCom(respx_mock)


@pytest.fixture
def make_client(aiohttp_client, tmp_path):
    async def make(**kw):
        app = create_app(load_toml(tmp_path, config_text(tmp_path, **kw)), workers=False)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client, fake):
    return await make_client()


def crypto() -> WeComCrypto:
    return WeComCrypto(TOKEN, AES, CORP)


def text_xml(user: str, content: str, msg_id: str | int, *, create: int | None = None) -> str:
    return (f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
            f"<CreateTime>{create or int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{AGENT}</AgentID></xml>")


def click_xml(user: str, key: str, task_id: str, code: str, *, create: int | None = None) -> str:
    return (f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
            f"<CreateTime>{create or int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[template_card_event]]></Event><EventKey><![CDATA[{key}]]></EventKey>"
            f"<TaskId><![CDATA[{task_id}]]></TaskId><CardType><![CDATA[button_interaction]]></CardType>"
            f"<ResponseCode><![CDATA[{code}]]></ResponseCode><AgentID>{AGENT}</AgentID></xml>")


def image_xml(user: str, media_id: str, msg_id: str) -> str:
    return (f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[image]]></MsgType>"
            f"<PicUrl><![CDATA[https://wework.qpic.test/pic/{media_id}]]></PicUrl>"
            f"<MediaId><![CDATA[{media_id}]]></MediaId><MsgId>{msg_id}</MsgId><AgentID>{AGENT}</AgentID></xml>")


async def post(client, plain: str, *, c: WeComCrypto | None = None, **kw):
    query, body = (c or crypto()).encrypted_post(plain, AGENT, **kw)
    return await client.post("/callbacks/wecom?" + urlencode(query), data=body,
                             headers={"Content-Type": "text/xml"})


async def drain(client) -> None:
    await client.app[RUNTIME].outbox.drain()
    await client.app[RUNTIME].channels.get("wecom").idle()


async def rows(client, model, *where):
    async with client.app[RUNTIME].db.session() as s:
        q = select(model)
        for w in where:
            q = q.where(w)
        return list((await s.exec(q)).all())


async def nothing_written(client) -> None:
    assert await rows(client, Ticket) == []
    assert await rows(client, ProcessedEvent) == []
    assert await rows(client, OutboxMessage) == []


# ---- official vectors through the endpoint -------------------------------------


def vector_wecom(v: dict, agent_id: int = 1) -> dict:
    return {"token": v["token"], "encoding_aes_key": v["encoding_aes_key"], "corp_id": v["receive_id"],
            "agent_id": agent_id, "replay_window": "0s"}


@pytest.mark.parametrize("name,encoded", [("V1", True), ("V1", False), ("V3", False)])
async def test_url_verification_vectors(make_client, fake, name, encoded):
    v = VECTORS[name]
    client = await make_client(wecom=vector_wecom(v))
    echostr = v["echostr_urlenc"] if encoded else urlencode({"e": v["echostr"]})[2:]
    r = await client.get(f"/callbacks/wecom?msg_signature={v['msg_signature']}&timestamp={v['timestamp']}"
                         f"&nonce={v['nonce']}&echostr={echostr}")
    assert r.status == 200
    assert await r.read() == v["expected_reply"].encode()  # no quotes, newline or BOM
    assert r.content_type == "text/plain"


async def test_url_verification_negative_case(make_client, fake):
    v = VECTORS["V3"]
    client = await make_client(wecom=vector_wecom(v))
    r = await client.get("/callbacks/wecom?" + urlencode({"msg_signature": v["msg_signature"],
                                                           "timestamp": v["timestamp"], "nonce": "437374424",
                                                           "echostr": v["echostr"]}))
    assert r.status == 403


V4_BODY = ("<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<Encrypt><![CDATA[{}]]></Encrypt>\n"
           "<AgentID><![CDATA[1]]></AgentID>\n</xml>")


@pytest.mark.parametrize("name,agent,user,msg_id", [("V2", 218, "mycreate", "4561255354251345929"),
                                                    ("V4", 1, "messense", "4363689963896700987")])
async def test_post_vectors_are_decrypted_and_handled(make_client, fake, name, agent, user, msg_id):
    v = VECTORS[name]
    client = await make_client(wecom=vector_wecom(v, agent))
    body = v["post_body"] if name == "V2" else V4_BODY.format(v["encrypt"])
    r = await client.post("/callbacks/wecom?" + urlencode({"msg_signature": v["msg_signature"],
                                                            "timestamp": v["timestamp"], "nonce": v["nonce"]}),
                          data=body.encode(), headers={"Content-Type": "text/xml"})
    assert r.status == 200 and await r.text() == ""
    events = await rows(client, ProcessedEvent)
    assert [(e.platform, e.event_id) for e in events] == [("wecom", f"m:{msg_id}")]  # MsgId kept as a string
    await drain(client)
    assert fake.texts_to(user), "the small-talk answer went out through message/send"


async def test_v5_vector_reproduced_by_the_channels_crypto(client):
    v = VECTORS["V5"]
    c = WeComCrypto(v["token"], v["encoding_aes_key"], v["receive_id"])
    reply = c.encrypt_reply(v["plaintext"], v["nonce"], v["timestamp"], random_prefix=v["random"])
    assert f"<Encrypt><![CDATA[{v['expected_encrypt']}]]></Encrypt>" in reply
    assert f"<MsgSignature><![CDATA[{v['expected_sig']}]]></MsgSignature>" in reply
    # and the channel's own instance is the same code path
    assert client.app[RUNTIME].channels.get("wecom").crypto.encrypt("x", "1234567890123456") \
        == crypto().encrypt("x", "1234567890123456")


# ---- bad input -------------------------------------------------------------------


async def test_stale_timestamp_is_refused_by_default(client):
    r = await post(client, text_xml(CUSTOMER, REPORT, 1), timestamp=1409659813)
    assert r.status == 403
    await nothing_written(client)


async def test_forged_signature_is_refused_and_writes_nothing(client):
    query, body = crypto().encrypted_post(text_xml(CUSTOMER, REPORT, 1), AGENT)
    query["msg_signature"] = "0" * 40
    r = await client.post("/callbacks/wecom?" + urlencode(query), data=body)
    assert r.status == 403
    forged = WeComCrypto("not-the-token", AES, CORP)
    r = await post(client, text_xml(CUSTOMER, REPORT, 2), c=forged)
    assert r.status == 403
    other_corp = WeComCrypto(TOKEN, AES, "wwsomebodyelse")
    r = await post(client, text_xml(CUSTOMER, REPORT, 3), c=other_corp)
    assert r.status == 403
    r = await client.get("/callbacks/wecom?" + urlencode({**crypto().signed_echo("123"), "msg_signature": "f" * 40}))
    assert r.status == 403
    await nothing_written(client)


async def test_malformed_requests_are_400(client):
    query, _ = crypto().encrypted_post(text_xml(CUSTOMER, REPORT, 1), AGENT)
    for body in (b"<xml><Encrypt>", b"not xml at all", b"", b"<xml><ToUserName>x</ToUserName></xml>",
                 "<xml><Encrypt>\udcff</Encrypt></xml>".encode("utf-8", "surrogateescape")):
        r = await client.post("/callbacks/wecom?" + urlencode(query), data=body)
        assert r.status == 400, body
    r = await client.post("/callbacks/wecom", data=b"<xml><Encrypt>abc</Encrypt></xml>")
    assert r.status == 400  # no signature parameters
    r = await client.get("/callbacks/wecom?msg_signature=a&timestamp=1&nonce=2")
    assert r.status == 400
    await nothing_written(client)


async def test_entity_expansion_is_refused(client):
    bomb = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
            '<xml><Encrypt>&c;</Encrypt></xml>')
    query, _ = crypto().encrypted_post("x", AGENT)
    r = await client.post("/callbacks/wecom?" + urlencode(query), data=bomb.encode())
    assert r.status == 400
    # also inside a correctly signed, encrypted envelope
    inner = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
             f'<xml><FromUserName>{CUSTOMER}</FromUserName><MsgType>text</MsgType><Content>&x;</Content></xml>')
    r = await post(client, inner)
    assert r.status == 400
    await nothing_written(client)


async def test_oversized_body_is_413(make_client, fake):
    client = await make_client(server="max_body_bytes = 4096")
    query, body = crypto().encrypted_post(text_xml(CUSTOMER, "泵坏了" * 2000, 1), AGENT)
    assert len(body) > 4096
    r = await client.post("/callbacks/wecom?" + urlencode(query), data=body)
    assert r.status == 413
    await nothing_written(client)


# ---- idempotency -------------------------------------------------------------------


async def test_the_same_message_four_times_is_one_ticket(client, fake):
    query, body = crypto().encrypted_post(text_xml(CUSTOMER, REPORT, "CAIQg/PKxgYY2sC9tpuAgAMg9/zKaw=="), AGENT)
    url = "/callbacks/wecom?" + urlencode(query)
    first = await client.post(url, data=body)
    rest = await asyncio.gather(*(client.post(url, data=body) for _ in range(3)))
    assert [r.status for r in [first, *rest]] == [200] * 4
    assert len(await rows(client, Ticket)) == 1
    await drain(client)
    number = (await rows(client, Ticket))[0].number
    assert sum(number in t for t in fake.texts_to(CUSTOMER)) == 1


async def test_a_retried_click_counts_once(client, fake):
    ticket, card, engineer = await report_and_card(client, fake)
    tokens = await tokens_of(client, ticket.id)
    xml = click_xml(engineer, tokens["claim"], card["task_id"], "rc-click", create=int(time.time()))
    for _ in range(3):
        assert (await post(client, xml)).status == 200
    claims = await rows(client, TicketEvent, TicketEvent.action == "claim")
    assert len(claims) == 1


async def test_a_card_sent_again_after_a_crash_is_the_same_message(client, fake):
    """A card row resent (its sender died before recording the send) goes out with the same
    task_id and content and asks WeCom's duplicate check to drop it: the engineer sees one card."""
    ticket, card, engineer = await report_and_card(client, fake)
    [first] = [b for b in fake.sent("message/send", touser=engineer, msgtype="template_card")
               if b["template_card"]["task_id"] == card["task_id"]]
    rt = client.app[RUNTIME]
    async with rt.db.session() as s:
        [row] = [r for r in (await s.exec(select(OutboxMessage).where(OutboxMessage.to_id == engineer,
                                                                      OutboxMessage.status == "sent"))).all()
                 if f"_o{r.id}_" in card["task_id"]]
        # The process died after WeCom took the card and before the send was recorded.
        row.status, row.sent_at, row.lease_owner = "sending", None, rt.outbox.owner
        s.add(row)
    assert await rt.outbox.take_back_own_leases() == 1  # what the restarted process does first
    fake.clear()
    await drain(client)
    [again] = fake.sent("message/send", touser=engineer, msgtype="template_card")
    assert again.pop("enable_duplicate_check") == 1 and again.pop("duplicate_check_interval") == 1800
    assert again == first and again["template_card"]["task_id"] == card["task_id"]


# ---- the whole loop ------------------------------------------------------------------


async def tokens_of(client, ticket_id: int) -> dict[str, str]:
    return {a.action: a.token for a in await rows(client, CardAction, CardAction.ticket_id == ticket_id)}


async def report_and_card(client, fake, text: str = REPORT):
    r = await post(client, text_xml(CUSTOMER, text, 1001))
    assert r.status == 200 and await r.text() == ""
    await drain(client)
    [ticket] = await rows(client, Ticket)
    personal = [(b["touser"], b["template_card"]) for b in fake.sent("message/send", msgtype="template_card")]
    assert personal, "the suggested engineer got the interactive card 1:1"
    engineer, card = personal[0]
    assert engineer in (ZHANG, LI)
    return ticket, card, engineer


async def test_full_loop_report_claim_stages_rating(client, fake):
    # 1. the customer reports in text
    ticket, card, engineer = await report_and_card(client, fake)
    name = "张工" if engineer == ZHANG else "李工"
    assert ticket.state == "new" and ticket.reporter_channel == "wecom"
    [received] = [t for t in fake.texts_to(CUSTOMER) if ticket.number in t]
    assert "已收到" in received
    assert fake.sent("message/send", touser=CUSTOMER, msgtype="markdown"), "status card as markdown"
    # the engineer card: button keys are the core's opaque tokens
    tokens = await tokens_of(client, ticket.id)
    assert card["card_type"] == "button_interaction"
    assert {b["text"]: b["key"] for b in card["button_list"]} == {
        "认领": tokens["claim"], "转交": tokens["transfer"], "加急": tokens["escalate"]}
    assert ticket.number == card["main_title"]["desc"]
    # the engineers' group: markdown summary with the commands
    [group_md] = [b["markdown"]["content"] for b in fake.sent("appchat/send", chatid=CHAT)]
    assert f"认领 {ticket.number}" in group_md and "水泵" in group_md
    fake.clear()

    # 2. the engineer clicks 认领 (a real signed, encrypted template_card_event)
    t0 = time.perf_counter()
    r = await post(client, click_xml(engineer, tokens["claim"], card["task_id"], "click-rc-1"))
    assert r.status == 200 and await r.text() == ""
    assert time.perf_counter() - t0 < 1.0
    await drain(client)
    [ticket] = await rows(client, Ticket)
    assert ticket.state == "claimed" and ticket.assignee_id in ("eng_zhang", "eng_li")
    # card updated for every recipient: the 1:1 card in place with the click's code ...
    [upd] = fake.sent("message/update_template_card")
    assert upd["response_code"] == "click-rc-1" and upd["userids"] == [engineer] and upd["agentid"] == AGENT
    assert upd["template_card"]["task_id"] == card["task_id"]
    assert upd["template_card"]["quote_area"]["title"] == f"{name} · 已认领"
    new_buttons = {b["text"]: b["key"] for b in upd["template_card"]["button_list"]}
    assert set(new_buttons) >= {"出发", "到达", "转交"}
    # ... and the group sees who claimed
    assert any(f"{name} · 已认领" in b["markdown"]["content"] for b in fake.sent("appchat/send", chatid=CHAT))
    # the customer is told, by name
    assert any(name in t and "接单" in t for t in fake.texts_to(CUSTOMER))
    # success needs no extra text to the clicker: the card shows it
    assert not any("认领成功" in t for t in fake.texts_to(engineer))
    fake.clear()

    # 3. 出发 by button (the click's new code); 到达 by text (the send answer's spare code);
    #    开始维修 by text (no code left: the card goes out afresh, with working buttons)
    r = await post(client, click_xml(engineer, new_buttons["出发"], card["task_id"], "click-rc-2"))
    assert r.status == 200
    await drain(client)
    assert [u["response_code"] for u in fake.sent("message/update_template_card")] == ["click-rc-2"]
    assert any("出发" in t for t in fake.texts_to(CUSTOMER))
    fake.clear()
    assert (await post(client, text_xml(engineer, "到达", 1002))).status == 200
    await drain(client)
    [upd] = fake.sent("message/update_template_card")
    assert upd["response_code"].startswith("send-rc-") and upd["template_card"]["task_id"] == card["task_id"]
    assert any("到达" in t for t in fake.texts_to(CUSTOMER))
    fake.clear()
    assert (await post(client, text_xml(engineer, "开始维修", 1003))).status == 200
    await drain(client)
    assert fake.sent("message/update_template_card") == []
    [fresh] = fake.cards_to(engineer)
    assert fresh["task_id"] != card["task_id"]
    assert {b["text"] for b in fresh["button_list"]} >= {"完工"}
    fake.clear()

    # 4. two on-site photos, then 完工 with a note by text: the fresh card's buttons are greyed with the outcome
    for i in (1, 2):
        assert (await post(client, image_xml(engineer, f"SITE{i}", f"300{i}"))).status == 200
    await drain(client)
    fake.clear()
    assert (await post(client, text_xml(engineer, "完工 更换了密封圈", 1004))).status == 200
    await drain(client)
    [ticket] = await rows(client, Ticket)
    assert ticket.state == "resolved" and ticket.resolution == "更换了密封圈"
    assert any("完工" in t and "更换了密封圈" in t for t in fake.texts_to(CUSTOMER))
    [greyed] = [u for u in fake.sent("message/update_template_card") if u["userids"] == [engineer]]
    assert "button" in greyed and name in greyed["button"]["replace_name"]

    # 5. the rating card reaches the customer; five stars
    [rating] = fake.cards_to(CUSTOMER)
    tokens = await tokens_of(client, ticket.id)
    assert {b["key"] for b in rating["button_list"]} == {tokens[f"rate:{n}"] for n in range(1, 6)}
    five = next(b["key"] for b in rating["button_list"] if b["text"] == "★★★★★")
    fake.clear()
    assert (await post(client, click_xml(CUSTOMER, five, rating["task_id"], "click-rc-r"))).status == 200
    await drain(client)
    [ticket] = await rows(client, Ticket)
    assert ticket.state == "closed" and ticket.rating == 5
    # the rating card is closed in place: buttons greyed with the result
    finals = [u for u in fake.sent("message/update_template_card") if u["userids"] == [CUSTOMER]]
    assert finals and finals[0]["response_code"] == "click-rc-r"
    assert "★★★★★" in finals[0]["button"]["replace_name"]
    assert any("感谢" in t for t in fake.texts_to(CUSTOMER))


async def test_short_reports_and_chat_from_a_wecom_customer(client, fake):
    # a trapped lift in five characters is a P0 lift ticket
    ticket, card, _ = await report_and_card(client, fake, "电梯困人了")
    assert (ticket.category, ticket.priority) == ("elevator", "P0")
    assert "电梯故障" in card["main_title"]["title"]
    # the ticket is closed out of the way: a customer without an open ticket says hello
    async with client.app[RUNTIME].db.session() as s:
        row = await s.get(Ticket, ticket.id)
        row.state = "closed"
        s.add(row)
    fake.clear()
    assert (await post(client, text_xml(CUSTOMER, "在吗", 1002))).status == 200
    await drain(client)
    assert fake.texts_to(CUSTOMER) == ["是要报修吗？直接描述故障即可"]
    assert len(await rows(client, Ticket)) == 1
    assert (await post(client, text_xml(CUSTOMER, "3号楼电梯不动了", 1003))).status == 200
    await drain(client)
    second = [t for t in await rows(client, Ticket) if t.id != ticket.id]
    assert [(t.category, t.location, t.summary) for t in second] == [("elevator", "3号楼", "3号楼电梯不动了")]


async def test_a_customer_clicking_claim_is_refused_politely(client, fake):
    ticket, card, _ = await report_and_card(client, fake)
    tokens = await tokens_of(client, ticket.id)
    fake.clear()
    r = await post(client, click_xml(CUSTOMER, tokens["claim"], card["task_id"], "rc-x"))
    assert r.status == 200
    await drain(client)
    [ticket] = await rows(client, Ticket)
    assert ticket.state == "new" and ticket.assignee_id != "cust_wang"
    [refusal] = fake.texts_to(CUSTOMER)
    assert "认领是工程师的操作" in refusal
    assert fake.sent("message/update_template_card") == []


async def test_a_stale_button_is_answered(client, fake):
    await report_and_card(client, fake)
    fake.clear()
    assert (await post(client, click_xml(ZHANG, "no-such-token", "rd_x", "rc"))).status == 200
    await drain(client)
    assert any("已失效" in t for t in fake.texts_to(ZHANG))


# ---- pictures, voice, location, other messages ---------------------------------------


async def test_a_picture_is_downloaded_and_attached_to_the_open_ticket(client, fake, tmp_path):
    ticket, _, _ = await report_and_card(client, fake)
    fake.clear()
    r = await post(client, image_xml(CUSTOMER, "MEDIA123", "2001"))
    assert r.status == 200
    await drain(client)
    [att] = await rows(client, Attachment)
    assert att.ticket_id == ticket.id and att.kind == "image" and att.channel == "wecom"
    path = Path(att.media_ref)
    assert path.parent == tmp_path / "media" and path.read_bytes() == b"\xff\xd8\xff\xe0JPEG-BYTES"
    assert fake.media.calls[0].request.url.params["media_id"] == "MEDIA123"
    assert any("照片已附加" in t for t in fake.texts_to(CUSTOMER))


async def test_a_picture_applied_after_the_answer_is_fetched_then(client, fake, tmp_path):
    """With the inbox worker, the core attaches the picture after the callback was answered."""
    ticket, _, _ = await report_and_card(client, fake)
    rt = client.app[RUNTIME]
    rt.bot.defer_inbound = True
    assert (await post(client, image_xml(CUSTOMER, "MEDIA456", "2003"))).status == 200
    assert await rows(client, Attachment) == []  # answered before it was applied
    await asyncio.sleep(0.1)
    await rt.inbox.drain()
    await drain(client)
    [att] = await rows(client, Attachment)
    assert att.ticket_id == ticket.id and Path(att.media_ref).parent == tmp_path / "media"


async def test_a_picture_without_an_open_ticket_is_not_downloaded(client, fake):
    assert (await post(client, image_xml(CUSTOMER, "MEDIA9", "2002"))).status == 200
    await drain(client)
    assert await rows(client, Attachment) == []
    assert not fake.media.called
    assert any("没有未完成的工单" in t for t in fake.texts_to(CUSTOMER))


def voice_xml(user, msg_id, recognition=None):
    rec = f"<Recognition><![CDATA[{recognition}]]></Recognition>" if recognition else ""
    return (f"<xml><ToUserName>{CORP}</ToUserName><FromUserName>{user}</FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType>voice</MsgType><MediaId>V1</MediaId>"
            f"<Format>amr</Format>{rec}<MsgId>{msg_id}</MsgId><AgentID>{AGENT}</AgentID></xml>")


async def test_voice_location_and_unsupported_messages(client, fake):
    # recognised speech is a report like any text
    assert (await post(client, voice_xml(CUSTOMER, "3001", REPORT))).status == 200
    await drain(client)
    [ticket] = await rows(client, Ticket)
    # a location adds to the open ticket
    loc = (f"<xml><FromUserName>{CUSTOMER}</FromUserName><CreateTime>{int(time.time())}</CreateTime>"
           f"<MsgType>location</MsgType><Location_X>31.2304</Location_X><Location_Y>121.4737</Location_Y>"
           f"<Scale>15</Scale><Label>上海市浦东新区3号厂房</Label><MsgId>3002</MsgId></xml>")
    assert (await post(client, loc)).status == 200
    notes = await rows(client, TicketEvent, TicketEvent.action == "note")
    assert notes and "上海市浦东新区3号厂房" in notes[0].detail["text"]
    fake.clear()
    # speech without recognition, and a video: a polite answer, once per message
    for _ in range(2):
        assert (await post(client, voice_xml(CUSTOMER, "3003"))).status == 200
    video = (f"<xml><FromUserName>{CUSTOMER}</FromUserName><CreateTime>1</CreateTime><MsgType>video</MsgType>"
             f"<MediaId>x</MediaId><MsgId>3004</MsgId></xml>")
    assert (await post(client, video)).status == 200
    await drain(client)
    texts = fake.texts_to(CUSTOMER)
    assert sum("语音" in t for t in texts) == 1
    assert sum("暂不支持" in t for t in texts) == 1
    # other events are acknowledged and ignored
    enter = (f"<xml><FromUserName>{CUSTOMER}</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>"
             f"<Event>enter_agent</Event><EventKey></EventKey></xml>")
    assert (await post(client, enter)).status == 200


# ---- groups, robot, rate limits, codes -------------------------------------------------------


async def test_group_mentions_go_through_the_robot(make_client, fake):
    client = await make_client(wecom={"engineers_chat": CHAT, "robot_webhook_key": "ROBOTKEY"})
    ticket, card, engineer = await report_and_card(client, fake)
    robot = [(c, fake.mock.calls) for c in fake.sent("webhook/send")]
    assert robot, "the group card @-mentions the suggested engineer through the robot"
    [first] = fake.sent("webhook/send")
    assert first["msgtype"] == "markdown" and f"<@{engineer}>" in first["markdown"]["content"]
    assert f"认领 {ticket.number}" in first["markdown"]["content"]
    assert fake.sent("appchat/send") == []  # one message, not two
    fake.clear()
    # 加急 by the engineer: the lead is @-mentioned in the group through the robot
    assert (await post(client, click_xml(engineer, (await tokens_of(client, ticket.id))["escalate"],
                                         card["task_id"], "rc-e"))).status == 200
    await drain(client)
    texts = [b for b in fake.sent("webhook/send") if b["msgtype"] == "text"]
    assert texts and texts[0]["text"]["mentioned_list"] == [LEAD]


async def test_rate_limited_sends_stay_in_the_outbox(client, fake):
    fake.send_error = {"errcode": 45009, "errmsg": "api freq out of limit"}
    assert (await post(client, text_xml(CUSTOMER, REPORT, 1))).status == 200
    await drain(client)
    queued = await rows(client, OutboxMessage, OutboxMessage.to_id == CUSTOMER)
    assert queued and all(m.status == "pending" for m in queued)  # nothing dropped or failed
    assert "45009" in queued[0].last_error and queued[0].next_attempt_at.timestamp() > time.time() + 50


async def test_member_limit_holds_messages_back(make_client, fake):
    client = await make_client(wecom={"member_per_minute": 2})
    assert (await post(client, text_xml(CUSTOMER, REPORT, 1))).status == 200
    assert (await post(client, text_xml(CUSTOMER, "进度", 2))).status == 200
    await drain(client)
    sent = fake.sent("message/send", touser=CUSTOMER)
    assert len(sent) == 2  # received + status card; the progress answer waits
    held = await rows(client, OutboxMessage, OutboxMessage.to_id == CUSTOMER, OutboxMessage.status == "pending")
    assert held and "member limit" in held[0].last_error


async def test_a_card_with_no_buttons_left_is_greyed_once_then_left_alone(client, fake):
    """The send answer's code greys the buttons (replace_name); without a code, nothing more is sent."""
    ticket, card, engineer = await report_and_card(client, fake)
    async with client.app[RUNTIME].db.session() as s:
        [stored] = await s.exec(select(CardRef).where(CardRef.to_id == engineer))
    assert stored.ref["task_id"] == card["task_id"]
    assert stored.ref["code"].startswith("send-rc-")  # the send answer's code was kept
    fake.clear()
    ch = client.app[RUNTIME].channels.get("wecom")
    to = Address("wecom", "user", engineer)
    done = Card(kind="engineer", title="t", footer="张工 · 已关闭", track_key="x")
    ref = await ch.send(to, CardMessage(done, update=True), stored.ref)
    [upd] = fake.sent("message/update_template_card")
    assert upd["button"] == {"replace_name": "张工 · 已关闭"} and upd["response_code"] == stored.ref["code"]
    assert ref["code"] is None
    fake.clear()
    again = await ch.send(to, CardMessage(Card(kind="engineer", title="t", footer="其他", track_key="x"),
                                          update=True), ref)
    assert again == ref and fake.calls == []


async def test_the_last_code_is_kept_for_the_outcome(client, fake):
    """A change that keeps the buttons (a photo count) does not spend the send answer's code:
    however many such updates come (or are reduced to one), the outcome greys the card in place."""
    ticket, card, engineer = await report_and_card(client, fake)
    async with client.app[RUNTIME].db.session() as s:
        [stored] = await s.exec(select(CardRef).where(CardRef.to_id == engineer))
    ch = client.app[RUNTIME].channels.get("wecom")
    to = Address("wecom", "user", engineer)
    live = tuple(Button(b["text"], b["key"]) for b in card["button_list"])
    fake.clear()
    ref = stored.ref
    for count in (1, 2):
        photos = Card(kind="engineer", title=f"现场照片 {count} 张", buttons=live, track_key="x")
        ref = await ch.send(to, CardMessage(photos, update=True), ref)
    assert fake.calls == [] and ref["code"] == stored.ref["code"]
    done = Card(kind="engineer", title="t", footer="张工 · 已完工", track_key="x")
    ref = await ch.send(to, CardMessage(done, update=True), ref)
    [upd] = fake.sent("message/update_template_card")
    assert upd["button"] == {"replace_name": "张工 · 已完工"} and upd["response_code"] == stored.ref["code"]
    assert fake.cards_to(engineer) == []


async def test_an_outcome_without_a_code_is_sent_as_a_message_once(client, fake):
    """No code left when the card reaches its outcome: the person gets the outcome as a
    message (the card is never left looking open), once."""
    ticket, card, engineer = await report_and_card(client, fake)
    ch = client.app[RUNTIME].channels.get("wecom")
    to = Address("wecom", "user", engineer)
    fake.clear()
    spent = {"task_id": card["task_id"], "shown": "old", "code": None, "code_at": time.time()}
    done = Card(kind="engineer", title="水泵漏水", footer="张工 · 已完工", track_key="x")
    ref = await ch.send(to, CardMessage(done, update=True), spent)
    assert fake.sent("message/update_template_card") == []
    [md] = [b["markdown"]["content"] for b in fake.sent("message/send", touser=engineer, msgtype="markdown")]
    assert "已完工" in md
    fake.clear()
    closed = Card(kind="engineer", title="水泵漏水", footer="张工 · 已关闭", track_key="x")
    assert await ch.send(to, CardMessage(closed, update=True), ref) == ref and fake.calls == []


async def test_a_used_code_makes_an_actionable_card_go_out_afresh(client, fake):
    ticket, card, engineer = await report_and_card(client, fake)
    refused = fake.mock.post(f"{API}/cgi-bin/message/update_template_card").mock(return_value=httpx.Response(
        200, json={"errcode": 40001001, "errmsg": "invalid response_code"}))
    fake.clear()
    ch = client.app[RUNTIME].channels.get("wecom")
    live = Card(kind="engineer", title="t", buttons=(Button("出发", "tok-d"),), track_key="x")
    ref = await ch.send(Address("wecom", "user", engineer), CardMessage(live, update=True),
                        {"task_id": card["task_id"], "shown": "old", "code": "spent", "code_at": time.time()})
    assert json.loads(refused.calls[0].request.content)["response_code"] == "spent"
    [fresh] = fake.cards_to(engineer)
    assert ref["task_id"] == fresh["task_id"] != card["task_id"]
    assert fresh["button_list"][0]["key"] == "tok-d"


async def test_images_are_uploaded_and_sent(client, fake, tmp_path):
    pic = tmp_path / "heatmap.png"
    pic.write_bytes(b"\x89PNG fake")
    ch = client.app[RUNTIME].channels.get("wecom")
    assert await ch.send(Address("wecom", "user", LEAD), Image(str(pic), "本月超时热力图"), None) is None
    assert await ch.send(Address("wecom", "group", CHAT), Image(str(pic)), None) is None
    [img, caption] = fake.sent("message/send", touser=LEAD)
    assert img["msgtype"] == "image" and img["image"] == {"media_id": "UPLOADED1"}
    assert caption["text"]["content"] == "本月超时热力图"
    [group] = fake.sent("appchat/send", chatid=CHAT)
    assert group["msgtype"] == "image" and group["image"]["media_id"] == "UPLOADED1"
    with pytest.raises(DeliveryError) as e:
        await ch.send(Address("wecom", "user", LEAD), Image(str(tmp_path / "gone.png")), None)
    assert not e.value.retryable
