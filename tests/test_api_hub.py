"""The status hub: other systems' states of a ticket, contradictions that
freeze it, the freeze refusing moves in chat and API, a lead lifting it."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from api_support import auth, demo_config, quick_token
from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from storage.models import PlaygroundMessage, TicketEvent

INTEGRATIONS = """
[integrations.crm]
states = { Closed = "resolved", Reopened = "reopened" }
[integrations.mes]
states = { Reopened = "reopened", Closed = "resolved", "新建" = "new" }
[status_hub]
quality_groups = { playground = "quality" }
"""
T0 = datetime(2026, 1, 26, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
async def hub(tmp_path, database_url, aiohttp_client):
    config, _ = demo_config(tmp_path, database_url, INTEGRATIONS)
    app = create_app(config, workers=False)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    tokens = {name: await quick_token(rt.db, name, "tickets:read,tickets:write,status:write")
              for name in ("crm", "mes", "erp")}
    return client, rt, tokens


async def chat(rt, person: str, text: str, n=[0]):
    n[0] += 1
    await rt.bot.handle(InboundEvent(platform="playground", event_id=f"hub{n[0]}", sender_id=person,
                                     conversation=Address("playground", "user", person), kind="text", text=text))
    await rt.outbox.drain()
    async with rt.db.session() as s:
        # The newest text: the reply goes before cards queued earlier (the outbox serves replies first).
        rows = (await s.exec(select(PlaygroundMessage).where(PlaygroundMessage.conversation == f"user:{person}",
                                                             PlaygroundMessage.kind == "text")
                             .order_by(PlaygroundMessage.id.desc()))).all()
    return rows[0].payload["html"]


async def test_contradiction_freezes_refuses_notifies_and_a_lead_unfreezes(hub):
    client, rt, tokens = hub
    r = await client.post("/api/v1/tickets", json={"text": "3号线水泵漏水停机了", "reporter_phone": "13800000001"},
                          headers=auth(tokens["crm"], **{"Idempotency-Key": "h1"}))
    number = (await r.json())["number"]
    r = await client.post(f"/api/v1/tickets/{number}/claim", json={"actor": "eng_zhang"}, headers=auth(tokens["crm"]))
    assert r.status == 200

    status = lambda who, state, at: client.post(  # noqa: E731
        f"/api/v1/tickets/{number}/external-status", json={"state": state, "at": at.isoformat()}, headers=auth(tokens[who]))
    r = await status("crm", "Closed", T0)
    body = await r.json()
    assert r.status == 200 and body["system"]["mapped_state"] == "resolved" and body["ticket"]["frozen"] is None
    r = await status("mes", "Reopened", T0 + timedelta(minutes=5))
    frozen = (await r.json())["ticket"]["frozen"]
    assert frozen and "CRM" in frozen["reason"] and "MES" in frozen["reason"] and "5 分钟" in frozen["reason"]

    # Refused through the API and in chat, with the reason; nothing moves.
    r = await client.post(f"/api/v1/tickets/{number}/resolve", json={"actor": "eng_zhang"}, headers=auth(tokens["crm"]))
    assert r.status == 409
    problem = await r.json()
    assert problem["type"] == "urn:relaydesk:problem:frozen" and "已冻结" in problem["detail"]
    reply = await chat(rt, "eng_zhang", f"完工 {number}")
    assert "已冻结" in reply and "解冻" in reply
    assert (await (await client.get(f"/api/v1/tickets/{number}", headers=auth(tokens["crm"]))).json())["state"] == "claimed"
    # Notes still go through: the freeze holds the state, not the conversation.
    assert "已补充" in await chat(rt, "eng_zhang", f"备注 {number} 等待质量部确认")

    # The quality group was told.
    async with rt.db.session() as s:
        quality = (await s.exec(select(PlaygroundMessage).where(PlaygroundMessage.conversation == "group:quality"))).all()
    assert len(quality) == 1 and number in quality[0].payload["html"] and "冻结" in quality[0].payload["html"]

    # The systems view and the consistency board show it.
    view = await (await client.get(f"/api/v1/tickets/{number}/systems", headers=auth(tokens["crm"]))).json()
    assert [(v["system"], v["state"], v["agrees"]) for v in view["systems"]] == [("crm", "Closed", False),
                                                                                 ("mes", "Reopened", False)]
    board = await (await client.get("/api/v1/consistency", headers=auth(tokens["crm"]))).json()
    assert board["checked"] == 1 and board["items"][0]["number"] == number and board["items"][0]["disagree"]

    # Only a lead lifts it, naming the system to follow.
    assert "只有组长" in await chat(rt, "eng_zhang", f"解冻 {number} 以CRM为准")
    assert "以CRM为准" in await chat(rt, "lead_zhao", f"解冻 {number} 以ERP为准")  # ERP reported nothing
    reply = await chat(rt, "lead_zhao", f"解冻 {number} 以CRM为准")
    assert "已解冻" in reply and "CRM" in reply
    got = await (await client.get(f"/api/v1/tickets/{number}", headers=auth(tokens["crm"]))).json()
    assert got["state"] == "resolved" and got["frozen"] is None

    events = (await (await client.get(f"/api/v1/tickets/{number}/events", headers=auth(tokens["crm"]))).json())["items"]
    assert [(e["action"], e["actor_name"]) for e in events] == [
        ("report", "王经理"), ("claim", "张工"), ("external_status", "crm"), ("external_status", "mes"),
        ("freeze", "mes"), ("note", "张工"), ("unfreeze", "赵组长")]
    assert events[-1]["detail"]["decision"] == "crm" and (events[-1]["from_state"], events[-1]["to_state"]) == \
        ("claimed", "resolved")
    # The 记录 in chat names the hub's actions readably, and which system did them through the API.
    trail = await chat(rt, "lead_zhao", f"记录 {number}")
    for expected in ("外部系统状态", "crm 报告“Closed”", "mes 报告“Reopened”", "冻结", "接口 mes", "解冻",
                     "按 crm 的状态解冻"):
        assert expected in trail, (expected, trail)
    assert "external_status" not in trail and "freeze" not in trail


async def test_no_freeze_outside_the_window_or_without_contradiction(hub):
    client, rt, tokens = hub
    r = await client.post("/api/v1/tickets", json={"text": "空压机异响"}, headers=auth(tokens["crm"], **{"Idempotency-Key": "a"}))
    number = (await r.json())["number"]
    post = lambda who, state, at: client.post(  # noqa: E731
        f"/api/v1/tickets/{number}/external-status", json={"state": state, "at": at.isoformat()}, headers=auth(tokens[who]))
    assert (await (await post("crm", "Closed", T0)).json())["ticket"]["frozen"] is None
    r = await post("mes", "Reopened", T0 + timedelta(minutes=16))
    assert (await r.json())["ticket"]["frozen"] is None
    r = await post("mes", "Closed", T0 + timedelta(minutes=17))
    assert (await r.json())["system"]["mapped_state"] == "resolved"
    # An older report than the one recorded changes nothing.
    r = await post("mes", "Reopened", T0 + timedelta(minutes=1))
    assert (await r.json())["recorded"] is False
    # A system not configured cannot report; bad times are refused.
    r = await post("erp", "待排产", T0)
    assert r.status == 422 and (await r.json())["type"] == "urn:relaydesk:problem:unknown-system"
    r = await client.post(f"/api/v1/tickets/{number}/external-status", json={"state": "Closed", "at": "2026-01-26T08:00:00"},
                          headers=auth(tokens["crm"]))
    assert r.status == 422
    async with rt.db.session() as s:
        actions = [e.action for e in (await s.exec(select(TicketEvent).order_by(TicketEvent.id))).all()]
    assert actions == ["report", "external_status", "external_status", "external_status"]


async def test_freeze_check_leaves_the_ticket_as_stored_even_without_a_savepoint(hub):
    """Callers like the phone path use the ticket after a refusal, in the same transaction."""
    from bot.core.service import Actor, Refused
    from storage.integration import TicketFreeze
    from storage.models import Person, Ticket

    client, rt, tokens = hub
    r = await client.post("/api/v1/tickets", json={"text": "空压机异响"}, headers=auth(tokens["crm"], **{"Idempotency-Key": "f"}))
    number = (await r.json())["number"]
    async with rt.db.session() as s:
        ticket = await rt.service.by_number(s, number)
        s.add(TicketFreeze(ticket_id=ticket.id, reason="测试冻结", systems={}))
    async with rt.db.session() as s:
        ticket = await rt.service.by_number(s, number)
        engineer = await s.get(Person, "eng_li")
        with pytest.raises(Refused) as refused:
            await rt.service.claim(s, Actor(engineer, "phone", "phone"), ticket)
        assert refused.value.key == "frozen" and "测试冻结" in refused.value.text
        assert (ticket.state, ticket.claimed_at) == ("new", None)
        # The transaction goes on and commits: the refused move is not in it.
        s.add(TicketEvent(ticket_id=ticket.id, action="ack", actor_id="eng_li", actor_name="李工", channel="phone",
                          from_state=ticket.state, to_state=ticket.state, detail={"page_only": True}))
    async with rt.db.session() as s:
        stored = (await s.exec(select(Ticket).where(Ticket.number == number))).one()
    assert (stored.state, stored.claimed_at) == ("new", None)
