"""Bulk-create open tickets whose escalation falls due at chosen times.

For load drills and the escalation bench/tests: thousands of tickets in a
few bulk statements instead of one report each. The tickets are ordinary
"new" tickets of the first configured team, reported by the first customer,
with the priority's real policy snapshot; only the chosen chain gets a timer.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy import insert

from bot.config import Config
from bot.core.numbers import format_number
from escalation import timers as tm
from storage.db import Database
from storage.models import Ticket

CHUNK = 500


async def seed_due_tickets(db: Database, config: Config, n: int, *, first_due: datetime,
                           spread: timedelta = timedelta(0), priority: str = "P0",
                           chain: str = "unclaimed", now: datetime | None = None) -> list[int]:
    """Insert `n` tickets whose `chain` fires its first step between `first_due`
    and `first_due + spread`, evenly spaced; their ids in due order."""
    snap = tm.snapshot(config.escalation.policy(priority)).get(chain)
    if snap is None:
        raise ValueError(f"the {priority} policy has no {chain!r} steps")
    first_after = timedelta(seconds=snap["steps"][0]["after"])
    customer = next((p for p in config.people if p.role == "customer"), None)
    if customer is None:
        raise ValueError("the config needs a customer to report the tickets")
    team = config.teams[0].id if config.teams else None
    now = now or first_due - first_after
    # Real, checkable numbers on a day far away, so seeds never meet real tickets.
    day = f"2099{random.randint(1, 12):02d}{random.randint(1, 28):02d}"
    ids: list[int] = []
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        tickets, dues = [], []
        for i in range(start, start + count):
            due = first_due + (spread * (i / max(1, n - 1)) if n > 1 else timedelta(0))
            created = due - first_after
            dues.append(due)
            tickets.append(dict(
                number=format_number(config.tickets.domain, day, i + 1), state="new", category="other",
                category_name="其他", priority=priority, summary=f"seeded ticket {i}", impact=None,
                serial=None, location=f"{i % 9 + 1}号线", error_code=None, phone=None, evidence=[],
                reporter_id=customer.id, reporter_channel="playground", reporter_conv_kind="user",
                reporter_conv_id=customer.identities.get("playground", customer.id), team=team,
                assignee_id=None, resolution=None, rating=None, escalation_level=0, created_at=created,
                updated_at=created, claimed_at=None, resolved_at=None, closed_at=None,
                respond_by=created + config.tickets.deadlines[priority].respond,
                resolve_by=created + config.tickets.deadlines[priority].resolve, next_escalation_at=due))
        async with db.session() as s:
            result = await s.exec(insert(Ticket).returning(Ticket.id, Ticket.number), params=tickets)
            by_number = {number: tid for tid, number in result.all()}
            rows = []
            for row, due in zip(tickets, dues):
                tid = by_number[row["number"]]
                ids.append(tid)
                timer = tm.Timer(ticket_id=tid, chain=chain, priority=priority, steps=snap["steps"],
                                 repeat=snap["repeat"], cycle_s=snap["cycle_s"], anchor_at=row["created_at"],
                                 due_at=due, fence=1, updated_at=now)
                rows.append(timer.values())
            await s.exec(insert(tm.T), params=rows)
    return ids
