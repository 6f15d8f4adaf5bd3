"""Phones: the PhoneProvider interface, Twilio behind it, and the "twilio"
channel the outbox delivers calls and SMS through.

Calls and SMS are outbox rows like every other message, so a page written by
the sweep survives a crash and is retried. Each delivery first records a
phone_call row (keyed by the outbox row, so a retried delivery does not ring
twice once Twilio accepted the call) and enforces the per-person throttles:
at most `max_calls` calls in `call_window` (GoAlert's 3 in 15 minutes), an SMS
instead beyond that or when a call cannot be placed, at most `max_sms` SMS.
"""
from __future__ import annotations

import asyncio
import logging
import re
from abc import ABC, abstractmethod
from datetime import timedelta

import aiohttp
from sqlalchemy import case, func, update
from sqlmodel import select

from bot.channel import Channel, DeliveryError, EventSink, Wiring, current_outbox_id, register
from bot.events import Address, Call, Outbound, Sms
from bot.texts import t
from escalation.config import TwilioConfig
from storage.db import Database
from storage.models import Person, PhoneCall
from storage.types import utcnow

log = logging.getLogger(__name__)

VOICE_PATH = "/callbacks/twilio/voice"
# Calls that did not ring do not count against the throttle.
_NOT_COUNTED = ("throttled", "failed")


class PhoneError(Exception):
    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class PhoneProvider(ABC):
    """Places calls and sends SMS; returns the provider's id of each."""

    async def start(self) -> None:
        """Open clients (inside the running loop)."""

    async def close(self) -> None:
        """Close clients."""

    @abstractmethod
    async def call(self, to: str, twiml: str, status_callback: str, ring_timeout: int) -> str:
        """Place a call that runs `twiml`; the provider reports its end to `status_callback`."""

    @abstractmethod
    async def sms(self, to: str, body: str) -> str:
        """Send a text message."""


class TwilioProvider(PhoneProvider):
    """twilio's own client on its async (aiohttp) HTTP client, API host configurable."""

    def __init__(self, config: TwilioConfig):
        self.config = config
        self._http = None
        self._client = None

    async def start(self) -> None:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        # Must be created inside the running loop (it opens an aiohttp session).
        self._http = AsyncTwilioHttpClient(timeout=15)
        # environment={}: TWILIO_EDGE / TWILIO_REGION would rewrite api_base.
        self._client = Client(self.config.account_sid, self.config.auth_token, http_client=self._http,
                              environment={})
        self._client.api.base_url = self.config.api_base.rstrip("/")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _require(self):
        if self._client is None:
            raise PhoneError("twilio client not started", retryable=True)
        return self._client

    async def call(self, to: str, twiml: str, status_callback: str, ring_timeout: int) -> str:
        client = self._require()
        try:
            call = await client.calls.create_async(
                to=to, from_=self.config.from_number, twiml=twiml, timeout=ring_timeout,
                status_callback=status_callback, status_callback_method="POST",
                status_callback_event=["completed"])
        except Exception as e:
            raise _phone_error(e) from e
        return call.sid

    async def sms(self, to: str, body: str) -> str:
        client = self._require()
        try:
            msg = await client.messages.create_async(to=to, from_=self.config.from_number, body=body)
        except Exception as e:
            raise _phone_error(e) from e
        return msg.sid


def _phone_error(e: Exception) -> PhoneError:
    from twilio.base.exceptions import TwilioRestException

    if isinstance(e, TwilioRestException):
        retryable = e.status == 429 or e.status >= 500
        return PhoneError(f"twilio HTTP {e.status} (code {e.code}): {e.msg}", retryable=retryable,
                          retry_after=30 if e.status == 429 else None)
    if isinstance(e, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return PhoneError(f"twilio unreachable: {type(e).__name__}: {e}", retryable=True)
    return PhoneError(f"{type(e).__name__}: {e}", retryable=True)


def normalize_number(number: str, country_code: str) -> str:
    """E.164: "138 0000 0004" -> "+8613800000004"; "+1 415..." stays."""
    n = re.sub(r"[\s\-()]", "", number)
    if n.startswith("+"):
        return n
    if n.startswith("00"):
        return "+" + n[2:]
    return country_code + n.lstrip("0")


def voice_twiml(config: TwilioConfig, text: str, action_url: str) -> str:
    """The message inside <Gather numDigits="1"> (said twice), then goodbye."""
    from twilio.twiml.voice_response import VoiceResponse

    say = {"language": config.language}
    if config.voice:
        say["voice"] = config.voice
    r = VoiceResponse()
    for _ in range(2):
        g = r.gather(num_digits=1, action=action_url, method="POST", timeout=8)
        g.say(text + t("voice.prompt"), **say)
    r.say(t("voice.goodbye"), **say)
    r.hangup()
    return str(r)


@register("twilio", TwilioConfig)
class TwilioChannel(Channel):
    """Delivers Call and Sms messages; people's addresses are their person ids."""

    name = "twilio"

    @classmethod
    def build(cls, section: TwilioConfig, wiring: Wiring) -> TwilioChannel:
        return cls(section, wiring.sink, wiring.db, wiring.config.server.public_url)

    def __init__(self, config: TwilioConfig, sink: EventSink, db: Database, public_url: str,
                 provider: PhoneProvider | None = None):
        super().__init__(sink)
        self.config = config
        self.db = db
        self.base_url = (config.voice_url or public_url).rstrip("/")
        self.provider = provider or TwilioProvider(config)

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

    def voice_url(self, call_id: int, event: str) -> str:
        return f"{self.base_url}{VOICE_PATH}?call={call_id}&event={event}"

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        if isinstance(message, Call):
            await self._call(message)
        elif isinstance(message, Sms):
            await self._sms(message)
        else:
            raise DeliveryError(f"the twilio channel places calls and sends SMS, not {type(message).__name__}",
                                retryable=False)
        return None

    # ---- calls -----------------------------------------------------------

    async def _record(self, kind: str, message: Call | Sms, limit: int, window: timedelta) -> PhoneCall:
        """This delivery's phone_call row: the existing one on a retry, else a new
        one, "throttled" when the person had `limit` in `window` already."""
        outbox_id = current_outbox_id.get()
        now = utcnow()
        async with self.db.session() as s:
            if outbox_id is not None:
                row = (await s.exec(select(PhoneCall).where(PhoneCall.outbox_id == outbox_id,
                                                            PhoneCall.kind == kind))).first()
                if row is not None:
                    return row
            status = "placing"
            if message.person_id:
                # One throttle decision at a time per person, across processes.
                await s.exec(select(Person).where(Person.id == message.person_id).with_for_update())
                recent = (await s.exec(select(func.count()).select_from(PhoneCall).where(
                    PhoneCall.person_id == message.person_id, PhoneCall.kind == kind,
                    PhoneCall.status.not_in(_NOT_COUNTED), PhoneCall.created_at > now - window))).one()
                if recent >= limit:
                    status = "throttled"
            row = PhoneCall(kind=kind, person_id=message.person_id or "", ticket_id=message.ticket_id,
                            to_number=normalize_number(message.to, self.config.default_country_code),
                            outbox_id=outbox_id, status=status, created_at=now, updated_at=now,
                            chain=getattr(message, "chain", None), step=getattr(message, "step", None),
                            fence=getattr(message, "fence", None))
            s.add(row)
            await s.flush()
        return row

    async def _update(self, row_id: int, **values) -> None:
        async with self.db.session() as s:
            await s.exec(update(PhoneCall).where(PhoneCall.id == row_id).values(updated_at=utcnow(), **values))

    async def _call(self, message: Call) -> None:
        row = await self._record("call", message, self.config.max_calls, self.config.call_window)
        if row.sid:
            return  # placed by an earlier delivery of this outbox row
        if row.status in ("throttled", "failed"):
            if row.status == "throttled":
                log.warning("call to %s for ticket %s throttled (%d calls in %s)%s", row.person_id, row.ticket_id,
                            self.config.max_calls, self.config.call_window,
                            ": sending an SMS instead" if self.config.sms_fallback else "")
            if self.config.sms_fallback:
                await self._sms(Sms(message.to, t("voice.sms", text=message.text), message.person_id,
                                    message.ticket_id))
            return
        twiml = voice_twiml(self.config, message.text, self.voice_url(row.id, "gather"))
        try:
            sid = await self.provider.call(row.to_number, twiml, self.voice_url(row.id, "status"),
                                           int(self.config.ring_timeout.total_seconds()))
        except PhoneError as e:
            if e.retryable:
                await self._update(row.id, error=str(e)[:500])
                raise DeliveryError(str(e), retryable=True, retry_after=e.retry_after) from e
            await self._update(row.id, status="failed", error=str(e)[:500])
            log.error("call to %s (%s) for ticket %s failed: %s", row.person_id, row.to_number, row.ticket_id, e)
            if self.config.sms_fallback:
                await self._sms(Sms(message.to, t("voice.sms", text=message.text), message.person_id,
                                    message.ticket_id))
                return
            raise DeliveryError(str(e), retryable=False) from e
        # The call's own callbacks may have written its status already: keep theirs.
        await self._update(row.id, sid=sid, error=None,
                           status=case((PhoneCall.status == "placing", "sent"), else_=PhoneCall.status))
        log.info("called %s (%s) for ticket %s: %s", row.person_id, row.to_number, row.ticket_id, sid)

    async def _sms(self, message: Sms) -> None:
        row = await self._record("sms", message, self.config.max_sms, self.config.sms_window)
        if row.sid:
            return
        if row.status == "throttled":
            log.warning("SMS to %s for ticket %s throttled (%d in %s): not sent", row.person_id, row.ticket_id,
                        self.config.max_sms, self.config.sms_window)
            return
        try:
            sid = await self.provider.sms(row.to_number, message.text)
        except PhoneError as e:
            await self._update(row.id, status="placing" if e.retryable else "failed", error=str(e)[:500])
            raise DeliveryError(str(e), retryable=e.retryable, retry_after=e.retry_after) from e
        await self._update(row.id, status="sent", sid=sid, error=None)
