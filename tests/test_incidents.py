"""One incident, many reporters: reports of the same category and place while its ticket
is open are linked to it; every reporter hears the number and every update; an engineer
can split a linked report off; the switch turns it off. SQLite and PostgreSQL."""
from __future__ import annotations

import re
from datetime import timedelta

from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from storage.models import CardRefresh, LinkedReport, OutboxMessage, Ticket, TicketEvent
from storage.types import utcnow

NUMBER = re.compile(r"SRV-\d{8}-\d{5}-[0-9A-Z]{3}")
TEXTS = ("3号线停电了，整条线都停了", "3号线突然停电，设备全停", "3号线没电了，赶紧来人", "3号线停电，配电柜跳闸了")


async def _start(make_config, url, aiohttp_client, **env):
    app = create_app(make_config(url, **env), workers=False)
    await aiohttp_client(app)
    return app[RUNTIME]


async def _say(rt, person: str, text: str, n: int = 0):
    return await rt.bot.handle(InboundEvent(
        platform="playground", event_id=f"{person}-{n}-{hash(text)}", sender_id=person,
        conversation=Address("playground", "user", person), kind="text", text=text))


async def _all(rt, model, *where):
    async with rt.db.session() as s:
        return list((await s.exec(select(model).where(*where))).all())


def _texts(rows, to_id):
    return [r.message["text"] for r in rows if r.to_id == to_id and r.message["type"] == "text"]


async def _burst(rt, n=40):
    for i in range(n):
        await _say(rt, f"worker{i:02d}", TEXTS[i % len(TEXTS)])


async def test_forty_reports_of_one_outage_are_one_incident_and_everyone_is_told(make_config, database_url,
                                                                                aiohttp_client):
    rt = await _start(make_config, database_url, aiohttp_client)
    await _burst(rt)
    (ticket,) = await _all(rt, Ticket)
    assert ticket.linked_reports == 39 and ticket.location == "3号线"
    assert len(await _all(rt, LinkedReport)) == 39
    rows = await _all(rt, OutboxMessage)
    for i in range(40):
        told = _texts(rows, f"worker{i:02d}")
        assert told and ticket.number in told[0], i
    assert "共 40 人报告" in _texts(rows, "worker39")[0]
    # The links wait for one card update, which shows them all.
    cards = [r.message for r in rows if r.to_id == "engineers" and r.message["type"] == "card"]
    assert len(cards) == 1 and not cards[0].get("update")
    assert await rt.inbox.refresh_cards() == 0  # not due yet
    assert await rt.inbox.refresh_cards(now=utcnow() + timedelta(seconds=5)) == 1
    assert await _all(rt, CardRefresh) == []
    rows = await _all(rt, OutboxMessage)
    cards = [r.message for r in rows if r.to_id == "engineers" and r.message["type"] == "card"]
    assert len(cards) == 2 and cards[-1]["update"]
    assert any("+39 人报告" in f["value"] for f in cards[-1]["card"]["fields"])
    # Every later update reaches every reporter.
    await _say(rt, "eng_zhang", f"认领 {ticket.number}")
    rows = await _all(rt, OutboxMessage)
    for i in range(40):
        assert any("已接单" in t for t in _texts(rows, f"worker{i:02d}")), i
    actions = [e.action for e in await _all(rt, TicketEvent, TicketEvent.ticket_id == ticket.id)]
    assert actions.count("link") == 39


async def test_an_engineer_splits_a_linked_report_into_its_own_ticket(make_config, database_url, aiohttp_client):
    rt = await _start(make_config, database_url, aiohttp_client)
    await _burst(rt, 3)
    (incident,) = await _all(rt, Ticket)
    listing = await _say(rt, "eng_zhang", f"拆分 {incident.number}")
    assert listing.outcome == "refused"
    assert "1 playground用户er01：3号线突然停电" in listing.toast and "2 playground用户er02" in listing.toast
    result = await _say(rt, "eng_zhang", f"拆分 {incident.number} 1")
    assert result.outcome == "done"
    tickets = sorted(await _all(rt, Ticket), key=lambda t: t.id)
    assert len(tickets) == 2 and tickets[0].linked_reports == 1
    new = tickets[1]
    assert new.reporter_id.endswith("worker01") and new.reporter_conv_id == "worker01"
    rows = await _all(rt, OutboxMessage)
    assert any(new.number in t for t in _texts(rows, "worker01"))
    assert any(new.number in t for t in _texts(rows, "eng_zhang"))
    (link,) = await _all(rt, LinkedReport, LinkedReport.split_ticket_id == new.id)
    assert link.ticket_id == incident.id
    # Split off: the incident's later updates no longer go to that reporter.
    before = len(_texts(rows, "worker01"))
    await _say(rt, "eng_zhang", f"认领 {incident.number}")
    rows = await _all(rt, OutboxMessage)
    assert len(_texts(rows, "worker01")) == before
    assert any("已接单" in t for t in _texts(rows, "worker02"))
    refused = await _say(rt, "worker02", f"拆分 {incident.number} 1", 1)
    assert refused.outcome == "refused" and len(await _all(rt, Ticket)) == 2


async def test_with_grouping_off_forty_reports_are_forty_tickets(make_config, sqlite_url, aiohttp_client):
    rt = await _start(make_config, sqlite_url, aiohttp_client, RELAYDESK_INCIDENTS__ENABLED="false")
    await _burst(rt)
    assert len(await _all(rt, Ticket)) == 40
    assert await _all(rt, LinkedReport) == []


async def test_other_places_and_categories_and_closed_tickets_are_not_grouped(make_config, sqlite_url,
                                                                             aiohttp_client):
    rt = await _start(make_config, sqlite_url, aiohttp_client, RELAYDESK_INCIDENTS__WINDOW="30m")
    await _say(rt, "a", "3号线停电了，整条线都停了")
    await _say(rt, "b", "2号线停电了，整条线都停了")
    await _say(rt, "c", "3号线水泵漏水停机了")
    assert len(await _all(rt, Ticket)) == 3
    first = min(await _all(rt, Ticket), key=lambda t: t.id)
    await _say(rt, "a", f"取消 {first.number}")
    await _say(rt, "d", "3号线停电了")
    assert len(await _all(rt, Ticket)) == 4


async def test_reports_linked_to_an_escalated_incident_update_the_escalation_card(make_config, database_url,
                                                                                 aiohttp_client):
    rt = await _start(make_config, database_url, aiohttp_client)
    await _burst(rt, 1)
    (ticket,) = await _all(rt, Ticket)
    assert (await _say(rt, "eng_zhang", f"加急 {ticket.number}")).outcome == "done"
    escalation = [r for r in await _all(rt, OutboxMessage)
                  if r.message["type"] == "card" and r.track_key == f"t{ticket.id}:esc"]
    assert escalation
    await _say(rt, "worker01", TEXTS[1])
    await _say(rt, "worker02", TEXTS[2])
    (ticket,) = await _all(rt, Ticket)
    assert ticket.linked_reports == 2
    assert await rt.inbox.refresh_cards(now=utcnow() + timedelta(seconds=5)) == 1
    updated = [r for r in await _all(rt, OutboxMessage)
               if r.message["type"] == "card" and r.track_key == f"t{ticket.id}:esc"][len(escalation):]
    assert updated and all(r.message["update"] for r in updated)
    assert "又有人报告同一故障，共 3 人报告" in str(updated[-1].message["card"])
