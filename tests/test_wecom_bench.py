"""bench/platforms/wecom.py: its callbacks are what the real endpoint accepts, its card probe finds the card."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from aiohttp import web
from sqlmodel import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench.platforms import report_key  # noqa: E402
from bench.platforms import wecom as bench_wecom  # noqa: E402
from app.web import RUNTIME, create_app  # noqa: E402
from bot.config import load_config  # noqa: E402
from storage.models import Ticket  # noqa: E402

API = "https://bench-fake.test"


async def test_bench_reports_become_tickets_and_cards(aiohttp_client, tmp_path, respx_mock):
    seen: list[tuple[str, bytes]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.content))
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok", "response_code": "rc"})

    respx_mock.get(f"{API}/cgi-bin/gettoken").mock(return_value=httpx.Response(
        200, json={"errcode": 0, "access_token": "T", "expires_in": 7200}))
    respx_mock.post(url__startswith=f"{API}/cgi-bin/").mock(side_effect=answer)
    cfg = tmp_path / "bench.toml"
    cfg.write_text(bench_wecom.config_toml(API, f"sqlite+aiosqlite:///{tmp_path}/b.db"), encoding="utf-8")
    client = await aiohttp_client(create_app(load_config(cfg, env={}), workers=False))
    for i in (0, 1, 2):
        path, headers, body = bench_wecom.make_report(i)
        r = await client.post(path, data=body, headers=headers)
        assert r.status == 200
    await client.app[RUNTIME].outbox.drain()
    async with client.app[RUNTIME].db.session() as s:
        assert len((await s.exec(select(Ticket))).all()) == 3
    found = {bench_wecom.is_card_send(p, b) for p, b in seen} - {None}
    assert found == {report_key(0), report_key(1), report_key(2)}
    # the customer's own messages (text, markdown status card) are not taken for the engineer card
    for p, b in seen:
        doc = json.loads(b)
        if doc.get("touser", "").startswith("bench_cust_"):
            assert bench_wecom.is_card_send(p, b) is None


async def test_fake_api_answers_like_wecom(aiohttp_client):
    recorded = []
    app = web.Application()
    app.add_routes(bench_wecom.fake_api_routes(lambda p, b: recorded.append(p)))
    client = await aiohttp_client(app)
    tok = await (await client.get("/cgi-bin/gettoken?corpid=x&corpsecret=y")).json()
    assert tok["errcode"] == 0 and tok["access_token"]
    sent = await (await client.post("/cgi-bin/message/send", json={"touser": "u"})).json()
    assert sent["errcode"] == 0 and sent["response_code"]
    assert recorded == ["/cgi-bin/gettoken", "/cgi-bin/message/send"]
