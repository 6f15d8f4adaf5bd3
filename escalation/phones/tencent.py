"""Tencent Cloud 语音消息 (VMS 2020-09-02) through the official SDK, which signs
every request TC3-HMAC-SHA256 with the SecretKey.

SendTtsVoice reads the approved template (`template_id`, its {1}, {2}, ...
filled from the ticket); the template's keypress setting ("按键" in the
console) lets the callee press 1 or 2. Tencent reports the key
(`voicekey_callback`) and the call's end (`voiceprompt_callback`) to the
event callback configured in the console, /callbacks/tencent/voice (see
escalation/receipts.py). The SDK's client is blocking (requests): it runs in a
worker thread, off the event loop.
"""
from __future__ import annotations

import asyncio

from escalation.config import TencentConfig
from escalation.phones import CallRequest, PhoneError, PhoneProvider, call_tag

VOICE_PATH = "/callbacks/tencent/voice"

LIMIT_CODES = frozenset({"LimitExceeded.DeliveryFrequencyLimit"})
RETRY_CODES = frozenset({"ClientNetworkError", "ServerNetworkError", "RequestLimitExceeded",
                         "FailedOperation.AccessUpstreamTimeout", "FailedOperation.FailResolvePacket"})


class TencentProvider(PhoneProvider):
    name = "tencent"
    can_sms = False  # VMS places calls only

    def __init__(self, config: TencentConfig):
        self.config = config
        self._client = None

    async def start(self) -> None:
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.vms.v20200902.vms_client import VmsClient

        c = self.config
        http = HttpProfile(protocol=c.protocol, endpoint=c.endpoint, reqTimeout=15)
        self._client = VmsClient(Credential(c.secret_id, c.secret_key), c.region,
                                 ClientProfile(signMethod="TC3-HMAC-SHA256", httpProfile=http))

    async def call(self, request: CallRequest) -> str:
        from tencentcloud.vms.v20200902 import models

        if self._client is None:
            raise PhoneError("tencent client not started", retryable=True)
        c = self.config
        req = models.SendTtsVoiceRequest()
        req.TemplateId = c.template_id
        req.CalledNumber = request.to
        req.VoiceSdkAppid = c.voice_sdk_appid
        req.TemplateParamSet = [request.fields.get(name, "") for name in c.template_params]
        req.PlayTimes = c.play_times
        req.SessionContext = call_tag(c.secret_key, request.call_id)
        try:
            response = await asyncio.to_thread(self._client.SendTtsVoice, req)
        except Exception as e:
            raise _phone_error(e) from e
        if response.SendStatus is None or not response.SendStatus.CallId:
            raise PhoneError("tencent SendTtsVoice: no CallId in the answer", retryable=False)
        return response.SendStatus.CallId

    async def sms(self, to: str, text: str, fields: dict[str, str]) -> str:
        raise PhoneError("tencent VMS sends no SMS", retryable=False)


def _phone_error(e: Exception) -> PhoneError:
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    if not isinstance(e, TencentCloudSDKException):
        return PhoneError(f"tencent SendTtsVoice: {type(e).__name__}: {e}", retryable=True)
    code = e.get_code() or ""
    text = f"tencent SendTtsVoice {code}: {e.get_message()}"
    if code in LIMIT_CODES:
        return PhoneError(text, retryable=False, limited=True)
    if code in RETRY_CODES or code.startswith("InternalError"):
        return PhoneError(text, retryable=True, retry_after=30 if code == "RequestLimitExceeded" else None)
    return PhoneError(text, retryable=False)
