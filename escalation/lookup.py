"""People, platform identities and card button tokens for firing steps.

The sweep fires up to a batch of steps in one transaction; fetching what they
need with one query per kind for the whole batch (instead of a few per step)
keeps a step at a few hundred microseconds. Commands fire single steps and
use the same object lazily.
"""
from __future__ import annotations

import secrets
from typing import Any, Iterable

from sqlalchemy import Table, insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core.directory import Directory
from bot.events import Address
from storage.models import CardAction, Identity, Person, Ticket
from storage.types import utcnow

CARD_ACTIONS = ("ack", "transfer")  # the escalation card's buttons


class Lookup:
    def __init__(self, s: AsyncSession, directory: Directory):
        self.s = s
        self.directory = directory
        self.people: dict[str, Person | None] = {}
        self.idents: dict[str, dict[str, str]] = {}
        self.tokens_of: dict[int, dict[str, str]] = {}
        # Rows to insert, written in bulk by `flush` (plain rows: no ORM overhead).
        self.rows: dict[Table, list[dict[str, Any]]] = {}

    def add(self, table: Table, **row: Any) -> None:
        self.rows.setdefault(table, []).append(row)

    async def flush(self) -> None:
        rows, self.rows = self.rows, {}
        for table, values in rows.items():
            await self.s.exec(insert(table), params=values)

    async def prefetch(self, tickets: Iterable[Ticket], person_ids: Iterable[str]) -> None:
        tickets = list(tickets)
        ids = set(person_ids)
        for tk in tickets:
            ids.add(tk.reporter_id)
            if tk.assignee_id:
                ids.add(tk.assignee_id)
        ids -= set(self.people)
        if ids:
            for p in (await self.s.exec(select(Person).where(Person.id.in_(ids)))).all():
                self.people[p.id] = p
            for pid in ids:
                self.people.setdefault(pid, None)
                self.idents.setdefault(pid, {})
            for ident in (await self.s.exec(select(Identity).where(Identity.person_id.in_(ids)))).all():
                self.idents[ident.person_id][ident.platform] = ident.external_id
        todo = [tk.id for tk in tickets if tk.id not in self.tokens_of]
        if todo:
            for tid in todo:
                self.tokens_of[tid] = {}
            rows = (await self.s.exec(select(CardAction).where(CardAction.ticket_id.in_(todo),
                                                               CardAction.action.in_(CARD_ACTIONS)))).all()
            for row in rows:
                self.tokens_of[row.ticket_id][row.action] = row.token

    async def person(self, pid: str) -> Person | None:
        if pid not in self.people:
            self.people[pid] = await self.s.get(Person, pid)
        return self.people[pid]

    async def identities(self, pid: str) -> dict[str, str]:
        if pid not in self.idents:
            self.idents[pid] = await self.directory.identities(self.s, pid)
        return self.idents[pid]

    async def direct_address(self, pid: str, prefer: str | None = None) -> Address | None:
        """As Directory.direct_address, from the cache."""
        ids = await self.identities(pid)
        channels = self.directory.channels
        for ch in ([prefer] if prefer else []) + list(channels):
            if ch in ids and ch in channels:
                return Address(ch, "user", ids[ch])
        return None

    async def tokens(self, ticket_id: int) -> dict[str, str]:
        """The escalation card's button tokens (stable per ticket and action, as Notifier.tokens)."""
        if ticket_id not in self.tokens_of:
            rows = (await self.s.exec(select(CardAction).where(CardAction.ticket_id == ticket_id,
                                                               CardAction.action.in_(CARD_ACTIONS)))).all()
            self.tokens_of[ticket_id] = {r.action: r.token for r in rows}
        out = self.tokens_of[ticket_id]
        for action in CARD_ACTIONS:
            if action not in out:
                token = secrets.token_urlsafe(12)
                self.add(CardAction.__table__, token=token, ticket_id=ticket_id, action=action, created_at=utcnow())
                out[action] = token
        return out
