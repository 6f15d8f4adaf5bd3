"""Durability and exactly-once on a real database: two OS processes sweeping
the same PostgreSQL, a bot restarted after its steps fell due, a claim racing
a sweep in another process."""
from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from escalation.seed import seed_due_tickets
from storage.models import EscalationTimer, OutboxMessage, Ticket, TicketEvent
from test_escalation_engine import any_db, write_config  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent

# A bot process reduced to its sweep, in a tight loop: says "ready", waits for
# the go file, sweeps until the stop file appears (or, with "idle", until it
# found nothing for half a second), prints what it fired.
SWEEPER = textwrap.dedent("""
    import asyncio, json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from sqlalchemy import text
    from bot.config import load_config
    from bot.core.directory import Directory
    from bot.core.notify import Notifier
    from bot.core.service import TicketService
    from bot.metrics import Metrics
    from escalation.engine import EscalationEngine
    from storage.db import Database

    async def main():
        # The engine as Runtime wires it, minus what a sweep never uses
        # (classifier, SOP library, channels): a quicker start.
        config = load_config(sys.argv[2], env={})
        db = Database(config.database_url)
        directory = Directory(config, ["playground"])
        service = TicketService(config, directory, None)
        engine = EscalationEngine(config, db, directory, service, Notifier(config, directory, service, None),
                                  Metrics())
        go, stop, idle = sys.argv[3], sys.argv[4], sys.argv[5] == "idle"
        async with db.session() as s:  # connected before the start line
            await s.exec(text("SELECT 1"))
        print("ready", flush=True)
        give_up = time.time() + 60  # never outlive a stuck test
        while not os.path.exists(go) and time.time() < give_up:
            await asyncio.sleep(0.002)
        fired = sweeps = 0
        quiet_since = None
        while not os.path.exists(stop) and time.time() < give_up:
            n = await engine.sweep()
            fired, sweeps = fired + n, sweeps + 1
            if n:
                quiet_since = None
            elif idle:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since > 0.5:
                    break
            await asyncio.sleep(0.01)
        print(json.dumps({"fired": fired, "sweeps": sweeps}), flush=True)
        await db.dispose()

    asyncio.run(main())
""")


class Sweepers:
    """Sweeper processes; their stderr goes to files (a full pipe would stall a
    child inside a transaction), and they are killed if anything goes wrong."""

    def __init__(self, tmp_path, config_path, count: int, *, idle: bool):
        script = tmp_path / "sweeper.py"
        script.write_text(SWEEPER, encoding="utf-8")
        self.go, self.stop_file = tmp_path / "go", tmp_path / "stop"
        self.errs = [tmp_path / f"sweeper{i}.err" for i in range(count)]
        self.procs = []
        for err in self.errs:
            with err.open("w") as f:  # the child keeps its own copy of the descriptor
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(script), str(REPO), str(config_path), str(self.go),
                     str(self.stop_file), "idle" if idle else "file"],
                    stdout=subprocess.PIPE, stderr=f, text=True))

    def stderr(self) -> str:
        return "\n".join(err.read_text() for err in self.errs)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            while not select_readable(p.stdout, deadline):
                if p.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"a sweeper did not start: {self.stderr()}")
            line = p.stdout.readline()
            assert line.strip() == "ready", self.stderr()

    def start(self) -> None:
        self.go.touch()

    def stop(self) -> None:
        self.stop_file.touch()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout and not p.stdout.closed:
                p.stdout.close()

    def results(self, timeout: float = 60) -> list[dict]:
        out = []
        try:
            for p in self.procs:
                stdout, _ = p.communicate(timeout=timeout)
                assert p.returncode == 0, self.stderr()
                out.append(json.loads(stdout.strip().splitlines()[-1]))
        finally:
            self.kill()
        return out


def select_readable(stream, deadline: float) -> bool:
    import select as _select

    ready, _, _ = _select.select([stream], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
    return bool(ready)


@pytest.fixture
def sweepers(tmp_path):
    made: list[Sweepers] = []

    def make(config_path, count: int, *, idle: bool) -> Sweepers:
        made.append(Sweepers(tmp_path, config_path, count, idle=idle))
        return made[-1]

    yield make
    for sw in made:
        sw.stop()
        sw.kill()


FAST = """
[escalation]
batch_size = 20

[[escalation.P0.steps]]
after = "10m"
state = "unclaimed"
targets = ["lead"]
means = ["mention", "card"]
"""


async def rows(db, model, *where):
    async with db.session() as s:
        q = select(model)
        for w in where:
            q = q.where(w)
        return list((await s.exec(q)).all())


@pytest.fixture
async def pg_app(tmp_path, pg_database_url, aiohttp_client):
    from conftest import reset_postgres

    await reset_postgres(pg_database_url)
    config = write_config(tmp_path, pg_database_url, policies=FAST)
    app = create_app(config, workers=False)
    await aiohttp_client(app)  # schema and people, before any sweeper starts
    return app[RUNTIME], tmp_path / "relaydesk.toml"


@pytest.mark.postgres
async def test_two_processes_fire_each_of_1000_steps_exactly_once(pg_app, sweepers):
    rt, config_path = pg_app
    now = datetime.now(timezone.utc)
    ids = await seed_due_tickets(rt.db, rt.config, 1000, first_due=now - timedelta(seconds=30),
                                 spread=timedelta(seconds=29))
    procs = sweepers(config_path, 2, idle=True)
    await asyncio.to_thread(procs.wait_ready)
    procs.start()
    done = await asyncio.to_thread(procs.results)
    assert "Traceback" not in procs.stderr(), procs.stderr()
    assert sum(r["fired"] for r in done) == 1000
    assert all(r["fired"] > 0 for r in done), done  # both really swept

    events = await rows(rt.db, TicketEvent, TicketEvent.action == "escalation")
    assert Counter(e.ticket_id for e in events) == Counter({tid: 1 for tid in ids})
    outbox = await rows(rt.db, OutboxMessage)
    cards = Counter(o.ticket_id for o in outbox if o.to_id == "lead_zhao" and o.message["type"] == "card")
    texts = Counter(o.ticket_id for o in outbox if o.to_kind == "group" and o.message["type"] == "text")
    assert cards == Counter({tid: 1 for tid in ids}) and texts == Counter({tid: 1 for tid in ids})
    timers = await rows(rt.db, EscalationTimer)
    assert all(t.status == "done" and t.due_at is None and t.fired == 1 for t in timers)


@pytest.mark.postgres
async def test_a_claim_racing_a_sweep_in_another_process(pg_app, sweepers):
    rt, config_path = pg_app
    procs = sweepers(config_path, 1, idle=False)
    await asyncio.to_thread(procs.wait_ready)
    n = 80
    ids = await seed_due_tickets(rt.db, rt.config, n, first_due=datetime.now(timezone.utc) + timedelta(seconds=0.3),
                                 spread=timedelta(seconds=1.0))
    numbers = {t.id: t.number for t in await rows(rt.db, Ticket, Ticket.id.in_(ids))}
    order = list(ids)
    random.Random(7).shuffle(order)
    procs.start()
    await asyncio.sleep(0.3)
    for i, tid in enumerate(order):  # claims in random order while the steps fall due
        who = "eng_zhang" if i % 2 else "eng_li"
        await rt.bot.handle(InboundEvent(platform="playground", event_id=f"race{tid}", sender_id=who,
                                         conversation=Address("playground", "user", who), kind="text",
                                         text=f"认领 {numbers[tid]}"))
        await asyncio.sleep(0.005)
    procs.stop()
    (done,) = await asyncio.to_thread(procs.results)
    assert "Traceback" not in procs.stderr(), procs.stderr()

    tickets = {t.id: t for t in await rows(rt.db, Ticket, Ticket.id.in_(ids))}
    events = await rows(rt.db, TicketEvent, TicketEvent.action == "escalation")
    fired = Counter(e.ticket_id for e in events)
    timers = await rows(rt.db, EscalationTimer, EscalationTimer.ticket_id.in_(ids))
    assert done["fired"] == len(fired) and max(fired.values(), default=1) == 1
    assert 0 < len(fired) < n, "the claims and the sweep did not overlap"
    for t in tickets.values():
        assert t.state == "claimed" and t.assignee_id in ("eng_zhang", "eng_li")
        assert t.next_escalation_at is None
    assert all(tm.due_at is None for tm in timers)
    for e in events:  # a step fired only before its ticket was claimed
        assert e.at <= tickets[e.ticket_id].claimed_at
        assert e.from_state == "new"


async def test_steps_that_fell_due_while_the_bot_was_down_fire_once_at_start(tmp_path, any_db,
                                                                            aiohttp_client):
    config = write_config(tmp_path, any_db, policies=FAST)
    down = create_app(config, workers=False)
    await aiohttp_client(down)
    rt = down[RUNTIME]
    now = datetime.now(timezone.utc)
    # Steps that fell due over the last two seconds, while no bot was running.
    ids = await seed_due_tickets(rt.db, config, 100, first_due=now - timedelta(seconds=2),
                                 spread=timedelta(seconds=1.9))
    await rt.stop()

    up = create_app(config, workers=True)  # the real scheduler
    await aiohttp_client(up)
    started = datetime.now(timezone.utc)  # the bot is up: its first sweep runs now
    rt = up[RUNTIME]
    for _ in range(200):
        events = await rows(rt.db, TicketEvent, TicketEvent.action == "escalation")
        if len(events) >= 100:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.2)  # a second sweep must not fire them again
    events = sorted(await rows(rt.db, TicketEvent, TicketEvent.action == "escalation"), key=lambda e: e.id)
    assert Counter(e.ticket_id for e in events) == Counter({tid: 1 for tid in ids})
    # At start, not at some later period; the 2 s lateness bar is bench/escalation.py's to measure
    # (a timed assertion here fails on a busy machine without saying anything about the code).
    assert max(e.at for e in events) - started < timedelta(seconds=10)
    dues = [e.detail["due"] for e in events]
    assert dues == sorted(dues)  # most overdue first


async def test_stopping_mid_backlog_loses_nothing_and_fires_nothing_twice(tmp_path, sqlite_url, aiohttp_client):
    config = write_config(tmp_path, sqlite_url, policies=FAST.replace("batch_size = 20", "batch_size = 10"))
    first = create_app(config, workers=False)
    await aiohttp_client(first)
    rt = first[RUNTIME]
    ids = await seed_due_tickets(rt.db, config, 400, first_due=datetime.now(timezone.utc) - timedelta(seconds=5),
                                 spread=timedelta(seconds=4))
    await rt.escalation.start()  # the real scheduler, stopped while it works through the backlog
    for _ in range(200):
        if await rows(rt.db, TicketEvent, TicketEvent.action == "escalation"):
            break
        await asyncio.sleep(0.01)
    await rt.escalation.stop()
    fired = {e.ticket_id for e in await rows(rt.db, TicketEvent, TicketEvent.action == "escalation")}
    due = {t.ticket_id for t in await rows(rt.db, EscalationTimer, EscalationTimer.due_at.is_not(None))}
    assert fired and fired.isdisjoint(due) and fired | due == set(ids)  # each step fired or still due
    assert len(fired) < len(ids), "the sweep finished before it was stopped"
    await rt.escalation.start()
    for _ in range(200):
        if len(await rows(rt.db, TicketEvent, TicketEvent.action == "escalation")) >= len(ids):
            break
        await asyncio.sleep(0.05)
    await rt.escalation.stop()
    events = await rows(rt.db, TicketEvent, TicketEvent.action == "escalation")
    assert Counter(e.ticket_id for e in events) == Counter({tid: 1 for tid in ids})
