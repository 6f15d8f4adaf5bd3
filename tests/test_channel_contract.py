"""The contract every channel passes, through the real app (create_app), on SQLite and PostgreSQL.

URL verification where the platform has one; a signed report -> one inbox row;
the same report four times -> still one; forged, stale, malformed and oversized
requests -> the right status and nothing written; a click -> the click's outcome;
the core's card rendered within the platform's schema rules.
"""
from __future__ import annotations

import pytest
from sqlalchemy import func
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.core import states as st
from bot.events import CardMessage, message_from_dict
from channel_harness import DINGTALK, HARNESSES, Harness, Req, config
from bot.channels.dingtalk.crypto import EventCrypto
from storage.models import CardAction, InboxEvent, OutboxMessage, ProcessedEvent, Ticket

REPORT = "3号线水泵不出水了，整条线停着"


@pytest.fixture(params=sorted(HARNESSES))
def harness(request) -> Harness:
    return HARNESSES[request.param]


@pytest.fixture
async def bot(database_url, tmp_path, aiohttp_client):
    app = create_app(config(tmp_path, database_url), workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    rt.bot.defer_inbound = True  # as in production: reports are recorded, then applied by the inbox worker
    return client, rt


async def send(client, req: Req):
    return await client.request(req.method, req.path, data=req.body, headers=req.headers)


async def count(rt, model, **where) -> int:
    async with rt.db.session() as s:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return (await s.exec(stmt)).one()


async def written(rt) -> tuple[int, ...]:
    return (await count(rt, InboxEvent), await count(rt, ProcessedEvent), await count(rt, Ticket))


async def test_url_verification(bot, harness):
    client, rt = bot
    check = harness.verification()
    if check is None:
        pytest.skip(f"{harness.name} has no URL verification")
    req, expected = check
    r = await send(client, req)
    assert r.status == 200
    if isinstance(expected, dict):
        assert await r.json() == expected
    elif expected == "encrypt":  # DingTalk: the encrypted "success"
        doc = await r.json()
        crypto = EventCrypto(DINGTALK["event_token"], DINGTALK["event_aes"], DINGTALK["app_key"])
        assert crypto.decrypt(doc["msg_signature"], doc["timeStamp"], doc["nonce"], doc["encrypt"]) == "success"
    else:
        assert await r.text() == expected


async def test_a_signed_report_is_one_inbox_row_however_often_it_comes(bot, harness):
    client, rt = bot
    req = harness.report(1, REPORT)
    for _ in range(4):
        r = await send(client, req)
        assert r.status == 200, await r.text()
    assert await count(rt, InboxEvent, platform=harness.name) == 1
    assert await rt.inbox.drain() == 1
    assert await count(rt, Ticket) == 1


async def test_forged_stale_malformed_and_oversized_change_nothing(bot, harness):
    client, rt = bot
    cases = [("forged", harness.forged(2, REPORT), 403), ("malformed", harness.malformed(), 400)]
    stale = harness.stale(3, REPORT)
    if stale is not None:
        cases.append(("stale", stale, 403))
    good = harness.report(4, REPORT)
    cases.append(("oversized", Req(good.method, good.path, b"x" * 70_000, good.headers), 413))
    for what, req, status in cases:
        r = await send(client, req)
        assert r.status == status, (what, r.status, await r.text())
        assert "error" in await r.json()
    assert await written(rt) == (0, 0, 0)


async def test_a_click_has_its_outcome_and_counts_once(bot, harness):
    client, rt = bot
    assert (await send(client, harness.report(5, REPORT))).status == 200
    await rt.inbox.drain()
    async with rt.db.session() as s:
        ticket = (await s.exec(select(Ticket))).one()
        token = (await s.exec(select(CardAction.token).where(CardAction.ticket_id == ticket.id,
                                                             CardAction.action == "claim"))).first()
    assert token, "the engineers' card has a claim button"
    click = harness.click(5, token)
    for _ in range(2):  # a redelivered click is the same click
        r = await send(client, click)
        assert r.status == 200, await r.text()
    await rt.inbox.drain()
    async with rt.db.session() as s:
        ticket = await s.get(Ticket, ticket.id)
    assert ticket.state == st.CLAIMED and ticket.assignee_id == "eng_zhang"
    assert await count(rt, ProcessedEvent, platform=harness.name) == 2  # the report and one click


async def test_the_cores_card_renders_within_the_platform_rules(bot, harness):
    client, rt = bot
    assert (await send(client, harness.report(6, REPORT))).status == 200
    await rt.inbox.drain()
    async with rt.db.session() as s:
        rows = (await s.exec(select(OutboxMessage))).all()
    cards = [m.card for m in (message_from_dict(r.message) for r in rows) if isinstance(m, CardMessage)]
    with_buttons = [c for c in cards if c.buttons]
    assert with_buttons, "the core built cards with buttons"
    for card in with_buttons:
        harness.check_card(card)
