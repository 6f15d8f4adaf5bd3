"""Whose ticket it is when staff report on someone's behalf.

`报修 @王经理 3号楼消防泵漏水` (a platform @-mention, or "@name" typed),
`报修 王经理反映3号楼消防泵漏水` (a customer's name opening the text) or
`报修 13812345678 3号楼消防泵漏水` names the customer: the ticket is theirs and
every update goes to their own chat. A number nobody in the directory has
becomes a customer known by that number (reachable only through the staff
member who reported, who then relays); a typed @name nobody has is refused.
"""
from __future__ import annotations

import re

from sqlalchemy import func, literal
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core.directory import Directory, is_staff
from bot.events import Address, InboundEvent
from bot.texts import t
from storage.models import Person
from storage.queries import insert_ignore

MOBILE = re.compile(r"(?<!\d)(?:\+?86[-\s]?)?(1[3-9]\d{9})(?!\d)")
_AT_NAME = re.compile(r"^[@＠]([^\s@＠,，:：]+)\s*")


class UnknownCustomer(Exception):
    """A typed @name that is nobody in the directory."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


async def named_customer(s: AsyncSession, directory: Directory, event: InboundEvent, actor: Person,
                         text: str) -> tuple[Person | None, str]:
    """The customer a staff report names (None: nobody named) and the report text without the name."""
    for ext in event.mentions:
        p = await directory.known(s, event.platform, ext)
        if p is not None and p.id != actor.id and not is_staff(p):
            return p, _AT_NAME.sub("", text, count=1).strip() or text
    m = _AT_NAME.match(text)
    if m:
        name = m.group(1)
        people = (await s.exec(select(Person).where(Person.name == name, Person.active.is_(True)))).all()
        customers = [p for p in people if not is_staff(p)]
        if customers:
            return customers[0], text[m.end():].strip()
        if not people:
            raise UnknownCustomer(name)
        return None, text  # @ a colleague: a note to them, not the customer
    opening = await _customer_opening(s, text)
    if opening is not None:
        return opening, text
    m = MOBILE.search(text)
    if m:
        digits = m.group(1)
        known = (await s.exec(select(Person).where(Person.phone == digits, Person.active.is_(True)))).all()
        customers = [p for p in known if not is_staff(p)]
        if customers:
            return customers[0], text
        if known:
            return None, text
        pid = f"tel:{digits}"
        await insert_ignore(s, Person, id=pid, name=t("reply.phone_customer", tail=digits[-4:]), role="customer",
                            skills=[], phone=digits, active=True)
        return await s.get(Person, pid), text
    return None, text


async def _customer_opening(s: AsyncSession, text: str) -> Person | None:
    """The one customer whose name (two characters or more) opens the text."""
    head = literal(text)
    rows = (await s.exec(select(Person).where(
        Person.role == "customer", Person.active.is_(True), func.length(Person.name) >= 2,
        func.substr(head, 1, func.length(Person.name)) == Person.name).limit(2))).all()
    return rows[0] if len(rows) == 1 else None


async def customer_conversation(s: AsyncSession, directory: Directory, customer: Person, event: InboundEvent,
                                actor: Person) -> Address:
    """Where the customer hears about the ticket: their own chat, else the reporting staff member's."""
    for pid in (customer.id, actor.id):
        address = await directory.direct_address(s, pid, prefer=event.platform)
        if address is not None:
            return address
    return event.conversation
