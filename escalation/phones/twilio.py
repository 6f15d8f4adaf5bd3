"""Twilio: the call runs TwiML that reads the message inside <Gather> (keypad
answers and the call's end come back to /callbacks/twilio/voice, signed)."""
from __future__ import annotations

import asyncio

import aiohttp

from bot.texts import t
from escalation.config import TwilioConfig
from escalation.phones import CallRequest, PhoneError, PhoneProvider

VOICE_PATH = "/callbacks/twilio/voice"


class TwilioProvider(PhoneProvider):
    """twilio's own client on its async (aiohttp) HTTP client, API host configurable."""

    name = "twilio"

    def __init__(self, config: TwilioConfig, public_url: str):
        self.config = config
        self.base_url = (config.voice_url or public_url).rstrip("/")
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

    def voice_url(self, call_id: int, event: str) -> str:
        return f"{self.base_url}{VOICE_PATH}?call={call_id}&event={event}"

    async def call(self, request: CallRequest) -> str:
        client = self._require()
        twiml = voice_twiml(self.config, request.text, self.voice_url(request.call_id, "gather"))
        try:
            call = await client.calls.create_async(
                to=request.to, from_=self.config.from_number, twiml=twiml, timeout=request.ring_timeout,
                status_callback=self.voice_url(request.call_id, "status"), status_callback_method="POST",
                status_callback_event=["completed"])
        except Exception as e:
            raise _phone_error(e) from e
        return call.sid

    async def sms(self, to: str, text: str, fields: dict[str, str]) -> str:
        client = self._require()
        try:
            msg = await client.messages.create_async(to=to, from_=self.config.from_number, body=text)
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
