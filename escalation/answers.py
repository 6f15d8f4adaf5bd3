"""What a callee did on an escalation call, whichever provider reported it:
a key pressed, or the call ended.

Keypad 1 acknowledges: an engineer paged for an unclaimed ticket claims it,
anybody else acknowledges; either stops the chain and is logged "via phone".
Keypad 2 escalates to the next step now. A call that ends unanswered, busy,
failed or without a key pressed moves the chain to its next step at once
(a one-way call, which cannot take a key, moves on only when unanswered).
Both are fenced: a chain that moved since the call was placed (claimed
meanwhile, escalated by somebody else) is left alone. Each provider event is
applied once (ProcessedEvent per provider, call and event).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core import states as st
from bot.core.service import Actor, Change, Refused
from bot.texts import t
from escalation import timers as tm
from storage.models import Person, PhoneCall, ProcessedEvent, TicketEvent
from storage.queries import insert_ignore

if TYPE_CHECKING:  # pragma: no cover
    from escalation.engine import EscalationEngine

log = logging.getLogger(__name__)

KEYS = ("1", "2")
# What the callee is told after each result (voice.<key> in the locale).
SAID = {"acknowledged": "acknowledged", "claimed": "claimed", "escalated": "escalated"}


async def pressed(engine: "EscalationEngine", s: AsyncSession, call: PhoneCall, digits: str, platform: str,
                  event_id: str) -> str:
    """Apply key 1 or 2 of `call`; the result (acknowledged, claimed, escalated,
    stale). A repeated event answers as the first did and changes nothing."""
    if not await insert_ignore(s, ProcessedEvent, platform=platform, event_id=event_id):
        return call.status
    if call.ticket_id is None:
        return "stale"
    ticket = await engine.service.get(s, call.ticket_id)
    person = await s.get(Person, call.person_id)
    if ticket is None or person is None or ticket.state not in st.OPEN:
        result = "stale"
    else:
        actor = Actor(person, platform, "phone")
        result = (await _acknowledge(engine, s, actor, ticket) if digits == "1"
                  else await _escalate(engine, s, actor, ticket, call))
    call.digits = digits
    call.status = result
    s.add(call)
    return result


async def ended(engine: "EscalationEngine", s: AsyncSession, call: PhoneCall, status: str, *, answered: bool,
                platform: str, event_id: str, interactive: bool = True) -> bool:
    """The call ended with the provider's `status`: without a key it moves the
    chain on (a one-way call only when not `answered`). True when a step fired."""
    if not await insert_ignore(s, ProcessedEvent, platform=platform, event_id=event_id):
        return False
    if call.digits in KEYS:
        return False  # the key did what was asked
    call.status = status or call.status
    s.add(call)
    if call.ticket_id is None or (answered and not interactive):
        return False
    ticket = await engine.service.get(s, call.ticket_id)
    if ticket is None or ticket.state not in st.OPEN:
        return False
    person = await s.get(Person, call.person_id)
    name = person.name if person else call.person_id
    jumped = await engine.phone_jump(s, ticket, call.chain, call.fence, t("escalation.engine.no_answer", name=name))
    log.info("ticket %s: call to %s ended %s without a key; next step %s", ticket.number, call.person_id, status,
             "fired" if jumped else "not needed (chain moved)")
    return jumped


async def _acknowledge(engine: "EscalationEngine", s: AsyncSession, actor: Actor, ticket) -> str:
    result = "acknowledged"
    try:
        if ticket.state in st.UNCLAIMED and actor.person.role == "engineer":
            change = await engine.service.claim(s, actor, ticket)
            result = "claimed"
        else:
            change = await engine.service.acknowledge(s, actor, ticket)
    except Refused as r:
        # Paged, but the ticket's rules don't let this person claim or
        # acknowledge it: the page itself is acknowledged and logged.
        log.info("ticket %s: %s acknowledged by phone without the right to (%s)", ticket.number,
                 actor.person.id, r.key)
        detail = {"via": "phone", "page_only": True}
        s.add(TicketEvent(ticket_id=ticket.id, action="ack", actor_id=actor.person.id,
                          actor_name=actor.person.name, channel=actor.channel, at=engine.clock(),
                          from_state=ticket.state, to_state=ticket.state, detail=detail))
        change = Change(ticket, "ack", actor, ticket.state, ticket.state, True, detail)
    await engine.notifier.after(s, change)
    await engine.after(s, change)
    return result


async def _escalate(engine: "EscalationEngine", s: AsyncSession, actor: Actor, ticket, call: PhoneCall) -> str:
    timer = (await tm.load(s, ticket.id)).get(call.chain or "")
    if (timer is None or timer.status != tm.ACTIVE or timer.current is None
            or (call.fence is not None and timer.fence != call.fence)):
        return "stale"
    try:
        change = await engine.service.escalate(s, actor, ticket)
    except Refused:
        return "stale"
    change.detail.update(chain=call.chain, fence=call.fence)
    await engine.notifier.after(s, change)
    await engine.after(s, change)
    return "escalated" if change.detail.get("jumped") else "stale"


def said(result: str) -> str:
    """The locale key (voice.<key>) to say after a result."""
    return SAID.get(result, "stale")
