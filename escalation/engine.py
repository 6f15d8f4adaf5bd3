"""The escalation engine: starts, moves and stops chains as tickets change, and
fires due steps from a sweep.

Commands reach the engine through `after(s, change)` inside the command's
transaction, with the ticket row locked. The sweep (every second, APScheduler)
locks due timer rows together with their tickets (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so several processes share the work and never wait on each other;
on SQLite every write transaction is serialised), advances each chain with a
compare-and-set on its fence and writes the notifications into the outbox, all
in one transaction. A step fires once: a second sweep either skips the locked
rows, sees the new due time, or fails the compare-and-set.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta
from typing import Any, Callable

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import select, update
from sqlmodel import select as orm_select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from bot.core import followup, verify
from bot.core import states as st
from bot.core.directory import Directory
from bot.core.notify import Notifier
from bot.core.service import Change, TicketService
from bot.events import Address, Call, CardMessage, Sms, Text
from bot.metrics import Metrics
from bot.outbox import enqueue
from bot.texts import t
from cards import build
from escalation import timers as tm
from escalation.config import phone_providers
from escalation.lookup import Lookup
from escalation.oncall import OnCall
from storage.db import Database
from storage.models import Person, Ticket, TicketEvent

log = logging.getLogger(__name__)

SYSTEM_CHANNEL = "system"
EVENT_ACTION = "escalation"  # TicketEvent.action of a fired step
PHONE_CHANNEL = "phone"  # escalation.phone.PhoneChannel


class EscalationMetrics:
    def __init__(self, metrics: Metrics):
        r = metrics.registry
        self.fired = Counter("relaydesk_escalation_steps_fired_total", "Escalation steps fired",
                             ["priority", "via"], registry=r)
        self.lateness = Histogram("relaydesk_escalation_lateness_seconds",
                                  "Time from a step's due time to its commit", registry=r,
                                  buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300))
        self.sweep_seconds = Histogram("relaydesk_escalation_sweep_seconds", "Duration of one sweep",
                                       registry=r, buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
        self.stale = Counter("relaydesk_escalation_stale_total",
                             "Fires skipped because the chain changed meanwhile (fence)", registry=r)
        self.errors = Counter("relaydesk_escalation_errors_total", "Steps that failed to fire", registry=r)
        self.late = Gauge("relaydesk_escalation_late", "Open tickets whose escalation is overdue (auditor)",
                          registry=r)
        self.outbox_stuck = Gauge("relaydesk_outbox_stuck", "Outbound messages undelivered too long (auditor)",
                                  registry=r)
        self.audits = Counter("relaydesk_auditor_runs_total", "Auditor runs by result", ["result"], registry=r)
        self.heartbeat_ok = Gauge("relaydesk_auditor_last_heartbeat_timestamp",
                                  "Unix time of the last heartbeat ping", registry=r)


class EscalationEngine:
    """Plugged into TicketBot (`after`, `oncall_text`); owns the sweep and periodic jobs."""

    RETRY_AFTER_ERROR = timedelta(seconds=30)

    def __init__(self, config: Config, db: Database, directory: Directory, service: TicketService,
                 notifier: Notifier, metrics: Metrics, *, on_commit: Callable[[], None] | None = None,
                 clock: Callable[[], datetime] | None = None,
                 jobs: Callable[["EscalationEngine"], Any] | None = None,
                 receipt_queue: Callable[["EscalationEngine"], Any] | None = None):
        self.config = config
        self.ec = config.escalation
        self.db = db
        self.directory = directory
        self.service = service
        self.notifier = notifier
        self.m = EscalationMetrics(metrics)
        self.on_commit = on_commit or (lambda: None)
        self._clock = clock
        self.oncall = OnCall(config)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # escalation.jobs.Jobs, made by start() with the factory the runtime passes in
        # (jobs.py builds on this module, so this module does not import it).
        self._jobs = jobs
        self.scheduler = None
        # escalation.receipt_queue.AliyunReceiptQueue with [aliyun] mns_queues, made by start()
        # with the factory the runtime passes in (it builds on this module, as jobs.py does).
        self._receipt_queue = receipt_queue
        self.receipt_queue = None
        # Called with the lateness (seconds) of every step the sweep fired (bench).
        self.recorder: Callable[[float], None] | None = None
        self._phone_warned = False
        self.stopping = False  # set while shutting down: a sweep ends after its current batch
        self.last_pass: float | None = None  # monotonic time the last sweep finished (/healthz)

    @property
    def batch_size(self) -> int:
        return self.ec.batch_size or (50 if self.db.is_postgres else 25)

    def clock(self) -> datetime:
        return self._clock() if self._clock else self.service.clock()

    @property
    def phones(self) -> bool:
        return bool(phone_providers(self.config))

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the sweep and the periodic jobs (call inside the running loop)."""
        if self._jobs is None:
            raise RuntimeError("the escalation engine was built without a jobs factory")
        if self.scheduler is None:
            self.scheduler = self._jobs(self)
            self.scheduler.start()
        if (self.receipt_queue is None and self._receipt_queue is not None and self.config.aliyun is not None
                and self.config.aliyun.mns_queues):
            self.receipt_queue = self._receipt_queue(self)
            await self.receipt_queue.start()

    async def stop(self) -> None:
        if self.receipt_queue is not None:
            await self.receipt_queue.stop()
            self.receipt_queue = None
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None

    # ---- the TicketBot hooks ---------------------------------------------

    async def after(self, s: AsyncSession, change: Change) -> None:
        """Start, restart, jump or stop the ticket's chains after a command."""
        ticket = change.ticket
        action = change.action
        if ticket.id is None or not change.changed:
            return
        now = self.clock()
        if action in ("report", "reopen"):
            await self._start(s, ticket, now, new=action == "report")
            return
        if action == "escalate":
            await self._manual_jump(s, change, now)
            return
        if action != "ack" and action != "transfer" and change.from_state == change.to_state:
            return  # nothing a chain follows changed (a note, a linked report, a photo): no timer to read
        timers = await tm.load(s, ticket.id)
        if not timers:
            return
        touched: list[tm.Timer] = []
        if action == "ack":
            for timer in timers.values():
                if timer.status == tm.ACTIVE and (timer.chain == "unclaimed" or timer.run_fired > 0):
                    timer.stop("ack")
                    touched.append(timer)
        elif change.from_state != change.to_state or action == "transfer":
            before, after = change.from_state or "", change.to_state or ticket.state
            for timer in timers.values():
                if not tm.in_chain_state(timer.chain, after):
                    if timer.status == tm.ACTIVE:
                        timer.stop(action)
                        touched.append(timer)
                elif tm.restarts(timer.chain, action, before, after):
                    timer.restart(ticket, now)
                    touched.append(timer)
        for timer in touched:
            if not await tm.save(s, timer, now):  # pragma: no cover - writers hold the ticket lock
                log.error("ticket %s: escalation chain %s changed under a locked ticket", ticket.id, timer.chain)
        if touched:
            ticket.next_escalation_at = tm.next_due(timers)
            s.add(ticket)

    async def oncall_text(self, s: AsyncSession, person: Person) -> str:
        teams = self.oncall.teams()
        if person.team in teams:
            teams = [person.team] + [x for x in teams if x != person.team]
        ids = {p.id for p in self.config.people}
        rows = (await s.exec(orm_select(Person).where(Person.id.in_(ids)))).all() if ids else []
        names = {p.id: p.name for p in rows}
        phones = {p.id: p.phone for p in rows}
        return self.oncall.text(teams, self.clock(), names, phones)

    async def run_verifications(self) -> int:
        """The resolution checks 完工 submitted (bot/core/verify.py); how many were answered."""
        return await verify.run_pending(self.db, self.service, self.notifier, self.after, self.on_commit)

    async def sweep_followups(self) -> None:
        """Follow-ups past their deadline: their own steps remind the lead or director."""
        async with self.db.session() as s:
            fired = await followup.sweep(s, self.config, self.clock(), self.notifier.remind_followup)
        if fired:
            self.on_commit()

    # ---- chains -------------------------------------------------------------

    async def _start(self, s: AsyncSession, ticket: Ticket, now: datetime, *, new: bool = False) -> None:
        """Snapshot the ticket's policy into fresh chains (report, reopen); a `new`
        ticket (just filed) has no chains to read."""
        existing = {} if new else await tm.load(s, ticket.id)
        chains = tm.snapshot(self.ec.policy(ticket.priority)) if self.ec.enabled else {}
        fresh: list[tm.Timer] = []  # chains the ticket never had: one INSERT for all
        for chain, snap in chains.items():
            old = existing.pop(chain, None)
            timer = tm.new_timer(ticket, chain, snap, now)
            if old is not None:
                timer.fence, timer.fired, timer.new = old.fence, old.fired, False
            if tm.in_chain_state(chain, ticket.state):
                timer.restart(ticket, now)
            else:
                timer.stop("not_in_state")
            if timer.new:
                fresh.append(timer)
            else:
                await tm.save(s, timer, now, full=True)
            existing[chain] = timer
        await tm.insert(s, fresh, now)
        for chain, old in list(existing.items()):
            if chain not in chains and old.status == tm.ACTIVE:
                old.stop("policy_changed")
                await tm.save(s, old, now)
        ticket.next_escalation_at = tm.next_due(existing)
        s.add(ticket)

    async def _manual_jump(self, s: AsyncSession, change: Change, now: datetime) -> None:
        """加急: fire the next step of the running chain now (once per cooldown).

        From the phone (keypad 2) the change's detail names the chain and fence
        of the call: a chain that moved since the call was placed is left alone.
        `change.detail["jumped"]` tells the caller whether a step fired.
        """
        ticket, actor = change.ticket, change.actor
        via = "phone" if actor.via == "phone" else "manual"
        change.detail["jumped"] = False
        if via != "phone" and await self._in_cooldown(s, ticket, now):
            log.info("ticket %s: 加急 by %s within the cooldown, no new page", ticket.number, actor.person.id)
            return
        timers = await tm.load(s, ticket.id)
        wanted = change.detail.get("chain")
        if via == "phone" and wanted:
            reason = t("escalation.engine.phone_escalate", name=actor.person.name)
            timer = timers.get(wanted)
            if (timer is None or timer.status != tm.ACTIVE or timer.current is None
                    or timer.fence != change.detail.get("fence", timer.fence)):
                return
            active = [timer]
        else:
            reason = t("escalation.engine.manual", name=actor.person.name)
            active = [x for x in timers.values() if x.status == tm.ACTIVE and x.current is not None]
            active.sort(key=lambda x: (x.chain != "unclaimed", x.due_at or now))
        if active:
            if await self._fire(s, ticket, active[0], now, via=via, reason=reason, manual=True):
                change.detail["jumped"] = True
                ticket.next_escalation_at = tm.next_due(timers)
                s.add(ticket)
            return
        # Nothing left to escalate to: tell the lead, as a 加急 always did.
        await self.notifier.escalate_to(s, ticket, ["lead"], reason)
        change.detail["jumped"] = True
        s.add(TicketEvent(ticket_id=ticket.id, action=EVENT_ACTION, actor_id=None,
                          actor_name=t("escalation.engine.actor"), channel=SYSTEM_CHANNEL, at=now,
                          from_state=ticket.state, to_state=ticket.state,
                          detail={"chain": None, "via": via, "targets": ["lead"], "means": ["card", "mention"]}))

    async def _in_cooldown(self, s: AsyncSession, ticket: Ticket, now: datetime) -> bool:
        cooldown = self.ec.escalate_cooldown
        if cooldown <= timedelta(0):
            return False
        # Only manual jumps count: an automatic step just before a 加急 does not block it.
        rows = (await s.exec(orm_select(TicketEvent.detail).where(
            TicketEvent.ticket_id == ticket.id, TicketEvent.action == EVENT_ACTION,
            TicketEvent.at > now - cooldown))).all()
        return any(d.get("via") in ("manual",) for d in rows)

    async def phone_jump(self, s: AsyncSession, ticket: Ticket, chain: str | None, fence: int | None,
                         reason: str) -> bool:
        """A call nobody answered (or answered with 2): the next step now, unless
        the chain moved since the call was placed (its fence changed)."""
        if chain is None:
            return False
        timers = await tm.load(s, ticket.id)
        timer = timers.get(chain)
        if timer is None or timer.status != tm.ACTIVE or timer.current is None:
            return False
        if fence is not None and timer.fence != fence:
            return False
        now = self.clock()
        if not await self._fire(s, ticket, timer, now, via="no_answer", reason=reason, manual=True):
            return False
        ticket.next_escalation_at = tm.next_due(timers)
        s.add(ticket)
        return True

    # ---- firing -------------------------------------------------------------

    async def _fire(self, s: AsyncSession, ticket: Ticket, timer: tm.Timer, now: datetime, *, via: str,
                    reason: str | None = None, manual: bool = False, lookup: Lookup | None = None) -> bool:
        """Fire the timer's current step: advance it (compare-and-set), then write
        the notifications and the audit event. False when the chain had moved on."""
        at = timer.current
        if at is None:
            return False
        run, step = at
        due, pos, anchor = timer.due_at, timer.pos, timer.anchor_at
        timer.advance(ticket, now)
        if manual:
            timer.last_jump_at = now
        if not await tm.save(s, timer, now):
            self.m.stale.inc()
            return False
        own_lookup = lookup is None
        lookup = lookup or Lookup(s, self.directory)
        if reason is None:
            reason = self._auto_reason(ticket, timer.chain, step, anchor, now)
        reason = t("escalation.engine.sep").join(
            [reason, t("escalation.engine.level", level=step["i"] + 1)]
            + ([t("escalation.engine.run", run=run + 1)] if run else []))
        targets = await self._targets(lookup, ticket, step["targets"], now)
        await self._notify(s, lookup, ticket, timer, pos, step, targets, reason)
        if via not in ("manual", "phone"):  # 加急 (text, card, keypad 2) is counted by the service
            ticket.escalation_level += 1
        lookup.add(TicketEvent.__table__, ticket_id=ticket.id, action=EVENT_ACTION, actor_id=None,
                   actor_name=t("escalation.engine.actor"), channel=SYSTEM_CHANNEL, at=now,
                   from_state=ticket.state, to_state=ticket.state,
                   detail={"chain": timer.chain, "pos": pos, "step": step["i"], "run": run, "via": via,
                           "targets": [p.id for p in targets], "means": step["means"],
                           "due": due.isoformat() if due else None})
        if own_lookup:
            await lookup.flush()
        self.m.fired.labels(ticket.priority, via).inc()
        return True

    def _auto_reason(self, ticket: Ticket, chain: str, step: dict, anchor: datetime, now: datetime) -> str:
        if step["since"] == "deadline":
            unclaimed = ticket.state in st.UNCLAIMED
            deadline = ticket.respond_by if unclaimed else ticket.resolve_by
            minutes = max(0, int((now - deadline).total_seconds() // 60))
            name = t("escalation.engine.deadline_respond" if unclaimed else "escalation.engine.deadline_resolve")
            return t("escalation.engine.deadline", deadline=name, minutes=minutes)
        minutes = max(0, int((now - anchor).total_seconds() // 60))
        if chain == "unclaimed":
            return t("escalation.engine.unclaimed", minutes=minutes)
        if chain == "no_progress":
            return t("escalation.engine.no_progress", minutes=minutes, state=t(f"state.{ticket.state}"))
        return t("escalation.engine.in_state", minutes=minutes, state=t(f"state.{chain}"))

    def target_ids(self, ticket: Ticket, specs: list[str], now: datetime) -> list[tuple[str, str | None]]:
        """Step targets as (person id, stand-in id), resolved now (on-call by the
        current shift); the stand-in (the team's lead) is paged when the on-call
        person cannot be (on leave)."""
        team = self.config.team(ticket.team)
        out: list[tuple[str, str | None]] = []
        for spec in specs:
            kind, _, ref = spec.partition(":")
            pid, stand_in = None, None
            if kind == "assignee":
                pid = ticket.assignee_id
            elif kind in ("lead", "director"):
                pid = getattr(team, kind, None) if team else None
            elif kind == "person":
                pid = ref
            elif kind == "oncall":
                team_id = ref or ticket.team
                oncall_team = self.config.team(team_id)
                cur = self.oncall.who(team_id, now) if team_id else None
                stand_in = oncall_team.lead if oncall_team else None
                pid = cur.person_id if cur else None
                if pid is None:
                    pid, stand_in = stand_in, None
                    log.warning("ticket %s: nobody on call for team %s now, paging its lead %s",
                                ticket.number, team_id, pid)
            if pid and pid not in (p for p, _ in out):
                out.append((pid, stand_in))
        return out

    async def _targets(self, lookup: Lookup, ticket: Ticket, specs: list[str], now: datetime) -> list[Person]:
        people: list[Person] = []
        for pid, stand_in in self.target_ids(ticket, specs, now):
            p = await lookup.person(pid)
            if (p is None or not p.active) and stand_in:
                log.warning("ticket %s: %s is on call but unavailable, paging %s", ticket.number, pid, stand_in)
                p = await lookup.person(stand_in)
            if p is not None and p.active and p not in people:
                people.append(p)
        if not people:
            log.warning("ticket %s: escalation step %s has nobody to notify", ticket.number, specs)
        return people

    async def _card(self, lookup: Lookup, ticket: Ticket, reason: str):
        """The escalation card (as Notifier.escalation_card, from the lookup's cache)."""
        reporter = await lookup.person(ticket.reporter_id)
        assignee = await lookup.person(ticket.assignee_id) if ticket.assignee_id else None
        v = build.TicketView(
            id=ticket.id, number=ticket.number, state=ticket.state, priority=ticket.priority,
            category_name=ticket.category_name, summary=ticket.summary,
            reporter_name=reporter.name if reporter else ticket.reporter_id,
            assignee_name=assignee.name if assignee else None, location=ticket.location, serial=ticket.serial,
            error_code=ticket.error_code, phone=ticket.phone, impact=ticket.impact,
            respond_by=self.service.local(ticket.respond_by), resolve_by=self.service.local(ticket.resolve_by),
            rating=ticket.rating, resolution=ticket.resolution, evidence=tuple(ticket.evidence))
        return build.escalation_card(v, await lookup.tokens(ticket.id), reason)

    async def _notify(self, s: AsyncSession, lookup: Lookup, ticket: Ticket, timer: tm.Timer, pos: int,
                      step: dict, targets: list[Person], reason: str) -> None:
        means = step["means"]
        names_sep = t("escalation.engine.names_sep")
        phone_means = [m for m in means if m in ("call", "sms")]
        notes: list[str] = []
        phone_people = [p for p in targets if p.phone]
        if phone_means:
            for p in targets:
                if not p.phone:
                    notes.append(t("escalation.engine.no_phone", name=p.name))
            if not self.phones and targets:
                notes.append(t("escalation.engine.phone_off", names=names_sep.join(p.name for p in targets)))
                if not self._phone_warned:
                    self._phone_warned = True
                    log.warning("an escalation step asks for %s but no phone provider is configured: "
                                "sending cards instead (configure [aliyun], [tencent] or [twilio] to place calls)",
                                "/".join(phone_means))
            elif phone_people:
                key = "escalation.engine.called" if "call" in means else "escalation.engine.texted"
                notes.append(t(key, names=names_sep.join(p.name for p in phone_people)))
        if not targets:
            notes.append(t("escalation.engine.nobody"))
        full = t("escalation.engine.sep").join([reason] + notes)
        # A card whenever asked for, and in place of a call/SMS that cannot go out.
        card_people = targets if "card" in means else (
            [p for p in targets if not (self.phones and p.phone)] if phone_means else [])
        if card_people:
            card = await self._card(lookup, ticket, full)
            for p in card_people:
                dm = await lookup.direct_address(p.id, prefer=ticket.reporter_channel)
                if dm is not None:
                    enqueue(s, dm, CardMessage(card), ticket.id)
        if "mention" in means:
            for group in self.directory.team_groups(ticket.team):
                mentions: tuple[str, ...] = ()
                for p in targets:
                    ids = await lookup.identities(p.id)
                    if group.channel in ids:
                        mentions += (ids[group.channel],)
                text = (t("escalation.engine.group", number=ticket.number, reason=full,
                          names=names_sep.join(p.name for p in targets)) if targets else
                        t("escalation.engine.group_nobody", number=ticket.number, reason=full))
                enqueue(s, group, Text(text, mentions), ticket.id)
        if self.phones and phone_people:
            spoken = self.voice_text(ticket, reason)
            fields = self.voice_fields(ticket)
            for p in phone_people:
                to = Address(PHONE_CHANNEL, "user", p.id)
                if "call" in means:
                    enqueue(s, to, Call(p.phone, spoken, p.id, ticket.id, timer.chain, pos, timer.fence, fields),
                            ticket.id)
                if "sms" in means:
                    enqueue(s, to, Sms(p.phone, t("voice.sms", text=spoken), p.id, ticket.id, fields), ticket.id)

    def voice_fields(self, ticket: Ticket) -> tuple[tuple[str, str], ...]:
        """What fills a provider's approved TTS / SMS template (escalation.config.TEMPLATE_FIELDS)."""
        parts = ticket.number.split("-")
        minutes = max(0, int((self.clock() - ticket.created_at).total_seconds() // 60))
        return (("number", parts[2] if len(parts) >= 3 else ticket.number), ("category", ticket.category_name),
                ("place", ticket.location or t("voice.location_unknown")),
                ("priority", t(f"priority.{ticket.priority}")), ("minutes", str(minutes)))

    def voice_text(self, ticket: Ticket, reason: str) -> str:
        parts = ticket.number.split("-")
        seq = parts[2] if len(parts) >= 3 else ticket.number
        return t("voice.message", priority=t(f"priority.{ticket.priority}"), seq=" ".join(seq),
                 category=ticket.category_name, location=ticket.location or t("voice.location_unknown"),
                 reason=reason)

    # ---- the sweep -------------------------------------------------------------

    async def sweep(self) -> int:
        """Fire every due step, most overdue first; the number fired."""
        started = time.perf_counter()
        total = 0
        try:
            while True:
                try:
                    fired, seen = await self._sweep_batch(self.clock())
                except Exception:
                    # One bad ticket must not hold up the others: fire them one by one.
                    log.exception("escalation batch failed; retrying its steps one at a time")
                    fired, seen = await self._sweep_singly(self.clock())
                total += fired
                if seen < self.batch_size or self.stopping:
                    break
            self.last_pass = time.monotonic()
        finally:
            self.m.sweep_seconds.observe(time.perf_counter() - started)
        return total

    def _due_query(self, now: datetime, only: tuple[int, str] | None = None):
        T = tm.T
        stmt = select(Ticket, *T.c).join(T, T.c.ticket_id == Ticket.id).where(T.c.due_at <= now)
        if only is not None:
            stmt = stmt.where(T.c.ticket_id == only[0], T.c.chain == only[1])
        stmt = stmt.order_by(T.c.due_at, T.c.ticket_id).limit(self.batch_size)
        if self.db.is_postgres:
            # Locks timer and ticket rows together; rows another sweep or a
            # command holds are skipped, never waited for (no deadlock).
            stmt = stmt.with_for_update(skip_locked=True)
        return stmt

    async def _sweep_batch(self, now: datetime, only: tuple[int, str] | None = None) -> tuple[int, int]:
        """One transaction: lock up to a batch of due chains, fire them, commit."""
        fired: list[float] = []
        async with self.db.session() as s:
            rows = (await s.exec(self._due_query(now, only))).all()
            if rows:
                tickets = {row[0].id: row[0] for row in rows}
                lookup = Lookup(s, self.directory)
                people = {p.id for p in self.config.people}
                await lookup.prefetch(tickets.values(), people)
                T = tm.T
                dues: dict[int, dict[str, datetime | None]] = {}
                for tid, chain, due in (await s.exec(select(T.c.ticket_id, T.c.chain, T.c.due_at)
                                                     .where(T.c.ticket_id.in_(list(tickets))))).all():
                    dues.setdefault(tid, {})[chain] = due
                # The compare-and-set updates need nothing flushed first: the new
                # rows (outbox, events) go out together at commit, in bulk.
                with s.no_autoflush:
                    for row in rows:
                        ticket: Ticket = row[0]
                        timer = tm.Timer.from_mapping(row._mapping)
                        due = timer.due_at
                        if await self._fire_due(s, lookup, ticket, timer, now):
                            fired.append(due.timestamp())
                        dues[ticket.id][timer.chain] = timer.due_at
                        ticket.next_escalation_at = min((x for x in dues[ticket.id].values() if x), default=None)
                        s.add(ticket)
                    await lookup.flush()
        if fired:
            committed = self.clock().timestamp()
            for due_ts in fired:
                late = max(0.0, committed - due_ts)
                self.m.lateness.observe(late)
                if self.recorder is not None:
                    self.recorder(late)
            self.on_commit()
        return len(fired), len(rows)

    async def _sweep_singly(self, now: datetime) -> tuple[int, int]:
        """The slow path after a failed batch: each due chain in its own transaction;
        one that fails again is postponed, so it cannot block the sweep."""
        T = tm.T
        async with self.db.session() as s:
            keys = (await s.exec(select(T.c.ticket_id, T.c.chain, T.c.fence).where(T.c.due_at <= now)
                                 .order_by(T.c.due_at, T.c.ticket_id).limit(self.batch_size))).all()
        fired = 0
        for ticket_id, chain, fence in keys:
            try:
                fired += (await self._sweep_batch(now, (ticket_id, chain)))[0]
            except Exception:
                self.m.errors.inc()
                log.exception("ticket %s: escalation step %s failed; retrying in %ss", ticket_id, chain,
                              self.RETRY_AFTER_ERROR.total_seconds())
                async with self.db.session() as s:
                    await s.exec(update(T).where(T.c.ticket_id == ticket_id, T.c.chain == chain,
                                                 T.c.fence == fence)
                                 .values(due_at=now + self.RETRY_AFTER_ERROR, fence=fence + 1))
        return fired, len(keys)

    async def _fire_due(self, s: AsyncSession, lookup: Lookup, ticket: Ticket, timer: tm.Timer,
                        now: datetime) -> bool:
        if not tm.in_chain_state(timer.chain, ticket.state):
            # A command should have stopped it; stop rather than page for nothing.
            timer.stop("not_in_state")
            await tm.save(s, timer, now)
            return False
        return await self._fire(s, ticket, timer, now, via="sweep", lookup=lookup)


__all__ = ["EscalationEngine"]
