"""The HTTP surface every deployment has: health, metrics, body limits."""
import time

from app.web import create_app


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


async def test_healthz_is_503_while_database_writes_fail_and_200_after(make_config, database_url, aiohttp_client):
    from sqlalchemy import text

    from app.web import RUNTIME

    app = create_app(make_config(database_url), workers=False)
    client = await aiohttp_client(app)
    db = app[RUNTIME].db
    assert (await client.get("/healthz")).status == 200
    # Reads keep working; every write to the heartbeat table is refused, as by a full disk.
    if db.is_postgres:
        ddl = ["""CREATE OR REPLACE FUNCTION refuse_writes() RETURNS trigger AS $$
                  BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql""",
               """CREATE TRIGGER refuse_heartbeat BEFORE INSERT OR UPDATE ON process_heartbeat
                  FOR EACH ROW EXECUTE FUNCTION refuse_writes()"""]
        undo = ["DROP TRIGGER refuse_heartbeat ON process_heartbeat"]
    else:
        ddl = ["""CREATE TRIGGER refuse_heartbeat_i BEFORE INSERT ON process_heartbeat
                  BEGIN SELECT RAISE(ABORT, 'disk full'); END""",
               """CREATE TRIGGER refuse_heartbeat_u BEFORE UPDATE ON process_heartbeat
                  BEGIN SELECT RAISE(ABORT, 'disk full'); END"""]
        undo = ["DROP TRIGGER refuse_heartbeat_i", "DROP TRIGGER refuse_heartbeat_u"]
    async with db.engine.begin() as conn:
        for stmt in ddl:
            await conn.execute(text(stmt))
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503 and body["status"] == "error"
    assert "does not accept writes" in body["reasons"][0] and "disk full" in body["reasons"][0]
    async with db.engine.begin() as conn:
        for stmt in undo:
            await conn.execute(text(stmt))
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["channels"]["playground"] == "up"


async def test_healthz_names_a_worker_that_stopped_passing(make_config, aiohttp_client):
    from app.web import RUNTIME

    app = create_app(make_config(), workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    rt.heartbeat.workers = {"outbox": lambda: time.monotonic() - 45, "inbox": lambda: time.monotonic()}
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503 and len(body["reasons"]) == 1
    assert body["reasons"][0].startswith("outbox worker: no successful pass for 4")
    metrics = await (await client.get("/metrics")).text()
    assert 'relaydesk_channel_up{channel="playground"} 1.0' in metrics
