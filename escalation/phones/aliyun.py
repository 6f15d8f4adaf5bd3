"""Aliyun 语音服务 (dyvmsapi 2017-05-25) and 短信服务 (dysmsapi 2017-05-25)
through the official SDKs, whose async methods run on aiohttp and sign every
request ACS3-HMAC-SHA256 with the AccessKey secret.

A call is an IvrCall where the account has it: the approved TTS template
(`tts_code`, filled from the ticket) is the start prompt, key 1 plays
`ack_code` and acknowledges, key 2 plays `escalate_code` and escalates. Without
IVR it is a SingleCallByTts, which nobody can answer by key. Each call carries
`OutId = <phone_call id>.<HMAC>`, echoed in its receipts (HTTP batch push to
/callbacks/aliyun/voice, see escalation/receipts.py).
"""
from __future__ import annotations

import asyncio
import json

import aiohttp

from escalation.config import AliyunConfig
from escalation.phones import CallRequest, PhoneError, PhoneProvider, call_tag, fill, national

VOICE_PATH = "/callbacks/aliyun/voice"

# Business error codes (HTTP 200, Code != "OK") and what they mean for us.
# Per-callee / per-day flow control: this provider will not call the number now.
LIMIT_CODES = frozenset({"isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL", "isv.FLOW_LIMIT",
                         "isv.CALLED_NUMBER_LIMIT"})
# Aliyun's own trouble: try again later.
RETRY_CODES = frozenset({"isp.SYSTEM_ERROR", "isp.GATEWAY_ERROR", "SignatureNonceUsed", "ServiceUnavailable",
                         "InternalError", "Throttling", "Throttling.User", "Throttling.Api"})


class AliyunProvider(PhoneProvider):
    name = "aliyun"

    def __init__(self, config: AliyunConfig):
        self.config = config
        self.interactive = config.ivr
        self.can_sms = config.sms_template_code is not None
        self._voice = None
        self._sms = None

    def _client_config(self, endpoint: str):
        from alibabacloud_tea_openapi import utils_models

        c = self.config
        return utils_models.Config(access_key_id=c.access_key_id, access_key_secret=c.access_key_secret,
                                   endpoint=endpoint, protocol=c.protocol, read_timeout=15000,
                                   connect_timeout=5000)

    async def start(self) -> None:
        from alibabacloud_dysmsapi20170525.client import Client as SmsClient
        from alibabacloud_dyvmsapi20170525.client import Client as VoiceClient

        self._voice = VoiceClient(self._client_config(self.config.endpoint))
        self._sms = SmsClient(self._client_config(self.config.sms_endpoint))

    @staticmethod
    def _runtime():
        from darabonba.runtime import RuntimeOptions

        # The outbox retries with back-off; the SDK must not retry underneath it.
        return RuntimeOptions(autoretry=False, read_timeout=15000, connect_timeout=5000)

    def _require(self, client):
        if client is None:
            raise PhoneError("aliyun client not started", retryable=True)
        return client

    async def call(self, request: CallRequest) -> str:
        from alibabacloud_dyvmsapi20170525 import models

        client = self._require(self._voice)
        c = self.config
        params = json.dumps(fill(c.tts_params, request.fields), ensure_ascii=False)
        out_id = call_tag(c.access_key_secret, request.call_id)
        if c.ivr:
            req = models.IvrCallRequest(
                called_number=national(request.to), called_show_number=c.called_show_number,
                start_code=c.tts_code, start_tts_params=params, play_times=c.play_times,
                timeout=int(c.key_timeout.total_seconds() * 1000), out_id=out_id,
                menu_key_map=[models.IvrCallRequestMenuKeyMap(key="1", code=c.ack_code),
                              models.IvrCallRequestMenuKeyMap(key="2", code=c.escalate_code)])
            body = await self._invoke("IvrCall", client.ivr_call_with_options_async(req, self._runtime()))
        else:
            req = models.SingleCallByTtsRequest(
                called_number=national(request.to), called_show_number=c.called_show_number,
                tts_code=c.tts_code, tts_param=params, play_times=c.play_times, out_id=out_id)
            body = await self._invoke("SingleCallByTts",
                                      client.single_call_by_tts_with_options_async(req, self._runtime()))
        return body.call_id

    async def sms(self, to: str, text: str, fields: dict[str, str]) -> str:
        from alibabacloud_dysmsapi20170525 import models

        c = self.config
        if not self.can_sms:
            raise PhoneError("aliyun: no SMS template configured", retryable=False)
        client = self._require(self._sms)
        req = models.SendSmsRequest(phone_numbers=national(to), sign_name=c.sms_sign_name,
                                    template_code=c.sms_template_code,
                                    template_param=json.dumps(fill(c.sms_params, fields), ensure_ascii=False))
        body = await self._invoke("SendSms", client.send_sms_with_options_async(req, self._runtime()))
        return body.biz_id

    async def _invoke(self, action: str, pending):
        try:
            response = await pending
        except Exception as e:
            raise _phone_error(action, e) from e
        body = response.body
        if body.code != "OK":
            raise business_error(action, body.code or "", body.message or "")
        return body


def business_error(action: str, code: str, message: str) -> PhoneError:
    """A refusal in the response body, mapped to retry / next provider / give up."""
    text = f"aliyun {action} {code}: {message}"
    if code in LIMIT_CODES:
        return PhoneError(text, retryable=False, limited=True)
    if code in RETRY_CODES or code.startswith("isp."):
        return PhoneError(text, retryable=True, retry_after=30 if code.startswith("Throttling") else None)
    return PhoneError(text, retryable=False)


def _phone_error(action: str, e: Exception) -> PhoneError:
    from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

    if isinstance(e, AlibabaCloudException):
        status = e.status_code or 0
        code = e.code or ""
        if code in LIMIT_CODES or code in RETRY_CODES or status == 429 or status >= 500:
            err = business_error(action, code, e.message or "")
            if status == 429 or status >= 500:
                err.retryable, err.limited = True, False
            return err
        return PhoneError(f"aliyun {action} HTTP {status} {code}: {e.message}", retryable=False)
    if isinstance(e, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return PhoneError(f"aliyun unreachable: {type(e).__name__}: {e}", retryable=True)
    return PhoneError(f"aliyun {action}: {type(e).__name__}: {e}", retryable=True)
