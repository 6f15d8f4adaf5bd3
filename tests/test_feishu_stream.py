"""Feishu's long connection against a local fake gateway that drops connections and redelivers.

The fake speaks the protocol of Feishu's official SDKs: POST /callback/ws/endpoint
-> {code: 0, data: {URL (with device_id, service_id), ClientConfig}}; binary
pbbp2 frames on the WebSocket: data frames (method 1, headers type=event,
message_id, sum, seq, trace_id, payload = the event JSON) answered with the same
frame whose payload is {"code": 200, "data": base64(answer)}; ping control frames
answered with pong. Unanswered events are pushed again on the next connection.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from aiohttp import WSMsgType, web
from sqlalchemy import func
from sqlmodel import select

from bench.platforms.feishu import fake_api_routes
from bot.channels.feishu.frame import CONTROL, DATA, Frame
from bot.channels.shared.stream import LinkTimings
from bot.core import states as st
from storage.models import CardAction, InboxEvent, Ticket
from conftest import reset_postgres
from stream_support import (assert_one_ticket_each, count, drain_together, inbound, start_process, stream_config,
                            two_processes)
from support import directory_toml

FAST = LinkTimings(connect_timeout=2, idle_timeout=5, heartbeat=0.5, send_timeout=2, backoff_min=0.05,
                   backoff_max=0.5)
PEOPLE = {"eng_zhang": "ou_zhang", "eng_li": "ou_li", "lead_zhao": "ou_zhao", "director_sun": "ou_sun"}
SERVICE = 7


class FakeLongConnection:
    def __init__(self) -> None:
        self.pending: dict[str, bytes] = {}  # message_id -> event JSON, until answered
        self.answers: dict[str, dict] = {}
        self.pings = 0
        self.connections = 0
        self.deliveries = 0
        self.drop_after: int | None = None
        self.drops_left = 0
        self._new = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/callback/ws/endpoint", self.endpoint)
        app.router.add_get("/ws", self.socket)
        app.router.add_routes(fake_api_routes(lambda path, body: None))
        return app

    async def endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert body == {"AppID": "cli_stream", "AppSecret": "stream-secret"}
        return web.json_response({"code": 0, "msg": "ok", "data": {
            "URL": f"ws://{request.host}/ws?device_id=d1&service_id={SERVICE}",
            "ClientConfig": {"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30,
                             "PingInterval": 120}}})

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        pusher = asyncio.create_task(self._push(ws))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                frame = Frame.decode(msg.data)
                if frame.method == CONTROL and frame.header("type") == "ping":
                    assert frame.service == SERVICE
                    self.pings += 1
                    await ws.send_bytes(Frame(service=SERVICE, method=CONTROL, headers=[("type", "pong")]).encode())
                elif frame.method == DATA:
                    mid = frame.header("message_id")
                    answer = json.loads(frame.payload)
                    if answer["code"] == 200 and mid in self.pending:
                        self.answers[mid] = answer
                        del self.pending[mid]
        finally:
            pusher.cancel()
        return ws

    async def _push(self, ws: web.WebSocketResponse) -> None:
        sent: set[str] = set()
        while not ws.closed:
            for mid, payload in list(self.pending.items()):
                if mid in sent or mid not in self.pending:
                    continue
                frame = Frame(seq_id=len(sent), service=SERVICE, method=DATA, payload=payload, headers=[
                    ("type", "event"), ("message_id", mid), ("sum", "1"), ("seq", "0"), ("trace_id", "t")])
                await ws.send_bytes(frame.encode())
                sent.add(mid)
                self.deliveries += 1
                if self.drop_after is not None and self.drops_left and len(sent) >= self.drop_after:
                    self.drops_left -= 1
                    await ws.close()
                    return
                await asyncio.sleep(0.002)
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.2)
            except asyncio.TimeoutError:
                pass

    def push(self, event: dict) -> str:
        mid = f"m{len(self.pending) + len(self.answers)}-{time.monotonic_ns()}"
        self.pending[mid] = json.dumps(event, ensure_ascii=False).encode()
        self._new.set()
        return mid

    async def answered(self, mids, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while any(m not in self.answers for m in mids):
            assert time.monotonic() < deadline, f"{sum(m not in self.answers for m in mids)} events unanswered"
            await asyncio.sleep(0.05)


def header(event_id: str, event_type: str) -> dict:
    return {"event_id": event_id, "event_type": event_type, "token": "", "create_time": str(int(time.time() * 1000)),
            "app_id": "cli_stream", "tenant_key": "tk"}


def report(i: int) -> dict:
    return {"schema": "2.0", "header": header(f"ev{i}", "im.message.receive_v1"), "event": {
        "sender": {"sender_id": {"open_id": f"ou_cust{i}"}, "sender_type": "user"},
        "message": {"message_id": f"om_{i}", "chat_id": f"oc_p2p{i}", "chat_type": "p2p", "message_type": "text",
                    "content": json.dumps({"text": f"3号线水泵不出水了 #{i}"}, ensure_ascii=False)}}}


@pytest.fixture
async def gateway(aiohttp_server):
    fake = FakeLongConnection()
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


def section(gateway) -> str:
    """The channel's stream-mode config section, pointed at the fake gateway."""
    return f'''[feishu]
mode = "stream"
app_id = "cli_stream"
app_secret = "stream-secret"
api_base = "{gateway.base}"
bot_open_id = "ou_bot"
engineers_chat = "oc_engineers"
'''


@pytest.fixture
async def bot(gateway, tmp_path, aiohttp_client, sqlite_url):
    text = stream_config(sqlite_url, section(gateway), directory_toml("feishu", PEOPLE, "oc_engineers"))
    return await start_process(text, "feishu", FAST, tmp_path, aiohttp_client)


async def test_a_report_and_a_claim_over_the_long_connection(bot, gateway):
    client, rt = bot
    assert (await client.post("/callbacks/feishu", data=b"{}")).status == 404  # no public URL needed
    await gateway.answered([gateway.push(report(1))])
    assert await count(rt, InboxEvent) == 1
    await rt.inbox.drain()
    async with rt.db.session() as s:
        ticket = (await s.exec(select(Ticket))).one()
        token = (await s.exec(select(CardAction.token).where(CardAction.ticket_id == ticket.id,
                                                             CardAction.action == "claim"))).one()
    click = {"schema": "2.0", "header": header("click1", "card.action.trigger"), "event": {
        "operator": {"open_id": "ou_zhang"}, "token": "c-1", "action": {"value": {"token": token}, "tag": "button"},
        "context": {"open_message_id": "om_card1", "open_chat_id": "oc_engineers"}}}
    mid = gateway.push(click)
    await gateway.answered([mid])
    answer = json.loads(base64.b64decode(gateway.answers[mid]["data"]))
    assert answer["toast"]["content"] and answer["card"]["type"] == "raw"  # answered on the same connection
    async with rt.db.session() as s:
        ticket = await s.get(Ticket, ticket.id)
    assert ticket.state == st.CLAIMED and ticket.assignee_id == "eng_zhang"
    assert gateway.pings >= 1
    state = (await (await client.get("/healthz")).json())["channel_state"]["feishu"]["stream"]["state"]
    assert state == "up"


async def test_ten_drops_during_two_hundred_reports_make_two_hundred_tickets(bot, gateway):
    client, rt = bot
    gateway.drop_after, gateway.drops_left = 15, 10
    mids = [gateway.push(report(i)) for i in range(200)]
    await gateway.answered(mids, timeout=120)
    assert gateway.drops_left == 0 and gateway.connections >= 11 and gateway.deliveries > 200
    assert await count(rt, InboxEvent) == 200
    while await rt.inbox.drain():
        pass
    async with rt.db.session() as s:
        reporters = (await s.exec(select(Ticket.reporter_id))).all()
    assert len(reporters) == 200 and len(set(reporters)) == 200


# ---- two processes on one app ----------------------------------------------------


@pytest.mark.postgres
async def test_two_processes_sharing_the_app_make_each_ticket_once_and_lose_none(
        gateway, tmp_path, aiohttp_client, pg_database_url):
    """Two bot processes (two Runtimes on one PostgreSQL) hold a long connection each to the
    same app; the fake pushes every event to both, drops connections, and one process stops
    halfway. Every event is answered, recorded once and makes one ticket."""
    await reset_postgres(pg_database_url)
    text = stream_config(pg_database_url, section(gateway), directory_toml("feishu", PEOPLE, "oc_engineers"))
    clients, runtimes = await two_processes(text, "feishu", FAST, gateway, tmp_path, aiohttp_client)
    gateway.drop_after, gateway.drops_left = 15, 6

    first = [gateway.push(report(i)) for i in range(60)]
    await gateway.answered(first, timeout=120)
    # Each event reached both processes: one recorded it, the other found it recorded.
    assert sum(inbound(rt, "feishu", "accepted") for rt in runtimes) == 60
    assert sum(inbound(rt, "feishu", "duplicate") for rt in runtimes) > 0
    await drain_together(runtimes)  # both inbox workers apply at once
    await clients[0].close()  # the first process stops; the second carries on alone
    rest = [gateway.push(report(i)) for i in range(60, 120)]
    await gateway.answered(rest, timeout=120)

    await assert_one_ticket_each(runtimes[1], 120)  # the survivor saw every report
