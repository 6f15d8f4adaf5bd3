"""Escalation calls through Aliyun 语音服务 and Tencent Cloud VMS, by their
official SDKs, against local fakes of both APIs that verify every request's
signature the way each cloud does (ACS3-HMAC-SHA256, TC3-HMAC-SHA256) with the
shared secret; the receipts each cloud pushes back; choosing the provider by
the number's country; per-callee limits before the call; SMS fallback; error
codes. The same escalation runs with Twilio, Aliyun and Tencent."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from aiohttp import web
from sqlmodel import select
from twilio.request_validator import RequestValidator

from app.web import RUNTIME, create_app
from storage.models import OutboxMessage, Person, PhoneCall, TicketEvent
from test_escalation_engine import Clock, Esc, PinnedPriority, write_config
from test_escalation_voice import POLICY, PUBLIC, TOKEN as TWILIO_TOKEN, FakeTwilio

AK_ID, AK_SECRET = "LTAI5tTestKeyId", "aliyun-test-secret"
TC_ID, TC_KEY = "AKIDtestSecretId", "tencent-test-secret-key"
CB_TOKEN = "cb-0123456789abcdef"
MNS_TOKEN = ("STS.tmp-id", "tmp-secret", "sts-security-token")  # what QueryTokenForMnsQueue hands out
LEAD = "+8613800000004"  # lead_zhao's phone in the test directory


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tc_json(data: dict) -> web.Response:
    """As Tencent answers: HTTP 200, Content-Type exactly application/json."""
    return web.Response(body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


# ---- the fake Aliyun API ------------------------------------------------------


@dataclass
class FakeAliyun:
    """dyvmsapi and dysmsapi (RPC style, one host here): checks each request's
    ACS3-HMAC-SHA256 signature, records the action and its parameters."""

    secret: str = AK_SECRET
    requests: list[tuple[str, dict]] = field(default_factory=list)
    bad_signatures: int = 0
    script: dict[str, list[dict]] = field(default_factory=dict)  # action -> bodies to answer first
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def routes(self):
        return [web.post("/", self.handle)]

    def verify(self, request: web.Request, body: bytes) -> str | None:
        """What is wrong with the signature, or None (Aliyun's V3 request signature)."""
        auth = request.headers.get("Authorization", "")
        algo, _, rest = auth.partition(" ")
        if algo != "ACS3-HMAC-SHA256":
            return "not ACS3-HMAC-SHA256"
        parts = dict(p.split("=", 1) for p in rest.split(","))
        if parts.get("Credential") != AK_ID:
            return "unknown AccessKey id"
        signed = parts.get("SignedHeaders", "").split(";")
        for needed in ("host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce",
                       "x-acs-content-sha256"):
            if needed not in signed:
                return f"{needed} not signed"
        if request.headers["x-acs-content-sha256"] != _sha256(body):
            return "payload hash"
        date = datetime.strptime(request.headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        if abs(time.time() - date.timestamp()) > 900:
            return "stale x-acs-date"
        pairs = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in request.query.items())
        canonical = "\n".join([
            request.method, request.path, "&".join(f"{k}={v}" for k, v in pairs),
            "".join(f"{h}:{request.headers.get(h, '').strip()}\n" for h in signed), ";".join(signed),
            request.headers["x-acs-content-sha256"]])
        to_sign = "ACS3-HMAC-SHA256\n" + _sha256(canonical.encode())
        expected = hmac.new(self.secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, parts.get("Signature", "")) else "signature mismatch"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        wrong = self.verify(request, body)
        if wrong:
            self.bad_signatures += 1
            return web.json_response({"Code": "SignatureDoesNotMatch", "Message": wrong, "RequestId": "r"},
                                     status=400)
        action = request.headers["x-acs-action"]
        params = dict(request.query)
        self.requests.append((action, params))
        if self.script.get(action):
            return web.json_response(self.script[action].pop(0))
        if action == "QueryTokenForMnsQueue":
            return web.json_response({"Code": "OK", "Message": "OK", "RequestId": "r", "MessageTokenDTO": {
                "AccessKeyId": MNS_TOKEN[0], "AccessKeySecret": MNS_TOKEN[1], "SecurityToken": MNS_TOKEN[2],
                "CreateTime": "2026-01-26 10:00:00", "ExpireTime": "2099-01-01 00:00:00"}})
        n = next(self.ids)
        if action == "SendSms":
            return web.json_response({"Code": "OK", "Message": "OK", "BizId": f"biz{n}", "RequestId": "r"})
        return web.json_response({"Code": "OK", "Message": "OK", "CallId": f"1160{n:08d}^1021{n:08d}",
                                  "RequestId": "r"})

    def of(self, *actions: str) -> list[dict]:
        return [p for a, p in self.requests if a in actions]


# ---- the fake Tencent Cloud API -------------------------------------------------


@dataclass
class FakeTencent:
    """vms.tencentcloudapi.com: checks each request's TC3-HMAC-SHA256 signature."""

    secret: str = TC_KEY
    requests: list[tuple[str, dict]] = field(default_factory=list)
    bad_signatures: int = 0
    script: list[dict] = field(default_factory=list)  # Error objects to answer first
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def routes(self):
        return [web.post("/", self.handle)]

    def verify(self, request: web.Request, body: bytes) -> str | None:
        auth = request.headers.get("Authorization", "")
        algo, _, rest = auth.partition(" ")
        if algo != "TC3-HMAC-SHA256":
            return "not TC3-HMAC-SHA256"
        parts = dict(p.strip().split("=", 1) for p in rest.split(","))
        secret_id, date, service, terminator = parts.get("Credential", "").split("/")
        if secret_id != TC_ID or service != "vms" or terminator != "tc3_request":
            return "credential scope"
        stamp = int(request.headers.get("X-TC-Timestamp", "0"))
        if abs(time.time() - stamp) > 300 or datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d") != date:
            return "timestamp"
        signed = parts.get("SignedHeaders", "").split(";")
        if "host" not in signed or "content-type" not in signed:
            return "host and content-type must be signed"
        canonical = "\n".join([request.method, request.path, request.query_string,
                               "".join(f"{h}:{request.headers.get(h, '').strip().lower()}\n" for h in signed),
                               ";".join(signed), _sha256(body)])
        to_sign = f"TC3-HMAC-SHA256\n{stamp}\n{date}/vms/tc3_request\n{_sha256(canonical.encode())}"

        def mac(key: bytes, msg: str) -> bytes:
            return hmac.new(key, msg.encode(), hashlib.sha256).digest()

        key = mac(mac(mac(("TC3" + self.secret).encode(), date), "vms"), "tc3_request")
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, parts.get("Signature", "")) else "signature mismatch"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        wrong = self.verify(request, body)
        if wrong:
            self.bad_signatures += 1
            return _tc_json({"Response": {"Error": {"Code": "AuthFailure.SignatureFailure", "Message": wrong},
                                          "RequestId": "r"}})
        action = request.headers.get("X-TC-Action", "")
        params = json.loads(body)
        self.requests.append((action, params))
        if self.script:
            return _tc_json({"Response": {"Error": self.script.pop(0), "RequestId": "r"}})
        n = next(self.ids)
        return _tc_json({"Response": {"SendStatus": {"CallId": f"tc-call-{n}",
                                                     "SessionContext": params.get("SessionContext", "")},
                                      "RequestId": "r"}})

    def calls(self) -> list[dict]:
        return [p for a, p in self.requests if a == "SendTtsVoice"]


# ---- the app ---------------------------------------------------------------------


def aliyun_toml(url: str, extra: str = "") -> str:
    host = url.removeprefix("http://")
    return f"""
[aliyun]
access_key_id = "{AK_ID}"
access_key_secret = "{AK_SECRET}"
endpoint = "{host}"
sms_endpoint = "{host}"
protocol = "http"
called_show_number = "057100000001"
tts_code = "TTS_100"
ack_code = "TTS_101"
escalate_code = "TTS_102"
tts_params = {{ ticket = "number", kind = "category", where = "place", level = "priority", waited = "minutes" }}
sms_sign_name = "RelayDesk"
sms_template_code = "SMS_200"
sms_params = {{ ticket = "number", where = "place" }}
callback_token = "{CB_TOKEN}"
{extra}"""


def tencent_toml(url: str, extra: str = "") -> str:
    return f"""
[tencent]
secret_id = "{TC_ID}"
secret_key = "{TC_KEY}"
voice_sdk_appid = "1400000001"
endpoint = "{url.removeprefix("http://")}"
protocol = "http"
template_id = "654321"
template_params = ["number", "category", "place", "minutes"]
callback_token = "{CB_TOKEN}"
{extra}"""


def twilio_toml(url: str, extra: str = "") -> str:
    return f"""
[twilio]
account_sid = "ACtest"
auth_token = "{TWILIO_TOKEN}"
from_number = "+14155550100"
api_base = "{url}"
{extra}"""


class Phones(Esc):
    def __init__(self, rt, clock, client, aliyun: FakeAliyun, tencent: FakeTencent, twilio: FakeTwilio):
        super().__init__(rt, clock)
        self.client = client
        self.aliyun = aliyun
        self.tencent = tencent
        self.twilio = twilio

    async def page(self, text: str = "3号线水泵漏水停机了 #P0", minutes: int = 10):
        tk = await self.report(text)
        self.clock.advance(minutes=minutes)
        assert await self.sweep() >= 1
        await self.rt.outbox.drain()
        return tk

    async def calls(self) -> list[PhoneCall]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(PhoneCall).order_by(PhoneCall.id))).all())

    async def events(self, ticket_id: int, action: str | None = None) -> list[TicketEvent]:
        async with self.rt.db.session() as s:
            q = select(TicketEvent).where(TicketEvent.ticket_id == ticket_id).order_by(TicketEvent.id)
            if action:
                q = q.where(TicketEvent.action == action)
            return list((await s.exec(q)).all())

    # What each cloud sends back.

    async def aliyun_push(self, reports: list[dict], token: str = CB_TOKEN):
        return await self.client.post(f"/callbacks/aliyun/voice?token={token}", json=reports)

    async def tencent_push(self, body: dict, token: str = CB_TOKEN):
        return await self.client.post(f"/callbacks/tencent/voice?token={token}", json=body)

    async def press(self, row: PhoneCall, digit: str):
        """The callee presses `digit`, as the provider that placed the call reports it."""
        if row.provider == "aliyun":
            return await self.aliyun_push([{"call_id": row.sid, "status_code": "300000", "dtmf": digit,
                                            "status_time": "2026-01-26 10:10:20", "out_id": self.out_id(row)}])
        if row.provider == "tencent":
            return await self.tencent_push({"voicekey_callback": {"callid": row.sid, "keypress": digit,
                                                                  "mobile": "13800000004", "nationcode": "86",
                                                                  "call_from": ""}})
        path = f"/callbacks/twilio/voice?call={row.id}&event=gather"
        params = {"CallSid": row.sid, "Digits": digit}
        sig = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, params)
        return await self.client.post(path, data=params, headers={"X-Twilio-Signature": sig})

    async def unanswered(self, row: PhoneCall):
        if row.provider == "aliyun":
            return await self.aliyun_push([{"call_id": row.sid, "status_code": "200003", "status_msg": "用户未接听",
                                            "duration": "0", "out_id": self.out_id(row)}])
        if row.provider == "tencent":
            return await self.tencent_push({"voiceprompt_callback": {"callid": row.sid, "result": "1",
                                                                     "mobile": "13800000004", "nationcode": "86"}})
        path = f"/callbacks/twilio/voice?call={row.id}&event=status"
        params = {"CallSid": row.sid, "CallStatus": "no-answer"}
        sig = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, params)
        return await self.client.post(path, data=params, headers={"X-Twilio-Signature": sig})

    def out_id(self, row: PhoneCall) -> str:
        """The OutId the call was placed with (what Aliyun echoes)."""
        (params,) = [p for p in self.aliyun.of("IvrCall", "SingleCallByTts") if p["OutId"].startswith(f"{row.id}.")]
        return params["OutId"]


def _builder(tmp_path, database_url, aiohttp_client, aiohttp_server):
    """build(sections(aliyun_url, tencent_url, twilio_url) -> toml) -> Phones."""

    async def build(sections) -> Phones:
        fakes = FakeAliyun(), FakeTencent(), FakeTwilio()
        urls = []
        for fake in fakes:
            app = web.Application()
            app.add_routes(fake.routes())
            server = await aiohttp_server(app, host="127.0.0.1")
            urls.append(str(server.make_url("")).rstrip("/"))
        write_config(tmp_path, database_url, policies=POLICY)
        path = tmp_path / "relaydesk.toml"
        path.write_text(path.read_text(encoding="utf-8") + sections(*urls), encoding="utf-8")
        from bot.config import load_config

        config = load_config(path, env={})
        clock = Clock()
        bot = create_app(config, workers=False)
        rt = bot[RUNTIME]
        rt.service.clock = clock
        rt.service.classifier = PinnedPriority(rt.service.classifier)
        client = await aiohttp_client(bot)
        return Phones(rt, clock, client, *fakes)

    return build


@pytest.fixture
async def make(tmp_path, sqlite_url, aiohttp_client, aiohttp_server):
    return _builder(tmp_path, sqlite_url, aiohttp_client, aiohttp_server)


@pytest.fixture
async def make_any(tmp_path, database_url, aiohttp_client, aiohttp_server):
    """As `make`, once on SQLite and once on PostgreSQL."""
    return _builder(tmp_path, database_url, aiohttp_client, aiohttp_server)


def only(name: str, extra: str = ""):
    """Sections for one provider (Twilio told to take +86 too)."""
    def sections(aliyun_url, tencent_url, twilio_url):
        body = {"aliyun": aliyun_toml(aliyun_url, extra), "tencent": tencent_toml(tencent_url, extra),
                "twilio": twilio_toml(twilio_url, extra)}[name]
        return f'\n[phone]\nproviders = ["{name}"]\n' + body
    return sections


# ---- placing calls -------------------------------------------------------------


async def test_aliyun_places_an_ivr_call_with_the_template_and_its_variables(make):
    phones = await make(only("aliyun"))
    tk = await phones.page()
    assert phones.aliyun.bad_signatures == 0
    (call,) = phones.aliyun.of("IvrCall")
    assert call["CalledNumber"] == "13800000004" and call["CalledShowNumber"] == "057100000001"
    assert call["StartCode"] == "TTS_100"
    assert json.loads(call["StartTtsParams"]) == {
        "ticket": tk.number.split("-")[2], "kind": tk.category_name, "where": tk.location,
        "level": "P0 业务停摆", "waited": "10"}
    menu = {k: v for k, v in call.items() if k.startswith("MenuKeyMap")}
    assert menu == {"MenuKeyMap.1.Key": "1", "MenuKeyMap.1.Code": "TTS_101",
                    "MenuKeyMap.2.Key": "2", "MenuKeyMap.2.Code": "TTS_102"}, menu
    (row,) = await phones.calls()
    assert call["OutId"].startswith(f"{row.id}.")
    assert (row.provider, row.status, row.sid, row.to_number) == ("aliyun", "sent", "116000000001^102100000001", LEAD)


async def test_aliyun_without_ivr_places_a_single_tts_call(make):
    phones = await make(only("aliyun", "ivr = false\n"))
    await phones.page()
    assert not phones.aliyun.of("IvrCall")
    (call,) = phones.aliyun.of("SingleCallByTts")
    assert call["TtsCode"] == "TTS_100" and json.loads(call["TtsParam"])["waited"] == "10"
    # Heard to the end without a key (it cannot take one): the chain waits for its own next step.
    (row,) = await phones.calls()
    r = await phones.aliyun_push([{"call_id": row.sid, "status_code": "200000", "duration": "20",
                                   "out_id": phones.out_id(row)}])
    assert r.status == 200 and not await phones.esc_cards_to("director_sun")
    # Not answered: the next step now.
    await phones.aliyun_push([{"call_id": row.sid, "status_code": "200003", "out_id": phones.out_id(row)}])
    assert not await phones.esc_cards_to("director_sun")  # one end per call: the first report counted


async def test_tencent_sends_the_template_with_its_parameters_in_order(make):
    phones = await make(only("tencent"))
    tk = await phones.page()
    assert phones.tencent.bad_signatures == 0
    (call,) = phones.tencent.calls()
    assert call["TemplateId"] == "654321" and call["VoiceSdkAppid"] == "1400000001"
    assert call["CalledNumber"] == LEAD
    assert call["TemplateParamSet"] == [tk.number.split("-")[2], tk.category_name, tk.location, "10"]
    (row,) = await phones.calls()
    assert call["SessionContext"].startswith(f"{row.id}.")
    assert (row.provider, row.status, row.sid) == ("tencent", "sent", "tc-call-1")


async def test_a_wrong_secret_fails_the_fakes_signature_check(make):
    """The fakes do check: signed with another secret, both clouds refuse."""
    phones = await make(lambda a, t, w: '\n[phone]\nproviders = ["aliyun", "tencent"]\n'
                        + aliyun_toml(a).replace(AK_SECRET, "not-the-secret") + tencent_toml(t))
    phones.tencent.secret = "another-secret"
    await phones.page()
    assert phones.aliyun.bad_signatures == 2  # the call, then the SMS fallback
    assert phones.tencent.bad_signatures == 1
    assert not phones.aliyun.requests and not phones.tencent.requests
    rows = await phones.calls()
    assert [(r.kind, r.status) for r in rows] == [("call", "failed"), ("sms", "failed")]
    assert "SignatureDoesNotMatch" in rows[0].error and "AuthFailure.SignatureFailure" in rows[0].error


# ---- the same escalation with each provider ------------------------------------------


PROVIDERS = ["twilio", "aliyun", "tencent"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_digit_1_acknowledges_and_stops_the_chain(make_any, provider):
    phones = await make_any(only(provider))
    tk = await phones.page()
    (row,) = await phones.calls()
    assert row.provider == provider and row.sid
    r = await phones.press(row, "1")
    assert r.status == 200
    ack = await phones.events(tk.id, "ack")
    assert len(ack) == 1 and ack[0].detail["via"] == "phone" and ack[0].actor_id == "lead_zhao"
    assert ack[0].channel == provider
    told = [m.message["text"] for m in await phones.outbox() if m.to_kind == "group" and m.message["type"] == "text"]
    assert any("已通过电话确认收到工单" in x and tk.number in x for x in told)  # the group hears who answered
    phones.clock.advance(minutes=30)
    assert await phones.sweep() == 0  # the director is not paged
    assert not await phones.esc_cards_to("director_sun")
    (row,) = await phones.calls()
    assert (row.status, row.digits) == ("acknowledged", "1")
    # The provider redelivers the key, then reports the call's end: nothing more happens.
    await phones.press(row, "1")
    await phones.unanswered(row)
    assert len(await phones.events(tk.id, "ack")) == 1 and not await phones.esc_cards_to("director_sun")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_digit_2_fires_the_next_step_now(make, provider):
    phones = await make(only(provider))
    tk = await phones.page()
    (row,) = await phones.calls()
    await phones.press(row, "2")
    assert len(await phones.esc_cards_to("director_sun")) == 1  # at 10 minutes, not 20
    assert [e.action for e in await phones.events(tk.id)][-2:] == ["escalate", "escalation"]
    phones.clock.advance(minutes=15)
    assert await phones.sweep() == 0
    assert (await phones.calls())[0].status == "escalated"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_answer_fires_the_next_step(make, provider):
    phones = await make(only(provider))
    tk = await phones.page()
    (row,) = await phones.calls()
    r = await phones.unanswered(row)
    assert r.status == 200
    assert len(await phones.esc_cards_to("director_sun")) == 1
    assert [e.detail["via"] for e in await phones.events(tk.id, "escalation")] == ["sweep", "no_answer"]
    await phones.unanswered(row)  # redelivered
    assert len(await phones.esc_cards_to("director_sun")) == 1


# ---- forged receipts ---------------------------------------------------------------


async def test_forged_aliyun_receipts_are_refused_and_change_nothing(make):
    phones = await make(only("aliyun"))
    tk = await phones.page()
    (row,) = await phones.calls()
    before = await phones.events(tk.id)
    good = {"call_id": row.sid, "status_code": "300000", "dtmf": "1", "out_id": phones.out_id(row)}
    call_id, mac = good["out_id"].split(".")
    forged = [
        (await phones.aliyun_push([good], token="x" * 19)),                        # wrong URL token
        (await phones.client.post("/callbacks/aliyun/voice", json=[good])),        # no token
        (await phones.aliyun_push([{**good, "out_id": f"{call_id}.{'0' * len(mac)}"}])),  # made-up tag
        (await phones.aliyun_push([{**good, "out_id": call_id}])),                 # no tag
        (await phones.aliyun_push([{**good, "call_id": "999^999"}])),              # another call's id
        (await phones.aliyun_push([{**good, "status_code": "200003", "dtmf": ""},  # a batch with one bad receipt
                                   {**good, "out_id": "1.x"}])),
    ]
    assert [r.status for r in forged] == [403] * 6
    assert await phones.events(tk.id) == before
    assert (await phones.ticket(tk.id)).state == "new"
    assert not await phones.esc_cards_to("director_sun")
    assert (await phones.aliyun_push([good])).status == 200  # the genuine one still works
    assert len(await phones.events(tk.id, "ack")) == 1


async def test_forged_tencent_callbacks_are_refused_and_change_nothing(make):
    phones = await make(only("tencent"))
    tk = await phones.page()
    (row,) = await phones.calls()
    before = await phones.events(tk.id)
    key = {"voicekey_callback": {"callid": row.sid, "keypress": "1", "mobile": "13800000004", "nationcode": "86"}}
    forged = [
        await phones.tencent_push(key, token="y" * 19),
        await phones.client.post("/callbacks/tencent/voice", json=key),
        await phones.tencent_push({"voicekey_callback": {**key["voicekey_callback"], "callid": "tc-call-99"}}),
        await phones.tencent_push({"voicekey_callback": {**key["voicekey_callback"], "session_context": "1.bad"}}),
    ]
    assert [r.status for r in forged] == [403] * 4
    assert await phones.events(tk.id) == before
    r = await phones.client.post(f"/callbacks/tencent/voice?token={CB_TOKEN}", data=b"not json")
    assert r.status == 400
    assert (await phones.tencent_push(key)).status == 200
    assert len(await phones.events(tk.id, "ack")) == 1


# ---- choosing and limiting ------------------------------------------------------------


def aliyun_then(*others: str):
    def sections(aliyun_url, tencent_url, twilio_url):
        names = ", ".join(f'"{n}"' for n in ("aliyun", *others))
        out = f"\n[phone]\nproviders = [{names}]\n" + aliyun_toml(aliyun_url)
        if "tencent" in others:
            out += tencent_toml(tencent_url)
        if "twilio" in others:
            out += twilio_toml(twilio_url)
        return out
    return sections


async def test_a_per_callee_limit_sends_an_sms_with_the_reason_recorded(make_any):
    phones = await make_any(aliyun_then())
    await phones.report("1号线水泵漏水停机了 #P0")
    second = await phones.report("2号线水泵漏水停机了 #P0")
    phones.clock.advance(minutes=10)
    assert await phones.sweep() == 2
    await phones.rt.outbox.drain()
    # Aliyun calls a number at most once a minute: the second page is not sent to be refused.
    assert len(phones.aliyun.of("IvrCall")) == 1
    (sms,) = phones.aliyun.of("SendSms")
    assert sms["PhoneNumbers"] == "13800000004" and sms["SignName"] == "RelayDesk"
    assert sms["TemplateCode"] == "SMS_200"
    assert json.loads(sms["TemplateParam"]) == {"ticket": second.number.split("-")[2], "where": second.location}
    rows = await phones.calls()
    assert [(r.kind, r.status) for r in rows] == [("call", "sent"), ("call", "failed"), ("sms", "sent")]
    assert "aliyun: per-callee limit 1/1m reached" in rows[1].error
    (audit,) = await phones.events(second.id, "phone")
    assert audit.detail["status"] == "sms_instead" and audit.detail["person"] == "lead_zhao"
    assert audit.detail["reasons"] == ["aliyun: per-callee limit 1/1m reached"]


async def test_a_provider_at_its_limit_passes_the_call_to_the_next(make):
    phones = await make(aliyun_then("tencent"))
    await phones.report("1号线水泵漏水停机了 #P0")
    second = await phones.report("2号线水泵漏水停机了 #P0")
    phones.clock.advance(minutes=10)
    await phones.sweep()
    await phones.rt.outbox.drain()
    assert len(phones.aliyun.of("IvrCall")) == 1 and len(phones.tencent.calls()) == 1
    assert not phones.aliyun.of("SendSms")
    rows = await phones.calls()
    assert [(r.provider, r.status) for r in rows] == [("aliyun", "sent"), ("tencent", "sent")]
    (audit,) = await phones.events(second.id, "phone")
    assert (audit.detail["status"], audit.detail["via"]) == ("sent", "tencent")


async def test_the_numbers_country_picks_the_provider(make):
    phones = await make(aliyun_then("twilio"))
    async with phones.rt.db.session() as s:
        lead = await s.get(Person, "lead_zhao")
        lead.phone = "+1 415 555 0199"
        s.add(lead)
    await phones.page()
    assert not phones.aliyun.requests  # Aliyun reaches +86 only
    (call,) = phones.twilio.calls()
    assert call["To"] == "+14155550199"
    (row,) = await phones.calls()
    assert row.provider == "twilio"


@pytest.mark.parametrize("code, expect", [
    ("isv.BUSINESS_LIMIT_CONTROL", "sms"),     # Aliyun's flow control: SMS now
    ("isv.MOBILE_NUMBER_ILLEGAL", "sms"),      # give up on the call, with the reason
    ("isp.SYSTEM_ERROR", "retry"),             # Aliyun's trouble: the outbox tries again
])
async def test_aliyun_error_codes_map_to_retry_or_give_up(make, code, expect):
    phones = await make(aliyun_then())
    phones.aliyun.script["IvrCall"] = [{"Code": code, "Message": "refused", "RequestId": "r"}]
    tk = await phones.page()
    rows = await phones.calls()
    if expect == "sms":
        assert [(r.kind, r.status) for r in rows] == [("call", "failed"), ("sms", "sent")]
        assert code in rows[0].error
        (audit,) = await phones.events(tk.id, "phone")
        assert code in audit.detail["reasons"][0]
        return
    assert [(r.kind, r.status) for r in rows] == [("call", "placing")] and code in rows[0].error
    async with phones.rt.db.session() as s:
        out = (await s.exec(select(OutboxMessage).where(OutboxMessage.channel == "phone"))).one()
        assert (out.status, out.attempts) == ("pending", 1)
        out.next_attempt_at = out.created_at
        s.add(out)
    await phones.rt.outbox.drain()
    assert len(phones.aliyun.of("IvrCall")) == 2
    assert [(r.kind, r.status) for r in await phones.calls()] == [("call", "sent")]


@pytest.mark.parametrize("code, expect", [
    ("LimitExceeded.DeliveryFrequencyLimit", "failed"),
    ("InternalError.UpstreamError", "retry"),
])
async def test_tencent_error_codes_map_to_retry_or_give_up(make, code, expect):
    phones = await make(only("tencent"))
    phones.tencent.script.append({"Code": code, "Message": "refused"})
    tk = await phones.page()
    rows = await phones.calls()
    if expect == "failed":
        # Tencent sends no SMS and nothing else reaches the number: both fail, and say why.
        call, sms = rows
        assert call.status == "failed" and code in call.error
        assert sms.status == "failed" and "no provider sends SMS" in sms.error
        assert [e.detail["status"] for e in await phones.events(tk.id, "phone")] == ["sms_instead", "failed"]
        return
    (row,) = rows
    assert row.status == "placing" and code in row.error


# ---- receipts pulled from Aliyun's MNS queue ----------------------------------------------


@dataclass
class FakeMNS:
    """The MNS queue API (batch receive, delete), checking each request's
    signature (HMAC-SHA1 over verb, MD5, type, date, x-mns-* headers and
    resource) made with the temporary token."""

    queues: dict[str, list[str]] = field(default_factory=dict)  # queue -> message bodies
    bad_signatures: int = 0
    deleted: list[str] = field(default_factory=list)
    handles: itertools.count = field(default_factory=lambda: itertools.count(1))
    inflight: dict[str, tuple[str, str]] = field(default_factory=dict)  # handle -> (queue, body)

    def routes(self):
        return [web.get("/queues/{queue}/messages", self.receive),
                web.delete("/queues/{queue}/messages", self.delete)]

    def verify(self, request: web.Request) -> bool:
        h = request.headers
        mns = "".join(f"{k.lower()}:{v}\n" for k, v in sorted((k.lower(), v) for k, v in h.items()
                                                              if k.lower().startswith("x-mns-")))
        to_sign = "\n".join([request.method, h.get("content-md5", ""), h.get("content-type", ""),
                             h.get("date", "")]) + "\n" + mns + request.raw_path
        mac = base64.b64encode(hmac.new(MNS_TOKEN[1].encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
        ok = (h.get("Authorization") == f"MNS {MNS_TOKEN[0]}:{mac}" and h.get("security-token") == MNS_TOKEN[2]
              and h.get("x-mns-version") == "2015-06-06")
        self.bad_signatures += not ok
        return ok

    @staticmethod
    def error(status: int, code: str) -> web.Response:
        return web.Response(status=status, content_type="text/xml", text=(
            f'<?xml version="1.0" encoding="UTF-8"?><Error xmlns="http://mns.aliyuncs.com/doc/v1/">'
            f"<Code>{code}</Code><Message>{code}</Message><RequestId>r</RequestId><HostId>h</HostId></Error>"))

    async def receive(self, request: web.Request) -> web.Response:
        if not self.verify(request):
            return self.error(403, "SignatureDoesNotMatch")
        queue = request.match_info["queue"]
        bodies = self.queues.get(queue, [])
        n = int(request.query.get("numOfMessages", "1"))
        if not bodies:
            return self.error(404, "MessageNotExist")
        taken, self.queues[queue] = bodies[:n], bodies[n:]
        out = []
        for body in taken:
            handle = f"h{next(self.handles)}"
            self.inflight[handle] = (queue, body)
            out.append(f"<Message><MessageId>m-{handle}</MessageId><ReceiptHandle>{handle}</ReceiptHandle>"
                       f"<MessageBodyMD5>x</MessageBodyMD5><MessageBody>{body}</MessageBody>"
                       f"<EnqueueTime>1</EnqueueTime><NextVisibleTime>2</NextVisibleTime>"
                       f"<FirstDequeueTime>1</FirstDequeueTime><DequeueCount>1</DequeueCount>"
                       f"<Priority>8</Priority></Message>")
        return web.Response(content_type="text/xml", text=(
            '<?xml version="1.0" encoding="UTF-8"?><Messages xmlns="http://mns.aliyuncs.com/doc/v1/">'
            + "".join(out) + "</Messages>"))

    async def delete(self, request: web.Request) -> web.Response:
        if not self.verify(request):
            return self.error(403, "SignatureDoesNotMatch")
        handle = request.query.get("ReceiptHandle", "")
        if self.inflight.pop(handle, None) is None:
            return self.error(404, "ReceiptHandleError")
        self.deleted.append(handle)
        return web.Response(status=204)


QUEUE = "Alicom-Queue-123-VoiceCallReport"


async def with_mns(make, aiohttp_server) -> tuple[Phones, FakeMNS]:
    mns = FakeMNS()
    app = web.Application()
    app.add_routes(mns.routes())
    server = await aiohttp_server(app, host="127.0.0.1")
    mns_url = str(server.make_url("")).rstrip("/")
    phones = await make(lambda a, t, w: '\n[phone]\nproviders = ["aliyun"]\n' + aliyun_toml(
        a, f'mns_queues = {{ VoiceCallReport = "{QUEUE}" }}\nmns_endpoint = "{mns_url}"\n'
           f'dybaseapi_endpoint = "{a.removeprefix("http://")}"\nmns_wait = "0s"\n'))
    return phones, mns


async def test_aliyun_receipts_pulled_from_the_mns_queue(make, aiohttp_server):
    phones, mns = await with_mns(make, aiohttp_server)
    queue = QUEUE
    tk = await phones.page()
    (row,) = await phones.calls()
    from escalation.receipt_queue import AliyunReceiptQueue

    puller = AliyunReceiptQueue(phones.engine)
    try:
        await pull(puller, queue, mns, phones, tk, row)
    finally:
        await puller.stop()


async def pull(puller, queue: str, mns: FakeMNS, phones: Phones, tk, row) -> None:
    assert await puller.poll("VoiceCallReport", queue) == 0  # empty queue
    key = {"call_id": row.sid, "status_code": "300000", "dtmf": "1", "out_id": phones.out_id(row)}
    stranger = {**key, "out_id": "77.0123456789abcdef0123"}  # another system's call on the same account
    mns.queues[queue] = [json.dumps(key), base64.b64encode(json.dumps(key).encode()).decode(),
                         json.dumps(stranger), "not json"]
    assert await puller.poll("VoiceCallReport", queue) == 2  # the key (and its redelivery, applied once)
    assert mns.bad_signatures == 0 and phones.aliyun.bad_signatures == 0
    assert len(mns.deleted) == 4 and not mns.inflight  # every message taken off the queue
    ack = await phones.events(tk.id, "ack")
    assert len(ack) == 1 and ack[0].channel == "aliyun" and ack[0].detail["via"] == "phone"
    assert len(phones.aliyun.of("QueryTokenForMnsQueue")) == 1  # the token is kept until it expires
    assert phones.aliyun.of("QueryTokenForMnsQueue")[0] == {"MessageType": "VoiceCallReport", "QueueName": queue}


async def test_the_engine_pulls_the_queue_until_stopped(make, aiohttp_server):
    phones, mns = await with_mns(make, aiohttp_server)
    tk = await phones.page()
    (row,) = await phones.calls()
    await phones.engine.start()
    try:
        mns.queues[QUEUE] = [json.dumps({"call_id": row.sid, "status_code": "200003", "out_id": phones.out_id(row)})]
        for _ in range(100):  # the puller runs on its own (applies, then deletes); give it up to 5 s
            if await phones.esc_cards_to("director_sun") and mns.deleted:
                break
            await asyncio.sleep(0.05)
        assert len(await phones.esc_cards_to("director_sun")) == 1  # unanswered: the next step now
        assert mns.deleted and phones.engine.receipt_queue is not None
    finally:
        await phones.engine.stop()
    assert phones.engine.receipt_queue is None


async def test_a_retried_fallback_sms_does_not_call_again_or_repeat_the_audit(make):
    phones = await make(aliyun_then())
    phones.aliyun.script["IvrCall"] = [{"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "bad number", "RequestId": "r"}]
    phones.aliyun.script["SendSms"] = [{"Code": "isp.SYSTEM_ERROR", "Message": "busy", "RequestId": "r"}]
    tk = await phones.page()
    assert [(r.kind, r.status) for r in await phones.calls()] == [("call", "failed"), ("sms", "placing")]
    async with phones.rt.db.session() as s:
        out = (await s.exec(select(OutboxMessage).where(OutboxMessage.channel == "phone"))).one()
        assert out.status == "pending"
        out.next_attempt_at = out.created_at
        s.add(out)
    await phones.rt.outbox.drain()
    assert len(phones.aliyun.of("IvrCall")) == 1 and len(phones.aliyun.of("SendSms")) == 2
    assert [(r.kind, r.status) for r in await phones.calls()] == [("call", "failed"), ("sms", "sent")]
    (audit,) = await phones.events(tk.id, "phone")
    assert audit.detail["status"] == "sms_instead" and "isv.MOBILE_NUMBER_ILLEGAL" in audit.detail["reasons"][0]
