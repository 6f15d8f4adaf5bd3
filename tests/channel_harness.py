"""Every channel's inbound side as requests: signed reports and clicks, forgeries, hostile bodies.

One bot config with all four channels (WeCom, Feishu, DingTalk with cards and
the event subscription, the playground) and, per channel, a harness that builds
requests exactly as that platform sends them. The contract test and the hostile-
input test walk the same harnesses, so a new channel is done when it has one
here and both tests pass for it.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

from bot.channels.feishu import crypto as fc
from bot.channels.dingtalk.crypto import EventCrypto, card_signature, robot_sign
from bot.channels.wecom.crypto import WeComCrypto
from bot.config import Config
from bot.channels.dingtalk import render as dt_cards
from bot.channels.feishu import render as fs_cards
from bot.channels.playground import render as pg_cards
from bot.channels.wecom import render as wc_cards
from cards.model import Card
from support import load_toml

CLOSED = "http://127.0.0.1:9"  # no platform API in these tests: connections are refused at once

WECOM = dict(corp_id="wwcontract01", token="wctoken", aes="kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", agent=1000002)
FEISHU = dict(app_id="cli_contract", token="fstoken", key="fs-encrypt-key", bot="ou_bot")
DINGTALK = dict(app_key="dingcontract", secret="dt-app-secret", card_secret="dt-card-secret",
                event_token="dtevtoken", event_aes="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
GROUPS = {"wecom": "wrEngineers", "feishu": "oc_engineers", "dingtalk": "cidEngineers==", "playground": "engineers"}
# person id -> their id on each platform
IDS = {
    "cust_wang": {"wecom": "wangjl", "feishu": "ou_wang", "dingtalk": "u_wang", "playground": "cust_wang"},
    "eng_zhang": {"wecom": "zhangsan", "feishu": "ou_zhang", "dingtalk": "u_zhang", "playground": "eng_zhang"},
    "lead_zhao": {"wecom": "zhaozz", "feishu": "ou_zhao", "dingtalk": "u_zhao", "playground": "lead_zhao"},
}


def config(tmp_path: Path, db_url: str, *, extra_server: str = "") -> Config:
    """The bot config with every channel on."""
    def ids(pid: str) -> str:
        return "{ " + ", ".join(f'{p} = "{v}"' for p, v in IDS[pid].items()) + " }"

    groups = "{ " + ", ".join(f'{p} = "{v}"' for p, v in GROUPS.items()) + " }"
    text = f'''database_url = "{db_url}"
allow_unknown_reporters = true

[server]
max_body_bytes = 65536
{extra_server}

[playground]
enabled = true

[wecom]
corp_id = "{WECOM['corp_id']}"
agent_id = {WECOM['agent']}
secret = "s"
token = "{WECOM['token']}"
encoding_aes_key = "{WECOM['aes']}"
api_base = "{CLOSED}"
media_dir = "{tmp_path / 'media'}"

[feishu]
app_id = "{FEISHU['app_id']}"
app_secret = "s"
verification_token = "{FEISHU['token']}"
encrypt_key = "{FEISHU['key']}"
api_base = "{CLOSED}"
bot_open_id = "{FEISHU['bot']}"

[dingtalk]
app_key = "{DINGTALK['app_key']}"
app_secret = "{DINGTALK['secret']}"
api_base = "{CLOSED}"
oapi_base = "{CLOSED}"
card_template_id = "contract.schema"
card_callback_route_key = "contract"
card_api_secret = "{DINGTALK['card_secret']}"
event_token = "{DINGTALK['event_token']}"
event_aes_key = "{DINGTALK['event_aes']}"

[[teams]]
id = "maint"
name = "维修一组"
skills = ["泵", "电气"]
lead = "lead_zhao"
groups = {groups}

[[people]]
id = "cust_wang"
name = "王经理"
role = "customer"
identities = {ids("cust_wang")}

[[people]]
id = "eng_zhang"
name = "张工"
role = "engineer"
team = "maint"
skills = ["泵"]
identities = {ids("eng_zhang")}

[[people]]
id = "lead_zhao"
name = "赵组长"
role = "lead"
team = "maint"
identities = {ids("lead_zhao")}
'''
    return load_toml(tmp_path, text)


@dataclass
class Req:
    """One HTTP request as a platform sends it."""

    method: str
    path: str  # with the query string
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Harness:
    """What the tests need from one channel (None: the platform has no such thing)."""

    name: str
    # The POST endpoints this channel serves (hostile-input test).
    endpoints: tuple[str, ...]

    def verification(self) -> tuple[Req, object] | None:
        """A URL-verification request and what a correct answer contains."""
        return None

    def report(self, i: int, text: str) -> Req:
        raise NotImplementedError

    def forged(self, i: int, text: str) -> Req:
        raise NotImplementedError

    def stale(self, i: int, text: str) -> Req | None:
        return None

    def malformed(self) -> Req:
        raise NotImplementedError

    def click(self, i: int, token: str) -> Req:
        """The engineer eng_zhang clicking a button carrying `token`."""
        raise NotImplementedError

    def deep(self, depth: int) -> list[Req]:
        """Deeply nested bodies for every endpoint, unsigned and (where it applies) signed."""
        raise NotImplementedError

    def check_card(self, card: Card) -> None:
        """Render a neutral card and assert the platform's schema rules hold."""
        raise NotImplementedError


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class WeComHarness(Harness):
    name = "wecom"
    endpoints = ("/callbacks/wecom",)

    def __init__(self) -> None:
        self.crypto = WeComCrypto(WECOM["token"], WECOM["aes"], WECOM["corp_id"])

    def _post(self, inner: str, *, timestamp: int | None = None) -> Req:
        query, body = self.crypto.encrypted_post(inner, WECOM["agent"], timestamp=timestamp)
        return Req("POST", "/callbacks/wecom?" + urlencode(query), body)

    @staticmethod
    def _text_xml(i: int, text: str, user: str = "wangjl") -> str:
        return (f"<xml><ToUserName><![CDATA[{WECOM['corp_id']}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
                f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                f"<Content><![CDATA[{text}]]></Content><MsgId>{7000000000 + i}</MsgId>"
                f"<AgentID>{WECOM['agent']}</AgentID></xml>")

    def verification(self):
        query = self.crypto.signed_echo("echo-1234")
        return Req("GET", "/callbacks/wecom?" + urlencode(query)), "echo-1234"

    def report(self, i, text):
        return self._post(self._text_xml(i, text))

    def forged(self, i, text):
        req = self._post(self._text_xml(i, text))
        return Req("POST", req.path.replace("msg_signature=", "msg_signature=0"), req.body)

    def stale(self, i, text):
        return self._post(self._text_xml(i, text), timestamp=int(time.time()) - 3600)

    def malformed(self):
        return self._post("<xml><FromUserName>wangjl</FromUserName><MsgType>text")  # cut short

    def click(self, i, token):
        xml = (f"<xml><ToUserName>{WECOM['corp_id']}</ToUserName><FromUserName>zhangsan</FromUserName>"
               f"<CreateTime>{int(time.time()) + i}</CreateTime><MsgType>event</MsgType>"
               f"<Event>template_card_event</Event><EventKey><![CDATA[{token}]]></EventKey>"
               f"<TaskId>task{i}</TaskId><ResponseCode>code{i}</ResponseCode><AgentID>{WECOM['agent']}</AgentID></xml>")
        return self._post(xml)

    def deep(self, depth):
        nested = "<a>" * depth + "</a>" * depth
        unsigned = Req("POST", f"/callbacks/wecom?msg_signature=x&timestamp={int(time.time())}&nonce=1",
                       f"<xml>{nested}</xml>".encode())
        return [unsigned, self._post(f"<xml><FromUserName>wangjl</FromUserName>{nested}</xml>")]

    def check_card(self, card):
        tc = wc_cards.render_template_card(card, wc_cards.new_task_id(card.track_key, 1))
        assert tc["card_type"] == "button_interaction"
        assert 0 < len(tc["main_title"]["title"]) <= 36 and len(tc["main_title"].get("desc", "")) <= 44
        assert 1 <= len(tc["button_list"]) <= 6
        for b in tc["button_list"]:
            assert 0 < len(b["text"]) <= 10 and 0 < len(b["key"].encode()) <= 1024 and b["style"] in (1, 2, 3, 4)
        for row in tc.get("horizontal_content_list", []):
            assert len(row["keyname"]) <= 10 and len(row["value"]) <= 30
        assert len(tc.get("sub_title_text", "")) <= 160
        assert len(wc_cards.render_markdown(card).encode()) <= wc_cards.MAX_MARKDOWN_BYTES


class FeishuHarness(Harness):
    name = "feishu"
    endpoints = ("/callbacks/feishu",)

    def _signed(self, payload: dict | bytes, *, encrypt: bool = True, sign: bool = True) -> Req:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        body = json.dumps({"encrypt": fc.encrypt(FEISHU["key"], raw)}).encode() if encrypt else raw
        ts, nonce = str(int(time.time())), uuid.uuid4().hex[:8]
        headers = {"Content-Type": "application/json"}
        if sign:
            headers.update({"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce,
                            "X-Lark-Signature": fc.signature(ts, nonce, FEISHU["key"], body)})
        return Req("POST", "/callbacks/feishu", body, headers)

    @staticmethod
    def _header(event_id: str, event_type: str) -> dict:
        return {"event_id": event_id, "event_type": event_type, "token": FEISHU["token"],
                "create_time": str(int(time.time() * 1000)), "app_id": FEISHU["app_id"], "tenant_key": "tk"}

    def _message(self, i: int, text: str) -> dict:
        return {"schema": "2.0", "header": self._header(f"ev{i}", "im.message.receive_v1"), "event": {
            "sender": {"sender_id": {"open_id": "ou_wang"}, "sender_type": "user"},
            "message": {"message_id": f"om_report{i}", "chat_id": "oc_p2p_wang", "chat_type": "p2p",
                        "message_type": "text", "content": json.dumps({"text": text}, ensure_ascii=False)}}}

    def verification(self):
        # Feishu sends the challenge encrypted but unsigned.
        req = self._signed({"challenge": "c-1234", "token": FEISHU["token"], "type": "url_verification"}, sign=False)
        return req, {"challenge": "c-1234"}

    def report(self, i, text):
        return self._signed(self._message(i, text))

    def forged(self, i, text):
        req = self._signed(self._message(i, text))
        req.headers["X-Lark-Signature"] = "0" * 64
        return req

    def malformed(self):
        return self._signed(b"{\"schema\": \"2.0\", \"header\": ")

    def click(self, i, token):
        payload = {"schema": "2.0", "header": self._header(f"click{i}", "card.action.trigger"), "event": {
            "operator": {"open_id": "ou_zhang"}, "token": f"c-{i}",
            "action": {"value": {"token": token}, "tag": "button"},
            "context": {"open_message_id": f"om_card{i}", "open_chat_id": "oc_engineers"}}}
        return self._signed(payload)

    def deep(self, depth):
        nested = _deep_json(depth)
        return [self._signed(nested, encrypt=False, sign=False),  # refused before parsing: unsigned
                self._signed(nested, encrypt=False),  # signed, then parsed with a depth limit
                self._signed(nested)]  # signed and encrypted: the decrypted body is depth-limited

    def check_card(self, card):
        content = fs_cards.card_content(card)
        assert len(content.encode()) <= 30 * 1024  # Feishu's card size limit
        doc = json.loads(content)
        assert doc["config"]["update_multi"] is True
        assert doc["header"]["title"]["tag"] == "plain_text" and doc["header"]["title"]["content"]
        buttons = [a for el in doc["elements"] if el.get("tag") == "action" for a in el["actions"]]
        assert buttons and all(b["tag"] == "button" and b["text"]["tag"] == "plain_text" for b in buttons)
        assert all(fs_cards.button_token(b["value"]) for b in buttons)


class DingTalkHarness(Harness):
    name = "dingtalk"
    endpoints = ("/callbacks/dingtalk", "/callbacks/dingtalk/card", "/callbacks/dingtalk/events")

    def __init__(self) -> None:
        self.events = EventCrypto(DINGTALK["event_token"], DINGTALK["event_aes"], DINGTALK["app_key"])

    @staticmethod
    def _robot(body: bytes, *, ts_ms: int | None = None) -> Req:
        ts = str(ts_ms if ts_ms is not None else int(time.time() * 1000))
        return Req("POST", "/callbacks/dingtalk", body, {"Content-Type": "application/json", "timestamp": ts,
                                                         "sign": robot_sign(ts, DINGTALK["secret"])})

    @staticmethod
    def _message(i: int, text: str) -> bytes:
        return json.dumps({
            "msgtype": "text", "text": {"content": text}, "msgId": f"msgREPORT{i}==",
            "createAt": int(time.time() * 1000), "conversationType": "1", "conversationId": f"cid1on1{i}==",
            "senderId": "$:LWCP_v1:$wang", "senderStaffId": "u_wang", "senderNick": "王经理",
            "chatbotUserId": "$:LWCP_v1:$bot", "robotCode": DINGTALK["app_key"]}, ensure_ascii=False).encode()

    def _event(self, plain: bytes | str) -> Req:
        env = self.events.encrypt_reply(plain if isinstance(plain, str) else plain.decode(), nonce="n0nce")
        query = {"msg_signature": env["msg_signature"], "timestamp": env["timeStamp"], "nonce": env["nonce"]}
        return Req("POST", "/callbacks/dingtalk/events?" + urlencode(query),
                   json.dumps({"encrypt": env["encrypt"]}).encode(), {"Content-Type": "application/json"})

    @staticmethod
    def _card(body: bytes) -> Req:
        ts = str(int(time.time() * 1000))
        return Req("POST", "/callbacks/dingtalk/card", body, {
            "Content-Type": "application/json", "x-ddpaas-signature-timestamp": ts,
            "x-ddpaas-signature": card_signature(ts, DINGTALK["card_secret"])})

    def verification(self):
        return self._event(json.dumps({"EventType": "check_url"})), "encrypt"

    def report(self, i, text):
        return self._robot(self._message(i, text))

    def forged(self, i, text):
        req = self._robot(self._message(i, text))
        req.headers["sign"] = robot_sign(req.headers["timestamp"], "not-the-secret")
        return req

    def stale(self, i, text):
        return self._robot(self._message(i, text), ts_ms=int(time.time() * 1000) - 2 * 3600 * 1000)

    def malformed(self):
        return self._robot(b'{"msgtype": "text", "msgId": ')

    def click(self, i, token):
        body = {"type": "actionCallback", "outTrackId": f"rdx-{i}", "corpId": "dingcorp", "userId": "u_zhang",
                "content": json.dumps({"cardPrivateData": {"actionIds": ["claim"], "params": {"value": token}}})}
        return self._card(json.dumps(body).encode())

    def deep(self, depth):
        nested = _deep_json(depth)
        unsigned_event = Req("POST", "/callbacks/dingtalk/events?msg_signature=x&timestamp=1&nonce=1", nested)
        return [self._robot(nested), self._card(nested), unsigned_event, self._event(nested),
                Req("POST", "/callbacks/dingtalk", nested, {"timestamp": "1", "sign": "x"})]

    def check_card(self, card):
        params = dt_cards.card_params(card)
        assert params and all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
        # Every value but the buttons' JSON (kept whole on purpose) is clipped to the platform's limit.
        assert all(len(v.encode()) <= dt_cards.MAX_PARAM_BYTES for k, v in params.items() if k != "buttons")
        values = [v for k, v in params.items() if k.endswith("_value") and v]
        assert {b.value for b in card.buttons[:dt_cards.BUTTON_SLOTS]} <= set(values)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tokens: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("br", "img", "input", "hr", "meta", "link"):
            self.open.append(tag)
        token = dict(attrs).get("data-token")
        if token:
            self.tokens.append(token)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"


class PlaygroundHarness(Harness):
    name = "playground"
    endpoints = ("/playground/api/send", "/playground/api/click")

    @staticmethod
    def _json(path: str, doc: dict | bytes) -> Req:
        body = doc if isinstance(doc, bytes) else json.dumps(doc, ensure_ascii=False).encode()
        return Req("POST", path, body, {"Content-Type": "application/json"})

    def report(self, i, text):
        return self._json("/playground/api/send", {"conversation": "user:cust_wang", "sender_id": "cust_wang",
                                                    "client_id": f"report{i}", "text": text})

    def forged(self, i, text):
        # Somebody writing as the customer into a chat that is not theirs.
        return self._json("/playground/api/send", {"conversation": "user:cust_wang", "sender_id": "eng_zhang",
                                                   "client_id": f"forged{i}", "text": text})

    def malformed(self):
        return self._json("/playground/api/send", b'{"conversation": "user:cust_wang", ')

    def click(self, i, token):
        return self._json("/playground/api/click", {"conversation": f"group:{GROUPS['playground']}",
                                                    "sender_id": "eng_zhang", "client_id": f"click{i}",
                                                    "token": token})

    def deep(self, depth):
        nested = _deep_json(depth)
        return [self._json(path, nested) for path in self.endpoints]

    def check_card(self, card):
        parser = _Tags()
        parser.feed(pg_cards.render_card_html(card))
        parser.close()
        assert parser.open == []
        assert {b.value for b in card.buttons} <= set(parser.tokens)


HARNESSES: dict[str, Harness] = {h.name: h for h in (WeComHarness(), FeishuHarness(), DingTalkHarness(),
                                                      PlaygroundHarness())}
