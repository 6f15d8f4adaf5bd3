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
    cfg = make_config(RELAYDESK_SERVER__MAX_BODY_BYTES="2048")
    client = await aiohttp_client(create_app(cfg, workers=False))
    r = await client.post("/playground/api/send", data=b"{" + b" " * 5000 + b"}",
                          headers={"Content-Type": "application/json"})
    assert r.status == 413


async def test_unknown_path_is_404(make_config, aiohttp_client):
    client = await aiohttp_client(create_app(make_config(), workers=False))
    assert (await client.get("/callbacks/nope")).status == 404
