"""Outbound webhooks: signed per Standard Webhooks (checked with the
`standardwebhooks` package by a local receiver), delivered in order through
the outbox after the receiver was down, refused towards private addresses."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from aiohttp import web
from sqlmodel import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.webhooks import PublicResolver, check_url
from api_support import auth, demo_config, quick_token
from app.web import RUNTIME, create_app
from storage.models import OutboxMessage

# How long the receiver stays down (the minute; shortened here).
DOWN_SECONDS = float(os.environ.get("RELAYDESK_TEST_WEBHOOK_DOWN", "2"))
FAST_RETRIES = dict(RELAYDESK_OUTBOX__BASE_DELAY="100ms", RELAYDESK_OUTBOX__MAX_DELAY="500ms",
                    RELAYDESK_OUTBOX__MAX_ATTEMPTS=10_000, RELAYDESK_OUTBOX__POLL_INTERVAL="100ms")


class Receiver:
    """Another system's endpoint: verifies every delivery, can be taken down."""

    def __init__(self):
        self.secret: str | None = None
        self.down = False
        self.events: list[dict] = []
        self.ids: list[str] = []
        self.refused = 0
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            self.refused += 1
            return web.Response(status=503)
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        self.ids.append(request.headers["webhook-id"])
        self.events.append(payload)
        return web.Response(status=204)


async def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def receiver(aiohttp_server):
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/hooks"))
    return r


async def test_signed_events_arrive_in_order_after_the_receiver_was_down(tmp_path, database_url, aiohttp_client,
                                                                          receiver):
    config, _ = demo_config(tmp_path, database_url, RELAYDESK_WEBHOOKS__ALLOW_PRIVATE="true", **FAST_RETRIES)
    app = create_app(config)  # with its workers: the outbox delivers on its own
    client = await aiohttp_client(app)
    token = await quick_token(app[RUNTIME].db, "crm", "tickets:read,tickets:write,webhooks:write")
    r = await client.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": ["*"]}, headers=auth(token))
    assert r.status == 201, await r.text()
    sub = await r.json()
    assert sub["secret"].startswith("whsec_")
    receiver.secret = sub["secret"]
    listed = (await (await client.get("/api/v1/webhooks", headers=auth(token))).json())["items"]
    assert [s["id"] for s in listed] == [sub["id"]] and listed[0]["secret"] is None  # shown once

    receiver.down = True
    # A software report: 完工 needs a note but no site photos, so the test stays on delivery.
    r = await client.post("/api/v1/tickets", json={"text": "MES系统登录不了", "reporter_phone": "13800000001"},
                          headers=auth(token, **{"Idempotency-Key": "w1"}))
    number = (await r.json())["number"]
    for path, body in (("claim", {"actor": "eng_zhang"}), ("stage", {"actor": "eng_zhang", "stage": "depart"}),
                       ("comment", {"actor": "eng_zhang", "text": "备件：密封圈 2 个"}),
                       ("resolve", {"actor": "eng_zhang", "note": "更换密封圈，试机正常"})):
        r = await client.post(f"/api/v1/tickets/{number}/{path}", json=body, headers=auth(token))
        assert r.status == 200, await r.text()
    await asyncio.sleep(DOWN_SECONDS)
    assert receiver.refused >= 2 and not receiver.events  # retried while down, none skipped ahead
    log = (await (await client.get(f"/api/v1/webhooks/{sub['id']}/deliveries", headers=auth(token))).json())["items"]
    assert len(log) == 5 and log[-1]["event_type"] == "ticket.created"
    assert log[-1]["status"] in ("pending", "sending") and log[-1]["attempts"] >= 2 and "HTTP 503" in log[-1]["last_error"]

    receiver.down = False
    await wait_for(lambda: len(receiver.events) == 5)
    assert [e["type"] for e in receiver.events] == ["ticket.created", "ticket.claim", "ticket.depart",
                                                    "ticket.note", "ticket.resolve"]
    assert receiver.bad_signatures == 0 and len(set(receiver.ids)) == 5
    assert all(e["data"]["ticket"]["number"] == number for e in receiver.events)
    claim = receiver.events[1]["data"]["change"]
    assert (claim["from_state"], claim["to_state"], claim["actor"]["id"], claim["via"], claim["token"]) == \
        ("new", "claimed", "eng_zhang", "api", "crm")
    report = receiver.events[-1]["data"]["report"]
    assert report["engineer"]["name"] == "张工" and report["parts"] == ["密封圈 2 个", "密封圈"]
    assert report["resolution"] == "更换密封圈，试机正常"
    log = (await (await client.get(f"/api/v1/webhooks/{sub['id']}/deliveries", headers=auth(token))).json())["items"]
    assert {d["status"] for d in log} == {"sent"}

    # Changes made in chat are published the same way.
    from bot.events import Address, InboundEvent

    await app[RUNTIME].bot.handle(InboundEvent(platform="playground", event_id="rate-1", sender_id="cust_wang",
                                               conversation=Address("playground", "user", "cust_wang"),
                                               kind="text", text="评价 5"))
    await wait_for(lambda: len(receiver.events) == 6)
    rated = receiver.events[-1]
    assert rated["type"] == "ticket.rate" and rated["data"]["change"]["via"] == "text"
    assert rated["data"]["ticket"]["rating"] == 5 and rated["data"]["ticket"]["state"] == "closed"

    # The signature covers the body: a receiver would reject a tampered copy.
    r = await client.delete(f"/api/v1/webhooks/{sub['id']}", headers=auth(token))
    assert r.status == 204
    r = await client.get(f"/api/v1/webhooks/{sub['id']}/deliveries", headers=auth(token))
    assert r.status == 404


async def test_signature_verification_rejects_tampering():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    from api.webhooks import Signer
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    body = json.dumps({"type": "ticket.claim"})
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Signer(secret).sign("msg_1", now, body)}
    assert Webhook(secret).verify(body, headers) == {"type": "ticket.claim"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("claim", "cancel"), headers)


async def test_private_and_loopback_receivers_are_refused(tmp_path, sqlite_url, aiohttp_client, receiver):
    config, _ = demo_config(tmp_path, sqlite_url, **FAST_RETRIES)
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    token = await quick_token(rt.db, "crm", "tickets:write,webhooks:write")
    for url in (receiver.url, "http://localhost:8080/x", "http://10.1.2.3/x", "http://192.168.1.10/x",
                "http://169.254.169.254/latest/meta-data", "http://[::1]:80/x", "http://[::ffff:127.0.0.1]/x",
                "http://user:pw@example.com/x"):
        r = await client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=auth(token))
        assert r.status == 422, url
        assert (await r.json())["type"] == "urn:relaydesk:problem:unsafe-url"
    r = await client.post("/api/v1/webhooks", json={"url": "ftp://example.com/x", "event_types": ["*"]},
                          headers=auth(token))
    assert r.status == 422
    assert check_url("https://hooks.example.com/relaydesk", allow_private=False) is None
    # A name that resolves to loopback is refused when sending (DNS rebinding).
    with pytest.raises(OSError, match="loopback"):
        await PublicResolver().resolve("localhost", 80)

    # A subscription made while private addresses were allowed fails for good, visibly.
    from storage.integration import WebhookSubscription

    async with rt.db.session() as s:
        s.add(WebhookSubscription(system="crm", url=receiver.url, event_types=["*"], secret="whsec_" + "A" * 32))
    r = await client.post("/api/v1/tickets", json={"text": "空压机异响"}, headers=auth(token, **{"Idempotency-Key": "x"}))
    assert r.status == 201
    await rt.outbox.drain()
    async with rt.db.session() as s:
        rows = (await s.exec(select(OutboxMessage).where(OutboxMessage.channel == "webhook",
                                                         OutboxMessage.to_kind == "group"))).all()
    assert [(row.status, "loopback" in (row.last_error or "")) for row in rows] == [("failed", True)]
    assert receiver.refused == 0 and not receiver.events


async def test_subscription_ids_are_ascii_digits(tmp_path, database_url, aiohttp_client):
    config, _ = demo_config(tmp_path, database_url)
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    token = await quick_token(app[RUNTIME].db, "crm", "webhooks:write")
    for raw in ("%C2%B9", "1.5", "-1", "9999999999", "99999999999999999999"):  # "¹" passes str.isdigit
        r = await client.get(f"/api/v1/webhooks/{raw}/deliveries", headers=auth(token))
        assert r.status == 404, raw


async def test_verification_states_reach_the_api_and_the_webhooks(tmp_path, database_url, aiohttp_client,
                                                                  aiohttp_server):
    """With a completion check configured, the API's resolve leaves the ticket `verifying`
    until the check passes; each step is published to subscribers."""
    health = {"status": 503}

    async def check(request):
        return web.Response(status=health["status"])

    target = web.Application()
    target.router.add_get("/health/{number}", check)
    server = await aiohttp_server(target)
    config, _ = demo_config(tmp_path, database_url, f"""
[[probes]]
category = "software"
url = "http://127.0.0.1:{server.port}/health/{{number}}"
expect_status = 200
retries = 0
""", RELAYDESK_WEBHOOKS__ALLOW_PRIVATE="true")
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    token = await quick_token(rt.db, "crm", "tickets:read,tickets:write,webhooks:write")
    r = await client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hooks", "event_types": [
        "ticket.verify_submitted", "ticket.verify_failed", "ticket.resolve"]}, headers=auth(token))
    assert r.status == 201, await r.text()
    r = await client.post("/api/v1/tickets", json={"text": "MES系统登录不了"}, headers=auth(token, **{"Idempotency-Key": "v1"}))
    number = (await r.json())["number"]
    act = lambda path, **body: client.post(f"/api/v1/tickets/{number}/{path}",  # noqa: E731
                                           json={"actor": "eng_zhang", **body}, headers=auth(token))
    assert (await act("claim")).status == 200
    r = await act("resolve", note="重置了账号权限")
    body = await r.json()
    assert r.status == 200 and body["ticket"]["state"] == "verifying" and body["ticket"]["state_name"] == "待验证"
    listed = (await (await client.get("/api/v1/tickets?state=verifying", headers=auth(token))).json())["items"]
    assert [t["number"] for t in listed] == [number]
    assert await rt.escalation.run_verifications() == 1  # 503: still verifying
    assert (await (await client.get(f"/api/v1/tickets/{number}", headers=auth(token))).json())["state"] == "verifying"
    health["status"] = 200
    assert (await act("resolve", note="重置了账号权限，复测正常")).status == 200
    assert await rt.escalation.run_verifications() == 1
    got = await (await client.get(f"/api/v1/tickets/{number}", headers=auth(token))).json()
    assert (got["state"], got["resolution"]) == ("resolved", "重置了账号权限，复测正常")

    async with rt.db.session() as s:
        rows = (await s.exec(select(OutboxMessage).where(OutboxMessage.channel == "webhook",
                                                         OutboxMessage.to_kind == "group")  # subscriptions
                             .order_by(OutboxMessage.id))).all()
    sent = [json.dumps(r.message, ensure_ascii=False) for r in rows]
    order = ["ticket.verify_submitted", "ticket.verify_failed", "ticket.verify_submitted", "ticket.resolve"]
    assert [[t for t in order if f'"{t}"' in m][:1] for m in sent] == [[t] for t in order], sent
