"""People, their platform identities, teams, and where to reach them."""
from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from bot.events import Address
from storage.db import Database
from storage.models import Identity, Person
from storage.queries import insert_ignore
from storage.types import utcnow

STAFF_ROLES = frozenset({"engineer", "lead", "director", "manager", "admin"})
LEAD_ROLES = frozenset({"lead", "director", "manager", "admin"})
ENGINEER_ROLES = frozenset({"engineer", "lead"})


def is_staff(p: Person) -> bool:
    return p.role in STAFF_ROLES


def is_lead(p: Person) -> bool:
    return p.role in LEAD_ROLES


class Directory:
    """Who is who. The configured people's platform identities are kept in memory:
    every report looks up the staff it notifies and most messages come from staff,
    and those identities change only when `sync` writes the config to the database
    (which reloads them). Customers, and everyone's name, role and active flag, are
    read from the database in the caller's transaction."""

    def __init__(self, config: Config, channels: list[str]):
        self.config = config
        # Channels in preference order for reaching a person directly.
        self.channels = channels
        self._staff_ids: dict[str, dict[str, str]] = {}  # configured person -> platform -> external id
        self._staff_of: dict[tuple[str, str], str] = {}  # (platform, external id) -> configured person

    async def sync(self, db: Database) -> None:
        """Make the database's people match the config (runtime customers stay)."""
        async with db.session() as s:
            if db.is_postgres:  # processes starting together write the people one at a time
                await s.exec(text("SELECT pg_advisory_xact_lock(4242002)"))
            for pc in self.config.people:
                p = await s.get(Person, pc.id)
                if p is None:
                    p = Person(id=pc.id, name=pc.name, role=pc.role)
                # `active` is left alone: a leave reported by a platform outlives restarts.
                p.name, p.role, p.team, p.region = pc.name, pc.role, pc.team, pc.region
                p.skills, p.phone = list(pc.skills), pc.phone
                s.add(p)
            await s.flush()
            for pc in self.config.people:
                for platform, ext in pc.identities.items():
                    ident = await s.get(Identity, (platform, ext))
                    if ident is None:
                        s.add(Identity(platform=platform, external_id=ext, person_id=pc.id))
                    else:
                        ident.person_id = pc.id
        await self.reload(db)

    async def reload(self, db: Database) -> None:
        """Read the configured people's identities as committed (after `sync`, or after
        anything else wrote identities of configured people)."""
        ids = [pc.id for pc in self.config.people]
        staff_ids: dict[str, dict[str, str]] = {pid: {} for pid in ids}
        if ids:
            async with db.session() as s:
                for ident in (await s.exec(select(Identity).where(Identity.person_id.in_(ids)))).all():
                    staff_ids[ident.person_id][ident.platform] = ident.external_id
        self._staff_ids = staff_ids
        self._staff_of = {(platform, ext): pid for pid, by in staff_ids.items() for platform, ext in by.items()}

    async def resolve(
        self, s: AsyncSession, platform: str, external_id: str, display_name: str | None
    ) -> Person | None:
        """The person behind a platform user id; unknown senders become customers if allowed."""
        pid = self._staff_of.get((platform, external_id))
        if pid is not None:
            person = await s.get(Person, pid)
            return person if person is not None and person.active else None
        ident = await s.get(Identity, (platform, external_id))
        if ident is not None:
            person = await s.get(Person, ident.person_id)
            return person if person is not None and person.active else None
        if not self.config.allow_unknown_reporters:
            return None
        pid = self.stranger_id(platform, external_id)
        name = (display_name or "").strip()[:64] or f"{platform}用户{external_id[-4:]}"
        # Insert first (a no-op when the person exists): one statement less than looking first.
        row = dict(id=pid, name=name, role="customer", team=None, region=None, skills=[], phone=None,
                   active=True, created_at=utcnow())
        inserted = await insert_ignore(s, Person, **row)
        await insert_ignore(s, Identity, platform=platform, external_id=external_id, person_id=pid)
        if not inserted:  # somebody registered them meanwhile: as they are now
            return await s.get(Person, pid)
        # Just written, every column known: the session takes it as loaded instead of reading it back.
        person = Person(**row)
        make_transient_to_detached(person)
        s.add(person)
        return person

    async def known(self, s: AsyncSession, platform: str, external_id: str) -> Person | None:
        """The person behind a platform user id, without registering strangers."""
        pid = self._staff_of.get((platform, external_id))
        if pid is None:
            ident = await s.get(Identity, (platform, external_id))
            pid = ident.person_id if ident is not None else None
        return await s.get(Person, pid) if pid is not None else None

    async def identities(self, s: AsyncSession, person_id: str) -> dict[str, str]:
        """platform -> external id of a person (a copy: callers may add to it)."""
        if person_id in self._staff_ids:
            return dict(self._staff_ids[person_id])
        # Cached for the transaction: one change looks the same people up many times.
        cache = s.info.setdefault("identities", {})
        if person_id not in cache:
            rows = (await s.exec(select(Identity).where(Identity.person_id == person_id))).all()
            cache[person_id] = {r.platform: r.external_id for r in rows}
        return cache[person_id]

    async def direct_address(self, s: AsyncSession, person_id: str, prefer: str | None = None) -> Address | None:
        ids = await self.identities(s, person_id)
        order = ([prefer] if prefer else []) + self.channels
        for ch in order:
            if ch in ids and ch in self.channels:
                return Address(ch, "user", ids[ch])
        return None

    def team_groups(self, team_id: str | None) -> list[Address]:
        team = self.config.team(team_id)
        out = []
        for ch in self.channels:
            chat = team.groups.get(ch) if team else None
            if chat is None:
                section = getattr(self.config, ch, None)
                chat = getattr(section, "engineers_chat", None)
            if chat:
                out.append(Address(ch, "group", chat))
        return out

    async def find_by_name(self, s: AsyncSession, text: str, *, any_role: bool = False) -> Person | None:
        """An engineer or lead named in free text (转交 李工); with `any_role`, anybody
        in the directory, so the caller can say why that person cannot act."""
        name = re.sub(r"[@＠\s]", "", text)
        if not name:
            return None
        q = select(Person) if any_role else select(Person).where(Person.role.in_(ENGINEER_ROLES))
        staff = (await s.exec(q.order_by(Person.id))).all()
        exact = [p for p in staff if p.name == name or p.id == name]
        if exact:
            return exact[0]
        partial = [p for p in staff if p.name in name]
        return partial[0] if len(partial) == 1 else None

    # ---- what a platform's address book reports ------------------------------

    @staticmethod
    def stranger_id(platform: str, external_id: str) -> str:
        """The person id a platform user the config does not name gets (as in `resolve`)."""
        return f"{platform}:{external_id}"

    async def member_changed(self, s: AsyncSession, platform: str, external_id: str, *,
                             name: str = "", phone: str | None = None, left: bool = False) -> Person | None:
        """Apply an address-book event of a platform (a member joined, changed or left).

        A member who left is deactivated; one who joined or changed is active again,
        takes the platform's name, and its mobile number when none is known. A member
        nobody knows yet becomes a customer under the id `resolve` would give them,
        but only with a name (without one, their first message registers them).
        Returns the person changed, or None when nothing changed.
        """
        ident = await s.get(Identity, (platform, external_id))
        person = await s.get(Person, ident.person_id) if ident is not None else None
        if left:
            if person is None or not person.active:
                return None
            person.active = False
            s.add(person)
            return person
        name = name.strip()[:64]
        if ident is not None:
            if person is None:
                return None
            if name:
                person.name = name
            if phone and not person.phone:
                person.phone = phone
            person.active = True
            s.add(person)
            return person
        if not name:
            return None
        pid = self.stranger_id(platform, external_id)
        await insert_ignore(s, Person, id=pid, name=name, role="customer", skills=[], phone=phone, active=True,
                            created_at=utcnow())
        person = await s.get(Person, pid)
        if person is not None:
            person.name, person.active = name, True
            s.add(person)
        await insert_ignore(s, Identity, platform=platform, external_id=external_id, person_id=pid)
        return person

    async def display_names(self, s: AsyncSession, platform: str, external_ids: list[str]) -> dict[str, str]:
        """Platform user id -> the person's name, for the ids the directory knows."""
        rows = (await s.exec(select(Identity.external_id, Person.name)
                             .join(Person, Person.id == Identity.person_id)
                             .where(Identity.platform == platform, Identity.external_id.in_(external_ids)))).all()
        return dict(rows)
