"""Voice calls and SMS through the real twilio client against a local fake
Twilio API, and the voice webhook: signatures, each key, unanswered calls,
Twilio's retries, throttles, API errors."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from sqlmodel import select
from twilio.request_validator import RequestValidator

from app.web import RUNTIME, create_app
from storage.models import OutboxMessage, PhoneCall, ProcessedEvent, TicketEvent
from test_escalation_engine import Clock, Esc, PinnedPriority, write_config

PUBLIC = "https://relay.example.com"
TOKEN = "twilio-auth-token"

POLICY = """
[[escalation.P0.steps]]
after = "10m"
state = "unclaimed"
targets = ["lead"]
means = ["call"]

[[escalation.P0.steps]]
after = "20m"
state = "unclaimed"
targets = ["director"]
means = ["card"]

[[escalation.P1.steps]]
after = "10m"
state = "unclaimed"
targets = ["assignee"]
means = ["call"]
"""


@dataclass
class FakeTwilio:
    """Twilio's REST API, as far as calls and messages go."""

    requests: list[tuple[str, dict]] = field(default_factory=list)
    fail_calls: list[tuple[int, dict]] = field(default_factory=list)  # (status, body) answers to use first

    def routes(self):
        return [web.post("/2010-04-01/Accounts/{sid}/Calls.json", self.call),
                web.post("/2010-04-01/Accounts/{sid}/Messages.json", self.message)]

    async def call(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append(("call", form))
        if self.fail_calls:
            status, body = self.fail_calls.pop(0)
            return web.json_response(body, status=status)
        n = sum(1 for kind, _ in self.requests if kind == "call")
        return web.json_response({"sid": f"CA{n:032d}", "status": "queued", "to": form["To"]}, status=201)

    async def message(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append(("sms", form))
        n = sum(1 for kind, _ in self.requests if kind == "sms")
        return web.json_response({"sid": f"SM{n:032d}", "status": "queued", "to": form["To"]}, status=201)

    def calls(self) -> list[dict]:
        return [f for kind, f in self.requests if kind == "call"]

    def sms(self) -> list[dict]:
        return [f for kind, f in self.requests if kind == "sms"]


@pytest.fixture
async def phone(tmp_path, sqlite_url, aiohttp_client, aiohttp_server):
    fake = FakeTwilio()
    app = web.Application()
    app.add_routes(fake.routes())
    server = await aiohttp_server(app, host="127.0.0.1")
    twilio = f"""
[server]
public_url = "{PUBLIC}"
max_body_bytes = 4096
[twilio]
account_sid = "ACtest"
auth_token = "{TOKEN}"
from_number = "+14155550100"
api_base = "{str(server.make_url("")).rstrip("/")}"
"""
    config = write_config(tmp_path, sqlite_url, policies=POLICY)
    path = tmp_path / "relaydesk.toml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        '[server]\npublic_url = "https://relay.example.com"\n', "") + twilio, encoding="utf-8")
    from bot.config import load_config

    config = load_config(path, env={})
    clock = Clock()
    bot = create_app(config, workers=False)
    rt = bot[RUNTIME]
    rt.service.clock = clock
    rt.service.classifier = PinnedPriority(rt.service.classifier)
    client = await aiohttp_client(bot)
    return Phone(rt, clock, client, fake)


class Phone(Esc):
    def __init__(self, rt, clock, client, fake: FakeTwilio):
        super().__init__(rt, clock)
        self.client = client
        self.fake = fake

    async def page(self, text: str = "3号线水泵漏水停机了 #P0", minutes: int = 10):
        """A report whose first step (a call) fires and is delivered."""
        tk = await self.report(text)
        self.clock.advance(minutes=minutes)
        assert await self.sweep() >= 1
        await self.rt.outbox.drain()
        return tk

    async def calls(self) -> list[PhoneCall]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(PhoneCall).order_by(PhoneCall.id))).all())

    async def post(self, call_id: int, event: str, params: dict, *, signature: str | None = None,
                   signed_params: dict | None = None):
        path = f"/callbacks/twilio/voice?call={call_id}&event={event}"
        if signature is None:
            signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, signed_params or params)
        return await self.client.post(path, data=params, headers={"X-Twilio-Signature": signature})

    async def events(self, ticket_id: int) -> list[TicketEvent]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(TicketEvent).where(TicketEvent.ticket_id == ticket_id)
                                      .order_by(TicketEvent.id))).all())

    async def processed(self) -> list[ProcessedEvent]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(ProcessedEvent).where(ProcessedEvent.platform == "twilio"))).all())


async def test_the_call_reads_the_ticket_in_chinese_inside_gather(phone):
    tk = await phone.page()
    (call,) = phone.fake.calls()
    assert call["To"] == "+8613800000004" and call["From"] == "+14155550100"
    assert call["StatusCallback"].startswith(f"{PUBLIC}/callbacks/twilio/voice?call=")
    assert call["StatusCallback"].endswith("&event=status")
    twiml = call["Twiml"]
    gather = re.search(r'<Gather action="([^"]+)" method="POST" numDigits="1"[^>]*><Say language="zh-CN">'
                       r"([^<]+)</Say></Gather>", twiml)
    assert gather, twiml
    assert gather.group(1) == f"{PUBLIC}/callbacks/twilio/voice?call=1&amp;event=gather"
    said = gather.group(2)
    seq = " ".join(tk.number.split("-")[2])
    for part in (seq, tk.category_name, "3号线", "P0 业务停摆", "未认领已 10 分钟", "按 1", "按 2"):
        assert part in said, (part, said)
    (row,) = await phone.calls()
    assert (row.kind, row.status, row.person_id, row.ticket_id, row.sid) == \
        ("call", "sent", "lead_zhao", tk.id, "CA" + "1".zfill(32))


async def engineer_card_updates(phone) -> list[dict]:
    return [m.message for m in await phone.outbox() if m.message["type"] == "card"
            and m.message["card"]["kind"] == "engineer" and m.message["update"]]


async def test_keypad_1_acknowledges_by_phone_and_stops_the_chain(phone):
    tk = await phone.page()
    updates_before = len(await engineer_card_updates(phone))
    r = await phone.post(1, "gather", {"CallSid": "CA" + "1".zfill(32), "Digits": "1"})
    assert r.status == 200
    body = await r.text()
    assert "已确认收到" in body and "<Hangup" in body
    ack = [e for e in await phone.events(tk.id) if e.action == "ack"]
    assert len(ack) == 1 and ack[0].detail["via"] == "phone" and ack[0].actor_id == "lead_zhao"
    assert ack[0].channel == "twilio"
    # The group hears who answered; the escalation card shows it.
    sent = await phone.outbox()
    told = [m.message["text"] for m in sent if m.to_kind == "group" and m.message["type"] == "text"]
    assert any("赵组长 已通过电话确认收到工单" in x and tk.number in x for x in told)
    updates = await engineer_card_updates(phone)
    assert len(updates) > updates_before
    acked = {f["label"]: f["value"] for f in updates[-1]["card"]["fields"]}["已确认收到"]
    assert acked.startswith("赵组长 ") and acked.endswith("（电话）")
    phone.clock.advance(minutes=30)
    assert await phone.sweep() == 0  # the director is not paged: the lead acknowledged
    assert (await phone.calls())[0].status == "acknowledged"


async def test_keypad_1_by_an_engineer_claims_the_ticket(phone):
    tk = await phone.page("办公室空调不制冷了，麻烦安排人看一下 #P1")
    engineer = tk.assignee_id
    (row,) = await phone.calls()
    assert row.person_id == engineer
    r = await phone.post(row.id, "gather", {"CallSid": row.sid, "Digits": "1"})
    assert "已为您认领工单" in await r.text()
    tk = await phone.ticket(tk.id)
    assert (tk.state, tk.assignee_id) == ("claimed", engineer)
    claim = [e for e in await phone.events(tk.id) if e.action == "claim"]
    assert claim[0].detail == {"via": "phone"}
    told = [m.message["text"] for m in await phone.outbox() if m.to_id == "cust_wang" and m.message["type"] == "text"]
    assert any("已接单" in text for text in told)


async def test_keypad_2_escalates_to_the_next_step_now(phone):
    tk = await phone.page()
    r = await phone.post(1, "gather", {"CallSid": "CA" + "1".zfill(32), "Digits": "2"})
    assert "已升级到下一级" in await r.text()
    assert len(await phone.esc_cards_to("director_sun")) == 1  # at 10 minutes, not 20
    assert [e.action for e in await phone.events(tk.id)][-2:] == ["escalate", "escalation"]
    phone.clock.advance(minutes=15)
    assert await phone.sweep() == 0
    # The same key again (a second Gather of the same call): nothing more.
    r = await phone.post(1, "gather", {"CallSid": "CA" + "1".zfill(32), "Digits": "2"})
    assert len(await phone.esc_cards_to("director_sun")) == 1


async def test_another_key_asks_again_and_changes_nothing(phone):
    tk = await phone.page()
    before = await phone.events(tk.id)
    r = await phone.post(1, "gather", {"CallSid": "CA" + "1".zfill(32), "Digits": "7"})
    body = await r.text()
    assert r.status == 200 and "无效按键" in body and 'numDigits="1"' in body
    assert await phone.events(tk.id) == before
    assert not await phone.processed()


@pytest.mark.parametrize("how", ["forged", "missing", "tampered"])
async def test_a_bad_signature_is_refused_and_changes_nothing(phone, how):
    tk = await phone.page()
    before = await phone.events(tk.id)
    params = {"CallSid": "CA" + "1".zfill(32), "Digits": "1"}
    if how == "forged":
        r = await phone.post(1, "gather", params, signature="bm90IGEgc2lnbmF0dXJl")
    elif how == "missing":
        r = await phone.client.post("/callbacks/twilio/voice?call=1&event=gather", data=params)
    else:  # signed for "2", sent with "1"
        r = await phone.post(1, "gather", params, signed_params={**params, "Digits": "2"})
    assert r.status == 403
    assert await phone.events(tk.id) == before
    assert not await phone.processed()
    assert (await phone.ticket(tk.id)).state == "new"


async def test_bad_requests(phone):
    await phone.page()
    r = await phone.post(1, "whatever", {"CallSid": "x"})
    assert r.status == 400
    big = {"CallSid": "x", "Junk": "a" * 5000}
    r = await phone.post(1, "gather", big)
    assert r.status == 413


@pytest.mark.parametrize("status", ["no-answer", "busy", "completed"])
async def test_an_unanswered_call_moves_to_the_next_step_at_once(phone, status):
    tk = await phone.page()
    r = await phone.post(1, "status", {"CallSid": "CA" + "1".zfill(32), "CallStatus": status})
    assert r.status == 200
    assert len(await phone.esc_cards_to("director_sun")) == 1
    fired = [e for e in await phone.events(tk.id) if e.action == "escalation"]
    assert [e.detail["via"] for e in fired] == ["sweep", "no_answer"]
    assert "未接听电话" in (await phone.esc_cards_to("director_sun"))[0]["subtitle"]
    # Twilio retrying the callback changes nothing more.
    await phone.post(1, "status", {"CallSid": "CA" + "1".zfill(32), "CallStatus": status})
    assert len(await phone.esc_cards_to("director_sun")) == 1
    assert (await phone.calls())[0].status == status


async def test_a_call_answered_with_a_key_does_not_move_on_when_it_ends(phone):
    await phone.page()
    await phone.post(1, "gather", {"CallSid": "CA" + "1".zfill(32), "Digits": "1"})
    await phone.post(1, "status", {"CallSid": "CA" + "1".zfill(32), "CallStatus": "completed"})
    assert not await phone.esc_cards_to("director_sun")


async def test_a_stale_call_does_nothing(phone):
    tk = await phone.page()
    await phone.say("eng_zhang", f"认领 {tk.number}")  # claimed while the phone rang
    await phone.post(1, "status", {"CallSid": "CA" + "1".zfill(32), "CallStatus": "no-answer"})
    assert not await phone.esc_cards_to("director_sun")
    r = await phone.post(1, "gather", {"CallSid": "CA" + "1".zfill(32), "Digits": "2"})
    assert "已经处理过了" in await r.text()
    assert not await phone.esc_cards_to("director_sun")


async def test_at_most_three_calls_in_fifteen_minutes_then_sms(phone):
    for i in range(4):
        await phone.report(f"{i + 1}号线水泵漏水停机了 #P0")
    phone.clock.advance(minutes=10)
    assert await phone.sweep() == 4
    await phone.rt.outbox.drain()
    assert len(phone.fake.calls()) == 3
    (sms,) = phone.fake.sms()
    assert sms["To"] == "+8613800000004" and sms["Body"].startswith("【RelayDesk】")
    statuses = [(c.kind, c.status) for c in await phone.calls()]
    assert statuses.count(("call", "sent")) == 3 and ("call", "throttled") in statuses
    # The throttle counts real time (the outbox's clock): rows older than the window do not count.
    async with phone.rt.db.session() as s:
        for c in (await s.exec(select(PhoneCall))).all():
            c.created_at = c.created_at.replace(year=2000)
            s.add(c)
    await phone.report("5号线水泵漏水停机了 #P0")
    phone.clock.advance(minutes=10)
    assert await phone.sweep() == 5  # its lead call, and the first four's director cards (20 min)
    await phone.rt.outbox.drain()
    assert len(phone.fake.calls()) == 4


async def test_a_call_twilio_refuses_becomes_an_sms(phone):
    phone.fake.fail_calls.append((400, {"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}))
    await phone.page()
    assert len(phone.fake.calls()) == 1 and len(phone.fake.sms()) == 1
    assert [(c.kind, c.status) for c in await phone.calls()] == [("call", "failed"), ("sms", "sent")]


async def test_a_twilio_outage_is_retried_by_the_outbox(phone):
    phone.fake.fail_calls.append((503, {"code": 20500, "message": "Service unavailable", "status": 503}))
    await phone.page()
    async with phone.rt.db.session() as s:
        row = (await s.exec(select(OutboxMessage).where(OutboxMessage.channel == "phone"))).one()
    assert (row.status, row.attempts) == ("pending", 1) and "503" in row.last_error
    assert not phone.fake.sms()
    async with phone.rt.db.session() as s:
        row = await s.get(OutboxMessage, row.id)
        row.next_attempt_at = row.created_at
        s.add(row)
    await phone.rt.outbox.drain()
    assert len(phone.fake.calls()) == 2
    assert [(c.kind, c.status) for c in await phone.calls()] == [("call", "sent")]  # one row, placed once
