"""The auditor (late escalations, stuck outbox rows, the heartbeat dead-man
switch), periodic jobs run once per period across processes, and the
scheduler's lifecycle in the app."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
import respx
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent, Text
from bot.outbox import enqueue
from escalation.auditor import audit
from escalation.jobs import run_once_per_period
from storage.models import OutboxMessage, PeriodicJob
from test_escalation_engine import any_db, make_esc, write_config  # noqa: F401 (fixture)

HEARTBEAT = "https://hc.example.com/ping/relaydesk"


@pytest.fixture
async def esc(tmp_path, sqlite_url, aiohttp_client):
    extra = f'[escalation.auditor]\nheartbeat_url = "{HEARTBEAT}"\n'
    return await make_esc(write_config(tmp_path, sqlite_url, policies=extra + POLICY), aiohttp_client)


POLICY = """
[[escalation.P0.steps]]
after = "10m"
state = "unclaimed"
targets = ["lead"]
means = ["card"]
"""


async def metric(esc, name: str) -> float:
    for line in esc.rt.metrics.render().decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


@respx.mock(using="httpx", assert_all_called=False)
async def test_healthy_audit_pings_the_heartbeat(respx_mock, esc):
    ping = respx_mock.get(HEARTBEAT).mock(return_value=httpx.Response(200))
    await esc.report()
    result = await audit(esc.engine)
    assert result.healthy and result.pinged and ping.call_count == 1
    assert await metric(esc, "relaydesk_escalation_late") == 0


@respx.mock(using="httpx", assert_all_called=False)
async def test_a_late_escalation_is_reported_and_stops_the_heartbeat(respx_mock, esc, caplog):
    ping = respx_mock.get(HEARTBEAT).mock(return_value=httpx.Response(200))
    tk = await esc.report()
    esc.clock.advance(minutes=10, seconds=30)
    assert not (await audit(esc.engine)).late  # 30 s late: within the minute
    esc.clock.advance(seconds=45)  # the sweep is not running: 75 s late
    result = await audit(esc.engine)
    assert (result.late, result.late_numbers, result.pinged) == (1, (tk.number,), False)
    assert ping.call_count == 1  # only the first, healthy audit pinged
    assert await metric(esc, "relaydesk_escalation_late") == 1
    assert tk.number in caplog.text and "not pinging the heartbeat" in caplog.text
    await esc.sweep()
    assert (await audit(esc.engine)).healthy


@respx.mock(using="httpx", assert_all_called=False)
async def test_stuck_outbox_rows_are_reported(respx_mock, esc):
    respx_mock.get(HEARTBEAT).mock(return_value=httpx.Response(200))
    async with esc.rt.db.session() as s:
        enqueue(s, Address("nowhere", "user", "x"), Text("hi"))
    async with esc.rt.db.session() as s:
        row = (await s.exec(select(OutboxMessage))).one()
        row.created_at = row.created_at - timedelta(hours=1)
        s.add(row)
    esc.clock.now = row.created_at + timedelta(hours=1)
    result = await audit(esc.engine)
    assert result.stuck == 1 and not result.pinged
    assert await metric(esc, "relaydesk_outbox_stuck") == 1


@respx.mock(using="httpx", assert_all_called=False)
async def test_an_unreachable_heartbeat_is_logged_not_fatal(respx_mock, esc, caplog):
    respx_mock.get(HEARTBEAT).mock(side_effect=httpx.ConnectError("refused"))
    result = await audit(esc.engine)
    assert result.healthy and not result.pinged
    assert "heartbeat ping failed" in caplog.text


async def test_a_periodic_job_runs_once_per_period(tmp_path, any_db, aiohttp_client):
    esc = await make_esc(write_config(tmp_path, any_db, policies=POLICY), aiohttp_client)
    runs = []

    async def job():
        runs.append(esc.clock.now)
        await asyncio.sleep(0.05)

    # Two "processes" at once: one runs it, the other sees the period taken.
    results = await asyncio.gather(*(run_once_per_period(esc.engine, "report", timedelta(minutes=1), job)
                                     for _ in range(2)))
    assert sorted(results) == [False, True] and len(runs) == 1
    esc.clock.advance(seconds=30)
    assert not await run_once_per_period(esc.engine, "report", timedelta(minutes=1), job)
    esc.clock.advance(seconds=31)
    assert await run_once_per_period(esc.engine, "report", timedelta(minutes=1), job)
    async with esc.rt.db.session() as s:
        row = await s.get(PeriodicJob, "report")
    assert row.last_finished_at == esc.clock.now and row.owner


async def test_the_app_runs_the_sweep_and_stops_cleanly(tmp_path, sqlite_url, aiohttp_client):
    config = write_config(tmp_path, sqlite_url, policies=POLICY.replace('"10m"', '"0s"'))
    app = create_app(config, workers=True)
    client = await aiohttp_client(app)
    rt = app[RUNTIME]
    jobs = rt.escalation.scheduler
    assert {j.id for j in jobs.scheduler.get_jobs()} == {"escalation-sweep", "periodic-auditor", "periodic-followups",
                                                         "periodic-reports-tick", "periodic-retention"}
    await rt.bot.handle(InboundEvent(
        platform="playground", event_id="a1", sender_id="cust_wang",
        conversation=Address("playground", "user", "cust_wang"), kind="text", text="3号线水泵漏水停机了"))
    for _ in range(60):
        async with rt.db.session() as s:
            cards = [r for r in (await s.exec(select(OutboxMessage))).all()
                     if r.to_id == "lead_zhao" and r.message["type"] == "card"]
        if cards:
            break
        await asyncio.sleep(0.05)
    assert cards, "the scheduler's sweep did not fire the step"
    metrics = await (await client.get("/metrics")).text()
    assert "relaydesk_escalation_steps_fired_total" in metrics
    assert "relaydesk_escalation_lateness_seconds_bucket" in metrics
    await rt.stop()
    assert rt.escalation.scheduler is None and not jobs.scheduler.running
