"""The voice webhook: what a person pressed during an escalation call, and how
the call ended.

    POST /callbacks/twilio/voice?call=<phone_call id>&event=gather   keypad (Digits)
    POST /callbacks/twilio/voice?call=<phone_call id>&event=status   call ended (CallStatus)

Every request must carry a valid X-Twilio-Signature for the public URL
([twilio] voice_url or [server] public_url, plus the path and query as sent);
a forged one gets 403 and changes nothing. Keypad 1 acknowledges: an engineer
paged for an unclaimed ticket claims it, anybody else acknowledges; either
stops the chain and is logged "via phone". Keypad 2 escalates to the next
step now. A call that ends unanswered, busy, failed or without a key pressed
moves the chain to its next step at once. Both are fenced: a chain that moved
since the call was placed (claimed meanwhile, escalated by somebody else) is
left alone. Twilio's retries are de-duplicated per call and event.
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from aiohttp import web
from twilio.request_validator import SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import VoiceResponse

from bot.core import states as st
from bot.core.service import Actor, Change, Refused
from bot.texts import t
from escalation import timers as tm
from escalation.engine import EscalationEngine
from escalation.phone import VOICE_PATH, voice_twiml
from storage.models import Person, PhoneCall, ProcessedEvent, TicketEvent
from storage.queries import insert_ignore


log = logging.getLogger(__name__)

UNANSWERED = frozenset({"no-answer", "busy", "failed", "canceled"})
PLATFORM = "twilio"


class VoiceWebhook:
    def __init__(self, engine: "EscalationEngine"):
        cfg = engine.config.twilio
        assert cfg is not None
        self.engine = engine
        self.twilio = cfg
        self.base_url = (cfg.voice_url or engine.config.server.public_url).rstrip("/")
        self.validator = RequestValidator(cfg.auth_token)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(VOICE_PATH, self.handle)]

    def _twiml(self, key: str | None = None) -> web.Response:
        r = VoiceResponse()
        if key:
            say = {"language": self.twilio.language}
            if self.twilio.voice:
                say["voice"] = self.twilio.voice
            r.say(t(f"voice.{key}"), **say)
        r.hangup()
        return web.Response(text=str(r), content_type="text/xml")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # larger than [server] max_body_bytes: 413
        try:
            params: dict[str, str] = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return web.Response(status=400, text="malformed form body")
        url = self.base_url + request.raw_path
        signature = request.headers.get("X-Twilio-Signature", "")
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        if not signature or not self.validator.validate(url, params, signature, algorithm):
            log.warning("twilio voice webhook: bad signature for %s (raw query %r)", url, request.query_string)
            return web.Response(status=403, text="bad signature")
        call_id, event = request.query.get("call", ""), request.query.get("event", "")
        if not call_id.isdigit() or event not in ("gather", "status"):
            return web.Response(status=400, text="expected ?call=<id>&event=gather|status")
        if event == "gather":
            return await self._gather(int(call_id), params, url)
        return await self._status(int(call_id), params)

    # ---- keypad ----------------------------------------------------------

    async def _gather(self, call_id: int, params: dict[str, str], url: str) -> web.Response:
        digits = params.get("Digits", "").strip()
        sid = params.get("CallSid", "")
        if digits not in ("1", "2"):  # another key: say so and ask again; nothing changes
            return web.Response(text=voice_twiml(self.twilio, t("voice.invalid"), url), content_type="text/xml")
        engine = self.engine
        async with engine.db.session() as s:
            call = await s.get(PhoneCall, call_id)
            if call is None or call.kind != "call" or call.ticket_id is None or (call.sid and sid and call.sid != sid):
                return self._twiml("stale")
            if not await insert_ignore(s, ProcessedEvent, platform=PLATFORM, event_id=f"{sid or call_id}:gather"):
                return self._twiml(_said(call.status))  # Twilio retried: answer as before
            ticket = await engine.service.get(s, call.ticket_id)
            person = await s.get(Person, call.person_id)
            if ticket is None or person is None or ticket.state not in st.OPEN:
                result = "stale"
            else:
                actor = Actor(person, PLATFORM, "phone")
                result = (await self._acknowledge(s, actor, ticket) if digits == "1"
                          else await self._escalate(s, actor, ticket, call))
            call.digits = digits
            call.status = result
            s.add(call)
        engine.on_commit()
        return self._twiml(_said(result))

    async def _acknowledge(self, s, actor: Actor, ticket) -> str:
        engine = self.engine
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

    async def _escalate(self, s, actor: Actor, ticket, call: PhoneCall) -> str:
        engine = self.engine
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

    # ---- how the call ended -------------------------------------------------

    async def _status(self, call_id: int, params: dict[str, str]) -> web.Response:
        status = params.get("CallStatus", "")
        sid = params.get("CallSid", "")
        engine = self.engine
        async with engine.db.session() as s:
            call = await s.get(PhoneCall, call_id)
            if call is None or call.kind != "call" or (call.sid and sid and call.sid != sid):
                return web.Response(text="<Response/>", content_type="text/xml")
            if not await insert_ignore(s, ProcessedEvent, platform=PLATFORM, event_id=f"{sid or call_id}:status"):
                return web.Response(text="<Response/>", content_type="text/xml")
            pressed = call.digits in ("1", "2")
            if not pressed:
                call.status = status or call.status
                s.add(call)
            if not pressed and call.ticket_id is not None and (
                    status in UNANSWERED or status == "completed"):
                ticket = await engine.service.get(s, call.ticket_id)
                person = await s.get(Person, call.person_id)
                if ticket is not None and ticket.state in st.OPEN:
                    name = person.name if person else call.person_id
                    jumped = await engine.phone_jump(s, ticket, call.chain, call.fence,
                                                     t("escalation.engine.no_answer", name=name))
                    log.info("ticket %s: call to %s ended %s without a key; next step %s", ticket.number,
                             call.person_id, status, "fired" if jumped else "not needed (chain moved)")
        engine.on_commit()
        return web.Response(text="<Response/>", content_type="text/xml")


def _said(result: str) -> str:
    return {"acknowledged": "acknowledged", "claimed": "claimed", "escalated": "escalated"}.get(result, "stale")
