"""The REST API end to end: a running bot, tokens from the command line, tickets
created and worked through the API with chat following; every kind of bad
request answered with a problem and nothing written.

Runs on SQLite and on the real PostgreSQL (the `database_url` fixture).
"""
from __future__ import annotations

import asyncio
import base64
import json

import pytest
from sqlmodel import func, select

from api_support import auth, cli, demo_config, new_token, photo_b64, quick_token
from app.web import RUNTIME, create_app
from storage.integration import ApiIdempotency, ApiToken
from storage.models import Attachment, PlaygroundMessage, Ticket, TicketEvent

PROBLEM = "application/problem+json"


class Bot:
    def __init__(self, client, rt, config_path, url):
        self.client, self.rt, self.config_path, self.url = client, rt, config_path, url

    async def token(self, name="crm", scopes="tickets:read,tickets:write"):
        return await quick_token(self.rt.db, name, scopes)

    async def count(self, model) -> int:
        async with self.rt.db.session() as s:
            return (await s.exec(select(func.count()).select_from(model))).one()

    async def chat(self, conversation: str) -> list[str]:
        await self.rt.outbox.drain()
        async with self.rt.db.session() as s:
            rows = (await s.exec(select(PlaygroundMessage).where(PlaygroundMessage.conversation == conversation)
                                 .order_by(PlaygroundMessage.id))).all()
        return [r.payload.get("html", "") for r in rows]


@pytest.fixture
async def bot(tmp_path, database_url, aiohttp_client):
    config, path = demo_config(tmp_path, database_url, RELAYDESK_API__BURST=1000)
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    return Bot(client, app[RUNTIME], path, database_url)


async def problem(r, status: int, slug: str) -> dict:
    assert r.status == status, await r.text()
    assert r.content_type == PROBLEM
    body = await r.json()
    assert body["type"] == f"urn:relaydesk:problem:{slug}" and body["status"] == status and body["detail"]
    return body


REPORT = {"text": "3号线水泵漏水停机了", "reporter_phone": "13800000001", "external_id": "CRM-1001"}


async def test_ticket_created_claimed_resolved_through_the_api_and_chat_follows(bot):
    token = new_token(bot.config_path, bot.url, "crm", "tickets:read,tickets:write")  # the command line
    c = bot.client
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "k-1"}))
    assert r.status == 201, await r.text()
    created = await r.json()
    number = created["number"]
    assert (created["state"], created["category"], created["priority"]) == ("new", "water_leak", "P0")
    assert created["reporter"] == {"id": "cust_wang", "name": "王经理"}
    assert created["external_ids"] == {"crm": "CRM-1001"}
    assert r.headers["Location"] == f"/api/v1/tickets/{number}"

    # The engineers' group gets the card, the customer (known by phone) the receipt, as from chat.
    group = await bot.chat("group:engineers")
    assert any(number in html and "认领" in html for html in group)
    customer = await bot.chat("user:cust_wang")
    assert any("已收到您的报修" in html and number in html for html in customer)

    r = await c.post(f"/api/v1/tickets/{number}/claim", json={"actor": "eng_zhang"}, headers=auth(token))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["changed"] is True and body["ticket"]["state"] == "claimed"
    assert body["ticket"]["assignee"] == {"id": "eng_zhang", "name": "张工"}
    r = await c.post(f"/api/v1/tickets/{number}/claim", json={"actor": "eng_zhang"}, headers=auth(token))
    assert (await r.json())["changed"] is False  # a repeat is not an error

    # On site the work starts, two photos are taken, then 完工 with a note — as the chat asks.
    r = await c.post(f"/api/v1/tickets/{number}/stage", json={"actor": "eng_zhang", "stage": "start_repair"},
                     headers=auth(token))
    assert r.status == 200 and (await r.json())["ticket"]["state"] == "repairing"
    for i in (1, 2):
        r = await c.post(f"/api/v1/tickets/{number}/photos", json={"actor": "eng_zhang", "content_base64": photo_b64(i)},
                         headers=auth(token))
        assert r.status == 200, await r.text()
        body = await r.json()
        assert (body["changed"], body["counts"], body["photos_required"], body["photos_counted"]) == (True, True, 2, i)
        assert body["photo"].endswith(".png") and "/" not in body["photo"]
    r = await c.post(f"/api/v1/tickets/{number}/resolve", json={"actor": "eng_zhang", "note": "更换密封圈，试机正常"},
                     headers=auth(token))
    assert r.status == 200 and (await r.json())["ticket"]["state"] == "resolved"

    customer = await bot.chat("user:cust_wang")
    assert any("张工 已接单" in html for html in customer)
    assert any("已完工" in html and "更换密封圈" in html for html in customer)
    assert any("请为本次服务评价" in html for html in customer)  # the rating card
    group = await bot.chat("group:engineers")
    assert any("张工" in html and "已完工" in html for html in group)  # the card updated in place

    r = await c.get(f"/api/v1/tickets/{number}", headers=auth(token))
    got = await r.json()
    assert got["state"] == "resolved" and got["resolution"] == "更换密封圈，试机正常"
    r = await c.get(f"/api/v1/tickets/{number}/events", headers=auth(token))
    events = (await r.json())["items"]
    assert [(e["action"], e["actor_id"], e["channel"], e["detail"].get("via"), e["detail"].get("token"))
            for e in events] == [("report", "cust_wang", "api", "api", "crm"),
                                 ("claim", "eng_zhang", "api", "api", "crm"),
                                 ("start_repair", "eng_zhang", "api", "api", "crm"),
                                 ("photo", "eng_zhang", "api", "api", "crm"),
                                 ("photo", "eng_zhang", "api", "api", "crm"),
                                 ("resolve", "eng_zhang", "api", "api", "crm")]
    assert all(e["detail"]["counts"] and e["detail"]["time_source"] == "received" and "/" not in e["detail"]["media_ref"]
               for e in events if e["action"] == "photo")
    # The engineer's 记录 in chat names the API and the system that acted.
    from bot.events import Address, InboundEvent

    result = await bot.rt.bot.handle(InboundEvent(platform="playground", event_id="trail-1", sender_id="eng_zhang",
                                                  conversation=Address("playground", "user", "eng_zhang"),
                                                  kind="text", text=f"记录 {number}"))
    trail = "\n".join(await bot.chat("user:eng_zhang"))
    assert "上传照片" in trail and "接口 · 接口 crm" in trail and "计入完工照片" in trail, (result, trail)

    r = await c.get("/api/v1/tickets", headers=auth(token))
    page = await r.json()
    assert [t["number"] for t in page["items"]] == [number] and page["next"] is None


async def test_refusals_are_the_chats_and_change_nothing(bot):
    token = await bot.token()
    c = bot.client
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "k-1"}))
    number = (await r.json())["number"]
    before = await bot.count(TicketEvent)
    r = await c.post(f"/api/v1/tickets/{number}/claim", json={"actor": "cust_wang"}, headers=auth(token))
    body = await problem(r, 403, "forbidden")
    assert body["reason"] == "customer_cannot_claim" and "认领是工程师的操作" in body["detail"]
    r = await c.post(f"/api/v1/tickets/{number}/resolve", json={"actor": "eng_zhang"}, headers=auth(token))
    body = await problem(r, 409, "refused")
    assert body["reason"] == "claim_first"
    r = await c.post(f"/api/v1/tickets/{number}/claim", json={"actor": "nobody"}, headers=auth(token))
    await problem(r, 422, "unknown-person")
    r = await c.post("/api/v1/tickets/SRV-20990101-00001-XXX/claim", json={"actor": "eng_zhang"}, headers=auth(token))
    await problem(r, 404, "not-found")
    r = await c.get("/api/v1/tickets/not-a-number", headers=auth(token))
    await problem(r, 404, "not-found")
    assert await bot.count(TicketEvent) == before
    async with bot.rt.db.session() as s:
        assert (await s.exec(select(Ticket))).one().state == "new"


async def test_resolve_without_the_evidence_is_refused_and_writes_nothing(bot):
    """The default rule: an on-site ticket needs 2 photos taken after 开始维修, and a note."""
    token = await bot.token()
    c = bot.client
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "k-1"}))
    number = (await r.json())["number"]
    act = lambda path, **body: c.post(f"/api/v1/tickets/{number}/{path}", json={"actor": "eng_zhang", **body},  # noqa: E731
                                      headers=auth(token))
    assert (await act("claim")).status == 200
    # A photo before the work started is kept but does not count.
    body = await (await act("photos", content_base64=photo_b64(7))).json()
    assert (body["changed"], body["counts"], body["photos_counted"]) == (True, False, 0)
    assert (await act("stage", stage="start_repair")).status == 200
    before = (await bot.count(TicketEvent), await bot.count(PlaygroundMessage))

    body = await problem(await act("resolve", note="更换密封圈"), 409, "evidence-missing")
    assert body["reason"] == "photos_needed" and "还差 2 张" in body["detail"] and number in body["detail"]
    assert (body["photos_required"], body["photos_counted"], body["photos_missing"], body["note_missing"]) == \
        (2, 0, 2, False)
    body = await problem(await act("resolve"), 409, "evidence-missing")
    assert body["photos_missing"] == 2 and body["note_missing"] is True

    # Bad pictures: a clear problem each, nothing attached.
    await problem(await act("photos", content_base64=base64.b64encode(b"GIF89a not really").decode()), 422,
                  "not-an-image")
    await problem(await act("photos", content_base64=photo_b64(1, "GIF")), 422, "not-an-image")
    await problem(await act("photos", content_base64="%%%not base64%%%"), 422, "validation-failed")
    await problem(await act("photos"), 422, "validation-failed")
    r = await c.post(f"/api/v1/tickets/{number}/photos", data="x", headers=auth(token, **{"Content-Type": "image/png"}))
    await problem(r, 415, "unsupported-media-type")
    bot.rt.config.api.max_photo_bytes = 100
    body = await problem(await act("photos", content_base64=photo_b64(2, "JPEG")), 413, "body-too-large")
    assert body["max_bytes"] == 100
    bot.rt.config.api.max_photo_bytes = 5_242_880
    assert (await bot.count(TicketEvent), await bot.count(PlaygroundMessage)) == before
    async with bot.rt.db.session() as s:
        assert (await s.exec(select(Ticket))).one().state == "repairing"

    # One photo counts; the same picture again is attached once; 完工 still lacks one.
    body = await (await act("photos", content_base64=photo_b64(1))).json()
    assert (body["changed"], body["counts"], body["photos_counted"]) == (True, True, 1)
    body = await (await act("photos", content_base64=photo_b64(1))).json()
    assert (body["changed"], body["photos_counted"]) == (False, 1)
    assert await bot.count(Attachment) == 2
    body = await problem(await act("resolve", note="更换密封圈"), 409, "evidence-missing")
    assert body["photos_missing"] == 1
    assert (await act("photos", content_base64=photo_b64(2))).status == 200
    assert (await act("resolve", note="更换密封圈")).status == 200
    # Evidence belongs to the work: a resolved ticket takes no more photos.
    body = await problem(await act("photos", content_base64=photo_b64(4)), 409, "refused")
    assert body["reason"] == "closed_ticket"


async def test_idempotency_key_replay_gives_the_first_answer_and_writes_nothing(bot):
    token = await bot.token()
    c = bot.client
    r1 = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "same"}))
    first = await r1.json()
    r2 = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "same"}))
    assert r2.status == 201 and r2.headers["Idempotent-Replayed"] == "true"
    assert await r2.json() == first
    # Concurrent repeats too: one ticket.
    rs = await asyncio.gather(*(c.post("/api/v1/tickets", json={"text": "空压机异响"},
                                       headers=auth(token, **{"Idempotency-Key": "burst"})) for _ in range(5)))
    assert {(await r.json())["number"] for r in rs} and all(r.status == 201 for r in rs)
    assert len({(await r.json())["number"] for r in rs}) == 1
    assert await bot.count(Ticket) == 2
    r = await c.post("/api/v1/tickets", json={**REPORT, "text": "别的故障"}, headers=auth(token, **{"Idempotency-Key": "same"}))
    await problem(r, 422, "idempotency-key-reused")
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token))
    await problem(r, 400, "idempotency-key-missing")
    # Another key but the same external id: that ticket exists.
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "other"}))
    body = await problem(r, 409, "external-id-taken")
    assert body["number"] == first["number"]
    assert await bot.count(Ticket) == 2


async def test_bad_requests_are_clear_problems_and_write_nothing(bot):
    token = await bot.token()
    reader = await bot.token("erp", "tickets:read")
    c = bot.client
    key = {"Idempotency-Key": "k"}
    r = await c.post("/api/v1/tickets", json=REPORT)
    await problem(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth("rdk_" + "x" * 43, **key))
    await problem(r, 401, "unauthorized")
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(reader, **key))
    body = await problem(r, 403, "insufficient-scope")
    assert body["scope"] == "tickets:write"
    r = await c.post("/api/v1/tickets", data='{"text": "漏水", '.encode(), headers=auth(token, **key, **{"Content-Type": "application/json"}))
    await problem(r, 400, "malformed-json")
    r = await c.post("/api/v1/tickets", data=b"\xff\xfe", headers=auth(token, **key, **{"Content-Type": "application/json"}))
    await problem(r, 400, "malformed-json")
    r = await c.post("/api/v1/tickets", data="text=漏水", headers=auth(token, **key, **{"Content-Type": "application/x-www-form-urlencoded"}))
    await problem(r, 415, "unsupported-media-type")
    big = json.dumps({"text": "漏" * 70_000})
    r = await c.post("/api/v1/tickets", data=big, headers=auth(token, **key, **{"Content-Type": "application/json"}))
    await problem(r, 413, "body-too-large")
    for bad in ({}, {"text": "   "}, {"text": 5}, {"text": "漏水", "extra": 1}, {"text": "漏水", "reporter_phone": "abc"}, []):
        r = await c.post("/api/v1/tickets", json=bad, headers=auth(token, **key))
        body = await problem(r, 422, "validation-failed")
        assert body["errors"]
    for cursor in ("garbage", "eyJiZWZvcmUiOiA5OTk5OTk5OTk5OTl9", "eyJiZWZvcmUiOiAiMSJ9"):  # not base64 JSON; huge; a string
        r = await c.get("/api/v1/tickets", params={"cursor": cursor}, headers=auth(token))
        await problem(r, 400, "bad-cursor")
    r = await c.get("/api/v1/tickets?state=flying", headers=auth(token))
    await problem(r, 422, "validation-failed")
    assert await bot.count(Ticket) == 0 and await bot.count(ApiIdempotency) == 0

    # Revoked on the command line: refused from the next request on.
    r = cli(bot.config_path, bot.url, "list")
    assert "crm" in r.stdout and token not in r.stdout and "active" in r.stdout
    r = cli(bot.config_path, bot.url, "revoke", "crm")
    assert r.returncode == 0 and "revoked" in r.stdout
    r = await c.get("/api/v1/tickets", headers=auth(token))
    await problem(r, 401, "token-revoked")
    async with bot.rt.db.session() as s:
        rows = (await s.exec(select(ApiToken))).all()
    assert all(token not in (row.token_hash, row.prefix) for row in rows)  # only the hash is kept


async def test_cli_refuses_unknown_scopes_and_names(bot):
    r = cli(bot.config_path, bot.url, "create", "--name", "crm", "--scopes", "tickets:read,tickets:delete")
    assert r.returncode == 2 and "unknown scope 'tickets:delete'" in r.stderr and not r.stdout
    r = cli(bot.config_path, bot.url, "create", "--name", "c r m", "--scopes", "tickets:read")
    assert r.returncode == 2 and "name" in r.stderr
    r = cli(bot.config_path, bot.url, "revoke", "nothing-like-it")
    assert r.returncode == 1
    assert await bot.count(ApiToken) == 0


async def test_rate_limit_answers_429_with_retry_after(tmp_path, database_url, aiohttp_client):
    config, path = demo_config(tmp_path, database_url, RELAYDESK_API__BURST=3, RELAYDESK_API__RATE_PER_SECOND=0.5)
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    token = await quick_token(app[RUNTIME].db, "crm", "tickets:read")
    other = await quick_token(app[RUNTIME].db, "mes", "tickets:read")
    statuses = [(await client.get("/api/v1/tickets", headers=auth(token))).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = await client.get("/api/v1/tickets", headers=auth(token))
    await problem(r, 429, "rate-limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    assert (await client.get("/api/v1/tickets", headers=auth(other))).status == 200  # per token


async def test_paging_filters_transfer_stage_comment_cancel_and_directory(bot):
    token = await bot.token(scopes="tickets:read,tickets:write,directory:read")
    c = bot.client
    numbers = []
    for i, text in enumerate(["3号线水泵漏水停机了", "空压机异响", "车间照明灯不亮", "变频器报警 E07"]):
        r = await c.post("/api/v1/tickets", json={"text": text}, headers=auth(token, **{"Idempotency-Key": f"p{i}"}))
        assert r.status == 201
        numbers.append((await r.json())["number"])
    seen, cursor = [], None
    while True:
        r = await c.get("/api/v1/tickets", params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                        headers=auth(token))
        page = await r.json()
        seen += [t["number"] for t in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == numbers[::-1]
    first = numbers[0]
    r = await c.get("/api/v1/tickets", params={"priority": "P0"}, headers=auth(token))
    assert first in [t["number"] for t in (await r.json())["items"]]

    act = lambda what, **body: c.post(f"/api/v1/tickets/{first}/{what}", json=body, headers=auth(token))  # noqa: E731
    assert (await (await act("transfer", actor="lead_zhao", to="eng_li")).json())["ticket"]["state"] == "transferred"
    r = await act("claim", actor="eng_zhang")
    assert (await problem(r, 403, "forbidden"))["reason"] == "transferred_to_other"
    assert (await act("claim", actor="eng_li")).status == 200
    assert (await (await act("stage", actor="eng_li", stage="depart")).json())["ticket"]["state"] == "on_the_way"
    r = await act("stage", actor="eng_li", stage="fly")
    await problem(r, 422, "validation-failed")
    assert (await act("comment", actor="eng_li", text="现场缺密封圈")).status == 200
    assert (await (await act("cancel", actor="lead_zhao", reason="重复报修")).json())["ticket"]["state"] == "cancelled"
    r = await c.get(f"/api/v1/tickets/{first}/events", headers=auth(token))
    assert [e["action"] for e in (await r.json())["items"]] == ["report", "transfer", "claim", "depart", "note", "cancel"]

    people = (await (await c.get("/api/v1/people", headers=auth(token))).json())["items"]
    assert {"id": "eng_li", "name": "李工", "role": "engineer"}.items() <= next(p for p in people if p["id"] == "eng_li").items()
    teams = (await (await c.get("/api/v1/teams", headers=auth(token))).json())["items"]
    assert teams[0]["id"] == "maint" and teams[0]["lead"] == "lead_zhao"


async def test_openapi_document_and_docs_page(bot):
    r = await bot.client.get("/api/v1/openapi.json")
    spec = await r.json()
    assert spec["openapi"] == "3.1.0"
    create = spec["paths"]["/api/v1/tickets"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(spec["components"]["schemas"][body]["required"]) == {"text"}
    assert {"201", "400", "401", "403", "413", "415", "422", "429"} <= set(create["responses"])
    assert "application/problem+json" in create["responses"]["422"]["content"]
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in create["parameters"])
    schemas = spec["components"]["schemas"]
    assert "verifying" in schemas["TicketOut"]["properties"]["state"]["enum"]
    photos = spec["paths"]["/api/v1/tickets/{number}/photos"]["post"]
    body = photos["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schemas[body]["required"]) == {"actor", "content_base64"}
    assert {"200", "404", "409", "413", "422"} <= set(photos["responses"])
    resolve = spec["paths"]["/api/v1/tickets/{number}/resolve"]["post"]
    assert "evidence-missing" in json.dumps(resolve["responses"]["409"])
    r = await bot.client.get("/api/v1/docs")
    html = await r.text()
    assert r.status == 200 and "POST" in html and "/api/v1/tickets/{number}/claim" in html
    assert "urn:relaydesk:problem:frozen" in html


async def test_unknown_paths_and_methods_are_problems_too(bot):
    token = await bot.token()
    r = await bot.client.get("/api/v1/nothing/here", headers=auth(token))
    await problem(r, 404, "not-found")
    r = await bot.client.put("/api/v1/tickets", json={}, headers=auth(token))
    await problem(r, 405, "method-not-allowed")
    assert r.headers["Allow"] == "GET, POST"
    r = await bot.client.delete("/api/v1/tickets/SRV-20260126-00001-ABC/claim", headers=auth(token))
    assert r.headers["Allow"] == "POST"
    r = await bot.client.get("/api/v1/openapi.json")  # the document and docs need no token
    assert r.status == 200


async def test_nul_characters_are_refused_before_the_database(bot):
    """PostgreSQL stores no U+0000: a request carrying one is a 422, never a server error."""
    token = await bot.token()
    c = bot.client
    r = await c.post("/api/v1/tickets", json=REPORT, headers=auth(token, **{"Idempotency-Key": "k-1"}))
    number = (await r.json())["number"]
    before = await bot.count(TicketEvent)
    body = await problem(await c.post(f"/api/v1/tickets/{number}/transfer", json={"actor": "eng_zhang", "to": "a\x00b"},
                                      headers=auth(token)), 422, "validation-failed")
    assert "NUL" in body["detail"] and body["errors"][0]["loc"] == "body.to"
    await problem(await c.post(f"/api/v1/tickets/{number}/comment", json={"actor": "eng_zhang", "text": "漏\x00水"},
                               headers=auth(token)), 422, "validation-failed")
    await problem(await c.get("/api/v1/tickets", params={"assignee": "x\x00"}, headers=auth(token)), 422,
                  "validation-failed")
    await problem(await c.get("/api/v1/tickets/SRV%00", headers=auth(token)), 404, "not-found")
    assert await bot.count(TicketEvent) == before
