"""Which workers run where: `[server] workers` and `run_bot.py worker --roles`.

In an incident the serving process keeps the inbox (or hands it to a worker
process) and a worker process delivers the outbox; on PostgreSQL a receipt
queued by one process is sent by another at once (LISTEN/NOTIFY), not at its
next poll.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from app.runtime import Runtime
from app.web import create_app
from bot.config import ConfigError, load_config
from bot.events import Address, InboundEvent, Text
from bot.outbox import enqueue
from bot.wakeup import OUTBOX_CHANNEL, listen
from storage.db import Database
from storage.models import PlaygroundMessage

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("given,roles", [
    ("true", ("inbox", "outbox", "escalation")),
    ("false", ()),
    ('["outbox", "inbox"]', ("inbox", "outbox")),
    ('["escalation"]', ("escalation",)),
    ("[]", ()),
])
def test_server_workers_takes_a_flag_or_a_list_of_roles(tmp_path, given, roles):
    f = tmp_path / "c.toml"
    f.write_text(f"[server]\nworkers = {given}\n", encoding="utf-8")
    assert load_config(f, env={}).server.workers == roles


def test_environment_names_roles_with_commas():
    c = load_config(None, env={"RELAYDESK_SERVER__WORKERS": "inbox, escalation"})
    assert c.server.workers == ("inbox", "escalation")


def test_an_unknown_role_is_refused_naming_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[server]\nworkers = ["inbx"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_config(f, env={})


@pytest.mark.parametrize("given,named", [("inbox,mail", "--roles: mail"), ("", "--roles: none given")])
def test_the_worker_command_refuses_unknown_or_no_roles_and_starts_nothing(tmp_path, given, named):
    r = subprocess.run([sys.executable, str(REPO / "run_bot.py"), "worker", "--roles", given],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert named in r.stderr and "inbox, outbox, escalation" in r.stderr
    assert not (tmp_path / "data").exists()


async def test_a_transaction_that_queues_messages_notifies_outbox_workers_at_commit(pg_database_url):
    db = Database(pg_database_url)
    await db.init()
    woken = asyncio.Event()
    task = asyncio.create_task(listen(pg_database_url, OUTBOX_CHANNEL, woken.set))
    try:
        await asyncio.wait_for(woken.wait(), 10)  # it wakes once on connecting
        woken.clear()
        to = Address("playground", "user", "cust_wang")
        async with db.session() as s:
            enqueue(s, to, Text("收到"))
            await s.flush()  # the row is written now; the notification waits for commit
            await asyncio.sleep(0.3)
            assert not woken.is_set()
        await asyncio.wait_for(woken.wait(), 5)
        woken.clear()
        with pytest.raises(RuntimeError):
            async with db.session() as s:
                enqueue(s, to, Text("收到"))
                await s.flush()
                raise RuntimeError("rolled back")
        async with db.session() as s:  # a transaction that queues nothing notifies nobody
            await s.exec(select(PlaygroundMessage.id).limit(1))
        await asyncio.sleep(0.5)
        assert not woken.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.dispose()


async def test_the_receipt_applied_in_one_process_is_sent_by_the_outbox_of_another_at_once(
        make_config, pg_database_url):
    from tests.conftest import reset_postgres

    await reset_postgres(pg_database_url)
    # Polls far apart: only the notifications can make this quick.
    config = make_config(pg_database_url, RELAYDESK_OUTBOX__POLL_INTERVAL="30s")
    serving = Runtime(config)
    sender = Runtime(config)
    await serving.start(workers=["inbox"], defer_inbound=True)
    await sender.start(workers=["outbox", "escalation"])
    try:
        assert serving.roles == ("inbox",) and sender.roles == ("outbox", "escalation")
        await asyncio.sleep(0.5)  # both are listening
        result = await serving.bot(InboundEvent(
            platform="playground", event_id="r1", sender_id="cust_wang", kind="text",
            conversation=Address("playground", "user", "cust_wang"), text="3号线水泵漏水停机了"))
        assert not result.duplicate
        texts: list[str] = []
        for _ in range(50):
            async with serving.db.session() as s:
                rows = (await s.exec(select(PlaygroundMessage).where(
                    PlaygroundMessage.conversation == "user:cust_wang"))).all()
            texts = [json.dumps(r.payload, ensure_ascii=False) for r in rows]
            if any("SRV-" in t for t in texts):
                break
            await asyncio.sleep(0.1)
        assert any("SRV-" in t for t in texts), texts  # the receipt, within 5 s (the poll is 30 s)
        assert serving.outbox.last_pass is None  # the serving process sent nothing itself
    finally:
        await sender.stop()
        await serving.stop()


async def test_healthz_names_a_role_no_process_runs(make_config, sqlite_url, aiohttp_client):
    config = make_config(sqlite_url, RELAYDESK_SERVER__WORKERS="inbox")
    client = await aiohttp_client(create_app(config))
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503
    assert any("outbox worker" in x and "--roles outbox" in x for x in body["reasons"])
    assert any("escalation worker" in x for x in body["reasons"])
    assert not any("inbox worker" in x for x in body["reasons"])
    worker = Runtime(config)
    await worker.start(workers=["outbox", "escalation"])
    try:
        await worker.heartbeat.beat()
        r = await client.get("/healthz")
        body = await r.json()
        assert r.status == 200, body
        assert set(body["workers"]) == {"inbox"}
        assert any(set(p["passes"]) == {"outbox", "escalation"} for p in body["worker_processes"].values())
    finally:
        await worker.stop()


async def test_the_escalation_worker_counts_as_alive_by_its_sweeps_or_while_switched_off(make_config, sqlite_url):
    from datetime import timedelta

    on = Runtime(make_config(sqlite_url, RELAYDESK_ESCALATION__SWEEP_INTERVAL="60s"))
    await on.start(workers=["escalation"])
    try:
        for _ in range(50):  # the first sweep runs at start
            if on.heartbeat.passes()["escalation"] is not None:
                break
            await asyncio.sleep(0.05)
        assert on.heartbeat.passes()["escalation"] is not None
        assert on.heartbeat.stale_after["escalation"] == timedelta(seconds=180)  # a slow sweep is not a stall
    finally:
        await on.stop()
    off = Runtime(make_config(sqlite_url, RELAYDESK_ESCALATION__ENABLED="false"))
    await off.start(workers=["escalation"])
    try:  # no sweeps at all, but its scheduler (reports, retention) runs
        assert off.heartbeat.passes()["escalation"] is not None and not off.heartbeat.stale_workers()
    finally:
        await off.stop()


async def test_processes_starting_together_on_a_new_database_all_start(pg_database_url):
    from sqlalchemy import text

    from storage.models import SCHEMA_VERSION

    setup = Database(pg_database_url)
    await setup.init()
    async with setup.session() as s:  # as new: no version recorded yet
        await s.exec(text("DELETE FROM schema_meta"))
    starting = Database(pg_database_url)
    try:
        async with setup.session() as s:  # another process records the version meanwhile
            await s.exec(text("INSERT INTO schema_meta (key, value) VALUES ('version', :v)"),
                         params={"v": str(SCHEMA_VERSION)})
            task = asyncio.create_task(starting.init())
            await asyncio.sleep(0.5)
            assert not task.done()  # waiting for the other process's row
        await asyncio.wait_for(task, 10)  # it finds the row instead of failing on it
        async with setup.session() as s:
            assert (await s.exec(text("SELECT count(*) FROM schema_meta"))).one()[0] == 1
    finally:
        await starting.dispose()
        await setup.dispose()


async def test_the_answering_process_opens_its_database_connections_at_start(make_config, pg_database_url,
                                                                            aiohttp_client):
    from app.web import RUNTIME
    from storage.db import POOL_SIZE

    app = create_app(make_config(pg_database_url, RELAYDESK_SERVER__WORKERS="false"))
    await aiohttp_client(app)
    pool = app[RUNTIME].db.engine.pool
    assert pool.checkedin() + pool.checkedout() >= POOL_SIZE  # a burst's first answers do not wait to connect
