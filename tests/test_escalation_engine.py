"""The escalation engine through the ticket core: chains start from a snapshot,
the sweep fires each due step once, 加急 jumps, claims and acknowledgements
stop chains, restarts fire overdue steps in lateness order, fencing.

The clock is a fake one the test moves; the sweep is called directly.
Runs on SQLite and on the real PostgreSQL (the `any_db` fixture; `-m "not postgres"` skips the latter).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from app.web import RUNTIME, create_app
from bot.events import Address, InboundEvent
from escalation import timers as tm
from escalation.seed import seed_due_tickets
from storage.models import EscalationTimer, OutboxMessage, Ticket, TicketEvent
from support import DEMO_PEOPLE, config_toml, directory_toml, load_toml

T0 = datetime(2026, 1, 26, 2, 0, tzinfo=timezone.utc)  # 10:00 in Shanghai, a Monday

PEOPLE = directory_toml("playground", {pid: pid for pid, _, _ in DEMO_PEOPLE}, "engineers",
                        skills={"eng_zhang": ("泵", "电气")}, phones=("eng_zhang", "eng_li", "lead_zhao", "director_sun"))

POLICIES = """
[escalation]
escalate_cooldown = "5m"

[[escalation.P0.steps]]
after = "10m"
state = "unclaimed"
targets = ["lead"]
means = ["mention", "card"]

[[escalation.P0.steps]]
after = "30m"
state = "no_progress"
targets = ["director"]
means = ["card", "call"]

[[escalation.P1.steps]]
after = "30m"
state = "unclaimed"
targets = ["lead"]
means = ["mention", "card"]

[[escalation.P2.steps]]
after = "4h"
state = "unclaimed"
targets = ["lead"]
means = ["card"]
"""


def write_config(tmp_path, database_url: str, extra: str = "", policies: str = POLICIES):
    return load_toml(tmp_path, config_toml(database_url, extra + policies + PEOPLE,
                                           server='public_url = "https://relay.example.com"', playground=True))


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


_ids = itertools.count(1)


class Esc:
    """The app with a fake clock, and what the tests look at."""

    def __init__(self, rt, clock: Clock):
        self.rt = rt
        self.clock = clock
        self.engine = rt.escalation

    async def say(self, person: str, text: str):
        event = InboundEvent(platform="playground", event_id=f"x{next(_ids)}", sender_id=person,
                             conversation=Address("playground", "user", person), kind="text", text=text)
        return await self.rt.bot.handle(event)

    async def finish(self, person: str, note: str = "换了密封圈") -> None:
        """开始维修, the two photos 完工 needs, then 完工 with a note."""
        await self.say(person, "开始维修")
        for _ in range(2):
            await self.rt.bot.handle(InboundEvent(
                platform="playground", event_id=f"x{next(_ids)}", sender_id=person,
                conversation=Address("playground", "user", person), kind="image", image_ref=f"pic{next(_ids)}"))
        await self.say(person, f"完工 {note}")

    async def report(self, text: str = "3号线水泵漏水停机了 #P0") -> Ticket:
        await self.say("cust_wang", text)
        return await self.ticket()

    async def sweep(self) -> int:
        return await self.engine.sweep()

    async def ticket(self, ticket_id: int | None = None) -> Ticket:
        async with self.rt.db.session() as s:
            q = select(Ticket).order_by(Ticket.id.desc())
            if ticket_id is not None:
                q = q.where(Ticket.id == ticket_id)
            return (await s.exec(q)).first()

    async def timers(self, ticket_id: int) -> dict[str, EscalationTimer]:
        async with self.rt.db.session() as s:
            rows = (await s.exec(select(EscalationTimer).where(EscalationTimer.ticket_id == ticket_id))).all()
        return {r.chain: r for r in rows}

    async def fired(self, ticket_id: int | None = None) -> list[TicketEvent]:
        async with self.rt.db.session() as s:
            q = select(TicketEvent).where(TicketEvent.action == "escalation").order_by(TicketEvent.id)
            if ticket_id is not None:
                q = q.where(TicketEvent.ticket_id == ticket_id)
            return list((await s.exec(q)).all())

    async def outbox(self) -> list[OutboxMessage]:
        async with self.rt.db.session() as s:
            return list((await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())

    async def esc_cards_to(self, person: str) -> list[dict]:
        return [r.message["card"] for r in await self.outbox()
                if (r.channel, r.to_kind, r.to_id) == ("playground", "user", person)
                and r.message["type"] == "card" and r.message["card"]["kind"] == "escalation"]

    async def group_texts(self) -> list[dict]:
        return [r.message for r in await self.outbox()
                if (r.to_kind, r.to_id) == ("group", "engineers") and r.message["type"] == "text"]


class PinnedPriority:
    """The real classifier, except that "#P1" in a report pins its priority
    (the tests are about escalation, not about classification)."""

    def __init__(self, inner):
        self.inner = inner

    def classify(self, text: str):
        c = self.inner.classify(text)
        m = re.search(r"#(P[012])", text)
        return dataclasses.replace(c, priority=m.group(1)) if m else c

    def __getattr__(self, name):
        return getattr(self.inner, name)


P1_TEXT = "办公室空调不制冷了，麻烦安排人看一下 #P1"
P2_TEXT = "二楼走廊的灯不亮了，麻烦安排人看一下 #P2"


async def make_esc(config, aiohttp_client) -> Esc:
    clock = Clock()
    app = create_app(config, workers=False)
    rt = app[RUNTIME]
    rt.service.clock = clock
    rt.service.classifier = PinnedPriority(rt.service.classifier)
    await aiohttp_client(app)
    return Esc(rt, clock)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_db(request, tmp_path):
    """A database URL: a fresh SQLite file, or the emptied test PostgreSQL (marked postgres)."""
    from conftest import fresh_database_url

    return await fresh_database_url(request, tmp_path)


@pytest.fixture
async def esc(tmp_path, any_db, aiohttp_client):
    return await make_esc(write_config(tmp_path, any_db), aiohttp_client)


@pytest.fixture
async def esc_sqlite(tmp_path, sqlite_url, aiohttp_client):
    return await make_esc(write_config(tmp_path, sqlite_url), aiohttp_client)


# ---- chains start, fire once, stop ---------------------------------------------


async def test_report_starts_both_chains_and_the_sweep_fires_the_lead_once(esc):
    tk = await esc.report()
    assert tk.priority == "P0"
    timers = await esc.timers(tk.id)
    assert set(timers) == {"unclaimed", "no_progress"}
    assert timers["unclaimed"].due_at == T0 + timedelta(minutes=10)
    assert timers["no_progress"].due_at == T0 + timedelta(minutes=30)
    assert tk.next_escalation_at == T0 + timedelta(minutes=10)

    esc.clock.advance(minutes=9, seconds=59)
    assert await esc.sweep() == 0
    esc.clock.advance(seconds=1)
    assert await esc.sweep() == 1
    assert await esc.sweep() == 0  # once

    cards = await esc.esc_cards_to("lead_zhao")
    assert len(cards) == 1
    assert tk.number in cards[0]["title"] and "未认领已 10 分钟" in cards[0]["subtitle"]
    assert {b["label"] for b in cards[0]["buttons"]} == {"确认收到", "转交"}
    group = await esc.group_texts()
    assert any(tk.number in m["text"] and "赵组长" in m["text"] and m["mentions"] == ["lead_zhao"] for m in group)
    events = await esc.fired(tk.id)
    assert [(e.detail["chain"], e.detail["targets"], e.channel) for e in events] == \
        [("unclaimed", ["lead_zhao"], "system")]
    tk = await esc.ticket(tk.id)
    assert tk.escalation_level == 1
    assert tk.next_escalation_at == T0 + timedelta(minutes=30)


async def test_voice_step_without_twilio_is_a_card_that_says_so(esc, caplog):
    tk = await esc.report()
    esc.clock.advance(minutes=30)
    assert await esc.sweep() == 2  # the lead (10 min) and the director (30 min), most overdue first
    assert [e.detail["chain"] for e in await esc.fired(tk.id)] == ["unclaimed", "no_progress"]
    cards = await esc.esc_cards_to("director_sun")
    assert len(cards) == 1 and "未配置电话服务" in cards[0]["subtitle"]
    assert not [r for r in await esc.outbox() if r.channel == "phone"]
    assert "no phone provider is configured" in caplog.text


async def test_claim_stops_the_unclaimed_chain_and_restarts_no_progress(esc):
    tk = await esc.report()
    esc.clock.advance(minutes=5)
    await esc.say("eng_zhang", "认领")
    timers = await esc.timers(tk.id)
    assert timers["unclaimed"].due_at is None and timers["unclaimed"].stop_reason == "claim"
    assert timers["no_progress"].due_at == T0 + timedelta(minutes=35)
    esc.clock.advance(minutes=25)  # 30 min after the report, 25 after the claim
    assert await esc.sweep() == 0
    esc.clock.advance(minutes=4)
    await esc.say("eng_zhang", "出发")  # progress: the no-progress clock starts again
    esc.clock.advance(minutes=29)
    assert await esc.sweep() == 0
    esc.clock.advance(minutes=1)
    assert await esc.sweep() == 1
    (event,) = await esc.fired(tk.id)
    assert event.detail["chain"] == "no_progress" and event.detail["targets"] == ["director_sun"]
    assert "无进展" in (await esc.esc_cards_to("director_sun"))[0]["subtitle"]
    assert not await esc.esc_cards_to("lead_zhao")


async def test_resolve_and_cancel_stop_everything(esc):
    tk = await esc.report()
    await esc.say("eng_zhang", "认领")
    await esc.finish("eng_zhang")
    assert (await esc.ticket(tk.id)).state == "resolved"
    assert all(t.due_at is None for t in (await esc.timers(tk.id)).values())
    tk2 = await esc.report(P2_TEXT)
    await esc.say("cust_wang", f"取消 {tk2.number}")
    assert all(t.due_at is None for t in (await esc.timers(tk2.id)).values())
    esc.clock.advance(hours=10)
    assert await esc.sweep() == 0
    assert (await esc.ticket(tk.id)).next_escalation_at is None


async def test_acknowledge_stops_the_unclaimed_chain_only(esc):
    tk = await esc.report()
    esc.clock.advance(minutes=5)
    await esc.say("lead_zhao", f"确认 {tk.number}")  # the lead has seen it
    timers = await esc.timers(tk.id)
    assert timers["unclaimed"].status == "stopped" and timers["unclaimed"].stop_reason == "ack"
    assert timers["no_progress"].status == "active"  # nobody claimed it yet: the director still hears
    esc.clock.advance(minutes=5)
    assert await esc.sweep() == 0
    esc.clock.advance(minutes=20)
    assert await esc.sweep() == 1
    assert [e.detail["chain"] for e in await esc.fired(tk.id)] == ["no_progress"]


async def test_transfer_of_a_claimed_ticket_restarts_the_unclaimed_chain(esc):
    tk = await esc.report()
    await esc.say("eng_zhang", "认领")
    esc.clock.advance(minutes=3)
    await esc.say("eng_zhang", "转交 李工")
    timers = await esc.timers(tk.id)
    assert timers["unclaimed"].due_at == esc.clock.now + timedelta(minutes=10)
    esc.clock.advance(minutes=10)
    assert await esc.sweep() == 1


# ---- snapshot --------------------------------------------------------------------


async def test_a_running_chain_keeps_its_snapshot_when_the_config_changes(esc):
    tk = await esc.report()
    policy = esc.rt.config.escalation.P0
    policy.steps[0].after = timedelta(minutes=1)
    policy.steps[0].targets = ["director"]
    esc.clock.advance(minutes=2)
    assert await esc.sweep() == 0  # the running chain still says 10 minutes
    tk2 = await esc.report("2号线水泵停了 #P0")  # a new ticket takes the new policy
    assert (await esc.timers(tk2.id))["unclaimed"].due_at == esc.clock.now + timedelta(minutes=1)
    esc.clock.advance(minutes=8)
    assert await esc.sweep() == 2
    by_ticket = {e.ticket_id: e.detail["targets"] for e in await esc.fired()}
    assert by_ticket == {tk.id: ["lead_zhao"], tk2.id: ["director_sun"]}


async def test_reopen_takes_a_fresh_snapshot(esc):
    tk = await esc.report()
    await esc.say("eng_zhang", "认领")
    await esc.finish("eng_zhang")
    esc.rt.config.escalation.P0.steps[0].after = timedelta(minutes=2)
    esc.clock.advance(minutes=1)
    await esc.say("cust_wang", "重开 还是漏")
    timers = await esc.timers(tk.id)
    assert timers["unclaimed"].due_at == esc.clock.now + timedelta(minutes=2)
    assert timers["unclaimed"].steps[0]["after"] == 120


# ---- 加急 ----------------------------------------------------------------------


async def test_escalate_jumps_to_the_next_step_now_once_per_cooldown(esc):
    tk = await esc.report()
    esc.clock.advance(minutes=1)
    await esc.say("cust_wang", "加急")
    # In the same transaction as the command: the lead's card is already in the outbox.
    assert len(await esc.esc_cards_to("lead_zhao")) == 1
    assert (await esc.timers(tk.id))["unclaimed"].status == "done"
    (event,) = await esc.fired(tk.id)
    assert event.detail["via"] == "manual"
    esc.clock.advance(minutes=1)
    await esc.say("cust_wang", "加急")  # within the cooldown: nobody paged again
    assert len(await esc.fired(tk.id)) == 1
    esc.clock.advance(minutes=5)
    await esc.say("eng_li", f"加急 {tk.number}")  # the next step: the director
    events = await esc.fired(tk.id)
    assert [e.detail["chain"] for e in events] == ["unclaimed", "no_progress"]
    assert len(await esc.esc_cards_to("director_sun")) == 1
    esc.clock.advance(minutes=30)
    assert await esc.sweep() == 0  # nothing left to fire
    tk = await esc.ticket(tk.id)
    assert tk.escalation_level == 3  # three 加急 commands


async def test_escalate_with_nothing_left_still_tells_the_lead(esc):
    tk = await esc.report(P2_TEXT)
    assert tk.priority == "P2"
    await esc.say("eng_zhang", "认领")  # P2 has no no-progress chain: nothing runs now
    await esc.say("eng_zhang", "加急")
    assert len(await esc.esc_cards_to("lead_zhao")) == 1
    assert (await esc.fired(tk.id))[0].detail["chain"] is None


# ---- restarts, lateness order, fencing ------------------------------------------


async def test_overdue_steps_fire_at_once_in_lateness_order(esc):
    first = await esc.report("1号线水泵停了 #P0")
    esc.clock.advance(minutes=3)
    second = await esc.report("2号线水泵停了 #P0")
    esc.clock.advance(minutes=3)
    third = await esc.report("3号线水泵停了 #P0")
    esc.clock.advance(hours=2)  # "the bot was down"
    assert await esc.sweep() == 6
    order = [(e.ticket_id, e.detail["chain"]) for e in await esc.fired()]
    assert order == [(first.id, "unclaimed"), (second.id, "unclaimed"), (third.id, "unclaimed"),
                     (first.id, "no_progress"), (second.id, "no_progress"), (third.id, "no_progress")]


async def test_a_stale_writer_changes_nothing(esc):
    tk = await esc.report()
    esc.clock.advance(minutes=10)
    async with esc.rt.db.session() as s:
        stale = (await tm.load(s, tk.id))["unclaimed"]
    assert await esc.sweep() == 1
    # A late sweep working from what it read before the first one committed:
    async with esc.rt.db.session() as s:
        ticket = await esc.rt.service.get(s, tk.id)
        assert not await esc.engine._fire(s, ticket, stale, esc.clock.now, via="sweep")
    assert len(await esc.fired(tk.id)) == 1
    assert len(await esc.esc_cards_to("lead_zhao")) == 1


async def test_claim_racing_sweeps_leaves_consistent_tickets(esc):
    n = 24
    cfg = esc.rt.config
    ids = await seed_due_tickets(esc.rt.db, cfg, n, first_due=esc.clock.now, now=esc.clock.now)
    async with esc.rt.db.session() as s:
        numbers = {t.id: t.number for t in (await s.exec(select(Ticket).where(Ticket.id.in_(ids)))).all()}

    async def claim(tid: int) -> None:
        await esc.say("eng_zhang" if tid % 2 else "eng_li", f"认领 {numbers[tid]}")

    await asyncio.gather(esc.sweep(), *(claim(tid) for tid in ids), esc.sweep())
    await esc.sweep()
    fired = {e.ticket_id for e in await esc.fired()}
    async with esc.rt.db.session() as s:
        tickets = (await s.exec(select(Ticket).where(Ticket.id.in_(ids)))).all()
        timers = (await s.exec(select(EscalationTimer).where(EscalationTimer.ticket_id.in_(ids)))).all()
    assert all(t.state == "claimed" and t.assignee_id for t in tickets)
    assert all(t.due_at is None for t in timers)  # every unclaimed chain stopped
    assert len(await esc.fired()) == len(fired)  # at most once per ticket
    assert all(t.next_escalation_at is None for t in tickets)


# ---- repeat and deadline-anchored steps ---------------------------------------------


REPEAT = """
[escalation.P0]
repeat = 2
repeat_every = "15m"

[[escalation.P0.steps]]
after = "10m"
state = "unclaimed"
targets = ["lead"]
means = ["card"]

[[escalation.P1.steps]]
after = "0s"
state = "no_progress"
since = "deadline"
targets = ["lead"]
means = ["card"]

[[escalation.P2.steps]]
after = "1h"
state = "on_site"
targets = ["assignee"]
means = ["card"]
"""


@pytest.fixture
async def esc_repeat(tmp_path, sqlite_url, aiohttp_client):
    return await make_esc(write_config(tmp_path, sqlite_url, policies=REPEAT), aiohttp_client)


async def test_repeat_runs_the_chain_again(esc_repeat):
    esc = esc_repeat
    tk = await esc.report()
    fired_at = []
    for _ in range(60):
        esc.clock.advance(minutes=1)
        if await esc.sweep():
            fired_at.append(int((esc.clock.now - T0).total_seconds() // 60))
    assert fired_at == [10, 25, 40]
    assert (await esc.timers(tk.id))["unclaimed"].status == "done"


async def test_deadline_step_follows_the_tickets_deadlines(esc_repeat):
    esc = esc_repeat
    tk = await esc.report(P1_TEXT)
    assert tk.priority == "P1" and tk.respond_by == T0 + timedelta(minutes=30)
    assert (await esc.timers(tk.id))["no_progress"].due_at == tk.respond_by
    esc.clock.advance(minutes=30)
    assert await esc.sweep() == 1
    await esc.say("eng_zhang", "认领")  # progress: the deadline is now resolve_by (24h)
    assert (await esc.timers(tk.id))["no_progress"].due_at == tk.resolve_by
    esc.clock.advance(hours=24)
    assert await esc.sweep() == 1
    await esc.say("eng_zhang", "出发")  # a restart does not page again for a deadline already chased
    esc.clock.advance(hours=1)
    assert await esc.sweep() == 0
    assert len(await esc.fired(tk.id)) == 2


async def test_a_chain_for_one_state(esc_repeat):
    esc = esc_repeat
    tk = await esc.report(P2_TEXT)
    await esc.say("eng_zhang", "认领")
    esc.clock.advance(hours=2)
    assert await esc.sweep() == 0
    await esc.say("eng_zhang", "到达")
    esc.clock.advance(minutes=59)
    assert await esc.sweep() == 0
    esc.clock.advance(minutes=1)
    assert await esc.sweep() == 1
    assert (await esc.fired(tk.id))[0].detail["targets"] == ["eng_zhang"]
    assert len(await esc.esc_cards_to("eng_zhang")) == 1


async def test_passing_an_unclaimed_ticket_around_is_not_progress(esc):
    tk = await esc.report()
    esc.clock.advance(minutes=20)
    assert await esc.sweep() == 1  # the lead, at 10 minutes
    await esc.say("eng_zhang", f"转交 李工 {tk.number}")
    timers = await esc.timers(tk.id)
    assert timers["no_progress"].due_at == T0 + timedelta(minutes=30)  # the clock runs on
    assert timers["unclaimed"].status == "done"  # the lead was already paged at 10 minutes
