"""The voice webhook: what a person pressed during an escalation call, and how
the call ended.

    POST /callbacks/twilio/voice?call=<phone_call id>&event=gather   keypad (Digits)
    POST /callbacks/twilio/voice?call=<phone_call id>&event=status   call ended (CallStatus)

Every request must carry a valid X-Twilio-Signature for the public URL
([twilio] voice_url or [server] public_url, plus the path and query as sent);
a forged one gets 403 and changes nothing. What keys 1 and 2 and an
unanswered call do is escalation/answers.py. Twilio's retries are
de-duplicated per call and event.
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from aiohttp import web
from twilio.request_validator import SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import VoiceResponse

from bot.texts import t
from escalation import answers
from escalation.engine import EscalationEngine
from escalation.phones.twilio import VOICE_PATH, voice_twiml
from storage.models import PhoneCall


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
        if digits not in answers.KEYS:  # another key: say so and ask again; nothing changes
            return web.Response(text=voice_twiml(self.twilio, t("voice.invalid"), url), content_type="text/xml")
        engine = self.engine
        async with engine.db.session() as s:
            call = await s.get(PhoneCall, call_id)
            if call is None or call.kind != "call" or call.ticket_id is None or (call.sid and sid and call.sid != sid):
                return self._twiml("stale")
            result = await answers.pressed(engine, s, call, digits, PLATFORM, f"{sid or call_id}:gather")
        engine.on_commit()
        return self._twiml(answers.said(result))

    # ---- how the call ended -------------------------------------------------

    async def _status(self, call_id: int, params: dict[str, str]) -> web.Response:
        status = params.get("CallStatus", "")
        sid = params.get("CallSid", "")
        engine = self.engine
        async with engine.db.session() as s:
            call = await s.get(PhoneCall, call_id)
            if call is None or call.kind != "call" or (call.sid and sid and call.sid != sid):
                return web.Response(text="<Response/>", content_type="text/xml")
            if status in UNANSWERED or status == "completed":
                await answers.ended(engine, s, call, status, answered=status == "completed", platform=PLATFORM,
                                    event_id=f"{sid or call_id}:status")
        engine.on_commit()
        return web.Response(text="<Response/>", content_type="text/xml")
