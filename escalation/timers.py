"""Escalation chains as rows: snapshots, positions, due times, fencing.

A chain is the steps of one policy that share a state ("unclaimed",
"no_progress", or an open ticket state). Its row (storage.models.EscalationTimer)
holds a snapshot of those steps, taken when the chain starts, so later config
edits leave a running escalation alone. The position `pos` counts steps over
the runs (run * len(steps) + index); `due_at` is when `pos` fires.

Rows are read and written with Core statements here, never as ORM objects, so
every write goes through `save`, a compare-and-set on `fence`: a writer working
from a stale read changes nothing and is told so.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Mapping

from sqlalchemy import bindparam, insert, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core import states as st
from escalation.config import PolicyConfig, StepConfig
from storage.models import EscalationTimer, Ticket

T = EscalationTimer.__table__
ACTIVE, STOPPED, DONE = "active", "stopped", "done"


def in_chain_state(chain: str, state: str) -> bool:
    """Whether a ticket in `state` is in the state a chain waits on."""
    if chain == "unclaimed":
        return state in st.UNCLAIMED
    if chain == "no_progress":
        return state in st.OPEN
    return state == chain


def restarts(chain: str, action: str, before: str, after: str) -> bool:
    """Whether a change (`before` -> `after`, both in the chain's state) starts the chain's clock again.

    unclaimed: when the ticket becomes unclaimed again (a claimed ticket transferred);
    no_progress: on every change except passing an unclaimed ticket around;
    one state: on entering it.
    """
    if chain == "unclaimed":
        return before not in st.UNCLAIMED
    if chain == "no_progress":
        return not (before in st.UNCLAIMED and after in st.UNCLAIMED)
    return before != chain


def snapshot(policy: PolicyConfig) -> dict[str, dict[str, Any]]:
    """The policy's chains as plain data: {chain: {"steps": [...], "repeat", "cycle_s"}}."""
    out: dict[str, dict[str, Any]] = {}
    for chain, steps in policy.chains().items():
        plain = [_plain(i, s) for i, s in steps]
        if policy.repeat_every is not None:
            cycle = policy.repeat_every.total_seconds()
        else:
            afters = [s["after"] for s in plain if s["since"] == "state"] or [s["after"] for s in plain]
            cycle = max(afters) or 600.0
        out[chain] = {"steps": plain, "repeat": policy.repeat, "cycle_s": cycle}
    return out


def _plain(index: int, step: StepConfig) -> dict[str, Any]:
    return {"i": index, "after": step.after.total_seconds(), "since": step.since,
            "targets": list(step.targets), "means": list(step.means)}


@dataclass
class Timer:
    ticket_id: int
    chain: str
    priority: str
    steps: list
    repeat: int
    cycle_s: float
    anchor_at: datetime
    pos: int = 0
    run_fired: int = 0
    fired: int = 0
    due_at: datetime | None = None
    fence: int = 0
    status: str = ACTIVE
    stop_reason: str | None = None
    last_fired_at: datetime | None = None
    last_jump_at: datetime | None = None
    done_keys: list = field(default_factory=list)
    updated_at: datetime | None = None
    new: bool = False  # not in the database yet

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "Timer":
        names = {f.name for f in fields(cls)} - {"new"}
        t = cls(**{k: m[k] for k in names})
        t.steps, t.done_keys = list(t.steps or []), list(t.done_keys or [])
        return t

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "new"}

    # ---- positions ------------------------------------------------------

    def step_at(self, pos: int) -> tuple[int, dict] | None:
        """(run, step) of a position, or None past the last run."""
        if not self.steps:
            return None
        run, i = divmod(pos, len(self.steps))
        if run > self.repeat:
            return None
        return run, self.steps[i]

    @property
    def current(self) -> tuple[int, dict] | None:
        return self.step_at(self.pos)

    def due_of(self, pos: int, ticket: Ticket) -> tuple[datetime, str | None] | None:
        """When a position fires, and for deadline steps the key that marks it done."""
        at = self.step_at(pos)
        if at is None:
            return None
        run, step = at
        shift = timedelta(seconds=step["after"] + run * self.cycle_s)
        if step["since"] == "deadline":
            deadline = ticket.respond_by if ticket.state in st.UNCLAIMED else ticket.resolve_by
            return deadline + shift, f"{step['i']}:{run}@{deadline.isoformat()}"
        return self.anchor_at + shift, None

    def schedule(self, ticket: Ticket) -> None:
        """Point `due_at` at the next position to fire; deadline steps already fired
        for the ticket's current deadline are skipped, repeats keep their spacing."""
        while True:
            due = self.due_of(self.pos, ticket)
            if due is None:
                self.due_at, self.status = None, DONE
                return
            when, key = due
            if key is not None and key in self.done_keys:
                self.pos += 1
                continue
            break
        run, _ = divmod(self.pos, len(self.steps))
        if run > 0 and self.pos % len(self.steps) == 0 and self.last_fired_at is not None:
            when = max(when, self.last_fired_at + timedelta(seconds=self.cycle_s))
        self.due_at, self.status = when, ACTIVE

    # ---- transitions ----------------------------------------------------

    def restart(self, ticket: Ticket, now: datetime) -> None:
        self.anchor_at, self.pos, self.run_fired, self.stop_reason = now, 0, 0, None
        self.schedule(ticket)

    def stop(self, reason: str) -> None:
        self.due_at, self.status, self.stop_reason = None, STOPPED, reason

    def advance(self, ticket: Ticket, now: datetime) -> None:
        """The current position fired: remember it and schedule the next one."""
        due = self.due_of(self.pos, ticket)
        if due is not None and due[1] is not None:
            self.done_keys = self.done_keys + [due[1]]
        self.pos += 1
        self.run_fired += 1
        self.fired += 1
        self.last_fired_at = now
        self.schedule(ticket)


def new_timer(ticket: Ticket, chain: str, snap: dict[str, Any], now: datetime) -> Timer:
    return Timer(ticket_id=ticket.id, chain=chain, priority=ticket.priority, steps=snap["steps"],
                 repeat=snap["repeat"], cycle_s=snap["cycle_s"], anchor_at=now, new=True)


async def load(s: AsyncSession, ticket_id: int) -> dict[str, Timer]:
    rows = (await s.exec(select(T).where(T.c.ticket_id == ticket_id))).mappings().all()
    return {r["chain"]: Timer.from_mapping(r) for r in rows}


# What moving a chain changes; a new snapshot (save(full=True)) writes every column.
_MOVING = ("anchor_at", "pos", "run_fired", "fired", "due_at", "fence", "status", "stop_reason",
           "last_fired_at", "last_jump_at", "done_keys", "updated_at")
_SNAPSHOT = ("priority", "steps", "repeat", "cycle_s")


def _cas(columns: tuple[str, ...]):
    """UPDATE ... WHERE key = :key AND fence = :seen, built once (the sweep runs it per step)."""
    return (update(T).where(T.c.ticket_id == bindparam("k_ticket"), T.c.chain == bindparam("k_chain"),
                            T.c.fence == bindparam("k_seen"))
            .values({c: bindparam(c, type_=T.c[c].type) for c in columns}))


_CAS_MOVE = _cas(_MOVING)
_CAS_FULL = _cas(_MOVING + _SNAPSHOT)
# One statement for every new timer, its values passed as parameters: built with
# the values inlined, each report compiled a fresh INSERT.
_INSERT = insert(T)


async def save(s: AsyncSession, timer: Timer, now: datetime, *, full: bool = False) -> bool:
    """Write the timer if nobody else did since it was read (compare-and-set on fence)."""
    if timer.new:
        await insert(s, [timer], now)
        return True
    seen = timer.fence
    timer.fence = seen + 1
    timer.updated_at = now
    params = {c: getattr(timer, c) for c in (_MOVING + _SNAPSHOT if full else _MOVING)}
    params.update(k_ticket=timer.ticket_id, k_chain=timer.chain, k_seen=seen)
    result = await s.exec(_CAS_FULL if full else _CAS_MOVE, params=params)
    if result.rowcount != 1:
        timer.fence = seen
        return False
    return True


async def insert(s: AsyncSession, timers: list[Timer], now: datetime) -> None:
    """Write new timers (a new ticket's chains) in one statement."""
    if not timers:
        return
    for timer in timers:
        timer.fence += 1
        timer.updated_at = now
    await s.exec(_INSERT, params=[timer.values() for timer in timers])
    for timer in timers:
        timer.new = False


def next_due(timers: dict[str, Timer] | list[Timer]) -> datetime | None:
    values = timers.values() if isinstance(timers, dict) else timers
    dues = [t.due_at for t in values if t.due_at is not None]
    return min(dues) if dues else None
