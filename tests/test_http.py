"""The HTTP surface every deployment has: health, metrics, body limits."""
from bot.app import create_app


async def test_healthz_and_metrics(make_config, aiohttp_client):
    client = await aiohttp_client(create_app(make_config(), workers=False))
    r = await client.get("/healthz")
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "ok" and "playground" in body["channels"]
    r = await client.get("/metrics")
    assert r.status == 200
    text = await r.text()
    assert "relaydesk_outbox_pending" in text and "relaydesk_inbound_events_total" in text


async def test_oversized_body_is_413_and_changes_nothing(make_config, aiohttp_client):
    client = await aiohttp_client(create_app(make_config(), workers=False))
    body = b'{"conversation": "user:cust_wang", "sender_id": "cust_wang", "client_id": "c1", "text": "' + \
        "漏水".encode() * 40000 + b'"}'
    r = await client.post("/playground/api/send", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 413
    r = await client.get("/playground/api/messages?after=0&wait=0")
    assert (await r.json())["messages"] == []


async def test_unknown_path_is_404(make_config, aiohttp_client):
    client = await aiohttp_client(create_app(make_config(), workers=False))
    assert (await client.get("/callbacks/nope")).status == 404
