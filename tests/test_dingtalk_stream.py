"""DingTalk Stream mode against a local fake gateway that drops connections and redelivers.

The fake speaks the gateway's protocol: POST /v1.0/gateway/connections/open ->
{endpoint, ticket}; a WebSocket on which it pushes JSON frames (type, headers
with messageId and topic, data) and reads ACK frames; every frame not
acknowledged when a connection ends is pushed again on the next one. It also
serves the DingTalk API the bot sends through (bench/platforms/dingtalk.py).

The outage test waits RELAYDESK_TEST_OUTAGE seconds (default 3); the realistic
run is `RELAYDESK_TEST_OUTAGE=60 .venv/bin/python -m pytest -q tests/test_dingtalk_stream.py -k outage`.
"""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from aiohttp import WSMsgType, web
from sqlalchemy import func
from sqlmodel import select

from bench.platforms.dingtalk import fake_api_routes
from bot.channels.dingtalk.stream import STREAM_CARD, STREAM_ROBOT
from bot.channels.shared.stream import LinkTimings
from bot.core import states as st
from storage.models import CardAction, InboxEvent, ProcessedEvent, Ticket
from conftest import reset_postgres
from stream_support import (assert_one_ticket_each, count, drain_together, inbound, start_process, stream_config,
                            two_processes)
from support import directory_toml

OUTAGE = float(os.environ.get("RELAYDESK_TEST_OUTAGE", "3"))
FAST = LinkTimings(connect_timeout=2, idle_timeout=5, heartbeat=1, send_timeout=2, backoff_min=0.05,
                   backoff_max=0.5)
PEOPLE = {"eng_zhang": "u_zhang", "eng_li": "u_li", "lead_zhao": "u_zhao", "director_sun": "u_sun"}


class FakeGateway:
    """The DingTalk stream gateway (and API) on loopback."""

    def __init__(self) -> None:
        self.pending: dict[str, dict] = {}  # messageId -> frame, until acknowledged
        self.acks: dict[str, dict] = {}
        self.deliveries = 0
        self.connections = 0
        # Drop a connection right after sending its `drop_after`-th frame (before that frame's
        # acknowledgement can arrive), `drops_left` times.
        self.drop_after: int | None = None
        self.drops_left = 0
        self.down_until = 0.0
        self.opened: list[dict] = []
        self.api_calls: list[tuple[str, bytes]] = []
        self._ws: web.WebSocketResponse | None = None
        self._new = asyncio.Event()
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1.0/gateway/connections/open", self.open)
        app.router.add_get("/gw", self.socket)
        app.router.add_routes(fake_api_routes(lambda path, body: self.api_calls.append((path, body))))
        return app

    async def open(self, request: web.Request) -> web.Response:
        if time.monotonic() < self.down_until:
            return web.json_response({"code": "ServiceUnavailable"}, status=503)
        self.opened.append(await request.json())
        return web.json_response({"endpoint": f"ws://{request.host}/gw", "ticket": f"t{len(self.opened)}"})

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        assert request.query["ticket"].startswith("t")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        self._ws = ws
        pusher = asyncio.create_task(self._push(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    ack = json.loads(msg.data)
                    mid = ack["headers"]["messageId"]
                    if ack["code"] == 200 and mid in self.pending:
                        self.acks[mid] = ack
                        del self.pending[mid]
        finally:
            pusher.cancel()
            if self._ws is ws:
                self._ws = None
        return ws

    async def _push(self, ws: web.WebSocketResponse) -> None:
        sent: set[str] = set()
        while not ws.closed:
            for mid, frame in list(self.pending.items()):
                if mid in sent or mid not in self.pending:
                    continue
                await ws.send_str(json.dumps(frame))
                sent.add(mid)
                self.deliveries += 1
                if self.drop_after is not None and self.drops_left and len(sent) >= self.drop_after:
                    self.drops_left -= 1
                    await ws.close()  # mid-message: the last frame's acknowledgement never arrives
                    return
                await asyncio.sleep(0.002)  # a gateway paces its pushes
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.2)
            except asyncio.TimeoutError:
                pass

    def push(self, topic: str, data: dict, kind: str = "CALLBACK") -> str:
        mid = f"msg-{len(self.pending) + len(self.acks)}-{time.monotonic_ns()}"
        self.pending[mid] = {"specVersion": "1.0", "type": kind, "headers": {
            "appId": "a", "connectionId": "c", "contentType": "application/json", "messageId": mid,
            "time": str(int(time.time() * 1000)), "topic": topic}, "data": json.dumps(data, ensure_ascii=False)}
        self._new.set()
        return mid

    async def outage(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        if self._ws is not None:
            await self._ws.close()

    async def acked(self, mids, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while any(m not in self.acks for m in mids):
            assert time.monotonic() < deadline, f"{sum(m not in self.acks for m in mids)} frames never acknowledged"
            await asyncio.sleep(0.05)


def robot_message(i: int, text: str = "3号线水泵不出水了，整条线停着") -> dict:
    now_ms = int(time.time() * 1000)
    return {"msgtype": "text", "text": {"content": f"{text} #{i}"}, "msgId": f"msgSTREAM{i:06d}==",
            "createAt": now_ms, "conversationType": "1", "conversationId": f"cid1on1{i}==",
            "senderId": f"$:LWCP_v1:$c{i}", "senderStaffId": f"cust_{i}", "senderNick": f"客户{i}",
            "chatbotUserId": "$:LWCP_v1:$bot", "robotCode": "dingstream"}


@pytest.fixture
async def gateway(aiohttp_server):
    gw = FakeGateway()
    server = await aiohttp_server(gw.app())
    gw.base = str(server.make_url("")).rstrip("/")
    return gw


def section(gateway) -> str:
    """The channel's stream-mode config section, pointed at the fake gateway."""
    return f'''[dingtalk]
mode = "stream"
app_key = "dingstream"
app_secret = "stream-secret"
api_base = "{gateway.base}"
oapi_base = "{gateway.base}"
card_template_id = "tpl.schema"
engineers_chat = "cidEngineers=="
'''


@pytest.fixture
async def bot(gateway, tmp_path, aiohttp_client, sqlite_url):
    text = stream_config(sqlite_url, section(gateway), directory_toml("dingtalk", PEOPLE, "cidEngineers=="))
    return await start_process(text, "dingtalk", FAST, tmp_path, aiohttp_client)


async def stream_state(client) -> str:
    body = await (await client.get("/healthz")).json()
    return body["channel_state"]["dingtalk"]["stream"]["state"]


async def test_stream_mode_serves_no_callback_route_and_subscribes_both_topics(bot, gateway):
    client, rt = bot
    assert (await client.post("/callbacks/dingtalk", data=b"{}")).status == 404
    mid = gateway.push(STREAM_ROBOT, robot_message(0))
    await gateway.acked([mid])
    assert {s["topic"] for s in gateway.opened[0]["subscriptions"]} == {STREAM_ROBOT, STREAM_CARD}
    assert gateway.opened[0]["clientId"] == "dingstream"


async def test_a_report_and_a_claim_through_the_gateway(bot, gateway):
    client, rt = bot
    await gateway.acked([gateway.push(STREAM_ROBOT, robot_message(1))])
    assert await count(rt, InboxEvent) == 1  # acknowledged only once recorded
    await rt.inbox.drain()
    await rt.outbox.drain()
    created = [json.loads(b) for p, b in gateway.api_calls if p == "/v1.0/card/instances/createAndDeliver"]
    engineer_card = next(c for c in created if c["cardData"]["cardParamMap"]["kind"] == "engineer")
    assert engineer_card["callbackType"] == "STREAM" and "callbackRouteKey" not in engineer_card
    async with rt.db.session() as s:
        ticket = (await s.exec(select(Ticket))).one()
        token = (await s.exec(select(CardAction.token).where(CardAction.ticket_id == ticket.id,
                                                             CardAction.action == "claim"))).one()
    click = {"type": "actionCallback", "outTrackId": engineer_card["outTrackId"], "userId": "u_zhang",
             "corpId": "dingcorp", "content": json.dumps({"cardPrivateData": {"params": {"value": token}}})}
    mid = gateway.push(STREAM_CARD, click)
    await gateway.acked([mid])
    response = json.loads(gateway.acks[mid]["data"])["response"]
    assert response["cardData"]["cardParamMap"]["kind"] == "engineer"  # the card as it is now, on the same connection
    async with rt.db.session() as s:
        ticket = await s.get(Ticket, ticket.id)
    assert ticket.state == st.CLAIMED and ticket.assignee_id == "eng_zhang"


async def test_ten_drops_during_two_hundred_reports_make_two_hundred_tickets(bot, gateway):
    client, rt = bot
    gateway.drop_after, gateway.drops_left = 15, 10
    mids = [gateway.push(STREAM_ROBOT, robot_message(i)) for i in range(200)]
    await asyncio.sleep(0)
    await gateway.acked(mids, timeout=120)
    assert gateway.drops_left == 0 and gateway.connections >= 11
    assert gateway.deliveries > 200  # what was unacknowledged at a drop came again
    assert await count(rt, InboxEvent) == 200
    while await rt.inbox.drain():
        pass
    async with rt.db.session() as s:
        reporters = (await s.exec(select(Ticket.reporter_id))).all()
    assert len(reporters) == 200 and len(set(reporters)) == 200


async def test_gateway_outage_reconnects_by_itself_and_healthz_tells(bot, gateway, client_timeout=None):
    client, rt = bot
    await gateway.acked([gateway.push(STREAM_ROBOT, robot_message(1))])
    assert await stream_state(client) == "up"
    await gateway.outage(OUTAGE)
    start = time.monotonic()
    seen = set()
    while time.monotonic() - start < OUTAGE:
        seen.add(await stream_state(client))
        await asyncio.sleep(0.1)
    assert "up" not in seen and seen <= {"down", "connecting"}
    mid = gateway.push(STREAM_ROBOT, robot_message(2))
    await gateway.acked([mid], timeout=FAST.backoff_max * 4 + 10)
    assert await stream_state(client) == "up"
    assert await count(rt, ProcessedEvent) == 2


# ---- two processes on one stream app ---------------------------------------------


@pytest.mark.postgres
async def test_two_processes_sharing_the_app_make_each_ticket_once_and_lose_none(
        gateway, tmp_path, aiohttp_client, pg_database_url):
    """Two bot processes (two Runtimes on one PostgreSQL) hold a connection each to the same
    app; the fake pushes every frame to both connections, drops connections, and one process
    stops halfway. Every report is acknowledged, recorded once and makes one ticket."""
    await reset_postgres(pg_database_url)
    text = stream_config(pg_database_url, section(gateway), directory_toml("dingtalk", PEOPLE, "cidEngineers=="))
    clients, runtimes = await two_processes(text, "dingtalk", FAST, gateway, tmp_path, aiohttp_client)
    gateway.drop_after, gateway.drops_left = 15, 6

    first = [gateway.push(STREAM_ROBOT, robot_message(i)) for i in range(60)]
    await gateway.acked(first, timeout=120)
    # Each frame reached both processes: one recorded it, the other found it recorded.
    assert sum(inbound(rt, "dingtalk", "accepted") for rt in runtimes) == 60
    assert sum(inbound(rt, "dingtalk", "duplicate") for rt in runtimes) > 0
    await drain_together(runtimes)  # both inbox workers apply at once
    await clients[0].close()  # the first process stops; the second carries on alone
    rest = [gateway.push(STREAM_ROBOT, robot_message(i)) for i in range(60, 120)]
    await gateway.acked(rest, timeout=120)

    await assert_one_ticket_each(runtimes[1], 120)  # the survivor saw every report
